//! `xdpblast probe`: what this host and interface can do, as root or not.

use serde::Serialize;

use xdpblast::afxdp::program::{self, Steering, XdpQuery};
use xdpblast::afxdp::umem::UmemArea;
use xdpblast::afxdp::xsk::{BindMode, Xsk, XskConfig, XskError, XskMode};
use xdpblast::afxdp::zerocopy::{self, BindChoice, DriverZeroCopy};
use xdpblast::datapath::plan::{FramePlan, MAX_CHAIN};
use xdpblast::io::afxdp_send::DEFAULT_UMEM;
use xdpblast::net::iface::{format_mac, Interface};
use xdpblast::wire::frame::{IpVersion, ETH_LEN};

#[derive(Serialize)]
struct Probe {
    kernel: String,
    euid: u32,
    capabilities: Vec<&'static str>,
    missing_capabilities: Vec<&'static str>,
    memlock_limit: Option<u64>,
    iface: Option<Interface>,
    iface_error: Option<String>,
    driver_xdp_features: Vec<&'static str>,
    #[serde(serialize_with = "check")]
    xdp_native: Result<String, String>,
    #[serde(serialize_with = "check")]
    af_xdp: Result<String, String>,
    /// Binding with XDP_USE_SG: packets longer than one UMEM frame.
    #[serde(serialize_with = "check")]
    multi_buffer: Result<String, String>,
    /// The largest IP packet `send` would use here (`--packet-size`'s
    /// default): the MTU, or one UMEM frame's worth without multi-buffer.
    largest_packet: Option<u32>,
    /// Whether the driver advertises zero-copy; `None` when the interface
    /// could not be asked. A bind can still refuse it: see `zero_copy`.
    zero_copy_capable: Option<bool>,
    /// Whether a socket really binds in zero-copy mode here, or why not.
    #[serde(serialize_with = "check")]
    zero_copy: Result<String, String>,
    /// Most UMEM frames one packet may span in zero-copy mode, as the driver
    /// reports it (1: no chains).
    zc_max_segs: Option<u32>,
    /// `--attach`: our XDP program was attached and sockets bound to test
    /// them. Without it the probe changed nothing.
    attached: bool,
    auto_mode: String,
    problems: Vec<String>,
}

const CAPS: [(u32, &str); 5] =
    [(12, "CAP_NET_ADMIN"), (13, "CAP_NET_RAW"), (14, "CAP_IPC_LOCK"), (21, "CAP_SYS_ADMIN"), (39, "CAP_BPF")];

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(0)
}

/// A check's result in JSON: `{"ok": true, "detail": "native"}`.
fn check<S: serde::Serializer>(r: &Result<String, String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Check", 2)?;
    st.serialize_field("ok", &r.is_ok())?;
    st.serialize_field("detail", r.as_ref().unwrap_or_else(|e| e))?;
    st.end()
}

fn memlock() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).ok().map(|(soft, _)| soft)
}

/// What a check that changes the interface says when `--attach` is not given.
const NOT_TRIED: &str = "not tried";

