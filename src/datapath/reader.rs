//! The read-ahead as the transmit loop sees it: granted slots go in, built
//! chunks come out, whether the reading happens inline in the transmit loop
//! or on a thread of its own.
//!
//! The transmit side keeps the [`SlotLedger`] (which slots the receiver and
//! the kernel are done with) and publishes the grant; the reader builds
//! chunks below the grant and publishes how far it got. With a thread the
//! two figures travel as atomics: the reader's frame writes happen before
//! its `filled` store (release), the transmit side's posts after its load
//! (acquire), and the same pairing covers the grant in the other direction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use crate::datapath::plan::{FramePlan, PreloadError};
use crate::datapath::readahead::{ReadAhead, SlotLedger};

/// Chunks read per turn of the transmit loop (inline), small enough that
/// the ring is posted to between reads; and per step of the reader thread,
/// between publications of its progress.
const READ_STEP: u64 = 256;

/// Where reading happens (`send --reader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderMode {
    /// In the transmit loop, between posts.
    Inline,
    /// On a thread of its own.
    Thread,
}

impl ReaderMode {
    /// `auto`: a thread wherever there is a second CPU for it, inline on a
    /// single CPU, where the two would only take turns. On two vCPUs, with
    /// the receiver on the same machine, the thread measured 1.17x inline
    /// end to end (see the README).
    pub fn auto() -> ReaderMode {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus >= 2 {
            ReaderMode::Thread
        } else {
            ReaderMode::Inline
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReaderMode::Inline => "inline",
            ReaderMode::Thread => "thread",
        }
    }
}

/// What the read-ahead has built, for the protocol's `set_readable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readable {
    /// Chunks below this may have been overwritten: no longer postable.
    pub floor: u64,
    /// Chunks below this are built.
    pub next: u64,
    /// The reader has built all it was granted and waits for the receiver's
    /// prefix or the kernel's completions.
    pub ring_full: bool,
}

/// The end of reading: the digest and the closing Meta's length.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub digest: [u8; 32],
    pub meta_last_len: u32,
    /// Time spent reading and building frames.
    pub read_time: Duration,
}

/// The file's last state check, run once every chunk was read.
pub type Unchanged<'a> = Box<dyn Fn() -> bool + Send + 'a>;

pub struct Reader<'scope> {
    ledger: SlotLedger,
    n_chunks: u64,
    side: Side<'scope>,
    finished: Option<Finished>,
}

