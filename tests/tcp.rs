//! The TCP rungs of the zero-copy ladder, and the automatic fallback to
//! sendfile when AF_XDP cannot run, over a veth pair in namespaces.

mod common;

use std::process::Command;

use common::*;

fn tcp_transfer(veth: &Veth, mode: &str, recv_args: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 24 << 20, 100 + mode.len() as u64);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, recv_args);
    let dst = format!("{RX_IP}:9000");
    let f = file.to_str().expect("utf-8");
    let sent = veth
        .in_ns(&veth.tx_ns, &["--log", "warn", "send", f, "--mode", mode, "--dst", &dst, "--json"])
        .output()
        .expect("send");
    let (rx_ok, recv, log) = rx.finish();
    assert!(sent.status.success(), "{mode}: sender failed: {}", String::from_utf8_lossy(&sent.stderr));
    assert!(rx_ok, "{mode}: receiver failed: {recv}\n{log}");
    let send = json(&sent);
    assert_eq!(send["mode"], mode);
    assert_eq!(send["verified"], true);
    assert_eq!(recv["mode"], "tcp");
    assert_eq!(recv["verified"], true);
    assert_eq!(send["digest"], recv["digest"]);
    assert_eq!(recv["read_back_bytes"], 0, "{mode}: the streams hash what they write; nothing is read back: {recv}");
    assert!(send["syscalls"].as_u64().unwrap_or(0) > 0, "syscalls are counted");
    // The end-to-end rate is the file over the whole command, as AF_XDP's.
    let (e2e, e2e_s) = (send["e2e_goodput_bps"].as_f64().unwrap_or(0.0), send["e2e_s"].as_f64().unwrap_or(0.0));
    let bits = send["bytes"].as_f64().unwrap_or(0.0) * 8.0;
    assert!(e2e > 0.0 && (e2e * e2e_s / bits - 1.0).abs() < 0.01, "{mode}: e2e_goodput_bps {e2e}, e2e_s {e2e_s}");
    assert!(same_file(&file, &out), "{mode}: output differs");
}

#[test]
fn every_tcp_mode_arrives_byte_identical() {
    let veth = Veth::new();
    for mode in ["sendfile", "readwrite", "mmap", "splice"] {
        tcp_transfer(&veth, mode, &["--mode", "tcp"]);
    }
}

#[test]
fn afxdp_receiver_also_serves_a_tcp_sender() {
    let veth = Veth::new();
    tcp_transfer(&veth, "sendfile", &[]);
}

#[test]
fn auto_mode_falls_back_to_sendfile_where_af_xdp_cannot_run() {
    use std::os::unix::fs::PermissionsExt;
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = binary_for_nobody(dir.path());
    let file = random_file(dir.path(), "in.bin", 8 << 20, 77);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    // Without privileges no UMEM can be registered: auto must say so and use TCP.
    let dst = format!("{RX_IP}:9000");
    let sent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &veth.tx_ns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([
            bin.to_str().expect("utf-8"),
            "send",
            file.to_str().expect("utf-8"),
            "--iface",
            &veth.tx_if,
            "--dst",
            &dst,
            "--json",
        ])
        .output()
        .expect("send");
    let (rx_ok, recv, log) = rx.finish();
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{stderr}");
    assert!(rx_ok, "{recv}\n{log}");
    let report = json(&sent);
    assert_eq!(report["mode"], "sendfile");
    let why = report["afxdp_not_used"].as_str().unwrap_or_default();
    assert!(why.contains("AF_XDP cannot run"), "the report says why AF_XDP was not used: {report}");
    assert!(same_file(&file, &out));
}

/// Encryption (issue 27): with a key, every TCP mode's streams carry TLS
/// records, over one stream and two, and the file arrives identical. On a
/// kernel without TLS (this test bed's) both ends seal in user space and
/// say why; on one with it (the guest, `tests/zerocopy.rs`) the kernel does.
#[test]
fn with_a_key_every_tcp_mode_is_encrypted_and_arrives_identical() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let file = random_file(dir.path(), "in.bin", (9 << 20) + 333, 27);
    for (mode, streams) in [("sendfile", "1"), ("splice", "2"), ("readwrite", "1"), ("mmap", "2")] {
        let out = dir.path().join(format!("{mode}.bin"));
        let rx = veth.start_receiver(&out, &["--mode", "tcp", "--key-file", &key]);
        let sent = veth.send(&file, &["--mode", mode, "--streams", streams, "--key-file", &key]);
        let (send, recv) = finished_identical(rx, &sent, &file, &out);
        for (end, report) in [("sender", &send), ("receiver", &recv)] {
            let e = &report["encryption"];
            assert_eq!(e["cipher"], "AES-256-GCM", "{mode}: the {end} encrypted: {report}");
            let in_kernel = e["kernel_tx"] == true && e["kernel_rx"] == true;
            assert_eq!(in_kernel, e["kernel_tls_missing"].is_null(), "{mode}: the {end} says why not kTLS: {e}");
        }
    }
    // Authenticated only: no encryption, and the report says none.
    let out = dir.path().join("clear.bin");
    let rx = veth.start_receiver(&out, &["--mode", "tcp", "--key-file", &key]);
    let sent = veth.send(&file, &["--mode", "sendfile", "--key-file", &key, "--no-encrypt"]);
    let (send, recv) = finished_identical(rx, &sent, &file, &out);
    assert!(send["encryption"].is_null() && recv["encryption"].is_null(), "{send}\n{recv}");
}
