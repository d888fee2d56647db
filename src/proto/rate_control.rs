//! Rate control without I/O: pace at the rate the receiver is shown to
//! take, and probe above it now and then.
//!
//! Loss alone cannot tell an overrun receiver from a noisy link: a controller
//! that cuts on loss sinks to a crawl on a link that loses 2 % at random,
//! and at low rates one lost packet in a 5 ms report reads as 25 %. What
//! the receiver holds can tell them apart. Each loss report (one per NACK
//! tick) says how many chunks the receiver has; the chunks it gained over
//! a [`SPAN`] of reports, over that time, is its delivery rate. An
//! overrun receiver's delivery rate stops growing whatever is offered; a
//! lossy link's grows with the offer. So, in the manner of BBR:
//!
//! - **Start-up** paces at twice the delivery rate, from a quarter of the
//!   ceiling (so the pace doubles about each report while the path keeps
//!   up, and never runs far ahead of what it has shown), until the delivery
//!   rate stops growing (three reports without a quarter more) or a report
//!   loses more than [`STARTUP_EXIT_LOSS_BP`]. A quarter, not less: on a
//!   clean link a slower start cost a 1 GiB transfer 6-9 %.
//! - **Probing** then paces at the best delivery rate of the last
//!   [`WINDOW`] reports, the first [`PROBE_REPORTS`] of each such cycle at
//!   5/4 of it: a path with room shows a higher delivery rate and the pace
//!   follows within a cycle. A report that loses [`PROBE_EXIT_LOSS_BP`]
//!   more than the link's own loss (learnt between probes), or a probe that
//!   loses [`PROBE_STOP_LOSS_BP`] more, restarts the estimate from what got
//!   through, at no less than half. Loss is judged over at least
//!   [`LOSS_SAMPLE_FRAMES`] frames.
//!
//! A sender that cannot fill its pace (its CPU, its reader) is
//! *app-limited*: its reports say nothing of the path and do not lower the
//! estimate. The pace never exceeds the ceiling (`--rate`, or the link
//! speed).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::pacer::Rate;

/// Reports whose best delivery rate is the bandwidth estimate: a cycle.
pub const WINDOW: usize = 32;
/// Each cycle of [`WINDOW`] reports starts with this many (a [`SPAN`] at
/// 5 ms ticks) at [`PROBE_GAIN`]: a probe shorter than a span would be
/// averaged away, and on a lossy link the estimate would sink.
pub const PROBE_REPORTS: u64 = 4;
/// A probe report that loses this much more than the link's own loss
/// (basis points) ends the probe.
pub const PROBE_STOP_LOSS_BP: u16 = 300;
pub const PROBE_GAIN: f64 = 1.25;
/// Start-up ends on a report that lost more than this (basis points): a
/// pace twice what the path takes loses half, random loss far less.
pub const STARTUP_EXIT_LOSS_BP: u16 = 1_500;
/// Each delivery rate is taken over at least this span of reports: over
/// one 5 ms tick it is mostly the jitter of when the receiver counted and
/// when the report was handled, and the best of such samples overestimates.
pub const SPAN: Duration = Duration::from_millis(40);
/// A report that loses this much more than the link's own loss while
/// probing (basis points) says the estimate is too high, whatever the window
/// remembers: it starts over from this report's delivery rate.
pub const PROBE_EXIT_LOSS_BP: u16 = 1_000;
/// Loss is judged over at least this many frames sent, pooled across
/// reports: at a low rate one 5 ms report covers a handful of frames, and
/// one lost frame would read as a collapse.
pub const LOSS_SAMPLE_FRAMES: u64 = 200;
/// Reports kept to take spans from.
const HISTORY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    StartUp,
    Probing,
}

/// What the sender knows when a loss report arrives, each a running total
/// in the ceiling's unit (bits of whole frames, or frames).
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub at: Instant,
    /// What the receiver holds.
    pub delivered: f64,
    /// What the sender has posted, repairs included.
    pub sent: f64,
    /// Frames posted so far: loss is judged over [`LOSS_SAMPLE_FRAMES`].
    pub frames: u64,
    /// Loss over the chunks the report newly covers, in basis points.
    pub loss_bp: u16,
}

