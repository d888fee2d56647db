//! The transmit scheduler: one turn reaps completions, refills free
//! slots from the file, services the control socket, adapts the rate, posts
//! what the protocol chooses, and kicks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::info;

use crate::afxdp::xsk::Queue;
use crate::datapath::kicker::{KickCounts, KickRequests};
use crate::datapath::plan::FramePlan;
use crate::datapath::reader::Reader;
use crate::datapath::tx::TxEngine;
use crate::io::control::Control;
use crate::net::iface::Interface;
use crate::proto::pacer::{Aimd, Pacer, Rate};
use crate::proto::{FrameId, Sender};
use crate::report::Intervals;
use crate::wire::message::lane_of;

use super::prepare::link_speed;
use super::report::{QueueFigures, RatePoint};
use super::{SendOptions, COMP_RING, CONTROL_EVERY, TX_RING};

/// Adds to `total` the time a condition held: from the first turn that
/// finds it (`since`) to the first that finds it over.
pub(super) fn stall_clock(total: &mut Duration, since: &mut Option<Instant>, holds: bool, now: Instant) {
    match (holds, *since) {
        (true, None) => *since = Some(now),
        (false, Some(t)) => {
            *total += now.saturating_duration_since(t);
            *since = None;
        }
        _ => {}
    }
}

/// The transmit loop's state: one turn reaps completions, refills free
/// slots from the file, services the control socket, adapts the rate, posts
/// what the protocol chooses, and kicks.
pub(super) struct Transmit {
    pub(super) plan: FramePlan,
    pub(super) meta_first_len: u32,
    pub(super) meta_last_len: u32,
    pub(super) ids: Vec<FrameId>,
    /// One engine per transmit queue; the turn's frames go round them.
    pub(super) engines: Vec<TxEngine>,
    /// Frames each queue took this turn.
    pub(super) turn_posted: Vec<u32>,
    /// With several queues: the frames chosen for each and not yet posted,
    /// in order (see `route`).
    pub(super) pending: Vec<std::collections::VecDeque<(u64, u32)>>,
    pub(super) batch: u32,
    pub(super) aimd: Option<Aimd>,
    /// When the last loss report came, and what had been posted by then.
    pub(super) last_report: (Instant, u64, u64),
    pub(super) rate_log: Vec<RatePoint>,
    pub(super) next_rate_point: Instant,
    pub(super) full_frame: u32,
    pub(super) start: Instant,
    pub(super) first_post: Option<Instant>,
    pub(super) intervals: Intervals,
    pub(super) next_progress: Instant,
    pub(super) rusage_at_start: crate::os::process::Rusage,
    /// Time the first pass had ring room but waited for the reader, and
    /// since when it waits.
    pub(super) reader_wait: Duration,
    pub(super) reader_wait_since: Option<Instant>,
    /// Time the reader had no free slot (waiting for the receiver's prefix
    /// or for TX completions), and since when it has none.
    pub(super) ring_full_time: Duration,
    pub(super) ring_full_since: Option<Instant>,
}

impl Transmit {
    pub(super) fn new(
        opts: &SendOptions,
        iface: &Interface,
        plan: FramePlan,
        meta_first_len: u32,
        rtt: Option<Duration>,
        intervals: Intervals,
        queues: u32,
    ) -> Self {
        let start = Instant::now();
        let full_frame = plan.payload_offset() as u32 + plan.chunk_size + plan.tag_len;
        let aimd = opts.adapt.then(|| {
            let ceiling = opts.rate.or_else(|| link_speed(&iface.name)).unwrap_or(Rate::BitsPerSec(100e9));
            info!(%ceiling, "rate adaptation on: AIMD on the receiver's loss reports");
            Aimd::new(ceiling, rtt)
        });
        // Each queue paces its share of the rate.
        let share = 1.0 / f64::from(queues.max(1));
        let rate = opts.rate.or(aimd.as_ref().map(|a| a.rate()));
        let batch = opts.batch.clamp(1, TX_RING);
        let engines = (0..queues.max(1))
            .map(|_| {
                let pacer = rate.map(|r| Pacer::new(r.scaled(share), full_frame, start));
                TxEngine::new(batch, COMP_RING, pacer).chained(plan.frame_size)
            })
            .collect();
        Transmit {
            plan,
            meta_first_len,
            meta_last_len: 0,
            ids: vec![FrameId::Meta { last: false }; batch as usize],
            engines,
            turn_posted: vec![0; queues.max(1) as usize],
            pending: (0..queues.max(1)).map(|_| std::collections::VecDeque::new()).collect(),
            batch,
            aimd,
            last_report: (start, 0, 0),
            rate_log: Vec::new(),
            next_rate_point: start,
            full_frame,
            start,
            first_post: None,
            intervals,
            next_progress: start,
            rusage_at_start: crate::os::process::Rusage::of_self(),
            reader_wait: Duration::ZERO,
            reader_wait_since: None,
            ring_full_time: Duration::ZERO,
            ring_full_since: None,
        }
    }

