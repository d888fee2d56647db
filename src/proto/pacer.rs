//! A token-bucket pacer, without I/O: the driver asks how many frames may
//! leave now and says what it posted. Time is passed in.
//!
//! A rate counts what the interface's own counters count: the bytes of each
//! frame from the Ethernet header on (`ip -s link` "bytes"), or frames.

use std::fmt;
use std::time::{Duration, Instant};

/// What a rate limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    BitsPerSec(f64),
    PacketsPerSec(f64),
}

impl Rate {
    /// Parses `500M`, `10G`, `1.5G`, `800000` (bits/s, decimal multiples as in
    /// iperf3's `-b`) or `200kpps`, `1.2Mpps` (packets/s).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let (body, pps) = match lower.strip_suffix("pps") {
            Some(b) => (b.to_string(), true),
            None => (lower.strip_suffix("bps").or(lower.strip_suffix("bit")).unwrap_or(&lower).to_string(), false),
        };
        let split = body.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(body.len());
        let (num, unit) = body.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("{t:?} is not a rate like 500M, 10G or 200kpps"))?;
        let mult = match unit.trim() {
            "" => 1.0,
            "k" => 1e3,
            "m" => 1e6,
            "g" => 1e9,
            u => return Err(format!("unknown unit {u:?} in rate {t:?} (use k, M, G, optionally followed by pps)")),
        };
        let v = n * mult;
        if !(v.is_finite() && v >= 1.0) {
            return Err(format!("rate {t:?} must be at least 1"));
        }
        Ok(if pps { Rate::PacketsPerSec(v) } else { Rate::BitsPerSec(v) })
    }

    /// The same kind of rate, scaled.
    pub fn scaled(self, f: f64) -> Rate {
        match self {
            Rate::BitsPerSec(v) => Rate::BitsPerSec(v * f),
            Rate::PacketsPerSec(v) => Rate::PacketsPerSec(v * f),
        }
    }

    pub fn value(self) -> f64 {
        match self {
            Rate::BitsPerSec(v) | Rate::PacketsPerSec(v) => v,
        }
    }

    /// Token cost of one frame of `len` bytes.
    fn cost(self, len: u32) -> f64 {
        match self {
            Rate::BitsPerSec(_) => f64::from(len) * 8.0,
            Rate::PacketsPerSec(_) => 1.0,
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rate::BitsPerSec(v) => f.write_str(&crate::units::human_bits_per_sec(v)),
            Rate::PacketsPerSec(v) => write!(f, "{:.0} pps", v),
        }
    }
}

/// The bucket holds at most this much time's worth of tokens: short enough
/// that a burst does not overrun a slow receiver, long enough to post a batch
/// at 10 Gb/s.
const BURST: Duration = Duration::from_micros(250);

#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Rate,
    tokens: f64,
    last: Instant,
    /// Largest frame, so the bucket can always hold two.
    max_frame: u32,
}

impl Pacer {
    pub fn new(rate: Rate, max_frame: u32, now: Instant) -> Pacer {
        let mut p = Pacer { rate, tokens: 0.0, last: now, max_frame };
        p.tokens = p.capacity();
        p
    }

