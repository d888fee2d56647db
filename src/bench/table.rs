//! What a bench says: the table, the ratios, and the verdict line drawn
//! from the measured medians.

use super::{BenchReport, ModeResult, GIB, PER_PACKET_BOUND};
use crate::report::human_bits_per_sec;

/// The verdict line: the fastest mode end to end, then AF_XDP against
/// sendfile with the figures that explain the gap (setup time, packets per
/// GiB, whole-system CPU per GiB), all from the measured medians.
pub(super) fn verdict(results: &[ModeResult], afxdp: Option<usize>, sendfile: Option<usize>) -> String {
    let Some(best) = results.iter().max_by(|a, b| a.e2e_goodput_bps.median.total_cmp(&b.e2e_goodput_bps.median)) else {
        return "Verdict: nothing ran".into();
    };
    let mut v =
        format!("Verdict: {} is fastest end to end ({})", best.mode, human_bits_per_sec(best.e2e_goodput_bps.median));
    if results.iter().any(|m| !m.verified) {
        v.push_str("; NOT every transfer verified");
    }
    let (Some(a), Some(s)) = (afxdp.and_then(|i| results.get(i)), sendfile.and_then(|i| results.get(i))) else {
        return v + ".";
    };
    let ratio = a.e2e_goodput_bps.median / s.e2e_goodput_bps.median.max(1e-9);
    let setup = 1.0 - a.e2e_goodput_bps.median / a.goodput_bps.median.max(1e-9);
    v.push_str(&format!(
        ". {} runs at {ratio:.2}x sendfile end to end ({:.0} % of its time outside the transfer phase)",
        a.mode,
        setup.max(0.0) * 100.0
    ));
    let per_gib = a.packets_per_s.map(|pps| pps * (GIB * 8.0 / a.goodput_bps.median.max(1e-9)));
    if let Some(n) = per_gib {
        v.push_str(&format!(", moving {:.0}k packets per GiB", n / 1e3));
    }
    let (ca, cs) = (a.system_cpu_s_per_gib, s.system_cpu_s_per_gib);
    let cpu = if ca > cs * 1.1 {
        "more whole-system CPU than"
    } else if ca < cs * 0.9 {
        "less whole-system CPU than"
    } else {
        "about the same whole-system CPU as"
    };
    v.push_str(&format!(
        "; it costs {cpu} sendfile ({ca:.2} against {cs:.2} s/GiB){}.",
        match (ratio < 1.0 && ca > cs, per_gib) {
            // MTU 1500 moves about 750k packets per GiB, 9000 about 120k.
            (true, Some(n)) if n >= PER_PACKET_BOUND =>
                ": per-packet work, not the wire, limits it (a larger MTU cuts it)",
            (true, _) => ": CPU work per byte (copies and hashing), not the wire, limits it",
            _ => "",
        }
    ));
    v
}

/// Files per second to three figures or so: 27509, 480, 2.05.
fn files_rate(f: f64) -> String {
    match f {
        f if f >= 100.0 => format!("{f:.0}"),
        f if f >= 10.0 => format!("{f:.1}"),
        f => format!("{f:.2}"),
    }
}

/// A dataset's rows in files: files/s and Gb/s end to end, and AF_XDP
/// against the best TCP mode.
fn print_dataset(r: &BenchReport, d: &super::DatasetFigures) {
    println!("\n{} set: {} files; end to end, command start to verified tree:", d.name.name(), d.files);
    println!("{:<14} {:>26} {:>30}", "mode", "files/s (min-max)", "Gb/s (min-max)");
    for m in &r.results {
        let Some(f) = &m.files_per_s else { continue };
        let e = &m.e2e_goodput_bps;
        println!(
            "{:<14} {:>26} {:>30}",
            m.mode,
            format!("{} ({}-{})", files_rate(f.median), files_rate(f.min), files_rate(f.max)),
            format!("{} ({:.2}-{:.2})", human_bits_per_sec(e.median), e.min / 1e9, e.max / 1e9)
        );
    }
    if let Some(t) = &d.tar_reference {
        let (f, e) = (&t.files_per_s, &t.e2e_goodput_bps);
        println!(
            "{:<14} {:>26} {:>30}",
            "tar|tcp (ref)",
            format!("{} ({}-{})", files_rate(f.median), files_rate(f.min), files_rate(f.max)),
            format!("{} ({:.2}-{:.2})", human_bits_per_sec(e.median), e.min / 1e9, e.max / 1e9)
        );
        println!("(tar -c | TCP | tar -x, then a flush: an outside reference; it verifies nothing, the bench compares its tree)");
    }
    match (d.afxdp_over_best_tcp_files, &d.best_tcp) {
        (Some(x), Some(t)) => println!("AF_XDP / best TCP mode ({t}) in files/s (medians): {x:.2}x"),
        _ => println!("AF_XDP / best TCP mode in files/s: n/a (run AF_XDP and a TCP mode)"),
    }
}

