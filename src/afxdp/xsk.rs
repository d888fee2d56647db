//! One AF_XDP socket on one interface queue, over xdpilone's rings.
//!
//! This module and [`super::umem`] are the only places that touch ring memory
//! or UMEM pointers. The socket owns its UMEM area, and its fields are declared
//! so that rings and sockets drop before the memory they point into.

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::RawFd;

use tracing::{debug, info, warn};
pub use xdpilone::xdp::XdpDesc;
use xdpilone::xdp::XdpStatisticsV2;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

use arrayvec::ArrayVec;

use super::umem::UmemArea;
use crate::os::sys::SysError;

const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;
/// Not in Debian's 6.1 uapi headers: raises the number of frames one copy-mode
/// `sendto` may push (kernel default 32).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// Bind flag (kernel 6.6, not in Debian's 6.1 uapi headers): packets may
/// span several UMEM frames, as descriptor chains (XDP multi-buffer).
const XDP_USE_SG: u16 = 1 << 4;
/// Most descriptors one [`Xsk::receive`] takes: its packets are handed over
/// in an array on the stack.
pub const RX_BATCH_MAX: usize = 256;
/// Descriptor option: the packet goes on in the next descriptor.
pub const XDP_PKT_CONTD: u32 = 1;
/// Bytes the kernel keeps free in front of every received frame: a frame of
/// a UMEM chunk takes at most `chunk - XDP_PACKET_HEADROOM` bytes
/// (`xsk_pool_get_rx_frame_size`), in copy and zero-copy mode alike.
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// The longest frame one UMEM chunk of `frame_size` bytes receives whole.
pub fn rx_frame_capacity(frame_size: u32) -> u32 {
    frame_size - XDP_PACKET_HEADROOM
}

/// Most descriptors a received chain may have before it is dropped as
/// malformed: 64 KiB in 2 KiB frames, and some.
const MAX_RX_CHAIN: usize = 40;
/// Most frames one receive hands as the rest of chains: its descriptors
/// and those of a chain left unfinished by the last one.
pub const RX_REST_MAX: usize = RX_BATCH_MAX + MAX_RX_CHAIN;

/// Copy or zero-copy, as the kernel chose at bind time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XskMode {
    Copy,
    ZeroCopy,
}

impl XskMode {
    /// The mode as reports name it.
    pub fn name(self) -> &'static str {
        match self {
            XskMode::Copy => "afxdp-copy",
            XskMode::ZeroCopy => "afxdp-zerocopy",
        }
    }

    /// "copy" or "zero-copy", for sentences.
    pub fn kind(self) -> &'static str {
        match self {
            XskMode::Copy => "copy",
            XskMode::ZeroCopy => "zero-copy",
        }
    }
}

/// What to ask for at bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy if the driver has it, copy otherwise.
    Auto,
    Copy,
    ZeroCopy,
}

