//! The AF_XDP sender: the file streamed through a bounded ring of UMEM frames
//! ([`ReadAhead`]), the transmit scheduler posting their descriptors.
//!
//! Each turn of the loop reaps completions, lets the read-ahead refill the
//! slots the receiver's reports have freed, asks the protocol for the next
//! frame ids, posts `(addr, len)` descriptors in one batch, and kicks only
//! when the kernel asks. Posting never reads or writes a payload byte.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tracing::info;

use super::control::{control_port, Control};
use crate::afxdp::xsk::{BindMode, Queue, Xsk, XskConfig, XskMode};
use crate::afxdp::zerocopy::{self, BindChoice, DriverZeroCopy};
use crate::datapath::kicker::{KickCounts, KickRequests};
use crate::datapath::plan::{FramePlan, PlanError, FILL_SPARE};
use crate::datapath::readahead::ReadAhead;
use crate::datapath::reader::{Reader, ReaderMode, Unchanged};
use crate::datapath::tx::TxEngine;
use crate::net::iface::{format_mac, Interface};
use crate::net::neigh;
use crate::proto::auth::DATA_TAG_LEN;
use crate::proto::pacer::{Aimd, Pacer, Rate};
use crate::proto::sender::SendStats;
use crate::proto::{FrameId, Sender, SenderConfig};
use crate::report::{hex, human_bytes, summary_line, Intervals};
use crate::wire::frame::{FrameTemplate, IpVersion};
use crate::wire::message::{lane_of, DataPorts, FileAttrs, Message, SessionInfo, MAX_DATA_PORTS};

pub const TX_RING: u32 = 2048;
/// The default `--umem`: the smallest of the sizes measured (16, 32, 64,
/// 256 MiB) that held its speed with 5 % loss on a veth; see the README.
pub const DEFAULT_UMEM: u64 = 32 << 20;
/// How often a busy send loop looks at the control socket.
const CONTROL_EVERY: Duration = Duration::from_micros(200);
pub const COMP_RING: u32 = 4096;
/// A transmit socket's RX ring, which it never reads. In zero-copy mode the
/// queue's receive side draws its buffers from our fill ring, and virtio_net
/// on 7.x (7.3.4 checked, not 6.18.15) delivers none of the stack's packets
/// on a queue whose socket has no RX ring: the receiver's replies vanish
/// and the transfer stalls. With a ring the driver passes them up as usual.
const UNREAD_RX_RING: u32 = 64;

#[derive(Debug, Clone)]
pub struct SendOptions {
    pub file: PathBuf,
    pub iface: String,
    /// The receiver's data address, IPv4 or IPv6.
    pub dst: SocketAddr,
    pub dst_mac: Option<[u8; 6]>,
    /// Source address (of `dst`'s version); default the interface's.
    pub src: Option<IpAddr>,
    pub packet_size: Option<u32>,
    /// UMEM frame size; default the smallest that fits (2048 or 4096).
    pub frame_size: Option<u32>,
    pub timeout: Duration,
    /// Largest UMEM to map (`--umem`); the file streams through it.
    pub umem: u64,
    /// Read the file with `O_DIRECT` (`--direct`).
    pub direct: bool,
    /// Read ahead inline or on a thread of its own (`--reader`).
    pub reader: ReaderMode,
    /// The pre-shared key's derived keys (`--key-file`).
    pub keys: Option<crate::proto::auth::Keys>,
    pub bind: BindMode,
    /// Transmit queues 0..N (`--queues`), each with a socket on the shared
    /// UMEM and a kicker thread when there are several.
    pub queues: super::QueueCount,
    pub batch: u32,
    /// Pace the transmit ring to this rate (token bucket).
    pub rate: Option<Rate>,
    /// Adapt the rate to the loss the receiver reports (AIMD), within `rate`
    /// or the link speed.
    pub adapt: bool,
    pub intervals: bool,
    /// Print `progress BYTES TOTAL` lines on stderr (for `bench`): bytes the
    /// receiver reports holding.
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct SendReport {
    #[serde(flatten)]
    pub summary: crate::report::Summary,
    /// Process start to the receiver's verdict: what the user waited for.
    pub e2e_s: f64,
    pub e2e_goodput_bps: f64,
    /// VmHWM: the most memory this process held at once.
    pub peak_rss_bytes: u64,
    /// The UMEM ring's size (`--umem`), whatever the file's.
    pub umem_bytes: u64,
    /// Where the file was read ahead: "inline" or "thread".
    pub reader: &'static str,
    /// Time spent reading the file into frames.
    pub read_s: f64,
    /// Time the first pass waited for the reader with nothing else to send.
    pub tx_stall_s: f64,
    /// Time the reader waited for the transmit side: the ring was full until
    /// the receiver's prefix (or the kernel's completions) freed a slot.
    pub reader_stall_s: f64,
    /// Chunks read a second time. Always 0 by design: a frame is reused only
    /// once the receiver's prefix is past its chunk, so no repair can need a
    /// re-read (`stats.repairs_unavailable` counts any NACK that would have).
    pub reread_chunks: u64,
    pub packet_size: u32,
    pub chunk_size: u32,
    pub kicks: u64,
    /// Kicks that moved nothing because the device queue was full.
    pub kicks_unproductive: u64,
    /// Kicks answered EBUSY: a frame the device dropped after it left our ring.
    pub kernel_tx_drops: u64,
    /// Transmit queues used, and what each carried.
    pub queues: u32,
    pub per_queue: Vec<QueueFigures>,
    pub rtt_us: Option<u64>,
    pub stats: SendStats,
    pub rusage: crate::os::process::Rusage,
    /// CPU and context switches from the first frame to the verdict.
    pub transfer_rusage: crate::os::process::Rusage,
    /// Data-path syscalls (see `crate::syscount`).
    pub syscalls: u64,
    /// With `--adapt`: the rate over time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptation: Option<Adaptation>,
}

/// One transmit queue's share of a transfer.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFigures {
    pub queue: u32,
    /// The UDP source port its data frames carry (RSS spreads by it).
    pub source_port: u16,
    /// Frames posted on its ring (first pass, repairs and Metas), and their
    /// bytes from the Ethernet header on.
    pub packets: u64,
    pub bytes: u64,
    /// Turns its ring had no room (every descriptor still in flight).
    pub ring_full_turns: u64,
    pub kicks: u64,
    /// Kicks the device could not take (its queue full).
    pub kicks_unproductive: u64,
    pub device_drops: u64,
    /// CPU time of its kicker thread (0 for queue 0: the scheduler kicks
    /// it).
    pub kicker_cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Adaptation {
    pub ceiling: String,
    /// "bits_per_sec" or "packets_per_sec".
    pub unit: &'static str,
    pub decreases: u64,
    /// Every 20 ms and at each decrease: seconds since the first frame, the
    /// rate, and the loss the last report gave (basis points).
    pub rate_log: Vec<RatePoint>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RatePoint {
    pub t: f64,
    pub rate: f64,
    pub loss_bp: u16,
}

/// A transmit-only socket's rings (queue 0; `Xsk::open_queues` takes others),
/// bound for descriptor chains when the plan's packets span several UMEM
/// frames.
pub(crate) fn tx_config(ifname: &str, bind: BindMode, plan: &FramePlan) -> XskConfig {
    XskConfig {
        ifname: ifname.to_string(),
        queue: 0,
        rx_size: UNREAD_RX_RING,
        tx_size: TX_RING,
        fill_size: FILL_SPARE,
        comp_size: COMP_RING,
        bind,
        multi_buffer: plan.multi_buffer(),
    }
}

/// The interface's speed from sysfs (veth says 10 Gb/s), if it knows one.
fn link_speed(ifname: &str) -> Option<Rate> {
    let mbps: i64 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/speed")).ok()?.trim().parse().ok()?;
    (mbps > 0).then_some(Rate::BitsPerSec(mbps as f64 * 1e6))
}

/// Everything that can be checked before a packet leaves.
pub struct Prepared {
    pub iface: Interface,
    pub plan: FramePlan,
    pub src: SocketAddr,
    pub file: File,
    pub file_size: u64,
    /// The file's identity when opened; checked again after the transfer.
    pub stamp: FileStamp,
    /// Names the file to the receiver, which refuses to write over it.
    pub source: crate::wire::message::SourceId,
    /// Transmit queues to use (`--queues`, resolved).
    pub queues: u32,
    /// How the transmit sockets bind (`--xdp-bind`, resolved against what
    /// the driver can do with these packets).
    pub bind: BindChoice,
    /// The file's mode and mtime, for the receiver's copy.
    pub attrs: FileAttrs,
}

/// What changes when a file is written, truncated or replaced in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
        }
    }
}

