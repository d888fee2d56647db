//! What must never happen: an XDP program left behind, a frame the link will
//! drop sent silently, a partial file that looks complete.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn wait_detached(veth: &Veth) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if veth.rx_xdp().is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn no_xdp_program_left_after_sigkill() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = veth.start_receiver(&dir.path().join("out.bin"), &[]);
    let attached = veth.rx_xdp().expect("while the receiver runs, our program must be attached");
    assert_eq!(attached["prog"]["name"], "xdpblast_steer");
    rx.kill("KILL");
    assert!(wait_detached(&veth), "XDP program still attached 5 s after SIGKILL: {:?}", veth.rx_xdp());
}

#[test]
fn no_xdp_program_left_after_sigterm_or_idle_timeout() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    assert!(veth.rx_xdp().is_some());
    rx.kill("TERM");
    assert!(wait_detached(&veth), "XDP program left after SIGTERM");

    // --wait: nobody sends; the receiver must give up, fail, and detach.
    let rx = veth.start_receiver(&out, &["--wait", "1"]);
    let (ok, report, _log) = rx.finish();
    assert!(!ok, "no sender within --wait is a failure");
    assert_eq!(report["verified"], false);
    assert!(report["error"].as_str().unwrap_or("").contains("within 1 s (--wait)"), "{report}");
    assert!(!out.exists(), "no output may appear at PATH without a verified transfer");
    assert!(wait_detached(&veth));
}

#[test]
fn packet_size_above_mtu_is_refused_before_any_packet_leaves() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 1 << 20, 10);
    let before = veth.tx_packets();
    let sent = veth.send(&file, &["--packet-size", "1600"]);
    let after = veth.tx_packets();
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(!sent.status.success(), "a packet size above the MTU must fail");
    assert!(stderr.contains("above the MTU") && stderr.contains("1500"), "the error must name the MTU: {stderr}");
    assert_eq!(before, after, "no packet may leave the interface: {before} -> {after}");
}

#[test]
fn sender_without_receiver_fails_with_clear_timeout() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4096, 11);
    let started = Instant::now();
    let sent = veth.send(&file, &["--timeout", "1"]);
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(!sent.status.success());
    // Nothing listens, so the receiver's host answers "port unreachable";
    // whichever of that (after 1 s) and the 1 s timeout comes first names it.
    assert!(stderr.contains("no answer from the receiver") || stderr.contains("nothing is listening"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "the timeout must bound the run");
}

/// The received file gets the sender's permission bits (masked by the
/// receiver's umask, 022 here) and mtime, as cp and scp give them, over
/// AF_XDP and over sendfile: a 0600 file never arrives world-readable.
#[test]
fn the_files_mode_and_mtime_are_kept() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    for (mode, send_mode, expect) in [(0o600, "afxdp", 0o600), (0o750, "sendfile", 0o750), (0o666, "afxdp", 0o644)] {
        let file = random_file(dir.path(), "secret.key", 300_000, u64::from(mode));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::from_nanos(1_600_000_000_123_456_789);
        std::fs::File::options().write(true).open(&file).and_then(|f| f.set_modified(mtime)).expect("set mtime");
        let out = dir.path().join(format!("out-{mode:o}"));
        let rx = veth.start_receiver(&out, &[]);
        let sent = veth.send(&file, &["--mode", send_mode]);
        finished_identical(rx, &sent, &file, &out);
        let got = std::fs::metadata(&out).expect("output");
        assert_eq!(got.mode() & 0o7777, expect, "{mode:o} over {send_mode} arrived {:o}", got.mode() & 0o7777);
        assert_eq!((got.mtime(), got.mtime_nsec()), (1_600_000_000, 123_456_789), "mtime over {send_mode}");
    }
}
