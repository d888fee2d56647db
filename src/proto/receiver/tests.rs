use super::*;
use crate::proto::auth::{Direction, Keys, DATA_TAG_LEN};
use crate::wire::message::{lane_of, DataPorts, LANE_RUN};
use crate::wire::WireError;

const PEER: &str = "10.0.0.1:4000";
const OTHER: &str = "10.0.0.9:4000";

fn hello(info: SessionInfo) -> Message<'static> {
    Message::plain_hello(7, info)
}

/// Session 7's Hello from a sender whose queues send from `data_ports`,
/// with a key or without, its payloads encrypted or not.
fn hello_with(
    info: SessionInfo,
    data_ports: DataPorts,
    keyed: bool,
    encrypted: Option<crate::wire::message::Cipher>,
) -> Message<'static> {
    Message::Hello {
        session: 7,
        info,
        source: [0; 16],
        via_tcp: false,
        keyed,
        encrypted,
        name: "",
        data_ports,
        attrs: None,
        tree: None,
        resume_from: None,
    }
}

fn hello_from_ports(info: SessionInfo, data_ports: DataPorts) -> Message<'static> {
    hello_with(info, data_ports, false, None)
}

/// Session 7's Hello from a sender with a key.
fn keyed_hello(info: SessionInfo) -> Message<'static> {
    hello_with(info, DataPorts::NONE, true, None)
}

/// A receiver with session 7 open from PEER; returns its cookie.
fn open(info: SessionInfo) -> (Receiver, Instant, u64) {
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig::default(), now);
    let peer: SocketAddr = PEER.parse().unwrap();
    let cookie = rx.cookie_for(peer.ip(), 7);
    rx.on_control(now, peer, &hello(info).encode(cookie));
    assert!(rx.info().is_some());
    (rx, now, cookie)
}

#[test]
fn every_drop_reason_has_its_own_counter() {
    let mut counts = DropCounts::default();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        counts.add(*r);
    }
    assert_eq!(counts.by_name().len(), DropReason::ALL.len(), "names are distinct");
}

#[test]
fn a_hello_without_the_cookie_opens_nothing_and_earns_one() {
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig { cookie_key: [3; 32], ..Default::default() }, now);
    let peer: SocketAddr = PEER.parse().unwrap();
    let info = SessionInfo { file_size: 2500, chunk_size: 1000, n_chunks: 3, digest: None };
    rx.on_control(now, peer, &hello(info).to_vec());
    assert!(rx.info().is_none() && rx.poll_event().is_none(), "no state before the cookie's round trip");
    let (to, bytes) = rx.poll_transmit(now).expect("a challenge");
    assert_eq!(to, peer);
    let (msg, cookie) = Message::parse_with_cookie(&bytes).unwrap();
    assert_eq!(
        msg,
        Message::HelloAck { session: 7, delay_us: 0, opened: false, tcp_only: false, max_datagram: 0, resume: None }
    );
    assert_eq!(cookie, rx.cookie_for(peer.ip(), 7));
    assert_ne!(cookie, rx.cookie_for(OTHER.parse::<SocketAddr>().unwrap().ip(), 7), "bound to the address");
    // A guessed cookie is refused and counted; the right one opens.
    rx.on_control(now, peer, &hello(info).encode(cookie ^ 1));
    assert_eq!(rx.stats().drops.get(DropReason::BadCookie), 1);
    assert!(rx.info().is_none());
    rx.on_control(now, peer, &hello(info).encode(cookie));
    assert!(matches!(rx.poll_event(), Some(Event::Start { .. })));
    let (_, ack) = rx.poll_transmit(now).expect("the opening ack");
    assert_eq!(
        Message::parse_with_cookie(&ack).unwrap().0,
        Message::HelloAck { session: 7, delay_us: 0, opened: true, tcp_only: false, max_datagram: 0, resume: None }
    );
}

#[test]
fn allow_from_refuses_before_any_answer() {
    let now = Instant::now();
    let cfg = ReceiverConfig { allow_from: Some("10.0.0.1".parse().unwrap()), ..Default::default() };
    let mut rx = Receiver::new(cfg, now);
    let info = SessionInfo { file_size: 10, chunk_size: 10, n_chunks: 1, digest: None };
    rx.on_control(now, OTHER.parse().unwrap(), &hello(info).to_vec());
    assert_eq!(rx.stats().drops.get(DropReason::Refused), 1);
    assert!(rx.poll_transmit(now).is_none(), "a refused stranger gets no answer");
}

