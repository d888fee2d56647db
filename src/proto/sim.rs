//! Deterministic tests of the protocol over a simulated network.
//!
//! Virtual time, a seeded PRNG, and a network that can lose, reorder and
//! duplicate datagrams on each path. No sockets, no sleeping.

use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::receiver::{Event, RecvError};
use super::sender::SendError;
use super::*;
use crate::wire::message::{lane_of, Message, SessionInfo, HEADER_LEN, LANE_RUN};

const SENDER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000));

#[derive(Clone, Copy, Debug, Default)]
struct PathFaults {
    loss: f64,
    dup: f64,
    /// Probability of extra delay, up to `reorder_spread`.
    reorder: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum To {
    ReceiverData,
    ReceiverCtrl,
    Sender,
}

#[derive(Clone, Copy, Debug)]
struct Queues {
    count: u64,
    batch: u64,
    skew: Duration,
    /// The sender announces a source port per queue and each chunk takes
    /// its lane's queue ([`lane_of`]), as `send --queues` does; otherwise
    /// batches of `batch` go round the queues from one port.
    lanes: bool,
}

impl Queues {
    /// Lane `l`'s source port (lane 0 is the sender's own).
    fn port(l: usize) -> u16 {
        SENDER.port() + l as u16
    }

    fn ports(&self) -> crate::wire::message::DataPorts {
        let ports: Vec<u16> = (0..self.count as usize).map(Queues::port).collect();
        crate::wire::message::DataPorts::new(&ports).expect("few queues")
    }

    /// The queue a frame takes, and the address it comes from.
    fn of(&self, id: FrameId) -> (u64, SocketAddr) {
        match id {
            FrameId::Data(c) if self.lanes => {
                let l = lane_of(c, self.count as usize);
                (l as u64, SocketAddr::new(SENDER.ip(), Queues::port(l)))
            }
            FrameId::Data(c) => ((c / self.batch) % self.count, SENDER),
            FrameId::Meta { .. } => (0, SENDER),
        }
    }
}

#[derive(PartialEq, Eq)]
struct InFlight {
    at: Instant,
    seq: u64,
    to: To,
    bytes: Vec<u8>,
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq)) // min-heap
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

struct Sim {
    rng: u64,
    now: Instant,
    seq: u64,
    net: BinaryHeap<InFlight>,
    data_faults: PathFaults,
    ctrl_faults: PathFaults,
    latency: Duration,
    reorder_spread: Duration,
    /// Drop the first N Done messages (lost final ack).
    drop_done: u32,
    /// Every data frame sent within this span (from the start) is lost.
    blackout: Option<(Duration, Duration)>,
    /// Several transmit queues: batches of `batch` chunks go round the
    /// queues, and queue `q` adds `q * skew` of latency (each queue is FIFO,
    /// so frames reorder only across queues, as on a multi-queue link).
    queues: Option<Queues>,
    start: Instant,
    file: Vec<u8>,
    chunk: u32,
    out: Vec<u8>,
    /// Data frames the sender may post per 100 µs step.
    rate: usize,
    /// The receiver's data ring: at most `ring_cap` datagrams wait, and the
    /// receiver takes at most `drain` per step. Overflow is dropped and counted.
    ring: std::collections::VecDeque<Vec<u8>>,
    ring_cap: usize,
    drain: usize,
    ring_drops: u64,
    /// Data-path frames lost to `data_faults`.
    data_drops: u64,
    sender_cfg: SenderConfig,
    receiver_cfg: ReceiverConfig,
    /// The sender's UMEM holds this many chunks at once (a bounded ring):
    /// a chunk is built only once the one `slots` before it is delivered.
    slots: Option<u64>,
    /// The sender learns its digest (finishes preloading) this long after
    /// starting; until then it only handshakes and keeps the session alive.
    preload_time: Duration,
    /// A pre-shared key on both ends: data frames tagged, Metas sealed.
    keys: Option<crate::proto::auth::Keys>,
    /// With `keys`: the payloads encrypted with this AEAD, not only tagged.
    encrypt: Option<crate::wire::message::Cipher>,
    /// An attacker who reads every NACK and sends a forged copy of each
    /// chunk it names, arriving before the sender's repair.
    forge_repairs: bool,
    forged: u64,
    /// What the receiver holds from an interrupted transfer: the stream's
    /// first bytes, offered at the session's start (as a driver whose
    /// journal matched would), and answered by the sender from its file.
    partial: Option<Vec<u8>>,
    /// Where the stream resumed, as each end saw it settle.
    resumed: (Option<u64>, u64),
}

struct Outcome {
    ring_drops: u64,
    data_drops: u64,
    tail_probes: u64,
    send: Result<(), SendError>,
    recv: Result<(), RecvError>,
    out: Vec<u8>,
    retransmits: u64,
    duplicates: u64,
    forged: u64,
    /// Data frames dropped for a tag that did not verify.
    forged_dropped: u64,
    /// Virtual time from the start until both ends finished.
    elapsed: Duration,
    /// Data frames the first pass posted.
    first_pass: u64,
    /// Where the stream resumed: the receiver's event, the sender's view.
    resumed: (Option<u64>, u64),
}

