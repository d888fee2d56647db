//! The receive loop with one thread per receive queue.
//!
//! Each queue's thread takes its ring's batches, lets the protocol accept
//! each datagram under a short lock (dedup, bitmap, counters), and writes
//! the accepted chunks with `pwritev` outside it, so the queues parse,
//! copy, write and hash in parallel: each hashes what it wrote into the
//! digest's tree ([`crate::digest`]) while the bytes are in cache. The main
//! thread keeps the control socket, the timers, the events, the journal and
//! the output's writeback.
//!
//! A chunk is marked received before its bytes are written and hashed, so
//! whatever needs them (the final verify, a journal's prefix, a read-back
//! over TCP) first waits for the batches accepted so far: each queue counts
//! the batches it accepted (under the lock) and the ones it landed
//! ([`Shared::written_up_to_now`]). A thread holds back the hashing of its
//! in-order run until a whole window of it is in ([`Scratch::holding`]), so
//! a batch counts as landed only once nothing the thread holds is left;
//! before it would wait for the lock, and before it sleeps, the thread
//! hashes what it holds, so the main thread never waits on a thread that
//! waits.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::super::stream_accept::{PendingStreams, HEADER_DEADLINE};
use super::{accept_admitted, BoxedPath, Control, Outcome, ReceiveLoop, RecvOptions, TcpHandoff};
use crate::digest::Scratch;
use crate::io::output::Landing;
use crate::proto::receiver::{DataOpener, Opened};
use crate::wire::message::HEADER_LEN;
use arrayvec::ArrayVec;

/// Longest sleep of an idle thread (data or main) while things happen.
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// Longest sleep of a thread that has seen nothing for [`QUIET_AFTER`]
/// waits (a receiver waiting for its sender): a datagram or a control
/// message still wakes it at once, and it notices a stop this late at most.
const QUIET_WAIT: Duration = Duration::from_millis(50);
/// Idle waits in a row (about a second of them) after which a thread
/// sleeps [`QUIET_WAIT`] at a time.
const QUIET_AFTER: u32 = 1000;

/// The longest an idle thread sleeps after `waits` idle waits in a row.
fn idle_cap(waits: u32) -> Duration {
    if waits > QUIET_AFTER {
        QUIET_WAIT
    } else {
        IDLE_WAIT
    }
}

/// What one receive queue's thread took in.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFigures {
    pub queue: u32,
    /// Datagrams taken from its ring, and the chunk bytes it wrote.
    pub packets: u64,
    pub bytes: u64,
    /// Batches it wrote, and the CPU time of its thread: queues that ran
    /// in parallel add up to more CPU than the transfer's wall time.
    pub batches: u64,
    pub cpu_s: f64,
    /// Seconds from the thread's start to its end.
    pub wall_s: f64,
}

/// A queue's batches: accepted under the lock, then written.
#[derive(Default)]
struct Gen {
    accepted: AtomicU64,
    written: AtomicU64,
}

/// A queue's batches accepted and not yet counted as written: the one it
/// is landing, and those whose bytes its digest scratch still holds.
/// Counted when dropped too (unwinding), so a thread that panics cannot
/// leave the main thread waiting for it.
struct Unwritten<'a> {
    written: &'a AtomicU64,
    batches: u64,
}

impl Unwritten<'_> {
    fn count(&mut self) {
        if self.batches > 0 {
            self.written.fetch_add(std::mem::take(&mut self.batches), Ordering::Release);
        }
    }
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        self.count();
    }
}

