//! Per-packet hot pieces, measured with criterion (never in timed tests):
//! - building a data frame at preload (headers + IPv4/UDP checksums), and
//!   the checksum alone over a jumbo datagram;
//! - the receiver's per-datagram work: parse, checks, chunk bookkeeping;
//! - one NACK round over a large, lossy chunk set;
//! - a payload's keyed work: today's tag (AES-GCM over the header and the
//!   payload as associated data), against sealing the payload itself with
//!   AES-256-GCM or ChaCha20-Poly1305 (aws-lc-rs), and BLAKE3 over it: the
//!   evidence an encrypted data path (issue 27) starts from;
//! - the receiver's digest: a batch of payloads, each in its own frame,
//!   hashed where they are (gathering the subtrees that span frames, or
//!   hashing each frame's own chunks and stitching the rest), against
//!   reading the same bytes back and hashing them in one stream.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use xdpblast::proto::chunkset::ChunkSet;
use xdpblast::proto::{Receiver, ReceiverConfig};
use xdpblast::wire::frame::{example_template, parse_udp_mut};
use xdpblast::wire::message::{emit_header, Kind, Message, SessionInfo, HEADER_LEN};

fn frame_build(c: &mut Criterion) {
    let tpl = example_template();
    let mut g = c.benchmark_group("preload_frame");
    for payload in [64usize, 1448, 8940] {
        let mut frame = vec![0u8; 9014];
        g.throughput(Throughput::Bytes(payload as u64));
        g.bench_with_input(BenchmarkId::from_parameter(payload), &payload, |b, &p| {
            b.iter(|| {
                emit_header(&mut frame[42..], Kind::Data, p as u16, 7, 0xc00c1e, 123);
                black_box(tpl.build_in_place(&mut frame, HEADER_LEN + p).expect("fits"))
            })
        });
    }
    g.finish();
}

fn payload_aead(c: &mut Criterion) {
    use xdpblast::wire::message::Cipher;
    let keys = xdpblast::proto::auth::Keys::derive(&[7; 32]);
    let tagger = keys.data_key(1, 2, None);
    let aes = keys.data_key(1, 2, Some(Cipher::Aes256Gcm));
    let chacha = keys.data_key(1, 2, Some(Cipher::ChaCha20Poly1305));
    let mut g = c.benchmark_group("payload_aead");
    for payload in [1440usize, 8940] {
        let mut msg: Vec<u8> = (0..HEADER_LEN + payload).map(|i| (i * 31) as u8).collect();
        g.throughput(Throughput::Bytes(payload as u64));
        g.bench_with_input(BenchmarkId::new("tag_only", payload), &payload, |b, _| {
            b.iter(|| black_box(tagger.tag(9, black_box(&msg))))
        });
        for (name, key) in [("seal_aes256gcm", &aes), ("seal_chacha20poly1305", &chacha)] {
            let mut i = 0u64;
            g.bench_with_input(BenchmarkId::new(name, payload), &payload, |b, _| {
                b.iter(|| {
                    i += 1;
                    let (header, body) = msg.split_at_mut(HEADER_LEN);
                    black_box(key.seal(i, header, body))
                })
            });
        }
        g.bench_with_input(BenchmarkId::new("blake3", payload), &payload, |b, _| {
            b.iter(|| black_box(blake3::hash(black_box(&msg[HEADER_LEN..]))))
        });
    }
    g.finish();
}

fn checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..8972u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("udp_ipv4_8972", |b| {
        b.iter(|| black_box(xdpblast::wire::checksum::udp_ipv4([10, 0, 0, 1], [10, 0, 0, 2], black_box(&data))))
    });
    g.finish();
}

fn receive_path(c: &mut Criterion) {
    let tpl = example_template();
    let chunk = 1448u32;
    let n = 1u64 << 16;
    let info = SessionInfo { file_size: n * u64::from(chunk), chunk_size: chunk, n_chunks: n, digest: Some([0; 32]) };
    let payload = vec![0xabu8; chunk as usize];
    // Prebuilt frames, as they would sit in the receive UMEM.
    let from = tpl.src;
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig::default(), now);
    let cookie = rx.cookie_for(from.ip(), 1);
    rx.on_control(
        now,
        from,
        &Message::Hello {
            session: 1,
            info,
            source: [0; 16],
            via_tcp: false,
            keyed: false,
            encrypted: None,
            name: "",
            data_ports: xdpblast::wire::message::DataPorts::NONE,
            attrs: None,
            tree: None,
            resume_from: None,
        }
        .encode(cookie),
    );
    let mut frames: Vec<Vec<u8>> = (0..1024u64)
        .map(|i| {
            let msg = Message::Data { session: 1, chunk: i, payload: &payload }.encode(cookie);
            let mut f = vec![0u8; 2048];
            let len = tpl.build(&msg, &mut f).expect("fits");
            f.truncate(len);
            f
        })
        .collect();
    let mut g = c.benchmark_group("receive_datagram");
    g.throughput(Throughput::Elements(1));
    // Checksums verified, header checked, chunk marked.
    g.bench_function("parse_check_mark", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let n = frames.len();
            let f = &mut frames[i % n];
            i += 1;
            let (src, _, payload) = parse_udp_mut(f).expect("valid frame");
            // After the first lap chunks are duplicates: the same checks run.
            black_box(rx.on_data(now, src, payload).map(|(off, p)| off + p.len() as u64))
        })
    });
    g.finish();
}