#[test]
fn hello_for_an_oversized_file_is_refused_with_an_abort() {
    let now = Instant::now();
    let cfg = ReceiverConfig { max_chunks: 100, max_datagram: Some(1472), ..Default::default() };
    let mut rx = Receiver::new(cfg, now);
    let peer: SocketAddr = PEER.parse().unwrap();
    for info in [
        SessionInfo { file_size: 1_000_000, chunk_size: 1000, n_chunks: 1000, digest: None },
        SessionInfo { file_size: 70_000, chunk_size: 70_000, n_chunks: 1, digest: None },
    ] {
        rx.on_control(now, peer, &hello(info).to_vec());
        assert!(rx.info().is_none(), "no session may open for {info:?}");
        let (to, bytes) = rx.poll_transmit(now).expect("an abort tells the sender why");
        assert_eq!(to, peer);
        assert!(matches!(Message::parse(&bytes), Ok(Message::Abort { .. })));
    }
    assert_eq!(rx.stats().drops.get(DropReason::TooLarge), 2);
    assert!(rx.poll_event().is_none());
}

/// A stranger's Hello with 1-byte chunks asked for a bitmap of
/// `max_chunks` bits (128 MiB) and a write per byte; tiny chunks are
/// taken only for a few of them.
#[test]
fn tiny_chunks_are_taken_only_a_few_at_a_time() {
    let now = Instant::now();
    let peer: SocketAddr = PEER.parse().unwrap();
    let tiny = |n_chunks: u64| SessionInfo { file_size: n_chunks, chunk_size: 1, n_chunks, digest: None };
    let mut rx = Receiver::new(ReceiverConfig::default(), now);
    rx.on_control(now, peer, &hello(tiny(MAX_TINY_CHUNKS + 1)).to_vec());
    assert_eq!(rx.stats().drops.get(DropReason::TooLarge), 1);
    let (_, bytes) = rx.poll_transmit(now).expect("an abort tells the sender why");
    let Ok(Message::Abort { reason, .. }) = Message::parse(&bytes) else { panic!("an Abort") };
    assert!(reason.contains("chunks of 1 bytes are below"), "{reason}");
    rx.on_control(now, peer, &hello(tiny(MAX_TINY_CHUNKS)).to_vec());
    assert_eq!(rx.stats().drops.get(DropReason::TooLarge), 1, "a few tiny chunks are fine");
}

/// Datagrams above our MTU (2948-byte packets against 1500) still earn
/// the cookie, whose HelloAck names our largest datagram; a Hello that
/// echoes the cookie with the same shape is refused, naming the MTU.
#[test]
fn a_hello_above_our_mtu_learns_our_largest_datagram() {
    let now = Instant::now();
    let cfg = ReceiverConfig { max_datagram: Some(1472), ..Default::default() };
    let mut rx = Receiver::new(cfg, now);
    let peer: SocketAddr = PEER.parse().unwrap();
    let info = SessionInfo { file_size: 29_200, chunk_size: 2920, n_chunks: 10, digest: None };
    rx.on_control(now, peer, &hello(info).to_vec());
    let (_, bytes) = rx.poll_transmit(now).expect("the cookie");
    let Ok((Message::HelloAck { opened: false, max_datagram, .. }, cookie)) = Message::parse_with_cookie(&bytes) else {
        panic!("a cookie HelloAck")
    };
    assert_eq!(max_datagram, 1472);
    rx.on_control(now, peer, &hello(info).encode(cookie));
    assert!(rx.info().is_none());
    let (_, bytes) = rx.poll_transmit(now).expect("an abort");
    let Ok(Message::Abort { reason, .. }) = Message::parse(&bytes) else { panic!("an Abort") };
    assert!(reason.contains("MTU of 1500") && reason.contains("2980"), "{reason}");
    assert_eq!(rx.stats().drops.get(DropReason::TooLarge), 1);
    let fits = SessionInfo { file_size: 29_200, chunk_size: 1440, n_chunks: 21, digest: None };
    rx.on_control(now, peer, &hello(fits).encode(cookie));
    assert_eq!(rx.info().map(|i| i.chunk_size), Some(1440), "the smaller shape opens");
}