struct Shared {
    lp: Mutex<ReceiveLoop>,
    gens: Vec<Gen>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ReceiveLoop> {
        // A queue thread that panicked leaves the state as it was between
        // datagrams: carry on, its join reports the panic.
        self.lp.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Each queue's batches accepted so far; call with the lock held, so
    /// that every chunk the protocol counts as received is among them.
    fn accepted(&self) -> Vec<u64> {
        self.gens.iter().map(|g| g.accepted.load(Ordering::SeqCst)).collect()
    }

    /// Waits until every batch in `accepted` is written (microseconds: a
    /// batch is one `pwritev` per run).
    fn written_up_to(&self, accepted: &[u64]) {
        for (g, &a) in self.gens.iter().zip(accepted) {
            while g.written.load(Ordering::Acquire) < a {
                std::thread::yield_now();
            }
        }
    }

    /// With the lock held: waits for every write the protocol has counted.
    fn written_up_to_now(&self) {
        let a = self.accepted();
        self.written_up_to(&a);
    }
}

/// Runs one transfer with a thread per data path (receive queue); as
/// [`super::run`].
pub(super) fn run(
    mode: &str,
    paths: Vec<BoxedPath<'_>>,
    ctrl: &mut Control,
    opts: &RecvOptions,
    fallback: Option<&std::net::TcpListener>,
) -> Outcome {
    let shared = Shared {
        lp: Mutex::new(ReceiveLoop::new(opts, mode)),
        gens: paths.iter().map(|_| Gen::default()).collect(),
        stop: AtomicBool::new(false),
    };
    let (tcp, figures) = std::thread::scope(|scope| {
        // Named, so that `top -H` and a profile tell the queues apart.
        let handles: Vec<_> = paths
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                let shared = &shared;
                let thread = std::thread::Builder::new().name(format!("xdpblast-rxq{i}"));
                thread.spawn_scoped(scope, move || take_queue(shared, &mut *p, i)).map_err(|e| {
                    shared.lock().fail(format!("cannot start the thread of receive queue {i}: {e}"));
                })
            })
            .collect();
        let tcp = main_loop(&shared, ctrl, opts, fallback);
        shared.stop.store(true, Ordering::SeqCst);
        let figures: Vec<QueueFigures> = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let joined = h.map(|h| h.join());
                if let Ok(Err(_)) = joined {
                    shared.lock().fail(format!("the thread of receive queue {i} panicked"));
                }
                joined.ok().and_then(Result::ok).unwrap_or(QueueFigures {
                    queue: i as u32,
                    packets: 0,
                    bytes: 0,
                    batches: 0,
                    cpu_s: 0.0,
                    wall_s: 0.0,
                })
            })
            .collect();
        (tcp, figures)
    });
    let lp = shared.lp.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some((stream, header, pending)) = tcp {
        let mut lp = lp;
        let out = lp.out_path.clone();
        let resumed_from = lp.rx.resumed_from();
        let prepared = lp.out.take().zip(lp.journal.take());
        let encrypted = lp.rx.encrypted();
        let handoff = TcpHandoff { stream, header, out, pending, prepared, resumed_from, encrypted };
        return Outcome::TcpFallback(Box::new(handoff));
    }
    let mut report = lp.report(mode, opts);
    report.per_queue = figures;
    Outcome::Done(Box::new(report))
}

/// The main thread: control, timers, events and hashing until the
/// protocol is finished. Returns the TCP stream of a session admitted over
/// TCP, if one came, with the connections still sending their headers.
fn main_loop(
    shared: &Shared,
    ctrl: &mut Control,
    opts: &RecvOptions,
    fallback: Option<&std::net::TcpListener>,
) -> Option<(std::net::TcpStream, crate::wire::stream::StreamHeader, PendingStreams)> {
    let mut fds: Vec<RawFd> = vec![ctrl.fd()];
    if let Some(l) = fallback {
        fds.push(std::os::fd::AsRawFd::as_raw_fd(l));
    }
    let mut seen = 0u64;
    let mut quiet = 0u32;
    let mut pending = PendingStreams::new(HEADER_DEADLINE.min(opts.idle_timeout));
    loop {
        let now = Instant::now();
        let mut lp = shared.lock();
        // Idle: no datagram on any queue since the previous turn.
        let idle = lp.packets == seen;
        seen = lp.packets;
        if crate::os::signals::stop_requested() {
            lp.rx.abort("receiver interrupted");
        }
        let got = lp.poll_control(ctrl, now);
        if lp.rx.has_event() {
            // Verifying reads the file back.
            shared.written_up_to_now();
            lp.handle_events(opts);
        }
        if lp.rx.manifest_arrived() {
            // Before any report: the sender holds the tree's files back
            // until one shows the manifest taken.
            shared.written_up_to_now();
            lp.make_tree();
        }
        lp.timers_and_replies(ctrl, now, idle);
        if lp.rx.is_finished() {
            return None;
        }
        if let Some(l) = fallback {
            if let Some((stream, header)) = accept_admitted(l, &mut pending, &lp.rx) {
                return Some((stream, header, pending));
            }
        }
        let next_timer = lp.rx.poll_timeout();
        // What the queues hashed on arrival is verified: the journal keeps
        // up (at most every 250 ms or 16 MiB).
        lp.record_journal(false);
        quiet = if idle && got == 0 { quiet.saturating_add(1) } else { 0 };
        if !write_back(shared, lp) && got == 0 {
            // The queues do the data: sleep until a control datagram, the
            // next timer, or a millisecond (events from the queues wait
            // that long at most), longer once nothing came for a while.
            let cap = idle_cap(quiet);
            let wait = next_timer.map_or(cap, |t| t.saturating_duration_since(Instant::now()));
            crate::os::sys::wait_readable(&fds, wait.min(cap));
        }
    }
}

