//! One measured run of a row (our sender and receiver, or the iperf3
//! reference), and the medians over a row's runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use super::child::{clock_ticks, drop_page_cache, finish, finish_watching, proc_stat, spawn, wait_line};
use super::modes::{BenchMode, Row};
use super::testbed::{Testbed, RX_IP};
use super::{ModeResult, Stat, GIB};
use crate::report::median;

/// One verified transfer's measurements.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Run {
    /// File bits over the sending command's whole run, start to verified
    /// exit: what the user waits for.
    pub e2e_goodput_bps: f64,
    /// Transfer-phase goodput, as the sender reports it.
    pub goodput_bps: f64,
    /// The sending command's whole run, seconds.
    pub e2e_s: f64,
    pub sender_peak_rss: Option<u64>,
    pub receiver_peak_rss: Option<u64>,
    pub pps: Option<f64>,
    pub sender_cpu_s: f64,
    pub receiver_cpu_s: f64,
    /// Each side's (user, system) seconds, where the tool reports them.
    pub sender_user_sys: Option<(f64, f64)>,
    pub receiver_user_sys: Option<(f64, f64)>,
    pub system_cpu_s: f64,
    /// `None` where the tool does not report it (the iperf3 reference).
    pub syscalls: Option<u64>,
    pub ctx_switches: Option<u64>,
    pub retransmits: u64,
    pub verified: bool,
}

/// What every run of one bench shares: the test bed, our binary, the file,
/// where it goes, the key for the keyed mode, and the byte bar.
pub(super) struct Runner<'a> {
    pub bed: &'a Testbed,
    pub exe: PathBuf,
    pub file: PathBuf,
    pub out: PathBuf,
    pub key: PathBuf,
    /// Drop the page cache before each send.
    pub cold: bool,
    pub bytes_bar: indicatif::ProgressBar,
    /// With `--dataset`: the set's directory (the same as `file`), whose
    /// copy under `out` is compared file by file after every run.
    pub dataset: Option<PathBuf>,
    /// Runs so far: with a dataset, each run receives into a directory of
    /// its own under `out`.
    pub runs_done: std::cell::Cell<u32>,
    /// Whether a kTLS row has said that this kernel has no TLS.
    pub said_no_ktls: std::cell::Cell<bool>,
}

/// A received dataset of more files than this is kept until the bench
/// ends instead of being removed after its run: ext4 skips the inodes
/// freed in the last minute when it allocates (`recently_deleted`), so
/// 10,000 files removed just before the next run made every mode's
/// creates scan them, and the runs measured that scan (perf: 60 % of
/// the receiver's time in `recently_deleted` under `ext4_create`; 4,000
/// files/s against 26,000 on a fresh file system).
pub(super) const KEEP_RECEIVED_ABOVE_FILES: u64 = 1_000;

