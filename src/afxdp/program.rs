//! Our XDP program (`bpf/xdpblast.bpf.c`): load, configure, attach, count.
//!
//! It is attached through a **bpf_link**. The link lives as long as this
//! process holds its file descriptor, so the kernel detaches the program when
//! the process exits for any reason, SIGKILL included. Nothing is pinned.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, RawFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};
use serde::Serialize;
use tracing::info;

mod skel {
    #![allow(
        clippy::all,
        clippy::undocumented_unsafe_blocks,
        unused_imports,
        dead_code,
        non_camel_case_types,
        non_snake_case,
        non_upper_case_globals
    )]
    include!(concat!(env!("OUT_DIR"), "/xdpblast.skel.rs"));
}
use skel::{XdpblastSkel, XdpblastSkelBuilder};

/// Mirrors `enum xb_counter` in the BPF program.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct XdpCounters {
    pub redirected: u64,
    pub passed: u64,
    pub malformed: u64,
    pub loss_dropped: u64,
    pub no_socket: u64,
    /// Dropped by the sink ([`Steering::attach_sink`]), and their bytes.
    pub sunk: u64,
    pub sunk_bytes: u64,
    /// Dropped by the capacity knob (`recv --inject-capacity`).
    pub over_capacity: u64,
}

/// How the program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    Native,
    Generic,
    Offload,
    Unknown,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Offload => "offload",
            AttachMode::Unknown => "unknown",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("cannot load the XDP program: {0:#} (needs root or CAP_BPF + CAP_NET_ADMIN)")]
    Load(libbpf_rs::Error),
    #[error("cannot attach the XDP program to {ifname}: {err:#}{hint}")]
    Attach { ifname: String, err: libbpf_rs::Error, hint: String },
    #[error("interface index {0} is out of range")]
    Ifindex(u32),
    #[error("cannot query the interface's XDP state: {0:#}")]
    Query(libbpf_rs::Error),
    #[error("cannot update the {map} map: {err:#}")]
    Map { map: &'static str, err: libbpf_rs::Error },
}

/// Test knobs in the program: loss and a capacity limit, because this kind of
/// host has no tc netem.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TestKnobs {
    /// Probability (0..=1) of dropping a data packet.
    pub loss: f64,
    /// Take at most this many data packets per second (per CPU); 0 = off.
    pub capacity_pps: u32,
}

/// `xb_config.flags` bit: drop and count every data packet.
const FLAG_SINK: u16 = 1;
/// `xb_config.flags` bit: take only datagrams for `dst_ip6`.
const FLAG_DST6: u16 = 2;

pub struct Steering {
    /// Held, never read: the program stays attached exactly as long as this
    /// link is open (and the kernel closes it when the process dies).
    _link: Link,
    skel: XdpblastSkel<'static>,
    mode: AttachMode,
}

/// Sends libbpf's own messages through `tracing` instead of raw stderr.
fn route_libbpf_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Info, |level, msg: String| {
            let msg = msg.trim_end();
            // A libbpf warning comes with an error we report ourselves, in
            // our words; its own line is detail, shown with -v.
            match level {
                libbpf_rs::PrintLevel::Warn => tracing::info!(target: "libbpf", "{msg}"),
                libbpf_rs::PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
                libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
            }
        })));
    });
}

impl Steering {
    /// Loads the program, writes its config, and attaches it to `ifindex`.
    /// `loss` is the probability (0..=1) of dropping a data packet.
    pub fn attach(
        ifname: &str,
        ifindex: u32,
        dst_ip: Option<IpAddr>,
        data_port: u16,
        knobs: TestKnobs,
    ) -> Result<Steering, ProgramError> {
        Steering::load(ifname, ifindex, dst_ip, data_port, knobs, 0)
    }

    /// The same program as a native-XDP drop sink: every UDP datagram for
    /// `data_port` is dropped in the driver and counted (`sunk`).
    pub fn attach_sink(ifname: &str, ifindex: u32, data_port: u16) -> Result<Steering, ProgramError> {
        Steering::load(ifname, ifindex, None, data_port, TestKnobs::default(), FLAG_SINK)
    }

