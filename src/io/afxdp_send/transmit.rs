//! The transmit loop: each turn reaps completions, refills free slots from
//! the file, services the control socket, adapts the rate, lets the
//! scheduler post what the protocol chooses, and kicks. The choosing and
//! posting is [`Scheduler`]'s; this adds the sockets, the kicker threads,
//! the control socket and the report lines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::info;

use crate::afxdp::xsk::Queue;
use crate::datapath::kicker::{KickCounts, KickRequests};
use crate::datapath::plan::FramePlan;
use crate::datapath::reader::Reader;
use crate::datapath::scheduler::Scheduler;
use crate::io::control::Control;
use crate::net::iface::Interface;
use crate::os::sys::SysError;
use crate::proto::pacer::Rate;
use crate::proto::rate_control::{RateControl, Report};
use crate::proto::Sender;
use crate::report::Intervals;

use super::prepare::link_speed;
use super::report::{QueueFigures, RateLog, RatePoint};
use super::{SendOptions, COMP_RING, CONTROL_EVERY, TX_RING};

pub(super) struct Transmit {
    pub(super) sched: Scheduler,
    /// The interface, for error messages and to watch it come back up.
    iface: String,
    /// How long a link that went down may take to come back (`--timeout`).
    link_grace: Duration,
    /// Machine-readable progress lines for `bench`.
    progress: bool,
    pub(super) control: Option<RateControl>,
    /// The rate control's ceiling is `--rate`, not the link speed.
    fixed_ceiling: bool,
    pub(super) rate_log: RateLog,
    pub(super) start: Instant,
    pub(super) intervals: Intervals,
    next_progress: Instant,
    pub(super) rusage_at_start: crate::os::process::Rusage,
    chunk_size: u32,
}

impl Transmit {
    pub(super) fn new(
        opts: &SendOptions,
        iface: &Interface,
        plan: FramePlan,
        meta_first_len: u32,
        intervals: Intervals,
        queues: u32,
    ) -> Self {
        let start = Instant::now();
        let control = opts.adapt.then(|| {
            let ceiling = opts.rate.or_else(|| link_speed(&iface.name)).unwrap_or(Rate::BitsPerSec(100e9));
            info!(%ceiling, "rate control on: paced at what the receiver is shown to take");
            RateControl::new(ceiling)
        });
        let rate = opts.rate.or(control.as_ref().map(|c| c.rate()));
        let batch = opts.batch.clamp(1, TX_RING);
        Transmit {
            sched: Scheduler::new(plan, meta_first_len, batch, COMP_RING, queues, rate, start),
            iface: opts.iface.clone(),
            link_grace: opts.timeout,
            progress: opts.progress,
            control,
            fixed_ceiling: opts.rate.is_some(),
            rate_log: RateLog::new(),
            start,
            intervals,
            next_progress: start,
            rusage_at_start: crate::os::process::Rusage::of_self(),
            chunk_size: plan.chunk_size,
        }
    }

