//! Hostile traffic during a transfer: a third party, in the sender's
//! namespace but not the sender, floods the receiver's data and control ports
//! with garbage and forgeries. The file must still arrive byte-identical, and
//! the receiver's JSON must count what it dropped, by reason.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use xdpblast::wire::message::{Message, SessionInfo};

const MIB: usize = 1 << 20;

/// What the injector learned from the receiver's "session opened" line.
struct Session {
    id: u64,
    chunks: u64,
    chunk_size: usize,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split_whitespace().next().map(|v| v.trim_matches('"'))
}

fn parse_session(log: &str) -> Session {
    let line = log.lines().find(|l| l.contains("session opened")).expect("a session-opened line");
    Session {
        id: u64::from_str_radix(field(line, "session").expect("session id"), 16).expect("hex session id"),
        chunks: field(line, "chunks").and_then(|v| v.parse().ok()).expect("chunks"),
        chunk_size: field(line, "chunk_size").and_then(|v| v.parse().ok()).expect("chunk_size"),
    }
}

/// One round of every kind of bad datagram, as (data port?, bytes).
fn hostile_round(s: &Session, seed: &mut u64) -> Vec<(bool, Vec<u8>)> {
    let mut rnd = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let junk: Vec<u8> = (0..(rnd() % 1400 + 1)).map(|_| rnd() as u8).collect();
    let chunk = (rnd() % s.chunks.min(1 << 20)).min(s.chunks - 2);
    let forged = vec![0xa5u8; s.chunk_size];
    let data = |session: u64, chunk: u64, payload: &[u8]| Message::Data { session, chunk, payload }.to_vec();
    let good = data(s.id, chunk, &forged);
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    let mut bad_version = good.clone();
    bad_version[4] = 0x7f;
    // Claims a body longer than the datagram carries.
    let mut too_long = good.clone();
    too_long.truncate(good.len() - 100);
    let info = SessionInfo { file_size: 1000 << 20, chunk_size: 1000, n_chunks: 1 << 20, digest: None };
    vec![
        (true, junk.clone()),
        (true, good[..10].to_vec()),
        (true, bad_magic),
        (true, bad_version),
        (true, too_long),
        (true, data(s.id ^ 0x1234, chunk, &forged)),
        (true, data(s.id, s.chunks + 7, &forged)),
        (true, data(s.id, chunk, &forged[..forged.len() / 2])),
        // A duplicate of a real chunk with other content, from a stranger.
        (true, good),
        (false, junk),
        (false, Message::Abort { session: s.id, reason: "forged abort" }.to_vec()),
        (false, Message::End { session: s.id, info, retransmits: 0 }.to_vec()),
        (false, Message::plain_hello(99, info).to_vec()),
    ]
}

#[test]
fn hostile_traffic_is_dropped_by_reason_and_the_file_arrives_intact() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", 128 * MIB, 41);
    let out = dir.path().join("out.bin");
    let mut rx = veth.start_receiver(&out, &["--log", "info"]);
    // A veth hands XDP the datagrams of a local socket with their UDP
    // checksum only begun (CHECKSUM_PARTIAL), which the AF_XDP receiver
    // drops as damaged; a wire never carries such frames. Checksumming in
    // software makes the injector's datagrams look like a wire's, so each is
    // counted for what it is.
    let st = std::process::Command::new("ip")
        .args(["netns", "exec", &veth.tx_ns, "ethtool", "-K", &veth.tx_if, "tx", "off"])
        .output()
        .expect("ethtool");
    assert!(st.status.success(), "ethtool -K tx off: {}", String::from_utf8_lossy(&st.stderr));

    // Before any session: garbage and data with no session behind it.
    let stop = Arc::new(AtomicBool::new(false));
    let pre = in_netns(&veth.tx_ns, || {
        let sock = UdpSocket::bind((TX_IP, 0)).expect("bind");
        let fake = Session { id: 1, chunks: 100, chunk_size: 1448 };
        let mut seed = 7u64;
        let mut sent = 0u64;
        for _ in 0..20 {
            // Its Hellos open nothing: the injector never echoes the cookie
            // the receiver answers with.
            for (data, bytes) in hostile_round(&fake, &mut seed) {
                let port = if data { 9000 } else { 9001 };
                sent += u64::from(sock.send_to(&bytes, (RX_IP, port)).is_ok());
            }
        }
        sent
    })
    .join()
    .expect("injector");
    assert!(pre > 0);

    let tx = veth.start_sender(&file, &dir.path().join("send.log"), &["--rate", "1G"]);
    let session = parse_session(&rx.wait_log("session opened", 20));
    let stop2 = Arc::clone(&stop);
    // During the session: rounds every millisecond, bounded in count and time.
    let injector = in_netns(&veth.tx_ns, move || {
        let sock = UdpSocket::bind((TX_IP, 0)).expect("bind");
        let mut seed = 11u64;
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..20_000 {
            if stop2.load(Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            for (data, bytes) in hostile_round(&session, &mut seed) {
                let port = if data { 9000 } else { 9001 };
                sent += u64::from(sock.send_to(&bytes, (RX_IP, port)).is_ok());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    let (tx_ok, tx_out, tx_log, _) = tx.wait_exit(60);
    stop.store(true, Ordering::Relaxed);
    let injected = injector.join().expect("injector");
    let (rx_ok, report, rx_log) = rx.finish();
    assert!(tx_ok, "sender failed under hostile traffic: {tx_log}");
    assert!(rx_ok, "receiver failed under hostile traffic: {report}\n{rx_log}");
    assert!(same_file(&file, &out), "the file must arrive byte-identical");
    let sent: serde_json::Value = serde_json::from_str(&tx_out).expect("sender JSON");
    assert_eq!(sent["digest"], report["digest"]);

    let dropped = &report["dropped"];
    println!("injected {pre} before and {injected} during the session; receiver dropped: {dropped}");
    for reason in [
        "truncated",
        "bad_magic",
        "bad_version",
        "bad_length",
        "no_session",
        "wrong_session",
        "out_of_range",
        "bad_chunk_length",
        // Blind forgeries of the real session's data, without its cookie.
        "bad_cookie",
        "busy",
    ] {
        assert!(dropped[reason].as_u64().unwrap_or(0) > 0, "no {reason} drops counted: {dropped}");
    }
}

#[test]
fn allow_from_refuses_a_sender_at_another_address() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "in.bin", MIB, 42);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &["--allow-from", "10.77.0.99", "--timeout", "2"]);
    let sent = veth.send(&file, &["--timeout", "1"]);
    assert!(!sent.status.success());
    assert!(String::from_utf8_lossy(&sent.stderr).contains("no answer from the receiver"));
    let (ok, report, log) = rx.finish();
    assert!(!ok);
    assert!(report["dropped"]["refused"].as_u64().unwrap_or(0) > 0, "{report}");
    // Issue 13 row 17: the refusal used to be counted but never logged.
    assert_eq!(log.matches("refused a Hello from 10.77.0.1").count(), 1, "logged once per address: {log}");
    assert!(log.contains("--allow-from does not name it"), "{log}");
    assert!(!out.exists() && !dir.path().join("out.bin.partial").exists(), "no output for a refused sender");
}
