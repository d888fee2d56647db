//! Faults around a transfer: a side killed or interrupted, the link going
//! down, the file changing under the sender, a full disk, memory limits.
//! Whatever happens, the run ends with a clear error, within its timeout,
//! never leaves PATH looking complete, and never leaves an XDP program behind.
//!
//! Transfers that must still be running when the fault hits are paced with
//! `--rate`, so "mid-transfer" holds on any machine.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

fn wait_detached(veth: &Veth) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while veth.rx_xdp().is_some() {
        assert!(Instant::now() < deadline, "XDP program still attached: {:?}", veth.rx_xdp());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 64 MiB at 200 Mb/s: about 2.8 s of sending.
const SLOW: &[&str] = &["--rate", "200M"];

/// Trust round 2, row 8. Before: with the receiver SIGKILLed mid-transfer,
/// the sender waited out its 10 s timeout and then blamed the receiver's
/// reports. Now a silent receiver gets a Hello after 250 ms, its host
/// answers "port unreachable", and the sender stops at once, naming why.
#[test]
fn receiver_killed_mid_transfer_sender_stops_at_once_naming_why() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 21);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let mut tx = veth.start_sender(&file, &dir.path().join("send.log"), SLOW);
    tx.wait_log("transfer started", 20);
    std::thread::sleep(Duration::from_millis(300));
    rx.kill("KILL");
    let (ok, _, log, waited) = tx.wait_exit(30);
    assert!(!ok, "the sender must fail when its receiver dies: {log}");
    assert!(log.contains("the receiver exited"), "the error must say the receiver is gone: {log}");
    assert!(waited < Duration::from_secs(3), "it took {waited:?}; the timeout is 10 s");
    assert!(!out.exists());
    wait_detached(&veth);
}

#[test]
fn sender_killed_mid_transfer_receiver_times_out_and_keeps_partial() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 22);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &["--timeout", "2"]);
    let mut tx = veth.start_sender(&file, &dir.path().join("send.log"), SLOW);
    tx.wait_log("transfer started", 20);
    std::thread::sleep(Duration::from_millis(300));
    tx.kill("KILL");
    let started = Instant::now();
    let (ok, report, log) = rx.finish();
    assert!(!ok, "{report}");
    assert!(report["error"].as_str().unwrap_or("").contains("idle timeout"), "{report}\n{log}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let partial = dir.path().join("out.bin.partial");
    assert!(!out.exists(), "PATH must not exist after a failed transfer");
    assert!(partial.exists(), "the data received must stay at PATH.partial");
    assert_eq!(report["path"].as_str(), partial.to_str());
    // It says what the next run does with the partial (tests/resume.rs
    // resumes it); --no-resume replaces it, and leaves no journal behind.
    assert!(log.contains("resumes there (recv --no-resume starts over)"), "{log}");
    assert!(dir.path().join("out.bin.partial.journal").exists());
    wait_detached(&veth);
    let rx = veth.start_receiver(&out, &["--no-resume"]);
    let sent = veth.send(&file, &[]);
    let (ok, _, log) = rx.finish();
    assert!(ok && sent.status.success(), "{log}");
    assert_eq!(json(&sent)["resumed_bytes"], 0);
    assert!(same_file(&file, &out));
    assert!(!dir.path().join("out.bin.partial.journal").exists(), "the journal outlived the transfer");
    wait_detached(&veth);
}

#[test]
fn sigint_to_the_sender_aborts_both_sides_cleanly() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 23);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &["--timeout", "30"]);
    let mut tx = veth.start_sender(&file, &dir.path().join("send.log"), SLOW);
    tx.wait_log("transfer started", 20);
    std::thread::sleep(Duration::from_millis(300));
    tx.signal("INT");
    let (status, _, log, _) = tx.wait_status(10);
    // 128 + SIGINT, as shells and iperf3 report a Ctrl-C (it was 1).
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("interrupted"), "{log}");
    // The sender's Abort ends the receiver at once, not after its 30 s timeout.
    let started = Instant::now();
    let (rx_ok, report, rx_log) = rx.finish();
    assert!(!rx_ok);
    assert!(started.elapsed() < Duration::from_secs(10), "the receiver waited for its idle timeout");
    let err = report["error"].as_str().unwrap_or("");
    assert!(err.contains("the sender aborted") && err.contains("interrupted"), "{report}\n{rx_log}");
    assert!(!out.exists());
    wait_detached(&veth);
}