impl Sim {
    fn new(size: usize, chunk: u32, seed: u64) -> Sim {
        let mut s = Sim {
            rng: seed | 1,
            now: Instant::now(),
            seq: 0,
            net: BinaryHeap::new(),
            data_faults: PathFaults::default(),
            ctrl_faults: PathFaults::default(),
            latency: Duration::from_micros(50),
            reorder_spread: Duration::from_micros(500),
            drop_done: 0,
            blackout: None,
            queues: None,
            start: Instant::now(),
            file: Vec::new(),
            chunk,
            out: Vec::new(),
            rate: 16,
            ring: std::collections::VecDeque::new(),
            ring_cap: usize::MAX,
            drain: usize::MAX,
            ring_drops: 0,
            data_drops: 0,
            sender_cfg: SenderConfig::default(),
            receiver_cfg: ReceiverConfig::default(),
            slots: None,
            preload_time: Duration::ZERO,
            keys: None,
            encrypt: None,
            forge_repairs: false,
            forged: 0,
            partial: None,
            resumed: (None, 0),
        };
        s.file = (0..size).map(|_| s.next_u64() as u8).collect();
        s
    }

    fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn send(&mut self, to: To, bytes: Vec<u8>) {
        self.send_after(to, bytes, Duration::ZERO);
    }

    /// Sends with `extra` latency on top of the path's.
    fn send_after(&mut self, to: To, bytes: Vec<u8>, extra: Duration) {
        let faults = if to == To::ReceiverData { self.data_faults } else { self.ctrl_faults };
        if to == To::Sender && self.drop_done > 0 && matches!(Message::parse(&bytes), Ok(Message::Done { .. })) {
            self.drop_done -= 1;
            return;
        }
        if self.chance(faults.loss) {
            if to == To::ReceiverData {
                self.data_drops += 1;
            }
            return;
        }
        if let (To::ReceiverData, Some((from, to))) = (to, self.blackout) {
            let t = self.now - self.start;
            if t >= from && t < to {
                return;
            }
        }
        let copies = if self.chance(faults.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = self.now + self.latency + extra;
            if self.chance(faults.reorder) {
                at += self.reorder_spread.mul_f64((self.next_u64() % 1000) as f64 / 1000.0);
            }
            self.seq += 1;
            self.net.push(InFlight { at, seq: self.seq, to, bytes: bytes.clone() });
        }
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            file_size: self.file.len() as u64,
            chunk_size: self.chunk,
            n_chunks: chunk_count(self.file.len() as u64, self.chunk),
            digest: Some(*blake3::hash(&self.file).as_bytes()),
        }
    }

    fn frame(&self, id: FrameId, session: u64, cookie: u64, info: &SessionInfo) -> Vec<u8> {
        match id {
            FrameId::Data(c) => {
                let start = (c * u64::from(self.chunk)) as usize;
                let end = (start + self.chunk as usize).min(self.file.len());
                let mut b = Message::Data { session, chunk: c, payload: &self.file[start..end] }.encode(cookie);
                if let Some(k) = &self.keys {
                    let key = k.data_key(session, cookie, self.encrypt);
                    let tag = match self.encrypt {
                        Some(_) => {
                            let (header, payload) = b.split_at_mut(HEADER_LEN);
                            key.seal(c, header, payload)
                        }
                        None => key.tag(c, &b),
                    };
                    b.extend_from_slice(&tag);
                }
                b
            }
            FrameId::Meta { last } => {
                let mut b = Message::Meta { session, last, info: *info }.encode(cookie);
                if let Some(k) = &self.keys {
                    k.seal(crate::proto::auth::Direction::ToReceiver, 0, &mut b);
                }
                b
            }
        }
    }

    /// The attacker's copies of the chunks a NACK names: the genuine
    /// header, a payload of its own and a tag it had to guess.
    fn forge(&mut self, nack_bytes: &[u8]) {
        let Ok((Message::Nack { session, nack }, cookie)) = Message::parse_with_cookie(nack_bytes) else { return };
        let missing: Vec<u64> = nack.missing().take(64).collect();
        for c in missing {
            let len = (self.file.len() - (c * u64::from(self.chunk)) as usize).min(self.chunk as usize);
            let mut b = Message::Data { session, chunk: c, payload: &vec![0xee; len] }.encode(cookie);
            b.extend_from_slice(&[0; crate::proto::auth::DATA_TAG_LEN]);
            self.forged += 1;
            // Straight into the receiver's ring: ahead of the repair.
            self.ring.push_back(b);
        }
    }

    /// Where a data frame comes from: its lane's port with lanes.
    fn source_of(&self, bytes: &[u8]) -> SocketAddr {
        match (self.queues, Message::parse(bytes)) {
            (Some(q), Ok(Message::Data { chunk, .. })) => q.of(FrameId::Data(chunk)).1,
            _ => SENDER,
        }
    }

    /// Hands everything the network holds for up to now to its end: data
    /// into the receiver's bounded ring, control straight to either side.
    fn deliver_due(&mut self, tx: &mut Sender, rx: &mut Receiver) {
        while self.net.peek().is_some_and(|p| p.at <= self.now) {
            let Some(p) = self.net.pop() else { break };
            match p.to {
                To::ReceiverData => {
                    if self.ring.len() >= self.ring_cap {
                        self.ring_drops += 1;
                    } else {
                        self.ring.push_back(p.bytes);
                    }
                }
                To::ReceiverCtrl => rx.on_control(self.now, SENDER, &p.bytes),
                To::Sender => {
                    let _ = tx.on_control(self.now, &p.bytes);
                }
            }
            self.serve_events(rx);
        }
    }

    /// The receiver takes up to `drain` datagrams from its ring, as a
    /// receive loop would, or notes the data path idle.
    fn drain_receive_ring(&mut self, rx: &mut Receiver) {
        if self.ring.is_empty() {
            rx.note_idle(self.now);
        }
        for _ in 0..self.drain {
            let Some(mut bytes) = self.ring.pop_front() else { break };
            let from = self.source_of(&bytes);
            if let Some((off, payload)) = rx.on_data(self.now, from, &mut bytes) {
                let off = off as usize;
                self.out[off..off + payload.len()].copy_from_slice(payload);
            }
            self.serve_events(rx);
        }
    }

    /// What a driver does for the receiver's events: an output to write
    /// into, and its digest when asked.
    fn serve_events(&mut self, rx: &mut Receiver) {
        while let Some(ev) = rx.poll_event() {
            match ev {
                Event::Start { info, peer, .. } => {
                    assert_eq!(peer, SENDER);
                    self.out = vec![0; info.file_size as usize];
                    if let Some(p) = &self.partial {
                        self.out[..p.len()].copy_from_slice(p);
                        rx.offer_resume(p.len() as u64, *blake3::hash(p).as_bytes());
                    }
                }
                Event::Resumed { from } => self.resumed.0 = Some(from),
                Event::Verify => {
                    let d = *blake3::hash(&self.out).as_bytes();
                    rx.verified(self.now, d);
                }
            }
        }
    }

    fn run(mut self) -> Outcome {
        let info = self.info();
        let start = self.now;
        self.start = start;
        let mut cfg = self.sender_cfg.clone();
        if let Some(q) = self.queues.filter(|q| q.lanes) {
            cfg.data_ports = q.ports();
        }
        cfg.keys = self.keys.clone();
        cfg.encrypt = self.encrypt;
        let mut rx_cfg = self.receiver_cfg.clone();
        rx_cfg.keys = self.keys.clone();
        let mut tx = Sender::new(cfg, 0xabcd, SessionInfo { digest: None, ..info }, self.now);
        let mut rx = Receiver::new(rx_cfg, self.now);
        let mut preloaded = false;
        let mut ids = vec![FrameId::Meta { last: false }; self.rate];
        let step = Duration::from_micros(100);
        while !(tx.is_finished() && rx.is_finished()) {
            assert!(self.now - start < Duration::from_secs(120), "simulation did not converge");
            if !preloaded && self.now - start >= self.preload_time {
                tx.start(self.now);
                tx.set_digest(info.digest.expect("the sim knows its digest"));
                preloaded = true;
            }
            // The sender's ring: build up to the receiver's prefix + slots.
            if let Some(slots) = self.slots {
                let readable = (tx.stats.peer_prefix + slots).min(info.n_chunks);
                tx.set_readable(readable.saturating_sub(slots), readable, readable < info.n_chunks);
            }
            // The sender's driver checks an offer against its file.
            if let Some((from, theirs)) = tx.resume_offer() {
                let ours = *blake3::hash(&self.file[..from as usize]).as_bytes();
                tx.answer_resume(self.now, ours == theirs);
            }
            // Sender: control, then frames.
            while let Some(c) = tx.poll_control(self.now) {
                self.send(To::ReceiverCtrl, c);
            }
            let n = tx.next_frames(self.now, &mut ids);
            for id in ids[..n].iter().copied() {
                let f = self.frame(id, tx.session(), tx.cookie().expect("data flows after the handshake"), &info);
                let extra = self.queues.map_or(Duration::ZERO, |q| q.skew * q.of(id).0 as u32);
                self.send_after(To::ReceiverData, f, extra);
            }
            self.deliver_due(&mut tx, &mut rx);
            self.drain_receive_ring(&mut rx);
            while let Some((to, bytes)) = rx.poll_transmit(self.now) {
                assert_eq!(to, SENDER);
                if self.forge_repairs {
                    self.forge(&bytes);
                }
                self.send(To::Sender, bytes);
            }
            if tx.poll_timeout().is_some_and(|t| t <= self.now) {
                tx.handle_timeout(self.now);
            }
            if rx.poll_timeout().is_some_and(|t| t <= self.now) {
                rx.handle_timeout(self.now);
            }
            self.now += step;
        }
        assert_eq!(tx.stats.repairs_unavailable, 0, "a NACK named a chunk whose frame was reused");
        Outcome {
            ring_drops: self.ring_drops,
            data_drops: self.data_drops,
            tail_probes: tx.stats.tail_probes,
            send: tx.outcome().cloned().unwrap_or(Err(SendError::Timeout(Duration::ZERO))),
            recv: rx.outcome().cloned().map(|r| r.map(|_| ())).unwrap_or(Err(RecvError::Local("no outcome".into()))),
            out: self.out,
            retransmits: tx.stats.retransmits,
            duplicates: rx.stats().drops.get(receiver::DropReason::Duplicate),
            forged: self.forged,
            forged_dropped: rx.stats().drops.get(receiver::DropReason::BadSeal),
            elapsed: self.now - start,
            first_pass: tx.stats.first_pass,
            resumed: (self.resumed.0, tx.resumed_from()),
        }
    }
}

