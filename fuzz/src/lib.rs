//! Harnesses shared by the fuzz targets and the seed generator.
//!
//! `receiver` input is a script of records, each `[op][len u16 LE][bytes]`,
//! that a small driver plays against the sans-IO receiver, with a model of
//! the output file in memory. Seeds are real sessions written in this format
//! (`make_seeds`), so the fuzzer starts from deep states and mutates them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use xdpblast::proto::auth::{Direction, Keys};
use xdpblast::proto::receiver::Event;
use xdpblast::proto::{Receiver, ReceiverConfig};
use xdpblast::wire::frame::parse_udp;
use xdpblast::wire::message::{Message, HEADER_LEN};
use xdpblast::wire::stream::StreamHeader;

/// The peer that opens the session in every seed, and a stranger.
pub const PEER: &str = "10.77.0.1:40000";
pub const STRANGER: &str = "10.77.0.9:40000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    DataFromPeer = 0,
    ControlFromPeer = 1,
    DataFromStranger = 2,
    ControlFromStranger = 3,
    /// Advance the clock by `bytes[0]` milliseconds (0..255), then run timers.
    Sleep = 4,
    /// The driver found the data path empty.
    Idle = 5,
}

impl Op {
    fn from_byte(b: u8) -> Op {
        match b % 6 {
            0 => Op::DataFromPeer,
            1 => Op::ControlFromPeer,
            2 => Op::DataFromStranger,
            3 => Op::ControlFromStranger,
            4 => Op::Sleep,
            _ => Op::Idle,
        }
    }
}

/// Appends one record to a script.
pub fn record(script: &mut Vec<u8>, op: Op, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("a record is at most 64 KiB");
    script.push(op as u8);
    script.extend_from_slice(&len.to_le_bytes());
    script.extend_from_slice(bytes);
}

/// The receiver every script runs against.
fn receiver(now: Instant) -> Receiver {
    // The default (fixed) cookie key, so seeds can carry the cookie.
    let cfg = ReceiverConfig { idle_timeout: Duration::from_secs(2), max_chunks: 16, ..Default::default() };
    Receiver::new(cfg, now)
}

/// The cookie the harness's receiver gives [`PEER`] for `session`.
pub fn peer_cookie(session: u64) -> u64 {
    let peer: SocketAddr = PEER.parse().expect("constant address");
    receiver(Instant::now()).cookie_for(peer.ip(), session)
}

/// Largest output the model keeps in memory; bigger sessions are refused by
/// the receiver's `max_chunks`.
const MAX_MODEL_BYTES: u64 = 16 * 65535;

/// Plays a script against the receiver and checks what must always hold:
/// no panic; every write lies inside the file; every datagram the receiver
/// sends parses; a success is reported only when the model file matches the
/// digest the session announced. Returns whether the transfer succeeded.
pub fn run_receiver(script: &[u8]) -> bool {
    let peer: SocketAddr = PEER.parse().expect("constant address");
    let stranger: SocketAddr = STRANGER.parse().expect("constant address");
    let t0 = Instant::now();
    let mut now = t0;
    let mut rx = receiver(now);
    let mut file: Vec<u8> = Vec::new();
    // A session that takes its file over TCP gets no datagram data, so the
    // model keeps no bytes for it (its size is bounded by --max-size only).
    let mut via_tcp_session = false;
    let mut rest = script;
    // Data is handed over writable (an encrypted payload opens in place):
    // a copy, in a buffer kept across records.
    let mut datagram = Vec::with_capacity(1 << 16);
    let mut chained = false;
    while rest.len() >= 3 {
        let op = Op::from_byte(rest[0]);
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match op {
            Op::DataFromPeer | Op::DataFromStranger => {
                let from = if op == Op::DataFromPeer { peer } else { stranger };
                datagram.clear();
                datagram.extend_from_slice(bytes);
                // Every other datagram as a chain of frames, cut after its
                // header and a few payload bytes, as a jumbo frame comes.
                chained = !chained;
                let taken = if chained && datagram.len() > HEADER_LEN {
                    let cut = (HEADER_LEN + datagram.len() % 7).min(datagram.len());
                    let (head, tail) = datagram.split_at(cut);
                    rx.on_data_chain(now, from, head, tail.len()).map(|(offset, len)| {
                        let payload = &datagram[HEADER_LEN..];
                        assert!(len <= payload.len(), "a chain's chunk longer than the chain");
                        (offset, &payload[..len])
                    })
                } else {
                    rx.on_data(now, from, &mut datagram).map(|(o, p)| (o, &*p))
                };
                if let Some((offset, payload)) = taken {
                    assert!(!via_tcp_session, "datagram data taken for a session that asked for TCP");
                    let end = offset + payload.len() as u64;
                    let size = rx.info().map_or(0, |i| i.file_size);
                    assert!(end <= size, "write {offset}+{} beyond the file size {size}", payload.len());
                    file[offset as usize..end as usize].copy_from_slice(payload);
                }
            }
            Op::ControlFromPeer => rx.on_control(now, peer, bytes),
            Op::ControlFromStranger => rx.on_control(now, stranger, bytes),
            Op::Sleep => {
                now += Duration::from_millis(u64::from(bytes.first().copied().unwrap_or(1)));
                if rx.poll_timeout().is_some_and(|t| t <= now) {
                    rx.handle_timeout(now);
                }
            }
            Op::Idle => rx.note_idle(now),
        }
        while let Some(ev) = rx.poll_event() {
            match ev {
                Event::Start { via_tcp: true, .. } => via_tcp_session = true,
                Event::Start { info, .. } => {
                    assert!(info.file_size <= MAX_MODEL_BYTES, "a datagram session above max_chunks was opened");
                    file = vec![0; info.file_size as usize];
                    // An interrupted transfer's first half is here (zeros,
                    // as the model holds): the hostile sender's answer to
                    // the offer is fuzzed with the rest.
                    let half = file.len() / 2;
                    rx.offer_resume(half as u64, *blake3::hash(&file[..half]).as_bytes());
                }
                Event::Resumed { .. } => {}
                Event::Verify => rx.verified(now, *blake3::hash(&file).as_bytes()),
            }
        }
        while let Some((to, bytes)) = rx.poll_transmit(now) {
            assert!(Message::parse(&bytes).is_ok(), "the receiver sent a datagram it cannot parse itself");
            assert!(to == peer || to == stranger, "a reply to an address nobody used: {to}");
        }
        if rx.is_finished() {
            break;
        }
    }
    if let (Some(Ok(summary)), Some(info)) = (rx.outcome(), rx.info()) {
        assert_eq!(Some(summary.digest), info.digest, "success with a digest other than the announced one");
        assert_eq!(*blake3::hash(&file).as_bytes(), summary.digest, "success, but the file differs");
        return true;
    }
    false
}