    /// Changes the rate from now on (tokens already earned are kept, up to
    /// the new capacity).
    pub fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.tokens = self.tokens.min(self.capacity());
    }

    fn capacity(&self) -> f64 {
        (self.rate.value() * BURST.as_secs_f64()).max(2.0 * self.rate.cost(self.max_frame))
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + dt * self.rate.value()).min(self.capacity());
    }

    /// How many frames of up to `frame_len` bytes may leave now, at most `want`.
    pub fn allowance(&mut self, now: Instant, frame_len: u32, want: u32) -> u32 {
        self.refill(now);
        let n = (self.tokens / self.rate.cost(frame_len)).floor();
        (n.max(0.0) as u32).min(want)
    }

    /// Frames posted, `bytes` in all.
    pub fn spend(&mut self, frames: u32, bytes: u64) {
        let cost = match self.rate {
            Rate::BitsPerSec(_) => bytes as f64 * 8.0,
            Rate::PacketsPerSec(_) => f64::from(frames),
        };
        self.tokens -= cost;
    }

    /// When a frame of `frame_len` bytes may leave.
    pub fn ready_at(&self, frame_len: u32) -> Instant {
        let short = self.rate.cost(frame_len) - self.tokens;
        if short <= 0.0 {
            return self.last;
        }
        self.last + Duration::from_secs_f64(short / self.rate.value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bits_and_packets() {
        assert_eq!(Rate::parse("500M"), Ok(Rate::BitsPerSec(500e6)));
        assert_eq!(Rate::parse("10G"), Ok(Rate::BitsPerSec(10e9)));
        assert_eq!(Rate::parse("1.5g"), Ok(Rate::BitsPerSec(1.5e9)));
        assert_eq!(Rate::parse("800000"), Ok(Rate::BitsPerSec(800e3)));
        assert_eq!(Rate::parse("200kpps"), Ok(Rate::PacketsPerSec(200e3)));
        assert_eq!(Rate::parse("1.2Mpps"), Ok(Rate::PacketsPerSec(1.2e6)));
        for bad in ["", "fast", "10X", "0", "-5M", "NaNM"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    /// Over a simulated second of asking as fast as possible, the frames let
    /// through match the rate within the bucket's burst.
    #[test]
    fn holds_the_rate_over_time() {
        for (rate, frame) in [
            (Rate::BitsPerSec(100e6), 1514u32),
            (Rate::BitsPerSec(5e9), 1514),
            (Rate::PacketsPerSec(200e3), 64),
            (Rate::BitsPerSec(1e9), 64),
        ] {
            let t0 = Instant::now();
            let mut p = Pacer::new(rate, frame, t0);
            let mut frames = 0u64;
            let step = Duration::from_micros(7);
            let mut now = t0;
            while now < t0 + Duration::from_secs(1) {
                let n = p.allowance(now, frame, 256);
                p.spend(n, u64::from(n) * u64::from(frame));
                frames += u64::from(n);
                now += step;
            }
            let got = match rate {
                Rate::BitsPerSec(_) => frames as f64 * f64::from(frame) * 8.0,
                Rate::PacketsPerSec(_) => frames as f64,
            };
            let err = (got - rate.value()).abs() / rate.value();
            assert!(err < 0.01, "{rate:?}: got {got}, error {err:.4}");
        }
    }

    #[test]
    fn waits_when_empty_and_follows_a_new_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Rate::PacketsPerSec(1000.0), 1500, t0);
        let first = p.allowance(t0, 1500, 1000);
        assert!(first >= 2, "a full bucket lets a burst out");
        p.spend(first, 0);
        assert_eq!(p.allowance(t0, 1500, 10), 0);
        assert_eq!(p.ready_at(1500), t0 + Duration::from_millis(1));
        p.set_rate(Rate::PacketsPerSec(10_000.0), t0);
        let mut sent = 0;
        for ms in 1..=10 {
            let n = p.allowance(t0 + Duration::from_micros(100 * ms), 1500, 100);
            p.spend(n, 0);
            sent += n;
        }
        assert_eq!(sent, 10, "10 kpps for 1 ms");
    }
}

/// Loss-driven rate adaptation (AIMD), in the manner of UDT and Tsunami: the
/// receiver reports the loss it saw in each NACK tick; above a threshold the
/// rate drops towards what got through, otherwise it climbs by a fixed step,
/// never above the ceiling (`--rate`, or the link speed).
#[derive(Debug, Clone)]
pub struct Aimd {
    ceiling: Rate,
    rate: f64,
    floor: f64,
    step: f64,
    /// Loss above this, in basis points, is congestion.
    threshold_bp: u16,
    /// After a decrease, reports already in flight still show the old loss:
    /// ignore losses for this long.
    hold: Duration,
    last_decrease: Option<Instant>,
    /// Until the first loss the rate grows by half each report, from a
    /// sixteenth of the ceiling: a slow receiver then meets a short ramp, not
    /// a burst at full speed.
    slow_start: bool,
    pub decreases: u64,
}

impl Aimd {
    pub fn new(ceiling: Rate, rtt: Option<Duration>) -> Aimd {
        let c = ceiling.value();
        Aimd {
            ceiling,
            rate: (c / 16.0).max(1.0),
            floor: (c / 1000.0).max(1.0),
            step: c / 1000.0,
            threshold_bp: 100,
            hold: rtt.map_or(Duration::from_millis(15), |r| (r * 3).max(Duration::from_millis(15))),
            last_decrease: None,
            slow_start: true,
            decreases: 0,
        }
    }

    pub fn rate(&self) -> Rate {
        self.ceiling.scaled(self.rate / self.ceiling.value())
    }

    pub fn ceiling(&self) -> Rate {
        self.ceiling
    }

    /// One loss report. `achieved`: what the sender really sent since the
    /// last report, in the ceiling's unit, when it knows: a sender held back
    /// by its own CPU sends below the pacer's rate, and the cut and the
    /// slow start must follow what went out, not the allowance. Returns the
    /// new rate when it changed.
    pub fn on_report(&mut self, now: Instant, loss_bp: u16, achieved: Option<f64>) -> Option<Rate> {
        let before = self.rate;
        let sent = achieved.map_or(self.rate, |a| a.min(self.rate));
        if loss_bp > self.threshold_bp {
            if self.last_decrease.is_some_and(|t| now < t + self.hold) {
                return None;
            }
            // What got through, a little below it; at least a gentle cut.
            let delivered = sent * (1.0 - f64::from(loss_bp) / 10_000.0);
            self.rate = (delivered * 0.97).min(self.rate * 0.875).max(self.floor);
            self.last_decrease = Some(now);
            self.decreases += 1;
            self.slow_start = false;
        } else if self.slow_start {
            // Grow from what went out, so an allowance the sender cannot
            // use does not pile up beyond what the path has been shown.
            self.rate = (self.rate * 1.5).min(sent * 2.0).max(self.rate.min(sent)).min(self.ceiling.value());
        } else {
            self.rate = (self.rate + self.step).min(self.ceiling.value());
        }
        (self.rate != before).then(|| self.rate())
    }
}

#[cfg(test)]
mod aimd_tests {
    use super::*;

    /// Against a receiver that takes `cap` of whatever is offered, reports
    /// every 5 ms converge near `cap` and keep the loss small.
    #[test]
    fn converges_near_a_receivers_capacity() {
        let ceiling = Rate::BitsPerSec(10e9);
        let cap = 2.4e9;
        let mut a = Aimd::new(ceiling, Some(Duration::from_micros(100)));
        let t0 = Instant::now();
        let (mut offered, mut lost) = (0.0, 0.0);
        let mut rates = Vec::new();
        for tick in 0..2000u32 {
            let r = a.rate().value();
            let loss = ((r - cap) / r).max(0.0);
            if tick >= 200 {
                offered += r;
                lost += r * loss;
                rates.push(r);
            }
            a.on_report(t0 + Duration::from_millis(5 * u64::from(tick)), (loss * 10_000.0) as u16, None);
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        assert!(mean > 0.85 * cap && mean < 1.05 * cap, "mean rate {mean:.3e} against capacity {cap:.3e}");
        assert!(lost / offered < 0.05, "loss {:.3}", lost / offered);
        assert!(a.rate().value() <= ceiling.value());
    }

    #[test]
    fn without_loss_it_climbs_to_the_ceiling_and_stays() {
        let mut a = Aimd::new(Rate::PacketsPerSec(1e6), None);
        assert_eq!(a.rate(), Rate::PacketsPerSec(1e6 / 16.0), "slow start begins low");
        let t0 = Instant::now();
        // 1/16 x 1.5^7 > 1: seven loss-free reports reach the ceiling.
        for i in 0..7 {
            assert!(a.on_report(t0 + Duration::from_millis(i), 0, None).is_some());
        }
        for i in 7..100 {
            assert_eq!(a.on_report(t0 + Duration::from_millis(i), 0, None), None);
        }
        assert_eq!(a.rate(), Rate::PacketsPerSec(1e6));
        assert_eq!(a.decreases, 0);
    }

    /// A sender that can only push 3 Gb/s against a 1.2 Gb/s receiver: the
    /// cut follows what went out, not a pacer allowance of several times it.
    #[test]
    fn a_cpu_bound_sender_is_cut_from_what_it_sent() {
        let mut a = Aimd::new(Rate::BitsPerSec(10e9), None);
        let t0 = Instant::now();
        for i in 0..20 {
            a.on_report(t0 + Duration::from_millis(5 * i), 0, Some(3e9));
        }
        assert!(a.rate().value() <= 6e9, "slow start stays within twice what was sent: {}", a.rate());
        let loss = ((3e9 - 1.2e9) / 3e9 * 10_000.0) as u16;
        a.on_report(t0 + Duration::from_millis(200), loss, Some(3e9));
        assert!(a.rate().value() < 1.25e9, "cut to about what got through: {}", a.rate());
    }
}
