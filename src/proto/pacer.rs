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
/// that a burst does not overrun a slow receiver (at 1 Gb/s, 41 frames of
/// 1514 bytes), long enough to post a whole batch (256 such frames) at
/// 10 Gb/s: a bucket that cuts batches short costs a sender held back by
/// its CPU, not by the pace, a few per cent.
const BURST: Duration = Duration::from_micros(500);

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