#[derive(Debug, Clone)]
pub struct RateControl {
    ceiling: Rate,
    rate: f64,
    /// The lowest pace: a thousandth of the ceiling.
    min_rate: f64,
    phase: Phase,
    /// The last [`WINDOW`] delivery rates that count.
    samples: VecDeque<f64>,
    /// Recent reports, oldest first, the first the start from zero.
    history: VecDeque<Report>,
    /// Start-up: the best estimate so far, and reports since it last grew
    /// by a quarter.
    full_bw: f64,
    flat_reports: u8,
    /// Loss not judged yet: frames sent, and loss in basis points weighted
    /// by them; and the frames posted at the last report.
    loss_pool: (u64, u64),
    last_frames: u64,
    /// This cycle's probe lost: it is over.
    probe_lost: bool,
    /// The link's own loss, in basis points (a moving mean of the reports
    /// between probes).
    loss_floor_bp: f64,
    reports: u64,
    /// Times the pace came down to what the receiver was shown to take.
    pub decreases: u64,
}

impl RateControl {
    pub fn new(ceiling: Rate) -> RateControl {
        let c = ceiling.value();
        RateControl {
            ceiling,
            rate: (c / 4.0).max(1.0),
            min_rate: (c / 1000.0).max(1.0),
            phase: Phase::StartUp,
            samples: VecDeque::with_capacity(WINDOW),
            history: VecDeque::with_capacity(HISTORY),
            full_bw: 0.0,
            flat_reports: 0,
            loss_pool: (0, 0),
            last_frames: 0,
            probe_lost: false,
            loss_floor_bp: 0.0,
            reports: 0,
            decreases: 0,
        }
    }

    pub fn rate(&self) -> Rate {
        self.ceiling.scaled(self.rate / self.ceiling.value())
    }

