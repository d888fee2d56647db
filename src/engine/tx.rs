//! The one transmit engine: reserve ring slots, let a frame source fill
//! exactly those, post, pace, reap completions, and kick only when the kernel
//! asks. The transfer (`io::afxdp_send`) and `send --raw` (`io::raw_send`)
//! both drive their rings through it; only their frame sources differ.
//!
//! It works on any [`TxRing`]: an AF_XDP queue, or the FIFO model its tests
//! check it against (in the manner of s2n-quic-xdp's ring tests).

use std::io;
use std::time::Instant;

use tracing::warn;

use crate::afxdp::xsk::{Kick, Queue};
use crate::proto::pacer::Pacer;

/// What the engine needs of a transmit ring and its completion ring.
pub trait TxRing {
    /// Reserves up to `max` slots, lets `fill` choose that many (or fewer)
    /// descriptors `(addr, len)`, publishes them; returns how many.
    fn post_with<I>(&mut self, max: u32, fill: impl FnOnce(usize) -> I) -> u32
    where
        I: ExactSizeIterator<Item = (u64, u32)>;
    /// Takes up to `max` completions, each address handed to `f`.
    fn reap_with(&mut self, max: u32, f: impl FnMut(u64)) -> u32;
    /// Descriptors posted that the kernel has not consumed yet.
    fn tx_pending(&self) -> u32;
    fn tx_needs_wakeup(&self) -> bool;
    fn kick(&self) -> Kick;
}

impl TxRing for Queue {
    fn post_with<I>(&mut self, max: u32, fill: impl FnOnce(usize) -> I) -> u32
    where
        I: ExactSizeIterator<Item = (u64, u32)>,
    {
        Queue::post_with(self, max, fill)
    }
    fn reap_with(&mut self, max: u32, f: impl FnMut(u64)) -> u32 {
        Queue::reap_with(self, max, f)
    }
    fn tx_pending(&self) -> u32 {
        Queue::tx_pending(self)
    }
    fn tx_needs_wakeup(&self) -> bool {
        Queue::tx_needs_wakeup(self)
    }
    fn kick(&self) -> Kick {
        Queue::kick(self)
    }
}

/// Kicks the kernel to transmit what is on a TX ring, when it asks to be
/// kicked, and counts what the kicks achieved.
#[derive(Debug, Default)]
pub struct Kicker {
    pub kicks: u64,
    /// Kicks that moved nothing because the device queue was full.
    pub unproductive: u64,
    /// Kicks answered EBUSY: the device dropped a frame after it left our ring.
    pub device_drops: u64,
    backoff: u32,
}

impl Kicker {
    /// Fails only when transmitting can no longer work (the link went down).
    pub fn kick_if_needed(&mut self, q: &impl TxRing) -> io::Result<()> {
        if !q.tx_needs_wakeup() {
            return Ok(());
        }
        self.kicks += 1;
        let pending_before = q.tx_pending();
        match q.kick() {
            Kick::Ok => self.backoff = 0,
            Kick::Again => {
                // The device queue is full (a veth peer's ring, a NIC's TX
                // queue): the kernel took nothing. Kicking again at once only
                // burns syscalls, so wait a little longer each time, spinning
                // without a syscall, until it drains.
                if q.tx_pending() >= pending_before {
                    self.unproductive += 1;
                    self.backoff = (self.backoff * 2).clamp(64, 1 << 14);
                    for _ in 0..self.backoff {
                        std::hint::spin_loop();
                    }
                } else {
                    self.backoff = 0;
                }
            }
            Kick::Dropped => {
                self.device_drops += 1;
                if self.device_drops == 1 {
                    warn!("the device dropped a frame after it left the TX ring (kick returned EBUSY)");
                }
            }
            Kick::Fatal(e) => return Err(e),
        }
        Ok(())
    }
}

/// One ring's transmit state: what is in flight, the pacer, the kicks.
pub struct TxEngine {
    /// Descriptors posted and not yet completed.
    outstanding: u32,
    /// Never more in flight than the completion ring can hand back.
    comp_ring: u32,
    batch: u32,
    pacer: Option<Pacer>,
    pub kicker: Kicker,
    /// Descriptors completed so far.
    pub completed: u64,
    /// Descriptors and frame bytes posted so far.
    pub posted_frames: u64,
    pub posted_bytes: u64,
}

