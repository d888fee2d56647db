//! The Wireshark dissector (`scripts/xdpblast.lua`, issue 13 row 24): a
//! capture of real transfers, decoded by tshark with it, shows every message
//! kind, the TCP stream header and the seal, and no malformed frame.
//!
//! AF_XDP bypasses capture, so the receiver takes the data on a UDP socket
//! (`--mode udp`), as the README tells users to capture. The sender is still
//! AF_XDP: its frames are the ones the dissector must read.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn tshark_available() {
    let ok = Command::new("tshark").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "this test needs tshark (scripts/install-deps.sh installs it: apt-get install tshark)"
    );
}

/// Decodes `cap` with the dissector; returns the lines of `-T fields`.
fn decode(cap: &Path, filter: &str, fields: &[&str]) -> Vec<String> {
    let lua = format!("lua_script:{}/scripts/xdpblast.lua", env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new("tshark");
    c.args(["-n", "-r", cap.to_str().expect("utf-8"), "-X", &lua, "-Y", filter, "-T", "fields"]);
    for f in fields {
        c.args(["-e", f]);
    }
    let out = c.output().expect("running tshark");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("Lua"), "tshark failed on {filter:?}: {err}");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn tshark_decodes_every_kind_with_no_malformed_frame() {
    tshark_available();
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 3 << 20, 11);
    let key = key_file(dir.path());
    let key = key.as_str();

    // Capture everything the receiving end sees.
    let cap = dir.path().join("transfer.pcapng");
    let cap_log = dir.path().join("tshark.log");
    let mut capture = veth
        .in_ns_cmd(
            &veth.rx_ns,
            "tshark",
            &["-n", "-i", &veth.rx_if, "-w", cap.to_str().expect("utf-8"), "-f", "udp or tcp"],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&cap_log).expect("log"))
        .spawn()
        .expect("starting tshark");
    wait_for_text(&cap_log, "Capturing on", 20);

    // 1. Keyed AF_XDP sender to a UDP receiver with loss: Hello, HelloAck,
    //    Meta, tagged Data, Nack, End, Done, sealed control messages.
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &["--mode", "udp", "--key-file", key, "--inject-loss", "0.05"]);
    let sent = veth.send(&file, &["--key-file", key]);
    let (rx_ok, _, _) = rx.finish();
    assert!(sent.status.success() && rx_ok, "keyed transfer failed: {}", String::from_utf8_lossy(&sent.stderr));
    assert!(same_file(&file, &out));
    // 2. A receiver that refuses the size: an Abort.
    let small = dir.path().join("small.bin");
    let rx = veth.start_receiver(&small, &["--mode", "udp", "--max-size", "1K"]);
    let refused = veth.send(&file, &[]);
    assert!(!refused.status.success());
    let _ = rx.wait_exit(20);
    // 3. A TCP sender over two streams: a stream header on each.
    let tcp_out = dir.path().join("tcp.bin");
    let rx = veth.start_receiver(&tcp_out, &["--mode", "tcp"]);
    let sent = veth.send(&file, &["--mode", "sendfile", "--streams", "2"]);
    let (rx_ok, _, _) = rx.finish();
    assert!(sent.status.success() && rx_ok);

    std::thread::sleep(Duration::from_millis(300));
    let st = Command::new("kill").args(["-INT", &capture.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let _ = capture.wait();

    let kinds: std::collections::BTreeSet<String> =
        decode(&cap, "xdpblast", &["xdpblast.kind"]).into_iter().filter(|k| !k.is_empty()).collect();
    let want: std::collections::BTreeSet<String> =
        [1, 2, 16, 17, 18, 19, 20, 21].iter().map(|k: &u32| k.to_string()).collect();
    assert_eq!(kinds, want, "every message kind decoded");
    let bad = decode(
        &cap,
        "_ws.malformed || xdpblast.bad_body || xdpblast.bad_length || _ws.expert.severity >= 0x00800000",
        &["frame.number"],
    );
    assert!(bad.is_empty(), "{} malformed or erroneous frames, first {:?}", bad.len(), &bad[..bad.len().min(10)]);
    // Port 9 (discard) is the empty datagram that makes the kernel resolve
    // the receiver's MAC before the first frame.
    let not_ours = decode(&cap, "udp && !xdpblast && udp.dstport != 9", &["frame.number"]);
    assert!(not_ours.is_empty(), "UDP frames the dissector did not take: {not_ours:?}");
    let hello_sizes = decode(&cap, "xdpblast.kind == 16", &["xdpblast.file_size"]);
    assert!(hello_sizes.iter().all(|s| s == &(3u64 << 20).to_string()), "Hello file sizes: {hello_sizes:?}");
    let names = decode(&cap, "xdpblast.kind == 16", &["xdpblast.name"]);
    assert!(names.iter().all(|n| n == "in.bin"), "Hello file names: {names:?}");
    let sealed = decode(&cap, "xdpblast.seal.tag", &["frame.number"]);
    assert!(!sealed.is_empty(), "the keyed transfer's seals are shown");
    let data = decode(&cap, "xdpblast.kind == 1", &["frame.number"]);
    let tagged = decode(&cap, "xdpblast.data.tag", &["frame.number"]);
    assert!(
        !data.is_empty() && tagged == data,
        "every keyed data frame shows its tag: {} of {}",
        tagged.len(),
        data.len()
    );
    let missing = decode(&cap, "xdpblast.nack.missing > 0", &["frame.number"]);
    assert!(!missing.is_empty(), "a NACK with missing chunks, under 5 % loss");
    let mut streams = decode(
        &cap,
        "xdpblast_stream",
        &["xdpblast_stream.file_size", "xdpblast_stream.index", "xdpblast_stream.count"],
    );
    streams.sort();
    let size = 3u64 << 20;
    assert_eq!(streams, [format!("{size}\t0\t2"), format!("{size}\t1\t2")], "a header on each of two streams");
}
