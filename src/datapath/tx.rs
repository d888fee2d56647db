//! The one transmit engine: reserve ring slots, let a frame source fill
//! exactly those, post, pace, reap completions, and kick only when the kernel
//! asks. The transfer (`io::afxdp_send`) and `send --raw` (`io::raw_send`)
//! both drive their rings through it; only their frame sources differ.
//!
//! A frame longer than one UMEM frame (a jumbo packet, XDP multi-buffer)
//! leaves as a chain of descriptors, one per UMEM frame, each but the last
//! flagged `XDP_PKT_CONTD`. A reservation may end inside a chain: the rest
//! is posted first thing next turn, and the kernel holds the part it has
//! until the chain is whole. (Waiting for room for a whole chain instead
//! can stall for good: the ring's cached view of free slots is refreshed
//! only when it looks full.)
//!
//! It works on any [`TxRing`]: an AF_XDP queue, or the FIFO model its tests
//! check it against (in the manner of s2n-quic-xdp's ring tests).

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use tracing::warn;

use crate::afxdp::xsk::{Kick, Queue, XdpDesc, XDP_PKT_CONTD};
use crate::proto::pacer::Pacer;

/// What the engine needs of a transmit ring and its completion ring.
pub trait TxRing {
    /// Reserves up to `max` slots, lets `fill` choose that many (or fewer)
    /// descriptors, publishes them; returns how many.
    fn post_with<I>(&mut self, max: u32, fill: impl FnOnce(usize) -> I) -> u32
    where
        I: ExactSizeIterator<Item = XdpDesc>;
    /// Takes up to `max` completions, each address handed to `f`.
    fn reap_with(&mut self, max: u32, f: impl FnMut(u64)) -> u32;
    /// Descriptors posted that the kernel has not consumed yet.
    fn tx_pending(&self) -> u32;
    fn tx_needs_wakeup(&self) -> bool;
    fn kick(&self) -> Kick;
    /// Wakes the kernel to refill the queue's receive side from the fill
    /// ring, when it asks. A transmit-only socket bound in zero-copy mode
    /// still owns its queue's RX: the driver takes every receive buffer,
    /// the stack's packets included, from our UMEM, and may refill only on
    /// this wakeup (virtio_net from 7.x does), so ignoring it leaves the
    /// queue deaf to the receiver's control replies.
    fn service_fill(&mut self) {}
}

impl TxRing for Queue {
    fn post_with<I>(&mut self, max: u32, fill: impl FnOnce(usize) -> I) -> u32
    where
        I: ExactSizeIterator<Item = XdpDesc>,
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
    fn service_fill(&mut self) {
        Queue::wake_rx_if_needed(self)
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
    /// Bytes one descriptor carries (the UMEM frame size): a longer frame
    /// goes out as a chain.
    unit: u32,
    /// What a reservation cut off: address and bytes still to post, in
    /// order. At most the tail of one chain while frames are at most
    /// `full_frame` long (see `post`); a longer one only waits longer.
    carry: VecDeque<(u64, u32)>,
    /// This turn's descriptors (kept to reuse its allocation).
    descs: Vec<XdpDesc>,
    /// Never more in flight than the completion ring can hand back.
    comp_ring: u32,
    batch: u32,
    pacer: Option<Pacer>,
    pub kicker: Kicker,
    /// Descriptors completed so far.
    pub completed: u64,
    /// Frames (packets, whatever their descriptors) and their bytes handed
    /// to the ring so far.
    pub posted_frames: u64,
    pub posted_bytes: u64,
    /// Turns that found no room: every descriptor the completion ring can
    /// hand back was in flight.
    pub ring_full_turns: u64,
}

impl TxEngine {
    pub fn new(batch: u32, comp_ring: u32, pacer: Option<Pacer>) -> TxEngine {
        TxEngine {
            outstanding: 0,
            unit: u32::MAX,
            carry: VecDeque::new(),
            descs: Vec::with_capacity(batch.clamp(1, comp_ring) as usize),
            comp_ring,
            batch: batch.clamp(1, comp_ring),
            pacer,
            kicker: Kicker::default(),
            completed: 0,
            posted_frames: 0,
            posted_bytes: 0,
            ring_full_turns: 0,
        }
    }

    /// Frames longer than `unit` bytes (the UMEM frame size) go out as
    /// descriptor chains; the ring must be bound with XDP_USE_SG.
    pub fn chained(mut self, unit: u32) -> Self {
        self.unit = unit.max(1);
        self
    }

    /// Descriptors posted and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Whether part of a chain waits to be posted (next turn, first).
    pub fn chain_cut(&self) -> bool {
        !self.carry.is_empty()
    }

    pub fn pacer(&self) -> Option<&Pacer> {
        self.pacer.as_ref()
    }

