//! `xdpblast probe`: what this host and interface can do, as root or not.

use serde::Serialize;

use xdpblast::afxdp::preload::MAX_CHAIN;
use xdpblast::afxdp::program::{self, Steering, XdpQuery};
use xdpblast::afxdp::umem::UmemArea;
use xdpblast::afxdp::xsk::{BindMode, Xsk, XskConfig, XskError, XskMode};
use xdpblast::net::iface::{format_mac, Interface};
use xdpblast::wire::frame::ETH_LEN;

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
    /// `None` when the interface could not be asked.
    zero_copy_capable: Option<bool>,
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

pub fn run(ifname: &str, json: bool) -> anyhow::Result<bool> {
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
    let mut largest_packet = None;
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
        }
        xdp_native = if i.xdp_attached.is_some() {
            Err("skipped: another program is attached".into())
        } else {
            // Port 0 steers nothing: every packet passes while we look.
            Steering::attach(&i.name, i.index, None, 0, Default::default())
                .map(|s| s.mode().name().to_string())
                .map_err(|e| e.to_string())
        };
        (af_xdp, multi_buffer) = try_af_xdp(&i.name);
        largest_packet = Some(match &multi_buffer {
            Ok(_) => i.mtu.min(MAX_CHAIN * 4096 - ETH_LEN as u32),
            Err(_) => i.mtu.min(4096 - ETH_LEN as u32),
        });
    }
    if let Err(e) = &af_xdp {
        problems.push(format!("AF_XDP: {e}"));
    }
    let auto_mode = match (&af_xdp, &iface) {
        (Ok(m), Some(_)) => format!("afxdp ({m})"),
        _ => "sendfile over TCP (AF_XDP is not usable here)".to_string(),
    };
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

/// Binds a throwaway socket on queue 0, with XDP_USE_SG first: whether
/// AF_XDP works (and in which mode), and whether multi-buffer does.
fn try_af_xdp(ifname: &str) -> (Result<String, String>, Result<String, String>) {
    let open = |multi_buffer: bool| {
        let cfg = XskConfig {
            ifname: ifname.to_string(),
            queue: 0,
            rx_size: 0,
            tx_size: 64,
            fill_size: 64,
            comp_size: 64,
            bind: BindMode::Auto,
            multi_buffer,
        };
        let area = UmemArea::new(64, 2048)?;
        Xsk::open(area, &cfg).map(|x| match x.mode() {
            XskMode::Copy => "copy mode".to_string(),
            XskMode::ZeroCopy => "zero-copy mode".to_string(),
        })
    };
    match open(true) {
        Ok(mode) => (Ok(mode), Ok("XDP_USE_SG: packets above one UMEM frame travel as descriptor chains".into())),
        Err(e @ XskError::Bind { errno: libc::EINVAL | libc::EOPNOTSUPP, .. }) => {
            (open(false).map_err(|e| e.to_string()), Err(e.to_string()))
        }
        Err(e) => (Err(e.to_string()), Err("not tried".into())),
    }
}

fn yes_no<T: std::fmt::Display, E: std::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(v) => format!("yes ({v})"),
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
        println!("RLIMIT_MEMLOCK    {shown} (CAP_IPC_LOCK lets the UMEM register anyway)");
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
    if let Some(n) = p.largest_packet {
        println!("largest packet    {n} B (send's default --packet-size here)");
    }
    println!(
        "zero-copy         {}",
        match p.zero_copy_capable {
            Some(true) => "supported by the driver",
            Some(false) => "not supported by the driver (copy mode)",
            None => "unknown (the interface could not be asked)",
        }
    );
    println!("send --mode auto  {}", p.auto_mode);
    for pr in &p.problems {
        println!("problem           {pr}");
    }
}