pub fn prepare(opts: &SendOptions) -> anyhow::Result<Prepared> {
    let iface = Interface::lookup(&opts.iface)?;
    if !iface.oper_up {
        bail!("interface {} is down; bring it up with `ip link set dev {} up`", iface.name, iface.name);
    }
    let version = IpVersion::of(&opts.dst);
    let src_ip = match opts.src.or_else(|| iface.source_for(opts.dst.ip())) {
        Some(ip) if ip.is_ipv4() == opts.dst.is_ipv4() => ip,
        Some(ip) => bail!("--src {ip} and --dst {} are of different IP versions", opts.dst),
        None => bail!(
            "interface {} has no {} address{}; give one with --src",
            iface.name,
            version.name(),
            if version == IpVersion::V6 { " of global scope" } else { "" }
        ),
    };
    // Privileges and kernel support, before the receiver hears of us: an
    // unprivileged user learns what is missing, and no partial is left.
    let probe = crate::afxdp::umem::UmemArea::new(64, 2048)?;
    Xsk::can_register(probe).with_context(|| format!("AF_XDP cannot run on {} here", iface.name))?;
    let file = open_input(&opts.file, opts.direct)?;
    let meta = file.metadata().with_context(|| format!("reading {}", opts.file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", opts.file.display());
    }
    let packet_size = opts.packet_size.unwrap_or(iface.mtu);
    let plan = frame_plan(opts, &iface, meta.len(), packet_size, version)?;
    crate::afxdp::umem::check_fits(u64::from(plan.total_frames) * u64::from(plan.frame_size))?;
    let queues = tx_queues(opts.queues, &iface)?;
    let bind = choose_bind(opts.bind, &iface, &plan)?;
    Ok(Prepared {
        bind,
        queues,
        src: SocketAddr::new(src_ip, 0),
        iface,
        plan,
        file,
        file_size: meta.len(),
        stamp: FileStamp::of(&meta),
        source: super::output::source_id(&meta),
        attrs: super::output::file_attrs(&meta),
    })
}

/// Resolves `--xdp-bind` for the plan's packets against what the driver
/// reports. Zero-copy asked for by name is also tried with a throwaway bind,
/// so that a device that refuses it fails here, before the receiver hears of
/// us: a driver can advertise zero-copy and still refuse it on a device
/// (virtio-net without VIRTIO_F_ACCESS_PLATFORM).
fn choose_bind(requested: BindMode, iface: &Interface, plan: &FramePlan) -> anyhow::Result<BindChoice> {
    let driver = DriverZeroCopy::query(iface.index);
    let choice = zerocopy::choose(requested, &iface.name, plan.packet_shape(), driver)?;
    if choice.bind == BindMode::ZeroCopy {
        let area = crate::afxdp::umem::UmemArea::new(64, plan.frame_size)?;
        let cfg = XskConfig { tx_size: 64, fill_size: 64, comp_size: 64, ..tx_config(&iface.name, choice.bind, plan) };
        Xsk::open(area, &cfg).context("zero-copy was asked for (--xdp-bind zerocopy)")?;
    }
    Ok(choice)
}

/// Most transmit queues `--queues auto` takes.
const AUTO_QUEUES_MAX: u32 = 16;

/// The transmit queues to use. `auto`: one per TX queue the interface
/// uses, but no more than the CPUs less one (the scheduler's), and at most
/// [`AUTO_QUEUES_MAX`]. A count the interface lacks is refused by name.
pub fn tx_queues(q: super::QueueCount, iface: &Interface) -> anyhow::Result<u32> {
    let have = iface.tx_queues_in_use().max(1);
    match q {
        super::QueueCount::Auto => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            Ok(have.min(cpus.saturating_sub(1)).clamp(1, AUTO_QUEUES_MAX))
        }
        super::QueueCount::Fixed(0) => bail!("--queues must be at least 1"),
        super::QueueCount::Fixed(n) if n as usize > MAX_DATA_PORTS => {
            bail!("--queues {n}: at most {MAX_DATA_PORTS} transmit queues")
        }
        super::QueueCount::Fixed(n) if n > have => bail!(
            "--queues {n} but {} uses {have} TX queue(s); for a veth pair create it with `numtxqueues N numrxqueues N`",
            iface.name
        ),
        super::QueueCount::Fixed(n) => Ok(n),
    }
}