    /// Paces from now on (None: not at all).
    pub fn set_pacer(&mut self, pacer: Option<Pacer>) {
        self.pacer = pacer;
    }

    pub fn pacer_mut(&mut self) -> Option<&mut Pacer> {
        self.pacer.as_mut()
    }

    /// Takes the ring's completions, each address handed to `f`.
    pub fn reap(&mut self, ring: &mut impl TxRing, f: impl FnMut(u64)) -> u32 {
        ring.service_fill();
        let n = ring.reap_with(self.comp_ring, f);
        self.outstanding -= n.min(self.outstanding);
        self.completed += u64::from(n);
        n
    }

    /// Reserves what the batch and the completion ring allow, posts the rest
    /// of a chain cut last turn, lets `fill` choose as many new frames
    /// `(addr, len)` as could start in the room left and the pacer allows
    /// (`full_frame`: the pacer's cost of a frame), posts their descriptors,
    /// and charges the pacer what they weigh. Every frame `fill` hands out
    /// is posted: the last one may be cut and finished next turn. Returns
    /// how many frames `fill` handed out.
    pub fn post<I>(
        &mut self,
        ring: &mut impl TxRing,
        now: Instant,
        full_frame: u32,
        fill: impl FnOnce(usize) -> I,
    ) -> u32
    where
        I: Iterator<Item = (u64, u32)>,
    {
        let room = self.batch.min(self.comp_ring - self.outstanding.min(self.comp_ring));
        if room == 0 {
            self.ring_full_turns += 1;
            return 0;
        }
        let chain = full_frame.div_ceil(self.unit).max(1) as usize;
        let (unit, carry, descs, pacer) = (self.unit, &mut self.carry, &mut self.descs, &mut self.pacer);
        let (mut frames, mut bytes) = (0u32, 0u64);
        let posted = ring.post_with(room, |cap| {
            descs.clear();
            while let Some((addr, len)) = carry.pop_front() {
                if let Some(rest) = split_frame(addr, len, unit, cap, descs) {
                    carry.push_front(rest);
                    break;
                }
            }
            let left = cap - descs.len();
            if left > 0 && carry.is_empty() {
                // Frames that could start in the room left: with frames of
                // at most `chain` descriptors, all but the last fit whole.
                let mut want = left.div_ceil(chain);
                if let Some(p) = pacer.as_mut() {
                    want = p.allowance(now, full_frame, want as u32) as usize;
                }
                if want > 0 {
                    for (addr, len) in fill(want).take(want) {
                        frames += 1;
                        bytes += u64::from(len);
                        if carry.is_empty() {
                            if let Some(rest) = split_frame(addr, len, unit, cap, descs) {
                                carry.push_back(rest);
                            }
                        } else {
                            carry.push_back((addr, len));
                        }
                    }
                }
            }
            descs.iter().copied()
        });
        self.outstanding += posted;
        self.posted_frames += u64::from(frames);
        self.posted_bytes += bytes;
        if let Some(p) = self.pacer.as_mut().filter(|_| frames > 0) {
            p.spend(frames, bytes);
        }
        frames
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
        while (self.outstanding > 0 || !self.carry.is_empty()) && Instant::now() < deadline {
            if !self.carry.is_empty() {
                // Finish a cut chain: the kernel holds its first part.
                self.post(ring, Instant::now(), 0, |_| std::iter::empty());
            }
            let _ = self.kicker.kick_if_needed(ring);
            self.reap(ring, &mut f);
        }
        self.outstanding
    }
}

/// Appends the descriptors of the frame at `addr`, `len` bytes long, one per
/// `unit` bytes, to `descs` until it holds `cap`. Returns the part that did
/// not fit. A caller that starts at most `ceil(left / chain)` frames of at
/// most `chain` descriptors in `left` free slots cuts at most the last one.
fn split_frame(mut addr: u64, mut len: u32, unit: u32, cap: usize, descs: &mut Vec<XdpDesc>) -> Option<(u64, u32)> {
    while descs.len() < cap {
        let more = len > unit;
        let take = if more { unit } else { len };
        descs.push(XdpDesc { addr, len: take, options: if more { XDP_PKT_CONTD } else { 0 } });
        if !more {
            return None;
        }
        addr += u64::from(unit);
        len -= unit;
    }
    Some((addr, len))
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
        tx: VecDeque<XdpDesc>,
        device: VecDeque<u64>,
        done: VecDeque<u64>,
        /// How many kicks the model lets through before it is "full".
        take_per_kick: usize,
        /// Times the engine serviced the fill ring.
        fill_serviced: u32,
    }