fn nack_round(c: &mut Criterion) {
    // 1 GiB of 1448-byte chunks, 5% missing, one bitmap window scan.
    let n = 741_538u64;
    let mut set = ChunkSet::new(n);
    let mut x = 12345u64;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 20 != 0 {
            set.insert(i);
        }
    }
    let mut out = Vec::new();
    c.bench_function("nack_window_8192_bits", |b| {
        b.iter(|| {
            let base = set.next_missing(0, n).expect("some missing");
            black_box(set.missing_bitmap(base, 8192, &mut out))
        })
    });
}

fn transmit_schedule(c: &mut Criterion) {
    // The protocol half of the TX fill loop: choosing the next 256 frame ids
    // (the other half is storing 16-byte descriptors into the ring).
    use xdpblast::proto::{FrameId, Sender, SenderConfig};
    let n = 1u64 << 40; // effectively endless
    let info = SessionInfo { file_size: n * 1448, chunk_size: 1448, n_chunks: n, digest: Some([0; 32]) };
    let now = Instant::now();
    let cfg = SenderConfig { window: u64::MAX / 4, ..Default::default() };
    let mut tx = Sender::new(cfg, 1, info, now);
    tx.poll_control(now);
    tx.start(now);
    for opened in [false, true] {
        tx.on_control(
            now,
            &Message::HelloAck { session: 1, delay_us: 0, opened, tcp_only: false, max_datagram: 0, resume: None }
                .encode(7),
        )
        .expect("ack");
    }
    let mut ids = vec![FrameId::Meta { last: false }; 256];
    let mut g = c.benchmark_group("transmit_schedule");
    g.throughput(Throughput::Elements(256));
    g.bench_function("next_256_frames", |b| b.iter(|| black_box(tx.next_frames(now, &mut ids))));
    g.finish();
}

/// A batch of 64 payloads, each in a 4 KiB or 12 KiB frame of its own (as
/// in a UMEM), hashed into the stream's digest; the stream is 64 MiB, so
/// the tree's merges and block bookkeeping are in the figure.
fn digest_batch(c: &mut Criterion) {
    use xdpblast::digest::{Digest, Params, Scratch};
    let mut g = c.benchmark_group("digest_batch");
    // Batches as the receive threads see them: 64 is the most one takes
    // from its ring; the mean measured on a veth at 1500 was 37.
    for (payload, per_batch) in [(1440usize, 64usize), (1440, 37), (1440, 8), (8940, 64), (8940, 8)] {
        let frame = payload.next_power_of_two().max(4096);
        let frames: Vec<u8> = (0..per_batch * frame).map(|i| (i * 31) as u8).collect();
        let batch = (per_batch * payload) as u64;
        g.throughput(Throughput::Bytes(batch));
        let len = (64 << 20) / batch * batch;
        let id = format!("{payload}x{per_batch}");
        // Each batch hashed as it comes (gathering where a subtree spans
        // payloads, or only in place), or held back and hashed a window at
        // a time, as the receive threads do.
        let strategies =
            [("gather", Scratch::new()), ("held", Scratch::holding()), ("in_place", Scratch::in_place_only())];
        for (name, mut s) in strategies.into_iter().filter(|(n, _)| per_batch == 64 || *n != "in_place") {
            let mut d = Digest::new(Params { key: None, len });
            let mut at = 0u64;
            g.bench_with_input(BenchmarkId::new(name, &id), &payload, |b, &p| {
                b.iter(|| {
                    if at >= len {
                        (d, at) = (Digest::new(Params { key: None, len }), 0);
                    }
                    let segs: Vec<(u64, &[u8])> =
                        (0..per_batch).map(|i| (at + (i * p) as u64, &frames[i * frame..i * frame + p])).collect();
                    d.absorb(&segs, &mut s);
                    at += batch;
                })
            });
        }
        // The read-back it replaces: a copy out of the page cache (here a
        // memcpy of the same bytes) and one streaming hasher.
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; per_batch * payload];
        g.bench_with_input(BenchmarkId::new("read_back", &id), &payload, |b, &p| {
            b.iter(|| {
                for i in 0..per_batch {
                    buf[i * p..(i + 1) * p].copy_from_slice(&frames[i * frame..i * frame + p]);
                }
                hasher.update(black_box(&buf));
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    frame_build,
    checksum,
    payload_aead,
    digest_batch,
    receive_path,
    nack_round,
    transmit_schedule
);
criterion_main!(benches);
