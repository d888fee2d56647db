//! The receiving side of a transfer, as a state machine without I/O.
//!
//! The driver feeds it datagrams (data path and control path) and the current
//! time; it answers with where to write each payload, control datagrams to
//! send, and events the driver must act on (create the output, verify it).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::auth::{Counter, DataKey, Direction, Keys, ReplayGuard, DATA_TAG_LEN};
use super::chunkset::ChunkSet;
use crate::wire::message::{
    lane_of, DataPorts, FileAttrs, Message, Nack, SessionInfo, SourceId, HEADER_LEN, LANE_RUN, MIN_CHUNK_SIZE,
};
use crate::wire::stream::StreamHeader;
use crate::wire::{untrusted_text, WireError};

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Give up when no new data has arrived for this long. Control traffic
    /// does not count: only chunks the receiver did not hold yet (and, before
    /// the first chunk, the sender's keepalive Hellos while it prepares).
    pub idle_timeout: Duration,
    /// How often missing chunks and progress are reported (an empty NACK is
    /// a heartbeat). The sender's flow-control window advances on these.
    pub nack_interval: Duration,
    /// Most NACK datagrams in one round.
    pub max_nack_parts: u16,
    /// Chunks one NACK datagram can describe (its bitmap has nbits/8 bytes).
    pub nack_window_bits: u32,
    /// After success, stay to answer repeated end probes until this long passes
    /// without one (the final ack may have been lost).
    pub linger: Duration,
    /// Accept a session only from this address.
    pub allow_from: Option<IpAddr>,
    /// Largest session accepted, in chunks: the chunk bitmap is allocated at
    /// Hello, so a hostile Hello must not be able to size it freely.
    pub max_chunks: u64,
    /// Largest file accepted, in bytes (`recv --max-size`).
    pub max_file_size: Option<u64>,
    /// Largest UDP payload the data path delivers (the interface's MTU less
    /// IP and UDP headers), when known: a session whose datagrams are larger
    /// is refused at Hello, naming the MTU, instead of losing every packet.
    pub max_datagram: Option<usize>,
    /// IP + UDP header bytes on the data path (28 for IPv4, 48 for IPv6),
    /// to name packet sizes and the MTU in a refusal.
    pub ip_udp_overhead: usize,
    /// Take the file only over TCP (`recv --mode tcp`).
    pub tcp_only: bool,
    /// Key for the cookies answered to Hellos. The driver sets a fresh random
    /// one; the default (all zeros) is for deterministic tests.
    pub cookie_key: [u8; 32],
    /// With a pre-shared key (`--key-file`): every control message and Meta
    /// must be sealed with it, replies are sealed, the digest is keyed.
    pub keys: Option<Keys>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            idle_timeout: Duration::from_secs(10),
            nack_interval: Duration::from_millis(5),
            max_nack_parts: 32,
            nack_window_bits: 8192,
            linger: Duration::from_millis(300),
            allow_from: None,
            // 128 MiB of bitmap; 1.5 TB at 1448-byte chunks.
            max_chunks: 1 << 30,
            max_file_size: None,
            max_datagram: None,
            ip_udp_overhead: 28,
            tcp_only: false,
            cookie_key: [0; 32],
            keys: None,
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Wire(WireError),
    /// Data before any session was opened.
    NoSession,
    /// From an address or port other than the one that opened the session.
    WrongSource,
    WrongSession,
    /// Chunk index beyond the end of the file.
    OutOfRange,
    /// Payload length is not the chunk's length.
    BadLength,
    /// Already held.
    Duplicate,
    /// A kind that does not belong on this path.
    WrongKind,
    /// Session parameters disagree with the ones agreed at Hello.
    InfoMismatch,
    /// A second sender tried to open a session while one is active.
    Busy,
    /// A Hello from an address `--allow-from` does not name.
    Refused,
    /// A Hello for a file with more chunks than `max_chunks`, or chunks no
    /// datagram can carry.
    TooLarge,
    /// The header's cookie is not the one this session's sender was given.
    BadCookie,
    /// A Hello asking for a transport this receiver does not take.
    WrongMode,
    /// With a key: a control message or Meta without a valid seal, or a
    /// replayed one; a data frame whose tag does not verify (forged or
    /// corrupted).
    BadSeal,
}

impl DropReason {
    pub const ALL: [DropReason; 22] = [
        DropReason::Wire(WireError::Truncated),
        DropReason::Wire(WireError::BadMagic),
        DropReason::Wire(WireError::BadVersion),
        DropReason::Wire(WireError::BadLength),
        DropReason::Wire(WireError::UnknownKind),
        DropReason::Wire(WireError::BadBody),
        DropReason::Wire(WireError::NotUdp),
        DropReason::Wire(WireError::BadChecksum),
        DropReason::NoSession,
        DropReason::WrongSource,
        DropReason::WrongSession,
        DropReason::OutOfRange,
        DropReason::BadLength,
        DropReason::Duplicate,
        DropReason::WrongKind,
        DropReason::InfoMismatch,
        DropReason::Busy,
        DropReason::TooLarge,
        DropReason::BadCookie,
        DropReason::WrongMode,
        DropReason::Refused,
        DropReason::BadSeal,
    ];

    fn index(self) -> usize {
        // Every reason is listed in ALL (the unit test checks it).
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Wire(e) => e.as_str(),
            DropReason::NoSession => "no_session",
            DropReason::WrongSource => "wrong_source",
            DropReason::WrongSession => "wrong_session",
            DropReason::OutOfRange => "out_of_range",
            DropReason::BadLength => "bad_chunk_length",
            DropReason::Duplicate => "duplicate",
            DropReason::WrongKind => "wrong_kind",
            DropReason::InfoMismatch => "info_mismatch",
            DropReason::Busy => "busy",
            DropReason::TooLarge => "too_large",
            DropReason::BadCookie => "bad_cookie",
            DropReason::WrongMode => "wrong_mode",
            DropReason::Refused => "refused",
            DropReason::BadSeal => "bad_seal",
        }
    }
}