/// Opens the file to send, `O_DIRECT` with `direct` (a file system that
/// refuses it says so by name).
fn open_input(path: &std::path::Path, direct: bool) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if direct { libc::O_DIRECT } else { 0 };
    std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| {
        if direct && e.raw_os_error() == Some(libc::EINVAL) {
            anyhow::anyhow!("opening {} with O_DIRECT (--direct): its file system does not support it", path.display())
        } else {
            anyhow::anyhow!("opening {}: {e}", path.display())
        }
    })
}

/// Why AF_XDP will not be used on an interface.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The interface is missing or down: a mistake to report, not a reason
    /// to fall back to TCP (which would route elsewhere, or not at all).
    #[error("{0}")]
    Interface(String),
    /// The interface is fine but this host cannot open AF_XDP sockets or
    /// register a UMEM: `--mode auto` falls back to TCP.
    #[error("{0}")]
    Sockets(String),
}

/// Whether AF_XDP can run on `iface` here (interface up, AF_XDP sockets,
/// a UMEM registers). Used by `send --mode auto` to choose before anything is
/// sent. It binds no queue, so it cannot collide with the real socket.
pub fn available(iface: &str) -> Result<String, Unavailable> {
    let info = Interface::lookup(iface).map_err(|e| Unavailable::Interface(e.to_string()))?;
    if !info.oper_up {
        return Err(Unavailable::Interface(format!(
            "interface {iface} is down; bring it up with `ip link set dev {iface} up`"
        )));
    }
    let area = crate::afxdp::umem::UmemArea::new(64, 2048).map_err(|e| Unavailable::Sockets(e.to_string()))?;
    Xsk::can_register(area).map_err(|e| Unavailable::Sockets(e.to_string()))?;
    Ok("AF_XDP sockets available; the kernel picks copy or zero-copy at bind".into())
}

/// Adds to `total` the time a condition held: from the first turn that
/// finds it (`since`) to the first that finds it over.
fn stall_clock(total: &mut Duration, since: &mut Option<Instant>, holds: bool, now: Instant) {
    match (holds, *since) {
        (true, None) => *since = Some(now),
        (false, Some(t)) => {
            *total += now.saturating_duration_since(t);
            *since = None;
        }
        _ => {}
    }
}

/// Finds the next hop's MAC: the neighbour table, after nudging the kernel to
/// resolve it if needed.
pub(crate) fn resolve_mac(iface: &Interface, local: IpAddr, dst: IpAddr) -> anyhow::Result<[u8; 6]> {
    if let Some(mac) = neigh::lookup(iface.index, dst)? {
        return Ok(mac);
    }
    // A datagram to the discard port makes the kernel resolve the neighbour;
    // what the peer does with it does not matter.
    let nudge = std::net::UdpSocket::bind((local, 0))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let _ = nudge.send_to(&[], (dst, 9));
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = neigh::lookup(iface.index, dst)? {
            return Ok(mac);
        }
    }
    bail!(
        "no neighbour entry for {dst} on {} after 3 s of {}; is the address on-link and up? (for a routed destination give the gateway's MAC with --dst-mac)",
        iface.name,
        if dst.is_ipv4() { "ARP" } else { "neighbour discovery" }
    )
}

/// How the file is cut into frames of `packet`-byte packets, as the options
/// ask: the frame size, and room for a tag behind each payload with a key.
fn frame_plan(
    opts: &SendOptions,
    iface: &Interface,
    file_size: u64,
    packet: u32,
    ip: IpVersion,
) -> Result<FramePlan, PlanError> {
    let mut plan = FramePlan::new(file_size, packet, iface.mtu, &iface.name, opts.umem, ip)?;
    if let Some(fs) = opts.frame_size {
        plan = plan.with_frame_size(fs, opts.umem)?;
    }
    if opts.keys.is_some() {
        plan = plan.with_tags(DATA_TAG_LEN as u32, opts.umem)?;
    }
    Ok(plan)
}

/// A new plan for a receiver whose data path takes datagrams of at most
/// `max` bytes (its MTU), smaller than ours: the packet size both ends take,
/// said on the terminal and in the log.
fn replan(
    opts: &SendOptions,
    iface: &Interface,
    plan: &FramePlan,
    file_size: u64,
    max: u32,
) -> anyhow::Result<FramePlan> {
    let packet = max.saturating_add(plan.ip.l3_overhead() as u32);
    let new = frame_plan(opts, iface, file_size, packet, plan.ip)
        .with_context(|| format!("the receiver takes packets of at most {packet} bytes"))?;
    info!(ours = plan.packet_size, theirs = packet, "the receiver's MTU is smaller: sending smaller packets");
    if opts.intervals {
        println!(
            "The receiver takes packets of at most {packet} bytes (its MTU); sending {packet}-byte packets instead of {}",
            plan.packet_size
        );
    }
    Ok(new)
}