    fn load(
        ifname: &str,
        ifindex: u32,
        dst_ip: Option<IpAddr>,
        data_port: u16,
        knobs: TestKnobs,
        flags: u16,
    ) -> Result<Steering, ProgramError> {
        let loss = knobs.loss;
        // The skeleton borrows its object storage for its whole life. One
        // receiver loads one program, so a small, bounded leak is the simple
        // honest answer to that borrow.
        route_libbpf_logs();
        let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let open = XdpblastSkelBuilder::default().open(storage).map_err(ProgramError::Load)?;
        let skel = open.load().map_err(ProgramError::Load)?;

        let threshold = (loss.clamp(0.0, 1.0) * f64::from(u32::MAX)).round() as u32;
        let (dst4, dst6, flags) = match dst_ip {
            Some(IpAddr::V4(ip)) => (ip.octets(), [0; 16], flags),
            Some(IpAddr::V6(ip)) => ([0; 4], ip.octets(), flags | FLAG_DST6),
            None => ([0; 4], [0; 16], flags),
        };
        // struct xb_config, field by field.
        let mut cfg = Vec::with_capacity(32);
        cfg.extend_from_slice(&threshold.to_ne_bytes());
        cfg.extend_from_slice(&dst4);
        cfg.extend_from_slice(&data_port.to_be_bytes());
        cfg.extend_from_slice(&flags.to_ne_bytes());
        cfg.extend_from_slice(&knobs.capacity_pps.to_ne_bytes());
        cfg.extend_from_slice(&dst6);
        skel.maps
            .config
            .update(&0u32.to_ne_bytes(), &cfg, MapFlags::ANY)
            .map_err(|e| ProgramError::Map { map: "config", err: e })?;

        let ifindex_i = i32::try_from(ifindex).map_err(|_| ProgramError::Ifindex(ifindex))?;
        let link = skel.progs.xdpblast_steer.attach_xdp(ifindex_i).map_err(|e| ProgramError::Attach {
            ifname: ifname.into(),
            err: e,
            hint: busy_hint(ifname, ifindex),
        })?;
        let mode = query_attach_mode(ifindex);
        info!(
            ifname,
            mode = mode.name(),
            data_port,
            loss,
            capacity_pps = knobs.capacity_pps,
            flags,
            "XDP program attached through a bpf_link"
        );
        Ok(Steering { _link: link, skel, mode })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Steers packets arriving on `queue` into the AF_XDP socket `xsk_fd`.
    pub fn add_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<(), ProgramError> {
        self.skel
            .maps
            .xsks
            .update(&queue.to_ne_bytes(), &xsk_fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| ProgramError::Map { map: "xsks", err: e })
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> XdpCounters {
        let mut sums = [0u64; 8];
        for (i, sum) in sums.iter_mut().enumerate() {
            if let Ok(Some(per_cpu)) = self.skel.maps.counters.lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY) {
                *sum = per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes))
                    .sum();
            }
        }
        XdpCounters {
            redirected: sums[0],
            passed: sums[1],
            malformed: sums[2],
            loss_dropped: sums[3],
            no_socket: sums[4],
            sunk: sums[5],
            sunk_bytes: sums[6],
            over_capacity: sums[7],
        }
    }
}

/// What the kernel reports about XDP on an interface.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct XdpQuery {
    pub prog_id: u32,
    pub attach_mode: u8,
    /// NETDEV_XDP_ACT_* bits the driver advertises.
    pub feature_flags: u64,
    /// Most descriptors a zero-copy packet may span (NETDEV_A_DEV_XDP_ZC_MAX_SEGS);
    /// 0 where the driver has no zero-copy or the kernel does not say.
    pub zc_max_segs: u32,
}

impl XdpQuery {
    pub const ACT_BASIC: u64 = 1 << 0;
    pub const ACT_REDIRECT: u64 = 1 << 1;
    pub const ACT_NDO_XMIT: u64 = 1 << 2;
    pub const ACT_XSK_ZEROCOPY: u64 = 1 << 3;
}

/// Queries XDP state on `ifindex` (program attached, driver features).
pub fn query(ifindex: u32) -> Result<XdpQuery, ProgramError> {
    // `Xdp::query` only uses the ifindex; any descriptor serves as the handle.
    let stdin = std::io::stdin();
    let xdp = libbpf_rs::Xdp::new(stdin.as_fd());
    let q = xdp
        .query(i32::try_from(ifindex).map_err(|_| ProgramError::Ifindex(ifindex))?, libbpf_rs::XdpFlags::NONE)
        .map_err(ProgramError::Query)?;
    Ok(XdpQuery {
        prog_id: q.prog_id,
        attach_mode: q.attach_mode,
        feature_flags: q.feature_flags,
        zc_max_segs: q.xdp_zc_max_segs,
    })
}

/// Why an attach failed, when the hook is taken: who holds it and how to
/// free it. Found by asking the kernel, not by reading the error's text.
fn busy_hint(ifname: &str, ifindex: u32) -> String {
    if query(ifindex).map_or(true, |q| q.prog_id == 0) {
        return String::new();
    }
    match link_holder(ifindex) {
        Some((pid, comm)) => format!(
            " (another XDP program is attached, held by {comm} (pid {pid}) through a bpf_link: stop that process, e.g. `kill {pid}`, and the kernel detaches it; `ip link set dev {ifname} xdp off` cannot remove a link)"
        ),
        None => format!(
            " (another XDP program is attached; see `ip link show dev {ifname}`; if no process holds it through a bpf_link, `ip link set dev {ifname} xdp off` removes it)"
        ),
    }
}

/// The process holding an XDP bpf_link on `ifindex` in our network
/// namespace, from `/proc/PID/fdinfo` (`link_type: xdp`, `ifindex: N`).
fn link_holder(ifindex: u32) -> Option<(u32, String)> {
    let our_ns = std::fs::read_link("/proc/self/ns/net").ok()?;
    let want = format!("ifindex:\t{ifindex}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != Some(our_ns.clone()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let is_link = std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf_link");
            if !is_link {
                continue;
            }
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
                .unwrap_or_default();
            if info.lines().any(|l| l == "link_type:\txdp") && info.lines().any(|l| l == want) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_string()));
            }
        }
    }
    None
}

fn query_attach_mode(ifindex: u32) -> AttachMode {
    match query(ifindex).map(|q| q.attach_mode) {
        Ok(1) => AttachMode::Native,
        Ok(2) => AttachMode::Generic,
        Ok(3) => AttachMode::Offload,
        _ => AttachMode::Unknown,
    }
}
