//! `xdpblast bench`: every mode side by side on a veth pair the bench makes.
//!
//! Runs are interleaved (A B C A B C ...), every transfer is verified, and all
//! figures are measured: goodput from the sender's report, CPU and context
//! switches from each process's getrusage over its transfer phase (sender:
//! first frame or byte to verdict; receiver: session start to verdict), whole-system
//! CPU from /proc/stat deltas over the same phase (catching softirq and NAPI
//! work that belongs to no process), data-path syscalls counted at call sites.

mod child;
mod dataset;
mod modes;
mod plot;
mod runs;
mod table;
mod tar;
mod testbed;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tracing::info;

pub use dataset::Dataset;
pub use modes::BenchMode;
use modes::Row;
use runs::{generate, run_iperf3, summarize, Run, Runner};
use table::{print_table, verdict};
use testbed::Testbed;
const GIB: f64 = (1u64 << 30) as f64;
/// Packets per GiB from which the verdict names per-packet work as the
/// limit: 1 GiB in packets of about 2500 bytes or smaller.
const PER_PACKET_BOUND: f64 = 400e3;

pub struct BenchOptions {
    pub size: u64,
    pub file: Option<PathBuf>,
    pub modes: Vec<BenchMode>,
    pub runs: u32,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    /// Run the receiving veth's NAPI in a kthread instead of softirq context.
    pub threaded_napi: bool,
    /// Drop the page cache before each send, so every mode reads from disk.
    pub cold: bool,
    /// The veth pair's MTU, both ends (`--mtu`); every mode runs at it.
    pub mtu: u32,
    /// Queues on each veth end (`--queues`): above 1, every mode also runs
    /// with that many queues (AF_XDP) or streams (TCP), beside its
    /// single-queue row.
    pub queues: u32,
    /// Send a generated tree of many files instead of one file.
    pub dataset: Option<Dataset>,
}

#[derive(Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct ModeResult {
    pub mode: String,
    pub runs: usize,
    /// End to end: the sending command's start to its verified exit.
    pub e2e_goodput_bps: Stat,
    /// The transfer phase alone, as the sender reports it.
    pub goodput_bps: Stat,
    /// Peak RSS medians (`null` where the tool does not report it).
    pub sender_peak_rss_bytes: Option<f64>,
    pub receiver_peak_rss_bytes: Option<f64>,
    pub packets_per_s: Option<f64>,
    pub verified: bool,
    pub sender_cpu_s_per_gib: f64,
    pub receiver_cpu_s_per_gib: f64,
    /// Each side's CPU split into user and system time (medians of each;
    /// `null` where the tool does not report it).
    pub sender_split: Option<CpuSplit>,
    pub receiver_split: Option<CpuSplit>,
    pub system_cpu_s_per_gib: f64,
    /// `null` where not measured (the iperf3 reference).
    pub syscalls_per_gib: Option<f64>,
    pub ctx_switches_per_gib: Option<f64>,
    pub retransmits: u64,
    /// With a dataset: files per second, end to end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_per_s: Option<Stat>,
}

/// One side's CPU seconds per GiB, user and system.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuSplit {
    pub user_s_per_gib: f64,
    pub sys_s_per_gib: f64,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub kernel: String,
    pub cpus: usize,
    pub mtu: u32,
    pub napi: &'static str,
    /// The page cache was dropped before each send.
    pub cold: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub results: Vec<ModeResult>,
    /// `iperf3 -Z` between the same namespaces, when iperf3 is installed: an
    /// outside reference for TCP on this link. It moves no file and verifies
    /// nothing, so it is kept apart from `results`.
    pub reference: Option<ModeResult>,
    /// AF_XDP over sendfile, end-to-end medians.
    pub ratio_afxdp_over_sendfile: Option<f64>,
    /// The same for the transfer phase alone.
    pub ratio_transfer_phase: Option<f64>,
    /// One line: which mode was fastest end to end, how AF_XDP compares
    /// with sendfile, and the measured figures that explain it.
    pub verdict: String,
    pub host: Host,
    pub file_bytes: u64,
    pub runs: u32,
    /// Ctrl-C cut the bench short: the results hold the runs that finished.
    pub interrupted: bool,
    /// With `--queues N` above 1: N queues against N streams and against
    /// one (end-to-end medians).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<QueueRatios>,
    /// With `--dataset`: the set sent, and AF_XDP against the best TCP mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetFigures>,
}