impl Runner<'_> {
    /// One verified transfer of `row`: the receiver started and ready, the
    /// sender timed from its launch to its verified exit.
    pub fn run_once(&self, row: Row) -> anyhow::Result<Run> {
        let (bed, mode) = (self.bed, row.mode);
        let out = match &self.dataset {
            Some(_) => {
                std::fs::create_dir_all(&self.out).with_context(|| format!("making {}", self.out.display()))?;
                self.out.join(format!("run{}", self.runs_done.get()))
            }
            None => self.out.clone(),
        };
        self.runs_done.set(self.runs_done.get() + 1);
        let _ = std::fs::remove_file(&out);
        // Let the last run's writeback finish first: otherwise it runs on the
        // same two CPUs during this one, and runs differ by 2x at random.
        nix::unistd::sync();
        let receiver = spawn(self.receiver_command(mode, &out)?)?;
        let mut rlog = Vec::new();
        wait_line(&receiver, "ready", Duration::from_secs(20), &mut rlog)?;

        let scmd = self.sender_command(row)?;
        let retrans_before = bed.tcp_retrans();
        if self.cold {
            drop_page_cache()?;
        }
        let launched = Instant::now();
        let sender = spawn(scmd)?;
        let mut slog = Vec::new();
        wait_line(&sender, "transfer started", Duration::from_secs(120), &mut slog)?;
        let (busy0, _) = proc_stat();
        self.bytes_bar.set_position(0);
        let send = finish_watching(sender, Duration::from_secs(300), "the sender", |line| self.show_progress(line))?;
        let e2e = launched.elapsed().as_secs_f64();
        self.bytes_bar.set_position(self.bytes_bar.length().unwrap_or(0));
        let (busy1, _) = proc_stat();
        let recv = finish(receiver, Duration::from_secs(60), "the receiver")?;
        let tcp_retrans = bed.tcp_retrans().saturating_sub(retrans_before);

        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        let verified = send["verified"] == true && recv["verified"] == true && send["digest"] == recv["digest"];
        if !verified {
            bail!("{mode}: transfer not verified\nsender: {send}\nreceiver: {recv}");
        }
        if let Some(set) = &self.dataset {
            let name = set.file_name().context("the dataset's name")?;
            let files = super::dataset::compare_trees(set, &out.join(name))
                .with_context(|| format!("{mode}: the tree that arrived differs from the one sent"))?;
            if files <= KEEP_RECEIVED_ABOVE_FILES {
                std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
            }
        }
        self.check_encryption(mode, &send)?;
        let elapsed = f(&send["elapsed_s"]);
        let tr = &send["transfer_rusage"];
        Ok(Run {
            e2e_goodput_bps: u(&send["bytes"]) as f64 * 8.0 / e2e.max(1e-9),
            e2e_s: e2e,
            goodput_bps: f(&send["goodput_bps"]),
            sender_peak_rss: send["peak_rss_bytes"].as_u64(),
            receiver_peak_rss: recv["peak_rss_bytes"].as_u64(),
            pps: send["packets"].as_u64().map(|p| p as f64 / elapsed.max(1e-9)),
            sender_cpu_s: f(&tr["user_s"]) + f(&tr["sys_s"]),
            receiver_cpu_s: f(&recv["transfer_rusage"]["user_s"]) + f(&recv["transfer_rusage"]["sys_s"]),
            sender_user_sys: Some((f(&tr["user_s"]), f(&tr["sys_s"]))),
            receiver_user_sys: Some((f(&recv["transfer_rusage"]["user_s"]), f(&recv["transfer_rusage"]["sys_s"]))),
            system_cpu_s: (busy1 - busy0) as f64 / clock_ticks(),
            syscalls: Some(u(&send["syscalls"])),
            ctx_switches: Some(u(&tr["voluntary_ctx_switches"]) + u(&tr["involuntary_ctx_switches"])),
            retransmits: if mode.is_afxdp() { u(&send["retransmits"]) } else { tcp_retrans },
            verified,
        })
    }

    /// An encrypted row's run must have been encrypted, and a kTLS row
    /// says once where the kernel had no TLS and the records were sealed
    /// in user space instead.
    fn check_encryption(&self, mode: BenchMode, send: &Value) -> anyhow::Result<()> {
        if !mode.encrypted() {
            return Ok(());
        }
        let (cipher, kernel) = match mode.is_afxdp() {
            true => (send["encrypted"].as_str(), true),
            false => (send["encryption"]["cipher"].as_str(), send["encryption"]["kernel_tx"] == true),
        };
        let cipher = cipher.with_context(|| format!("{mode}: the transfer was not encrypted"))?;
        if !kernel && !self.said_no_ktls.replace(true) {
            let why = send["encryption"]["kernel_tls_missing"].as_str().unwrap_or("kernel TLS refused");
            // Said even where the bars are hidden (no terminal).
            self.bytes_bar.suspend(|| {
                eprintln!(
                    "{mode}: {why}: its {cipher} records are sealed in user space (a read and a write, not sendfile)"
                )
            });
        }
        Ok(())
    }

    fn receiver_command(&self, mode: BenchMode, out: &Path) -> anyhow::Result<Command> {
        let bed = self.bed;
        let listen = format!("{RX_IP}:9000");
        let out = out.to_str().context("utf-8 output path")?;
        let mut cmd = bed.exec(&bed.rx_ns);
        cmd.arg(&self.exe).args([
            "--log",
            "warn",
            "recv",
            "--listen",
            &listen,
            "--out",
            out,
            "--json",
            "--timeout",
            "30",
            // A sender that never starts must not leave the receiver waiting.
            "--wait",
            "30",
        ]);
        if mode.is_afxdp() {
            cmd.args(["--iface", &bed.rx_if]);
        } else {
            cmd.args(["--mode", "tcp"]);
        }
        if mode.keyed() {
            cmd.arg("--key-file").arg(&self.key);
        }
        Ok(cmd)
    }

    fn sender_command(&self, row: Row) -> anyhow::Result<Command> {
        let (bed, mode) = (self.bed, row.mode);
        let listen = format!("{RX_IP}:9000");
        let file = self.file.to_str().context("utf-8 file path")?;
        let mut cmd = bed.exec(&bed.tx_ns);
        cmd.arg(&self.exe).args([
            "--log",
            "info",
            "send",
            file,
            "--dst",
            &listen,
            "--json",
            "--progress",
            "--timeout",
            "30",
        ]);
        cmd.args(["--mode", mode.send_mode()]);
        if mode.is_afxdp() {
            cmd.args(["--iface", &bed.tx_if]);
        }
        if mode.keyed() {
            cmd.arg("--key-file").arg(&self.key);
            if !mode.encrypted() {
                cmd.arg("--no-encrypt");
            }
        }
        if let Some(reader) = mode.reader() {
            cmd.args(["--reader", reader]);
        }
        if row.lanes > 1 {
            cmd.args([if mode.is_afxdp() { "--queues" } else { "--streams" }, &row.lanes.to_string()]);
        }
        Ok(cmd)
    }

    /// The sender's `progress DONE TOTAL` lines move the byte bar.
    fn show_progress(&self, line: &str) {
        let mut it = line.split_whitespace();
        if it.next() == Some("progress") {
            if let (Some(done), Some(total)) =
                (it.next().and_then(|v| v.parse().ok()), it.next().and_then(|v| v.parse().ok()))
            {
                self.bytes_bar.set_length(total);
                self.bytes_bar.set_position(done);
            }
        }
    }
}