#[test]
fn drops_are_counted_by_what_was_wrong() {
    let info = SessionInfo { file_size: 2500, chunk_size: 1000, n_chunks: 3, digest: None };
    let (mut rx, now, cookie) = open(info);
    let other: SocketAddr = OTHER.parse().unwrap();
    let peer: SocketAddr = PEER.parse().unwrap();
    let chunk = [1u8; 1000];
    let data = |session, chunk, payload| Message::Data { session, chunk, payload }.encode(cookie);
    let cases: [(SocketAddr, Vec<u8>, DropReason); 8] = [
        (other, data(8, 0, &chunk), DropReason::WrongSession),
        (other, data(7, 3, &chunk[..500]), DropReason::OutOfRange),
        (other, data(7, 2, &chunk), DropReason::BadLength),
        (other, data(7, 0, &chunk), DropReason::WrongSource),
        // Blind spoofing: the right address and session, no cookie.
        (peer, Message::Data { session: 7, chunk: 0, payload: &chunk }.to_vec(), DropReason::BadCookie),
        (peer, b"XBLS".to_vec(), DropReason::Wire(WireError::Truncated)),
        (
            peer,
            Message::HelloAck { session: 7, delay_us: 0, opened: true, tcp_only: false, max_datagram: 0, resume: None }
                .encode(cookie),
            DropReason::WrongKind,
        ),
        (peer, Message::Meta { session: 7, last: true, info }.encode(cookie ^ 4), DropReason::BadCookie),
    ];
    for (from, bytes, reason) in &cases {
        let before = rx.stats().drops.get(*reason);
        assert_eq!(rx.on_data(now, *from, &mut bytes.clone()), None);
        assert_eq!(rx.stats().drops.get(*reason), before + 1, "{reason:?}");
    }
    assert_eq!(rx.stats().drops.total(), cases.len() as u64);
    assert_eq!(rx.chunks_received(), 0, "nothing from a stranger or malformed may be taken");
    let mut good = data(7, 0, &chunk);
    assert_eq!(rx.on_data(now, peer, &mut good), Some((0, &chunk[..])));
}

#[test]
fn control_chatter_does_not_keep_a_stalled_transfer_alive() {
    let info = SessionInfo { file_size: 3000, chunk_size: 1000, n_chunks: 3, digest: Some([1; 32]) };
    let (mut rx, start, cookie) = open(info);
    let peer: SocketAddr = PEER.parse().unwrap();
    let chunk = [1u8; 1000];
    assert!(rx
        .on_data(start, peer, &mut Message::Data { session: 7, chunk: 0, payload: &chunk }.encode(cookie))
        .is_some());
    // End probes and keepalive Hellos every 100 ms, never a new chunk.
    let mut now = start;
    let end = Message::End { session: 7, info, retransmits: 0 }.encode(cookie);
    while !rx.is_finished() {
        now += Duration::from_millis(100);
        assert!(now < start + Duration::from_secs(11), "the idle timeout must fire");
        rx.on_control(now, peer, &end);
        rx.on_control(now, peer, &hello(info).encode(cookie));
        rx.handle_timeout(now);
    }
    assert!(now >= start + Duration::from_secs(10));
    assert_eq!(rx.outcome(), Some(&Err(RecvError::Stalled(Duration::from_secs(10)))));
}

#[test]
fn network_text_in_an_abort_is_escaped() {
    let info = SessionInfo { file_size: 10, chunk_size: 10, n_chunks: 1, digest: None };
    let (mut rx, now, cookie) = open(info);
    let reason = "x\n\u{1b}[32mdigest verified; output committed";
    rx.on_control(now, PEER.parse().unwrap(), &Message::Abort { session: 7, reason }.encode(cookie));
    let Some(Err(RecvError::PeerAborted(shown))) = rx.outcome() else { panic!("{:?}", rx.outcome()) };
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
}