impl TxEngine {
    pub fn new(batch: u32, comp_ring: u32, pacer: Option<Pacer>) -> TxEngine {
        TxEngine {
            outstanding: 0,
            comp_ring,
            batch: batch.clamp(1, comp_ring),
            pacer,
            kicker: Kicker::default(),
            completed: 0,
            posted_frames: 0,
            posted_bytes: 0,
        }
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    pub fn pacer(&self) -> Option<&Pacer> {
        self.pacer.as_ref()
    }

    pub fn pacer_mut(&mut self) -> Option<&mut Pacer> {
        self.pacer.as_mut()
    }

    /// Takes the ring's completions, each address handed to `f`.
    pub fn reap(&mut self, ring: &mut impl TxRing, f: impl FnMut(u64)) -> u32 {
        let n = ring.reap_with(self.comp_ring, f);
        self.outstanding -= n.min(self.outstanding);
        self.completed += u64::from(n);
        n
    }

    /// Reserves what the batch, the completion ring and the pacer allow
    /// (`full_frame`: the pacer's cost of a frame), lets `fill` choose the
    /// descriptors, posts them, and charges the pacer what they weigh.
    /// Returns how many were posted.
    pub fn post<I>(
        &mut self,
        ring: &mut impl TxRing,
        now: Instant,
        full_frame: u32,
        fill: impl FnOnce(usize) -> I,
    ) -> u32
    where
        I: ExactSizeIterator<Item = (u64, u32)>,
    {
        let mut room = self.batch.min(self.comp_ring - self.outstanding.min(self.comp_ring));
        if let Some(p) = self.pacer.as_mut() {
            room = p.allowance(now, full_frame, room);
        }
        if room == 0 {
            return 0;
        }
        let mut bytes = 0u64;
        let posted = ring.post_with(room, |cap| {
            fill(cap).map(|(addr, len)| {
                bytes += u64::from(len);
                (addr, len)
            })
        });
        self.outstanding += posted;
        self.posted_frames += u64::from(posted);
        self.posted_bytes += bytes;
        if let Some(p) = self.pacer.as_mut().filter(|_| posted > 0) {
            p.spend(posted, bytes);
        }
        posted
    }

    /// Kicks when this turn posted something or the ring still holds
    /// descriptors, and the kernel asked for a kick.
    pub fn kick(&mut self, ring: &impl TxRing, posted: u32) -> io::Result<()> {
        if self.outstanding > 0 && (posted > 0 || ring.tx_pending() > 0) {
            self.kicker.kick_if_needed(ring)?;
        }
        Ok(())
    }

    /// Lets what is in flight complete, until `deadline`; returns how many
    /// descriptors are still out.
    pub fn drain(&mut self, ring: &mut impl TxRing, deadline: Instant, mut f: impl FnMut(u64)) -> u32 {
        while self.outstanding > 0 && Instant::now() < deadline {
            let _ = self.kicker.kick_if_needed(ring);
            self.reap(ring, &mut f);
        }
        self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use proptest::prelude::*;

    use super::*;

    /// The kernel's side as a FIFO: posted descriptors wait on the TX ring,
    /// a kick moves some to the device, the device completes in order.
    struct RingModel {
        cap: u32,
        tx: VecDeque<(u64, u32)>,
        device: VecDeque<u64>,
        done: VecDeque<u64>,
        /// How many kicks the model lets through before it is "full".
        take_per_kick: usize,
    }

    impl RingModel {
        fn new(cap: u32, take_per_kick: usize) -> Self {
            RingModel { cap, tx: VecDeque::new(), device: VecDeque::new(), done: VecDeque::new(), take_per_kick }
        }
        fn complete(&mut self, n: usize) {
            for _ in 0..n {
                let Some(a) = self.device.pop_front() else { break };
                self.done.push_back(a);
            }
        }
    }

    impl TxRing for RingModel {
        fn post_with<I>(&mut self, max: u32, fill: impl FnOnce(usize) -> I) -> u32
        where
            I: ExactSizeIterator<Item = (u64, u32)>,
        {
            let cap = max.min(self.cap - self.tx.len() as u32) as usize;
            let descs = fill(cap);
            assert!(descs.len() <= cap, "a source handed out more than was reserved");
            let n = descs.len() as u32;
            self.tx.extend(descs);
            n
        }
        fn reap_with(&mut self, max: u32, mut f: impl FnMut(u64)) -> u32 {
            let mut n = 0;
            while n < max {
                let Some(a) = self.done.pop_front() else { break };
                f(a);
                n += 1;
            }
            n
        }
        fn tx_pending(&self) -> u32 {
            self.tx.len() as u32
        }
        fn tx_needs_wakeup(&self) -> bool {
            true
        }
        fn kick(&self) -> Kick {
            // The model moves descriptors in `kick_model`; the engine only
            // sees that a kick happened.
            Kick::Ok
        }
    }

    /// A frame source over `frames` frames that never hands out a frame
    /// still in flight (the read-ahead's rule), oldest free frame first.
    struct Frames {
        free: VecDeque<u64>,
        in_flight: HashMap<u64, u32>,
        posted: u64,
    }

    impl Frames {
        fn new(frames: u64) -> Self {
            Frames { free: (0..frames).map(|f| f * 2048).collect(), in_flight: HashMap::new(), posted: 0 }
        }
        fn take(&mut self, cap: usize) -> Vec<(u64, u32)> {
            let n = cap.min(self.free.len());
            let out: Vec<(u64, u32)> = self.free.drain(..n).map(|a| (a, 1500)).collect();
            for (a, _) in &out {
                *self.in_flight.entry(*a).or_default() += 1;
            }
            self.posted += out.len() as u64;
            out
        }
        fn completed(&mut self, addr: u64) {
            let n = self.in_flight.get_mut(&addr).expect("a completion for a frame never posted");
            assert_eq!(*n, 1, "frame {addr} was in flight twice");
            self.in_flight.remove(&addr);
            self.free.push_back(addr);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// One engine turn: post what fits.
        Post,
        /// The kernel consumes up to n descriptors from the TX ring (a kick).
        Kick,
        /// The device completes up to n.
        Complete(usize),
        /// The engine reaps.
        Reap,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![Just(Op::Post), Just(Op::Kick), (0usize..40).prop_map(Op::Complete), Just(Op::Reap)]
    }

    proptest! {
        /// Whatever the interleaving: every posted descriptor completes
        /// exactly once, none is lost or duplicated, a frame is never reused
        /// while in flight, and the engine's count of what is out matches the
        /// model's.
        #[test]
        fn the_engine_against_a_fifo_ring(ops in proptest::collection::vec(op(), 1..300), frames in 1u64..64, batch in 1u32..32) {
            let mut ring = RingModel::new(16, 8);
            let mut src = Frames::new(frames);
            let mut eng = TxEngine::new(batch, 32, None);
            let now = Instant::now();
            for op in ops {
                match op {
                    Op::Post => {
                        eng.post(&mut ring, now, 1514, |cap| src.take(cap).into_iter());
                    }
                    Op::Kick => {
                        eng.kick(&ring, 1).expect("the model never fails a kick");
                        for _ in 0..ring.take_per_kick {
                            let Some((a, _)) = ring.tx.pop_front() else { break };
                            ring.device.push_back(a);
                        }
                    }
                    Op::Complete(n) => ring.complete(n),
                    Op::Reap => {
                        eng.reap(&mut ring, |a| src.completed(a));
                    }
                }
                let model_out = (ring.tx.len() + ring.device.len() + ring.done.len()) as u32;
                prop_assert_eq!(eng.outstanding(), model_out);
                prop_assert!(eng.outstanding() <= 32, "never more in flight than the completion ring holds");
                prop_assert_eq!(src.in_flight.len() as u32, model_out);
            }
            // Drain: everything posted comes back exactly once.
            while !(ring.tx.is_empty() && ring.device.is_empty()) {
                ring.device.extend(ring.tx.drain(..).map(|(a, _)| a));
                ring.complete(usize::MAX);
            }
            eng.reap(&mut ring, |a| src.completed(a));
            prop_assert_eq!(eng.outstanding(), 0);
            prop_assert_eq!(eng.completed, src.posted);
            prop_assert_eq!(src.free.len() as u64, frames);
        }
    }

    #[test]
    fn the_pacer_is_charged_what_was_posted() {
        let mut ring = RingModel::new(64, 64);
        let start = Instant::now();
        // 1000 frames per second, a burst of at most a few frames.
        let pacer = Pacer::new(crate::proto::pacer::Rate::PacketsPerSec(1000.0), 1514, start);
        let mut eng = TxEngine::new(64, 64, Some(pacer));
        let mut src = Frames::new(64);
        let first = eng.post(&mut ring, start, 1514, |cap| src.take(cap).into_iter());
        assert!((1..64).contains(&first), "a pacer holds a burst back: {first}");
        let again = eng.post(&mut ring, start, 1514, |cap| src.take(cap).into_iter());
        assert_eq!(again, 0, "no tokens left at the same instant");
    }
}
