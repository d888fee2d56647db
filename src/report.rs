//! User-facing output in iperf3's manner: human units, one line per interval,
//! and a single JSON object at the end with `--json`.

use std::time::{Duration, Instant};

pub use crate::units::{clock, hex, human_bits_per_sec, human_bytes, human_pps, human_secs};

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

/// The figures every transfer report ends with, about this process (the
/// same keys whatever the mode, flattened into its JSON object).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessFigures {
    /// Process start to the verdict: what the user waited for.
    pub e2e_s: f64,
    pub rusage: crate::os::process::Rusage,
    /// CPU and context switches over the transfer phase alone.
    pub transfer_rusage: crate::os::process::Rusage,
    /// Data-path syscalls (see [`crate::os::syscount`]).
    pub syscalls: u64,
    /// VmHWM: the most memory this process held at once.
    pub peak_rss_bytes: u64,
}

impl ProcessFigures {
    /// The figures now, the transfer phase counted from `transfer_start`.
    pub fn now(transfer_start: &crate::os::process::Rusage) -> ProcessFigures {
        let rusage = crate::os::process::Rusage::of_self();
        ProcessFigures {
            e2e_s: crate::os::process::since_process_start(),
            transfer_rusage: rusage.since(transfer_start),
            rusage,
            syscalls: crate::os::syscount::total(),
            peak_rss_bytes: crate::os::process::peak_rss_bytes(),
        }
    }
}

/// Interval lines in iperf3's manner, on one time base with the summary:
/// a header, a line per second (bytes, rate, retransmits, % done, ETA, and
/// the phase when it is not the data's), the last partial interval, then the
/// summary lines.
pub struct Intervals {
    enabled: bool,
    /// Time zero of every line: the command's start for a sender, the
    /// session's opening for a receiver.
    base: Instant,
    last: Instant,
    last_bytes: u64,
    last_retransmits: u64,
    total: u64,
    every: Duration,
    header_printed: bool,
    /// Bytes an interrupted transfer had delivered: they count as done,
    /// not as moved, so rates and the ETA are of what moves now.
    resumed: u64,
    /// A tree's files, for "files N/M" and the one in progress.
    files: Option<crate::tree::FileProgress>,
}

/// What one interval line shows.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalLine<'a> {
    pub t0: f64,
    pub t1: f64,
    pub bytes: u64,
    /// `None` where the mode has no retransmit count.
    pub retransmits: Option<u64>,
    /// Bytes done so far, of `total`.
    pub done: u64,
    pub total: u64,
    /// Seconds left at the rate so far, once there is a rate.
    pub eta_s: Option<f64>,
    /// The phase, when it is not moving data ("waiting for the receiver").
    pub phase: &'a str,
    /// A tree's files whole so far, of all, and the one on its way.
    pub files: Option<(u64, u64, Option<String>)>,
}

/// The column header the interval lines and the summary share.
pub const INTERVAL_HEADER: &str = "[ Interval        ]      Transfer           Bitrate     Retr   Done     ETA";

/// The line between the interval lines and the summary.
pub const SUMMARY_RULE: &str = "- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -";

impl std::fmt::Display for IntervalLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.bytes as f64 * 8.0 / (self.t1 - self.t0).max(1e-9);
        let retr = self.retransmits.map_or("-".to_string(), |r| r.to_string());
        let pct = if self.total == 0 { 100.0 } else { self.done as f64 * 100.0 / self.total as f64 };
        let eta = self.eta_s.map_or("-".to_string(), clock);
        write!(
            f,
            "[{:6.2}-{:6.2} sec]  {:>12}  {:>16}  {retr:>7}  {:>4.0}%  {eta:>6}",
            self.t0,
            self.t1,
            human_bytes(self.bytes),
            human_bits_per_sec(rate),
            pct.min(100.0)
        )?;
        if let Some((done, all, next)) = &self.files {
            write!(f, "  files {done}/{all}")?;
            if let (Some(p), true) = (next, self.phase.is_empty()) {
                write!(f, "  {}", crate::wire::untrusted_text(p))?;
            }
        }
        if !self.phase.is_empty() {
            write!(f, "  {}", self.phase)?;
        }
        Ok(())
    }
}

/// One summary line: bytes over `t0..t1` and what the span was.
pub fn summary_line(t0: f64, t1: f64, bytes: u64, retransmits: Option<u64>, what: &str) -> String {
    let rate = bytes as f64 * 8.0 / (t1 - t0).max(1e-9);
    let retr = retransmits.map_or(String::new(), |r| r.to_string());
    format!("[{t0:6.2}-{t1:6.2} sec]  {:>12}  {:>16}  {retr:>7}  {what}", human_bytes(bytes), human_bits_per_sec(rate))
}

impl Intervals {
    /// `base` is time zero; `total` the bytes a transfer will move.
    pub fn new(enabled: bool, base: Instant, total: u64) -> Intervals {
        Intervals {
            enabled,
            base,
            last: base,
            last_bytes: 0,
            last_retransmits: 0,
            total,
            every: Duration::from_secs(1),
            header_printed: false,
            resumed: 0,
            files: None,
        }
    }

    /// The transfer is a tree: lines also say how many of its files are
    /// in, and which one is on its way.
    pub fn with_files(mut self, files: crate::tree::FileProgress) -> Intervals {
        self.set_files(files);
        self
    }

    /// As [`Intervals::with_files`], once the tree is known (a receiver's,
    /// when its manifest is in).
    pub fn set_files(&mut self, files: crate::tree::FileProgress) {
        self.files = Some(files);
    }

    /// The transfer resumes with `bytes` already delivered.
    pub fn resumed(&mut self, bytes: u64) {
        self.resumed = bytes;
        self.last_bytes = self.last_bytes.max(bytes);
    }