pub fn run(ifname: &str, json: bool, attach: bool) -> anyhow::Result<bool> {
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let caps = effective_caps();
    let have: Vec<&str> = CAPS.iter().filter(|(b, _)| caps & (1 << b) != 0).map(|(_, n)| *n).collect();
    let mut missing: Vec<&str> = Vec::new();
    for need in ["CAP_NET_ADMIN", "CAP_NET_RAW"] {
        if !have.contains(&need) {
            missing.push(need);
        }
    }
    if !have.contains(&"CAP_BPF") && !have.contains(&"CAP_SYS_ADMIN") {
        missing.push("CAP_BPF");
    }
    let mut problems = Vec::new();
    let (iface, iface_error) = match Interface::lookup(ifname) {
        Ok(i) => (Some(i), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut features = Vec::new();
    let mut zc_capable = None;
    let mut xdp_native = Err("not tried".to_string());
    let mut af_xdp = Err("not tried".to_string());
    let mut multi_buffer = Err("not tried".to_string());
    let mut zero_copy = Err("not tried".to_string());
    let mut driver = None;
    let mut largest_packet = None;
    let mut auto_mode = "sendfile over TCP (AF_XDP is not usable here)".to_string();
    if let Some(i) = &iface {
        if !i.oper_up {
            problems.push(format!("{} is down", i.name));
        }
        if let Some(by) = &i.xdp_attached {
            problems.push(format!(
                "an XDP program is already attached to {} ({by}); a receiver cannot attach ours",
                i.name
            ));
        }
        if let Ok(q) = program::query(i.index) {
            for (bit, name) in [
                (XdpQuery::ACT_BASIC, "basic"),
                (XdpQuery::ACT_REDIRECT, "redirect"),
                (XdpQuery::ACT_NDO_XMIT, "ndo_xmit"),
                (XdpQuery::ACT_XSK_ZEROCOPY, "xsk_zerocopy"),
            ] {
                if q.feature_flags & bit != 0 {
                    features.push(name);
                }
            }
            zc_capable = Some(q.feature_flags & XdpQuery::ACT_XSK_ZEROCOPY != 0);
            driver = Some(DriverZeroCopy::from_query(&q));
        }
        // Port 0 steers nothing: every packet passes while we look. The
        // program stays attached through the binds, as a receiver's would.
        let steering = (attach && i.xdp_attached.is_none())
            .then(|| Steering::attach(&i.name, i.index, None, 0, Default::default()));
        xdp_native = match &steering {
            _ if i.xdp_attached.is_some() => Err("skipped: another program is attached".into()),
            None => Err(format!(
                "{NOT_TRIED} (--attach attaches our XDP program to see; some drivers reset the link for it)"
            )),
            Some(Ok(s)) => Ok(s.mode().name().to_string()),
            Some(Err(e)) => Err(e.to_string()),
        };
        let binds = if attach { try_binds(&i.name, driver) } else { Binds::unbound(driver) };
        drop(steering);
        // A packet that fits one UMEM frame needs no multi-buffer.
        let one_frame = 4096 - ETH_LEN as u32;
        largest_packet = match &binds.multi_buffer {
            Ok(_) => Some(i.mtu.min(MAX_CHAIN * 4096 - ETH_LEN as u32)),
            Err(_) if attach || i.mtu <= one_frame => Some(i.mtu.min(one_frame)),
            Err(_) => None,
        };
        auto_mode = auto_mode_of(i, &binds, driver);
        Binds { af_xdp, zero_copy, multi_buffer } = binds;
    }
    if let Err(e) = &af_xdp {
        problems.push(format!("AF_XDP: {e}"));
    }
    let p = Probe {
        kernel,
        euid: nix::unistd::geteuid().as_raw(),
        capabilities: have,
        missing_capabilities: missing,
        memlock_limit: memlock(),
        iface,
        iface_error,
        driver_xdp_features: features,
        xdp_native,
        af_xdp,
        multi_buffer,
        largest_packet,
        zero_copy_capable: zc_capable,
        zero_copy,
        zc_max_segs: driver.filter(|d| d.advertised).map(|d| d.max_segs),
        attached: attach,
        auto_mode,
        problems,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print_human(&p, ifname);
    }
    Ok(p.af_xdp.is_ok())
}

/// What real binds on queue 0 found, one throwaway socket at a time.
struct Binds {
    /// The mode a socket gets: zero-copy where it binds, copy otherwise.
    af_xdp: Result<String, String>,
    zero_copy: Result<String, String>,
    multi_buffer: Result<String, String>,
}

impl Binds {
    /// Without `--attach`: only whether this host can make AF_XDP sockets
    /// and register a UMEM, which binds nothing and touches no device.
    fn unbound(driver: Option<DriverZeroCopy>) -> Binds {
        let af_xdp = UmemArea::new(64, 2048)
            .map_err(XskError::from)
            .and_then(Xsk::can_register)
            .map(|()| "sockets and a UMEM register; the kernel picks copy or zero-copy at bind".to_string())
            .map_err(|e| e.to_string());
        let zero_copy = match driver {
            Some(d) if !d.advertised => Err("the driver does not advertise xsk_zerocopy".to_string()),
            Some(_) => Err(format!(
                "{NOT_TRIED}: the driver advertises it (--attach binds a socket to be sure: virtio-net advertises it and refuses it without VIRTIO_F_ACCESS_PLATFORM)"
            )),
            None => Err(format!("{NOT_TRIED}: the driver could not be asked (--attach binds a socket to see)")),
        };
        let multi_buffer = Err(format!("{NOT_TRIED} (--attach binds a socket with XDP_USE_SG to see)"));
        Binds { af_xdp, zero_copy, multi_buffer }
    }
}

/// Binds zero-copy first, then copy, then copy with XDP_USE_SG: the driver's
/// advertised features are not the answer (virtio-net advertises zero-copy
/// and refuses it without VIRTIO_F_ACCESS_PLATFORM), and a bind asking for
/// multi-buffer in `auto` mode silently falls back to copy mode.
fn try_binds(ifname: &str, driver: Option<DriverZeroCopy>) -> Binds {
    let open = |bind: BindMode, multi_buffer: bool| -> Result<XskMode, XskError> {
        let cfg = XskConfig {
            ifname: ifname.to_string(),
            queue: 0,
            rx_size: 0,
            tx_size: 64,
            fill_size: 64,
            comp_size: 64,
            bind,
            multi_buffer,
        };
        let area = UmemArea::new(64, 2048)?;
        Xsk::open(area, &cfg).map(|x| x.mode())
    };
    let zero_copy = match driver {
        Some(d) if !d.advertised => Err("the driver does not advertise xsk_zerocopy".to_string()),
        _ => open(BindMode::ZeroCopy, false)
            .map(|_| "a socket binds in zero-copy mode".to_string())
            .map_err(|e| e.to_string()),
    };
    let af_xdp = match &zero_copy {
        Ok(_) => Ok("zero-copy mode".to_string()),
        Err(_) => open(BindMode::Copy, false).map(|_| "copy mode".to_string()).map_err(|e| e.to_string()),
    };
    let multi_buffer = match &af_xdp {
        Err(_) => Err("not tried".to_string()),
        Ok(_) => open(BindMode::Copy, true).map_err(|e| e.to_string()).map(|_| {
            let zc = match (&zero_copy, driver) {
                (Ok(_), Some(d)) if d.max_segs > 1 => format!("; zero-copy chains of up to {} frames", d.max_segs),
                (Ok(_), _) => "; none in zero-copy mode (the driver takes one frame per packet)".to_string(),
                (Err(_), _) => String::new(),
            };
            format!("XDP_USE_SG in copy mode: packets above one UMEM frame travel as descriptor chains{zc}")
        }),
    };
    Binds { af_xdp, zero_copy, multi_buffer }
}

/// What `send --mode auto` does here with packets of the MTU, by the rule
/// `send` follows ([`zerocopy::choose`]).
fn auto_mode_of(i: &Interface, binds: &Binds, driver: Option<DriverZeroCopy>) -> String {
    if binds.af_xdp.is_err() {
        return "sendfile over TCP (AF_XDP is not usable here)".to_string();
    }
    let shape = FramePlan::new(1 << 30, i.mtu, i.mtu, &i.name, DEFAULT_UMEM, IpVersion::V4).map(|p| p.packet_shape());
    let choice = shape.ok().and_then(|s| zerocopy::choose(BindMode::Auto, &i.name, s, driver).ok());
    let advertised = driver.is_some_and(|d| d.advertised);
    match choice {
        _ if binds.zero_copy.as_ref().is_err_and(|e| e.starts_with(NOT_TRIED)) && advertised => {
            "afxdp (zero-copy where a bind takes it, else copy mode)".to_string()
        }
        _ if binds.zero_copy.is_err() => "afxdp (copy mode)".to_string(),
        Some(BindChoice { note: Some(note), .. }) => format!("afxdp ({note})"),
        _ => "afxdp (zero-copy mode)".to_string(),
    }
}

fn yes_no(r: &Result<String, String>) -> String {
    match r {
        Ok(v) => format!("yes ({v})"),
        Err(e) if e.starts_with(NOT_TRIED) => e.clone(),
        Err(e) => format!("no: {e}"),
    }
}

fn print_human(p: &Probe, ifname: &str) {
    println!("kernel            {}", p.kernel);
    println!("user              euid {}; capabilities: {}", p.euid, p.capabilities.join(" "));
    if !p.missing_capabilities.is_empty() {
        println!("missing           {}", p.missing_capabilities.join(" "));
    }
    if let Some(m) = p.memlock_limit {
        let shown = if m == u64::MAX { "unlimited".to_string() } else { format!("{} KiB", m / 1024) };
        if p.capabilities.contains(&"CAP_IPC_LOCK") {
            println!("RLIMIT_MEMLOCK    {shown} (CAP_IPC_LOCK lets the UMEM register anyway)");
        } else {
            println!("RLIMIT_MEMLOCK    {shown} (a UMEM must fit under it: raise it with `ulimit -l`, or run with CAP_IPC_LOCK)");
        }
    }
    match &p.iface {
        Some(i) => {
            println!(
                "interface         {} (index {}, mac {}, mtu {}, {} tx / {} rx queues, {}, ipv4 {})",
                i.name,
                i.index,
                format_mac(&i.mac),
                i.mtu,
                i.tx_queues,
                i.rx_queues,
                if i.oper_up { "up" } else { "DOWN" },
                i.ipv4.map_or("none".to_string(), |a| a.to_string())
            );
            println!(
                "driver XDP        {}",
                if p.driver_xdp_features.is_empty() {
                    "no features reported".into()
                } else {
                    p.driver_xdp_features.join(" ")
                }
            );
        }
        None => println!("interface         {ifname}: {}", p.iface_error.as_deref().unwrap_or("not found")),
    }
    println!("XDP attach        {}", yes_no(&p.xdp_native));
    println!("AF_XDP socket     {}", yes_no(&p.af_xdp));
    println!("multi-buffer      {}", yes_no(&p.multi_buffer));
    match p.largest_packet {
        Some(n) => println!("largest packet    {n} B (send's default --packet-size here)"),
        None => println!("largest packet    the MTU needs multi-buffer, which --attach tries"),
    }
    let advertised = match (p.zero_copy_capable, p.zc_max_segs) {
        (Some(true), Some(n)) => {
            format!("the driver advertises it, {n} frame{} per packet", if n == 1 { "" } else { "s" })
        }
        (Some(true), None) => "the driver advertises it".to_string(),
        (Some(false), _) => "the driver does not advertise it".to_string(),
        (None, _) => "the driver could not be asked".to_string(),
    };
    match &p.zero_copy {
        Ok(v) => println!("zero-copy         yes ({v}; {advertised})"),
        Err(e) if e.starts_with(NOT_TRIED) => println!("zero-copy         {e}"),
        Err(e) => println!("zero-copy         no: {e}"),
    }

    println!("send --mode auto  {}", p.auto_mode);
    for pr in &p.problems {
        println!("problem           {pr}");
    }
    if p.attached {
        println!(
            "changed           our XDP program was attached and sockets bound on queue 0 while probing; all gone now"
        );
    } else {
        println!("changed           nothing (--attach also attaches our XDP program and binds sockets on queue 0)");
    }
}
