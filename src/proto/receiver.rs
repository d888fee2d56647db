//! The receiving side of a transfer, as a state machine without I/O.
//!
//! The driver feeds it datagrams (data path and control path) and the current
//! time; it answers with where to write each payload, control datagrams to
//! send, and events the driver must act on (create the output, verify it).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::chunkset::ChunkSet;
use crate::wire::message::{Message, Nack, SessionInfo};
use crate::wire::WireError;

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Give up when nothing arrives from the sender for this long.
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
    /// A Hello for a file with more chunks than `max_chunks`, or chunks no
    /// datagram can carry.
    TooLarge,
}

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        DropReason::Wire(WireError::Truncated),
        DropReason::Wire(WireError::BadMagic),
        DropReason::Wire(WireError::BadVersion),
        DropReason::Wire(WireError::BadLength),
        DropReason::Wire(WireError::UnknownKind),
        DropReason::Wire(WireError::BadBody),
        DropReason::Wire(WireError::NotUdp),
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
    ];

    fn index(self) -> usize {
        match self {
            DropReason::Wire(WireError::Truncated) => 0,
            DropReason::Wire(WireError::BadMagic) => 1,
            DropReason::Wire(WireError::BadVersion) => 2,
            DropReason::Wire(WireError::BadLength) => 3,
            DropReason::Wire(WireError::UnknownKind) => 4,
            DropReason::Wire(WireError::BadBody) => 5,
            DropReason::Wire(WireError::NotUdp) => 6,
            DropReason::NoSession => 7,
            DropReason::WrongSource => 8,
            DropReason::WrongSession => 9,
            DropReason::OutOfRange => 10,
            DropReason::BadLength => 11,
            DropReason::Duplicate => 12,
            DropReason::WrongKind => 13,
            DropReason::InfoMismatch => 14,
            DropReason::Busy => 15,
            DropReason::TooLarge => 16,
        }
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
    /// A session opened: prepare an output of `info.file_size` bytes. On failure
    /// call [`Receiver::abort`].
    Start { info: SessionInfo, peer: SocketAddr },
    /// Every chunk is in: hash the output and call [`Receiver::verified`].
    Verify,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("no data from the sender for {0:?} (idle timeout); is the sender running and the route right?")]
    IdleTimeout(Duration),
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
    peer: SocketAddr,
    info: SessionInfo,
    chunks: ChunkSet,
    /// Highest chunk index seen + 1, now and at the previous NACK tick.
    high: u64,
    high_at_last_tick: u64,
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
}

impl Session {
    /// How far through the sender's send sequence we have seen: the first
    /// pass's high-water mark, then `n_chunks` plus the closing markers seen.
    fn position(&self) -> u64 {
        if self.markers > 0 {
            self.info.n_chunks + self.markers
        } else {
            self.high
        }
    }
}

#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    state: State,
    session: Option<Session>,
    last_heard: Instant,
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
    scratch: Vec<u8>,
}

impl Receiver {
    pub fn new(cfg: ReceiverConfig, now: Instant) -> Receiver {
        Receiver {
            next_nack: now + cfg.nack_interval,
            cfg,
            state: State::Listening,
            session: None,
            last_heard: now,
            transmit: VecDeque::new(),
            hello_ack_due: None,
            events: VecDeque::new(),
            outcome: None,
            drops: DropCounts::default(),
            bytes: 0,
            nacks_sent: 0,
            peer_retransmits: 0,
            first_data: None,
            scratch: Vec::new(),
        }
    }