    pub fn base(&self) -> Instant {
        self.base
    }

    /// Seconds from time zero to `t`.
    pub fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.base).as_secs_f64()
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = total;
    }

    /// Whether a line is due at `now` (to skip gathering figures otherwise).
    pub fn due(&self, now: Instant) -> bool {
        self.enabled && now >= self.last + self.every
    }

    /// Call often with running totals; prints a line when a second has
    /// passed. `phase` names what is going on when data is not moving.
    pub fn tick(&mut self, now: Instant, bytes: u64, retransmits: Option<u64>, phase: &str) {
        if self.due(now) {
            self.print(now, bytes, retransmits, phase);
        }
    }

    /// Closes the last interval, however short, and prints the rule that
    /// the summary follows.
    pub fn finish(&mut self, now: Instant, bytes: u64, retransmits: Option<u64>) {
        if !self.enabled {
            return;
        }
        if now.saturating_duration_since(self.last) >= Duration::from_millis(5) {
            self.print(now, bytes, retransmits, "");
        }
        self.header();
        println!("{SUMMARY_RULE}");
    }

    fn header(&mut self) {
        if !self.header_printed {
            self.header_printed = true;
            println!("{INTERVAL_HEADER}");
        }
    }

    /// The line for the interval ending at `now`, and the state moved on.
    pub fn next_line<'a>(
        &mut self,
        now: Instant,
        bytes: u64,
        retransmits: Option<u64>,
        phase: &'a str,
    ) -> IntervalLine<'a> {
        let (t0, t1) = (self.at(self.last), self.at(now));
        let rate_so_far = bytes.saturating_sub(self.resumed) as f64 / t1.max(1e-9);
        let left = self.total.saturating_sub(bytes);
        let line = IntervalLine {
            t0,
            t1,
            bytes: bytes.saturating_sub(self.last_bytes),
            retransmits: retransmits.map(|r| r.saturating_sub(self.last_retransmits)),
            done: bytes,
            total: self.total,
            eta_s: (bytes > self.resumed).then(|| left as f64 / rate_so_far),
            phase,
            files: self.files.as_ref().map(|f| {
                let (done, all, next) = f.at(bytes);
                (done, all, next.map(str::to_string))
            }),
        };
        self.last = now;
        self.last_bytes = bytes;
        self.last_retransmits = retransmits.unwrap_or(0);
        line
    }

    fn print(&mut self, now: Instant, bytes: u64, retransmits: Option<u64>, phase: &str) {
        self.header();
        let line = self.next_line(now, bytes, retransmits, phase);
        println!("{line}");
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
        assert_eq!(clock(7.4), "0:07");
        assert_eq!(human_secs(Duration::from_secs(10)), "10 s");
        assert_eq!(human_secs(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human_secs(Duration::from_millis(250)), "250 ms");
        assert_eq!(clock(3723.0), "1:02:03");
    }

    /// One time base: interval bounds count from `base`, retransmits and
    /// bytes are per interval, % and ETA come from the running totals.
    #[test]
    fn interval_lines_share_one_time_base() {
        let base = Instant::now();
        let mut iv = Intervals::new(false, base, 1000);
        let a = iv.next_line(base + Duration::from_secs(1), 250, Some(3), "");
        assert_eq!((a.t0, a.t1, a.bytes, a.retransmits, a.done), (0.0, 1.0, 250, Some(3), 250));
        assert_eq!(a.eta_s, Some(3.0));
        let b = iv.next_line(base + Duration::from_millis(1500), 1000, Some(5), "");
        assert_eq!((b.t0, b.t1, b.bytes, b.retransmits), (1.0, 1.5, 750, Some(2)));
        assert_eq!(b.eta_s, Some(0.0));
        assert_eq!(b.to_string(), "[  1.00-  1.50 sec]     750 Bytes   12.00 Kbits/sec        2   100%    0:00");
        let waiting = iv.next_line(base + Duration::from_millis(2500), 1000, None, "waiting for the receiver");
        assert_eq!(
            waiting.to_string(),
            "[  1.50-  2.50 sec]       0 Bytes     0.00 bits/sec        -   100%    0:00  waiting for the receiver"
        );
        let first = Intervals::new(false, base, 10).next_line(base + Duration::from_secs(1), 0, None, "");
        assert_eq!(first.eta_s, None, "no rate yet, no ETA");
    }

    #[test]
    fn summary_lines_align_with_intervals() {
        let s = summary_line(0.0, 2.0, 1 << 30, Some(4), "sender, end to end");
        assert_eq!(s, "[  0.00-  2.00 sec]   1.00 GBytes    4.29 Gbits/sec        4  sender, end to end");
        assert_eq!(INTERVAL_HEADER.find("Transfer"), Some(25));
        // Six-digit retransmit counts (183,038 in the trial) keep the columns.
        let big = summary_line(0.0, 2.0, 1 << 30, Some(183_038), "x");
        let line = IntervalLine {
            t0: 0.0,
            t1: 2.0,
            bytes: 1 << 30,
            retransmits: Some(183_038),
            done: 1,
            total: 1,
            eta_s: None,
            phase: "",
            files: None,
        };
        assert_eq!(big.find("183038"), line.to_string().find("183038"));
        let tree = IntervalLine { files: Some((12, 2000, Some("data/sub/f0012".into()))), ..line.clone() };
        assert!(tree.to_string().ends_with("files 12/2000  data/sub/f0012"), "{tree}");
        assert_eq!(INTERVAL_HEADER.find("Retr").map(|i| i + 4), big.find("183038").map(|i| i + 6));
    }
}