/// The table, its notes, the ratios and the verdict, on stdout.
pub(super) fn print_table(r: &BenchReport) {
    let what = match &r.dataset {
        Some(d) => format!("{} set of {} files", crate::report::human_bytes(r.file_bytes), d.files),
        None => format!("{} file", crate::report::human_bytes(r.file_bytes)),
    };
    println!(
        "\n{what} ({}), {} run(s) per mode, interleaved; kernel {}, {} CPUs, MTU {}, receiver NAPI {}",
        if r.host.cold { "page cache dropped before each send" } else { "in the page cache" },
        r.runs,
        r.host.kernel,
        r.host.cpus,
        r.host.mtu,
        r.host.napi
    );
    let head = ["mode", "end to end (min-max)", "transfer phase", "pkt/s", "tx CPU", "rx CPU", "sys CPU"];
    let more = ["syscalls", "ctxsw", "tx RSS", "rx RSS", "rexmit", "verified"];
    println!(
        "{:<14} {:>30} {:>16} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8}",
        head[0],
        head[1],
        head[2],
        head[3],
        head[4],
        head[5],
        head[6],
        more[0],
        more[1],
        more[2],
        more[3],
        more[4],
        more[5]
    );
    println!(
        "{:<14} {:>30} {:>16} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8}",
        "", "", "", "", "s/GiB", "s/GiB", "s/GiB", "/GiB", "/GiB", "MiB", "MiB", "", ""
    );
    let rows = r.results.iter().map(|m| (m, if m.verified { "yes" } else { "NO" }));
    for (m, verified) in rows.chain(r.reference.iter().map(|m| (m, "n/a"))) {
        let e = &m.e2e_goodput_bps;
        let mib = |b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.0}", b / (1u64 << 20) as f64));
        println!(
            "{:<14} {:>30} {:>16} {:>8} {:>8.3} {:>8.3} {:>8.3} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8}",
            m.mode,
            format!("{} ({:.2}-{:.2})", human_bits_per_sec(e.median), e.min / 1e9, e.max / 1e9),
            human_bits_per_sec(m.goodput_bps.median),
            m.packets_per_s.map_or("-".to_string(), |p| format!("{:.0}k", p / 1e3)),
            m.sender_cpu_s_per_gib,
            m.receiver_cpu_s_per_gib,
            m.system_cpu_s_per_gib,
            m.syscalls_per_gib.map_or("-".into(), |v| format!("{v:.0}")),
            m.ctx_switches_per_gib.map_or("-".into(), |v| format!("{v:.0}")),
            mib(m.sender_peak_rss_bytes),
            mib(m.receiver_peak_rss_bytes),
            m.retransmits,
            verified
        );
    }
    if let Some(d) = &r.dataset {
        print_dataset(r, d);
    }
    if r.reference.is_some() {
        println!("(iperf3 -Z: an outside reference for TCP on this link; it moves no file and verifies nothing; its CPU columns are iperf3's own figures)");
    }
    println!(
        "end to end: from the sending command's start to its verified exit; transfer phase: as the sender reports it"
    );
    match (r.ratio_afxdp_over_sendfile, r.ratio_transfer_phase) {
        (Some(e), Some(t)) => println!("AF_XDP / sendfile, end to end (medians): {e:.2}x  (transfer phase: {t:.2}x)"),
        _ => println!("AF_XDP / sendfile: n/a (run both modes)"),
    }
    if let Some(q) = &r.queues {
        let x = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}x"));
        println!(
            "AF_XDP on {n} queues, end to end (medians): {} sendfile on {n} streams, {} single-stream sendfile, {} AF_XDP on 1 queue",
            x(q.afxdp_over_sendfile_streams),
            x(q.afxdp_over_sendfile_single),
            x(q.afxdp_queues_over_one),
            n = q.queues
        );
    }
    if r.interrupted {
        println!("interrupted: the table holds the runs that finished before Ctrl-C");
    }
    println!("{}", r.verdict);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Stat;

    fn row(mode: &str, e2e: f64, transfer: f64, pps: Option<f64>, sys_cpu: f64) -> ModeResult {
        let stat = |v: f64| Stat { median: v, min: v, max: v };
        ModeResult {
            mode: mode.into(),
            runs: 3,
            e2e_goodput_bps: stat(e2e),
            goodput_bps: stat(transfer),
            sender_peak_rss_bytes: None,
            receiver_peak_rss_bytes: None,
            packets_per_s: pps,
            verified: true,
            sender_cpu_s_per_gib: 1.0,
            receiver_cpu_s_per_gib: 1.0,
            sender_split: None,
            receiver_split: None,
            system_cpu_s_per_gib: sys_cpu,
            syscalls_per_gib: None,
            ctx_switches_per_gib: None,
            retransmits: 0,
            files_per_s: None,
        }
    }

    /// The verdict names the winner and explains AF_XDP against sendfile
    /// with the measured figures: ratio, setup share, packets, CPU.
    #[test]
    fn verdict_names_winner_and_reason() {
        // 1 GiB at 5.65 Gb/s takes 1.52 s; 0.49 Mpps over it is 745k packets.
        let results = [
            row("afxdp-copy", 5.57e9, 5.65e9, Some(490e3), 3.9),
            row("sendfile", 8.0e9, 8.2e9, None, 2.4),
            row("splice", 11.2e9, 11.5e9, None, 2.0),
        ];
        let v = verdict(&results, Some(0), Some(1));
        assert!(v.starts_with("Verdict: splice is fastest end to end (11.20 Gbits/sec)"), "{v}");
        assert!(v.contains("afxdp-copy runs at 0.70x sendfile end to end (1 % of its time outside"), "{v}");
        assert!(v.contains("moving 745k packets per GiB"), "{v}");
        assert!(v.contains("more whole-system CPU than sendfile (3.90 against 2.40 s/GiB): per-packet work"), "{v}");
        // Jumbo frames: 120k packets per GiB; the copies are the limit then.
        let jumbo = [row("afxdp-copy", 7.2e9, 7.3e9, Some(102e3), 2.05), row("sendfile", 8.5e9, 8.7e9, None, 1.48)];
        let v = verdict(&jumbo, Some(0), Some(1));
        assert!(v.contains("packets per GiB") && v.contains("CPU work per byte (copies and hashing)"), "{v}");
        let alone = verdict(&results[1..], None, Some(0));
        assert_eq!(alone, "Verdict: splice is fastest end to end (11.20 Gbits/sec).");
    }
}