/// Parses untrusted bytes as a frame, as a datagram and as a TCP stream
/// header, and checks that what parses re-serialises to something that
/// parses to the same value.
pub fn run_wire(data: &[u8]) {
    if let Ok(d) = parse_udp(data) {
        assert!(d.payload.len() <= data.len());
        check_message(d.payload);
    }
    check_message(data);
    check_chain(data);
    if let Ok(h) = StreamHeader::parse(data) {
        assert_eq!(StreamHeader::parse(&h.emit()), Ok(h), "round trip changed the stream header");
    }
    check_seal(data);
    check_manifest(data);
    check_records(data);
}

/// The frame cut into a chain of frames (as XDP multi-buffer delivers a
/// jumbo one) at points its own bytes choose: what parses as a chain parses
/// whole, to the same datagram.
fn check_chain(data: &[u8]) {
    use xdpblast::wire::frame::parse_udp_chain_mut;
    if data.len() < 4 {
        return;
    }
    let a = (usize::from(data[0]) * 7) % data.len();
    let b = (a + usize::from(data[1]) * 13 + 1).min(data.len());
    let mut head = data[..a].to_vec();
    let rest = [&data[a..b], &data[b..]];
    let chained = parse_udp_chain_mut(&mut head, &rest).map(|(s, d, p)| (s, d, p.to_vec()));
    let Ok((src, dst, first)) = chained else { return };
    let whole = parse_udp(data).expect("a chain that parses is a frame that parses");
    assert_eq!((src, dst), (whole.src, whole.dst));
    let mut payload = first;
    rest.iter().for_each(|r| payload.extend_from_slice(r));
    assert_eq!(payload, whole.payload, "a chain's payload differs from the whole frame's");
}

/// A tree's manifest from arbitrary bytes: refused or parsed, never a
/// panic; what parses round-trips, and holds only safe relative names.
fn check_manifest(data: &[u8]) {
    use xdpblast::wire::manifest::{Limits, Manifest};
    let lim = Limits { max_entries: 1 << 16 };
    let Ok(m) = Manifest::parse(data, lim) else { return };
    assert_eq!(Manifest::parse(&m.encode(), lim).as_ref(), Ok(&m), "round trip changed the manifest");
    for e in &m.entries {
        assert!(!e.path.starts_with('/') && e.components().all(|c| c != ".." && c != "." && !c.is_empty()));
    }
}

/// Sealed datagrams: opening arbitrary bytes never panics, and whatever
/// parses, once sealed, opens again in its direction only, with its counter.
fn check_seal(data: &[u8]) {
    let keys = Keys::derive(&[0x42; 32]);
    for dir in [Direction::ToReceiver, Direction::ToSender] {
        let _ = keys.open(dir, data);
    }
    let Ok((msg, cookie)) = Message::parse_with_cookie(data) else { return };
    let mut sealed = msg.encode(cookie);
    keys.seal(Direction::ToSender, 7, &mut sealed);
    assert_eq!(keys.open(Direction::ToSender, &sealed), Some(7));
    assert_eq!(keys.open(Direction::ToReceiver, &sealed), None, "a seal opened in the wrong direction");
    assert_eq!(Message::parse_with_cookie(&sealed), Ok((msg, cookie)), "a seal changed the message");
}

/// A TCP stream's TLS records from arbitrary bytes: refused or opened,
/// never a panic, and nothing forged opens.
fn check_records(data: &[u8]) {
    use xdpblast::proto::auth::StreamDirection;
    use xdpblast::proto::record::RecordOpener;
    use xdpblast::wire::message::Cipher;
    let keys = Keys::derive(&[0x42; 32]).record_keys(1, 2, 0, StreamDirection::ToReceiver, Cipher::Aes256Gcm);
    if let Ok(Some(len)) = RecordOpener::record_len(data) {
        if let Some(record) = data.get(..len) {
            let opened = RecordOpener::new(&keys).open(&mut record.to_vec());
            assert!(opened.is_err(), "a record not sealed with the key opened");
        }
    }
}

fn check_message(bytes: &[u8]) {
    let Ok((msg, cookie)) = Message::parse_with_cookie(bytes) else { return };
    if let Message::Nack { nack, .. } = &msg {
        assert!(nack.missing().count() <= nack.nbits as usize);
    }
    let again = msg.encode(cookie);
    assert_eq!(Message::parse_with_cookie(&again), Ok((msg, cookie)), "round trip changed the message");
}
