//! Everything checked before a packet leaves: the interface, the file, the
//! frame plan, the bind mode, the queues, the next hop.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tracing::info;

use super::sockets::tx_config;
use super::SendOptions;
use crate::afxdp::xsk::{BindMode, Xsk, XskConfig, XskError};
use crate::afxdp::zerocopy::{self, BindChoice, DriverZeroCopy};
use crate::datapath::plan::{FramePlan, PlanError};
use crate::net::iface::Interface;
use crate::net::neigh;
use crate::proto::auth::DATA_TAG_LEN;
use crate::proto::pacer::Rate;
use crate::tree::input::{Input, TreeInput};
use crate::wire::frame::IpVersion;
use crate::wire::message::{FileAttrs, TreeShape, MAX_DATA_PORTS};

/// The interface's speed from sysfs (veth says 10 Gb/s), if it knows one.
pub(super) fn link_speed(ifname: &str) -> Option<Rate> {
    let mbps: i64 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/speed")).ok()?.trim().parse().ok()?;
    (mbps > 0).then_some(Rate::BitsPerSec(mbps as f64 * 1e6))
}

/// Everything that can be checked before a packet leaves.
pub struct Prepared {
    pub iface: Interface,
    pub plan: FramePlan,
    pub src: SocketAddr,
    /// The file, or a tree's stream.
    pub input: Input,
    pub file_size: u64,
    /// The stream is a tree's ([`crate::tree`]).
    pub tree: Option<TreeShape>,
    /// The file's identity when opened; checked again after the transfer.
    pub stamp: FileStamp,
    /// Names the file to the receiver, which refuses to write over it.
    pub source: crate::wire::message::SourceId,
    /// Transmit queues to use (`--queues`, resolved).
    pub queues: u32,
    /// Why `--queues auto` took fewer than the interface has, when it did.
    pub queues_note: Option<String>,
    /// How the transmit sockets bind (`--xdp-bind`, resolved against what
    /// the driver can do with these packets).
    pub bind: BindChoice,
    /// Whether the interface's driver reports zero-copy AF_XDP (None: the
    /// kernel does not say).
    pub zero_copy_advertised: Option<bool>,
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
    let (input, meta, tree) = open_input_of(opts)?;
    let len = match &input {
        Input::File(_) => meta.len(),
        Input::Tree(t) => t.len(),
    };
    let packet_size = opts.packet_size.unwrap_or(iface.mtu);
    let plan = frame_plan(opts, &iface, len, packet_size, version)?;
    crate::afxdp::umem::check_fits(u64::from(plan.total_frames) * u64::from(plan.frame_size))?;
    let queues = tx_queues(opts.queues, &iface)?;
    let driver = DriverZeroCopy::query(iface.index);
    let bind = choose_bind(opts.bind, &iface, &plan, driver)?;
    Ok(Prepared {
        bind,
        zero_copy_advertised: driver.map(|d| d.advertised),
        queues_note: auto_queues_note(opts.queues, queues, &iface),
        queues,
        src: SocketAddr::new(src_ip, 0),
        iface,
        plan,
        input,
        tree,
        file_size: len,
        stamp: FileStamp::of(&meta),
        source: crate::io::output::source_id(&meta),
        attrs: crate::io::output::file_attrs(&meta),
    })
}

/// Resolves `--xdp-bind` for the plan's packets against what the driver
/// reports. Zero-copy asked for by name is also tried with a throwaway bind,
/// so that a device that refuses it fails here, before the receiver hears of
/// us: a driver can advertise zero-copy and still refuse it on a device
/// (virtio-net without VIRTIO_F_ACCESS_PLATFORM).
pub(super) fn choose_bind(
    requested: BindMode,
    iface: &Interface,
    plan: &FramePlan,
    driver: Option<DriverZeroCopy>,
) -> anyhow::Result<BindChoice> {
    let choice = zerocopy::choose(requested, &iface.name, plan.packet_shape(), driver)?;
    if choice.bind == BindMode::ZeroCopy {
        let area = crate::afxdp::umem::UmemArea::new(64, plan.frame_size)?;
        let cfg = XskConfig { tx_size: 64, fill_size: 64, comp_size: 64, ..tx_config(&iface.name, choice.bind, plan) };
        Xsk::open(area, &cfg).context("zero-copy was asked for (--xdp-bind zerocopy)")?;
    }
    Ok(choice)
}

/// Most transmit queues `--queues auto` takes.
pub(super) const AUTO_QUEUES_MAX: u32 = 16;

