//! The AF_XDP sender: the file streamed through a bounded ring of UMEM frames
//! ([`ReadAhead`]), the transmit scheduler posting their descriptors.
//!
//! Each turn of the loop reaps completions, lets the read-ahead refill the
//! slots the receiver's reports have freed, asks the protocol for the next
//! frame ids, posts `(addr, len)` descriptors in one batch, and kicks only
//! when the kernel asks. Posting never reads or writes a payload byte.
//!
//! [`prepare`] checks all it can before the receiver hears of us;
//! [`sockets`] binds a socket per queue on one UMEM ring; [`transmit`] is the
//! scheduler; [`report`] says what happened. This file runs them in order.

mod prepare;
mod report;
mod sockets;
mod transmit;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tracing::info;

use super::control::{control_port, Control};
use crate::afxdp::xsk::BindMode;
use crate::datapath::kicker::KickRequests;
use crate::datapath::readahead::ReadAhead;
use crate::datapath::reader::{Reader, ReaderMode, Unchanged};
use crate::net::iface::format_mac;
use crate::proto::pacer::Rate;
use crate::proto::{Sender, SenderConfig};
use crate::report::{hex, Intervals};
use crate::wire::frame::FrameTemplate;
use crate::wire::message::{Message, SessionInfo};

use prepare::replan;
pub(crate) use prepare::resolve_mac;
pub use prepare::{available, prepare, tx_queues, FileStamp, Prepared, Unavailable};
use report::{final_report, mode_line, Finished};
pub use report::{Adaptation, QueueFigures, RatePoint, SendReport};
pub(crate) use sockets::{open_sockets, LanePorts};
use sockets::{spawn_kickers, stop_kickers};
use transmit::Transmit;

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
    /// The file, or with `tree` the first path given (it names the transfer).
    pub file: PathBuf,
    /// A directory tree (or several paths), walked: sent as one stream.
    pub tree: Option<std::sync::Arc<crate::tree::scan::Scanned>>,
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
    /// With `keys`: the AEAD every payload is encrypted with (`None`: only
    /// tagged, `send --no-encrypt`).
    pub encrypt: Option<crate::wire::message::Cipher>,
    pub bind: BindMode,
    /// Transmit queues 0..N (`--queues`), each with a socket on the shared
    /// UMEM and a kicker thread when there are several.
    pub queues: super::QueueCount,
    pub batch: u32,
    /// Pace the transmit ring to this rate (token bucket).
    pub rate: Option<Rate>,
    /// Pace at what the receiver is shown to take
    /// ([`crate::proto::rate_control`]), within `rate` or the link speed.
    pub adapt: bool,
    pub intervals: bool,
    /// Print `progress BYTES TOTAL` lines on stderr (for `bench`): bytes the
    /// receiver reports holding.
    pub progress: bool,
    /// Start over even where the receiver holds part of the file from an
    /// interrupted transfer (`send --no-resume`).
    pub no_resume: bool,
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
        encrypt: opts.encrypt,
        name: super::file_name(&opts.file),
        data_ports: lanes.announced(),
        attrs: prep.tree.is_none().then_some(prep.attrs),
        tree: prep.tree,
        ..Default::default()
    };
    let mut sender = Sender::new(scfg, session, shape, Instant::now());
    let mut intervals = Intervals::new(opts.intervals, crate::os::process::process_start(), prep.file_size);
    if let (Some(scanned), Some(shape)) = (&opts.tree, prep.tree) {
        intervals = intervals.with_files(crate::tree::FileProgress::new(&scanned.manifest, shape.manifest_len));
    }
    let result = transfer(opts, prep, &mut sender, &mut ctrl, ctrl_peer, intervals, &lanes);
    if let Err(e) = &result {
        abort_receiver(&ctrl, &sender, &format!("sender failed: {e:#}"));
    }
    result
}

/// Ctrl-C: the last partial interval and a summary of what the receiver
/// held, as iperf3 prints one when interrupted.
fn summary_when_interrupted(tx: &mut Transmit, sender: &Sender, file_size: u64) {
    let held = (sender.stats.peer_received * u64::from(sender.info().chunk_size)).min(file_size);
    let retransmits = sender.stats.retransmits;
    tx.intervals.finish(Instant::now(), held, Some(retransmits));
    let e2e = crate::os::process::since_process_start();
    let what = "sender, interrupted: what the receiver held at Ctrl-C";
    println!("{}", crate::report::summary_line(0.0, e2e, held, Some(retransmits), what));
}