    /// Each queue's figures: its engine's, and its kicker thread's where
    /// it had one (else the engine kicked).
    pub(super) fn queue_figures(&self, ports: &[u16], kicked: &[(KickCounts, f64)]) -> Vec<QueueFigures> {
        self.sched
            .engines()
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

    pub(super) fn first_post(&self) -> Option<Instant> {
        self.sched.first_post()
    }

    pub(super) fn elapsed_s(&self) -> f64 {
        Instant::now().saturating_duration_since(self.first_post().unwrap_or(self.start)).as_secs_f64()
    }

    pub(super) fn run(
        &mut self,
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
            self.sched.reap(queues, reader);
            if let Err(e) = self.sched.read_ahead(sender, reader, now) {
                return fail(sender, e.into());
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
            let posted = self.sched.post(sender, queues, reader, now);
            if let Err(e) = self.kick(queues, kickers) {
                // A link that flaps comes back: wait for it, as TCP rides a
                // flap out. The receiver repairs what was lost meanwhile.
                let down = crate::os::sys::errno(&e) == Some(libc::ENETDOWN);
                if let Err(e) = if down { self.ride_out_link_down() } else { Err(e.into()) } {
                    return fail(sender, e.context(format!("transmit failed on {}", self.iface)));
                }
            }
            self.report(sender, now);
            // Held back by the pacer: sleep until its next slot at once.
            // Otherwise spin a little first, since the ring, the reader or
            // the receiver usually answers within microseconds.
            let paced = posted == 0 && self.sched.pacer_holds(sender, now);
            if paced || (posted == 0 && !self.sched.in_flight()) {
                idle_spins += 1;
                if paced || idle_spins > 64 {
                    woke = self.wait(sender, ctrl, reader, paced);
                }
            } else {
                idle_spins = 0;
            }
        }
    }

    /// Kicks where the kernel asks: queue 0 itself, each further queue
    /// through its kicker thread (which reports a failure back). On a
    /// machine with few cores a kicker thread for queue 0 as well only
    /// added wakeups.
    fn kick(&mut self, queues: &[Queue], kickers: &[KickRequests]) -> std::io::Result<()> {
        self.sched.kick(0, &queues[0])?;
        let others = self.sched.engines().iter().zip(queues).zip(self.sched.turn_posted()).skip(1);
        for (((e, q), &posted), k) in others.zip(kickers) {
            if e.outstanding() > 0 && (posted > 0 || q.tx_pending() > 0) && q.tx_needs_wakeup() {
                k.request();
            }
            if let Some(err) = k.take_error() {
                return Err(SysError::new(format!("queue {}", q.queue_id()), err).into());
            }
        }
        Ok(())
    }

    /// The interface went down: waits for it to come back up, at most
    /// `--timeout`, then lets the loop post again (what was on the ring goes
    /// out with the next kick). A stop request or a link that stays down
    /// ends the transfer, naming the interface.
    fn ride_out_link_down(&self) -> anyhow::Result<()> {
        let since = Instant::now();
        tracing::warn!(iface = %self.iface, "the interface went down; waiting for it to come back");
        while since.elapsed() < self.link_grace {
            if crate::os::signals::stop_requested() {
                anyhow::bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(20));
            if Interface::lookup(&self.iface).is_ok_and(|i| i.oper_up) {
                info!(iface = %self.iface, down_ms = since.elapsed().as_millis() as u64, "the interface is up again");
                return Ok(());
            }
        }
        anyhow::bail!("{} went down and stayed down for {}", self.iface, crate::units::human_secs(self.link_grace))
    }

    /// Feeds the receiver's loss reports to the rate control, with what it
    /// holds and what went out, each in the ceiling's unit.
    fn adapt(&mut self, sender: &mut Sender, now: Instant) {
        let (frames, bytes) = self.sched.posted();
        let Some(c) = self.control.as_mut() else { return };
        let Some(loss_bp) = sender.take_loss_report() else { return };
        let Some(first) = self.sched.first_post() else { return };
        let held = sender.stats.peer_received as f64;
        let (delivered, sent) = match c.ceiling() {
            // What the receiver holds, costed at the mean frame posted.
            Rate::BitsPerSec(_) => (held * bytes as f64 * 8.0 / frames.max(1) as f64, bytes as f64 * 8.0),
            Rate::PacketsPerSec(_) => (held, frames as f64),
        };
        c.start(first);
        let changed = c.on_report(Report { at: now, delivered, sent, frames, loss_bp });
        if let Some(r) = changed {
            // At the link's own speed the link paces: a token bucket would
            // only cut the batches short.
            let at_link_speed = !self.fixed_ceiling && r.value() >= c.ceiling().value();
            self.sched.set_rate((!at_link_speed).then_some(r), now);
        }
        let t = now.saturating_duration_since(first).as_secs_f64();
        self.rate_log.note(RatePoint { t, rate: c.rate().value(), loss_bp });
    }

    /// Interval lines, and progress lines for `bench`.
    fn report(&mut self, sender: &Sender, now: Instant) {
        let size = sender.info().file_size;
        let held = (sender.stats.peer_received * u64::from(self.chunk_size)).min(size);
        if self.progress && now >= self.next_progress {
            self.next_progress = now + Duration::from_millis(100);
            eprintln!("progress {held} {size}");
        }
        let phase = if held >= size { "the receiver is verifying" } else { "" };
        self.intervals.tick(now, held, Some(sender.stats.retransmits), phase);
    }

    /// Nothing to post and nothing in flight: sleep on the control socket
    /// until the next timer, or while the pacer holds frames back (`paced`),
    /// until its next slot; return true. When only a reader thread's next
    /// chunks are awaited, sleep until it publishes them instead (at most a
    /// control interval), and return false.
    fn wait(&self, sender: &Sender, ctrl: &Control, reader: &Reader<'_>, paced: bool) -> bool {
        let on_reader = sender.backlog() > 0 && sender.backlog_ready() == 0 && !self.sched.reader_blocked();
        if on_reader && reader.wait_for_chunks(Duration::from_millis(1)) {
            return false;
        }
        // A pacer that is ready holds nothing back: what is awaited then is
        // the receiver (its reports free ring slots) or a timer, and its
        // past slot would make every wait zero.
        let slot = if paced { self.sched.pacer_ready_at() } else { None };
        crate::os::sys::wait_readable(&[ctrl.fd()], idle_wait(Instant::now(), sender.poll_timeout(), slot));
        true
    }
}

/// The longest an idle loop sleeps: it looks at the link, the reader and
/// the signals at least this often.
const IDLE_WAIT_MAX: Duration = Duration::from_millis(5);

/// How long an idle transmit loop sleeps from `now`: until the protocol's
/// next `timer` or the pacer's next `slot`, whichever comes first, at most
/// [`IDLE_WAIT_MAX`].
fn idle_wait(now: Instant, timer: Option<Instant>, slot: Option<Instant>) -> Duration {
    [timer, slot].into_iter().flatten().map(|t| t.saturating_duration_since(now)).fold(IDLE_WAIT_MAX, Duration::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_wait_ends_at_the_first_deadline_and_never_exceeds_the_cap() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(idle_wait(now, None, None), IDLE_WAIT_MAX);
        assert_eq!(idle_wait(now, Some(now + ms(2)), None), ms(2));
        assert_eq!(idle_wait(now, Some(now + ms(3)), Some(now + ms(1))), ms(1));
        assert_eq!(idle_wait(now, Some(now + ms(60)), None), IDLE_WAIT_MAX);
        assert_eq!(idle_wait(now + ms(1), Some(now), None), Duration::ZERO, "an overdue timer is served at once");
    }
}
