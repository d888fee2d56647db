//! `xdpblast probe` on a veth end, as root and as an unprivileged user.

mod common;

use common::*;

#[test]
fn probe_reports_copy_mode_native_xdp_and_link_facts() {
    let veth = Veth::new();
    let out =
        veth.in_ns(&veth.rx_ns, &["probe", "--iface", &veth.rx_if, "--attach", "--json"]).output().expect("probe");
    assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(p["attached"], true, "{p}");
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
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(p["largest_packet"], serde_json::Value::Null, "above one frame is unknown without a bind: {p}");
    let out =
        veth.in_ns(&veth.rx_ns, &["probe", "--iface", &veth.rx_if, "--attach", "--json"]).output().expect("probe");
    assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(p["multi_buffer"]["ok"], true, "{p}");
    assert_eq!(p["largest_packet"], 9000, "{p}");
    assert_eq!(p["iface"]["mtu"], 9000);
}

/// Trust round 2, row 17. Before: every probe attached a pass-all XDP
/// program and bound sockets, which some drivers answer with a link reset.
/// Now a plain probe reads and changes nothing; `--attach` is asked for. A
/// watcher in the namespace polls the interface's XDP attachment over
/// netlink all through each probe: it must see ours under `--attach` (so it
/// can see one at all), and nothing without.
#[test]
fn a_plain_probe_attaches_nothing_and_says_so() {
    let veth = Veth::new();
    let watch = |args: &'static [&'static str]| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop2, ifname) = (stop.clone(), veth.rx_if.clone());
        let watcher = in_netns(&veth.rx_ns, move || {
            let mut seen = 0u32;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                if xdpblast::net::iface::Interface::lookup(&ifname).is_ok_and(|i| i.xdp_attached.is_some()) {
                    seen += 1;
                }
            }
            seen
        });
        let mut argv = vec!["probe", "--iface", veth.rx_if.as_str()];
        argv.extend_from_slice(args);
        let out = veth.in_ns(&veth.rx_ns, &argv).output().expect("probe");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, watcher.join().expect("watcher"))
    };
    let (out, seen) = watch(&["--json"]);
    assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(seen, 0, "a plain probe attached an XDP program: {p}");
    assert_eq!(p["attached"], false, "{p}");
    assert_eq!(p["af_xdp"]["ok"], true, "sockets and a UMEM register without a bind: {p}");
    assert!(p["xdp_native"]["detail"].as_str().is_some_and(|d| d.starts_with("not tried")), "{p}");
    assert!(p["driver_xdp_features"].as_array().is_some_and(|f| !f.is_empty()), "read without attaching: {p}");
    let (out, _) = watch(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("changed           nothing (--attach"), "{text}");
    let (out, seen) = watch(&["--attach", "--json"]);
    assert!(out.status.success(), "probe --attach failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(seen > 0, "the watcher never saw the probe's own attachment: it would not see one either way");
    assert!(veth.rx_xdp().is_none(), "--attach leaves nothing attached");
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
    // Trust round 2, rough edge: the text promised that CAP_IPC_LOCK lifts
    // the locked-memory limit to a user who does not have it.
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &veth.rx_ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
    c.args(["--inh-caps=-all", bin, "probe", "--iface", &veth.rx_if]);
    let text = String::from_utf8_lossy(&c.output().expect("setpriv probe").stdout).to_string();
    assert!(text.contains("RLIMIT_MEMLOCK") && text.contains("ulimit -l"), "{text}");
    assert!(!text.contains("CAP_IPC_LOCK lets the UMEM register anyway"), "{text}");
}