/// What was sent is the file as read once (a change while reading fails
/// before the digest goes out). A change since then means the receiver
/// holds a version that no longer exists here: say so, and fail.
fn check_unchanged(path: &std::path::Path, stamp: FileStamp, digest: &[u8; 32]) -> anyhow::Result<()> {
    let now_stamp = std::fs::metadata(path).map(|m| FileStamp::of(&m)).ok();
    if now_stamp != Some(stamp) {
        bail!(
            "{} changed while it was being sent (written, truncated or replaced); the receiver holds the version read (blake3 {}), not the current file",
            path.display(),
            hex(digest)
        );
    }
    Ok(())
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
    let Prepared { iface, mut plan, src, mut input, file_size, stamp, queues, queues_note, bind, tree, .. } = prep;
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
    let digest_hasher = || opts.keys.as_ref().map_or_else(blake3::Hasher::new, |k| k.digest_hasher());
    super::control::handshake(sender, ctrl, ctrl_peer, &mut |sender, now| {
        intervals.tick(now, 0, None, "waiting for the receiver's answer");
        super::control::answer_resume(sender, now, opts.no_resume, opts.intervals, &mut |len| {
            input.hash_prefix(len, digest_hasher())
        })?;
        if let Some(max) = sender.reshape_needed() {
            plan = replan(opts, &iface, &plan, file_size, max)?;
            let info = SessionInfo { file_size, chunk_size: plan.chunk_size, n_chunks: plan.n_chunks, digest: None };
            sender.reshape(info);
        }
        Ok(())
    })?;
    let cookie = sender.cookie().context("the receiver acknowledged without a cookie")?;
    intervals.resumed(sender.resumed_from());

    // Data frames leave from the control socket's port, so the receiver can
    // hold data to the same source as the session's Hello.
    let tpl = FrameTemplate { src_mac: iface.mac, dst_mac, src: local, dst: opts.dst, ttl: 64 };
    let area = crate::afxdp::umem::UmemArea::new_ring(plan.total_frames, plan.frame_size)?;
    let mut xsk = open_sockets(&iface, &plan, area, bind.bind, queues)?;
    let mode = xsk.mode();

    // SAFETY: `xsk`, which owns the area, outlives the scope below, and the
    // reader (and its thread, joined by the scope) lives only inside it.
    let frames = unsafe { xsk.area().writer() };
    let mut ra = ReadAhead::new(input, plan, frames, tpl, session, cookie, file_size);
    if queues > 1 {
        ra = ra.with_lane_ports(lanes.ports.clone());
    }
    if let Some(k) = &opts.keys {
        ra = ra.keyed(k.clone(), opts.encrypt);
    }
    if opts.direct {
        ra = ra.direct()?;
    }
    let meta_first_len = ra.build_first_meta()?;
    let path = &opts.file;
    // A tree's files are checked by the input as it reads them.
    let is_tree = tree.is_some();
    let unchanged: Unchanged<'_> =
        Box::new(move || is_tree || std::fs::metadata(path).map(|m| FileStamp::of(&m)).ok() == Some(stamp));
    if opts.intervals {
        println!("{}", mode_line(opts, &iface.name, mode, &plan, file_size, queues));
        for note in bind.note.iter().chain(&queues_note) {
            println!("  {note}");
        }
    }
    if let Some(note) = &queues_note {
        info!("{note}");
    }
    let mut tx = Transmit::new(opts, &iface, plan, meta_first_len, intervals, queues);
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
        let outcome = tx.run(sender, ctrl, ctrl_peer, xsk.queues_mut(), &kickers, &mut reader);
        let kicked = stop_kickers(&kickers, kicking)?;
        anyhow::Ok((outcome, reader.finished(), reader.read_time(), kicked))
    })?;
    let verified = matches!(sender.outcome(), Some(Ok(())));
    if outcome.is_err() && opts.intervals && crate::os::signals::stop_requested() {
        summary_when_interrupted(&mut tx, sender, file_size);
    }
    outcome?;
    match sender.outcome() {
        Some(Ok(())) => {}
        Some(Err(e)) => bail!("{e}"),
        None => bail!("the transfer stopped without an outcome"),
    }
    let digest = finished.context("verified without a digest")?.digest;
    if !is_tree {
        check_unchanged(&opts.file, stamp, &digest)?;
    }
    let per_queue = tx.queue_figures(&lanes.ports, &kicked);
    let done = Finished { mode, file_size, plan, queues, digest, verified, read_time, per_queue };
    Ok(final_report(opts, &mut tx, sender, done))
}
