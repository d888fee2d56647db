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
    }
}