    /// Each queue's figures: its engine's, and its kicker thread's where
    /// it had one (else the engine kicked).
    pub(super) fn queue_figures(&self, ports: &[u16], kicked: &[(KickCounts, f64)]) -> Vec<QueueFigures> {
        self.engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let kicker = i.checked_sub(1).and_then(|k| kicked.get(k));
                let (k, cpu) = kicker.copied().unwrap_or((
                    KickCounts {
                        kicks: e.kicker.kicks,
                        unproductive: e.kicker.unproductive,
                        device_drops: e.kicker.device_drops,
                    },
                    0.0,
                ));
                QueueFigures {
                    queue: i as u32,
                    source_port: ports.get(i).copied().unwrap_or(0),
                    packets: e.posted_frames,
                    bytes: e.posted_bytes,
                    ring_full_turns: e.ring_full_turns,
                    kicks: k.kicks,
                    kicks_unproductive: k.unproductive,
                    device_drops: k.device_drops,
                    kicker_cpu_s: cpu,
                }
            })
            .collect()
    }

    pub(super) fn reader_stall(&self) -> Duration {
        self.ring_full_time + self.ring_full_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    pub(super) fn tx_stall(&self) -> Duration {
        self.reader_wait + self.reader_wait_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    pub(super) fn elapsed_s(&self) -> f64 {
        Instant::now().saturating_duration_since(self.first_post.unwrap_or(self.start)).as_secs_f64()
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &mut self,
        opts: &SendOptions,
        sender: &mut Sender,
        ctrl: &mut Control,
        ctrl_peer: SocketAddr,
        queues: &mut [Queue],
        kickers: &[KickRequests],
        reader: &mut Reader<'_>,
    ) -> anyhow::Result<()> {
        let mut idle_spins = 0u32;
        let mut next_control = Instant::now();
        let mut woke = false;
        let fail = |sender: &mut Sender, e: anyhow::Error| {
            sender.fail_local();
            Err(e)
        };
        loop {
            let now = Instant::now();
            if crate::os::signals::stop_requested() {
                return fail(sender, anyhow::anyhow!("interrupted"));
            }
            self.reap(queues, reader);
            if let Err(e) = self.read_ahead(sender, reader) {
                return fail(sender, e);
            }
            // The receiver reports every few milliseconds: while frames flow,
            // look at the control socket at most every CONTROL_EVERY.
            if woke || now >= next_control {
                woke = false;
                next_control = now + CONTROL_EVERY;
                if let Err(e) = crate::io::control::service(sender, ctrl, now, ctrl_peer) {
                    return fail(sender, e);
                }
            }
            if sender.is_finished() {
                return Ok(());
            }
            self.adapt(sender, now);
            let posted = self.post(sender, queues, reader, now);
            if let Err(e) = self.kick(queues, kickers) {
                return fail(sender, anyhow::anyhow!("transmit failed on {}: {e}", opts.iface));
            }
            self.report(opts, sender, now);
            let in_flight = self.engines.iter().any(|e| e.outstanding() > 0 || e.chain_cut())
                || self.pending.iter().any(|p| !p.is_empty());
            // Held back by the pacer: sleep until its next slot at once.
            // Otherwise spin a little first, since the ring, the reader or
            // the receiver usually answers within microseconds.
            let paced = posted == 0 && self.pacer_holds(sender, now);
            if paced || (posted == 0 && !in_flight) {
                idle_spins += 1;
                if paced || idle_spins > 64 {
                    woke = self.wait(sender, ctrl, reader);
                }
            } else {
                idle_spins = 0;
            }
        }
    }

    /// Takes the kernel's completions on every queue; each frees its
    /// slot for the reader.
    pub(super) fn reap(&mut self, queues: &mut [Queue], reader: &mut Reader<'_>) {
        for (e, q) in self.engines.iter_mut().zip(queues.iter_mut()) {
            e.reap(q, |addr| reader.completed(addr));
        }
    }

    /// Kicks where the kernel asks: queue 0 itself, each further queue
    /// through its kicker thread (which reports a failure back). On a
    /// machine with few cores a kicker thread for queue 0 as well only
    /// added wakeups.
    pub(super) fn kick(&mut self, queues: &[Queue], kickers: &[KickRequests]) -> std::io::Result<()> {
        self.engines[0].kick(&queues[0], self.turn_posted[0])?;
        let others = self.engines.iter().zip(queues).zip(&self.turn_posted).skip(1);
        for (((e, q), &posted), k) in others.zip(kickers) {
            if e.outstanding() > 0 && (posted > 0 || q.tx_pending() > 0) && q.tx_needs_wakeup() {
                k.request();
            }
            if let Some(err) = k.take_error() {
                return Err(std::io::Error::new(err.kind(), format!("queue {}: {err}", q.queue_id())));
            }
        }
        Ok(())
    }

    /// Grants the reader the slots the receiver's prefix and the kernel's
    /// completions have freed, tells the protocol what is built, and once the
    /// file is read, hands it the digest for the closing Meta.
    pub(super) fn read_ahead(&mut self, sender: &mut Sender, reader: &mut Reader<'_>) -> anyhow::Result<()> {
        if reader.finished().is_some() {
            return Ok(());
        }
        let now = Instant::now();
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

    /// Feeds the receiver's loss reports to the rate adaptation.
    pub(super) fn adapt(&mut self, sender: &mut Sender, now: Instant) {
        let frames = self.engines.iter().map(|e| e.posted_frames).sum::<u64>();
        let bytes = self.engines.iter().map(|e| e.posted_bytes).sum::<u64>();
        let Some(a) = self.aimd.as_mut() else { return };
        let Some(loss_bp) = sender.take_loss_report() else { return };
        // What really went out since the last report, in the ceiling's unit.
        let (t0, frames0, bytes0) = self.last_report;
        let dt = now.saturating_duration_since(t0).as_secs_f64();
        let achieved = (dt > 0.0).then(|| match a.ceiling() {
            Rate::BitsPerSec(_) => (bytes - bytes0) as f64 * 8.0 / dt,
            Rate::PacketsPerSec(_) => (frames - frames0) as f64 / dt,
        });
        self.last_report = (now, frames, bytes);
        let changed = a.on_report(now, loss_bp, achieved);
        if let Some(r) = changed {
            let share = 1.0 / self.engines.len() as f64;
            for p in self.engines.iter_mut().filter_map(|e| e.pacer_mut()) {
                p.set_rate(r.scaled(share), now);
            }
        }
        let t = now.saturating_duration_since(self.first_post.unwrap_or(self.start)).as_secs_f64();
        let decreased = changed.is_some() && loss_bp > 0;
        if (decreased || now >= self.next_rate_point) && self.rate_log.len() < 100_000 {
            self.next_rate_point = now + Duration::from_millis(20);
            self.rate_log.push(RatePoint { t, rate: a.rate().value(), loss_bp });
        }
    }

    /// Posts what the protocol chooses. With several queues, each frame goes
    /// on its chunk's lane ([`lane_of`]), whose source port it carries: a
    /// lane's first pass then reaches the receiver in order on one receive
    /// queue (veth maps TX queue i to the peer's RX queue i; a NIC's RSS
    /// hashes the port), and the receiver tells its gaps from a lane that
    /// lags. Returns how many frames went out.
    pub(super) fn post(
        &mut self,
        sender: &mut Sender,
        queues: &mut [Queue],
        reader: &mut Reader<'_>,
        now: Instant,
    ) -> u32 {
        if self.engines.len() == 1 {
            let posted = self.post_lane(0, sender, &mut queues[0], reader, now);
            self.turn_posted[0] = posted;
            if posted > 0 {
                self.first_post.get_or_insert(now);
            }
            return posted;
        }
        self.route(sender, reader, now);
        let mut total = 0;
        for (i, (engine, queue)) in self.engines.iter_mut().zip(queues.iter_mut()).enumerate() {
            let pending = &mut self.pending[i];
            let posted = engine.post(queue, now, self.full_frame, |want| {
                let take = want.min(pending.len());
                pending.drain(..take)
            });
            self.turn_posted[i] = posted;
            total += posted;
        }
        if total > 0 {
            self.first_post.get_or_insert(now);
        }
        total
    }

    /// Takes from the protocol as many frames as every lane has room to
    /// queue (at most a batch each), and queues each on its lane; Metas go
    /// on lane 0, whose port they carry. A frame id taken is always posted,
    /// in order, once its lane's ring has room.
    pub(super) fn route(&mut self, sender: &mut Sender, reader: &mut Reader<'_>, now: Instant) {
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
    pub(super) fn post_lane(
        &mut self,
        lane: usize,
        sender: &mut Sender,
        queue: &mut Queue,
        reader: &mut Reader<'_>,
        now: Instant,
    ) -> u32 {
        let plan = self.plan;
        let info = *sender.info();
        let (first_len, last_len) = (self.meta_first_len, self.meta_last_len);
        let ids = &mut self.ids;
        // The engine posts every frame it takes from the iterator, so each
        // data frame's descriptors go on the reader's ledger as it is taken.
        self.engines[lane].post(queue, now, self.full_frame, |want| {
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

    /// Interval lines, and progress lines for `bench`.
    pub(super) fn report(&mut self, opts: &SendOptions, sender: &Sender, now: Instant) {
        let size = sender.info().file_size;
        let held = (sender.stats.peer_received * u64::from(self.plan.chunk_size)).min(size);
        if opts.progress && now >= self.next_progress {
            self.next_progress = now + Duration::from_millis(100);
            eprintln!("progress {held} {size}");
        }
        let phase = if held >= size { "the receiver is verifying" } else { "" };
        self.intervals.tick(now, held, Some(sender.stats.retransmits), phase);
    }

    /// Whether frames are waiting that only the pacer holds back.
    pub(super) fn pacer_holds(&self, sender: &Sender, now: Instant) -> bool {
        sender.backlog() > 0 && self.engines[0].pacer().is_some_and(|p| p.ready_at(self.full_frame) > now)
    }

    /// Nothing to post and nothing in flight: sleep on the control socket
    /// until the next timer, or the pacer's next slot, and return true. When
    /// only a reader thread's next chunks are awaited, sleep until it
    /// publishes them instead (at most a control interval), and return false.
    pub(super) fn wait(&self, sender: &Sender, ctrl: &Control, reader: &Reader<'_>) -> bool {
        let on_reader = sender.backlog() > 0 && sender.backlog_ready() == 0 && self.ring_full_since.is_none();
        if on_reader && reader.wait_for_chunks(Duration::from_millis(1)) {
            return false;
        }
        let mut wait =
            sender.poll_timeout().map_or(Duration::from_millis(5), |t| t.saturating_duration_since(Instant::now()));
        // A pacer's slot matters only when data may go out: not while a
        // silent receiver is asked whether it is there.
        let now = Instant::now();
        if let Some(p) = self.engines[0].pacer().filter(|_| sender.backlog() > 0 && !sender.receiver_silent(now)) {
            wait = wait.min(p.ready_at(self.full_frame).saturating_duration_since(now));
        }
        crate::os::sys::wait_readable(&[ctrl.fd()], wait.min(Duration::from_millis(5)));
        true
    }
}
