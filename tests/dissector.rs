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
    let capture = start_capture(&veth, &cap, &dir.path().join("tshark.log"));

    // 1. Keyed AF_XDP sender to a UDP receiver with loss: Hello, HelloAck,
    //    Meta, encrypted Data with its tag, Nack, End, Done, sealed control
    //    messages.
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

    stop_capture(capture);

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

/// Starts tshark on the receiver's interface, writing `cap`; returns it
/// once it captures.
fn start_capture(veth: &Veth, cap: &Path, log: &Path) -> std::process::Child {
    let child = veth
        .in_ns_cmd(
            &veth.rx_ns,
            "tshark",
            &["-n", "-i", &veth.rx_if, "-w", cap.to_str().expect("utf-8"), "-f", "udp or tcp"],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("starting tshark");
    wait_for_text(log, "Capturing on", 20);
    child
}

fn stop_capture(mut capture: std::process::Child) {
    std::thread::sleep(Duration::from_millis(300));
    let st = Command::new("kill").args(["-INT", &capture.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let _ = capture.wait();
}

/// How many places in `capture` hold a 64-byte run of `file`. Every such
/// run contains a whole 16-byte block of the file at an offset that is a
/// multiple of 16: those blocks are indexed, each 16-byte window of the
/// capture looked up, and a hit confirmed by comparing the 64 bytes around
/// it at each alignment.
fn runs_of_file(capture: &[u8], file: &[u8]) -> usize {
    let mut blocks: std::collections::HashMap<&[u8], Vec<usize>> = std::collections::HashMap::new();
    for (i, b) in file.chunks_exact(16).enumerate() {
        blocks.entry(b).or_default().push(i * 16);
    }
    let mut found = 0;
    let mut at = 0;
    while at + 16 <= capture.len() {
        let hit = blocks.get(&capture[at..at + 16]).is_some_and(|offsets| {
            offsets.iter().any(|&off| {
                // The block sits 0 to 48 bytes into a 64-byte run.
                (0..=48).any(|k| {
                    off >= k
                        && at >= k
                        && off - k + 64 <= file.len()
                        && at - k + 64 <= capture.len()
                        && file[off - k..off - k + 64] == capture[at - k..at - k + 64]
                })
            })
        });
        if hit {
            found += 1;
            at += 64;
        } else {
            at += 1;
        }
    }
    found
}

/// Encryption (issue 27): a capture of encrypted transfers (AF_XDP with
/// each AEAD, under loss so repairs are on the wire too, and sendfile over
/// TLS records) holds no 64-byte run of the file, and the dissector shows
/// their data as encrypted. The same capture of a transfer in clear finds
/// the file's runs: the search can fail.
#[test]
fn a_capture_of_encrypted_transfers_holds_no_64_byte_run_of_the_file() {
    tshark_available();
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 2 << 20, 12);
    let bytes = std::fs::read(&file).expect("input");
    let key = key_file(dir.path());
    let key = key.as_str();
    let log = dir.path().join("tshark.log");

    let cap = dir.path().join("encrypted.pcapng");
    let capture = start_capture(&veth, &cap, &log);
    let cases: [(&str, &[&str], &[&str]); 3] = [
        ("AF_XDP, AES-256-GCM", &["--mode", "udp", "--inject-loss", "0.05"], &[]),
        ("AF_XDP, ChaCha20-Poly1305", &["--mode", "udp"], &["--cipher", "chacha20-poly1305"]),
        ("sendfile", &["--mode", "tcp"], &["--mode", "sendfile"]),
    ];
    for (what, rx_args, tx_args) in cases {
        let out = dir.path().join("out.bin");
        let rx = veth.start_receiver(&out, &[rx_args, &["--key-file", key]].concat());
        let sent = veth.send(&file, &[tx_args, &["--key-file", key]].concat());
        let (rx_ok, report, _) = rx.finish();
        assert!(sent.status.success() && rx_ok, "{what}: {}", String::from_utf8_lossy(&sent.stderr));
        assert!(same_file(&file, &out), "{what}");
        let s: serde_json::Value = serde_json::from_slice(&sent.stdout).expect("JSON");
        let cipher = s["encrypted"].as_str().or(s["encryption"]["cipher"].as_str());
        assert!(cipher.is_some(), "{what}: the sender says it encrypted: {s}");
        let said = report["encrypted"].as_str().or(report["encryption"]["cipher"].as_str());
        assert_eq!(said, cipher, "{what}: the receiver says the same: {report}");
        std::fs::remove_file(&out).expect("remove");
    }
    stop_capture(capture);
    let captured = std::fs::read(&cap).expect("capture");
    assert!(captured.len() > 3 * bytes.len(), "the capture holds the transfers: {} bytes", captured.len());
    assert_eq!(runs_of_file(&captured, &bytes), 0, "a 64-byte run of the file crossed the wire in clear");
    let encrypted = decode(&cap, "xdpblast.data.encrypted", &["frame.number"]);
    let data = decode(&cap, "xdpblast.kind == 1", &["frame.number"]);
    assert!(!data.is_empty() && encrypted == data, "{} of {} data frames shown encrypted", encrypted.len(), data.len());
    assert!(decode(&cap, "xdpblast.payload", &["frame.number"]).is_empty(), "no payload shown as clear");

    let clear_cap = dir.path().join("clear.pcapng");
    let capture = start_capture(&veth, &clear_cap, &log);
    let out = dir.path().join("clear.bin");
    let rx = veth.start_receiver(&out, &["--mode", "udp", "--key-file", key]);
    let sent = veth.send(&file, &["--key-file", key, "--no-encrypt"]);
    let (rx_ok, _, _) = rx.finish();
    assert!(sent.status.success() && rx_ok && same_file(&file, &out));
    stop_capture(capture);
    let found = runs_of_file(&std::fs::read(&clear_cap).expect("capture"), &bytes);
    assert!(found * 64 > bytes.len() / 2, "authenticated only, the file is on the wire: {found} runs found");
}