/// Runs one transfer. When it fails on our side (interrupted, link down, the
/// file changed), the receiver is told with an Abort, so it stops at once
/// and keeps its output as partial instead of waiting for its idle timeout.
pub fn send(opts: &SendOptions, prep: Prepared) -> anyhow::Result<SendReport> {
    let ctrl_peer = SocketAddr::new(opts.dst.ip(), control_port(opts.dst.port())?);
    let mut ctrl = Control::connect(prep.src, ctrl_peer)?;
    // Each further transmit queue's frames leave from a port of its own,
    // held by a socket for the transfer so no one else takes it.
    let lanes = LanePorts::reserve(ctrl.local_addr()?, prep.queues)?;
    let session = crate::os::process::random_session();
    let shape = SessionInfo {
        file_size: prep.file_size,
        chunk_size: prep.plan.chunk_size,
        n_chunks: prep.plan.n_chunks,
        digest: None,
    };
    let scfg = SenderConfig {
        timeout: opts.timeout,
        source: prep.source,
        keys: opts.keys.clone(),
        name: super::file_name(&opts.file),
        data_ports: lanes.announced(),
        attrs: Some(prep.attrs),
        ..Default::default()
    };
    let mut sender = Sender::new(scfg, session, shape, Instant::now());
    let intervals = Intervals::new(opts.intervals, crate::os::process::process_start(), prep.file_size);
    let result = transfer(opts, prep, &mut sender, &mut ctrl, ctrl_peer, intervals, &lanes);
    if let Err(e) = &result {
        abort_receiver(&ctrl, &sender, &format!("sender failed: {e:#}"));
    }
    result
}

/// The UDP source port of each transmit queue: the control socket's for
/// queue 0, and one reserved by a bound socket for each other.
pub(crate) struct LanePorts {
    ports: Vec<u16>,
    _held: Vec<std::net::UdpSocket>,
}

impl LanePorts {
    pub(crate) fn reserve(control: SocketAddr, queues: u32) -> anyhow::Result<LanePorts> {
        let mut ports = vec![control.port()];
        let mut held = Vec::new();
        for _ in 1..queues {
            let s = std::net::UdpSocket::bind(SocketAddr::new(control.ip(), 0))
                .context("reserving a source port for a transmit queue")?;
            ports.push(s.local_addr()?.port());
            held.push(s);
        }
        Ok(LanePorts { ports, _held: held })
    }

    /// What the Hello lists: every queue's port, when there are several.
    fn announced(&self) -> DataPorts {
        if self.ports.len() > 1 {
            DataPorts::new(&self.ports).unwrap_or(DataPorts::NONE)
        } else {
            DataPorts::NONE
        }
    }
}

/// Binds one transmit socket per queue on a shared UMEM ring, raises the
/// copy-mode TX budget, and puts the spare frames on the fill rings.
fn open_sockets(iface: &Interface, plan: &FramePlan, bind: BindMode, queues: u32) -> anyhow::Result<Xsk> {
    let area = crate::afxdp::umem::UmemArea::new_ring(plan.total_frames, plan.frame_size)?;
    let ids: Vec<u32> = (0..queues).collect();
    let mut xsk = Xsk::open_queues(area, &tx_config(&iface.name, bind, plan), &ids)?;
    let mode = xsk.mode();
    info!(mode = mode.name(), umem_bytes = plan.umem_bytes(), slots = plan.slots, queues, "transmit sockets bound");
    // Some drivers need a populated fill ring even for TX-only sockets.
    let spare: Vec<u64> = plan.spare_frames().map(|i| xsk.area().addr(i)).collect();
    let share = (spare.len() / queues as usize).max(1);
    for (i, q) in xsk.queues_mut().iter_mut().enumerate() {
        if mode == XskMode::Copy {
            let _ = q.set_tx_budget(TX_RING);
        }
        let mine = spare.iter().copied().skip(i * share).take(share);
        q.fill(mine, FILL_SPARE);
    }
    Ok(xsk)
}

type Kicking<'scope> = Vec<std::thread::ScopedJoinHandle<'scope, (KickCounts, f64)>>;

/// Starts a kicker thread for each of `queues` (all but queue 0, which the
/// loop kicks): each returns its counts and its CPU time.
fn spawn_kickers<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    kickers: &'scope [KickRequests],
    queues: &[Queue],
) -> anyhow::Result<Kicking<'scope>> {
    kickers
        .iter()
        .zip(queues)
        .map(|(k, q)| {
            let handle = q.kick_handle();
            std::thread::Builder::new()
                .name(format!("xdpblast-kick{}", q.queue_id()))
                .spawn_scoped(scope, move || {
                    let counts = k.serve(|| handle.kick());
                    (counts, crate::os::process::Rusage::of_thread().cpu_s())
                })
                .context("starting a kicker thread")
        })
        .collect()
}

/// Stops the kicker threads once they have served what was asked; returns
/// each one's counts and CPU time.
fn stop_kickers(kickers: &[KickRequests], kicking: Kicking<'_>) -> anyhow::Result<Vec<(KickCounts, f64)>> {
    for k in kickers {
        k.stop();
    }
    kicking.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("a kicker thread panicked"))).collect()
}

/// The line that says how the file goes out.
fn mode_line(opts: &SendOptions, ifname: &str, mode: XskMode, plan: &FramePlan, size: u64, queues: u32) -> String {
    let on = if queues == 1 { "queue 0".to_string() } else { format!("queues 0-{}", queues - 1) };
    format!(
        "Sending {} ({}) to {} over AF_XDP: {} mode on {ifname} {on}, reader {}, {} B {} packets",
        opts.file.display(),
        human_bytes(size),
        opts.dst,
        mode.kind(),
        opts.reader.name(),
        plan.packet_size,
        plan.ip.name()
    )
}

/// Tells the receiver we gave up, so it stops at once instead of waiting for
/// its idle timeout. Best effort: it may be gone already.
pub(crate) fn abort_receiver(ctrl: &Control, sender: &Sender, reason: &str) {
    let mut cut = reason.len().min(512);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let abort = Message::Abort { session: sender.session(), reason: &reason[..cut] };
    let _ = ctrl.send(&abort.encode(sender.cookie().unwrap_or(0)));
}