fn assert_delivered(o: &Outcome, file: &[u8]) {
    assert_eq!(o.send, Ok(()));
    assert_eq!(o.recv, Ok(()));
    assert!(o.out == file, "output differs from input");
}

#[test]
fn clean_network_delivers_without_retransmits() {
    let sim = Sim::new(100_000, 1000, 1);
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
    assert_eq!(o.retransmits, 0);
}

#[test]
fn loss_on_data_path_is_repaired() {
    for seed in 1..6 {
        let mut sim = Sim::new(3_000_000, 1000, seed);
        sim.data_faults.loss = 0.05;
        // A receiver slower than the sender keeps a queue in front of it, so
        // repairs are in flight when later NACKs go out.
        sim.ring_cap = 16384;
        sim.drain = 8;
        let file = sim.file.clone();
        let o = sim.run();
        assert_delivered(&o, &file);
        assert!(o.retransmits > 0, "seed {seed}: 5% loss must cause retransmits");
        // On a FIFO path repairs are exact: one per lost data frame (Meta
        // frames can be lost too and are not repaired, hence <=), none twice.
        assert!(o.retransmits <= o.data_drops, "seed {seed}: {} retransmits for {} drops", o.retransmits, o.data_drops);
        assert!(
            o.retransmits + 3 >= o.data_drops,
            "seed {seed}: {} retransmits for {} drops",
            o.retransmits,
            o.data_drops
        );
        assert_eq!(o.duplicates, 0, "seed {seed}: a repair arrived twice");
    }
}

