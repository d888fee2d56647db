//! The receiving side of a transfer, as a state machine without I/O.
//!
//! The driver feeds it datagrams (data path and control path) and the current
//! time; it answers with where to write each payload, control datagrams to
//! send, and events the driver must act on (create the output, verify it).

mod drops;
mod handshake;
mod opener;
mod session;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::auth::{Counter, Direction, Keys, ReplayGuard};
use crate::wire::message::{
    Cipher, DataHead, FileAttrs, Message, Nack, Resume, SessionInfo, SourceId, TreeShape, HEADER_LEN,
};

/// Files and directories a tree may hold unless `recv --max-files` says
/// otherwise: ESnet's largest small-file data set is 5 GB of 1 MiB files,
/// and a million entries keep the manifest's check and the receiver's
/// name index within tens of MB.
pub const DEFAULT_MAX_FILES: u64 = 1_000_000;
use crate::wire::stream::StreamHeader;

pub use drops::{DropCounts, DropReason};
use opener::Verdict;
pub use opener::{DataOpener, Opened};
use session::{HelloFields, Session, State, LANES_QUIET_ROUNDS, MAX_TINY_CHUNKS};

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Give up when no new data has arrived for this long. Control traffic
    /// does not count: only chunks the receiver did not hold yet (and, before
    /// the first chunk, the sender's keepalive Hellos while it prepares).
    pub idle_timeout: Duration,
    /// Give up when no sender has opened a session for this long; None:
    /// wait until stopped, as a server does (`recv --wait`).
    pub wait_for_sender: Option<Duration>,
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
    /// With `keys`: refuse a sender that only authenticates (`send
    /// --no-encrypt`) (`recv --require-encryption`).
    pub require_encryption: bool,
    /// Most files and directories a tree may hold (`recv --max-files`).
    pub max_files: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            idle_timeout: Duration::from_secs(10),
            wait_for_sender: None,
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
            require_encryption: false,
            max_files: DEFAULT_MAX_FILES,
        }
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
        tree: Option<TreeShape>,
    },
    /// The sender answered the driver's [`Receiver::offer_resume`]: the
    /// stream resumes at byte `from`, or (0) starts over because the
    /// sender's first bytes differ from what the output holds, whose
    /// digest must then be computed from the start again.
    Resumed { from: u64 },
    /// Every chunk is in: hash the output and call [`Receiver::verified`].
    Verify,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("no sender opened a session within {} (--wait); is the sender running and the route right?", crate::units::human_secs(*.0))]
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