    pub fn info(&self) -> Option<&SessionInfo> {
        self.session.as_ref().map(|s| &s.info)
    }

    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.session.as_ref().map(|s| s.peer)
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
        self.session.as_ref().map_or(0, |s| (s.chunks.prefix() * u64::from(s.info.chunk_size)).min(s.info.file_size))
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
        let msg = Message::parse(bytes).map_err(DropReason::Wire)?;
        let s = self.session.as_mut().ok_or(DropReason::NoSession)?;
        // Every check drops; their order only decides which reason is
        // counted. The cheap content checks come first so a hostile source
        // shows what it sent, and the source check last before acceptance.
        match msg {
            Message::Data { session, chunk, payload } => {
                if session != s.id {
                    return Err(DropReason::WrongSession);
                }
                let want = s.info.chunk_len(chunk).ok_or(DropReason::OutOfRange)?;
                if payload.len() != want {
                    return Err(DropReason::BadLength);
                }
                if from != s.peer {
                    return Err(DropReason::WrongSource);
                }
                self.last_heard = now;
                s.idle_since = None;
                s.high = s.high.max(chunk + 1);
                if !s.chunks.insert(chunk) {
                    return Err(DropReason::Duplicate);
                }
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
                if from != s.peer {
                    return Err(DropReason::WrongSource);
                }
                if !info.same_transfer(&s.info) {
                    return Err(DropReason::InfoMismatch);
                }
                self.last_heard = now;
                s.info.digest = s.info.digest.or(info.digest);
                if last {
                    s.end_seen = true;
                    s.markers += 1;
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
        let msg = Message::parse(bytes).map_err(DropReason::Wire)?;
        match msg {
            Message::Hello { session, info } => match &self.session {
                None => {
                    if self.cfg.allow_from.is_some_and(|ip| ip != from.ip()) {
                        return Err(DropReason::WrongSource);
                    }
                    // A chunk travels in one UDP datagram, so it is below 64 KiB.
                    if info.n_chunks > self.cfg.max_chunks || info.chunk_size > u32::from(u16::MAX) {
                        let reason = "file too large for this receiver";
                        self.transmit.push_back((from, Message::Abort { session, reason }.to_vec()));
                        return Err(DropReason::TooLarge);
                    }
                    self.session = Some(Session {
                        id: session,
                        peer: from,
                        info,
                        chunks: ChunkSet::new(info.n_chunks),
                        high: 0,
                        high_at_last_tick: 0,
                        end_seen: false,
                        end_probed: false,
                        markers: 0,
                        idle_since: None,
                        round: 0,
                        digest: None,
                        loss_from: 0,
                    });
                    self.last_heard = now;
                    self.state = State::Receiving;
                    self.events.push_back(Event::Start { info, peer: from });
                    self.hello_ack_due = Some(now);
                    self.maybe_verify();
                    Ok(())
                }
                Some(s) if s.id == session && s.peer == from => {
                    // Our ack was lost: say it again.
                    self.last_heard = now;
                    self.hello_ack_due.get_or_insert(now);
                    Ok(())
                }
                Some(_) => {
                    self.transmit.push_back((
                        from,
                        Message::Abort { session, reason: "receiver busy with another session" }.to_vec(),
                    ));
                    Err(DropReason::Busy)
                }
            },
            Message::End { session, info, retransmits } => {
                let s = self.session.as_mut().ok_or(DropReason::NoSession)?;
                if from != s.peer {
                    return Err(DropReason::WrongSource);
                }
                if session != s.id {
                    return Err(DropReason::WrongSession);
                }
                if !info.same_transfer(&s.info) {
                    return Err(DropReason::InfoMismatch);
                }
                self.last_heard = now;
                s.info.digest = s.info.digest.or(info.digest);
                s.end_probed = true;
                self.peer_retransmits = self.peer_retransmits.max(retransmits);
                match &mut self.state {
                    State::Complete { ok, last_probe } => {
                        *last_probe = now;
                        let digest = s.digest.unwrap_or([0; 32]);
                        self.transmit.push_back((from, Message::Done { session, ok: *ok, digest }.to_vec()));
                    }
                    // Report what is missing without waiting for the timer.
                    State::Receiving => self.next_nack = now,
                    _ => {}
                }
                self.maybe_verify();
                Ok(())
            }
            Message::Abort { session, reason } => {
                let s = self.session.as_ref().ok_or(DropReason::NoSession)?;
                if from != s.peer || session != s.id {
                    return Err(DropReason::WrongSource);
                }
                self.fail(RecvError::PeerAborted(reason.to_string()));
                Ok(())
            }
            _ => Err(DropReason::WrongKind),
        }
    }

    /// Every chunk is in and the digest to check against is known: ask the
    /// driver to verify.
    fn maybe_verify(&mut self) {
        let Some(s) = &self.session else { return };
        if matches!(self.state, State::Receiving) && s.chunks.is_complete() && s.info.digest.is_some() {
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
        self.transmit.push_back((s.peer, Message::Done { session: s.id, ok, digest }.to_vec()));
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
            self.transmit.push_back((s.peer, Message::Abort { session: s.id, reason }.to_vec()));
        }
        self.fail(RecvError::Local(reason.to_string()));
    }

    fn fail(&mut self, e: RecvError) {
        self.state = State::Finished;
        if !matches!(self.outcome, Some(Ok(_))) {
            self.outcome = Some(Err(e));
        }
    }

    /// The next control datagram to send. `now` stamps the HelloAck's delay.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if let (Some(at), Some(s)) = (self.hello_ack_due, &self.session) {
            self.hello_ack_due = None;
            let delay_us = now.saturating_duration_since(at).as_micros() as u64;
            return Some((s.peer, Message::HelloAck { session: s.id, delay_us }.to_vec()));
        }
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant [`Receiver::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Finished => None,
            State::Complete { last_probe, .. } => Some(*last_probe + self.cfg.linger),
            State::Receiving => Some(self.next_nack.min(self.last_heard + self.cfg.idle_timeout)),
            _ => Some(self.last_heard + self.cfg.idle_timeout),
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
                if now >= self.last_heard + self.cfg.idle_timeout {
                    self.fail(RecvError::IdleTimeout(self.cfg.idle_timeout));
                    return;
                }
                if matches!(self.state, State::Receiving) && now >= self.next_nack {
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
        let quiet = s.idle_since.is_some_and(|t| now >= t + self.cfg.nack_interval);
        let watermark = if s.end_seen || (s.end_probed && quiet) { s.info.n_chunks } else { s.high_at_last_tick };
        s.high_at_last_tick = s.high;
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
                base,
                nbits,
                bitmap: &self.scratch,
                loss_bp,
            };
            self.transmit.push_back((s.peer, Message::Nack { session: s.id, nack }.to_vec()));
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
                base: 0,
                nbits: 0,
                bitmap: &[],
                loss_bp,
            };
            self.transmit.push_back((s.peer, Message::Nack { session: s.id, nack }.to_vec()));
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

    fn open(info: SessionInfo) -> (Receiver, Instant) {
        let now = Instant::now();
        let mut rx = Receiver::new(ReceiverConfig::default(), now);
        rx.on_control(now, PEER.parse().unwrap(), &Message::Hello { session: 7, info }.to_vec());
        (rx, now)
    }

    #[test]
    fn hello_for_an_oversized_file_is_refused_with_an_abort() {
        let now = Instant::now();
        let cfg = ReceiverConfig { max_chunks: 100, ..Default::default() };
        let mut rx = Receiver::new(cfg, now);
        let peer: SocketAddr = PEER.parse().unwrap();
        for info in [
            SessionInfo { file_size: 1_000_000, chunk_size: 1000, n_chunks: 1000, digest: None },
            SessionInfo { file_size: 70_000, chunk_size: 70_000, n_chunks: 1, digest: None },
        ] {
            rx.on_control(now, peer, &Message::Hello { session: 7, info }.to_vec());
            assert!(rx.info().is_none(), "no session may open for {info:?}");
            let (to, bytes) = rx.poll_transmit(now).expect("an abort tells the sender why");
            assert_eq!(to, peer);
            assert!(matches!(Message::parse(&bytes), Ok(Message::Abort { .. })));
        }
        assert_eq!(rx.drops.get(DropReason::TooLarge), 2);
        assert!(rx.poll_event().is_none());
    }

    #[test]
    fn drops_are_counted_by_what_was_wrong() {
        let info = SessionInfo { file_size: 2500, chunk_size: 1000, n_chunks: 3, digest: None };
        let (mut rx, now) = open(info);
        let other: SocketAddr = OTHER.parse().unwrap();
        let peer: SocketAddr = PEER.parse().unwrap();
        let chunk = [1u8; 1000];
        let cases: [(SocketAddr, Vec<u8>, DropReason); 6] = [
            (other, Message::Data { session: 8, chunk: 0, payload: &chunk }.to_vec(), DropReason::WrongSession),
            (other, Message::Data { session: 7, chunk: 3, payload: &chunk[..500] }.to_vec(), DropReason::OutOfRange),
            (other, Message::Data { session: 7, chunk: 2, payload: &chunk }.to_vec(), DropReason::BadLength),
            (other, Message::Data { session: 7, chunk: 0, payload: &chunk }.to_vec(), DropReason::WrongSource),
            (peer, b"XBLS".to_vec(), DropReason::Wire(WireError::Truncated)),
            (peer, Message::HelloAck { session: 7, delay_us: 0 }.to_vec(), DropReason::WrongKind),
        ];
        for (from, bytes, reason) in &cases {
            assert_eq!(rx.on_data(now, *from, bytes), None);
            assert_eq!(rx.drops.get(*reason), 1, "{reason:?}");
        }
        assert_eq!(rx.drops.total(), cases.len() as u64);
        assert_eq!(rx.chunks_received(), 0, "nothing from a stranger or malformed may be taken");
        let good = Message::Data { session: 7, chunk: 0, payload: &chunk }.to_vec();
        assert_eq!(rx.on_data(now, peer, &good), Some((0, &chunk[..])));
    }
}