/// Resuming: a receiver holding the file's first 60 % (cut mid-chunk)
/// offers it; the sender, whose first 60 % is the same, sends only the
/// chunks from the one the cut falls in, under loss on both paths.
#[test]
fn a_verified_prefix_is_not_sent_again() {
    for seed in 1..4 {
        let mut sim = Sim::new(1_000_000, 1000, seed);
        sim.data_faults.loss = 0.02;
        sim.ctrl_faults.loss = 0.1;
        sim.partial = Some(sim.file[..600_500].to_vec());
        let file = sim.file.clone();
        let o = sim.run();
        assert_delivered(&o, &file);
        assert_eq!(o.resumed, (Some(600_500), 600_500), "seed {seed}");
        assert_eq!(o.first_pass, 1000 - 600, "seed {seed}: the first pass starts at chunk 600");
    }
    // All of it: nothing to send but the digest.
    let mut sim = Sim::new(100_000, 1000, 5);
    sim.partial = Some(sim.file.clone());
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
    assert_eq!((o.resumed, o.first_pass), ((Some(100_000), 100_000), 0));
}

/// A partial that is not the sender's (the file changed in place since):
/// the sender refuses the offer, the whole file goes, and the output is
/// the new file, not a mix.
#[test]
fn a_partial_of_another_file_starts_over() {
    let mut sim = Sim::new(500_000, 1000, 9);
    let mut stale = sim.file[..300_000].to_vec();
    stale[123_456] ^= 0x40;
    sim.partial = Some(stale);
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
    assert_eq!(o.resumed, (Some(0), 0));
    assert_eq!(o.first_pass, 500);
}

#[test]
fn heavy_loss_on_both_paths_still_converges() {
    let mut sim = Sim::new(200_000, 1000, 7);
    sim.data_faults.loss = 0.3;
    sim.ctrl_faults.loss = 0.3;
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
}

#[test]
fn reordering_and_duplication_are_harmless() {
    let mut sim = Sim::new(200_000, 999, 11);
    sim.data_faults = PathFaults { loss: 0.0, dup: 0.1, reorder: 0.3 };
    sim.ctrl_faults = PathFaults { loss: 0.0, dup: 0.1, reorder: 0.3 };
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
    assert!(o.duplicates > 0, "duplicated frames must be counted as duplicates");
}

/// Several transmit queues, the later ones slower: frames of different
/// queues arrive out of order by up to 1.5 ms (three 0.5 ms steps of skew,
/// against RSS and NAPI differences of microseconds on a real link), but
/// none is lost, so nothing may be repaired. The receiver names a gap only
/// once a NACK round (5 ms) has passed over it: with 2 ms steps over four
/// queues (6 ms apart), late frames were repaired as lost.
#[test]
fn reordering_across_queues_is_not_loss() {
    for (count, batch) in [(2, 16), (4, 64), (4, 1)] {
        let mut sim = Sim::new(400_000, 1000, 13);
        sim.queues = Some(Queues { count, batch, skew: Duration::from_micros(500), lanes: false });
        let file = sim.file.clone();
        let o = sim.run();
        assert_delivered(&o, &file);
        assert_eq!(o.retransmits, 0, "{count} queues, batches of {batch}: reordering was taken for loss");
        assert_eq!(o.tail_probes, 0);
    }
}

/// With lanes (a source port per queue, a chunk on its lane's queue, as
/// `send --queues` does), a queue may lag another by more than a NACK round
/// without a repair: the receiver waits for each lane to pass a gap. Four
/// queues 2 ms apart (the last 6 ms behind); and 20 ms apart on a file sent
/// in less time than that, so the data path falls silent between lanes
/// after the End probe (with one round of silence ending every lane, 1440
/// late frames were repaired). Without lanes 2 ms steps repair frames that
/// were only late, so the check can fail. Loss in a lagging lane is still
/// repaired.
#[test]
fn lanes_let_a_queue_lag_without_repairs() {
    for (lanes, step_ms, size) in [(true, 2, 4_000_000), (true, 20, 2_000_000), (false, 2, 4_000_000)] {
        let mut sim = Sim::new(size, 1000, 17);
        let skew = Duration::from_millis(step_ms);
        sim.queues = Some(Queues { count: 4, batch: LANE_RUN, skew, lanes });
        let file = sim.file.clone();
        let o = sim.run();
        assert_delivered(&o, &file);
        if lanes {
            assert_eq!(o.retransmits, 0, "{step_ms} ms steps: a lagging lane was taken for loss");
        } else {
            assert!(o.retransmits > 0, "{step_ms} ms steps without lanes should look like loss");
        }
    }
    let mut sim = Sim::new(4_000_000, 1000, 18);
    sim.queues = Some(Queues { count: 4, batch: LANE_RUN, skew: Duration::from_millis(2), lanes: true });
    sim.data_faults.loss = 0.02;
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
    assert!(o.retransmits >= o.data_drops, "{} drops, {} retransmits", o.data_drops, o.retransmits);
}

#[test]
fn slow_receiver_is_not_overrun() {
    // The sender could post 16 frames per step; the receiver takes 4, into a
    // ring of 16384. Flow control must keep the ring from overflowing.
    let mut sim = Sim::new(40_000_000, 1000, 21);
    sim.ring_cap = 16384;
    sim.drain = 4;
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
    assert_eq!(o.ring_drops, 0, "the receiver's ring overflowed");
    assert_eq!(o.retransmits, 0);
}