#[test]
fn with_a_key_unsealed_and_replayed_control_is_dropped() {
    let keys = Keys::derive(&[9; 32]);
    let now = Instant::now();
    let cfg = ReceiverConfig { keys: Some(keys.clone()), ..Default::default() };
    let mut rx = Receiver::new(cfg, now);
    let peer: SocketAddr = PEER.parse().unwrap();
    let info = SessionInfo { file_size: 10, chunk_size: 10, n_chunks: 1, digest: Some([1; 32]) };
    let hello = keyed_hello(info);
    let cookie = rx.cookie_for(peer.ip(), 7);
    // Unsealed: refused, and told why.
    rx.on_control(now, peer, &hello.encode(cookie));
    assert!(rx.info().is_none());
    assert_eq!(rx.stats().drops.get(DropReason::BadSeal), 1);
    let mut sealed = hello.encode(cookie);
    keys.seal(Direction::ToReceiver, 1, &mut sealed);
    rx.on_control(now, peer, &sealed);
    assert!(rx.info().is_some(), "a sealed echo of the cookie opens the session");
    // Its replies are sealed for the sender's direction.
    while let Some((_, reply)) = rx.poll_transmit(now) {
        assert!(keys.open(Direction::ToSender, &reply).is_some(), "an unsealed reply");
    }
    let mut end = Message::End { session: 7, info, retransmits: 0 }.encode(cookie);
    keys.seal(Direction::ToReceiver, 2, &mut end);
    rx.on_control(now, peer, &end);
    rx.on_control(now, peer, &end);
    assert_eq!(rx.stats().drops.get(DropReason::BadSeal), 2, "the replay is dropped");
    let mut forged_meta = Message::Meta { session: 7, last: true, info }.encode(cookie);
    keys.seal(Direction::ToSender, 0, &mut forged_meta);
    assert!(rx.on_data(now, peer, &mut forged_meta).is_none());
    assert_eq!(rx.stats().drops.get(DropReason::BadSeal), 3, "a Meta sealed for the wrong direction");
}

/// A receiver with key [4; 32] and session 7 open from PEER for a
/// 1,000-byte file of ten chunks, its payloads encrypted with `encrypted`
/// (or only tagged); returns it, the keys, the time, the peer, the file and
/// the session's cookie.
fn keyed_session(
    encrypted: Option<crate::wire::message::Cipher>,
) -> (Receiver, Keys, Instant, SocketAddr, Vec<u8>, u64) {
    let keys = Keys::derive(&[4; 32]);
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig { keys: Some(keys.clone()), ..Default::default() }, now);
    let peer: SocketAddr = PEER.parse().unwrap();
    let file: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let info = SessionInfo { file_size: 1000, chunk_size: 100, n_chunks: 10, digest: Some([1; 32]) };
    let cookie = rx.cookie_for(peer.ip(), 7);
    let mut hello = hello_with(info, DataPorts::NONE, true, encrypted).encode(cookie);
    keys.seal(Direction::ToReceiver, 1, &mut hello);
    rx.on_control(now, peer, &hello);
    assert!(rx.info().is_some());
    (rx, keys, now, peer, file, cookie)
}

/// `recv --require-encryption`: a keyed sender that only authenticates is
/// refused at its Hello, with the reason; an encrypted one is taken.
#[test]
fn a_receiver_that_requires_encryption_refuses_a_sender_that_only_authenticates() {
    use crate::wire::message::Cipher;
    let keys = Keys::derive(&[4; 32]);
    let now = Instant::now();
    let cfg = ReceiverConfig { keys: Some(keys.clone()), require_encryption: true, ..Default::default() };
    let mut rx = Receiver::new(cfg, now);
    let peer: SocketAddr = PEER.parse().unwrap();
    let info = SessionInfo { file_size: 1000, chunk_size: 100, n_chunks: 10, digest: None };
    let cookie = rx.cookie_for(peer.ip(), 7);
    let mut clear = hello_with(info, DataPorts::NONE, true, None).encode(cookie);
    keys.seal(Direction::ToReceiver, 1, &mut clear);
    rx.on_control(now, peer, &clear);
    assert!(rx.info().is_none(), "no session for a sender in clear");
    assert_eq!(rx.stats().drops.get(DropReason::WrongMode), 1);
    let (to, why) = rx.take_refusal().expect("a refusal, with its reason");
    assert_eq!(to, peer);
    assert!(why.contains("requires encryption"), "{why}");
    let mut sealed = hello_with(info, DataPorts::NONE, true, Some(Cipher::Aes256Gcm)).encode(cookie);
    keys.seal(Direction::ToReceiver, 2, &mut sealed);
    rx.on_control(now, peer, &sealed);
    assert_eq!(rx.encrypted(), Some(Cipher::Aes256Gcm), "an encrypted sender is taken");
}

