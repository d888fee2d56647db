//! The command line's early and precise errors (issue 13): each case is
//! refused before anything is opened, sent or attached, with a message that
//! names the cause. Every command that could reach the network runs inside
//! a namespace the test made.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `xdpblast ARGS` in the sender's namespace, bounded in time.
fn run_in(veth: &Veth, args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let mut c = Command::new("timeout");
    c.args(["30", "ip", "netns", "exec", &veth.tx_ns, BIN]).args(args);
    let out = c.output().expect("running xdpblast");
    (out, t.elapsed())
}

/// Row 2 (and row 1's device): a FIFO blocked the open for 616 s, ignoring
/// INT and TERM. Now `stat` refuses anything but a regular file first.
#[test]
fn a_fifo_or_a_device_is_refused_before_it_is_opened() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("pipe");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    let fifo = fifo.to_str().expect("utf-8");
    let dst = format!("{RX_IP}:9000");
    for (input, mode, kind) in [
        (fifo, "sendfile", "a FIFO"),
        (fifo, "auto", "a FIFO"),
        ("/dev/zero", "sendfile", "a character device"),
        ("/tmp", "afxdp", "a directory"),
    ] {
        let (out, took) = run_in(&veth, &["send", input, "--mode", mode, "--iface", &veth.tx_if, "--dst", &dst]);
        assert!(!out.status.success(), "{input} --mode {mode} must fail");
        assert!(stderr(&out).contains(&format!("it is {kind}")), "{input}: {}", stderr(&out));
        assert!(took < Duration::from_secs(5), "{input} took {took:?}: it must not block");
    }
}

/// Row 8: a typo in --iface silently fell back to sendfile over TCP. Row 9:
/// a down interface gave "Network is unreachable", its cause only in an INFO
/// line. Both are now errors that name the interface, before any packet.
#[test]
fn an_unknown_or_down_interface_is_an_error_not_a_fallback() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4096, 1);
    let f = file.to_str().expect("utf-8");
    let dst = format!("{RX_IP}:9000");
    let (out, _) = run_in(&veth, &["send", f, "--iface", "xbnosuch0", "--dst", &dst]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("xbnosuch0") && !err.contains("sendfile"), "{err}");
    let st = Command::new("ip")
        .args(["-n", &veth.tx_ns, "link", "set", "dev", &veth.tx_if, "down"])
        .status()
        .expect("ip link set down");
    assert!(st.success());
    for mode in ["auto", "afxdp"] {
        let (out, took) = run_in(&veth, &["send", f, "--mode", mode, "--iface", &veth.tx_if, "--dst", &dst]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(&format!("{} is down", veth.tx_if)), "--mode {mode}: {err}");
        assert!(took < Duration::from_secs(5), "--mode {mode} took {took:?}");
    }
}

/// Row 13: `--mode sendfile --rate 50M` and `--raw --mode sendfile` ignored
/// their options silently. Options only AF_XDP can honour are now refused
/// with a TCP mode, by name. Row 21: `--batch 0` was accepted.
#[test]
fn options_a_mode_cannot_honour_are_refused_by_name() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4096, 2);
    let f = file.to_str().expect("utf-8");
    let dst = format!("{RX_IP}:9000");
    for (extra, named) in [
        (&["--mode", "sendfile", "--rate", "50M"][..], "--rate"),
        (&["--mode", "splice", "--raw", "--duration", "1"][..], "--raw"),
        (&["--mode", "readwrite", "--direct", "--umem", "4M"][..], "--direct, --umem"),
    ] {
        let mut args = vec!["send", f, "--dst", &dst];
        args.extend_from_slice(extra);
        let (out, took) = run_in(&veth, &args);
        assert!(!out.status.success(), "{extra:?}");
        let err = stderr(&out);
        assert!(err.contains(named) && err.contains("only with AF_XDP"), "{extra:?}: {err}");
        assert!(took < Duration::from_secs(5));
    }
    let (out, _) = run_in(&veth, &["send", f, "--dst", &dst, "--iface", &veth.tx_if, "--batch", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--batch"), "{}", stderr(&out));
}

/// Row 7: `send --json` with no receiver printed nothing on stdout; the
/// README promises an object with an `error` field. Row 15: with nothing
/// listening, the sender waited out its whole timeout (10 s by default)
/// before a handshake timeout; iperf3 says "connection refused" at once.
#[test]
fn no_receiver_is_named_at_once_and_json_reports_the_error() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4096, 3);
    for mode in ["afxdp", "sendfile"] {
        let t = Instant::now();
        let out = veth.send(&file, &["--mode", mode, "--timeout", "10"]);
        let took = t.elapsed();
        assert!(!out.status.success());
        let report = json(&out);
        assert_eq!(report["verified"], false, "{report}");
        let error = report["error"].as_str().unwrap_or("");
        assert!(error.contains("nothing is listening on 10.77.0.2:9001"), "--mode {mode}: {report}");
        assert!(took < Duration::from_secs(5), "--mode {mode} took {took:?}, not its 10 s timeout");
        assert!(stderr(&out).contains("xdpblast: error:"), "the error is on stderr too");
    }
}

/// Row 19: a second receiver on the same interface was told to run
/// `ip link set dev IF xdp off`, which cannot remove a bpf_link. Now it
/// names the process holding the link and how to free the hook.
#[test]
fn a_second_receiver_names_the_process_holding_the_interface() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let first = veth.start_receiver(&dir.path().join("one.bin"), &["--timeout", "3"]);
    let two = dir.path().join("two.bin");
    let listen = format!("{RX_IP}:9100");
    let out = veth
        .in_ns(
            &veth.rx_ns,
            &["recv", "--iface", &veth.rx_if, "--listen", &listen, "--out", two.to_str().expect("utf-8")],
        )
        .output()
        .expect("second receiver");
    assert!(!out.status.success());
    let err = stderr(&out);
    let pid = first.pid();
    assert!(err.contains(&format!("(pid {pid})")) && err.contains(&format!("kill {pid}")), "{err}");
    assert!(err.contains("cannot remove a link"), "{err}");
    let (ok, _, _) = first.finish();
    assert!(!ok, "the first receiver had no sender");
}

/// Row 6: an unprivileged `send --mode afxdp` ran the handshake (the
/// receiver reserved a partial) and read the file, then failed with "cannot
/// register the UMEM ... locked-memory limit". Now the privileges are
/// checked before the receiver hears of us, and the error names them.
#[test]
fn an_unprivileged_sender_is_told_what_is_missing_before_the_handshake() {
    use std::os::unix::fs::PermissionsExt;
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let file = random_file(dir.path(), "in.bin", 64 * 1024, 4);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod file");
    let bin = dir.path().join("xdpblast");
    std::fs::copy(BIN, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &["--timeout", "2"]);
    let dst = format!("{RX_IP}:9000");
    let sent = Command::new("ip")
        .args(["netns", "exec", &veth.tx_ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg("--inh-caps=-all")
        .arg(&bin)
        .args(["send", file.to_str().expect("utf-8"), "--mode", "afxdp", "--iface", &veth.tx_if, "--dst", &dst])
        .output()
        .expect("unprivileged sender");
    assert!(!sent.status.success());
    let err = stderr(&sent);
    assert!(err.contains("AF_XDP cannot run on") && err.contains("CAP_NET_RAW"), "{err}");
    let (ok, report, _) = rx.finish();
    assert!(!ok);
    assert!(report["error"].as_str().unwrap_or("").contains("no sender opened a session"), "{report}");
    assert!(!dir.path().join("out.bin.partial").exists(), "the receiver never heard of the sender");
}