/// Dropped datagrams, by reason.
#[derive(Debug, Clone, Default)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    pub fn add(&mut self, r: DropReason) {
        self.0[r.index()] += 1;
    }
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// Non-zero counters by name.
    pub fn by_name(&self) -> std::collections::BTreeMap<&'static str, u64> {
        DropReason::ALL.iter().filter(|r| self.get(**r) > 0).map(|r| (r.as_str(), self.get(*r))).collect()
    }
}

impl Serialize for DropCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.by_name().serialize(s)
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session opened (its sender echoed our cookie): prepare an output of
    /// `info.file_size` bytes, unless `via_tcp`, when the file comes over a
    /// TCP connection that [`Receiver::tcp_admits`] must accept first. On
    /// failure call [`Receiver::abort`].
    /// `name`: the sender's file name, when it is one that is safe to use
    /// in a directory (see [`crate::wire::safe_file_name`]).
    Start {
        info: SessionInfo,
        peer: SocketAddr,
        source: SourceId,
        via_tcp: bool,
        name: Option<String>,
        attrs: Option<FileAttrs>,
    },
    /// Every chunk is in: hash the output and call [`Receiver::verified`].
    Verify,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("no sender opened a session within {} (idle timeout); is the sender running and the route right?", crate::units::human_secs(*.0))]
    NoSender(Duration),
    #[error(
        "the session opened but no data arrived for {} (idle timeout); is something on the path (a smaller MTU, a firewall) dropping the sender's packets?", crate::units::human_secs(*.0)
    )]
    NoData(Duration),
    #[error("no new data from the sender for {} (idle timeout), whatever else it sent", crate::units::human_secs(*.0))]
    Stalled(Duration),
    #[error("digest mismatch: the file received does not match the sender's BLAKE3 digest")]
    DigestMismatch,
    #[error("the sender aborted: {0}")]
    PeerAborted(String),
    #[error("{0}")]
    Local(String),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecvSummary {
    pub file_size: u64,
    pub chunks: u64,
    pub digest: [u8; 32],
}

#[derive(Debug)]
enum State {
    Listening,
    Receiving,
    Verifying,
    /// Done was sent; `ok` says whether the digest matched.
    Complete {
        ok: bool,
        last_probe: Instant,
    },
    Finished,
}

#[derive(Debug)]
struct Session {
    id: u64,
    /// Our answer to its first Hello, carried by every later datagram.
    cookie: u64,
    peer: SocketAddr,
    /// The sender's transmit queues' source ports (its Hello's list), from
    /// which data is taken as from `peer`'s own port.
    data_ports: DataPorts,
    info: SessionInfo,
    via_tcp: bool,
    chunks: ChunkSet,
    /// Highest chunk index seen + 1, now and at the previous NACK tick.
    high: u64,
    high_at_last_tick: u64,
    /// With several lanes (transmit queues, see [`LANE_RUN`]): each lane's
    /// highest chunk + 1, now and at the previous tick. A lane's first pass
    /// arrives in order, so a gap below every lane's mark is a loss, while
    /// one above a lagging lane's may still be on its way.
    lane_high: Vec<u64>,
    lane_high_at_last_tick: Vec<u64>,
    /// The data-path Meta that closes a pass arrived: every gap before it is
    /// a loss (it travels behind the data, in order).
    end_seen: bool,
    /// An end probe arrived on the control path. It overtakes data still
    /// queued for us, so it counts only once the data path has gone quiet.
    end_probed: bool,
    /// Closing Metas seen: the sender's marks in its send sequence after the
    /// first pass. Reported as position `n_chunks + markers`.
    markers: u64,
    /// Since when the driver has found the data path empty (cleared by data).
    idle_since: Option<Instant>,
    round: u64,
    digest: Option<[u8; 32]>,
    /// First chunk not yet counted in a loss report.
    loss_from: u64,
    /// With a key: the key the data frames' tags are checked with.
    data_key: Option<DataKey>,
}

/// Most chunks of a session whose chunks are below [`MIN_CHUNK_SIZE`]: an
/// 8 KiB bitmap.
const MAX_TINY_CHUNKS: u64 = 1 << 16;

/// With lanes: NACK rounds of silence on the data path, after the sender's
/// End probe, before the tails of the lanes the closing Meta did not end
/// count as lost (a lane may lag that long behind another).
const LANES_QUIET_ROUNDS: u32 = 4;

/// What a Hello says, once its seal and name are checked.
struct HelloFields {
    session: u64,
    info: SessionInfo,
    source: SourceId,
    via_tcp: bool,
    name: Option<String>,
    data_ports: DataPorts,
    attrs: Option<FileAttrs>,
}

impl Session {
    /// Data comes from the Hello's address, or from its IP and one of the
    /// transmit queues' ports it listed: `Some` with the lane it came on
    /// (where there are lanes), `None` from anywhere else.
    fn data_source(&self, from: SocketAddr) -> Option<Option<usize>> {
        if from.ip() != self.peer.ip() {
            return None;
        }
        match self.data_ports.as_slice().iter().position(|&p| p == from.port()) {
            Some(lane) => Some(Some(lane)),
            None => (from == self.peer).then_some(None),
        }
    }