/// What the receiver counted, in one place: drivers read it, only the
/// receiver writes it.
#[derive(Debug, Clone, Default)]
pub struct RecvStats {
    pub drops: DropCounts,
    /// Payload bytes accepted (each chunk once).
    pub bytes: u64,
    pub nacks_sent: u64,
    /// Retransmits the sender reported in its end probes.
    pub peer_retransmits: u64,
    pub first_data: Option<Instant>,
    /// Cookies handed out to Hellos that did not carry one yet.
    pub cookies_sent: u64,
    /// Bytes an interrupted transfer had delivered, which this session
    /// resumed after instead of receiving again.
    pub resumed_bytes: u64,
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
    stats: RecvStats,
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
            stats: RecvStats::default(),
            counter: Counter::default(),
            replay: ReplayGuard::default(),
            scratch: Vec::new(),
            refusals: VecDeque::new(),
        }
    }

    pub fn stats(&self) -> &RecvStats {
        &self.stats
    }

    /// A datagram the driver could not even take apart (not UDP, cut
    /// short): counted with the rest.
    pub fn on_undecodable(&mut self, e: crate::wire::WireError) {
        self.stats.drops.add(DropReason::Wire(e));
    }

    pub fn info(&self) -> Option<&SessionInfo> {
        self.session.as_ref().map(|s| &s.info)
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

    /// The AEAD the open session's data is encrypted with, if it is.
    pub fn encrypted(&self) -> Option<Cipher> {
        self.session.as_ref().and_then(|s| s.encrypted)
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
    /// An encrypted session's payload is opened in place, in `bytes`.
    pub fn on_data<'a>(&mut self, now: Instant, from: SocketAddr, bytes: &'a mut [u8]) -> Option<(u64, &'a [u8])> {
        self.take_data(now, from, bytes, None)
    }

    /// Whether this receiver has a key: then every session it takes is
    /// keyed, and its data frames' tags need their payload in one piece.
    pub fn keyed(&self) -> bool {
        self.cfg.keys.is_some()
    }

    /// The session's [`DataOpener`], for a keyed datagram session: a queue
    /// thread opens its frames with it before taking the receiver, so the
    /// AEAD runs on every queue at once.
    pub fn data_opener(&self) -> Option<DataOpener> {
        let s = self.session.as_ref()?;
        let key = s.data_key.clone()?;
        Some(DataOpener { session: s.id, cookie: s.cookie, key, encrypted: s.encrypted.is_some() })
    }

    /// [`Receiver::on_data`] for a frame a [`DataOpener`] opened: its
    /// verdict stands in for the tag check while the session is the one it
    /// was opened for; otherwise the frame is checked again here.
    pub fn on_data_opened<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        opened: Opened<'a>,
    ) -> Option<(u64, &'a [u8])> {
        self.take_data(now, from, opened.bytes, Some(opened.verdict))
    }

    fn take_data<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a mut [u8],
        verdict: Option<Verdict>,
    ) -> Option<(u64, &'a [u8])> {
        match self.data(now, from, bytes, verdict) {
            Ok(Some((offset, len))) => Some((offset, &bytes[HEADER_LEN..HEADER_LEN + len])),
            Ok(None) => None,
            Err(r) => {
                self.stats.drops.add(r);
                None
            }
        }
    }

    /// Checks a datagram; for a chunk to take, returns its file offset and
    /// payload length (the payload follows the header).
    fn data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &mut [u8],
        verdict: Option<Verdict>,
    ) -> Result<Option<(u64, usize)>, DropReason> {
        let (msg, cookie) = Message::parse_with_cookie(bytes).map_err(DropReason::Wire)?;
        let s = self.session.as_mut().ok_or(DropReason::NoSession)?;
        // Every check drops; their order only decides which reason is
        // counted. The cheap content checks come first so a hostile source
        // shows what it sent, and the source checks (cookie, address) last
        // before acceptance.
        match msg {
            Message::Data { session, chunk, payload } => {
                let head = DataHead { session, cookie, chunk, len: payload.len() };
                self.take_chunk(now, from, head, Some((bytes, verdict))).map(Some)
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

    /// [`Receiver::on_data`] for a datagram that came as a chain of frames
    /// (XDP multi-buffer): `head` holds the header and the payload's first
    /// part, and `rest_len` bytes follow in the chain. For a chunk to take,
    /// returns its file offset and length: the payload is `head`'s bytes
    /// after the header and the chain's, up to that length. Its bytes are
    /// never copied; only a session without a key takes one (a tag needs the
    /// payload in one piece: the driver joins a keyed session's chains).
    pub fn on_data_chain(
        &mut self,
        now: Instant,
        from: SocketAddr,
        head: &[u8],
        rest_len: usize,
    ) -> Option<(u64, usize)> {
        let taken = match DataHead::parse(head, head.len() + rest_len) {
            Ok(Some(h)) if h.len == head.len() - HEADER_LEN + rest_len => self.take_chunk(now, from, h, None),
            Ok(Some(_)) => Err(DropReason::BadLength),
            Ok(None) => Err(DropReason::WrongKind),
            Err(e) => Err(DropReason::Wire(e)),
        };
        taken.map_err(|r| self.stats.drops.add(r)).ok()
    }

    /// The checks a data frame passes before its chunk is taken, and the
    /// taking: its file offset and length. `sealed`: the frame's bytes for
    /// its tag (and a queue thread's verdict on them), for a keyed session.
    fn take_chunk(
        &mut self,
        now: Instant,
        from: SocketAddr,
        d: DataHead,
        sealed: Option<(&mut [u8], Option<Verdict>)>,
    ) -> Result<(u64, usize), DropReason> {
        let s = self.session.as_mut().ok_or(DropReason::NoSession)?;
        let (chunk, len) = (d.chunk, d.len);
        if d.session != s.id {
            return Err(DropReason::WrongSession);
        }
        if s.info.chunk_len(chunk).ok_or(DropReason::OutOfRange)? != len {
            return Err(DropReason::BadLength);
        }
        if d.cookie != s.cookie {
            return Err(DropReason::BadCookie);
        }
        let lane = s.data_source(from).ok_or(DropReason::WrongSource)?;
        if s.held_from.is_some_and(|h| chunk >= h) {
            return Err(DropReason::HeldForManifest);
        }
        if s.data_key.is_some() && s.chunks.contains(chunk) {
            // Not worth opening: its place is taken.
            return Err(DropReason::Duplicate);
        }
        // Last, being the dearest: nothing a frame says counts before its
        // tag holds.
        if let Some(k) = &s.data_key {
            let authentic = match sealed {
                Some((_, Some(v))) if (v.session, v.cookie, v.chunk) == (s.id, s.cookie, chunk) => v.authentic,
                Some((bytes, _)) => opener::open_data(k, s.encrypted.is_some(), chunk, len, bytes),
                // A chain, not joined: it cannot be checked.
                None => false,
            };
            if !authentic {
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
        self.stats.first_data.get_or_insert(now);
        self.stats.bytes += len as u64;
        let offset = chunk * u64::from(s.info.chunk_size);
        self.maybe_verify();
        Ok((offset, len))
    }

    /// A tree's session whose manifest has arrived whole while the rest is
    /// held. The driver reads it, makes the files, then calls
    /// [`Receiver::release_hold`].
    pub fn manifest_arrived(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.held_from.is_some_and(|h| s.chunks.prefix() >= h))
    }

    /// The driver holds the stream's first `from` bytes from an interrupted
    /// transfer, verified against its journal, with `hash` their digest
    /// (the session's hasher): offered in the HelloAck, before any data.
    /// The sender hashes its own first `from` bytes and answers; the
    /// stream resumes only where the two agree ([`Event::Resumed`]).
    pub fn offer_resume(&mut self, from: u64, hash: [u8; 32]) {
        let Some(s) = self.session.as_mut() else { return };
        if s.resume.is_none() && self.stats.first_data.is_none() && from > 0 && from <= s.info.file_size {
            s.resume = Some(Resume::Offer { from, hash });
        }
    }

    /// The sender's answer to our offer (a Hello's `resume_from`): its
    /// offset taken only when it is the one offered, anything else read as
    /// "start over". Answered by the next HelloAck, and repeated there.
    fn settle_resume(&mut self, answer: u64) {
        let Some(s) = self.session.as_mut() else { return };
        let Some(Resume::Offer { from, .. }) = s.resume else { return };
        let from = if answer == from { from } else { 0 };
        s.resume = Some(Resume::Settled { from });
        if !s.via_tcp {
            let whole_chunks = from / u64::from(s.info.chunk_size);
            let upto = if from == s.info.file_size { s.info.n_chunks } else { whole_chunks };
            for c in 0..upto {
                s.chunks.insert(c);
            }
            // As if the first pass had come this far: the sender's window
            // and the loss reports count from here.
            s.high = s.high.max(upto);
            s.high_at_last_tick = s.high_at_last_tick.max(upto);
            s.loss_from = s.loss_from.max(upto);
            for h in s.lane_high.iter_mut().chain(s.lane_high_at_last_tick.iter_mut()) {
                *h = (*h).max(upto);
            }
        }
        self.stats.resumed_bytes = from;
        self.events.push_back(Event::Resumed { from });
        self.maybe_verify();
    }

    /// Where the session's stream resumes once settled (0 when it does
    /// not): a TCP session's streams carry the bytes from there.
    pub fn resumed_from(&self) -> u64 {
        match self.session.as_ref().and_then(|s| s.resume) {
            Some(Resume::Settled { from }) => from,
            _ => 0,
        }
    }

    /// The files of a tree are made: take the chunks past its manifest.
    pub fn release_hold(&mut self) {
        if let Some(s) = self.session.as_mut() {
            s.held_from = None;
        }
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
                s.encode(&Message::HelloAck {
                    session: s.id,
                    delay_us,
                    opened: true,
                    tcp_only: false,
                    max_datagram,
                    resume: s.resume,
                })
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
            _ => self.silence_limit().map(|t| self.last_progress + t),
        }
    }

    /// How long the receiver waits for the next sign of a sender: a
    /// session at all (`wait_for_sender`), or new data in one.
    fn silence_limit(&self) -> Option<Duration> {
        match self.session {
            None => self.cfg.wait_for_sender,
            Some(_) => Some(self.cfg.idle_timeout),
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
                if let Some(t) = self.silence_limit().filter(|&t| now >= self.last_progress + t) {
                    let e = match (&self.session, self.stats.first_data) {
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
        self.stats.nacks_sent += u64::from(part);
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