/// `bench --dataset`: what was sent, and how AF_XDP fared in files/s.
#[derive(Debug, Serialize)]
pub struct DatasetFigures {
    pub name: Dataset,
    pub files: u64,
    /// AF_XDP's median files/s over the best TCP mode's.
    pub afxdp_over_best_tcp_files: Option<f64>,
    /// That TCP mode.
    pub best_tcp: Option<String>,
    /// `tar -c | TCP | tar -x` of the same set, as an outside reference
    /// (when tar and bash are installed).
    pub tar_reference: Option<tar::TarReference>,
}

/// `bench --queues N`: AF_XDP over N queues against the other rows.
#[derive(Debug, Serialize)]
pub struct QueueRatios {
    pub queues: u32,
    /// AF_XDP on N queues over sendfile on N streams.
    pub afxdp_over_sendfile_streams: Option<f64>,
    /// AF_XDP on N queues over single-stream sendfile.
    pub afxdp_over_sendfile_single: Option<f64>,
    /// AF_XDP on N queues over AF_XDP on one.
    pub afxdp_queues_over_one: Option<f64>,
}

/// Parses "1G", "64MiB", "500M", "4096".
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("{s:?} is not a size like 1G or 64M"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => bail!("unknown size unit {u:?} in {s:?} (use K, M, G or T)"),
    };
    Ok((n * mult as f64) as u64)
}

/// Runs every row `opts.runs` times, interleaved, prints the table, and
/// writes the JSON and chart asked for. Ctrl-C stops it after the run in
/// progress is cut short: the table of the runs that finished is printed,
/// and the bench still fails ("interrupted").
pub fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(opts.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!((1..=64).contains(&opts.queues), "--queues must be between 1 and 64");
    let work = tempfile::Builder::new().prefix("xdpblast-bench").tempdir()?;
    let file = input_file(opts, &work)?;
    let bytes = match opts.dataset {
        Some(d) => d.bytes(),
        None => std::fs::metadata(&file).with_context(|| format!("reading {}", file.display()))?.len(),
    };
    let bed = Testbed::create(opts.threaded_napi, opts.mtu, opts.queues)?;
    let mtu = bed.mtu()?;
    let rows = Row::all(&opts.modes, opts.queues);
    let runner = Runner {
        bed: &bed,
        exe: std::env::current_exe().context("finding our own binary")?,
        out: work.path().join(if opts.dataset.is_some() { "received" } else { "output.bin" }),
        dataset: opts.dataset.map(|_| file.clone()),
        runs_done: std::cell::Cell::new(0),
        said_no_ktls: std::cell::Cell::new(false),
        file,
        key: bench_key(&work)?,
        cold: opts.cold,
        bytes_bar: indicatif::ProgressBar::new(bytes),
    };
    let measured = measure(opts, &rows, &runner, bytes)?;
    drop(bed);
    let report = build_report(opts, &rows, measured, bytes, mtu);
    if report.results.is_empty() {
        bail!("interrupted");
    }
    print_table(&report);
    if let Some(p) = &opts.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
        println!("JSON written to {}", p.display());
    }
    if let Some(p) = &opts.plot {
        plot::draw(&report, p)?;
        println!("chart written to {}", p.display());
    }
    if report.interrupted {
        bail!("interrupted");
    }
    info!("bench done");
    Ok(report)
}

/// The file to send: `--file`, or one of `--size` generated in `work`;
/// with `--dataset`, the set's directory, generated in `work`.
fn input_file(opts: &BenchOptions, work: &tempfile::TempDir) -> anyhow::Result<PathBuf> {
    if let Some(d) = opts.dataset {
        let (n, each) = d.shape();
        let p = work.path().join(d.name());
        eprintln!("bench: generating the {} set: {n} files of {}", d.name(), crate::report::human_bytes(each));
        d.generate(&p)?;
        return Ok(p);
    }
    if let Some(f) = &opts.file {
        return Ok(f.clone());
    }
    let p = work.path().join("input.bin");
    eprintln!("bench: generating a {} file", crate::report::human_bytes(opts.size));
    generate(&p, opts.size)?;
    Ok(p)
}