    /// With several lanes: the chunk below which every gap is a loss, as
    /// of the previous tick. Lanes take runs of [`LANE_RUN`] chunks in
    /// turn and each arrives in order, so a chunk is overdue once its lane
    /// has passed it; the lowest mark of the lanes still due to carry a
    /// chunk above it bounds what is surely overdue. A lane whose chunks
    /// all lie below a mark (it ended its part) does not hold it back.
    fn lanes_watermark(&self) -> u64 {
        let n = self.lane_high_at_last_tick.len() as u64;
        let run = LANE_RUN;
        self.lane_high_at_last_tick
            .iter()
            .enumerate()
            .filter_map(|(j, &h)| {
                // The first chunk of lane j at or above its mark (its next
                // run's start when the mark ends a run), if in the file.
                let mut next = h;
                if lane_of(h, n as usize) != j {
                    let cycle = h / (run * n);
                    let start = (cycle * n + j as u64) * run;
                    next = if start >= h { start } else { start + run * n };
                }
                (next < self.info.n_chunks).then_some(next)
            })
            .min()
            .unwrap_or(self.info.n_chunks)
    }

    /// How far through the sender's send sequence we have seen: the first
    /// pass's high-water mark, then `n_chunks` plus the closing markers seen.
    fn position(&self) -> u64 {
        if self.markers > 0 {
            self.info.n_chunks + self.markers
        } else {
            self.high
        }
    }

    /// The cumulative ack: chunks below it are held (the sender may reuse
    /// their frames).
    fn reported_prefix(&self) -> u64 {
        self.chunks.prefix()
    }

    /// Encodes a datagram to this session's sender, with its cookie.
    fn encode(&self, msg: &Message<'_>) -> (SocketAddr, Vec<u8>) {
        (self.peer, msg.encode(self.cookie))
    }
}

#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    state: State,
    session: Option<Session>,
    /// When the transfer last moved: the session opened, a new chunk, or
    /// (before the first chunk) a keepalive Hello. The idle timeout runs
    /// from here.
    last_progress: Instant,
    next_nack: Instant,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
    /// A HelloAck is owed since this instant.
    hello_ack_due: Option<Instant>,
    events: VecDeque<Event>,
    outcome: Option<Result<RecvSummary, RecvError>>,
    pub drops: DropCounts,
    /// Payload bytes accepted (each chunk once).
    pub bytes: u64,
    pub nacks_sent: u64,
    /// Retransmits the sender reported in its end probes.
    pub peer_retransmits: u64,
    pub first_data: Option<Instant>,
    /// Cookies handed out to Hellos that did not carry one yet.
    pub cookies_sent: u64,
    /// With a key: our sealed messages' counter, and the sender's seen.
    counter: Counter,
    replay: ReplayGuard,
    scratch: Vec<u8>,
    /// Refused Hellos not yet taken by the driver.
    refusals: VecDeque<(SocketAddr, String)>,
}

/// Refusals kept for the driver between two calls (a sender repeats its
/// Hello; the driver logs each address once).
const MAX_QUEUED_REFUSALS: usize = 16;

impl Receiver {
    pub fn new(cfg: ReceiverConfig, now: Instant) -> Receiver {
        Receiver {
            next_nack: now + cfg.nack_interval,
            cfg,
            state: State::Listening,
            session: None,
            last_progress: now,
            transmit: VecDeque::new(),
            hello_ack_due: None,
            events: VecDeque::new(),
            outcome: None,
            drops: DropCounts::default(),
            bytes: 0,
            nacks_sent: 0,
            peer_retransmits: 0,
            first_data: None,
            cookies_sent: 0,
            counter: Counter::default(),
            replay: ReplayGuard::default(),
            scratch: Vec::new(),
            refusals: VecDeque::new(),
        }
    }

    pub fn info(&self) -> Option<&SessionInfo> {
        self.session.as_ref().map(|s| &s.info)
    }

    /// The hasher the output's digest must be computed with: keyed with a
    /// pre-shared key, plain BLAKE3 without.
    pub fn digest_hasher(&self) -> blake3::Hasher {
        self.cfg.keys.as_ref().map_or_else(blake3::Hasher::new, Keys::digest_hasher)
    }