/// One `iperf3 -Z -n BYTES` run: zero-copy TCP of BYTES, measured by iperf3.
pub(super) fn run_iperf3(bed: &Testbed, iperf3: &Path, bytes: u64) -> anyhow::Result<Run> {
    let mut server = bed.exec(&bed.rx_ns);
    server.arg(iperf3).args(["-s", "-1", "-B", RX_IP, "-p", "5201", "-J"]);
    let server = spawn(server)?;
    // iperf3 says nothing until it is done: retry the client until it connects.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (busy0, _) = proc_stat();
    let out = loop {
        let out = bed
            .exec(&bed.tx_ns)
            .arg(iperf3)
            .args(["-c", RX_IP, "-p", "5201", "-Z", "-n", &bytes.to_string(), "-J"])
            .output()
            .context("running the iperf3 client")?;
        // Until the server listens, the client is refused (and iperf3 may
        // still exit 0, with the error in its JSON).
        let refused = String::from_utf8_lossy(&out.stdout).contains("Connection refused");
        if (out.status.success() && !refused) || Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (busy1, _) = proc_stat();
    let _ = finish(server, Duration::from_secs(30), "the iperf3 server");
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let f = |x: &Value| x.as_f64().unwrap_or(0.0);
    let secs = f(&v["end"]["sum_received"]["seconds"]);
    let cpu = &v["end"]["cpu_utilization_percent"];
    Ok(Run {
        // iperf3 moves no file: its whole run is its transfer.
        e2e_goodput_bps: f(&v["end"]["sum_received"]["bits_per_second"]),
        e2e_s: secs,
        sender_peak_rss: None,
        receiver_peak_rss: None,
        goodput_bps: f(&v["end"]["sum_received"]["bits_per_second"]),
        pps: None,
        sender_cpu_s: f(&cpu["host_total"]) / 100.0 * secs,
        receiver_cpu_s: f(&cpu["remote_total"]) / 100.0 * secs,
        sender_user_sys: None,
        receiver_user_sys: None,
        system_cpu_s: (busy1 - busy0) as f64 / clock_ticks(),
        syscalls: None,
        ctx_switches: None,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        verified: false,
    })
}

/// Medians (and the spread of goodput) over `runs` of one row, named `name`.
/// `files`: with a dataset, the files each run moved.
pub(super) fn summarize(name: &str, runs: &[Run], bytes: u64, files: Option<u64>) -> ModeResult {
    let gib = bytes as f64 / GIB;
    let per_gib = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect()) / gib;
    let stat = |v: Vec<f64>| Stat {
        median: median(v.clone()),
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(0.0, f64::max),
    };
    let rss = |f: fn(&Run) -> Option<u64>| {
        runs.iter().map(|r| f(r).map(|b| b as f64)).collect::<Option<Vec<f64>>>().map(median)
    };
    ModeResult {
        mode: name.into(),
        runs: runs.len(),
        e2e_goodput_bps: stat(runs.iter().map(|r| r.e2e_goodput_bps).collect()),
        goodput_bps: stat(runs.iter().map(|r| r.goodput_bps).collect()),
        sender_peak_rss_bytes: rss(|r| r.sender_peak_rss),
        receiver_peak_rss_bytes: rss(|r| r.receiver_peak_rss),
        packets_per_s: runs.first().and_then(|r| r.pps).map(|_| median(runs.iter().filter_map(|r| r.pps).collect())),
        verified: runs.iter().all(|r| r.verified),
        sender_cpu_s_per_gib: per_gib(|r| r.sender_cpu_s),
        receiver_cpu_s_per_gib: per_gib(|r| r.receiver_cpu_s),
        sender_split: split(runs, |r| r.sender_user_sys, gib),
        receiver_split: split(runs, |r| r.receiver_user_sys, gib),
        system_cpu_s_per_gib: per_gib(|r| r.system_cpu_s),
        syscalls_per_gib: runs
            .iter()
            .map(|r| r.syscalls.map(|s| s as f64))
            .collect::<Option<Vec<f64>>>()
            .map(|v| median(v) / gib),
        ctx_switches_per_gib: runs
            .iter()
            .map(|r| r.ctx_switches.map(|s| s as f64))
            .collect::<Option<Vec<f64>>>()
            .map(|v| median(v) / gib),
        retransmits: runs.iter().map(|r| r.retransmits).sum(),
        files_per_s: files.map(|n| stat(runs.iter().map(|r| n as f64 / r.e2e_s.max(1e-9)).collect())),
    }
}