enum Side<'scope> {
    Inline { ra: Box<ReadAhead>, unchanged: Unchanged<'scope> },
    Thread { shared: Arc<Shared>, handle: Option<ScopedJoinHandle<'scope, Result<Finished, PreloadError>>> },
}

/// The figures the two threads exchange.
struct Shared {
    granted: AtomicU64,
    filled: AtomicU64,
    /// The transmit side gave up: the reader stops at its next step.
    stop: AtomicBool,
    /// The transmit side sleeps until the reader publishes more.
    tx_waiting: AtomicBool,
    tx_thread: std::thread::Thread,
}

impl<'scope> Reader<'scope> {
    /// Reads in the transmit loop.
    pub fn inline(ra: ReadAhead, plan: FramePlan, unchanged: Unchanged<'scope>) -> Self {
        Reader {
            ledger: SlotLedger::new(plan),
            n_chunks: plan.n_chunks,
            side: Side::Inline { ra: Box::new(ra), unchanged },
            finished: None,
        }
    }

    /// Reads on a thread spawned in `scope`, which joins it whatever happens.
    pub fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        ra: ReadAhead,
        plan: FramePlan,
        unchanged: Unchanged<'scope>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            granted: AtomicU64::new(0),
            filled: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            tx_waiting: AtomicBool::new(false),
            tx_thread: std::thread::current(),
        });
        let theirs = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("xdpblast-reader".into())
            .spawn_scoped(scope, move || read_on_thread(ra, &theirs, unchanged))?;
        Ok(Reader {
            ledger: SlotLedger::new(plan),
            n_chunks: plan.n_chunks,
            side: Side::Thread { shared, handle: Some(handle) },
            finished: None,
        })
    }

    /// `chunk`'s frame was posted, as `descs` descriptors.
    pub fn posted(&mut self, chunk: u64, descs: u32) {
        self.ledger.posted(chunk, descs);
    }

    /// The kernel completed the descriptor at UMEM address `addr`.
    pub fn completed(&mut self, addr: u64) {
        self.ledger.completed(addr);
    }

    /// Once every chunk was read and the file found unchanged.
    pub fn finished(&self) -> Option<Finished> {
        self.finished
    }

    /// One step: grants what the receiver's `prefix` and the kernel's
    /// completions allow, reads (inline) or collects what the thread read,
    /// and notices the end of reading.
    pub fn step(&mut self, prefix: u64) -> Result<Readable, PreloadError> {
        let granted = self.ledger.grant(prefix);
        let next = match &mut self.side {
            Side::Inline { ra, unchanged } => {
                ra.fill(granted, READ_STEP)?;
                if ra.is_done() && self.finished.is_none() {
                    let (meta_last_len, digest) = ra.finish(unchanged)?;
                    self.finished = Some(Finished { digest, meta_last_len, read_time: ra.read_time });
                }
                ra.next()
            }
            Side::Thread { shared, handle } => {
                if shared.granted.swap(granted, Ordering::Release) != granted {
                    if let Some(h) = handle.as_ref() {
                        h.thread().unpark();
                    }
                }
                if let Some(h) = handle.take_if(|h| h.is_finished()) {
                    let result = h.join().map_err(|_| std::io::Error::other("the reader thread panicked"))?;
                    self.finished = Some(result?);
                }
                // Loaded after the join: a thread that has finished stored
                // its last figure before it ended, so this one is final.
                shared.filled.load(Ordering::Acquire)
            }
        };
        Ok(Readable { floor: self.ledger.floor(), next, ring_full: next >= granted && granted < self.n_chunks })
    }

    /// Time spent reading so far (all of it once finished).
    pub fn read_time(&self) -> Duration {
        match (&self.finished, &self.side) {
            (Some(f), _) => f.read_time,
            (None, Side::Inline { ra, .. }) => ra.read_time,
            (None, Side::Thread { .. }) => Duration::ZERO,
        }
    }

    /// With a reader thread still at work: sleeps until it publishes more
    /// chunks (or ends), at most `max`, and returns true. Inline (nothing
    /// to wait for) returns false at once.
    pub fn wait_for_chunks(&self, max: Duration) -> bool {
        let Side::Thread { shared, handle: Some(_) } = &self.side else { return false };
        let seen = shared.filled.load(Ordering::Acquire);
        shared.tx_waiting.store(true, Ordering::SeqCst);
        // Checked after raising the flag: a publication in between either
        // shows here or finds the flag and unparks us.
        if shared.filled.load(Ordering::SeqCst) == seen {
            std::thread::park_timeout(max);
        }
        shared.tx_waiting.store(false, Ordering::Relaxed);
        true
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Side::Thread { shared, handle } = &self.side {
            shared.stop.store(true, Ordering::Relaxed);
            if let Some(h) = handle {
                h.thread().unpark();
            }
        }
    }
}

/// The reader thread: builds every granted chunk, publishes its progress,
/// parks when it has caught up with the grant, and ends with the digest.
fn read_on_thread(mut ra: ReadAhead, shared: &Shared, unchanged: Unchanged<'_>) -> Result<Finished, PreloadError> {
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Err(PreloadError::Io(std::io::Error::from_raw_os_error(libc::ECANCELED)));
        }
        let granted = shared.granted.load(Ordering::Acquire);
        if ra.next() < granted {
            ra.fill(granted, READ_STEP)?;
            shared.filled.store(ra.next(), Ordering::SeqCst);
            wake_tx(shared);
            continue;
        }
        if ra.is_done() {
            let end = ra.finish(&unchanged).map(|(meta_last_len, digest)| Finished {
                digest,
                meta_last_len,
                read_time: ra.read_time,
            });
            // The transmit side learns of the end from the finished handle.
            wake_tx(shared);
            return end;
        }
        // Caught up: the transmit side unparks us when it grants more. The
        // timeout only bounds a missed wake-up.
        std::thread::park_timeout(Duration::from_millis(2));
    }
}

fn wake_tx(shared: &Shared) {
    if shared.tx_waiting.swap(false, Ordering::SeqCst) {
        shared.tx_thread.unpark();
    }
}
