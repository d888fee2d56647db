//! A TX ring kicked from a thread of its own.
//!
//! With several transmit queues, one scheduler thread posts every queue's
//! descriptors (the protocol, the read-ahead and the ledger stay on one
//! thread), kicks queue 0 itself, and each further queue has a kicker
//! thread that calls sendto when the scheduler asks. In copy mode the
//! kernel does a queue's work inside that sendto: it builds each skb,
//! hands it to the driver, and on a veth the peer's XDP program and the
//! receiving socket's copy run there too. So the kickers spread the
//! transmit path over the cores, as `send --raw --queues` showed it
//! scales. In zero-copy mode a kick only wakes the driver.
//!
//! The scheduler asks with [`KickRequests::request`]: a counter bump, and
//! an unpark only when the kicker has gone to sleep. The kicker kicks once
//! for every run of requests it finds, spins briefly when there are none,
//! then parks (at most a millisecond, so a missed wakeup costs no more).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use tracing::warn;

use crate::afxdp::xsk::Kick;

/// Turns without a request before the kicker parks.
const SPINS: u32 = 256;
/// Longest park: a lost wakeup costs at most this.
const PARK: Duration = Duration::from_millis(1);

/// Shared by the scheduler and one queue's kicker thread.
#[derive(Debug, Default)]
pub struct KickRequests {
    requested: AtomicU64,
    asleep: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
    failed: AtomicBool,
    error: Mutex<Option<std::io::Error>>,
}

/// What one kicker did.
#[derive(Debug, Default, Clone, Copy)]
pub struct KickCounts {
    pub kicks: u64,
    /// Kicks the device could not take (its queue full): tried again.
    pub unproductive: u64,
    /// Kicks answered EBUSY: the device dropped a frame after it left our ring.
    pub device_drops: u64,
}

impl KickRequests {
    /// Asks for a kick (the scheduler, after posting or while descriptors
    /// wait on the ring).
    pub fn request(&self) {
        self.requested.fetch_add(1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Ends the kicker's loop once it has served what was asked.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// The error that ended the kicker, once (the link went down...).
    pub fn take_error(&self) -> Option<std::io::Error> {
        if !self.failed.load(Ordering::Relaxed) {
            return None;
        }
        self.error.lock().map_or(None, |mut e| e.take())
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// The kicker thread's loop: kicks with `kick` for every run of
    /// requests until [`KickRequests::stop`]. Returns what the kicks did.
    pub fn serve(&self, kick: impl Fn() -> Kick) -> KickCounts {
        let _ = self.thread.set(std::thread::current());
        let mut counts = KickCounts::default();
        let mut seen = 0u64;
        let mut idle = 0u32;
        let mut backoff = 0u32;
        loop {
            let want = self.requested.load(Ordering::SeqCst);
            if want == seen {
                if self.stop.load(Ordering::SeqCst) {
                    return counts;
                }
                idle += 1;
                if idle < SPINS {
                    std::hint::spin_loop();
                    continue;
                }
                self.asleep.store(true, Ordering::SeqCst);
                if self.requested.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
                    std::thread::park_timeout(PARK);
                }
                self.asleep.store(false, Ordering::SeqCst);
                continue;
            }
            idle = 0;
            seen = want;
            counts.kicks += 1;
            match kick() {
                Kick::Ok => backoff = 0,
                Kick::Again => {
                    // The device queue is full: the scheduler asks again
                    // while descriptors wait; do not hammer it meanwhile.
                    counts.unproductive += 1;
                    backoff = (backoff * 2).clamp(64, 1 << 14);
                    for _ in 0..backoff {
                        std::hint::spin_loop();
                    }
                }
                Kick::Dropped => {
                    counts.device_drops += 1;
                    if counts.device_drops == 1 {
                        warn!("the device dropped a frame after it left the TX ring (kick returned EBUSY)");
                    }
                }
                Kick::Fatal(e) => {
                    if let Ok(mut slot) = self.error.lock() {
                        *slot = Some(e);
                    }
                    self.failed.store(true, Ordering::SeqCst);
                    return counts;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// Every request is served by a kick that starts after it (requests
    /// that arrive during one kick may share the next), even when the
    /// kicker has parked in between; stop ends the loop.
    #[test]
    fn every_request_is_followed_by_a_kick() {
        let req = KickRequests::default();
        let kicks = AtomicU32::new(0);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                req.serve(|| {
                    kicks.fetch_add(1, Ordering::SeqCst);
                    Kick::Ok
                })
            });
            for round in 1..=20u32 {
                req.request();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while kicks.load(Ordering::SeqCst) < round {
                    assert!(std::time::Instant::now() < deadline, "request {round} was never served");
                    std::thread::yield_now();
                }
                // Long enough for the kicker to park before the next one.
                if round % 5 == 0 {
                    std::thread::sleep(Duration::from_millis(3));
                }
            }
            req.stop();
            let counts = h.join().expect("the kicker panicked");
            assert_eq!(counts.kicks, 20);
        });
    }

    #[test]
    fn a_fatal_kick_ends_the_kicker_with_its_error() {
        let req = KickRequests::default();
        req.request();
        let counts = req.serve(|| Kick::Fatal(std::io::Error::from_raw_os_error(libc::ENETDOWN)));
        assert_eq!(counts.kicks, 1);
        assert!(req.has_failed());
        assert_eq!(req.take_error().and_then(|e| e.raw_os_error()), Some(libc::ENETDOWN));
    }
}