    pub fn ceiling(&self) -> Rate {
        self.ceiling
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The bandwidth estimate: the best delivery rate in the window.
    pub fn bandwidth(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }

    /// Where the running totals start from zero (the first frame's time);
    /// only the first call counts.
    pub fn start(&mut self, at: Instant) {
        if self.history.is_empty() {
            self.history.push_back(Report { at, delivered: 0.0, sent: 0.0, frames: 0, loss_bp: 0 });
        }
    }

    /// One loss report. Returns the new pace when it changed.
    pub fn on_report(&mut self, r: Report) -> Option<Rate> {
        let loss_bp = self.pooled_loss(&r);
        let (delivered, sent) = self.rates_over_span(r)?;
        let app_limited = sent < 0.8 * self.rate;
        let before_bw = self.bandwidth();
        if !(app_limited && delivered < before_bw) {
            if self.samples.len() == WINDOW {
                self.samples.pop_front();
            }
            self.samples.push_back(delivered);
        }
        self.reports += 1;
        let before = self.rate;
        match self.phase {
            Phase::StartUp => self.start_up(loss_bp.unwrap_or(0), app_limited),
            Phase::Probing => self.probing(loss_bp, delivered, before_bw),
        }
        (self.rate != before).then(|| self.rate())
    }

    /// Starts the window over from what got through, but at no less than
    /// half the estimate: a receiver that stalled for a moment (its disk
    /// writing back) delivers next to nothing for a report, and the pace
    /// must not sink to that; a lasting limit halves it again next time.
    fn restart_estimate(&mut self, delivered: f64, bw: f64) {
        self.samples.clear();
        self.samples.push_back(delivered.max(bw / 2.0));
    }

    /// The loss over the frames sent since it was last judged, once they
    /// are [`LOSS_SAMPLE_FRAMES`] or more.
    fn pooled_loss(&mut self, r: &Report) -> Option<u16> {
        let frames = r.frames.saturating_sub(self.last_frames);
        self.last_frames = self.last_frames.max(r.frames);
        self.loss_pool.0 += frames;
        self.loss_pool.1 += frames * u64::from(r.loss_bp);
        if self.loss_pool.0 < LOSS_SAMPLE_FRAMES {
            return None;
        }
        let (n, weighted) = std::mem::take(&mut self.loss_pool);
        Some((weighted / n) as u16)
    }

    /// Records `r` and returns the delivery and send rates since the latest
    /// report at least [`SPAN`] older (or the oldest), None for the first.
    fn rates_over_span(&mut self, r: Report) -> Option<(f64, f64)> {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(r);
        // Young, the span reaches back to the start.
        let from = self.history.iter().rev().find(|o| r.at.saturating_duration_since(o.at) >= SPAN);
        let from = from.or(self.history.front()).filter(|o| o.at < r.at)?;
        let secs = r.at.saturating_duration_since(from.at).as_secs_f64();
        Some(((r.delivered - from.delivered).max(0.0) / secs, (r.sent - from.sent).max(0.0) / secs))
    }

    /// One report while probing: the loss that is news (above the link's
    /// own), a probe's verdict, the estimate and the pace.
    fn probing(&mut self, loss_bp: Option<u16>, delivered: f64, before_bw: f64) {
        let slot = self.reports % WINDOW as u64;
        if slot == 0 {
            self.probe_lost = false;
        }
        // Reports that show a probe's effect (they lag it by one).
        let shows_probe = slot > 0 && slot <= PROBE_REPORTS;
        // Loss is news only above what the link loses anyway, learnt from
        // the reports between probes: on a link that drops 5 % at random,
        // a probe that loses 5 % found no limit.
        let excess = loss_bp.map(|l| f64::from(l) - self.loss_floor_bp);
        if let (Some(l), false) = (loss_bp, shows_probe) {
            self.loss_floor_bp += (f64::from(l) - self.loss_floor_bp) / 8.0;
        }
        // A probe the ceiling held back found nothing either.
        let capped = before_bw * PROBE_GAIN >= self.ceiling.value();
        let probe_found_limit =
            shows_probe && !self.probe_lost && !capped && excess.is_some_and(|e| e > f64::from(PROBE_STOP_LOSS_BP));
        let overrun = excess.is_some_and(|e| e > f64::from(PROBE_EXIT_LOSS_BP));
        self.probe_lost |= probe_found_limit;
        if probe_found_limit || overrun {
            self.restart_estimate(delivered, before_bw);
        }
        let bw = self.bandwidth();
        if bw < before_bw * 0.9 {
            self.decreases += 1;
        }
        let gain = if slot < PROBE_REPORTS && !self.probe_lost { PROBE_GAIN } else { 1.0 };
        self.rate = (bw * gain).clamp(self.min_rate, self.ceiling.value());
    }

    fn start_up(&mut self, loss_bp: u16, app_limited: bool) {
        let bw = self.bandwidth();
        if bw >= self.full_bw * 1.25 {
            self.full_bw = bw;
            self.flat_reports = 0;
        } else if !app_limited {
            self.flat_reports += 1;
        }
        if self.flat_reports >= 3 || loss_bp > STARTUP_EXIT_LOSS_BP {
            self.phase = Phase::Probing;
            self.decreases += 1;
            self.rate = bw.clamp(self.min_rate, self.ceiling.value());
        } else {
            self.rate = self.rate.max(2.0 * bw).min(self.ceiling.value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(5);

    /// A path in the ceiling's unit: `capacity` delivered at most, `loss` of
    /// what is offered lost at random (as a fraction), and a sender that
    /// can push at most `cpu`. Reports lag one tick, as the receiver's
    /// watermark does. Returns (the controller, fraction of the offer lost,
    /// mean delivery over the last half).
    fn run(ceiling: f64, capacity: f64, loss: f64, cpu: f64, ticks: u32) -> (RateControl, f64, f64) {
        let mut c = RateControl::new(Rate::BitsPerSec(ceiling));
        let t0 = Instant::now();
        c.start(t0);
        let (mut sent, mut delivered, mut lost) = (0.0, 0.0, 0.0);
        let mut pending: Option<Report> = None;
        let mut tail = Vec::new();
        for tick in 1..=ticks {
            let offer = c.rate().value().min(cpu) * TICK.as_secs_f64();
            let through = offer.min(capacity * TICK.as_secs_f64()) * (1.0 - loss);
            sent += offer;
            lost += offer - through;
            delivered += through;
            if tick > ticks / 2 {
                tail.push(through / TICK.as_secs_f64());
            }
            let loss_bp = ((offer - through) / offer.max(1.0) * 10_000.0) as u16;
            let frames = (sent / 12_000.0) as u64;
            let now = Report { at: t0 + TICK * tick, delivered, sent, frames, loss_bp };
            if let Some(mut r) = pending.replace(now) {
                r.at = now.at;
                c.on_report(r);
            }
        }
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        (c, lost / sent, mean)
    }

    #[test]
    fn an_overrun_receiver_is_found_and_followed_with_little_loss() {
        let (c, lost, mean) = run(10e9, 1.2e9, 0.0, 20e9, 400);
        assert_eq!(c.phase(), Phase::Probing);
        assert!(c.decreases >= 1);
        assert!(lost < 0.06, "lost {lost:.3} of the offer");
        assert!(mean > 0.95 * 1.2e9, "delivered {mean:.3e} of 1.2e9");
    }

    #[test]
    fn random_loss_does_not_slow_it_down() {
        let (c, lost, mean) = run(10e9, 20e9, 0.05, 20e9, 200);
        assert!((lost - 0.05).abs() < 0.001);
        assert!(mean > 0.9 * 0.95 * 10e9, "delivered {mean:.3e}: the pace sank under random loss ({:?})", c.phase());
    }

    /// Below the ceiling, where each probe could find a limit: the link's
    /// own 5 % is learnt, and the probes' 5 % is no news.
    #[test]
    fn random_loss_below_the_ceiling_does_not_slow_it_down() {
        let (_, _, mean) = run(100e9, 200e9, 0.05, 4e9, 400);
        assert!(mean > 0.9 * 0.95 * 4e9, "delivered {mean:.3e} of 3.8e9");
    }

    #[test]
    fn a_cpu_bound_sender_is_not_held_back() {
        let (c, lost, mean) = run(10e9, 20e9, 0.0, 4e9, 200);
        assert_eq!(lost, 0.0);
        assert!(mean > 0.99 * 4e9, "delivered {mean:.3e}");
        assert!(c.rate().value() >= 4e9, "paced below what the sender can push: {}", c.rate());
    }

    #[test]
    fn the_pace_never_passes_the_ceiling() {
        let (c, _, mean) = run(1e9, 20e9, 0.0, 20e9, 200);
        assert!(c.rate().value() <= 1e9);
        assert!(mean > 0.99e9, "delivered {mean:.3e}");
    }

    /// A receiver that slows to half mid-transfer: the estimate follows
    /// within the window, and the loss stays bounded.
    #[test]
    fn a_receiver_that_slows_down_is_followed() {
        let mut c = RateControl::new(Rate::BitsPerSec(10e9));
        let t0 = Instant::now();
        c.start(t0);
        let (mut sent, mut delivered) = (0.0, 0.0);
        for tick in 1..=400u32 {
            let capacity = if tick < 200 { 4e9 } else { 2e9 };
            let offer = c.rate().value() * TICK.as_secs_f64();
            let through = offer.min(capacity * TICK.as_secs_f64());
            sent += offer;
            delivered += through;
            let loss_bp = ((offer - through) / offer * 10_000.0) as u16;
            let frames = (sent / 12_000.0) as u64;
            c.on_report(Report { at: t0 + TICK * tick, delivered, sent, frames, loss_bp });
        }
        let r = c.rate().value();
        assert!((1.9e9..=2.6e9).contains(&r), "pace {r:.3e} against 2e9");
    }

    #[test]
    fn delivery_is_measured_over_a_span_of_reports() {
        let mut c = RateControl::new(Rate::PacketsPerSec(1e6));
        let t0 = Instant::now();
        c.start(t0);
        // 200 kpps, but 1,000 frames counted a report early at 45 ms: over
        // that one report it reads as 400 kpps, over a span 250 kpps.
        let mut n = 0.0;
        for ms in (5..=60).step_by(5) {
            n += match ms {
                45 => 2000.0,
                50 => 0.0,
                _ => 1000.0,
            };
            let at = t0 + Duration::from_millis(ms);
            c.on_report(Report { at, delivered: n, sent: n, frames: n as u64, loss_bp: 0 });
        }
        let bw = c.bandwidth();
        assert!((199_000.0..=250_001.0).contains(&bw), "{bw}");
    }

    /// At 10 Mb/s a 5 ms report covers about 4 frames: one lost reads as
    /// 25 %. Pooled over 200 frames, 2 % random loss stays 2 % and the pace
    /// holds.
    #[test]
    fn low_rate_loss_is_judged_over_enough_frames() {
        let mut c = RateControl::new(Rate::BitsPerSec(10e6));
        let t0 = Instant::now();
        c.start(t0);
        let (mut sent, mut delivered, mut frames) = (0.0, 0.0, 0u64);
        for tick in 1..=2000u32 {
            let offer = c.rate().value() * TICK.as_secs_f64();
            let n = (offer / 12_000.0).round().max(1.0) as u64;
            // Every 50th frame lost: 2 %, in bursts of one per report.
            let lost = (frames..frames + n).filter(|f| f % 50 == 0).count() as u64;
            frames += n;
            sent += offer;
            delivered += offer * (n - lost) as f64 / n as f64;
            let loss_bp = (lost * 10_000 / n) as u16;
            c.on_report(Report { at: t0 + TICK * tick, delivered, sent, frames, loss_bp });
        }
        assert!(c.rate().value() > 0.85 * 10e6, "the pace sank to {}", c.rate());
    }
}