/// Trust round 2, row 16: Ctrl-C printed no summary (iperf3 prints one).
/// Now both ends close their last interval and say what had arrived.
#[test]
fn sigint_prints_a_summary_on_both_sides() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 26);
    let out = dir.path().join("out.bin");
    let (f, o) = (file.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let listen = veth.rx_data.clone();
    let spawn = |ns: &str, args: &[&str], log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).expect("log");
        veth.in_ns(ns, args).stdout(std::process::Stdio::piped()).stderr(log).spawn().expect("spawn")
    };
    let rx = spawn(
        &veth.rx_ns,
        &[
            "--log",
            "info",
            "recv",
            "--iface",
            &veth.rx_if,
            "--listen",
            &listen,
            "--out",
            o,
            "--timeout",
            "30",
            "--wait",
            "30",
        ],
        "recv.log",
    );
    let mut tx_args = vec!["--log", "info", "send", f, "--iface", &veth.tx_if, "--dst", &listen, "--timeout", "30"];
    tx_args.extend_from_slice(SLOW);
    let send_log = dir.path().join("send.log");
    let tx = spawn(&veth.tx_ns, &tx_args, "send.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&send_log).unwrap_or_default().contains("transfer started") {
        assert!(Instant::now() < deadline, "the transfer never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1200));
    for pid in [tx.id(), rx.id()] {
        let st = Command::new("kill").args(["-INT", &pid.to_string()]).status().expect("kill");
        assert!(st.success());
    }
    let (sent, got) = (tx.wait_with_output().expect("sender"), rx.wait_with_output().expect("receiver"));
    let (sent_text, got_text) = (String::from_utf8_lossy(&sent.stdout), String::from_utf8_lossy(&got.stdout));
    assert_eq!(sent.status.code(), Some(130), "{sent_text}");
    assert_eq!(got.status.code(), Some(130), "{got_text}");
    assert!(sent_text.contains("sender, interrupted: what the receiver held at Ctrl-C"), "{sent_text}");
    assert!(got_text.contains("receiver, interrupted: what arrived before Ctrl-C"), "{got_text}");
    assert!(!out.exists());
    wait_detached(&veth);
}

#[test]
fn sigterm_to_the_receiver_aborts_both_sides_cleanly() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 24);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let mut tx = veth.start_sender(&file, &dir.path().join("send.log"), &[SLOW, &["--timeout", "30"]].concat());
    tx.wait_log("transfer started", 20);
    std::thread::sleep(Duration::from_millis(300));
    rx.signal("TERM");
    let (rx_ok, report, _) = rx.finish();
    assert!(!rx_ok);
    assert!(report["error"].as_str().unwrap_or("").contains("interrupted"), "{report}");
    let (ok, _, log, waited) = tx.wait_exit(30);
    assert!(!ok);
    assert!(log.contains("the receiver aborted: receiver interrupted"), "{log}");
    assert!(waited < Duration::from_secs(10), "the sender waited for its timeout");
    assert!(!out.exists());
    wait_detached(&veth);
}