fn transfer(
    opts: &SendOptions,
    prep: Prepared,
    sender: &mut Sender,
    ctrl: &mut Control,
    ctrl_peer: SocketAddr,
    mut intervals: Intervals,
    lanes: &LanePorts,
) -> anyhow::Result<SendReport> {
    let Prepared { iface, mut plan, src, file, file_size, stamp, queues, bind, .. } = prep;
    let session = sender.session();
    let local = ctrl.local_addr()?;
    let dst_mac = match opts.dst_mac {
        Some(m) => m,
        None => resolve_mac(&iface, src.ip(), opts.dst.ip())?,
    };
    info!(dst = %opts.dst, dst_mac = %format_mac(&dst_mac), src = %local, iface = %iface.name, "route resolved");

    // Hello first: the receiver prepares its output (and can refuse, e.g. a
    // full disk) before we map memory or read the file, and its cookie goes
    // into every frame we build.
    super::control::handshake(sender, ctrl, ctrl_peer, &mut |sender, now| {
        intervals.tick(now, 0, None, "waiting for the receiver's answer");
        if let Some(max) = sender.reshape_needed() {
            plan = replan(opts, &iface, &plan, file_size, max)?;
            let info = SessionInfo { file_size, chunk_size: plan.chunk_size, n_chunks: plan.n_chunks, digest: None };
            sender.reshape(info);
        }
        Ok(())
    })?;
    let cookie = sender.cookie().context("the receiver acknowledged without a cookie")?;

    // Data frames leave from the control socket's port, so the receiver can
    // hold data to the same source as the session's Hello.
    let tpl = FrameTemplate { src_mac: iface.mac, dst_mac, src: local, dst: opts.dst, ttl: 64 };
    let mut xsk = open_sockets(&iface, &plan, bind.bind, queues)?;
    let mode = xsk.mode();

    // SAFETY: `xsk`, which owns the area, outlives the scope below, and the
    // reader (and its thread, joined by the scope) lives only inside it.
    let frames = unsafe { xsk.area().writer() };
    let mut ra = ReadAhead::new(file, plan, frames, tpl, session, cookie, file_size);
    if queues > 1 {
        ra = ra.with_lane_ports(lanes.ports.clone());
    }
    if let Some(k) = &opts.keys {
        ra = ra.keyed(k.clone());
    }
    if opts.direct {
        ra = ra.direct()?;
    }
    let meta_first_len = ra.build_first_meta()?;
    let path = &opts.file;
    let unchanged: Unchanged<'_> =
        Box::new(move || std::fs::metadata(path).map(|m| FileStamp::of(&m)).ok() == Some(stamp));
    if opts.intervals {
        println!("{}", mode_line(opts, &iface.name, mode, &plan, file_size, queues));
        if let Some(note) = &bind.note {
            println!("  {note}");
        }
    }
    let mut tx = Transmit::new(opts, &iface, plan, meta_first_len, sender.rtt, intervals, queues);
    // The loop kicks queue 0 itself; each further queue has a kicker thread.
    let kickers: Vec<KickRequests> = (1..queues).map(|_| KickRequests::default()).collect();
    let (outcome, finished, read_time, kicked) = std::thread::scope(|scope| {
        let mut reader = match opts.reader {
            ReaderMode::Inline => Reader::inline(ra, plan, unchanged),
            ReaderMode::Thread => Reader::spawn(scope, ra, plan, unchanged).context("starting the reader thread")?,
        };
        let kicking = spawn_kickers(scope, &kickers, &xsk.queues_mut()[1..])?;
        info!(reader = opts.reader.name(), queues, "transfer started");
        sender.set_readable(0, 0, false);
        sender.start(Instant::now());
        let outcome = tx.run(opts, sender, ctrl, ctrl_peer, xsk.queues_mut(), &kickers, &mut reader);
        let kicked = stop_kickers(&kickers, kicking)?;
        anyhow::Ok((outcome, reader.finished(), reader.read_time(), kicked))
    })?;
    let verified = matches!(sender.outcome(), Some(Ok(())));
    outcome?;
    match sender.outcome() {
        Some(Ok(())) => {}
        Some(Err(e)) => bail!("{e}"),
        None => bail!("the transfer stopped without an outcome"),
    }
    let digest = finished.context("verified without a digest")?.digest;
    // What was sent is the file as read once (a change while reading fails
    // before the digest goes out). A change since then means the receiver
    // holds a version that no longer exists here: say so, and fail.
    let now_stamp = std::fs::metadata(&opts.file).map(|m| FileStamp::of(&m)).ok();
    if now_stamp != Some(stamp) {
        bail!(
            "{} changed while it was being sent (written, truncated or replaced); the receiver holds the version read (blake3 {}), not the current file",
            opts.file.display(),
            hex(&digest)
        );
    }
    let per_queue = tx.queue_figures(&lanes.ports, &kicked);
    let done = Finished { mode, file_size, plan, queues, digest, verified, read_time, per_queue };
    Ok(final_report(opts, &mut tx, sender, done))
}

/// What a verified transfer leaves for its report.
struct Finished {
    mode: XskMode,
    file_size: u64,
    plan: FramePlan,
    queues: u32,
    digest: [u8; 32],
    verified: bool,
    read_time: Duration,
    per_queue: Vec<QueueFigures>,
}