#[derive(Debug, Clone)]
pub struct XskConfig {
    pub ifname: String,
    pub queue: u32,
    /// Ring sizes; powers of two. 0 leaves that ring out.
    pub rx_size: u32,
    pub tx_size: u32,
    pub fill_size: u32,
    pub comp_size: u32,
    pub bind: BindMode,
    /// Bind with XDP_USE_SG: packets longer than one UMEM frame travel as
    /// descriptor chains, on TX and RX.
    pub multi_buffer: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("interface {0:?}: the name contains NUL")]
    InterfaceName(String),
    #[error("interface {0:?}: no queue to bind")]
    NoQueue(String),
    #[error("interface {ifname:?}: {err}")]
    Interface { ifname: String, err: io::Error },
    #[error("cannot create the AF_XDP socket: {0} (needs root or CAP_NET_RAW + CAP_BPF, and a kernel with CONFIG_XDP_SOCKETS)")]
    Socket(io::Error),
    #[error("cannot register the UMEM: {0} (locked-memory limit or memory cgroup; CAP_IPC_LOCK lifts the former)")]
    Umem(io::Error),
    #[error(
        "cannot bind to {ifname} queue {queue}{sg}: {err}{hint}",
        sg = if *.multi_buffer { " with multi-buffer (XDP_USE_SG)" } else { "" },
        err = io::Error::from_raw_os_error(*.errno)
    )]
    Bind { ifname: String, queue: u32, multi_buffer: bool, errno: i32, hint: &'static str },
    #[error("cannot map the {0} ring: {1}")]
    Map(&'static str, io::Error),
    #[error(transparent)]
    Area(#[from] super::umem::UmemError),
}

/// Registering a UMEM first creates the AF_XDP socket: EPERM there means
/// missing privileges (CAP_NET_RAW), not the locked-memory limit (ENOBUFS).
fn umem_error(e: xdpilone::Errno) -> XskError {
    match e.get_raw() {
        libc::EPERM | libc::EACCES => XskError::Socket(os_error(e)),
        _ => XskError::Umem(os_error(e)),
    }
}

/// xdpilone's errno as the standard library's error, which keeps the number.
fn os_error(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw())
}

/// One socket's rings: TX/RX, and the fill/completion pair of its queue.
pub struct Queue {
    tx: Option<RingTx>,
    rx: Option<RingRx>,
    device: DeviceQueue,
    user: User,
    fd: RawFd,
    queue: u32,
    /// Frames waiting to go back to the fill ring. The kernel publishes its
    /// fill-ring consumer index lazily, so a refill may briefly find less room
    /// than it just freed; what does not fit waits here for the next call.
    recycle: Vec<u64>,
    /// Receive: this call's descriptors, and a chain whose rest is not on
    /// the ring yet (kept, its frames held, until it is).
    rx_descs: Vec<XdpDesc>,
    rx_partial: Vec<XdpDesc>,
    /// The last receive's packets (index ranges into `rx_descs`); kept so
    /// a receive allocates nothing.
    rx_packets: Vec<std::ops::Range<usize>>,
    /// Received chains dropped as malformed (too long).
    pub rx_bad_chains: u64,
}

/// AF_XDP sockets on one or more queues of an interface, sharing one UMEM.
/// Dereferences to its first queue, which is all most callers use.
pub struct Xsk {
    // Drop order matters: rings and sockets first, then the UMEM registration,
    // then the memory itself.
    queues: Vec<Queue>,
    _umem: Umem,
    area: UmemArea,
    mode: XskMode,
}

impl std::ops::Deref for Xsk {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        &self.queues[0]
    }
}

impl std::ops::DerefMut for Xsk {
    fn deref_mut(&mut self) -> &mut Queue {
        &mut self.queues[0]
    }
}

// SAFETY: an Xsk owns its UMEM mapping, registration and rings outright;
// xdpilone's `Umem` is not `Send` only because it holds a raw pointer to
// that mapping. Nothing in it is shared with another thread (only with the
// kernel), so moving the owner to another thread, as the receive loop does
// with one queue per thread, moves all access with it.
unsafe impl Send for Xsk {}

impl Xsk {
    pub fn open(area: UmemArea, cfg: &XskConfig) -> Result<Xsk, XskError> {
        Xsk::open_queues(area, cfg, &[cfg.queue])
    }

    /// One socket per queue in `queues` (`cfg.queue` is ignored), all on one
    /// UMEM, each with its own fill/completion pair.
    pub fn open_queues(mut area: UmemArea, cfg: &XskConfig, queues: &[u32]) -> Result<Xsk, XskError> {
        let ucfg = UmemConfig {
            fill_size: cfg.fill_size,
            complete_size: cfg.comp_size,
            frame_size: area.frame_size(),
            headroom: 0,
            flags: 0,
        };
        if queues.is_empty() {
            return Err(XskError::NoQueue(cfg.ifname.clone()));
        }
        // SAFETY: `area` is a page-aligned mapping of `area.len()` bytes that this
        // struct owns and drops only after `_umem` and every ring (field order).
        let umem = unsafe { Umem::new(ucfg, area.as_nonnull_slice()) }.map_err(umem_error)?;
        let mut bound = Vec::with_capacity(queues.len());
        for (i, &q) in queues.iter().enumerate() {
            bound.push(Queue::bind(&umem, cfg, q, i == 0)?);
        }
        let mode = bound.first().map_or(XskMode::Copy, |q| query_mode(q.fd));
        Ok(Xsk { queues: bound, _umem: umem, area, mode })
    }