#[test]
fn without_flow_control_a_slow_receiver_is_overrun() {
    // The same setup with the window opened wide: shows the test above can fail.
    let mut sim = Sim::new(40_000_000, 1000, 21);
    sim.ring_cap = 16384;
    sim.drain = 4;
    sim.sender_cfg.window = u64::MAX / 2;
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
    assert!(o.ring_drops > 1000, "expected overflow, got {}", o.ring_drops);
}

#[test]
fn lost_window_tail_is_probed() {
    // Every data frame is lost for 5 ms mid-transfer: the whole window's tail
    // goes, the receiver's high-water mark stops short of it, and only a tail
    // probe can restart progress.
    let mut sim = Sim::new(3_000_000, 1000, 31);
    sim.sender_cfg.window = 64;
    sim.blackout = Some((Duration::from_millis(20), Duration::from_millis(25)));
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
    assert!(o.tail_probes > 0, "the stalled window must have been probed");
}

#[test]
fn long_preload_after_hello_keeps_the_session_alive() {
    // Hello goes out before the file is read; a preload three times longer
    // than the receiver's idle timeout must not end the session.
    let mut sim = Sim::new(100_000, 1000, 41);
    sim.receiver_cfg.idle_timeout = Duration::from_secs(1);
    sim.sender_cfg.timeout = Duration::from_secs(1);
    sim.preload_time = Duration::from_secs(3);
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
}

#[test]
fn lost_final_ack_is_answered_again() {
    let mut sim = Sim::new(50_000, 1000, 3);
    sim.drop_done = 2;
    let file = sim.file.clone();
    let o = sim.run();
    assert_delivered(&o, &file);
}

#[test]
fn empty_file_transfers() {
    let sim = Sim::new(0, 1000, 5);
    let o = sim.run();
    assert_eq!(o.send, Ok(()));
    assert_eq!(o.recv, Ok(()));
    assert!(o.out.is_empty());
}

#[test]
fn corrupted_output_fails_digest_on_both_sides() {
    let now = Instant::now();
    let data = vec![5u8; 3000];
    let info =
        SessionInfo { file_size: 3000, chunk_size: 1000, n_chunks: 3, digest: Some(*blake3::hash(&data).as_bytes()) };
    let mut rx = Receiver::new(ReceiverConfig::default(), now);
    let cookie = open_session(&mut rx, now, info);
    for c in 0..3 {
        let mut m = Message::Data { session: 1, chunk: c, payload: &data[..1000] }.encode(cookie);
        assert!(rx.on_data(now, SENDER, &mut m).is_some());
    }
    assert!(matches!(rx.poll_event(), Some(Event::Start { .. })));
    assert_eq!(rx.poll_event(), Some(Event::Verify));
    rx.verified(now, [0; 32]);
    assert_eq!(rx.outcome(), Some(&Err(RecvError::DigestMismatch)));
    let _ack = rx.poll_transmit(now);
    let (_, done) = rx.poll_transmit(now).unwrap();
    let mut tx = Sender::new(SenderConfig::default(), 1, info, now);
    tx.poll_control(now);
    acknowledge(&mut tx, now, cookie);
    tx.on_control(now, &done).unwrap();
    assert_eq!(tx.outcome(), Some(&Err(SendError::DigestMismatch)));
}

#[test]
fn hostile_datagrams_are_dropped_and_counted() {
    use super::receiver::DropReason;
    let now = Instant::now();
    let data = vec![1u8; 2500];
    let info =
        SessionInfo { file_size: 2500, chunk_size: 1000, n_chunks: 3, digest: Some(*blake3::hash(&data).as_bytes()) };
    let mut rx = Receiver::new(ReceiverConfig::default(), now);
    let stranger: SocketAddr = "192.0.2.66:40000".parse().unwrap();
    // Data before any session.
    assert!(rx
        .on_data(now, SENDER, &mut Message::Data { session: 1, chunk: 0, payload: &data[..1000] }.to_vec())
        .is_none());
    let k = open_session(&mut rx, now, info);
    let cases: Vec<(SocketAddr, Vec<u8>, DropReason)> = vec![
        (SENDER, vec![0xff; 40], DropReason::Wire(crate::wire::WireError::BadMagic)),
        (SENDER, vec![0; 5], DropReason::Wire(crate::wire::WireError::Truncated)),
        (stranger, Message::Data { session: 1, chunk: 0, payload: &data[..1000] }.encode(k), DropReason::WrongSource),
        (SENDER, Message::Data { session: 2, chunk: 0, payload: &data[..1000] }.encode(k), DropReason::WrongSession),
        (SENDER, Message::Data { session: 1, chunk: 0, payload: &data[..1000] }.to_vec(), DropReason::BadCookie),
        (SENDER, Message::Data { session: 1, chunk: 3, payload: &data[..500] }.encode(k), DropReason::OutOfRange),
        (SENDER, Message::Data { session: 1, chunk: 2, payload: &data[..1000] }.encode(k), DropReason::BadLength),
        (
            SENDER,
            Message::HelloAck { session: 1, delay_us: 0, opened: true, tcp_only: false, max_datagram: 0, resume: None }
                .encode(k),
            DropReason::WrongKind,
        ),
    ];
    for (from, bytes, reason) in &cases {
        let before = rx.stats().drops.get(*reason);
        assert!(rx.on_data(now, *from, &mut bytes.clone()).is_none(), "{reason:?} must be dropped");
        assert_eq!(rx.stats().drops.get(*reason), before + 1, "{reason:?} must be counted");
    }
    assert_eq!(rx.stats().drops.get(DropReason::NoSession), 1);
    assert_eq!(rx.chunks_received(), 0);
    // A second sender cannot take over.
    let hello = Message::plain_hello(9, info);
    rx.on_control(now, stranger, &hello.encode(rx.cookie_for(stranger.ip(), 9)));
    assert_eq!(rx.stats().drops.get(DropReason::Busy), 1);
    assert_eq!(rx.peer(), Some(SENDER));
}