/// Starts the writeback of what is verified, outside the lock (the queues
/// keep writing meanwhile). Returns whether there was a step to start.
fn write_back(shared: &Shared, mut lp: MutexGuard<'_, ReceiveLoop>) -> bool {
    let Some(mut out) = lp.out.take_if(|o| o.writeback_due()) else { return false };
    drop(lp);
    out.write_back();
    shared.lock().out = Some(out);
    true
}

/// A datagram of a batch, after this queue's thread opened what it could
/// without the lock.
enum Frame<'a> {
    Opened(std::net::SocketAddr, Opened<'a>),
    Unopened(std::net::SocketAddr, &'a mut [u8]),
    /// A chain of frames in a session without a key: taken where it lies.
    Chain(std::net::SocketAddr, &'a [u8], &'a [&'a [u8]]),
    Undecodable(crate::wire::WireError),
}

impl<'a> Frame<'a> {
    /// `join`: where a keyed receiver joins chains (its tags need the
    /// payload in one piece); the space left after each one.
    fn open(d: &'a mut super::Datagram<'_>, opener: Option<&DataOpener>, join: Option<&mut &'a mut [u8]>) -> Frame<'a> {
        let (from, head, rest) = match d {
            Ok((from, p)) => (*from, &mut *p.head, p.rest),
            Err(e) => return Frame::Undecodable(*e),
        };
        let bytes = match join {
            _ if rest.is_empty() => head,
            None => return Frame::Chain(from, head, rest),
            Some(space) => {
                let (buf, left) = std::mem::take(space).split_at_mut(head.len() + chain_len(rest));
                *space = left;
                let mut at = head.len();
                buf[..at].copy_from_slice(head);
                for part in rest {
                    buf[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
                buf
            }
        };
        match opener {
            Some(o) => match o.open(bytes) {
                Ok(opened) => Frame::Opened(from, opened),
                Err(bytes) => Frame::Unopened(from, bytes),
            },
            None => Frame::Unopened(from, bytes),
        }
    }
}

/// Most datagrams [`take_batch`] takes at once: what one AF_XDP receive
/// hands over.
const BATCH_MAX: usize = crate::afxdp::xsk::RX_BATCH_MAX;
/// Most writes one batch makes: a chain of frames writes one per frame.
const WRITES_MAX: usize = BATCH_MAX + crate::afxdp::xsk::RX_REST_MAX;

fn chain_len(rest: &[&[u8]]) -> usize {
    rest.iter().map(|r| r.len()).sum()
}

/// The writes of a chained chunk at `offset`: its `len` bytes, the part in
/// the first frame then each other frame's, where they lie.
fn chain_writes<'a>(
    writes: &mut ArrayVec<(u64, &'a [u8]), WRITES_MAX>,
    offset: u64,
    first: &'a [u8],
    rest: &[&'a [u8]],
    len: usize,
) {
    let (mut at, mut left) = (offset, len);
    for part in std::iter::once(first).chain(rest.iter().copied()) {
        let take = part.len().min(left);
        if take > 0 {
            writes.push((at, &part[..take]));
        }
        (at, left) = (at + take as u64, left - take);
    }
}

/// What a queue's thread keeps from batch to batch.
struct QueueThread<'a> {
    index: usize,
    fig: QueueFigures,
    /// A keyed session's opener, from the last batch: this thread checks
    /// (and opens) its frames before it takes the lock.
    opener: Option<DataOpener>,
    landed: Landed<'a>,
    /// A keyed receiver's chains, joined (`None` without a key: chains are
    /// taken where they lie).
    joined: Option<Vec<u8>>,
}

/// What a queue's thread has landed: its batches written, and their bytes
/// hashed or held.
struct Landed<'a> {
    /// The digest's buffers, holding back the thread's in-order run.
    scratch: Scratch,
    /// Where the held bytes were landed: their digest.
    landing: Option<Arc<Landing>>,
    unwritten: Unwritten<'a>,
}

impl Landed<'_> {
    /// Hashes what the scratch holds, and counts every batch landed as
    /// written.
    fn release(&mut self) {
        if let Some(l) = &self.landing {
            l.release(&mut self.scratch);
        }
        self.unwritten.count();
    }

    /// Lands `writes` with `landing`, and counts the batches landed once
    /// nothing is held. What is held for another landing (a new output's)
    /// is hashed first, into the digest it was landed for.
    fn land(&mut self, landing: Arc<Landing>, writes: &mut [(u64, &[u8])]) -> std::io::Result<()> {
        if let Some(old) = self.landing.take_if(|l| !Arc::ptr_eq(l, &landing)) {
            old.release(&mut self.scratch);
        }
        let result = landing.land(writes, &mut self.scratch);
        self.landing = Some(landing);
        if !self.scratch.holds() {
            self.unwritten.count();
        }
        result
    }

    /// The receive loop's lock; when another thread has it (the main
    /// thread may be waiting, lock held, for this thread's batches), first
    /// releases what this thread holds.
    fn lock_shared<'s>(&mut self, shared: &'s Shared) -> MutexGuard<'s, ReceiveLoop> {
        match shared.lp.try_lock() {
            Ok(lp) => lp,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.release();
                shared.lock()
            }
        }
    }
}

/// One batch of a queue: keyed frames opened on this thread, then accepted
/// under the lock, then written and hashed (or held) outside it. It allocates
/// nothing: the frames and the writes live on the stack, in arrays of
/// fixed capacity that only what the batch holds is written to, and the
/// digest's scratch is the thread's.
fn take_batch(shared: &Shared, q: &mut QueueThread<'_>, now: Instant, batch: &mut [super::Datagram<'_>]) {
    let count = batch.len() as u64;
    q.fig.packets += count;
    let mut join = q.joined.as_mut().map(|j| {
        let chains = batch.iter().flatten().filter(|(_, p)| !p.rest.is_empty());
        let need = chains.map(|(_, p)| p.head.len() + chain_len(p.rest)).sum();
        if j.len() < need {
            j.resize(need, 0);
        }
        &mut j[..need]
    });
    // At most BATCH_MAX: the caller hands batches in pieces of that size.
    let frames: ArrayVec<Frame<'_>, BATCH_MAX> =
        batch.iter_mut().map(|d| Frame::open(d, q.opener.as_ref(), join.as_mut())).collect();
    let mut writes: ArrayVec<(u64, &[u8]), WRITES_MAX> = ArrayVec::new();
    let landing = {
        let mut lp = q.landed.lock_shared(shared);
        lp.packets += count;
        for f in frames {
            let w = match f {
                Frame::Opened(from, o) => lp.rx.on_data_opened(now, from, o),
                Frame::Unopened(from, bytes) => lp.rx.on_data(now, from, bytes),
                Frame::Chain(from, head, rest) => {
                    if let Some((offset, len)) = lp.rx.on_data_chain(now, from, head, chain_len(rest)) {
                        chain_writes(&mut writes, offset, &head[HEADER_LEN..], rest, len);
                    }
                    None
                }
                Frame::Undecodable(e) => {
                    lp.rx.on_undecodable(e);
                    None
                }
            };
            writes.extend(w);
        }
        q.opener = lp.rx.data_opener();
        if writes.is_empty() {
            return;
        }
        shared.gens[q.index].accepted.fetch_add(1, Ordering::SeqCst);
        q.landed.unwritten.batches += 1;
        lp.landing.clone()
    };
    let result = match landing {
        Some(l) => q.landed.land(l, &mut writes),
        None => Err(std::io::Error::other("data before the output was prepared")),
    };
    q.fig.batches += 1;
    q.fig.bytes += writes.iter().map(|w| w.1.len() as u64).sum::<u64>();
    if let Err(e) = result {
        q.landed.release();
        q.landed.lock_shared(shared).fail(format!("writing the output: {e}"));
    }
}

