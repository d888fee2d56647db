//! `xdpblast probe` on a veth end, as root and as an unprivileged user.

mod common;

use common::*;

#[test]
fn probe_reports_copy_mode_native_xdp_and_link_facts() {
    let veth = Veth::new();
    let out = veth.in_ns(&veth.rx_ns, &["probe", "--iface", &veth.rx_if, "--json"]).output().expect("probe");
    assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    // Issue 13 row 22: `{"ok": .., "detail": ..}`, not Rust's `{"Ok": ..}`,
    // and the MAC as text.
    assert_eq!(p["af_xdp"], serde_json::json!({"ok": true, "detail": "copy mode"}), "{p}");
    assert_eq!(p["xdp_native"], serde_json::json!({"ok": true, "detail": "native"}), "{p}");
    let mac = p["iface"]["mac"].as_str().unwrap_or("");
    assert!(mac.len() == 17 && mac.split(':').count() == 6, "{p}");
    assert_eq!(p["zero_copy_capable"], false, "veth has no AF_XDP zero-copy");
    assert_eq!(p["iface"]["mtu"], 1500);
    assert_eq!(p["iface"]["rx_queues"], 1);
    assert_eq!(p["iface"]["ipv4"], RX_IP);
    assert!(p["auto_mode"].as_str().unwrap_or("").starts_with("afxdp"));
    assert_eq!(p["multi_buffer"]["ok"], true, "kernel 6.18 has multi-buffer AF_XDP: {p}");
    assert_eq!(p["largest_packet"], 1500, "the MTU: {p}");
    assert!(veth.rx_xdp().is_none(), "the probe must not leave its test attachment behind");
}

#[test]
fn probe_reports_the_largest_packet_at_a_jumbo_mtu() {
    let veth = Veth::with_mtu(9000);
    let out = veth.in_ns(&veth.rx_ns, &["probe", "--iface", &veth.rx_if, "--json"]).output().expect("probe");
    assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(p["multi_buffer"]["ok"], true, "{p}");
    assert_eq!(p["largest_packet"], 9000, "{p}");
    assert_eq!(p["iface"]["mtu"], 9000);
}

#[test]
fn probe_without_privileges_names_what_is_missing() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = binary_for_nobody(dir.path());
    let bin = bin.to_str().expect("utf-8 path");
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        &veth.rx_ns,
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    c.args([bin, "probe", "--iface", &veth.rx_if, "--json"]);
    let out = c.output().expect("setpriv probe");
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("probe JSON ({e}): {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert!(!out.status.success(), "without privileges AF_XDP is not usable, and the exit code says so");
    assert_eq!(p["euid"], 65534);
    let missing: Vec<&str> =
        p["missing_capabilities"].as_array().expect("list").iter().filter_map(|v| v.as_str()).collect();
    assert!(missing.contains(&"CAP_NET_RAW") && missing.contains(&"CAP_BPF"), "{p}");
    assert_eq!(p["af_xdp"]["ok"], false, "{p}");
    assert!(p["af_xdp"]["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
}