#[test]
fn receiver_idle_timeout_fails_with_clear_error() {
    let now = Instant::now();
    let cfg = ReceiverConfig { wait_for_sender: Some(Duration::from_secs(2)), ..Default::default() };
    let mut rx = Receiver::new(cfg, now);
    rx.handle_timeout(now + Duration::from_secs(1));
    assert!(rx.outcome().is_none());
    rx.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(rx.outcome(), Some(&Err(RecvError::NoSender(Duration::from_secs(2)))));
    assert!(rx.is_finished());
}

/// Trust round 2, row 7: by default a receiver waits for its sender as a
/// server does; the idle timeout is for silence within a session.
#[test]
fn a_receiver_waits_for_a_sender_until_told_otherwise() {
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig { idle_timeout: Duration::from_secs(2), ..Default::default() }, now);
    assert_eq!(rx.poll_timeout(), None, "nothing to time out");
    rx.handle_timeout(now + Duration::from_secs(3600));
    assert!(rx.outcome().is_none() && !rx.is_finished());
}

#[test]
fn sender_handshake_timeout_fails_with_clear_error() {
    let now = Instant::now();
    let info = SessionInfo { file_size: 1, chunk_size: 1, n_chunks: 1, digest: None };
    let mut tx = Sender::new(SenderConfig { timeout: Duration::from_secs(3), ..Default::default() }, 1, info, now);
    assert!(tx.poll_control(now).is_some(), "Hello goes out at once");
    tx.handle_timeout(now + Duration::from_secs(3));
    assert_eq!(tx.outcome(), Some(&Err(SendError::HandshakeTimeout(Duration::from_secs(3)))));
}

/// Trust round 2, row 8: a receiver silent for 250 ms mid-transfer gets a
/// Hello every 250 ms (its host's "port unreachable" then tells the driver
/// it exited), and no data until it speaks again.
#[test]
fn a_silent_receiver_gets_hellos_and_no_data_until_it_speaks() {
    let now = Instant::now();
    let info = SessionInfo { file_size: 10_000, chunk_size: 1000, n_chunks: 10, digest: Some([0; 32]) };
    let mut tx = Sender::new(SenderConfig::default(), 1, info, now);
    tx.poll_control(now);
    acknowledge(&mut tx, now, K);
    let mut ids = [FrameId::Meta { last: false }; 3];
    assert_eq!(tx.next_frames(now, &mut ids), 3);
    assert!(tx.poll_control(now).is_none(), "nothing to say while the receiver reports");
    let quiet = now + sender::SILENCE_PROBE_AFTER;
    assert_eq!(tx.poll_timeout(), Some(quiet), "the driver wakes for the probe");
    assert_eq!(tx.next_frames(quiet, &mut ids), 0, "data waits");
    let probe = tx.poll_control(quiet).expect("a Hello asks");
    assert!(matches!(Message::parse(&probe), Ok(Message::Hello { session: 1, .. })));
    assert!(tx.poll_control(quiet).is_none(), "one Hello per 250 ms");
    assert!(tx.poll_control(quiet + sender::SILENCE_PROBE_AFTER).is_some());
    assert_eq!(tx.stats.silence_probes, 2);
    // It answers (a heartbeat): data flows again.
    let later = quiet + sender::SILENCE_PROBE_AFTER;
    let nack = crate::wire::message::Nack {
        round: 1,
        part: 0,
        received: 2,
        high: 2,
        prefix: 2,
        base: 0,
        nbits: 0,
        bitmap: &[],
        loss_bp: None,
    };
    tx.on_control(later, &Message::Nack { session: 1, nack }.encode(K)).unwrap();
    assert!(tx.next_frames(later, &mut ids) > 0);
}

#[test]
fn nack_for_unsent_chunks_is_ignored() {
    let now = Instant::now();
    let info = SessionInfo { file_size: 10_000, chunk_size: 1000, n_chunks: 10, digest: Some([0; 32]) };
    let mut tx = Sender::new(SenderConfig::default(), 1, info, now);
    tx.poll_control(now);
    acknowledge(&mut tx, now, K);
    let mut ids = [FrameId::Meta { last: false }; 3];
    assert_eq!(tx.next_frames(now, &mut ids), 3); // Meta, 0, 1
    let bitmap = [0xffu8, 0x03];
    let nack = crate::wire::message::Nack {
        round: 1,
        part: 0,
        received: 0,
        high: 2,
        prefix: 0,
        base: 0,
        nbits: 10,
        bitmap: &bitmap,
        loss_bp: None,
    };
    tx.on_control(now, &Message::Nack { session: 1, nack }.encode(K)).unwrap();
    let mut ids = [FrameId::Meta { last: false }; 4];
    let n = tx.next_frames(now, &mut ids);
    // Repairs first (only 0 and 1 were ever sent), then the first pass resumes.
    assert_eq!(&ids[..n], &[FrameId::Data(0), FrameId::Data(1), FrameId::Data(2), FrameId::Data(3)]);
    assert_eq!(tx.stats.retransmits, 2);
}

