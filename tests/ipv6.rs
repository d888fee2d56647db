//! IPv6 end to end (issue 13 row 14) over a veth pair with no IPv4 address
//! at all: AF_XDP frames with IPv6 headers, our XDP program steering them,
//! the UDP-socket receiver, and every TCP mode.

mod common;

use common::*;

/// AF_XDP sender to the AF_XDP receiver, with 5 % loss injected by our XDP
/// program (so repairs travel over IPv6 too), and to the UDP receiver.
#[test]
fn afxdp_over_ipv6_to_both_datagram_receivers() {
    let veth = Veth::ipv6_only();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 6 << 20, 61);
    for (rx_mode, loss) in [("afxdp", "0.05"), ("udp", "0")] {
        let out = dir.path().join(format!("out-{rx_mode}.bin"));
        let rx = veth.start_receiver(&out, &["--mode", rx_mode, "--inject-loss", loss]);
        let sent = veth.send(&file, &["--mode", "afxdp"]);
        let (rx_ok, recv, log) = rx.finish();
        assert!(sent.status.success(), "--mode {rx_mode}: {}", String::from_utf8_lossy(&sent.stderr));
        assert!(rx_ok, "{recv}\n{log}");
        assert!(same_file(&file, &out), "--mode {rx_mode}: the output differs");
        let report = json(&sent);
        assert_eq!(report["verified"], true);
        // 1500 - 40 (IPv6) - 8 (UDP) - 32 (xdpblast): the IPv6 header's room.
        assert_eq!(report["chunk_size"], 1420, "{report}");
        if rx_mode == "afxdp" {
            assert!(recv["path_stats"]["xdp"]["redirected"].as_u64().unwrap_or(0) > 0, "steered by XDP: {recv}");
            assert!(report["stats"]["retransmits"].as_u64().unwrap_or(0) > 0, "losses were repaired: {report}");
        }
    }
}

/// Every TCP mode over IPv6, to the TCP receiver.
#[test]
fn every_tcp_mode_over_ipv6() {
    let veth = Veth::ipv6_only();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 3 << 20, 62);
    for mode in ["sendfile", "readwrite", "mmap", "splice"] {
        let out = dir.path().join(format!("out-{mode}.bin"));
        let rx = veth.start_receiver(&out, &["--mode", "tcp"]);
        let sent = veth.send(&file, &["--mode", mode]);
        let (rx_ok, recv, log) = rx.finish();
        assert!(sent.status.success(), "--mode {mode}: {}", String::from_utf8_lossy(&sent.stderr));
        assert!(rx_ok, "{recv}\n{log}");
        assert!(same_file(&file, &out), "--mode {mode}: the output differs");
    }
}

/// A sender whose interface has no address of the destination's version is
/// told so before anything is sent.
#[test]
fn an_ipv4_destination_on_an_ipv6_only_link_is_refused_with_the_reason() {
    let veth = Veth::ipv6_only();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 4096, 63);
    let out = veth
        .in_ns(
            &veth.tx_ns,
            &[
                "send",
                file.to_str().expect("utf-8"),
                "--iface",
                &veth.tx_if,
                "--dst",
                "10.77.0.2:9000",
                "--mode",
                "afxdp",
            ],
        )
        .output()
        .expect("send");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("interface {} has no IPv4 address", veth.tx_if)), "{err}");
}