    /// With a key: whether a datagram for us is sealed, and (`fresh`) not a
    /// replay of one already taken.
    fn authentic(&mut self, bytes: &[u8], fresh: bool) -> bool {
        let Some(k) = &self.cfg.keys else { return true };
        match k.open(Direction::ToReceiver, bytes) {
            Some(c) => !fresh || self.replay.accept(c),
            None => false,
        }
    }

    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.session.as_ref().map(|s| s.peer)
    }

    /// The cookie a sender at `ip` must echo for `session`: a keyed hash, so
    /// the receiver keeps no state for Hellos it has only answered.
    pub fn cookie_for(&self, ip: IpAddr, session: u64) -> u64 {
        let mut input = [0u8; 24];
        let v6 = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        input[..16].copy_from_slice(&v6.octets());
        input[16..].copy_from_slice(&session.to_be_bytes());
        let h = blake3::keyed_hash(&self.cfg.cookie_key, &input);
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        // 0 means "no cookie yet" on the wire.
        u64::from_be_bytes(b).max(1)
    }

    /// Whether a TCP stream from `from` with header `h` is the fallback of
    /// the open session: same sender address, session, cookie and size.
    /// Whether the open session takes its file over TCP from `from`: the
    /// only case in which a TCP connection from there is read at all.
    pub fn awaits_tcp_from(&self, from: IpAddr) -> bool {
        self.session.as_ref().is_some_and(|s| s.via_tcp && s.peer.ip() == from)
    }

    pub fn tcp_admits(&self, from: IpAddr, h: &StreamHeader) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.via_tcp
                && s.peer.ip() == from
                && s.id == h.session
                && s.cookie == h.cookie
                && s.info.file_size == h.file_size
        })
    }

    /// The driver polled the data path and found nothing waiting. Only a data
    /// path that has stayed empty for a tick lets an end probe (which overtakes
    /// queued data) turn every gap into a loss.
    pub fn note_idle(&mut self, now: Instant) {
        if let Some(s) = self.session.as_mut() {
            s.idle_since.get_or_insert(now);
        }
    }

    /// Bytes from the start of the file that are all written: what can be
    /// hashed ahead of the end.
    pub fn contiguous_bytes(&self) -> u64 {
        self.session.as_ref().map_or(0, |s| (s.reported_prefix() * u64::from(s.info.chunk_size)).min(s.info.file_size))
    }

    pub fn chunks_received(&self) -> u64 {
        self.session.as_ref().map_or(0, |s| s.chunks.count())
    }

    /// A datagram from the data path. Returns the file offset and bytes to
    /// write, or `None` if it was dropped (and counted) or carried no data.
    pub fn on_data<'a>(&mut self, now: Instant, from: SocketAddr, bytes: &'a [u8]) -> Option<(u64, &'a [u8])> {
        match self.data(now, from, bytes) {
            Ok(w) => w,
            Err(r) => {
                self.drops.add(r);
                None
            }
        }
    }

    fn data<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> Result<Option<(u64, &'a [u8])>, DropReason> {
        let (msg, cookie) = Message::parse_with_cookie(bytes).map_err(DropReason::Wire)?;
        let s = self.session.as_mut().ok_or(DropReason::NoSession)?;
        // Every check drops; their order only decides which reason is
        // counted. The cheap content checks come first so a hostile source
        // shows what it sent, and the source checks (cookie, address) last
        // before acceptance.
        match msg {
            Message::Data { session, chunk, payload } => {
                if session != s.id {
                    return Err(DropReason::WrongSession);
                }
                let want = s.info.chunk_len(chunk).ok_or(DropReason::OutOfRange)?;
                if payload.len() != want {
                    return Err(DropReason::BadLength);
                }
                if cookie != s.cookie {
                    return Err(DropReason::BadCookie);
                }
                let lane = s.data_source(from).ok_or(DropReason::WrongSource)?;
                // Last, being the dearest: nothing a frame says counts
                // before its tag holds.
                if let Some(k) = &s.data_key {
                    let (message, tag) = bytes.split_at(HEADER_LEN + payload.len());
                    if !k.tag_matches(chunk, message, tag.get(..DATA_TAG_LEN).unwrap_or(&[])) {
                        return Err(DropReason::BadSeal);
                    }
                }
                s.idle_since = None;
                s.high = s.high.max(chunk + 1);
                if let Some(l) = lane {
                    s.lane_high[l] = s.lane_high[l].max(chunk + 1);
                }
                if !s.chunks.insert(chunk) {
                    return Err(DropReason::Duplicate);
                }
                self.last_progress = now;
                self.first_data.get_or_insert(now);
                self.bytes += payload.len() as u64;
                let offset = chunk * u64::from(s.info.chunk_size);
                self.maybe_verify();
                Ok(Some((offset, payload)))
            }
            Message::Meta { session, last, info } => {
                if session != s.id {
                    return Err(DropReason::WrongSession);
                }
                // Sealed, but posted again on purpose: no replay check.
                if let Some(k) = &self.cfg.keys {
                    k.open(Direction::ToReceiver, bytes).ok_or(DropReason::BadSeal)?;
                }
                if cookie != s.cookie {
                    return Err(DropReason::BadCookie);
                }
                let lane = s.data_source(from).ok_or(DropReason::WrongSource)?;
                if !info.same_transfer(&s.info) {
                    return Err(DropReason::InfoMismatch);
                }
                s.info.digest = s.info.digest.or(info.digest);
                if last {
                    s.end_seen = true;
                    s.markers += 1;
                    // It travels behind its lane's data: that lane is done.
                    if let Some(l) = lane {
                        s.lane_high[l] = s.info.n_chunks;
                    }
                }
                self.maybe_verify();
                Ok(None)
            }
            _ => Err(DropReason::WrongKind),
        }
    }

    /// A datagram on the control socket.
    pub fn on_control(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let Err(r) = self.control(now, from, bytes) {
            self.drops.add(r);
        }
    }

    fn control(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Result<(), DropReason> {
        let (msg, cookie) = Message::parse_with_cookie(bytes).map_err(DropReason::Wire)?;
        if let Message::Hello { session, info, source, via_tcp, keyed, name, data_ports, attrs } = msg {
            if let Err(why) = self.key_matches(keyed, bytes) {
                if self.session.is_none() {
                    self.refuse(from, session, why);
                }
                return Err(DropReason::BadSeal);
            }
            let name = crate::wire::safe_file_name(name).map(str::to_string);
            let hello = HelloFields { session, info, source, via_tcp, name, data_ports, attrs };
            return self.hello(now, from, cookie, hello);
        }
        // Every sealed control message counts up: a replay is refused.
        if !self.authentic(bytes, true) {
            return Err(DropReason::BadSeal);
        }
        let s = self.session.as_mut().ok_or(DropReason::NoSession)?;
        let session = match msg {
            Message::End { session, .. } | Message::Abort { session, .. } => session,
            _ => return Err(DropReason::WrongKind),
        };
        if from != s.peer {
            return Err(DropReason::WrongSource);
        }
        if session != s.id {
            return Err(DropReason::WrongSession);
        }
        if cookie != s.cookie {
            return Err(DropReason::BadCookie);
        }
        match msg {
            Message::End { info, retransmits, .. } => {
                if !info.same_transfer(&s.info) {
                    return Err(DropReason::InfoMismatch);
                }
                s.info.digest = s.info.digest.or(info.digest);
                s.end_probed = true;
                self.peer_retransmits = self.peer_retransmits.max(retransmits);
                match &mut self.state {
                    State::Complete { ok, last_probe } => {
                        *last_probe = now;
                        let digest = s.digest.unwrap_or([0; 32]);
                        let reply = s.encode(&Message::Done { session, ok: *ok, digest });
                        self.transmit.push_back(reply);
                    }
                    // Report what is missing without waiting for the timer.
                    State::Receiving => self.next_nack = now,
                    _ => {}
                }
                self.maybe_verify();
            }
            Message::Abort { reason, .. } => self.fail(RecvError::PeerAborted(untrusted_text(reason))),
            _ => {}
        }
        Ok(())
    }

    /// Refuses a sender's Hello, telling it why; the driver learns it too
    /// ([`Receiver::take_refusal`]), for its operator.
    fn refuse(&mut self, to: SocketAddr, session: u64, reason: &str) {
        self.transmit.push_back((to, Message::Abort { session, reason }.to_vec()));
        if self.refusals.len() < MAX_QUEUED_REFUSALS {
            self.refusals.push_back((to, reason.to_string()));
        }
    }

    /// A Hello refused since the last call, and the reason its sender was
    /// given.
    pub fn take_refusal(&mut self) -> Option<(SocketAddr, String)> {
        self.refusals.pop_front()
    }

    /// Whether a Hello's sender and we agree on using a key, and its seal
    /// holds (no replay check: a Hello before the session has no counter to
    /// compare with, and only a sealed echo of the cookie opens anything).
    fn key_matches(&mut self, keyed: bool, bytes: &[u8]) -> Result<(), &'static str> {
        match (self.cfg.keys.is_some(), keyed) {
            (false, true) => Err("the sender uses a key; start the receiver with the same --key-file"),
            (true, false) => Err("this receiver requires a key; send with the same --key-file"),
            (true, true) if !self.authentic(bytes, false) => Err("wrong key: the Hello's seal does not verify"),
            _ => Ok(()),
        }
    }

    /// A Hello. Without our cookie it only earns one (no state is kept);
    /// with it, it opens the session. Every refusal tells the sender why.
    fn hello(&mut self, now: Instant, from: SocketAddr, cookie: u64, hello: HelloFields) -> Result<(), DropReason> {
        let HelloFields { session, info, source, via_tcp, name, data_ports, attrs } = hello;
        if let Some(s) = &self.session {
            if s.id != session || s.peer != from {
                let busy = Message::Abort { session, reason: "receiver busy with another session" };
                self.transmit.push_back((from, busy.to_vec()));
                return Err(DropReason::Busy);
            }
            if cookie != s.cookie {
                // A repeat of the first Hello: answer the challenge again.
                self.transmit.push_back(s.encode(&Message::HelloAck {
                    session,
                    delay_us: 0,
                    opened: false,
                    max_datagram: 0,
                }));
                return Ok(());
            }
            // Our ack was lost, or a keepalive while the sender prepares.
            if self.first_data.is_none() {
                self.last_progress = now;
            }
            self.hello_ack_due.get_or_insert(now);
            return Ok(());
        }
        if self.cfg.allow_from.is_some_and(|ip| ip != from.ip()) {
            return Err(DropReason::Refused);
        }
        if let Err((drop, reason)) = self.admissible(&info, via_tcp) {
            self.refuse(from, session, &reason);
            return Err(drop);
        }
        // Datagrams above our MTU still earn the cookie: the answer names our
        // largest datagram, and a sender that adapts says Hello again with
        // smaller chunks. One that does not is refused below, by name.
        let expected = self.cookie_for(from.ip(), session);
        if cookie != expected {
            self.cookies_sent += 1;
            let challenge =
                Message::HelloAck { session, delay_us: 0, opened: false, max_datagram: self.max_datagram() };
            self.transmit.push_back((from, challenge.encode(expected)));
            return if cookie == 0 { Ok(()) } else { Err(DropReason::BadCookie) };
        }
        if let Err(reason) = self.fits_datagram(&info, via_tcp) {
            self.refuse(from, session, &reason);
            return Err(DropReason::TooLarge);
        }
        self.session = Some(Session {
            id: session,
            cookie,
            peer: from,
            data_ports,
            info,
            via_tcp,
            chunks: ChunkSet::new(if via_tcp { 0 } else { info.n_chunks }),
            high: 0,
            high_at_last_tick: 0,
            lane_high: vec![0; data_ports.as_slice().len()],
            lane_high_at_last_tick: vec![0; data_ports.as_slice().len()],
            end_seen: false,
            end_probed: false,
            markers: 0,
            idle_since: None,
            round: 0,
            digest: None,
            loss_from: 0,
            data_key: self.cfg.keys.as_ref().filter(|_| !via_tcp).map(|k| k.data_key(session, cookie)),
        });
        self.last_progress = now;
        self.state = State::Receiving;
        self.events.push_back(Event::Start { info, peer: from, source, via_tcp, name, attrs });
        self.hello_ack_due = Some(now);
        if !via_tcp {
            self.maybe_verify();
        }
        Ok(())
    }

    /// Whether a session of `info` fits this receiver; the reason if not.
    fn admissible(&self, info: &SessionInfo, via_tcp: bool) -> Result<(), (DropReason, String)> {
        if self.cfg.tcp_only && !via_tcp {
            let why = "this receiver takes the file over TCP only (recv --mode tcp); send with --mode sendfile";
            return Err((DropReason::WrongMode, why.into()));
        }
        if let Some(max) = self.cfg.max_file_size.filter(|m| info.file_size > *m) {
            return Err((
                DropReason::TooLarge,
                format!("file of {} bytes is above this receiver's --max-size {max}", info.file_size),
            ));
        }
        if via_tcp {
            return Ok(());
        }
        // A chunk travels in one UDP datagram, so it is below 64 KiB. Tiny
        // chunks are taken only a few at a time: the bitmap and the writes
        // grow as chunks shrink, and no link needs them.
        if info.chunk_size < MIN_CHUNK_SIZE && info.n_chunks > MAX_TINY_CHUNKS {
            let why = format!("chunks of {} bytes are below this receiver's {MIN_CHUNK_SIZE}", info.chunk_size);
            return Err((DropReason::TooLarge, why));
        }
        if info.n_chunks > self.cfg.max_chunks || info.chunk_size > u32::from(u16::MAX) {
            return Err((DropReason::TooLarge, "file too large for this receiver".into()));
        }
        Ok(())
    }

    /// The largest datagram we take, for HelloAcks (0: unknown).
    fn max_datagram(&self) -> u32 {
        self.cfg.max_datagram.map_or(0, |m| u32::try_from(m).unwrap_or(u32::MAX))
    }

    /// Whether the session's datagrams fit our data path (its MTU).
    fn fits_datagram(&self, info: &SessionInfo, via_tcp: bool) -> Result<(), String> {
        if via_tcp {
            return Ok(());
        }
        let tag = if self.cfg.keys.is_some() { DATA_TAG_LEN } else { 0 };
        let datagram = HEADER_LEN + info.chunk_size as usize + tag;
        if let Some(max) = self.cfg.max_datagram.filter(|m| datagram > *m) {
            let o = self.cfg.ip_udp_overhead;
            let reason = format!(
                "the sender's packets of {} bytes are above this receiver's MTU of {} bytes; send with --packet-size {} or less",
                datagram + o,
                max + o,
                max + o
            );
            return Err(reason);
        }
        Ok(())
    }

    /// Every chunk is in and the digest to check against is known: ask the
    /// driver to verify.
    fn maybe_verify(&mut self) {
        let Some(s) = &self.session else { return };
        if matches!(self.state, State::Receiving) && !s.via_tcp && s.chunks.is_complete() && s.info.digest.is_some() {
            self.state = State::Verifying;
            self.events.push_back(Event::Verify);
        }
    }

    /// The driver hashed the output.
    pub fn verified(&mut self, now: Instant, digest: [u8; 32]) {
        let Some(s) = self.session.as_mut() else { return };
        if !matches!(self.state, State::Verifying) {
            return;
        }
        let ok = Some(digest) == s.info.digest;
        s.digest = Some(digest);
        let done = s.encode(&Message::Done { session: s.id, ok, digest });
        self.transmit.push_back(done);
        self.state = State::Complete { ok, last_probe: now };
        self.outcome = Some(if ok {
            Ok(RecvSummary { file_size: s.info.file_size, chunks: s.info.n_chunks, digest })
        } else {
            Err(RecvError::DigestMismatch)
        });
    }

    /// The driver could not go on (output could not be created, disk full...).
    /// Tells the sender and finishes with `reason`.
    pub fn abort(&mut self, reason: &str) {
        if let Some(s) = &self.session {
            self.transmit.push_back(s.encode(&Message::Abort { session: s.id, reason }));
        }
        self.fail(RecvError::Local(reason.to_string()));
    }

    fn fail(&mut self, e: RecvError) {
        self.state = State::Finished;
        if !matches!(self.outcome, Some(Ok(_))) {
            self.outcome = Some(Err(e));
        }
    }

    /// The next control datagram to send (sealed, with a key). `now` stamps
    /// the HelloAck's delay.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let (to, mut bytes) = match (self.hello_ack_due, &self.session) {
            (Some(at), Some(s)) => {
                self.hello_ack_due = None;
                let delay_us = now.saturating_duration_since(at).as_micros() as u64;
                let max_datagram = self.max_datagram();
                s.encode(&Message::HelloAck { session: s.id, delay_us, opened: true, max_datagram })
            }
            _ => self.transmit.pop_front()?,
        };
        if let Some(k) = &self.cfg.keys {
            k.seal(Direction::ToSender, self.counter.bump(), &mut bytes);
        }
        Some((to, bytes))
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`Receiver::poll_event`] has something.
    pub fn has_event(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next instant [`Receiver::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Finished => None,
            State::Complete { last_probe, .. } => Some(*last_probe + self.cfg.linger),
            State::Receiving => Some(self.next_nack.min(self.last_progress + self.cfg.idle_timeout)),
            _ => Some(self.last_progress + self.cfg.idle_timeout),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Finished => {}
            State::Complete { last_probe, .. } => {
                if now >= *last_probe + self.cfg.linger {
                    self.state = State::Finished;
                }
            }
            State::Listening | State::Verifying | State::Receiving => {
                if now >= self.last_progress + self.cfg.idle_timeout {
                    let t = self.cfg.idle_timeout;
                    let e = match (&self.session, self.first_data) {
                        (None, _) => RecvError::NoSender(t),
                        (Some(_), None) => RecvError::NoData(t),
                        (Some(_), Some(_)) => RecvError::Stalled(t),
                    };
                    // Tell the sender why, so it need not wait for its own
                    // timeout to guess.
                    if let Some(s) = &self.session {
                        let why = e.to_string();
                        let abort = s.encode(&Message::Abort { session: s.id, reason: &why });
                        self.transmit.push_back(abort);
                    }
                    self.fail(e);
                    return;
                }
                let tcp = self.session.as_ref().is_some_and(|s| s.via_tcp);
                if matches!(self.state, State::Receiving) && !tcp && now >= self.next_nack {
                    self.next_nack = now + self.cfg.nack_interval;
                    self.send_nacks(now);
                }
            }
        }
    }

    /// One NACK round: bitmaps of the missing chunks below the watermark, or a
    /// bare heartbeat when nothing is missing yet.
    fn send_nacks(&mut self, now: Instant) {
        let Some(s) = self.session.as_mut() else { return };
        // A gap above last tick's high-water mark may still be reordering, or
        // still queued in our own receive ring.
        // With lanes, the closing Meta ends only the lane it came on (see
        // `data`): data on another may still be on its way, so the data
        // path must be quiet longer before the End probe ends every lane.
        let lanes = s.lane_high.len() > 1;
        let quiet_for = if lanes { self.cfg.nack_interval * LANES_QUIET_ROUNDS } else { self.cfg.nack_interval };
        let quiet = s.idle_since.is_some_and(|t| now >= t + quiet_for);
        let watermark = if (s.end_seen && !lanes) || (s.end_probed && quiet) {
            s.info.n_chunks
        } else if lanes {
            s.lanes_watermark()
        } else {
            s.high_at_last_tick
        };
        s.high_at_last_tick = s.high;
        s.lane_high_at_last_tick.clone_from(&s.lane_high);
        s.round += 1;
        // Loss over the first-pass chunks this report newly covers.
        let covered = watermark.saturating_sub(s.loss_from);
        let loss_bp = (covered > 0).then(|| {
            let lost = s.chunks.count_missing(s.loss_from, watermark);
            (lost * 10_000 / covered) as u16
        });
        s.loss_from = s.loss_from.max(watermark);
        let mut from = 0;
        let mut part = 0u16;
        while part < self.cfg.max_nack_parts {
            let Some(base) = s.chunks.next_missing(from, watermark) else { break };
            let room = u32::try_from(watermark - base).unwrap_or(u32::MAX);
            let nbits = s.chunks.missing_bitmap(base, self.cfg.nack_window_bits.min(room), &mut self.scratch);
            let nack = Nack {
                round: s.round,
                part,
                received: s.chunks.count(),
                high: s.position(),
                prefix: s.reported_prefix(),
                base,
                nbits,
                bitmap: &self.scratch,
                loss_bp,
            };
            self.transmit.push_back(s.encode(&Message::Nack { session: s.id, nack }));
            part += 1;
            from = base + u64::from(nbits);
        }
        if part > 0 {
            tracing::debug!(
                round = s.round,
                parts = part,
                first_missing = s.chunks.next_missing(0, watermark),
                watermark,
                high = s.high,
                held = s.chunks.count(),
                end_seen = s.end_seen,
                "NACK round"
            );
        }
        if part == 0 {
            let nack = Nack {
                round: s.round,
                part: 0,
                received: s.chunks.count(),
                high: s.position(),
                prefix: s.reported_prefix(),
                base: 0,
                nbits: 0,
                bitmap: &[],
                loss_bp,
            };
            self.transmit.push_back(s.encode(&Message::Nack { session: s.id, nack }));
        }
        self.nacks_sent += u64::from(part);
    }

    /// `Some` once the transfer has succeeded or failed.
    pub fn outcome(&self) -> Option<&Result<RecvSummary, RecvError>> {
        self.outcome.as_ref()
    }

    /// True when the driver may exit: failed, or succeeded and done lingering.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "10.0.0.1:4000";
    const OTHER: &str = "10.0.0.9:4000";

    fn hello(info: SessionInfo) -> Message<'static> {
        hello_from_ports(info, DataPorts::NONE)
    }

    /// Session 7's Hello from a sender whose queues send from `data_ports`.
    fn hello_from_ports(info: SessionInfo, data_ports: DataPorts) -> Message<'static> {
        Message::Hello {
            session: 7,
            info,
            source: [0; 16],
            via_tcp: false,
            keyed: false,
            name: "",
            data_ports,
            attrs: None,
        }
    }

    /// Session 7's Hello from a sender with a key.
    fn keyed_hello(info: SessionInfo) -> Message<'static> {
        Message::Hello {
            session: 7,
            info,
            source: [0; 16],
            via_tcp: false,
            keyed: true,
            name: "",
            data_ports: DataPorts::NONE,
            attrs: None,
        }
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
        assert_eq!(msg, Message::HelloAck { session: 7, delay_us: 0, opened: false, max_datagram: 0 });
        assert_eq!(cookie, rx.cookie_for(peer.ip(), 7));
        assert_ne!(cookie, rx.cookie_for(OTHER.parse::<SocketAddr>().unwrap().ip(), 7), "bound to the address");
        // A guessed cookie is refused and counted; the right one opens.
        rx.on_control(now, peer, &hello(info).encode(cookie ^ 1));
        assert_eq!(rx.drops.get(DropReason::BadCookie), 1);
        assert!(rx.info().is_none());
        rx.on_control(now, peer, &hello(info).encode(cookie));
        assert!(matches!(rx.poll_event(), Some(Event::Start { .. })));
        let (_, ack) = rx.poll_transmit(now).expect("the opening ack");
        assert_eq!(
            Message::parse_with_cookie(&ack).unwrap().0,
            Message::HelloAck { session: 7, delay_us: 0, opened: true, max_datagram: 0 }
        );
    }

    #[test]
    fn allow_from_refuses_before_any_answer() {
        let now = Instant::now();
        let cfg = ReceiverConfig { allow_from: Some("10.0.0.1".parse().unwrap()), ..Default::default() };
        let mut rx = Receiver::new(cfg, now);
        let info = SessionInfo { file_size: 10, chunk_size: 10, n_chunks: 1, digest: None };
        rx.on_control(now, OTHER.parse().unwrap(), &hello(info).to_vec());
        assert_eq!(rx.drops.get(DropReason::Refused), 1);
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
        assert_eq!(rx.drops.get(DropReason::TooLarge), 2);
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
        assert_eq!(rx.drops.get(DropReason::TooLarge), 1);
        let (_, bytes) = rx.poll_transmit(now).expect("an abort tells the sender why");
        let Ok(Message::Abort { reason, .. }) = Message::parse(&bytes) else { panic!("an Abort") };
        assert!(reason.contains("chunks of 1 bytes are below"), "{reason}");
        rx.on_control(now, peer, &hello(tiny(MAX_TINY_CHUNKS)).to_vec());
        assert_eq!(rx.drops.get(DropReason::TooLarge), 1, "a few tiny chunks are fine");
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
        let Ok((Message::HelloAck { opened: false, max_datagram, .. }, cookie)) = Message::parse_with_cookie(&bytes)
        else {
            panic!("a cookie HelloAck")
        };
        assert_eq!(max_datagram, 1472);
        rx.on_control(now, peer, &hello(info).encode(cookie));
        assert!(rx.info().is_none());
        let (_, bytes) = rx.poll_transmit(now).expect("an abort");
        let Ok(Message::Abort { reason, .. }) = Message::parse(&bytes) else { panic!("an Abort") };
        assert!(reason.contains("MTU of 1500") && reason.contains("2980"), "{reason}");
        assert_eq!(rx.drops.get(DropReason::TooLarge), 1);
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
                Message::HelloAck { session: 7, delay_us: 0, opened: true, max_datagram: 0 }.encode(cookie),
                DropReason::WrongKind,
            ),
            (peer, Message::Meta { session: 7, last: true, info }.encode(cookie ^ 4), DropReason::BadCookie),
        ];
        for (from, bytes, reason) in &cases {
            let before = rx.drops.get(*reason);
            assert_eq!(rx.on_data(now, *from, bytes), None);
            assert_eq!(rx.drops.get(*reason), before + 1, "{reason:?}");
        }
        assert_eq!(rx.drops.total(), cases.len() as u64);
        assert_eq!(rx.chunks_received(), 0, "nothing from a stranger or malformed may be taken");
        let good = data(7, 0, &chunk);
        assert_eq!(rx.on_data(now, peer, &good), Some((0, &chunk[..])));
    }

    #[test]
    fn control_chatter_does_not_keep_a_stalled_transfer_alive() {
        let info = SessionInfo { file_size: 3000, chunk_size: 1000, n_chunks: 3, digest: Some([1; 32]) };
        let (mut rx, start, cookie) = open(info);
        let peer: SocketAddr = PEER.parse().unwrap();
        let chunk = [1u8; 1000];
        assert!(rx
            .on_data(start, peer, &Message::Data { session: 7, chunk: 0, payload: &chunk }.encode(cookie))
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
        use crate::proto::auth::{Direction, Keys};
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
        assert_eq!(rx.drops.get(DropReason::BadSeal), 1);
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
        assert_eq!(rx.drops.get(DropReason::BadSeal), 2, "the replay is dropped");
        let mut forged_meta = Message::Meta { session: 7, last: true, info }.encode(cookie);
        keys.seal(Direction::ToSender, 0, &mut forged_meta);
        assert!(rx.on_data(now, peer, &forged_meta).is_none());
        assert_eq!(rx.drops.get(DropReason::BadSeal), 3, "a Meta sealed for the wrong direction");
    }

    /// With a key, a data frame counts only once its tag holds: a forged
    /// chunk (right session, cookie and source, any payload) is dropped on
    /// arrival, moves no mark, and leaves the chunk's place to the genuine
    /// frame.
    #[test]
    fn with_a_key_a_forged_chunk_costs_nothing_but_itself() {
        use crate::proto::auth::{Direction, Keys};
        let keys = Keys::derive(&[4; 32]);
        let now = Instant::now();
        let mut rx = Receiver::new(ReceiverConfig { keys: Some(keys.clone()), ..Default::default() }, now);
        let peer: SocketAddr = PEER.parse().unwrap();
        let file: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let info = SessionInfo { file_size: 1000, chunk_size: 100, n_chunks: 10, digest: Some([1; 32]) };
        let cookie = rx.cookie_for(peer.ip(), 7);
        let mut hello = keyed_hello(info).encode(cookie);
        keys.seal(Direction::ToReceiver, 1, &mut hello);
        rx.on_control(now, peer, &hello);
        assert!(rx.info().is_some());
        let key = keys.data_key(7, cookie);
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
        let tag = Keys::derive(&[5; 32]).data_key(7, cookie).tag(9, &another_key);
        another_key.extend_from_slice(&tag);
        for bad in [&forged, &untagged, &wrong_place, &another_key] {
            assert_eq!(rx.on_data(now, peer, bad), None);
        }
        assert_eq!(rx.drops.get(DropReason::BadSeal), 4);
        assert_eq!((rx.chunks_received(), rx.bytes), (0, 0), "nothing forged was taken");
        for c in 0..10u64 {
            let frame = genuine(c);
            let (offset, payload) = rx.on_data(now, peer, &frame).expect("a genuine chunk is taken");
            assert_eq!((offset, payload), (c * 100, &file[c as usize * 100..(c as usize + 1) * 100]));
        }
        assert_eq!(rx.contiguous_bytes(), 1000);
        assert_eq!(
            rx.poll_event(),
            Some(Event::Start { info, peer, source: [0; 16], via_tcp: false, name: None, attrs: None })
        );
        assert_eq!(rx.poll_event(), Some(Event::Verify));
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
            rx.on_data(now, from, &Message::Data { session: 7, chunk: c, payload: &payload }.encode(cookie)).is_some()
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
        assert_eq!(rx.drops.get(DropReason::WrongSource), 1);
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
}