#[test]
fn nack_for_a_repair_still_in_flight_is_not_repeated() {
    let now = Instant::now();
    let info = SessionInfo { file_size: 100_000, chunk_size: 1000, n_chunks: 100, digest: Some([0; 32]) };
    let mut tx = Sender::new(SenderConfig::default(), 1, info, now);
    tx.poll_control(now);
    acknowledge(&mut tx, now, K);
    let mut ids = [FrameId::Meta { last: false }; 21];
    assert_eq!(tx.next_frames(now, &mut ids), 21); // Meta, chunks 0..20
    let nack = |round, high| {
        let bitmap = [0b100u8]; // chunk 2 missing
        Message::Nack {
            session: 1,
            nack: crate::wire::message::Nack {
                round,
                part: 0,
                received: 0,
                high,
                prefix: 0,
                base: 0,
                nbits: 3,
                bitmap: &bitmap,
                loss_bp: None,
            },
        }
        .encode(K)
    };
    tx.on_control(now, &nack(1, 10)).unwrap();
    let mut one = [FrameId::Meta { last: false }; 1];
    assert_eq!(tx.next_frames(now, &mut one), 1);
    assert_eq!(one[0], FrameId::Data(2), "the repair goes out first");
    // The repair was posted when the first pass stood at chunk 20. A later NACK
    // from a receiver that has only seen up to 15 cannot have seen it yet.
    let later = now + Duration::from_millis(50);
    tx.on_control(later, &nack(2, 15)).unwrap();
    assert_eq!(tx.next_frames(later, &mut one), 1);
    assert_eq!(one[0], FrameId::Data(20), "no second repair while the first is in flight");
    // Once the receiver has seen past position 20, chunk 2 missing is a real loss.
    tx.on_control(later, &nack(3, 21)).unwrap();
    assert_eq!(tx.next_frames(later, &mut one), 1);
    assert_eq!(one[0], FrameId::Data(2));
    assert_eq!(tx.stats.retransmits, 2);
}

/// A cookie for sender-side tests.
const K: u64 = 0x5eed;

/// Opens session 1 from SENDER on `rx` (the Hello echoing its cookie);
/// returns the cookie.
fn open_session(rx: &mut Receiver, now: Instant, info: SessionInfo) -> u64 {
    let cookie = rx.cookie_for(SENDER.ip(), 1);
    rx.on_control(now, SENDER, &Message::plain_hello(1, info).encode(cookie));
    cookie
}

/// Plays the receiver's two answers to session 1's Hello: the cookie
/// challenge, then the ack that opens the session; the driver is ready.
fn acknowledge(tx: &mut Sender, now: Instant, cookie: u64) {
    tx.start(now);
    tx.on_control(
        now,
        &Message::HelloAck { session: 1, delay_us: 0, opened: false, tcp_only: false, max_datagram: 0, resume: None }
            .encode(cookie),
    )
    .unwrap();
    let echo = tx.poll_control(now).expect("the Hello goes out again at once, with the cookie");
    assert_eq!(Message::parse_with_cookie(&echo).map(|(_, c)| c), Ok(cookie));
    tx.on_control(
        now,
        &Message::HelloAck { session: 1, delay_us: 0, opened: true, tcp_only: false, max_datagram: 0, resume: None }
            .encode(cookie),
    )
    .unwrap();
    assert!(tx.is_acked());
}

#[test]
fn a_forged_nack_round_far_ahead_cannot_freeze_repairs() {
    let now = Instant::now();
    let info = SessionInfo { file_size: 10_000, chunk_size: 1000, n_chunks: 10, digest: Some([0; 32]) };
    let mut tx = Sender::new(SenderConfig::default(), 1, info, now);
    tx.poll_control(now);
    acknowledge(&mut tx, now, K);
    let mut ids = [FrameId::Meta { last: false }; 4];
    assert_eq!(tx.next_frames(now, &mut ids), 4); // Meta, 0, 1, 2
    let nack = |round| {
        let bitmap = [0b10u8]; // chunk 1 missing
        let nack = crate::wire::message::Nack {
            round,
            part: 0,
            received: 2,
            high: 3,
            prefix: 0,
            base: 0,
            nbits: 2,
            bitmap: &bitmap,
            loss_bp: None,
        };
        Message::Nack { session: 1, nack }.encode(K)
    };
    // An on-path forger's NACK with the largest round.
    tx.on_control(now, &nack(u64::MAX)).unwrap();
    assert_eq!(tx.stats.nacks_out_of_window, 1);
    assert_eq!(tx.stats.retransmits, 0);
    // The receiver's real round 3 still gets its repair.
    tx.on_control(now, &nack(3)).unwrap();
    let mut one = [FrameId::Meta { last: false }; 1];
    assert_eq!(tx.next_frames(now, &mut one), 1);
    assert_eq!(one[0], FrameId::Data(1));
}

#[test]
fn sender_fails_when_nothing_arrives_whatever_the_chatter() {
    // Every data frame is lost (an MTU mismatch): heartbeats keep coming,
    // yet the sender must end inside its timeout and name the likely cause.
    let mut sim = Sim::new(20_000, 1000, 9);
    sim.data_faults.loss = 1.0;
    sim.sender_cfg.timeout = Duration::from_secs(1);
    sim.receiver_cfg.idle_timeout = Duration::from_secs(1);
    let o = sim.run();
    assert!(matches!(o.send, Err(SendError::NothingArrived(_, 1060))), "{:?}", o.send);
    assert_eq!(o.recv, Err(RecvError::NoData(Duration::from_secs(1))));
}

#[test]
fn a_bounded_ring_delivers_with_loss_and_never_loses_a_repair() {
    for seed in 1..=3 {
        let mut sim = Sim::new(400_000, 1000, seed);
        sim.slots = Some(64);
        sim.data_faults.loss = 0.05;
        let file = sim.file.clone();
        let o = sim.run();
        assert_delivered(&o, &file);
        assert!(o.retransmits > 0, "seed {seed}: 5% loss must cause retransmits");
    }
}

