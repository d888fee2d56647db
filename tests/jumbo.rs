//! Jumbo frames: packets above one UMEM frame, sent as descriptor chains and
//! received by sockets bound with XDP_USE_SG behind our frags-aware XDP
//! program, over veth pairs at MTU 9000 and at veth's largest, 65535.

mod common;

use common::*;

const MIB: usize = 1 << 20;

/// Sends a 64 MiB file to a receiver started with `recv_args`; both verify
/// and the output is the input. Returns both reports.
fn transfer(veth: &Veth, recv_args: &[&str], seed: u64) -> (serde_json::Value, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 64 * MIB, seed);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, recv_args);
    let sent = veth.send(&file, &[]);
    let (send, recv) = finished_identical(rx, &sent, &file, &out);
    assert_eq!(send["verified"], true);
    assert_eq!(recv["verified"], true);
    (send, recv)
}

/// The AF_XDP receiver took every packet as a chain and dropped none.
fn assert_chains_whole(recv: &serde_json::Value) {
    let xsk = &recv["path_stats"]["xsk"];
    assert_eq!(xsk["multi_buffer"], true, "{recv}");
    assert_eq!(xsk["rx_bad_chains"], 0, "{recv}");
    assert_eq!(xsk["rx_dropped"], 0, "a packet the socket could not take is dropped silently: {recv}");
}

#[test]
fn afxdp_to_afxdp_at_mtu_9000() {
    let veth = Veth::with_mtu(9000);
    let (send, recv) = transfer(&veth, &[], 101);
    assert_eq!(send["packet_size"], 9000, "--packet-size defaults to the MTU");
    assert_eq!(send["retransmits"], 0, "a clean veth loses nothing");
    assert_chains_whole(&recv);
}

#[test]
fn afxdp_to_afxdp_at_mtu_9000_repairs_five_percent_loss() {
    let veth = Veth::with_mtu(9000);
    let (send, recv) = transfer(&veth, &["--inject-loss", "0.05"], 102);
    assert_eq!(send["packet_size"], 9000);
    let dropped = recv["path_stats"]["xdp"]["loss_dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "the loss knob dropped nothing: {recv}");
    // Every dropped data packet went out again. The knob drops Metas too,
    // and a lost Meta is not repaired: the Meta goes out again anyway (a
    // run that lost one of its 5 Metas had 369 retransmits for 370 drops).
    let retransmits = send["retransmits"].as_u64().unwrap_or(0);
    let metas = send["stats"]["meta_frames"].as_u64().unwrap_or(0);
    assert!(retransmits > 0 && retransmits + metas >= dropped, "{dropped} dropped\nsend: {send}\nrecv: {recv}");
    assert_chains_whole(&recv);
}

/// With a key, a chain is joined before its tag is checked and its payload
/// opened (an AEAD needs it in one piece); without one (above), a chain is
/// written and hashed from its frames where they lie.
#[test]
fn encrypted_at_mtu_9000_with_loss_chains_are_joined_and_opened() {
    let veth = Veth::with_mtu(9000);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let file = random_file(dir.path(), "in.bin", 32 * MIB + 4321, 104);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &["--key-file", &key, "--inject-loss", "0.02"]);
    let sent = veth.send(&file, &["--key-file", &key]);
    let (send, recv) = finished_identical(rx, &sent, &file, &out);
    assert!(send["encrypted"].is_string() && send["encrypted"] == recv["encrypted"], "{send}\n{recv}");
    assert_eq!(send["packet_size"], 9000);
    assert_eq!(recv["dropped"]["bad_seal"].as_u64().unwrap_or(0), 0, "a joined chain opens: {recv}");
    assert_chains_whole(&recv);
}

#[test]
fn afxdp_to_the_udp_socket_receiver_at_mtu_9000() {
    let veth = Veth::with_mtu(9000);
    let (send, recv) = transfer(&veth, &["--mode", "udp"], 103);
    assert_eq!(send["packet_size"], 9000);
    assert_eq!(recv["mode"], "udp");
}

/// veth's largest MTU: 17-descriptor chains of 4096-byte frames, the most
/// the kernel's copy path takes. One byte more is refused by the kernel.
#[test]
fn afxdp_to_afxdp_at_the_largest_veth_mtu() {
    let veth = Veth::with_mtu(65535);
    let (send, recv) = transfer(&veth, &[], 104);
    assert_eq!(send["packet_size"], 65535);
    assert_chains_whole(&recv);
    let too_big = std::process::Command::new("ip")
        .args(["-n", &veth.tx_ns, "link", "set", "dev", &veth.tx_if, "mtu", "65536"])
        .output()
        .expect("ip link set mtu");
    assert!(!too_big.status.success(), "veth took an MTU above 65535");
}

/// A sender at MTU 9000 and a receiver at 1500: the receiver names its
/// largest datagram, and the sender sends 1500-byte packets and says so.
/// Nothing is lost silently and nothing hangs.
#[test]
fn a_sender_at_9000_adapts_to_a_receiver_at_1500() {
    let veth = Veth::with_mtu(9000);
    veth.set_mtu(&veth.rx_ns, &veth.rx_if, 1500);
    let (send, recv) = transfer(&veth, &[], 105);
    assert_eq!(send["packet_size"], 1500, "{send}");
    assert_eq!(send["retransmits"], 0, "{send}");
    assert_eq!(recv["path_stats"]["xsk"]["multi_buffer"], false, "1500 fits one frame: {recv}");
}

/// The UDP-socket receiver without `--iface` learns its MTU from the
/// interface that holds its listen address, so a sender at 9000 sends it
/// 1500-byte packets instead of losing every one.
#[test]
fn the_udp_receiver_names_its_mtu_without_iface() {
    let veth = Veth::with_mtu(9000);
    veth.set_mtu(&veth.rx_ns, &veth.rx_if, 1500);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 8 * MIB, 106);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver_without_iface(&out, &["--mode", "udp"]);
    let sent = veth.send(&file, &[]);
    let (send, _) = finished_identical(rx, &sent, &file, &out);
    assert_eq!(send["packet_size"], 1500);
}
