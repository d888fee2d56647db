//! Writes the seed corpus under `corpus/` (run from `fuzz/`):
//! `cargo run --bin make_seeds`. The seeds are committed; this is how they
//! were made.

use std::path::Path;

use xdpblast::wire::frame::example_template;
use xdpblast::wire::message::{Message, Nack, SessionInfo};
use xdpblast::wire::stream::StreamHeader;
use xdpblast_fuzz::{peer_cookie, record, Op};

const SESSION: u64 = 0x5eed_0000_0000_0001;

fn write(dir: &str, name: &str, bytes: &[u8]) {
    let d = Path::new("corpus").join(dir);
    std::fs::create_dir_all(&d).expect("creating the corpus folder");
    std::fs::write(d.join(name), bytes).expect("writing a seed");
}

fn main() {
    let content: Vec<u8> = (0..2500u32).map(|i| (i * 7 + 3) as u8).collect();
    let digest = *blake3::hash(&content).as_bytes();
    let info = SessionInfo { file_size: 2500, chunk_size: 1000, n_chunks: 3, digest: Some(digest) };
    // The cookie the harness's receiver gives the peer for this session.
    let k = peer_cookie(SESSION);
    let data = |i: usize| {
        let payload = &content[i * 1000..((i + 1) * 1000).min(content.len())];
        Message::Data { session: SESSION, chunk: i as u64, payload }.encode(k)
    };
    let hello_with = |resume_from: Option<u64>| Message::Hello {
        session: SESSION,
        info: SessionInfo { digest: None, ..info },
        source: [7; 16],
        via_tcp: false,
        keyed: false,
        encrypted: None,
        name: "seed.bin",
        data_ports: xdpblast::wire::message::DataPorts::NONE,
        attrs: None,
        tree: None,
        resume_from,
    };
    let hello_msg = hello_with(None);
    // The first Hello earns the cookie; the second, echoing it, opens.
    let hello_first = hello_msg.to_vec();
    let hello = hello_msg.encode(k);
    let meta_first = Message::Meta { session: SESSION, last: false, info }.encode(k);
    let meta_last = Message::Meta { session: SESSION, last: true, info }.encode(k);
    let end = Message::End { session: SESSION, info, retransmits: 1 }.encode(k);
    let bitmap = [0b0000_0010u8];
    let nack = Message::Nack {
        session: SESSION,
        nack: Nack {
            round: 1,
            part: 0,
            received: 2,
            high: 3,
            prefix: 1,
            base: 0,
            nbits: 3,
            bitmap: &bitmap,
            loss_bp: Some(3333),
        },
    }
    .encode(k);
    let done = Message::Done { session: SESSION, ok: true, digest }.encode(k);
    let abort = Message::Abort { session: SESSION, reason: "receiver interrupted" }.encode(k);
    let ack = Message::HelloAck {
        session: SESSION,
        delay_us: 120,
        opened: true,
        tcp_only: false,
        max_datagram: 0,
        resume: None,
    }
    .encode(k);
    let stream =
        StreamHeader { file_size: 2500, session: SESSION, cookie: k, source: [7; 16], index: 0, count: 1 }.emit();

    // Parser seeds: every kind, bare and inside an Ethernet frame.
    let tpl = example_template();
    for (name, msg) in [
        ("data", data(0)),
        ("data_short_last", data(2)),
        ("hello", hello.clone()),
        ("hello_ack", ack),
        ("meta", meta_last.clone()),
        ("nack", nack),
        ("end", end.clone()),
        ("done", done),
        ("abort", abort.clone()),
        ("stream_header", stream.to_vec()),
    ] {
        write("wire", name, &msg);
        let mut frame = vec![0u8; 2048];
        let n = tpl.build(&msg, &mut frame).expect("a seed frame fits");
        write("wire", &format!("frame_{name}"), &frame[..n]);
    }
    // A TCP stream's TLS record, sealed under another key than the
    // harness's: the opener must refuse whatever the fuzzer makes of it.
    {
        use xdpblast::proto::auth::{Keys, StreamDirection};
        use xdpblast::wire::message::Cipher;
        let keys = Keys::derive(&[0x17; 32]).record_keys(1, 2, 0, StreamDirection::ToReceiver, Cipher::Aes256Gcm);
        let mut sealed = Vec::new();
        xdpblast::proto::record::RecordSealer::new(&keys).seal(&content[..300], &mut sealed);
        write("wire", "tls_record", &sealed);
    }

    // Receiver scripts.
    let mut clean = Vec::new();
    record(&mut clean, Op::ControlFromPeer, &hello_first);
    record(&mut clean, Op::ControlFromPeer, &hello);
    record(&mut clean, Op::DataFromPeer, &meta_first);
    for i in 0..3 {
        record(&mut clean, Op::DataFromPeer, &data(i));
    }
    record(&mut clean, Op::DataFromPeer, &meta_last);
    record(&mut clean, Op::ControlFromPeer, &end);
    record(&mut clean, Op::Sleep, &[10]);
    record(&mut clean, Op::ControlFromPeer, &end);
    record(&mut clean, Op::Sleep, &[255]);
    record(&mut clean, Op::Sleep, &[255]);
    write("receiver", "clean_session", &clean);

    // The harness's receiver offers the first half back (an interrupted
    // transfer's); this sender takes it and sends the rest.
    let resumed = hello_with(Some(1250)).encode(k);
    let mut resuming = Vec::new();
    record(&mut resuming, Op::ControlFromPeer, &hello_first);
    record(&mut resuming, Op::ControlFromPeer, &hello);
    record(&mut resuming, Op::ControlFromPeer, &resumed);
    record(&mut resuming, Op::DataFromPeer, &meta_first);
    for i in 1..3 {
        record(&mut resuming, Op::DataFromPeer, &data(i));
    }
    record(&mut resuming, Op::DataFromPeer, &meta_last);
    record(&mut resuming, Op::ControlFromPeer, &end);
    record(&mut resuming, Op::Sleep, &[255]);
    write("receiver", "resumed_session", &resuming);

    // Chunk 1 lost, NACKed after the closing Meta, then repaired.
    let mut lossy = Vec::new();
    record(&mut lossy, Op::ControlFromPeer, &hello);
    record(&mut lossy, Op::DataFromPeer, &meta_first);
    record(&mut lossy, Op::DataFromPeer, &data(0));
    record(&mut lossy, Op::DataFromPeer, &data(2));
    record(&mut lossy, Op::DataFromPeer, &meta_last);
    record(&mut lossy, Op::Idle, &[]);
    record(&mut lossy, Op::Sleep, &[6]);
    record(&mut lossy, Op::DataFromPeer, &data(1));
    record(&mut lossy, Op::DataFromPeer, &meta_last);
    record(&mut lossy, Op::ControlFromPeer, &end);
    write("receiver", "repair", &lossy);

    // A stranger interleaves forged data, a forged abort and a second Hello.
    let mut forged = data(1);
    forged[30] ^= 0xff;
    let mut hostile = Vec::new();
    record(&mut hostile, Op::ControlFromPeer, &hello);
    record(&mut hostile, Op::DataFromStranger, &forged);
    record(&mut hostile, Op::ControlFromStranger, &abort);
    record(&mut hostile, Op::ControlFromStranger, &hello);
    record(&mut hostile, Op::DataFromPeer, &data(0));
    record(&mut hostile, Op::DataFromPeer, &data(1));
    record(&mut hostile, Op::DataFromPeer, &data(2));
    record(&mut hostile, Op::DataFromPeer, &meta_last);
    record(&mut hostile, Op::ControlFromPeer, &end);
    write("receiver", "hostile", &hostile);

    // The sender gives up: an abort mid-transfer.
    let mut aborted = Vec::new();
    record(&mut aborted, Op::ControlFromPeer, &hello);
    record(&mut aborted, Op::DataFromPeer, &data(0));
    record(&mut aborted, Op::ControlFromPeer, &abort);
    write("receiver", "peer_abort", &aborted);

    // The seeds must reach the states they are named for.
    for (name, script, ok) in [
        ("clean_session", &clean, true),
        ("repair", &lossy, true),
        ("hostile", &hostile, true),
        ("peer_abort", &aborted, false),
    ] {
        assert_eq!(xdpblast_fuzz::run_receiver(script), ok, "seed {name} does not end as intended");
    }
    println!("seeds written under corpus/");
}