/// The transmit queues to use. `auto`: one per TX queue the interface
/// uses, but no more than the CPUs less one (the scheduler's), and at most
/// [`AUTO_QUEUES_MAX`]. A count the interface lacks is refused by name.
pub fn tx_queues(q: crate::io::QueueCount, iface: &Interface) -> anyhow::Result<u32> {
    let have = iface.tx_queues_in_use().max(1);
    match q {
        crate::io::QueueCount::Auto => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            Ok(have.min(cpus.saturating_sub(1)).clamp(1, AUTO_QUEUES_MAX))
        }
        crate::io::QueueCount::Fixed(0) => bail!("--queues must be at least 1"),
        crate::io::QueueCount::Fixed(n) if n as usize > MAX_DATA_PORTS => {
            bail!("--queues {n}: at most {MAX_DATA_PORTS} transmit queues")
        }
        crate::io::QueueCount::Fixed(n) if n > have => bail!(
            "--queues {n} but {} uses {have} TX queue(s); for a veth pair create it with `numtxqueues N numrxqueues N`",
            iface.name
        ),
        crate::io::QueueCount::Fixed(n) => Ok(n),
    }
}

/// What `--queues auto` left out and why: it takes one queue per TX queue
/// but leaves a CPU to the scheduler, and takes at most [`AUTO_QUEUES_MAX`].
fn auto_queues_note(q: crate::io::QueueCount, chosen: u32, iface: &Interface) -> Option<String> {
    let have = iface.tx_queues_in_use().max(1);
    if q != crate::io::QueueCount::Auto || chosen >= have {
        return None;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let why = if chosen == AUTO_QUEUES_MAX {
        format!("it takes at most {AUTO_QUEUES_MAX}")
    } else {
        format!("one of this host's {cpus} CPUs is left to the scheduler")
    };
    Some(format!("--queues auto took {chosen} of the {have} TX queues {} uses: {why}", iface.name))
}

/// Opens the file to send, `O_DIRECT` with `direct` (a file system that
/// refuses it says so by name).
/// The input of `opts`: its file, or its tree's stream; with the
/// metadata of the file (or of the tree's first path).
fn open_input_of(opts: &super::SendOptions) -> anyhow::Result<(Input, std::fs::Metadata, Option<TreeShape>)> {
    if let Some(scanned) = &opts.tree {
        if opts.direct {
            bail!("--direct reads one file; it does not apply to a tree");
        }
        let meta = std::fs::metadata(&opts.file).with_context(|| format!("reading {}", opts.file.display()))?;
        let t = TreeInput::new(scanned)?;
        let shape = t.shape();
        return Ok((Input::Tree(t), meta, Some(shape)));
    }
    let file = open_input(&opts.file, opts.direct)?;
    let meta = file.metadata().with_context(|| format!("reading {}", opts.file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", opts.file.display());
    }
    Ok((Input::File(file), meta, None))
}

pub(super) fn open_input(path: &std::path::Path, direct: bool) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if direct { libc::O_DIRECT } else { 0 };
    std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| {
        if direct && e.raw_os_error() == Some(libc::EINVAL) {
            anyhow::anyhow!("opening {} with O_DIRECT (--direct): its file system does not support it", path.display())
        } else {
            anyhow::Error::new(e).context(format!("opening {}", path.display()))
        }
    })
}

/// Why AF_XDP will not be used on an interface.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The interface is missing or down: a mistake to report, not a reason
    /// to fall back to TCP (which would route elsewhere, or not at all).
    #[error(transparent)]
    Interface(#[from] crate::net::iface::IfaceError),
    #[error("interface {0} is down; bring it up with `ip link set dev {0} up`")]
    Down(String),
    /// The interface is fine but this host cannot open AF_XDP sockets or
    /// register a UMEM: `--mode auto` falls back to TCP.
    #[error(transparent)]
    Sockets(#[from] XskError),
    #[error(transparent)]
    Memory(#[from] crate::afxdp::umem::UmemError),
}

impl Unavailable {
    /// A mistake in the command (the interface), not a limit of this host.
    pub fn is_interface(&self) -> bool {
        matches!(self, Unavailable::Interface(_) | Unavailable::Down(_))
    }
}

/// Whether AF_XDP can run on `iface` here (interface up, AF_XDP sockets,
/// a UMEM registers). Used by `send --mode auto` to choose before anything is
/// sent. It binds no queue, so it cannot collide with the real socket.
pub fn available(iface: &str) -> Result<(), Unavailable> {
    let info = Interface::lookup(iface)?;
    if !info.oper_up {
        return Err(Unavailable::Down(iface.to_string()));
    }
    Xsk::can_register(crate::afxdp::umem::UmemArea::new(64, 2048)?)?;
    Ok(())
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
pub(super) fn frame_plan(
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
pub(super) fn replan(
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
