//! `send --raw` against `xdpblast sink`, pacing, several queues, and rate
//! adaptation, over veth pairs in namespaces the tests create. These check
//! what the modes do (counts agree, limits hold); their speed is measured by
//! the runs in the notes, not here.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

const MIB: usize = 1 << 20;

fn raw_send(veth: &Veth, file: &std::path::Path, extra: &[&str]) -> Output {
    let dst = format!("{RX_IP}:9000");
    Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &veth.tx_ns, BIN, "--log", "warn", "send"])
        .args([file.to_str().expect("utf-8"), "--iface", &veth.tx_if, "--dst", &dst, "--raw", "--json"])
        .args(extra)
        .output()
        .expect("send --raw")
}

/// Runs a sink on the receive side around `f`; returns f's output and the
/// sink's report.
fn with_sink(veth: &Veth, secs: &str, f: impl FnOnce() -> Output) -> (Output, serde_json::Value) {
    let sink = veth
        .in_ns(&veth.rx_ns, &["--log", "warn", "sink", "--iface", &veth.rx_if, "--duration", secs, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the sink");
    // The sink is attached once its program is: wait for the XDP hook.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while veth.rx_xdp().is_none() {
        assert!(std::time::Instant::now() < deadline, "the sink never attached");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = f();
    let done = sink.wait_with_output().expect("sink");
    assert!(done.status.success(), "sink failed: {}", String::from_utf8_lossy(&done.stderr));
    let report = serde_json::from_slice(&done.stdout).expect("sink JSON");
    (out, report)
}

#[test]
fn raw_frames_all_reach_the_drop_sink() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4 * MIB, 51);
    let (out, sink) = with_sink(&veth, "4", || raw_send(&veth, &file, &["--duration", "1"]));
    let raw = json(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent = raw["packets"].as_u64().expect("packets");
    assert!(sent > 0);
    assert_eq!(raw["frame_len"], 1514);
    assert_eq!(raw["bytes"].as_u64(), Some(sent * 1514));
    assert!(raw["median_pps"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(!raw["intervals"].as_array().expect("intervals").is_empty());
    // veth in copy mode loses nothing between a completed frame and the peer.
    assert_eq!(sink["packets"].as_u64(), Some(sent), "sink {sink}\nsender {raw}");
    assert_eq!(sink["bytes"].as_u64(), Some(sent * 1514));
    assert!(veth.rx_xdp().is_none(), "the sink must detach when it exits");
}

/// Jumbo frames leave as descriptor chains and reach the sink whole: the
/// sink counts every fragment's bytes, so bytes = packets x 9014.
#[test]
fn raw_jumbo_frames_are_counted_whole_at_the_sink() {
    let veth = Veth::with_mtu(9000);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4 * MIB, 53);
    let (out, sink) = with_sink(&veth, "4", || raw_send(&veth, &file, &["--duration", "1"]));
    let raw = json(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(raw["frame_len"], 9014, "--packet-size defaults to the MTU");
    let sent = raw["packets"].as_u64().expect("packets");
    assert!(sent > 0);
    assert_eq!(sink["packets"].as_u64(), Some(sent), "sink {sink}\nsender {raw}");
    assert_eq!(sink["bytes"].as_u64(), Some(sent * 9014), "every fragment counted");
}

#[test]
fn raw_rate_is_never_exceeded() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4 * MIB, 52);
    let (out, sink) = with_sink(&veth, "5", || raw_send(&veth, &file, &["--duration", "2", "--rate", "200M"]));
    let raw = json(&out);
    let bps = raw["bits_per_sec"].as_f64().expect("bits_per_sec");
    assert!(bps > 0.0 && bps <= 200e6 * 1.02, "asked 200 Mb/s, sent {bps}");
    let sunk_bits = sink["bytes"].as_f64().expect("bytes") * 8.0;
    let secs = raw["elapsed_s"].as_f64().expect("elapsed");
    assert!(sunk_bits <= 200e6 * 1.02 * secs + 2.0 * 1514.0 * 8.0, "the sink saw {sunk_bits} bits in {secs} s");
}

#[test]
fn raw_with_two_queues_uses_both_on_one_umem() {
    let veth = Veth::with_queues(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4 * MIB, 53);
    let (out, sink) = with_sink(&veth, "4", || raw_send(&veth, &file, &["--duration", "1", "--queues", "2"]));
    let raw = json(&out);
    let per_queue = raw["per_queue"].as_array().expect("per_queue");
    assert_eq!(per_queue.len(), 2);
    for q in per_queue {
        assert!(q["packets"].as_u64().unwrap_or(0) > 0, "an idle queue: {raw}");
    }
    assert_eq!(sink["packets"], raw["packets"]);

    // More queues than the interface has is refused, naming the fix.
    let out = raw_send(&veth, &file, &["--duration", "1", "--queues", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("numtxqueues"), "{stderr}");
}

#[test]
fn a_default_sender_follows_a_slow_receiver_and_logs_the_rate() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 54);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &["--inject-capacity", "100000"]);
    let sent = veth.send(&file, &[]);
    let (rx_ok, recv, log) = rx.finish();
    let send = json(&sent);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    assert!(rx_ok, "{recv}\n{log}");
    assert!(same_file(&file, &out));
    let a = &send["adaptation"];
    assert!(a["decreases"].as_u64().unwrap_or(0) >= 1, "the rate never came down: {a}");
    assert!(!a["rate_log"].as_array().expect("rate_log").is_empty());
    let packets = send["packets"].as_f64().expect("packets");
    let rexmit = send["retransmits"].as_f64().expect("retransmits");
    // Without adaptation this receiver drops about 85 % of what 1 core sends.
    assert!(rexmit / packets < 0.10, "{rexmit} retransmits of {packets}: {a}");
    assert!(recv["path_stats"]["xdp"]["over_capacity"].as_u64().unwrap_or(0) > 0, "the knob did nothing: {recv}");
}