/// With a key, a data frame counts only once its tag holds: a forged
/// chunk (right session, cookie and source, any payload) is dropped on
/// arrival, moves no mark, and leaves the chunk's place to the genuine
/// frame.
#[test]
fn with_a_key_a_forged_chunk_costs_nothing_but_itself() {
    let (mut rx, keys, now, peer, file, cookie) = keyed_session(None);
    let info = *rx.info().expect("open");
    let key = keys.data_key(7, cookie, None);
    let tagged = |c: u64, payload: &[u8]| {
        let mut b = Message::Data { session: 7, chunk: c, payload }.encode(cookie);
        let tag = key.tag(c, &b);
        b.extend_from_slice(&tag);
        b
    };
    let genuine = |c: u64| tagged(c, &file[c as usize * 100..(c as usize + 1) * 100]);
    // The attacker copies session, cookie and source; it cannot tag.
    let mut forged = Message::Data { session: 7, chunk: 9, payload: &[0xee; 100] }.encode(cookie);
    let untagged = forged.clone();
    forged.extend_from_slice(&[0; DATA_TAG_LEN]);
    let wrong_place = {
        let mut b = genuine(3);
        b[crate::wire::message::field::SEQ].copy_from_slice(&9u64.to_be_bytes());
        b
    };
    let mut another_key = Message::Data { session: 7, chunk: 9, payload: &file[900..] }.encode(cookie);
    let tag = Keys::derive(&[5; 32]).data_key(7, cookie, None).tag(9, &another_key);
    another_key.extend_from_slice(&tag);
    for bad in [&forged, &untagged, &wrong_place, &another_key] {
        assert_eq!(rx.on_data(now, peer, &mut bad.clone()), None);
    }
    assert_eq!(rx.stats().drops.get(DropReason::BadSeal), 4);
    assert_eq!((rx.chunks_received(), rx.stats().bytes), (0, 0), "nothing forged was taken");
    for c in 0..10u64 {
        let mut frame = genuine(c);
        let (offset, payload) = rx.on_data(now, peer, &mut frame).expect("a genuine chunk is taken");
        assert_eq!((offset, payload), (c * 100, &file[c as usize * 100..(c as usize + 1) * 100]));
    }
    assert_eq!(rx.contiguous_bytes(), 1000);
    assert_eq!(
        rx.poll_event(),
        Some(Event::Start { info, peer, source: [0; 16], via_tcp: false, name: None, attrs: None, tree: None })
    );
    assert_eq!(rx.poll_event(), Some(Event::Verify));
}