/// A fresh pre-shared key for the afxdp-key mode, as `keygen` writes it.
fn bench_key(work: &tempfile::TempDir) -> anyhow::Result<PathBuf> {
    let key = work.path().join("bench.key");
    let hex = crate::report::hex(&crate::os::process::random_bytes::<32>());
    std::fs::write(&key, format!("{hex}\n")).context("writing the bench key")?;
    Ok(key)
}

/// Every row's runs, and the iperf3 reference's, as far as they got.
struct Measured {
    runs: Vec<Vec<Run>>,
    reference: Vec<Run>,
    /// With a dataset: each `tar | TCP` reference run's seconds.
    tar: Vec<f64>,
    interrupted: bool,
}

/// Runs the rows round after round, A B C A B C, with a bar for the runs
/// and one for the bytes of the transfer in progress.
fn measure(opts: &BenchOptions, rows: &[Row], runner: &Runner<'_>, bytes: u64) -> anyhow::Result<Measured> {
    let bars = indicatif::MultiProgress::new();
    let bar = bars.add(indicatif::ProgressBar::new(u64::from(opts.runs) * rows.len() as u64));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] runs {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let bytes_bar = bars.add(runner.bytes_bar.clone());
    bytes_bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  transfer {bar:40} {bytes}/{total_bytes} (confirmed by the receiver for AF_XDP, sent for TCP)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bytes_bar.enable_steady_tick(Duration::from_millis(200));
    let iperf3 = child::find_in_path("iperf3");
    let tar = runner.dataset.as_ref().and(tar::Tar::find());
    let mut m =
        Measured { runs: vec![Vec::new(); rows.len()], reference: Vec::new(), tar: Vec::new(), interrupted: false };
    'rounds: for r in 0..opts.runs {
        for (i, row) in rows.iter().enumerate() {
            let mode = row.label(row.mode.name());
            let human = crate::report::human_bytes(bytes);
            bar.set_message(format!("{mode}, run {}/{}: transferring {human}", r + 1, opts.runs));
            let res = runner.run_once(*row);
            if crate::os::signals::stop_requested() {
                m.interrupted = true;
                break 'rounds;
            }
            let res = res.with_context(|| format!("{mode}, run {}", r + 1))?;
            bar.println(format!(
                "  {mode:<12} run {}: {}",
                r + 1,
                crate::report::human_bits_per_sec(res.e2e_goodput_bps)
            ));
            info!(row = %mode, run = r + 1, e2e_goodput_bps = res.e2e_goodput_bps, "bench run finished");
            m.runs[i].push(res);
            bar.inc(1);
        }
        if let Some(ip3) = &iperf3 {
            bar.set_message(format!("iperf3 -Z (reference), run {}/{}", r + 1, opts.runs));
            match run_iperf3(runner.bed, ip3, bytes) {
                Ok(res) => m.reference.push(res),
                Err(e) => tracing::warn!("iperf3 reference skipped: {e:#}"),
            }
        }
        if let (Some(t), Some(set)) = (&tar, &runner.dataset) {
            bar.set_message(format!("tar | TCP (reference), run {}/{}", r + 1, opts.runs));
            match tar_run(t, runner, set, r) {
                Ok(secs) => m.tar.push(secs),
                Err(e) => tracing::warn!("tar | TCP reference skipped: {e:#}"),
            }
        }
        if crate::os::signals::stop_requested() {
            m.interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    bytes_bar.finish_and_clear();
    Ok(m)
}

/// One `tar | TCP` reference run of the dataset `set`, its tree compared
/// with the one sent; returns its seconds.
fn tar_run(t: &tar::Tar, runner: &Runner<'_>, set: &std::path::Path, round: u32) -> anyhow::Result<f64> {
    let out = runner.out.join(format!("tar{round}"));
    let secs = t.run_once(runner.bed, set, &out)?;
    let name = set.file_name().context("the dataset's name")?;
    let files = dataset::compare_trees(set, &out.join(name)).context("the tree tar delivered differs")?;
    if files <= runs::KEEP_RECEIVED_ABOVE_FILES {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    Ok(secs)
}

/// Medians per row, the ratios between rows, the host, and the verdict.
/// Rows that never finished a run are left out.
fn build_report(opts: &BenchOptions, rows: &[Row], m: Measured, bytes: u64, mtu: u32) -> BenchReport {
    let ran: Vec<(Row, &Vec<Run>)> = rows.iter().copied().zip(&m.runs).filter(|(_, rs)| !rs.is_empty()).collect();
    let files = opts.dataset.map(|d| d.shape().0);
    let results: Vec<ModeResult> =
        ran.iter().map(|(row, rs)| summarize(&row.label(row.mode.result_name()), rs, bytes, files)).collect();
    let find = |mode: BenchMode, lanes: u32| ran.iter().position(|(r, _)| r.mode == mode && r.lanes == lanes);
    // The ratio compares the default AF_XDP mode when it ran, else the first
    // AF_XDP variant; single queue and stream.
    let afxdp_row =
        find(BenchMode::Afxdp, 1).or_else(|| ran.iter().position(|(r, _)| r.mode.is_afxdp() && r.lanes == 1));
    let sendfile_row = find(BenchMode::Sendfile, 1);
    let e2e = |row: Option<usize>| row.and_then(|i| results.get(i)).map(|r| r.e2e_goodput_bps.median);
    let transfer = |row: Option<usize>| row.and_then(|i| results.get(i)).map(|r| r.goodput_bps.median);
    let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let queues = (opts.queues > 1).then(|| {
        let n = opts.queues;
        let afxdp_n = e2e(find(BenchMode::Afxdp, n));
        QueueRatios {
            queues: n,
            afxdp_over_sendfile_streams: over(afxdp_n, e2e(find(BenchMode::Sendfile, n))),
            afxdp_over_sendfile_single: over(afxdp_n, e2e(sendfile_row)),
            afxdp_queues_over_one: over(afxdp_n, e2e(afxdp_row)),
        }
    });
    let reference = (!m.reference.is_empty()).then(|| summarize("iperf3-Z", &m.reference, bytes, None));
    let dataset = opts.dataset.map(|d| DatasetFigures {
        tar_reference: tar::TarReference::of(&m.tar, d.shape().0, d.bytes()),
        ..dataset_figures(d, &ran, &results, afxdp_row)
    });
    BenchReport {
        ratio_afxdp_over_sendfile: over(e2e(afxdp_row), e2e(sendfile_row)),
        ratio_transfer_phase: over(transfer(afxdp_row), transfer(sendfile_row)),
        verdict: verdict(&results, afxdp_row, sendfile_row),
        results,
        reference,
        host: Host {
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mtu,
            napi: if opts.threaded_napi { "threaded" } else { "softirq" },
            cold: opts.cold,
        },
        file_bytes: bytes,
        runs: ran.iter().map(|(_, rs)| rs.len() as u32).min().unwrap_or(0),
        interrupted: m.interrupted,
        queues,
        dataset,
    }
}

/// AF_XDP's files/s against the best TCP mode's (single queue and stream).
fn dataset_figures(
    d: Dataset,
    ran: &[(Row, &Vec<Run>)],
    results: &[ModeResult],
    afxdp: Option<usize>,
) -> DatasetFigures {
    let files_of = |i: usize| results.get(i).and_then(|r| r.files_per_s.as_ref()).map(|s| s.median);
    let best_tcp = ran
        .iter()
        .enumerate()
        .filter(|(_, (r, _))| !r.mode.is_afxdp() && r.lanes == 1)
        .filter_map(|(i, _)| Some((i, files_of(i)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let ratio = match (afxdp.and_then(files_of), best_tcp) {
        (Some(a), Some((_, t))) if t > 0.0 => Some(a / t),
        _ => None,
    };
    DatasetFigures {
        name: d,
        files: d.shape().0,
        afxdp_over_best_tcp_files: ratio,
        best_tcp: best_tcp.and_then(|(i, _)| results.get(i)).map(|r| r.mode.clone()),
        tar_reference: None,
    }
}