#[test]
fn sigint_to_bench_leaves_no_namespace() {
    require_privileges();
    let _serial = serial();
    let mut child = Command::new(BIN)
        .args(["--log", "warn", "bench", "--size", "256M", "--runs", "3", "--modes", "afxdp,sendfile"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning bench");
    let ns = format!("xbb{}", child.id());
    let netns = || {
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().expect("ip").stdout).to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !netns().contains(&ns) {
        assert!(Instant::now() < deadline, "bench never created {ns}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bench did not exit within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(!status.success(), "an interrupted bench must not report success: {stderr}");
    // Trust round 2, row 16: it says so, and exits 130 as for every command
    // (before: "afxdp, run 1: the sender did not finish within 300s").
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted") && !stderr.contains("did not finish"), "{stderr}");
    let left = netns();
    assert!(!left.contains(&ns), "bench left its namespaces behind: {left}");
}

/// Trust round 2, row 16: Ctrl-C after some runs finished prints their
/// table (before: nothing but "interrupted"), then still fails with 130.
#[test]
fn sigint_after_a_finished_run_prints_the_table_of_what_finished() {
    require_privileges();
    let _serial = serial();
    let mut child = Command::new(BIN)
        .args(["--log", "info", "bench", "--size", "8M", "--runs", "20", "--modes", "afxdp,sendfile"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning bench");
    let ns = format!("xbb{}", child.id());
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("bench run finished") && l.contains("sendfile")) {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => seen.push(l),
            Err(_) => assert!(Instant::now() < deadline, "no run finished within 120 s: {}", seen.join("\n")),
        }
    }
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let out = child.wait_with_output().expect("bench output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{}", rest.join("\n"));
    assert!(stdout.contains("interrupted: the table holds the runs that finished"), "{stdout}");
    let row = |name: &str| stdout.lines().any(|l| l.split_whitespace().next() == Some(name));
    assert!(row("afxdp-copy") && row("sendfile"), "both rows finished a run, so both are in the table: {stdout}");
    let left =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().expect("ip").stdout).to_string();
    assert!(!left.contains(&ns), "bench left its namespaces behind: {left}");
}

fn set_link(veth: &Veth, state: &str) {
    let st = Command::new("ip")
        .args(["-n", &veth.tx_ns, "link", "set", "dev", &veth.tx_if, state])
        .status()
        .expect("ip link set");
    assert!(st.success());
}

/// A link that stays down ends the transfer within `--timeout`, naming the
/// interface.
#[test]
fn interface_down_mid_transfer_is_a_clear_error() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 25);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let mut tx = veth.start_sender(&file, &dir.path().join("send.log"), &[SLOW, &["--timeout", "3"]].concat());
    tx.wait_log("transfer started", 20);
    std::thread::sleep(Duration::from_millis(300));
    set_link(&veth, "down");
    let (ok, _, log, waited) = tx.wait_exit(40);
    assert!(!ok);
    assert!(
        log.contains(&veth.tx_if) && log.contains("went down and stayed down for 3 s"),
        "the error must name the interface and say it is down: {log}"
    );
    assert!(waited < Duration::from_secs(10), "it took {waited:?}: a hang, not an error");
    let (rx_ok, report, _) = rx.finish();
    assert!(!rx_ok, "{report}");
    assert!(!out.exists());
}

/// Trust round 2, row 4. Before: taking the link down for 1 s stopped the
/// sender at once ("the interface went down or away") and the receiver
/// waited out its timeout. Now the sender waits for the link, and the
/// transfer completes, as TCP rides a flap out.
#[test]
fn a_one_second_link_flap_costs_the_transfer_nothing() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 27);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let mut tx = veth.start_sender(&file, &dir.path().join("send.log"), &[SLOW, &["--timeout", "10"]].concat());
    tx.wait_log("transfer started", 20);
    std::thread::sleep(Duration::from_millis(300));
    set_link(&veth, "down");
    std::thread::sleep(Duration::from_secs(1));
    set_link(&veth, "up");
    let (ok, _, log, _) = tx.wait_exit(60);
    assert!(ok, "the sender gave up on a 1 s flap: {log}");
    assert!(log.contains("the interface is up again"), "the flap was not seen, so this tests nothing: {log}");
    let (rx_ok, report, rx_log) = rx.finish();
    assert!(rx_ok, "{report}\n{rx_log}");
    assert!(same_file(&file, &out));
}

#[test]
fn file_truncated_while_streaming_fails_and_nothing_appears_at_path() {
    truncated_while_streaming("inline");
}

#[test]
fn file_truncated_under_a_reader_thread_fails_and_nothing_appears_at_path() {
    truncated_while_streaming("thread");
}

fn truncated_while_streaming(reader: &str) {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // Paced, so the reader is still far from the end when the file shrinks.
    let file = random_file(dir.path(), "in.bin", 256 * MIB, 26);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let args: Vec<&str> = SLOW.iter().copied().chain(["--reader", reader]).collect();
    let mut tx = veth.start_sender(&file, &dir.path().join("send.log"), &args);
    tx.wait_log("transfer started", 20);
    std::fs::OpenOptions::new().write(true).open(&file).expect("open").set_len(100 * MIB as u64).expect("truncate");
    let (ok, _, log, _) = tx.wait_exit(60);
    assert!(!ok, "{log}");
    assert!(log.contains("changed while it was being read"), "{log}");
    let (rx_ok, report, _) = rx.finish();
    assert!(!rx_ok);
    assert!(report["error"].as_str().unwrap_or("").contains("the sender aborted"), "{report}");
    assert!(!out.exists());
}