    impl RingModel {
        fn new(cap: u32, take_per_kick: usize) -> Self {
            RingModel {
                cap,
                tx: VecDeque::new(),
                device: VecDeque::new(),
                done: VecDeque::new(),
                take_per_kick,
                fill_serviced: 0,
            }
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
            I: ExactSizeIterator<Item = XdpDesc>,
        {
            let cap = max.min(self.cap.saturating_sub(self.tx.len() as u32)) as usize;
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
        fn service_fill(&mut self) {
            self.fill_serviced += 1;
        }
    }

    #[test]
    fn every_reap_services_the_fill_ring_even_with_nothing_to_reap() {
        let mut ring = RingModel::new(64, usize::MAX);
        let mut eng = TxEngine::new(64, 64, None);
        for turn in 1..=3 {
            assert_eq!(eng.reap(&mut ring, |_| {}), 0);
            assert_eq!(ring.fill_serviced, turn, "a zero-copy queue's RX waits on these wakeups");
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
                            let Some(d) = ring.tx.pop_front() else { break };
                            ring.device.push_back(d.addr);
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
                ring.device.extend(ring.tx.drain(..).map(|d| d.addr));
                ring.complete(usize::MAX);
            }
            eng.reap(&mut ring, |a| src.completed(a));
            prop_assert_eq!(eng.outstanding(), 0);
            prop_assert_eq!(eng.completed, src.posted);
            prop_assert_eq!(src.free.len() as u64, frames);
        }
    }

    proptest! {
        /// Frames longer than a descriptor go out as chains, cut anywhere by
        /// small reservations: what the kernel side reassembles (descriptors
        /// joined while `XDP_PKT_CONTD` is set) is exactly the frames handed
        /// out, in order, each whole; no descriptor is longer than a UMEM
        /// frame; every descriptor completes once. Also when the engine is
        /// told frames are shorter than they are (`full` of one UMEM frame),
        /// so that several cut frames wait.
        #[test]
        fn chains_reach_the_ring_whole_whatever_the_cuts(
            lens in proptest::collection::vec(1u32..=3 * 4096, 1..200),
            caps in proptest::collection::vec(1u32..8, 1..400),
            batch in 1u32..32,
            full in prop_oneof![Just(3 * 4096 + 14), Just(4096)],
        ) {
            let unit = 4096;
            let mut ring = RingModel::new(8, 8);
            let mut eng = TxEngine::new(batch, 32, None).chained(unit);
            let now = Instant::now();
            let mut next = 0usize;
            let mut handed: Vec<(u64, u32)> = Vec::new();
            let mut wire: Vec<(u64, u32)> = Vec::new();
            let mut open: Option<(u64, u32)> = None;
            let mut deliver = |ring: &mut RingModel, n: usize, wire: &mut Vec<(u64, u32)>| {
                for _ in 0..n {
                    let Some(d) = ring.tx.pop_front() else { break };
                    assert!(d.len <= unit, "a descriptor longer than a UMEM frame");
                    let (start, len) = open.take().unwrap_or((d.addr, 0));
                    assert_eq!(d.addr, start + u64::from(len), "a chain's descriptors are adjacent");
                    if d.options & XDP_PKT_CONTD != 0 {
                        open = Some((start, len + d.len));
                    } else {
                        wire.push((start, len + d.len));
                    }
                    ring.device.push_back(d.addr);
                }
            };
            for (turn, &cap) in caps.iter().enumerate() {
                ring.cap = cap;
                let got = eng.post(&mut ring, now, full, |want| {
                    let out: Vec<(u64, u32)> =
                        lens[next..].iter().take(want).enumerate().map(|(i, &l)| (((next + i) as u64) << 16, l)).collect();
                    next += out.len();
                    handed.extend(&out);
                    out.into_iter()
                });
                prop_assert!(got as usize <= handed.len());
                deliver(&mut ring, 1 + turn % 5, &mut wire);
                ring.complete(usize::MAX);
                eng.reap(&mut ring, |_| {});
                prop_assert_eq!(eng.outstanding() as usize, ring.tx.len() + ring.device.len() + ring.done.len());
            }
            // The end: the rest of a cut chain goes out first, then all
            // completes.
            ring.cap = 8;
            while eng.chain_cut() || !ring.tx.is_empty() {
                eng.post(&mut ring, now, full, |_| std::iter::empty());
                deliver(&mut ring, usize::MAX, &mut wire);
                ring.complete(usize::MAX);
                eng.reap(&mut ring, |_| {});
            }
            prop_assert_eq!(eng.outstanding(), 0);
            prop_assert!(open.is_none(), "a chain left unfinished");
            prop_assert_eq!(&wire, &handed);
            let descs: u64 = handed.iter().map(|&(_, l)| u64::from(l.div_ceil(unit))).sum();
            prop_assert_eq!(eng.completed, descs);
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