/// An encrypted session: each payload is opened in place on arrival. A
/// frame from another session (re-addressed to this one), the same chunk
/// only tagged, a flipped ciphertext bit, or a frame moved to another place
/// is dropped as a bad seal; a second copy of a chunk held is not opened.
#[test]
fn encrypted_payloads_open_in_place_and_replays_from_another_session_do_not() {
    use crate::wire::message::Cipher;
    let (mut rx, keys, now, peer, file, cookie) = keyed_session(Some(Cipher::ChaCha20Poly1305));
    assert_eq!(rx.encrypted(), Some(Cipher::ChaCha20Poly1305));
    let sealed = |key: &crate::proto::auth::DataKey, session: u64, cookie: u64, c: u64| {
        let plain = &file[c as usize * 100..(c as usize + 1) * 100];
        let mut b = Message::Data { session, chunk: c, payload: plain }.encode(cookie);
        let (header, payload) = b.split_at_mut(HEADER_LEN);
        let tag = key.seal(c, header, payload);
        b.extend_from_slice(&tag);
        b
    };
    let key = keys.data_key(7, cookie, Some(Cipher::ChaCha20Poly1305));
    let genuine = |c: u64| sealed(&key, 7, cookie, c);
    assert!(genuine(2)[HEADER_LEN..HEADER_LEN + 100] != file[200..300], "the payload travels encrypted");
    // Session 6 of the same pair (its own cookie), its frame given session
    // 7's header: the key and the associated data are 7's, not 6's.
    let old_cookie = rx.cookie_for(peer.ip(), 6);
    let mut replayed = sealed(&keys.data_key(6, old_cookie, Some(Cipher::ChaCha20Poly1305)), 6, old_cookie, 2);
    replayed[..HEADER_LEN].copy_from_slice(&genuine(2)[..HEADER_LEN]);
    let tag_only = {
        let mut b = Message::Data { session: 7, chunk: 2, payload: &file[200..300] }.encode(cookie);
        let tag = keys.data_key(7, cookie, None).tag(2, &b);
        b.extend_from_slice(&tag);
        b
    };
    let mut flipped = genuine(2);
    flipped[HEADER_LEN + 50] ^= 1;
    let mut moved = genuine(3);
    moved[crate::wire::message::field::SEQ].copy_from_slice(&2u64.to_be_bytes());
    for bad in [replayed, tag_only, flipped, moved] {
        assert_eq!(rx.on_data(now, peer, &mut bad.clone()), None);
    }
    assert_eq!(rx.stats().drops.get(DropReason::BadSeal), 4);
    assert_eq!(rx.chunks_received(), 0, "nothing forged or replayed was taken");
    // A queue thread's opener, away from the receiver: its verdict travels
    // with the frame, a forgery's too.
    let opener = rx.data_opener().expect("a keyed datagram session has an opener");
    let mut forged = genuine(5);
    forged[HEADER_LEN + 1] ^= 0x40;
    let opened = opener.open(&mut forged).expect("a data frame of the session");
    assert_eq!(rx.on_data_opened(now, peer, opened), None);
    assert_eq!(rx.stats().drops.get(DropReason::BadSeal), 5);
    let mut end = Message::End { session: 7, info: *rx.info().expect("open"), retransmits: 0 }.encode(cookie);
    assert!(opener.open(&mut end).is_err(), "not a data frame: handed back for the receiver to check");
    for c in 0..10u64 {
        let mut frame = genuine(c);
        let (offset, payload) = if c % 2 == 0 {
            rx.on_data(now, peer, &mut frame)
        } else {
            let opened = opener.open(&mut frame).expect("a data frame of the session");
            rx.on_data_opened(now, peer, opened)
        }
        .expect("a genuine chunk is taken");
        assert_eq!((offset, payload), (c * 100, &file[c as usize * 100..(c as usize + 1) * 100]));
    }
    assert_eq!(rx.on_data(now, peer, &mut genuine(4)), None);
    assert_eq!(rx.stats().drops.get(DropReason::Duplicate), 1, "a copy of a chunk held is a duplicate");
    assert_eq!(rx.contiguous_bytes(), 1000);
}

/// Two lanes (transmit queues): lane 1 runs far ahead of lane 0, which
/// is not loss, while a gap inside lane 1 is. Data from a port the
/// Hello did not list is refused.
#[test]
fn a_lagging_lane_is_not_loss_but_a_gap_in_a_lane_is() {
    let run = LANE_RUN;
    let n_chunks = run * 8;
    let info = SessionInfo { file_size: n_chunks * 10, chunk_size: 10, n_chunks, digest: None };
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig::default(), now);
    let peer: SocketAddr = PEER.parse().unwrap();
    let lane1: SocketAddr = "10.0.0.1:4001".parse().unwrap();
    let ports = DataPorts::new(&[4000, 4001]).unwrap();
    let cookie = rx.cookie_for(peer.ip(), 7);
    rx.on_control(now, peer, &hello_from_ports(info, ports).encode(cookie));
    let payload = [0u8; 10];
    let send = |rx: &mut Receiver, from: SocketAddr, c: u64| {
        rx.on_data(now, from, &mut Message::Data { session: 7, chunk: c, payload: &payload }.encode(cookie)).is_some()
    };
    // Lane 0 has delivered its first 10 chunks; lane 1 all of its runs
    // (64..128, 192..256, ...) but chunk 200.
    for c in 0..10 {
        send(&mut rx, peer, c);
    }
    for c in (0..n_chunks).filter(|&c| lane_of(c, 2) == 1 && c != 200) {
        send(&mut rx, lane1, c);
    }
    let stranger: SocketAddr = "10.0.0.1:4002".parse().unwrap();
    assert!(!send(&mut rx, stranger, 11));
    assert_eq!(rx.stats().drops.get(DropReason::WrongSource), 1);
    let mut named = Vec::new();
    for t in [1000, 1010, 1020] {
        rx.handle_timeout(now + Duration::from_millis(t));
        while let Some((_, bytes)) = rx.poll_transmit(now) {
            if let Ok(Message::Nack { nack, .. }) = Message::parse(&bytes) {
                named.extend(nack.missing());
            }
        }
    }
    assert!(named.is_empty(), "lane 0 lags, nothing is lost below its mark: {named:?}");
    // Lane 0 passes chunk 200's run: 200 is now overdue, and only it.
    for c in (10..n_chunks).filter(|&c| lane_of(c, 2) == 0 && c < 300) {
        send(&mut rx, peer, c);
    }
    for t in [1030, 1040] {
        rx.handle_timeout(now + Duration::from_millis(t));
        while let Some((_, bytes)) = rx.poll_transmit(now) {
            if let Ok(Message::Nack { nack, .. }) = Message::parse(&bytes) {
                named.extend(nack.missing());
            }
        }
    }
    named.dedup();
    assert_eq!(named, vec![200]);
}

