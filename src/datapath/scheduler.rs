//! The transmit scheduler: which frames go on which queue's ring, turn by
//! turn. It asks the protocol ([`Sender`]) for frame ids, finds them in the
//! UMEM by the plan, puts each data frame on its chunk's lane, posts through
//! one [`TxEngine`] per queue, hands completions to the reader's ledger, and
//! grants the reader the slots they free. It knows nothing of sockets,
//! options or the terminal: it runs on any [`TxRing`], and its tests run it
//! over an in-memory ring model.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::plan::{FramePlan, PreloadError};
use super::reader::Reader;
use super::tx::{TxEngine, TxRing};
use crate::proto::pacer::{Pacer, Rate};
use crate::proto::{FrameId, Sender};
use crate::wire::message::lane_of;

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

pub struct Scheduler {
    plan: FramePlan,
    meta_first_len: u32,
    meta_last_len: u32,
    ids: Vec<FrameId>,
    /// One engine per transmit queue.
    engines: Vec<TxEngine>,
    /// Frames each queue took this turn.
    turn_posted: Vec<u32>,
    /// With several queues: the frames chosen for each and not yet posted,
    /// in order (see `route`).
    pending: Vec<VecDeque<(u64, u32)>>,
    batch: u32,
    /// What a data frame weighs for the pacers.
    full_frame: u32,
    first_post: Option<Instant>,
    /// Time the first pass had ring room but waited for the reader, and
    /// since when it waits.
    reader_wait: Duration,
    reader_wait_since: Option<Instant>,
    /// Time the reader had no free slot (waiting for the receiver's prefix
    /// or for TX completions), and since when it has none.
    ring_full_time: Duration,
    ring_full_since: Option<Instant>,
}

impl Scheduler {
    /// `queues` engines of `batch` descriptors a turn, none in flight beyond
    /// `comp_ring`; with a `rate`, each paces its share of it.
    pub fn new(
        plan: FramePlan,
        meta_first_len: u32,
        batch: u32,
        comp_ring: u32,
        queues: u32,
        rate: Option<Rate>,
        start: Instant,
    ) -> Self {
        let queues = queues.max(1);
        let full_frame = plan.payload_offset() as u32 + plan.chunk_size + plan.tag_len;
        let share = 1.0 / f64::from(queues);
        let engines = (0..queues)
            .map(|_| {
                let pacer = rate.map(|r| Pacer::new(r.scaled(share), full_frame, start));
                TxEngine::new(batch, comp_ring, pacer).chained(plan.frame_size)
            })
            .collect();
        Scheduler {
            plan,
            meta_first_len,
            meta_last_len: 0,
            ids: vec![FrameId::Meta { last: false }; batch.max(1) as usize],
            engines,
            turn_posted: vec![0; queues as usize],
            pending: (0..queues).map(|_| VecDeque::new()).collect(),
            batch,
            full_frame,
            first_post: None,
            reader_wait: Duration::ZERO,
            reader_wait_since: None,
            ring_full_time: Duration::ZERO,
            ring_full_since: None,
        }
    }

    pub fn engines(&self) -> &[TxEngine] {
        &self.engines
    }

    /// Frames each queue took in the last turn.
    pub fn turn_posted(&self) -> &[u32] {
        &self.turn_posted
    }

    /// When the first frame went out.
    pub fn first_post(&self) -> Option<Instant> {
        self.first_post
    }

    /// Frames and bytes posted so far, over every queue.
    pub fn posted(&self) -> (u64, u64) {
        let frames = self.engines.iter().map(|e| e.posted_frames).sum();
        let bytes = self.engines.iter().map(|e| e.posted_bytes).sum();
        (frames, bytes)
    }

    /// Paces every queue at its share of `rate` from `now`; None stops
    /// pacing.
    pub fn set_rate(&mut self, rate: Option<Rate>, now: Instant) {
        let share = 1.0 / self.engines.len() as f64;
        let full_frame = self.full_frame;
        for e in &mut self.engines {
            match (rate, e.pacer_mut()) {
                (Some(r), Some(p)) => p.set_rate(r.scaled(share), now),
                (r, _) => e.set_pacer(r.map(|r| Pacer::new(r.scaled(share), full_frame, now))),
            }
        }
    }