    /// Whether this process can create an AF_XDP socket and register a UMEM
    /// (privileges, kernel support), without binding any queue: a bound queue
    /// is released asynchronously, so a throwaway bind would race the real one.
    pub fn can_register(mut area: UmemArea) -> Result<(), XskError> {
        let ucfg =
            UmemConfig { fill_size: 64, complete_size: 64, frame_size: area.frame_size(), headroom: 0, flags: 0 };
        // SAFETY: `area` is a page-aligned mapping we own and that outlives the
        // UMEM, which is dropped at the end of this function.
        let umem = unsafe { Umem::new(ucfg, area.as_nonnull_slice()) }.map_err(umem_error)?;
        drop(umem);
        drop(area);
        Ok(())
    }

    pub fn mode(&self) -> XskMode {
        self.mode
    }

    pub fn area(&self) -> &UmemArea {
        &self.area
    }

    /// Every queue's rings, for one thread per queue.
    pub fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    /// Takes up to `max` received descriptors and hands their packets to
    /// `f` as one batch (so the caller can coalesce its writes), then returns
    /// the frames to the fill ring. Every frame is handed where it lies in
    /// the UMEM (it is ours until it goes back on the fill ring): a packet's
    /// first frame writable, and a chain's (multi-buffer) other frames after
    /// it, in order; nothing is copied. A chain still arriving waits, its
    /// frames held, for the next call. A chain too long to be ours is handed
    /// as an empty frame (which no parser takes). Returns how many
    /// descriptors were taken.
    pub fn receive(&mut self, max: u32, f: impl FnOnce(&mut [RxPacket<'_>])) -> u32 {
        let area = &self.area;
        let q = &mut self.queues[0];
        let mask = !(u64::from(area.frame_size()) - 1);
        let Some(n) = q.take_descs(max.min(RX_BATCH_MAX as u32), mask) else { return 0 };
        let whole = q.rx_packets.last().map_or(0, |p| p.end);
        let descs = &q.rx_descs[..whole];
        // On the stack: a receive allocates nothing. Each packet ends at a
        // descriptor this call took (at most RX_BATCH_MAX of them); a chain's
        // other frames may include those an unfinished chain left last time.
        let mut rest: ArrayVec<&[u8], RX_REST_MAX> = ArrayVec::new();
        let mut spans: ArrayVec<std::ops::Range<usize>, RX_BATCH_MAX> = ArrayVec::new();
        chain_rests(area, descs, &q.rx_packets, &mut rest, &mut spans, &mut q.rx_bad_chains);
        let mut packets: [RxPacket<'_>; RX_BATCH_MAX] = std::array::from_fn(|_| RxPacket::empty());
        let mut count = 0;
        for (p, span) in q.rx_packets.iter().zip(&spans) {
            if p.len() > MAX_RX_CHAIN {
                count += 1;
                continue;
            }
            let d = descs[p.start];
            // SAFETY: the kernel handed this frame to us on the RX ring; it will
            // not read or write it until we put it back on the fill ring below,
            // after `f` has returned and with it the last use of `packets`.
            // Each descriptor of the ring names a frame of its own, so no two
            // slices (these, and the chains' other frames) overlap.
            match unsafe { area.bytes_at_mut(d.addr, d.len) } {
                Some(head) => {
                    packets[count] = RxPacket { head, rest: &rest[span.clone()] };
                    count += 1;
                }
                None => warn!(addr = d.addr, len = d.len, "RX descriptor outside the UMEM; skipped"),
            }
        }
        if count > 0 {
            f(&mut packets[..count]);
        }
        q.recycle.extend(descs.iter().map(|d| d.addr & mask));
        if !q.recycle.is_empty() {
            let mut w = q.device.fill(q.recycle.len() as u32);
            let put = w.insert(q.recycle.iter().copied()) as usize;
            w.commit();
            q.recycle.drain(..put);
        }
        n
    }
}

/// A received packet, where it lies in the UMEM: its first frame, ours to
/// change in place, and for a chain (XDP multi-buffer) the frames after
/// it, in order.
pub struct RxPacket<'a> {
    pub head: &'a mut [u8],
    pub rest: &'a [&'a [u8]],
}

impl RxPacket<'_> {
    fn empty() -> Self {
        RxPacket { head: &mut [], rest: &[] }
    }
}