/// Trust round 2, row 13: a TCP-only receiver answers a datagram Hello
/// with a flag, not only words, and a datagram sender ends on it with a
/// typed error that `send --mode auto` acts on.
#[test]
fn a_tcp_only_receiver_says_so_with_a_flag_the_sender_understands() {
    let now = Instant::now();
    let info = SessionInfo { file_size: 2500, chunk_size: 1000, n_chunks: 3, digest: None };
    let mut rx = Receiver::new(ReceiverConfig { tcp_only: true, cookie_key: [3; 32], ..Default::default() }, now);
    let peer: SocketAddr = PEER.parse().unwrap();
    rx.on_control(now, peer, &hello(info).encode(0));
    assert_eq!(rx.stats().drops.get(DropReason::WrongMode), 1);
    let (to, bytes) = rx.poll_transmit(now).expect("an answer");
    assert_eq!(to, peer);
    let msg = Message::parse(&bytes).expect("a message");
    assert_eq!(
        msg,
        Message::HelloAck { session: 7, delay_us: 0, opened: false, tcp_only: true, max_datagram: 0, resume: None }
    );
    let mut tx = crate::proto::Sender::new(crate::proto::SenderConfig::default(), 7, info, now);
    assert!(tx.poll_control(now).is_some(), "the sender's Hello");
    tx.on_control(now, &bytes).expect("taken");
    assert_eq!(tx.outcome(), Some(&Err(crate::proto::sender::SendError::ReceiverTakesTcpOnly)));
}

/// A datagram that came as a chain of frames is checked from its first
/// frame and the chain's length, as a whole one is; a keyed session's chain
/// (whose tag needs the payload whole) is never taken unjoined.
#[test]
fn a_chained_datagram_is_taken_from_its_head_and_length() {
    let info = SessionInfo { file_size: 2500, chunk_size: 1000, n_chunks: 3, digest: None };
    let (mut rx, now, cookie) = open(info);
    let peer: SocketAddr = PEER.parse().unwrap();
    let chunk = [3u8; 1000];
    let whole = Message::Data { session: 7, chunk: 1, payload: &chunk }.encode(cookie);
    // Cut after 300 payload bytes: 700 follow in the chain.
    let head = &whole[..HEADER_LEN + 300];
    // Shorter than its header says, and longer than its payload.
    let cases = [(600, DropReason::Wire(WireError::BadLength)), (800, DropReason::BadLength)];
    for (rest, reason) in cases {
        assert_eq!(rx.on_data_chain(now, peer, head, rest), None);
        assert_eq!(rx.stats().drops.get(reason), 1, "{rest}");
    }
    let meta = Message::Meta { session: 7, last: false, info }.encode(cookie);
    assert_eq!(rx.on_data_chain(now, peer, &meta[..HEADER_LEN], meta.len() - HEADER_LEN), None);
    assert_eq!(rx.stats().drops.get(DropReason::WrongKind), 1);
    assert_eq!(rx.on_data_chain(now, peer, head, 700), Some((1000, 1000)));
    assert_eq!(rx.on_data_chain(now, peer, head, 700), None, "taken once");
    assert_eq!(rx.stats().drops.get(DropReason::Duplicate), 1);

    let (mut rx, _keys, now, peer, _file, cookie) = keyed_session(None);
    let payload = [5u8; 100];
    let sealed = Message::Data { session: 7, chunk: 0, payload: &payload }.encode(cookie);
    assert_eq!(rx.on_data_chain(now, peer, &sealed[..HEADER_LEN + 40], 60), None);
    assert_eq!(rx.stats().drops.get(DropReason::BadSeal), 1);
    assert_eq!(rx.chunks_received(), 0);
}