    /// Time the first pass waited for the reader with ring room to spare.
    pub fn tx_stall(&self) -> Duration {
        self.reader_wait + self.reader_wait_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Time the reader had no free slot.
    pub fn reader_stall(&self) -> Duration {
        self.ring_full_time + self.ring_full_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Whether the reader has no free slot now.
    pub fn reader_blocked(&self) -> bool {
        self.ring_full_since.is_some()
    }

    /// Descriptors in flight, a chain cut, or frames chosen and not posted.
    pub fn in_flight(&self) -> bool {
        self.engines.iter().any(|e| e.outstanding() > 0 || e.chain_cut()) || self.pending.iter().any(|p| !p.is_empty())
    }

    /// Whether frames are waiting that only the pacer holds back.
    pub fn pacer_holds(&self, sender: &Sender, now: Instant) -> bool {
        sender.backlog() > 0 && self.engines[0].pacer().is_some_and(|p| p.ready_at(self.full_frame) > now)
    }

    /// When the pacer lets the next frame go, if it paces.
    pub fn pacer_ready_at(&self) -> Option<Instant> {
        self.engines[0].pacer().map(|p| p.ready_at(self.full_frame))
    }

    /// Kicks queue `lane`'s ring when it holds descriptors and the kernel
    /// asks (see [`TxEngine::kick`]).
    pub fn kick<R: TxRing>(&mut self, lane: usize, ring: &R) -> std::io::Result<()> {
        self.engines[lane].kick(ring, self.turn_posted[lane])
    }

    /// Takes the kernel's completions on every queue; each frees its slot
    /// for the reader.
    pub fn reap<R: TxRing>(&mut self, rings: &mut [R], reader: &mut Reader<'_>) {
        for (e, q) in self.engines.iter_mut().zip(rings.iter_mut()) {
            e.reap(q, |addr| reader.completed(addr));
        }
    }

    /// Grants the reader the slots the receiver's prefix and the kernel's
    /// completions have freed, tells the protocol what is built, and once the
    /// file is read, hands it the digest for the closing Meta.
    pub fn read_ahead(
        &mut self,
        sender: &mut Sender,
        reader: &mut Reader<'_>,
        now: Instant,
    ) -> Result<(), PreloadError> {
        if reader.finished().is_some() {
            return Ok(());
        }
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

    /// Posts what the protocol chooses. With several queues, each frame goes
    /// on its chunk's lane ([`lane_of`]), whose source port it carries: a
    /// lane's first pass then reaches the receiver in order on one receive
    /// queue (veth maps TX queue i to the peer's RX queue i; a NIC's RSS
    /// hashes the port), and the receiver tells its gaps from a lane that
    /// lags. Returns how many frames went out.
    pub fn post<R: TxRing>(
        &mut self,
        sender: &mut Sender,
        rings: &mut [R],
        reader: &mut Reader<'_>,
        now: Instant,
    ) -> u32 {
        let total = if self.engines.len() == 1 {
            let posted = self.post_lane(0, sender, &mut rings[0], reader, now);
            self.turn_posted[0] = posted;
            posted
        } else {
            self.route(sender, reader, now);
            let mut total = 0;
            for (i, (engine, ring)) in self.engines.iter_mut().zip(rings.iter_mut()).enumerate() {
                let pending = &mut self.pending[i];
                let posted = engine.post(ring, now, self.full_frame, |want| {
                    let take = want.min(pending.len());
                    pending.drain(..take)
                });
                self.turn_posted[i] = posted;
                total += posted;
            }
            total
        };
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
    fn post_lane<R: TxRing>(
        &mut self,
        lane: usize,
        sender: &mut Sender,
        ring: &mut R,
        reader: &mut Reader<'_>,
        now: Instant,
    ) -> u32 {
        let plan = self.plan;
        let info = *sender.info();
        let (first_len, last_len) = (self.meta_first_len, self.meta_last_len);
        let ids = &mut self.ids;
        // The engine posts every frame it takes from the iterator, so each
        // data frame's descriptors go on the reader's ledger as it is taken.
        self.engines[lane].post(ring, now, self.full_frame, |want| {
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
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::Write;
    use std::net::SocketAddr;

    use super::*;
    use crate::afxdp::umem::UmemArea;
    use crate::afxdp::xsk::{Kick, XdpDesc};
    use crate::datapath::readahead::ReadAhead;
    use crate::proto::receiver::{Event, Receiver, ReceiverConfig};
    use crate::proto::SenderConfig;
    use crate::wire::frame::{parse_udp, FrameTemplate, IpVersion};
    use crate::wire::message::{DataPorts, SessionInfo};

    const PORTS: [u16; 2] = [40000, 40001];

    /// A queue's TX ring as the kernel sees it: `cap` slots, drained by
    /// [`Link::step`], completed in order.
    struct RingModel {
        cap: usize,
        tx: VecDeque<XdpDesc>,
        done: VecDeque<u64>,
    }

    impl TxRing for RingModel {
        fn post_with<I>(&mut self, max: u32, fill: impl FnOnce(usize) -> I) -> u32
        where
            I: ExactSizeIterator<Item = XdpDesc>,
        {
            let room = (self.cap - self.tx.len()).min(max as usize);
            let descs = fill(room);
            let n = descs.len();
            assert!(n <= room, "the scheduler posted {n} descriptors into {room} free slots");
            self.tx.extend(descs);
            n as u32
        }
        fn reap_with(&mut self, max: u32, mut f: impl FnMut(u64)) -> u32 {
            let n = self.done.len().min(max as usize);
            self.done.drain(..n).for_each(&mut f);
            n as u32
        }
        fn tx_pending(&self) -> u32 {
            self.tx.len() as u32
        }
        fn tx_needs_wakeup(&self) -> bool {
            false
        }
        fn kick(&self) -> Kick {
            Kick::Ok
        }
    }

    /// The device and the wire: queue `i` sends a burst of at most
    /// `burst[i]` frames every `every[i]` steps, the later queues' first (so
    /// the lanes reach the receiver out of order), and a seeded share of
    /// data frames is lost.
    struct Link {
        burst: [usize; 2],
        every: [u64; 2],
        loss: f64,
        rng: u64,
        lost: u64,
        steps: u64,
    }

    impl Link {
        fn new(burst: [usize; 2], every: [u64; 2], loss: f64, seed: u64) -> Link {
            Link { burst, every, loss, rng: seed, lost: 0, steps: 0 }
        }

        fn step(&mut self, rings: &mut [RingModel], area: &UmemArea, mut deliver: impl FnMut(SocketAddr, &mut [u8])) {
            self.steps += 1;
            for (i, ring) in rings.iter_mut().enumerate().rev() {
                let n = if self.steps % self.every[i] == 0 { self.burst[i] } else { 0 };
                for _ in 0..n {
                    let Some(d) = ring.tx.pop_front() else { break };
                    // SAFETY: the frame is posted and not yet completed, so
                    // the read-ahead cannot be writing it (its slot is not
                    // granted again before the completion below).
                    let frame = unsafe { area.bytes_at(d.addr, d.len) }.expect("a descriptor inside the UMEM");
                    let udp = parse_udp(frame).expect("a frame the scheduler posted is a UDP datagram");
                    self.rng = self.rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let data = udp.payload.len() > 200;
                    if data && ((self.rng >> 11) as f64 / (1u64 << 53) as f64) < self.loss {
                        self.lost += 1;
                    } else {
                        // A copy: the receiver opens payloads in place.
                        deliver(udp.src, &mut udp.payload.to_vec());
                    }
                    ring.done.push_back(d.addr);
                }
            }
        }
    }

    struct Outcome {
        out: Vec<u8>,
        retransmits: u64,
        lost: u64,
        ring_full_turns: u64,
        reader_stall: Duration,
        sent: Result<(), String>,
        received: Result<(), String>,
    }

    /// A transfer of `file` through the scheduler, two queues of a 64-slot
    /// ring and the smallest UMEM (256 slots), to the protocol's receiver,
    /// in virtual time.
    fn transfer(file: &[u8], link: Link) -> Outcome {
        let mut input = tempfile::NamedTempFile::new().expect("temp file");
        input.write_all(file).expect("write");
        let size = file.len() as u64;
        let plan = FramePlan::new(size, 1500, 1500, "model", 659_456, IpVersion::V4).expect("plan");
        let start = Instant::now();
        let mut now = start;
        let sender_addr = SocketAddr::from(([192, 0, 2, 1], PORTS[0]));
        let receiver_addr = SocketAddr::from(([192, 0, 2, 2], 9000));
        let info = SessionInfo { file_size: size, chunk_size: plan.chunk_size, n_chunks: plan.n_chunks, digest: None };
        let cfg = SenderConfig { data_ports: DataPorts::new(&PORTS).expect("two ports"), ..SenderConfig::default() };
        let mut tx = Sender::new(cfg, 0x5eed, info, now);
        let mut rx = Receiver::new(ReceiverConfig { cookie_key: [7; 32], ..ReceiverConfig::default() }, now);
        let mut out = Vec::new();
        let serve_receiver = |rx: &mut Receiver, now: Instant, out: &mut Vec<u8>| {
            while let Some(ev) = rx.poll_event() {
                match ev {
                    Event::Start { info, .. } => *out = vec![0; info.file_size as usize],
                    Event::Verify => rx.verified(now, *blake3::hash(out).as_bytes()),
                    Event::Resumed { .. } => unreachable!("nothing is offered"),
                }
            }
        };
        let control = |tx: &mut Sender, rx: &mut Receiver, now: Instant, out: &mut Vec<u8>| {
            while let Some(c) = tx.poll_control(now) {
                rx.on_control(now, sender_addr, &c);
            }
            serve_receiver(rx, now, out);
            while let Some((to, c)) = rx.poll_transmit(now) {
                assert_eq!(to, sender_addr);
                let _ = tx.on_control(now, &c);
            }
            if tx.poll_timeout().is_some_and(|t| t <= now) {
                tx.handle_timeout(now);
            }
            if rx.poll_timeout().is_some_and(|t| t <= now) {
                rx.handle_timeout(now);
            }
        };
        // The handshake first: every frame carries the receiver's cookie.
        while tx.cookie().is_none() || !tx.is_acked() {
            control(&mut tx, &mut rx, now, &mut out);
            now += Duration::from_micros(100);
            assert!(now - start < Duration::from_secs(5), "no handshake");
        }
        let area = UmemArea::new_ring(plan.total_frames, plan.frame_size).expect("UMEM area");
        // SAFETY: `area` outlives the read-ahead, which is dropped with the
        // reader at the end of this function, before it.
        let frames = unsafe { area.writer() };
        let tpl = FrameTemplate { src_mac: [2; 6], dst_mac: [4; 6], src: sender_addr, dst: receiver_addr, ttl: 64 };
        let file = std::fs::File::open(input.path()).expect("open");
        let cookie = tx.cookie().expect("cookie");
        let mut ra =
            ReadAhead::new(crate::tree::input::Input::File(file), plan, frames, tpl, tx.session(), cookie, size)
                .with_lane_ports(PORTS.to_vec());
        let meta_first_len = ra.build_first_meta().expect("first Meta");
        let mut reader = Reader::inline(ra, plan, Box::new(|| true));
        let mut sched = Scheduler::new(plan, meta_first_len, 32, 64, 2, None, now);
        let mut rings: Vec<RingModel> =
            (0..2).map(|_| RingModel { cap: 64, tx: VecDeque::new(), done: VecDeque::new() }).collect();
        let mut link = link;
        tx.set_readable(0, 0, false);
        tx.start(now);
        while !(tx.is_finished() && rx.is_finished()) {
            assert!(now - start < Duration::from_secs(60), "the transfer did not converge in 60 s of virtual time");
            sched.reap(&mut rings, &mut reader);
            sched.read_ahead(&mut tx, &mut reader, now).expect("read-ahead");
            control(&mut tx, &mut rx, now, &mut out);
            sched.post(&mut tx, &mut rings, &mut reader, now);
            let mut idle = true;
            link.step(&mut rings, &area, |from, bytes| {
                idle = false;
                if let Some((off, payload)) = rx.on_data(now, from, bytes) {
                    out[off as usize..off as usize + payload.len()].copy_from_slice(payload);
                }
            });
            if idle {
                rx.note_idle(now);
            }
            serve_receiver(&mut rx, now, &mut out);
            now += Duration::from_micros(100);
        }
        let outcome = Outcome {
            out,
            retransmits: tx.stats.retransmits,
            lost: link.lost,
            ring_full_turns: sched.engines().iter().map(|e| e.ring_full_turns).sum(),
            reader_stall: sched.reader_stall(),
            sent: tx.outcome().cloned().unwrap_or(Ok(())).map_err(|e| e.to_string()),
            received: rx
                .outcome()
                .cloned()
                .map_or(Err("no outcome".into()), |r| r.map(drop).map_err(|e| e.to_string())),
        };
        drop(reader);
        drop(area);
        outcome
    }

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    #[test]
    fn lanes_out_of_order_and_a_full_ring_cost_no_repair() {
        let data = file(3 << 20);
        // Queue 0's device takes a burst of 32 every 8 steps, so its ring
        // fills between bursts; queue 1's sends 24 a step, far ahead.
        let o = transfer(&data, Link::new([32, 24], [8, 1], 0.0, 1));
        assert_eq!(o.sent, Ok(()));
        assert_eq!(o.received, Ok(()));
        assert!(o.out == data, "the file arrived changed");
        assert_eq!(o.retransmits, 0, "queue 1 running ahead of queue 0 is not loss");
        assert!(o.ring_full_turns > 0, "queue 0's ring never filled: this tests no full ring");
        assert!(o.reader_stall > Duration::ZERO, "the UMEM never filled: this tests no flow control");
    }

    #[test]
    fn loss_on_two_lanes_is_repaired_by_reposting_the_same_frames() {
        let data = file(3 << 20);
        let o = transfer(&data, Link::new([8, 16], [1, 1], 0.03, 9));
        assert_eq!(o.sent, Ok(()));
        assert_eq!(o.received, Ok(()));
        assert!(o.out == data, "the file arrived changed");
        assert!(o.lost > 20, "only {} frames were lost: this tests no repair", o.lost);
        assert!(o.retransmits >= o.lost / 2, "{} lost, {} retransmitted", o.lost, o.retransmits);
        assert!(o.retransmits <= 3 * o.lost, "{} lost but {} retransmitted: a repair storm", o.lost, o.retransmits);
    }
}