/// The second attack round's A1, keyed: an on-path attacker reads each NACK
/// and races a forged copy of every chunk it names (right session, cookie
/// and source; it cannot tag) ahead of the sender's repair. The forgeries are
/// dropped on arrival, so each repair lands, and the file arrives in about
/// as many rounds as without the attacker.
#[test]
fn with_a_key_forged_repairs_cost_the_transfer_nothing() {
    use crate::wire::message::Cipher;
    let keys = crate::proto::auth::Keys::derive(&[6; 32]);
    // Tagged only, and encrypted with each AEAD.
    for encrypt in [None, Some(Cipher::Aes256Gcm), Some(Cipher::ChaCha20Poly1305)] {
        let run = |forge: bool| {
            let mut sim = Sim::new(300_000, 1000, 11);
            sim.keys = Some(keys.clone());
            sim.encrypt = encrypt;
            sim.data_faults.loss = 0.05;
            sim.forge_repairs = forge;
            let file = sim.file.clone();
            let o = sim.run();
            assert_delivered(&o, &file);
            o
        };
        let clean = run(false);
        let attacked = run(true);
        assert!(
            attacked.forged > 0 && attacked.forged_dropped == attacked.forged,
            "{encrypt:?}: {} forged",
            attacked.forged
        );
        assert_eq!(attacked.duplicates, clean.duplicates, "{encrypt:?}: no genuine repair was taken for a duplicate");
        assert!(
            attacked.elapsed <= clean.elapsed.mul_f64(1.5),
            "{encrypt:?}: attacked {:?}, clean {:?}",
            attacked.elapsed,
            clean.elapsed
        );
    }
}

/// Issue 10 item 5: a receiver that takes smaller datagrams says so with its
/// cookie; the sender holds its Hellos until the driver reshapes, then the
/// Hello that echoes the cookie carries the smaller chunks, and the session
/// opens with them.
#[test]
fn the_sender_reshapes_to_the_receivers_largest_datagram() {
    let now = Instant::now();
    let big = SessionInfo { file_size: 29_200, chunk_size: 2920, n_chunks: 10, digest: None };
    let mut tx = Sender::new(SenderConfig::default(), 1, big, now);
    let mut rx = Receiver::new(ReceiverConfig { max_datagram: Some(1472), ..Default::default() }, now);
    tx.start(now);
    let first = tx.poll_control(now).expect("a Hello");
    rx.on_control(now, SENDER, &first);
    let (_, challenge) = rx.poll_transmit(now).expect("the cookie, naming the largest datagram");
    tx.on_control(now, &challenge).expect("taken");
    assert_eq!(tx.reshape_needed(), Some(1472));
    assert!(tx.poll_control(now).is_none(), "no Hello with the old shape");
    let small = SessionInfo { file_size: 29_200, chunk_size: 1440, n_chunks: 21, digest: None };
    tx.reshape(small);
    assert_eq!(tx.reshape_needed(), None);
    let echo = tx.poll_control(now).expect("the Hello, reshaped");
    let Ok(Message::Hello { info, .. }) = Message::parse(&echo) else { panic!("a Hello") };
    assert_eq!(info.chunk_size, 1440);
    rx.on_control(now, SENDER, &echo);
    assert_eq!(rx.info().map(|i| i.chunk_size), Some(1440));
    let (_, ack) = rx.poll_transmit(now).expect("the ack");
    tx.on_control(now, &ack).expect("taken");
    assert!(tx.is_acked());
}

/// Security round 2, A2: with a key, an unsealed Abort raced ahead of the
/// receiver's sealed HelloAck is not taken. The sender keeps saying Hello,
/// and the sealed answer opens the session; a receiver that only ever
/// refuses unsealed (no key, or another one) ends the handshake at the
/// timeout with its reason, named as untrusted.
#[test]
fn with_a_key_an_unsealed_abort_is_a_hint_not_a_verdict() {
    use crate::proto::auth::{Direction, Keys};
    let keys = Keys::derive(&[6; 32]);
    let now = Instant::now();
    let info = SessionInfo { file_size: 10_000, chunk_size: 1000, n_chunks: 10, digest: None };
    let cfg = SenderConfig { keys: Some(keys.clone()), timeout: Duration::from_secs(3), ..Default::default() };
    let forged = Message::Abort { session: 1, reason: "forged: go away" }.encode(0);

    let mut tx = Sender::new(cfg.clone(), 1, info, now);
    tx.start(now);
    tx.poll_control(now).expect("Hello");
    assert!(tx.on_control(now, &forged).is_err(), "an unsealed Abort is not taken with a key");
    assert!(tx.outcome().is_none());
    let mut ack =
        Message::HelloAck { session: 1, delay_us: 0, opened: false, tcp_only: false, max_datagram: 0, resume: None }
            .encode(K);
    keys.seal(Direction::ToSender, 1, &mut ack);
    tx.on_control(now, &ack).expect("the sealed answer");
    assert!(tx.poll_control(now).is_some(), "the Hello goes on, with the cookie");
    assert!(tx.outcome().is_none());

    let mut lone = Sender::new(cfg, 1, info, now);
    lone.start(now);
    lone.poll_control(now).expect("Hello");
    let _ = lone.on_control(now, &forged);
    lone.handle_timeout(now + Duration::from_secs(1));
    assert!(lone.outcome().is_none(), "a refusal alone ends nothing before the timeout");
    lone.handle_timeout(now + Duration::from_secs(4));
    match lone.outcome() {
        Some(Err(e @ SendError::RefusedUnsealed(_, reason))) => {
            assert_eq!(reason, "forged: go away");
            assert!(e.to_string().contains("never trusted"), "{e}");
        }
        other => panic!("expected the unsealed refusal at the timeout, got {other:?}"),
    }
}