/// The frames after the first of each chain of `packets` (index ranges
/// into `descs`), into `rest` back to back, and each packet's span of
/// them into `spans` (empty for a single frame, and for a chain too long to
/// be ours, counted in `bad`).
fn chain_rests<'a>(
    area: &'a UmemArea,
    descs: &[XdpDesc],
    packets: &[std::ops::Range<usize>],
    rest: &mut ArrayVec<&'a [u8], RX_REST_MAX>,
    spans: &mut ArrayVec<std::ops::Range<usize>, RX_BATCH_MAX>,
    bad: &mut u64,
) {
    for p in packets {
        let at = rest.len();
        if p.len() > MAX_RX_CHAIN {
            *bad += 1;
        } else {
            for d in &descs[p.start + 1..p.end] {
                // SAFETY: the kernel handed these frames to us on the RX ring
                // and gets them back on the fill ring only after `receive`
                // has handed them over; we only read them.
                match unsafe { area.bytes_at(d.addr, d.len) } {
                    // At most one per descriptor: there is room.
                    Some(b) => rest.push(b),
                    None => warn!(addr = d.addr, len = d.len, "RX descriptor outside the UMEM; chain cut short"),
                }
            }
        }
        spans.push(at..rest.len());
    }
}

/// The packets among received descriptors: index ranges, each ending with a
/// descriptor without `XDP_PKT_CONTD`. Descriptors after the last such one
/// (a chain whose rest has not arrived) belong to no range.
fn split_chains(descs: &[XdpDesc], out: &mut Vec<std::ops::Range<usize>>) {
    out.clear();
    let mut start = 0;
    for (i, d) in descs.iter().enumerate() {
        if d.options & XDP_PKT_CONTD == 0 {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
}

impl Queue {
    /// Reads up to `max` descriptors from the RX ring after those of a chain
    /// left unfinished last time, into `rx_descs`; keeps the tail of a chain
    /// still arriving for next time (or drops one that never ends, its
    /// frames queued for the fill ring, `mask` giving each frame's start).
    /// Returns how many were read and the whole packets among them.
    fn take_descs(&mut self, max: u32, mask: u64) -> Option<u32> {
        let rx = self.rx.as_mut()?;
        self.rx_descs.clear();
        self.rx_descs.append(&mut self.rx_partial);
        let mut r = rx.receive(max);
        let mut n = 0;
        while let Some(desc) = r.read() {
            n += 1;
            self.rx_descs.push(desc);
        }
        r.release();
        split_chains(&self.rx_descs, &mut self.rx_packets);
        let whole = self.rx_packets.last().map_or(0, |p| p.end);
        if self.rx_descs.len() - whole > MAX_RX_CHAIN {
            self.rx_bad_chains += 1;
            self.recycle.extend(self.rx_descs[whole..].iter().map(|d| d.addr & mask));
        } else {
            self.rx_partial.extend_from_slice(&self.rx_descs[whole..]);
        }
        Some(n)
    }

    /// The first socket uses the UMEM's own descriptor; later ones get their
    /// own and bind with XDP_SHARED_UMEM, inheriting the first one's copy,
    /// zero-copy and need-wakeup settings (the kernel refuses them as flags).
    fn bind(umem: &Umem, cfg: &XskConfig, queue: u32, first: bool) -> Result<Queue, XskError> {
        let name = CString::new(cfg.ifname.as_str()).map_err(|_| XskError::InterfaceName(cfg.ifname.clone()))?;
        let mut ifinfo = IfInfo::invalid();
        ifinfo.from_name(&name).map_err(|e| XskError::Interface { ifname: cfg.ifname.clone(), err: os_error(e) })?;
        ifinfo.set_queue(queue);

        let sock = if first { Socket::with_shared(&ifinfo, umem) } else { Socket::new(&ifinfo) }
            .map_err(|e| XskError::Socket(os_error(e)))?;
        let device = umem.fq_cq(&sock).map_err(|e| XskError::Umem(os_error(e)))?;
        let bind_flags = if first {
            SocketConfig::XDP_BIND_NEED_WAKEUP
                | match cfg.bind {
                    BindMode::Auto => 0,
                    BindMode::Copy => SocketConfig::XDP_BIND_COPY,
                    BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
                }
                | if cfg.multi_buffer { XDP_USE_SG } else { 0 }
        } else {
            0
        };
        let scfg =
            SocketConfig { rx_size: NonZeroU32::new(cfg.rx_size), tx_size: NonZeroU32::new(cfg.tx_size), bind_flags };
        let user = umem.rx_tx(&sock, &scfg).map_err(|e| XskError::Socket(os_error(e)))?;
        bind_retrying(umem, &user).map_err(|e| {
            let raw = e.get_raw();
            let hint = match raw {
                libc::EINVAL if cfg.multi_buffer && first => {
                    " (the kernel has no multi-buffer AF_XDP, added in 6.6, or the queue is out of range; use packets that fit one UMEM frame)"
                }
                libc::EINVAL if cfg.bind == BindMode::ZeroCopy && queue_exists(&cfg.ifname, queue) => {
                    " (the driver refused zero-copy on this device: virtio-net needs VIRTIO_F_ACCESS_PLATFORM, iommu_platform=on in QEMU, which many cloud VMs lack, and from kernel 7.x refuses it at a jumbo MTU; use --xdp-bind auto or copy)"
                }
                libc::EINVAL => {
                    " (queue out of range for this interface? a veth has the queues given by numtxqueues/numrxqueues)"
                }
                libc::EBUSY => " (another AF_XDP socket is bound to this queue)",
                libc::EOPNOTSUPP if cfg.multi_buffer => {
                    " (the driver has no multi-buffer AF_XDP in this mode; use packets that fit one UMEM frame)"
                }
                libc::EOPNOTSUPP => " (the driver does not support the requested mode)",
                libc::ENETDOWN => " (interface is down)",
                _ => "",
            };
            XskError::Bind {
                ifname: cfg.ifname.clone(),
                queue,
                multi_buffer: cfg.multi_buffer,
                errno: raw,
                hint,
            }
        })?;
        let tx =
            if cfg.tx_size > 0 { Some(user.map_tx().map_err(|e| XskError::Map("TX", os_error(e)))?) } else { None };
        let rx =
            if cfg.rx_size > 0 { Some(user.map_rx().map_err(|e| XskError::Map("RX", os_error(e)))?) } else { None };
        let fd = user.as_raw_fd();
        info!(ifname = %cfg.ifname, queue, mode = query_mode(fd).kind(), "AF_XDP socket bound");
        Ok(Queue {
            tx,
            rx,
            device,
            user,
            fd,
            queue,
            recycle: Vec::new(),
            rx_descs: Vec::new(),
            rx_partial: Vec::new(),
            rx_packets: Vec::new(),
            rx_bad_chains: 0,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The interface queue this socket is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue
    }

    /// Raises the copy-mode TX budget per `sendto`. Returns the kernel's answer.
    pub fn set_tx_budget(&self, budget: u32) -> Result<(), crate::os::sys::SysError> {
        let r = crate::os::sys::setsockopt_u32(self.fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, budget);
        match &r {
            Ok(()) => info!(budget, "raised the copy-mode TX budget (XDP_MAX_TX_SKB_BUDGET)"),
            Err(e) => debug!(budget, "kernel refused XDP_MAX_TX_SKB_BUDGET: {e}"),
        }
        r
    }

    /// Puts frames on the fill ring. Returns how many went in.
    pub fn fill(&mut self, addrs: impl Iterator<Item = u64>, max: u32) -> u32 {
        let mut w = self.device.fill(max);
        let n = w.insert(addrs);
        w.commit();
        n
    }

    /// Reserves up to `max` TX slots, lets `fill` choose that many (or fewer)
    /// descriptors, and publishes them. Returns how many were posted.
    /// Reserving first means a caller never hands out more frames than the
    /// ring has room for.
    pub fn post_with<I>(&mut self, max: u32, fill: impl FnOnce(usize) -> I) -> u32
    where
        I: ExactSizeIterator<Item = XdpDesc>,
    {
        let Some(tx) = self.tx.as_mut() else { return 0 };
        let mut w = tx.transmit(max);
        let descs = fill(w.capacity() as usize);
        let want = descs.len();
        let n = w.insert(descs);
        w.commit();
        assert_eq!(n as usize, want, "the TX ring took fewer descriptors than it reserved");
        n
    }

    /// Descriptors posted that the kernel has not consumed yet.
    pub fn tx_pending(&self) -> u32 {
        self.tx.as_ref().map_or(0, |t| t.pending())
    }

    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.as_ref().is_some_and(|t| t.needs_wakeup())
    }

    /// Reaps up to `max` completions. Returns how many.
    pub fn reap(&mut self, max: u32) -> u32 {
        self.reap_with(max, |_| {})
    }

    /// Reaps up to `max` completions, handing each frame's address to `f`.
    pub fn reap_with(&mut self, max: u32, mut f: impl FnMut(u64)) -> u32 {
        let mut r = self.device.complete(max);
        let mut n = 0;
        while let Some(addr) = r.read() {
            f(addr);
            n += 1;
        }
        r.release();
        n
    }

    /// Asks the kernel to transmit what is on the TX ring.
    pub fn kick(&self) -> Kick {
        self.kick_handle().kick()
    }

    /// What another thread needs to kick this queue's TX ring, while this
    /// thread posts to it (see [`KickHandle`]).
    pub fn kick_handle(&self) -> KickHandle {
        KickHandle { fd: self.fd }
    }

    /// Wakes the kernel to refill from the fill ring, when it asked to.
    pub fn wake_rx_if_needed(&mut self) {
        if self.device.needs_wakeup() {
            crate::os::syscount::count(1);
            // SAFETY: zero-length non-blocking recvfrom on our socket, no buffers.
            unsafe {
                libc::recvfrom(
                    self.fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    pub fn statistics(&self) -> Option<XdpStatisticsV2> {
        self.user.statistics_v2().ok()
    }
}

/// How long a bind retries EBUSY: the kernel frees a queue's previous socket
/// asynchronously, so a bind right after another socket on that queue
/// closed (a probe's, a previous transfer's) can find it still taken.
const BIND_BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn bind_retrying(umem: &Umem, user: &User) -> Result<(), xdpilone::Errno> {
    let deadline = std::time::Instant::now() + BIND_BUSY_RETRY;
    loop {
        match umem.bind(user) {
            Err(e) if e.get_raw() == libc::EBUSY && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Whether `ifname` has a queue `queue`, from sysfs (in our namespace).
fn queue_exists(ifname: &str, queue: u32) -> bool {
    let dir = format!("/sys/class/net/{ifname}/queues");
    ["rx", "tx"].iter().any(|k| std::path::Path::new(&format!("{dir}/{k}-{queue}")).exists())
}

/// The socket of one queue, to kick its TX ring from a thread other than
/// the one posting to it: the kernel takes descriptors from the ring in
/// the kicking thread's sendto while the other produces, as the ring's
/// single-producer, single-consumer protocol allows. Holds no reference:
/// whoever spawns the kicking thread joins it before the socket closes.
#[derive(Debug, Clone, Copy)]
pub struct KickHandle {
    fd: RawFd,
}

impl KickHandle {
    /// Asks the kernel to transmit what is on the TX ring.
    pub fn kick(&self) -> Kick {
        crate::os::syscount::count(1);
        // SAFETY: a zero-length sendto, no buffers passed; on a closed or
        // reused descriptor it fails or kicks that socket, touching no memory.
        let r = unsafe { libc::sendto(self.fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if r >= 0 {
            return Kick::Ok;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // More work than one call's budget, or the driver's queue is full:
            // call again.
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => Kick::Again,
            // The kernel built an skb and the device dropped it.
            Some(libc::EBUSY) => Kick::Dropped,
            Some(libc::ENETDOWN) | Some(libc::ENXIO) => {
                Kick::Fatal(SysError::new("the interface went down or away", e).into())
            }
            _ => Kick::Fatal(e),
        }
    }
}

/// The result of a TX kick.
#[derive(Debug)]
pub enum Kick {
    Ok,
    /// Call again: budget used up or the device queue is full.
    Again,
    /// A frame was dropped by the device after leaving the ring.
    Dropped,
    Fatal(io::Error),
}

fn query_mode(fd: RawFd) -> XskMode {
    let mut opts: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `opts`, a u32 we own.
    let r = unsafe { libc::getsockopt(fd, SOL_XDP, XDP_OPTIONS, (&mut opts as *mut u32).cast(), &mut len) };
    if r == 0 && opts & XDP_OPTIONS_ZEROCOPY != 0 {
        XskMode::ZeroCopy
    } else {
        XskMode::Copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(addr: u64, more: bool) -> XdpDesc {
        XdpDesc { addr, len: 4096, options: if more { XDP_PKT_CONTD } else { 0 } }
    }

    fn split(descs: &[XdpDesc]) -> Vec<std::ops::Range<usize>> {
        let mut out = vec![0..0; 3];
        split_chains(descs, &mut out);
        out
    }

    #[test]
    fn chains_end_at_the_first_descriptor_without_contd() {
        let d = [desc(0, false), desc(1, true), desc(2, true), desc(3, false), desc(4, false), desc(5, true)];
        assert_eq!(split(&d), vec![0..1, 1..4, 4..5], "the unfinished chain at 5 is no packet yet");
        assert_eq!(split(&d[5..]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(split(&[]), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn a_chains_other_frames_are_handed_in_place_in_order() {
        let mut area = UmemArea::new(8, 2048).unwrap();
        for i in 0..8u32 {
            area.frame_mut(i).unwrap().fill(i as u8);
        }
        let d = |i: u64, len: u32, more: bool| XdpDesc {
            addr: i * 2048,
            len,
            options: if more { XDP_PKT_CONTD } else { 0 },
        };
        let descs =
            [d(1, 2048, true), d(2, 10, false), d(3, 100, false), d(4, 2048, true), d(6, 7, true), d(5, 5, false)];
        let (mut rest, mut spans, mut bad) = (ArrayVec::new(), ArrayVec::new(), 0);
        chain_rests(&area, &descs, &split(&descs), &mut rest, &mut spans, &mut bad);
        assert_eq!(spans.as_slice(), &[0..1, 1..1, 1..3]);
        assert_eq!(rest.as_slice(), &[&[2u8; 10][..], &[6u8; 7][..], &[5u8; 5][..]]);
        assert_eq!(bad, 0);
        let long: Vec<XdpDesc> = (0..=MAX_RX_CHAIN as u64).map(|i| d(i % 8, 1, i < MAX_RX_CHAIN as u64)).collect();
        let (mut rest, mut spans) = (ArrayVec::new(), ArrayVec::new());
        chain_rests(&area, &long, &split(&long), &mut rest, &mut spans, &mut bad);
        assert_eq!((spans.len(), spans[0].clone(), rest.len(), bad), (1, 0..0, 0, 1), "a chain too long is counted");
    }
}