/// Prints the summary lines (end to end first) and builds the report.
fn final_report(opts: &SendOptions, tx: &mut Transmit, sender: &Sender, done: Finished) -> SendReport {
    let Finished { mode, file_size, plan, queues, digest, verified, read_time, per_queue } = done;
    let stats = sender.stats.clone();
    let elapsed = tx.elapsed_s();
    let e2e_s = crate::os::process::since_process_start();
    if opts.intervals {
        let iv = &mut tx.intervals;
        iv.finish(Instant::now(), file_size, Some(stats.retransmits));
        let first = iv.at(tx.first_post.unwrap_or(tx.start));
        let what = "sender, end to end: command start to verified file";
        println!("{}", summary_line(0.0, e2e_s, file_size, Some(stats.retransmits), what));
        let what = "sender, transfer phase: first frame to verified file";
        println!("{}", summary_line(first, e2e_s, file_size, None, what));
        println!("Verified by the receiver: blake3 {}", hex(&digest));
    }
    SendReport {
        summary: crate::report::Summary {
            mode: mode.name().to_string(),
            bytes: file_size,
            packets: Some(stats.first_pass + stats.retransmits + stats.meta_frames),
            retransmits: stats.retransmits,
            goodput_bps: file_size as f64 * 8.0 / elapsed.max(1e-9),
            elapsed_s: elapsed,
            digest: hex(&digest),
            verified,
        },
        e2e_s,
        e2e_goodput_bps: file_size as f64 * 8.0 / e2e_s.max(1e-9),
        peak_rss_bytes: crate::os::process::peak_rss_bytes(),
        umem_bytes: plan.umem_bytes(),
        reader: opts.reader.name(),
        read_s: read_time.as_secs_f64(),
        tx_stall_s: tx.tx_stall().as_secs_f64(),
        reader_stall_s: tx.reader_stall().as_secs_f64(),
        reread_chunks: 0,
        packet_size: plan.packet_size,
        chunk_size: plan.chunk_size,
        kicks: per_queue.iter().map(|q| q.kicks).sum(),
        kicks_unproductive: per_queue.iter().map(|q| q.kicks_unproductive).sum(),
        kernel_tx_drops: per_queue.iter().map(|q| q.device_drops).sum(),
        queues,
        per_queue,
        rtt_us: sender.rtt.map(|d| d.as_micros() as u64),
        stats,
        rusage: crate::os::process::Rusage::of_self(),
        transfer_rusage: crate::os::process::Rusage::of_self().since(&tx.rusage_at_start),
        syscalls: crate::os::syscount::total(),
        adaptation: tx.aimd.take().map(|a| Adaptation {
            ceiling: a.ceiling().to_string(),
            unit: match a.ceiling() {
                Rate::BitsPerSec(_) => "bits_per_sec",
                Rate::PacketsPerSec(_) => "packets_per_sec",
            },
            decreases: a.decreases,
            rate_log: std::mem::take(&mut tx.rate_log),
        }),
    }
}

/// The transmit loop's state: one turn reaps completions, refills free
/// slots from the file, services the control socket, adapts the rate, posts
/// what the protocol chooses, and kicks.
struct Transmit {
    plan: FramePlan,
    meta_first_len: u32,
    meta_last_len: u32,
    ids: Vec<FrameId>,
    /// One engine per transmit queue; the turn's frames go round them.
    engines: Vec<TxEngine>,
    /// Frames each queue took this turn.
    turn_posted: Vec<u32>,
    /// With several queues: the frames chosen for each and not yet posted,
    /// in order (see `route`).
    pending: Vec<std::collections::VecDeque<(u64, u32)>>,
    batch: u32,
    aimd: Option<Aimd>,
    /// When the last loss report came, and what had been posted by then.
    last_report: (Instant, u64, u64),
    rate_log: Vec<RatePoint>,
    next_rate_point: Instant,
    full_frame: u32,
    start: Instant,
    first_post: Option<Instant>,
    intervals: Intervals,
    next_progress: Instant,
    rusage_at_start: crate::os::process::Rusage,
    /// Time the first pass had ring room but waited for the reader, and
    /// since when it waits.
    reader_wait: Duration,
    reader_wait_since: Option<Instant>,
    /// Time the reader had no free slot (waiting for the receiver's prefix
    /// or for TX completions), and since when it has none.
    ring_full_time: Duration,
    ring_full_since: Option<Instant>,
}

impl Transmit {
    fn new(
        opts: &SendOptions,
        iface: &Interface,
        plan: FramePlan,
        meta_first_len: u32,
        rtt: Option<Duration>,
        intervals: Intervals,
        queues: u32,
    ) -> Self {
        let start = Instant::now();
        let full_frame = plan.payload_offset() as u32 + plan.chunk_size + plan.tag_len;
        let aimd = opts.adapt.then(|| {
            let ceiling = opts.rate.or_else(|| link_speed(&iface.name)).unwrap_or(Rate::BitsPerSec(100e9));
            info!(%ceiling, "rate adaptation on: AIMD on the receiver's loss reports");
            Aimd::new(ceiling, rtt)
        });
        // Each queue paces its share of the rate.
        let share = 1.0 / f64::from(queues.max(1));
        let rate = opts.rate.or(aimd.as_ref().map(|a| a.rate()));
        let batch = opts.batch.clamp(1, TX_RING);
        let engines = (0..queues.max(1))
            .map(|_| {
                let pacer = rate.map(|r| Pacer::new(r.scaled(share), full_frame, start));
                TxEngine::new(batch, COMP_RING, pacer).chained(plan.frame_size)
            })
            .collect();
        Transmit {
            plan,
            meta_first_len,
            meta_last_len: 0,
            ids: vec![FrameId::Meta { last: false }; batch as usize],
            engines,
            turn_posted: vec![0; queues.max(1) as usize],
            pending: (0..queues.max(1)).map(|_| std::collections::VecDeque::new()).collect(),
            batch,
            aimd,
            last_report: (start, 0, 0),
            rate_log: Vec::new(),
            next_rate_point: start,
            full_frame,
            start,
            first_post: None,
            intervals,
            next_progress: start,
            rusage_at_start: crate::os::process::Rusage::of_self(),
            reader_wait: Duration::ZERO,
            reader_wait_since: None,
            ring_full_time: Duration::ZERO,
            ring_full_since: None,
        }
    }