/// The medians of one side's user and system seconds per GiB, where every
/// run reports them.
fn split(runs: &[Run], side: fn(&Run) -> Option<(f64, f64)>, gib: f64) -> Option<super::CpuSplit> {
    let both: Vec<(f64, f64)> = runs.iter().map(side).collect::<Option<_>>()?;
    Some(super::CpuSplit {
        user_s_per_gib: median(both.iter().map(|b| b.0).collect()) / gib,
        sys_s_per_gib: median(both.iter().map(|b| b.1).collect()) / gib,
    })
}

/// Writes `size` bytes of xorshift output seeded with `seed` (not 0) to `w`.
pub(super) fn write_pseudo_random(w: &mut impl std::io::Write, size: u64, seed: u64) -> std::io::Result<()> {
    let mut x = seed;
    let mut block = vec![0u8; size.min(1 << 20) as usize];
    let mut left = size;
    while left > 0 {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes `size` bytes of a fast pseudo-random stream (incompressible, so
/// no link or disk can shortcut it) to `path`, synced.
pub(super) fn generate(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    write_pseudo_random(&mut f, size, 0x2545_f491_4f6c_dd1d)?;
    // Written back before the first run: otherwise the kernel flushes these
    // dirty pages during the first runs, on the same CPUs.
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}