#[test]
fn file_rewritten_while_streaming_fails_before_its_digest_is_sent() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, 27);
    let original = std::fs::read(&file).expect("read");
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let mut tx = veth.start_sender(&file, &dir.path().join("send.log"), SLOW);
    tx.wait_log("transfer started", 20);
    // Same size, other bytes: only the timestamps tell.
    let mut changed = original.clone();
    changed[..4096].fill(0xee);
    std::fs::write(&file, &changed).expect("rewrite");
    let (ok, _, log, _) = tx.wait_exit(60);
    assert!(!ok, "a sender whose file changed must not report success: {log}");
    assert!(log.contains("changed while it was being read"), "{log}");
    // The digest never went out, so the receiver cannot have verified a mix
    // of the two versions.
    let (rx_ok, report, _) = rx.finish();
    assert!(!rx_ok, "{report}");
    assert!(!out.exists());
}

/// Trust round 2, row 10: a file the disk cannot hold is refused up front,
/// and the 0-byte partial it was refused for is not left behind.
#[test]
fn full_disk_is_a_clear_error_and_leaves_no_file() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 32 * MIB, 28);
    let mnt = tempfile::tempdir().expect("mount point");
    let m = mnt.path().to_str().expect("utf-8");
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "xdpblast-test", m]).status().expect("mount");
    assert!(st.success(), "mounting a tmpfs needs root");
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(m.to_string());
    let out = mnt.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let sent = veth.send(&file, &[]);
    let (rx_ok, report, log) = rx.finish();
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(!rx_ok);
    let err = report["error"].as_str().unwrap_or("");
    assert!(err.contains("No space left on device") && err.contains("reserving"), "{report}\n{log}");
    assert!(!sent.status.success());
    assert!(stderr.contains("the receiver aborted") && stderr.contains("No space left"), "{stderr}");
    assert!(!out.exists());
    assert!(!mnt.path().join("out.bin.partial").exists(), "nothing arrived, so no partial is left");
    assert!(report["path"].is_null() && log.contains("nothing was written"), "{report}\n{log}");
}

#[test]
fn umem_too_small_or_above_memory_is_refused_naming_the_limit() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let before = veth.tx_packets();
    let file = random_file(dir.path(), "in.bin", 32 * MIB, 29);
    let sent = veth.send(&file, &["--umem", "100K"]);
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(!sent.status.success());
    assert!(stderr.contains("--umem 102400 bytes holds too few"), "{stderr}");

    // A UMEM larger than this host's memory, for a sparse file that would fill it.
    let huge = dir.path().join("huge.bin");
    std::fs::File::create(&huge).expect("create").set_len(1 << 40).expect("sparse 1 TiB");
    let sent = veth.send(&huge, &["--umem", "4000G"]);
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(!sent.status.success());
    assert!(stderr.contains("MemAvailable"), "{stderr}");
    assert_eq!(veth.tx_packets(), before, "nothing may be sent for a job that cannot run");
}

#[test]
fn umem_above_memlock_without_cap_ipc_lock_is_refused_naming_the_limit() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 16 * MIB, 30);
    let dst = format!("{RX_IP}:9000");
    let run = |mode: &str| {
        Command::new("ip")
            .args(["netns", "exec", &veth.tx_ns, "setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", BIN])
            .args(["--log", "info", "send", file.to_str().expect("utf-8"), "--iface", &veth.tx_if, "--dst", &dst])
            .args(["--mode", mode, "--timeout", "2"])
            .output()
            .expect("setpriv send")
    };
    let memlock = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).expect("getrlimit").0;
    assert!(memlock < 16 << 20, "this test needs RLIMIT_MEMLOCK below 16 MiB (it is {memlock})");
    let forced = run("afxdp");
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(!forced.status.success());
    assert!(stderr.contains("RLIMIT_MEMLOCK") && stderr.contains("CAP_IPC_LOCK"), "{stderr}");
    // In auto mode the same limit is a reason to fall back to TCP (nobody
    // listens here, so it then fails to connect; the choice is what counts).
    let auto = run("auto");
    let stderr = String::from_utf8_lossy(&auto.stderr);
    assert!(stderr.contains("falling back to sendfile") && stderr.contains("RLIMIT_MEMLOCK"), "{stderr}");
}