    /// Each queue's figures: its engine's, and its kicker thread's where
    /// it had one (else the engine kicked).
    fn queue_figures(&self, ports: &[u16], kicked: &[(KickCounts, f64)]) -> Vec<QueueFigures> {
        self.engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let kicker = i.checked_sub(1).and_then(|k| kicked.get(k));
                let (k, cpu) = kicker.copied().unwrap_or((
                    KickCounts {
                        kicks: e.kicker.kicks,
                        unproductive: e.kicker.unproductive,
                        device_drops: e.kicker.device_drops,
                    },
                    0.0,
                ));
                QueueFigures {
                    queue: i as u32,
                    source_port: ports.get(i).copied().unwrap_or(0),
                    packets: e.posted_frames,
                    bytes: e.posted_bytes,
                    ring_full_turns: e.ring_full_turns,
                    kicks: k.kicks,
                    kicks_unproductive: k.unproductive,
                    device_drops: k.device_drops,
                    kicker_cpu_s: cpu,
                }
            })
            .collect()
    }

    fn reader_stall(&self) -> Duration {
        self.ring_full_time + self.ring_full_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn tx_stall(&self) -> Duration {
        self.reader_wait + self.reader_wait_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn elapsed_s(&self) -> f64 {
        Instant::now().saturating_duration_since(self.first_post.unwrap_or(self.start)).as_secs_f64()
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        opts: &SendOptions,
        sender: &mut Sender,
        ctrl: &mut Control,
        ctrl_peer: SocketAddr,
        queues: &mut [Queue],
        kickers: &[KickRequests],
        reader: &mut Reader<'_>,
    ) -> anyhow::Result<()> {
        let mut idle_spins = 0u32;
        let mut next_control = Instant::now();
        let mut woke = false;
        let fail = |sender: &mut Sender, e: anyhow::Error| {
            sender.fail_local();
            Err(e)
        };
        loop {
            let now = Instant::now();
            if crate::os::signals::stop_requested() {
                return fail(sender, anyhow::anyhow!("interrupted"));
            }
            self.reap(queues, reader);
            if let Err(e) = self.read_ahead(sender, reader) {
                return fail(sender, e);
            }
            // The receiver reports every few milliseconds: while frames flow,
            // look at the control socket at most every CONTROL_EVERY.
            if woke || now >= next_control {
                woke = false;
                next_control = now + CONTROL_EVERY;
                if let Err(e) = super::control::service(sender, ctrl, now, ctrl_peer) {
                    return fail(sender, e);
                }
            }
            if sender.is_finished() {
                return Ok(());
            }
            self.adapt(sender, now);
            let posted = self.post(sender, queues, reader, now);
            if let Err(e) = self.kick(queues, kickers) {
                return fail(sender, anyhow::anyhow!("transmit failed on {}: {e}", opts.iface));
            }
            self.report(opts, sender, now);
            let in_flight = self.engines.iter().any(|e| e.outstanding() > 0 || e.chain_cut())
                || self.pending.iter().any(|p| !p.is_empty());
            // Held back by the pacer: sleep until its next slot at once.
            // Otherwise spin a little first, since the ring, the reader or
            // the receiver usually answers within microseconds.
            let paced = posted == 0 && self.pacer_holds(sender, now);
            if paced || (posted == 0 && !in_flight) {
                idle_spins += 1;
                if paced || idle_spins > 64 {
                    woke = self.wait(sender, ctrl, reader);
                }
            } else {
                idle_spins = 0;
            }
        }
    }

    /// Takes the kernel's completions on every queue; each frees its
    /// slot for the reader.
    fn reap(&mut self, queues: &mut [Queue], reader: &mut Reader<'_>) {
        for (e, q) in self.engines.iter_mut().zip(queues.iter_mut()) {
            e.reap(q, |addr| reader.completed(addr));
        }
    }

    /// Kicks where the kernel asks: queue 0 itself, each further queue
    /// through its kicker thread (which reports a failure back). On a
    /// machine with few cores a kicker thread for queue 0 as well only
    /// added wakeups.
    fn kick(&mut self, queues: &[Queue], kickers: &[KickRequests]) -> std::io::Result<()> {
        self.engines[0].kick(&queues[0], self.turn_posted[0])?;
        let others = self.engines.iter().zip(queues).zip(&self.turn_posted).skip(1);
        for (((e, q), &posted), k) in others.zip(kickers) {
            if e.outstanding() > 0 && (posted > 0 || q.tx_pending() > 0) && q.tx_needs_wakeup() {
                k.request();
            }
            if let Some(err) = k.take_error() {
                return Err(std::io::Error::new(err.kind(), format!("queue {}: {err}", q.queue_id())));
            }
        }
        Ok(())
    }

    /// Grants the reader the slots the receiver's prefix and the kernel's
    /// completions have freed, tells the protocol what is built, and once the
    /// file is read, hands it the digest for the closing Meta.
    fn read_ahead(&mut self, sender: &mut Sender, reader: &mut Reader<'_>) -> anyhow::Result<()> {
        if reader.finished().is_some() {
            return Ok(());
        }
        let now = Instant::now();
        let waiting = sender.is_transferring() && sender.backlog() > 0 && sender.backlog_ready() == 0;
        let built = reader.step(sender.stats.peer_prefix)?;
        // Each stall counts from the turn that finds it to the turn that
        // finds it over.
        stall_clock(&mut self.reader_wait, &mut self.reader_wait_since, waiting, now);
        stall_clock(&mut self.ring_full_time, &mut self.ring_full_since, built.ring_full, now);
        sender.set_readable(built.floor, built.next, built.ring_full);
        if let Some(f) = reader.finished() {
            self.meta_last_len = f.meta_last_len;
            sender.set_digest(f.digest);
        }
        Ok(())
    }

    /// Feeds the receiver's loss reports to the rate adaptation.
    fn adapt(&mut self, sender: &mut Sender, now: Instant) {
        let frames = self.engines.iter().map(|e| e.posted_frames).sum::<u64>();
        let bytes = self.engines.iter().map(|e| e.posted_bytes).sum::<u64>();
        let Some(a) = self.aimd.as_mut() else { return };
        let Some(loss_bp) = sender.take_loss_report() else { return };
        // What really went out since the last report, in the ceiling's unit.
        let (t0, frames0, bytes0) = self.last_report;
        let dt = now.saturating_duration_since(t0).as_secs_f64();
        let achieved = (dt > 0.0).then(|| match a.ceiling() {
            Rate::BitsPerSec(_) => (bytes - bytes0) as f64 * 8.0 / dt,
            Rate::PacketsPerSec(_) => (frames - frames0) as f64 / dt,
        });
        self.last_report = (now, frames, bytes);
        let changed = a.on_report(now, loss_bp, achieved);
        if let Some(r) = changed {
            let share = 1.0 / self.engines.len() as f64;
            for p in self.engines.iter_mut().filter_map(|e| e.pacer_mut()) {
                p.set_rate(r.scaled(share), now);
            }
        }
        let t = now.saturating_duration_since(self.first_post.unwrap_or(self.start)).as_secs_f64();
        let decreased = changed.is_some() && loss_bp > 0;
        if (decreased || now >= self.next_rate_point) && self.rate_log.len() < 100_000 {
            self.next_rate_point = now + Duration::from_millis(20);
            self.rate_log.push(RatePoint { t, rate: a.rate().value(), loss_bp });
        }
    }

    /// Posts what the protocol chooses. With several queues, each frame goes
    /// on its chunk's lane ([`lane_of`]), whose source port it carries: a
    /// lane's first pass then reaches the receiver in order on one receive
    /// queue (veth maps TX queue i to the peer's RX queue i; a NIC's RSS
    /// hashes the port), and the receiver tells its gaps from a lane that
    /// lags. Returns how many frames went out.
    fn post(&mut self, sender: &mut Sender, queues: &mut [Queue], reader: &mut Reader<'_>, now: Instant) -> u32 {
        if self.engines.len() == 1 {
            let posted = self.post_lane(0, sender, &mut queues[0], reader, now);
            self.turn_posted[0] = posted;
            if posted > 0 {
                self.first_post.get_or_insert(now);
            }
            return posted;
        }
        self.route(sender, reader, now);
        let mut total = 0;
        for (i, (engine, queue)) in self.engines.iter_mut().zip(queues.iter_mut()).enumerate() {
            let pending = &mut self.pending[i];
            let posted = engine.post(queue, now, self.full_frame, |want| {
                let take = want.min(pending.len());
                pending.drain(..take)
            });
            self.turn_posted[i] = posted;
            total += posted;
        }
        if total > 0 {
            self.first_post.get_or_insert(now);
        }
        total
    }

    /// Takes from the protocol as many frames as every lane has room to
    /// queue (at most a batch each), and queues each on its lane; Metas go
    /// on lane 0, whose port they carry. A frame id taken is always posted,
    /// in order, once its lane's ring has room.
    fn route(&mut self, sender: &mut Sender, reader: &mut Reader<'_>, now: Instant) {
        let room = self.pending.iter().map(|p| (self.batch as usize).saturating_sub(p.len())).min().unwrap_or(0);
        let want = room.min(self.ids.len());
        if want == 0 {
            return;
        }
        let (plan, info, lanes) = (self.plan, *sender.info(), self.pending.len());
        let n = sender.next_frames(now, &mut self.ids[..want]);
        for id in &self.ids[..n] {
            match *id {
                FrameId::Data(c) => {
                    let len = plan.data_len(&info, c);
                    reader.posted(c, plan.descs_for(len));
                    self.pending[lane_of(c, lanes)].push_back((plan.data_addr(c), len));
                }
                FrameId::Meta { last } => {
                    let len = if last { self.meta_last_len } else { self.meta_first_len };
                    self.pending[0].push_back((plan.meta_addr(last), len));
                }
            }
        }
    }

    /// Lets the protocol choose as many frames as queue `lane`'s engine has
    /// room to start (a frame id it hands out is always posted, a chain cut
    /// by the ring finished next turn). Returns how many.
    fn post_lane(
        &mut self,
        lane: usize,
        sender: &mut Sender,
        queue: &mut Queue,
        reader: &mut Reader<'_>,
        now: Instant,
    ) -> u32 {
        let plan = self.plan;
        let info = *sender.info();
        let (first_len, last_len) = (self.meta_first_len, self.meta_last_len);
        let ids = &mut self.ids;
        // The engine posts every frame it takes from the iterator, so each
        // data frame's descriptors go on the reader's ledger as it is taken.
        self.engines[lane].post(queue, now, self.full_frame, |want| {
            let want = want.min(ids.len());
            let n = sender.next_frames(now, &mut ids[..want]);
            ids[..n].iter().map(move |id| match *id {
                FrameId::Data(c) => {
                    let len = plan.data_len(&info, c);
                    reader.posted(c, plan.descs_for(len));
                    (plan.data_addr(c), len)
                }
                FrameId::Meta { last } => (plan.meta_addr(last), if last { last_len } else { first_len }),
            })
        })
    }

    /// Interval lines, and progress lines for `bench`.
    fn report(&mut self, opts: &SendOptions, sender: &Sender, now: Instant) {
        let size = sender.info().file_size;
        let held = (sender.stats.peer_received * u64::from(self.plan.chunk_size)).min(size);
        if opts.progress && now >= self.next_progress {
            self.next_progress = now + Duration::from_millis(100);
            eprintln!("progress {held} {size}");
        }
        let phase = if held >= size { "the receiver is verifying" } else { "" };
        self.intervals.tick(now, held, Some(sender.stats.retransmits), phase);
    }

    /// Whether frames are waiting that only the pacer holds back.
    fn pacer_holds(&self, sender: &Sender, now: Instant) -> bool {
        sender.backlog() > 0 && self.engines[0].pacer().is_some_and(|p| p.ready_at(self.full_frame) > now)
    }

    /// Nothing to post and nothing in flight: sleep on the control socket
    /// until the next timer, or the pacer's next slot, and return true. When
    /// only a reader thread's next chunks are awaited, sleep until it
    /// publishes them instead (at most a control interval), and return false.
    fn wait(&self, sender: &Sender, ctrl: &Control, reader: &Reader<'_>) -> bool {
        let on_reader = sender.backlog() > 0 && sender.backlog_ready() == 0 && self.ring_full_since.is_none();
        if on_reader && reader.wait_for_chunks(Duration::from_millis(1)) {
            return false;
        }
        let mut wait =
            sender.poll_timeout().map_or(Duration::from_millis(5), |t| t.saturating_duration_since(Instant::now()));
        // A pacer's slot matters only when data may go out: not while a
        // silent receiver is asked whether it is there.
        let now = Instant::now();
        if let Some(p) = self.engines[0].pacer().filter(|_| sender.backlog() > 0 && !sender.receiver_silent(now)) {
            wait = wait.min(p.ready_at(self.full_frame).saturating_duration_since(now));
        }
        crate::os::sys::wait_readable(&[ctrl.fd()], wait.min(Duration::from_millis(5)));
        true
    }
}
