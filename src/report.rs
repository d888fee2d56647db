//! User-facing output in iperf3's manner: human units, one line per interval,
//! and a single JSON object at the end with `--json`.

use std::time::{Duration, Instant};

/// The keys every transfer report carries, whatever the mode (flattened into
/// each mode's JSON object).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// e.g. "afxdp-copy", "afxdp-zerocopy", "udp", "tcp", "sendfile".
    pub mode: String,
    pub bytes: u64,
    /// Frames or datagrams, where the mode has them.
    pub packets: Option<u64>,
    pub retransmits: u64,
    /// Verified goodput: file bits over `elapsed_s`; 0 when not verified.
    pub goodput_bps: f64,
    pub elapsed_s: f64,
    /// BLAKE3 of the file, hex.
    pub digest: String,
    pub verified: bool,
}

/// "1.25 GBytes" (binary multiples, as iperf3 prints transfer sizes).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["Bytes", "KBytes", "MBytes", "GBytes", "TBytes"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} Bytes")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// "9.41 Gbits/sec" (decimal multiples, as iperf3 prints rates).
pub fn human_bits_per_sec(bps: f64) -> String {
    const UNITS: [&str; 5] = ["bits/sec", "Kbits/sec", "Mbits/sec", "Gbits/sec", "Tbits/sec"];
    let mut v = bps;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.2} {}", UNITS[i])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints a line per interval while a transfer runs.
pub struct Intervals {
    enabled: bool,
    start: Instant,
    last: Instant,
    last_bytes: u64,
    every: Duration,
}

impl Intervals {
    pub fn new(enabled: bool, now: Instant) -> Intervals {
        Intervals { enabled, start: now, last: now, last_bytes: 0, every: Duration::from_secs(1) }
    }

    /// Call often; prints when an interval has passed. `extra` is appended.
    pub fn tick(&mut self, now: Instant, bytes: u64, extra: impl FnOnce() -> String) {
        if !self.enabled || now < self.last + self.every {
            return;
        }
        self.print(now, bytes, &extra());
    }

    fn print(&mut self, now: Instant, bytes: u64, extra: &str) {
        let t0 = (self.last - self.start).as_secs_f64();
        let t1 = (now - self.start).as_secs_f64();
        let delta = bytes.saturating_sub(self.last_bytes);
        let rate = delta as f64 * 8.0 / (t1 - t0).max(1e-9);
        println!("[{t0:6.2}-{t1:6.2} sec]  {:>12}  {:>16}  {extra}", human_bytes(delta), human_bits_per_sec(rate));
        self.last = now;
        self.last_bytes = bytes;
    }
}

/// One interval of a packet-rate run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RateSample {
    /// End of the interval, seconds from the start.
    pub t: f64,
    pub pps: f64,
    pub bits_per_sec: f64,
}

/// Per-second packet and bit rates, printed as they come (unless quiet) and
/// kept for the JSON report.
pub struct PacketRate {
    print: bool,
    start: Instant,
    last: Instant,
    last_packets: u64,
    last_bytes: u64,
    pub samples: Vec<RateSample>,
}

impl PacketRate {
    pub fn new(print: bool, now: Instant) -> PacketRate {
        PacketRate { print, start: now, last: now, last_packets: 0, last_bytes: 0, samples: Vec::new() }
    }

    /// Call often with running totals; closes an interval each second.
    pub fn tick(&mut self, now: Instant, packets: u64, bytes: u64, label: &str) {
        if now >= self.last + Duration::from_secs(1) {
            self.close(now, packets, bytes, label);
        }
    }

    /// Closes the current interval, however short.
    pub fn close(&mut self, now: Instant, packets: u64, bytes: u64, label: &str) {
        let dt = (now - self.last).as_secs_f64();
        if dt < 1e-3 {
            return;
        }
        let t0 = (self.last - self.start).as_secs_f64();
        let t = (now - self.start).as_secs_f64();
        let pps = packets.saturating_sub(self.last_packets) as f64 / dt;
        let bits_per_sec = bytes.saturating_sub(self.last_bytes) as f64 * 8.0 / dt;
        if self.print {
            println!(
                "[{t0:6.2}-{t:6.2} sec]  {:>10}  {:>16}  {label}",
                human_pps(pps),
                human_bits_per_sec(bits_per_sec)
            );
        }
        self.samples.push(RateSample { t, pps, bits_per_sec });
        self.last = now;
        self.last_packets = packets;
        self.last_bytes = bytes;
    }

    /// Median packets/s over the full one-second intervals (a short last
    /// interval is left out unless it is the only one).
    pub fn median_pps(&self) -> f64 {
        let full: Vec<f64> = self
            .samples
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                let t0 = if *i == 0 { 0.0 } else { self.samples[i - 1].t };
                s.t - t0 >= 0.9
            })
            .map(|(_, s)| s.pps)
            .collect();
        if full.is_empty() {
            return median(self.samples.iter().map(|s| s.pps).collect());
        }
        median(full)
    }
}

/// Median of the values (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// "1.71 Mpps".
pub fn human_pps(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.2} Mpps", pps / 1e6)
    } else if pps >= 1e3 {
        format!("{:.1} kpps", pps / 1e3)
    } else {
        format!("{pps:.0} pps")
    }
}

static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Marks the process's start; `main` calls it first thing. End-to-end
/// figures run from here.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(std::time::Instant::now);
}

/// Seconds since [`mark_process_start`] (or since the first call).
pub fn since_process_start() -> f64 {
    PROCESS_START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

/// The most resident memory this process has held (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// The machine's memory (MemTotal), if /proc says.
pub fn total_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = s
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human_bytes(512), "512 Bytes");
        assert_eq!(human_bytes(3 << 30), "3.00 GBytes");
        assert_eq!(human_bits_per_sec(9.41e9), "9.41 Gbits/sec");
        assert_eq!(human_bits_per_sec(12.0), "12.00 bits/sec");
        assert_eq!(hex(&[0, 0xab]), "00ab");
        assert_eq!(human_pps(1.714e6), "1.71 Mpps");
        assert_eq!(human_pps(200e3), "200.0 kpps");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
