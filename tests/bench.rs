//! A short `xdpblast bench` run: every mode verified, the JSON parses with the
//! contract's keys, a chart is drawn, and the bench's namespaces are gone.

mod common;

use std::process::Command;

use common::*;

#[test]
fn short_bench_run_produces_verified_json_and_chart() {
    require_privileges();
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("bench.json");
    let svg_path = dir.path().join("bench.svg");
    let child = Command::new(BIN)
        .args(["bench", "--size", "8M", "--runs", "1"])
        .args(["--json", json_path.to_str().expect("utf-8"), "--plot", svg_path.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the bench");
    let name = format!("xbb{}", child.id() % 100_000);
    let out = child.wait_with_output().expect("bench output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("AF_XDP / sendfile, end to end (medians):"),
        "the table ends with the end-to-end ratio:\n{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("bench JSON")).expect("valid JSON");
    let results = report["results"].as_array().expect("results");
    let modes: Vec<&str> = results.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(modes, ["afxdp-copy", "sendfile", "readwrite", "mmap", "splice"]);
    for r in results {
        assert_eq!(r["verified"], true, "{r}");
        for key in [
            "sender_cpu_s_per_gib",
            "receiver_cpu_s_per_gib",
            "system_cpu_s_per_gib",
            "syscalls_per_gib",
            "ctx_switches_per_gib",
        ] {
            assert!(r[key].as_f64().is_some_and(|v| v >= 0.0), "{key} in {r}");
        }
        for key in ["e2e_goodput_bps", "goodput_bps"] {
            let g = &r[key];
            assert!(g["median"].as_f64().unwrap_or(0.0) > 0.0 && g["min"].as_f64() <= g["max"].as_f64(), "{key}: {r}");
        }
        // The command's whole run is never shorter than its transfer phase.
        assert!(r["e2e_goodput_bps"]["median"].as_f64() <= r["goodput_bps"]["median"].as_f64(), "{r}");
        assert!(r["sender_peak_rss_bytes"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert!(r["receiver_peak_rss_bytes"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert!(r["syscalls_per_gib"].as_f64().unwrap_or(0.0) > 0.0, "syscalls are counted: {r}");
        // Each side's CPU, split: user and system add up to about its total.
        for side in ["sender", "receiver"] {
            let split = &r[format!("{side}_split")];
            let (user, sys) = (split["user_s_per_gib"].as_f64(), split["sys_s_per_gib"].as_f64());
            let total = r[format!("{side}_cpu_s_per_gib")].as_f64().unwrap_or(0.0);
            assert!(user.is_some_and(|u| u >= 0.0) && sys.is_some_and(|s| s >= 0.0), "{side}: {r}");
            let sum = user.unwrap_or(0.0) + sys.unwrap_or(0.0);
            assert!((sum - total).abs() <= 0.5 * total, "{side}: user + sys {sum:.3} against {total:.3}: {r}");
        }
    }
    assert!(report["ratio_afxdp_over_sendfile"].as_f64().is_some_and(|x| x > 0.0));
    assert!(report["ratio_transfer_phase"].as_f64().is_some_and(|x| x > 0.0));
    // install-deps.sh installs iperf3, so the outside reference is there, and
    // what iperf3 does not report is null, not zero.
    let reference = &report["reference"];
    assert_eq!(
        reference["mode"],
        "iperf3-Z",
        "no iperf3 reference row; bench output:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(reference["goodput_bps"]["median"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(reference["syscalls_per_gib"].is_null() && reference["ctx_switches_per_gib"].is_null());
    assert!(reference["sender_split"].is_null(), "iperf3 reports no user/system split");
    assert_eq!(reference["verified"], false);
    assert!(report["host"]["cpus"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(report["host"]["mtu"], 1500, "the MTU the kernel reports for a fresh veth");
    // Row 4 of issue 13: a verdict with its reason, and a chart with the
    // modes on its x axis, axis titles, the iperf3 bar and the file size.
    let verdict = report["verdict"].as_str().expect("a verdict");
    assert!(verdict.starts_with("Verdict: ") && verdict.contains("x sendfile end to end"), "{verdict}");
    assert!(stdout.contains(verdict), "the verdict is printed:\n{stdout}");
    let svg = std::fs::read_to_string(&svg_path).expect("chart");
    assert!(svg.starts_with("<svg"), "an SVG chart");
    // plotters writes each text element's content on a line of its own.
    for text in ["afxdp-copy", "sendfile", "splice", "iperf3-Z", "mode", "CPU seconds per GiB"] {
        assert!(svg.lines().any(|l| l.trim() == text), "the chart has no {text:?} label");
    }
    assert!(svg.contains("8.00 MBytes file"), "the chart names the file size");

    let netns = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&name), "the bench left {name} behind");
}

#[test]
fn ctrl_c_stops_the_bench_and_removes_its_namespaces() {
    require_privileges();
    let _serial = serial();
    let mut child = Command::new(BIN)
        .args(["bench", "--size", "256M", "--runs", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning the bench");
    let name = format!("xbb{}", child.id() % 100_000);
    // Wait until its test bed exists, so the interrupt lands mid-run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        if String::from_utf8_lossy(&list.stdout).contains(&name) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the bench never created {name}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the bench did not stop within 60 s of SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success(), "an interrupted bench reports failure");
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name), "namespaces left after Ctrl-C");
    let ps = Command::new("pgrep").args(["-f", "xdpblast.*recv --listen 10.77.0.2"]).output().expect("pgrep");
    assert!(ps.stdout.is_empty(), "a receiver outlived the bench: {}", String::from_utf8_lossy(&ps.stdout));
}

/// `bench --queues 2`: AF_XDP on 2 queues and sendfile on 2 streams, each
/// beside its single row, all verified, with the queue ratios in the JSON.
#[test]
fn bench_with_two_queues_adds_multi_queue_rows() {
    require_privileges();
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("bench.json");
    let out = Command::new(BIN)
        .args(["bench", "--size", "8M", "--runs", "1", "--queues", "2", "--modes", "afxdp,sendfile"])
        .args(["--json", json_path.to_str().expect("utf-8")])
        .output()
        .expect("running the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("AF_XDP on 2 queues, end to end (medians):"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("bench JSON")).expect("valid JSON");
    let results = report["results"].as_array().expect("results");
    let modes: Vec<&str> = results.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(modes, ["afxdp-copy-2q", "afxdp-copy", "sendfile-2s", "sendfile"]);
    assert!(results.iter().all(|r| r["verified"] == true), "{report}");
    let q = &report["queues"];
    assert_eq!(q["queues"], 2);
    for key in ["afxdp_over_sendfile_streams", "afxdp_over_sendfile_single", "afxdp_queues_over_one"] {
        assert!(q[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {report}");
    }
}

/// `bench --dataset tiny`: 10,000 files of 4 KiB as one tree per run, by
/// AF_XDP and by sendfile, each run's tree compared file by file, with
/// files/s per mode and AF_XDP against the best TCP mode in the JSON.
#[test]
fn bench_dataset_sends_trees_and_reports_files_per_second() {
    require_privileges();
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("bench.json");
    let out = Command::new(BIN)
        .args(["bench", "--dataset", "tiny", "--runs", "1", "--modes", "afxdp,sendfile"])
        .args(["--json", json_path.to_str().expect("utf-8")])
        .output()
        .expect("running the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("tiny set: 10000 files"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("bench JSON")).expect("valid JSON");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{report}");
    for r in results {
        assert_eq!(r["verified"], true, "{report}");
        assert!(r["files_per_s"]["median"].as_f64().is_some_and(|f| f > 0.0), "{report}");
    }
    let d = &report["dataset"];
    assert_eq!((d["name"].as_str(), d["files"].as_u64()), (Some("tiny"), Some(10_000)), "{report}");
    assert_eq!(d["best_tcp"], "sendfile");
    assert!(d["afxdp_over_best_tcp_files"].as_f64().is_some_and(|x| x > 0.0), "{report}");
    // tar and bash are on every machine this runs on: the reference ran, and its tree matched.
    assert_eq!(d["tar_reference"]["runs"], 1, "{report}");
    assert!(stdout.contains("tar|tcp (ref)"), "{stdout}");
}