/// One receive queue's thread: takes batches until told to stop.
fn take_queue(shared: &Shared, path: &mut (dyn super::DataPath + Send), index: usize) -> QueueFigures {
    let start = Instant::now();
    let fig = QueueFigures { queue: index as u32, packets: 0, bytes: 0, batches: 0, cpu_s: 0.0, wall_s: 0.0 };
    let joined = shared.lock().rx.keyed().then(Vec::new);
    let unwritten = Unwritten { written: &shared.gens[index].written, batches: 0 };
    let landed = Landed { scratch: Scratch::holding(), landing: None, unwritten };
    let mut q = QueueThread { index, fig, opener: None, landed, joined };
    let mut idle_spins = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let r = path.poll(&mut |batch| {
            for part in batch.chunks_mut(BATCH_MAX) {
                take_batch(shared, &mut q, now, part);
            }
        });
        match r {
            Ok(0) => {
                idle_spins = idle_spins.saturating_add(1);
                if idle_spins > 64 {
                    q.landed.release();
                    path.before_block();
                    crate::os::sys::wait_readable(&[path.fd()], idle_cap(idle_spins - 64));
                }
            }
            Ok(_) => idle_spins = 0,
            Err(e) => {
                q.landed.release();
                let mut lp = shared.lock();
                lp.fatal.get_or_insert(format!("data path: {e}"));
                lp.rx.abort("receiver data path failed");
                break;
            }
        }
    }
    q.landed.release();
    q.fig.cpu_s = crate::os::process::Rusage::of_thread().cpu_s();
    q.fig.wall_s = start.elapsed().as_secs_f64();
    q.fig
}
