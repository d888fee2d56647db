//! The sending side of a transfer, as a state machine without I/O.
//!
//! It decides which prebuilt frame goes out next (the transmit plan: the
//! first-pass Meta, retransmits with priority, the first pass in order, the
//! closing Meta) and which control datagrams to send (Hello, end probes). The
//! driver owns the rings and the socket; frames are never modified, so a
//! retransmit is the same frame posted again. What the receiver says is
//! taken in [`control`].

mod control;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::proto::auth::{Counter, Direction, Keys, ReplayGuard, DATA_TAG_LEN};
use crate::wire::message::{Message, SessionInfo, SourceId, HEADER_LEN};
use crate::wire::untrusted_text;

/// How far ahead of the last NACK round it accepted a sender takes a new
/// one. The receiver numbers a round per tick (5 ms by default), so this is
/// minutes of rounds; a forged round far ahead would otherwise make every
/// real one look stale for ever.
pub const MAX_ROUND_JUMP: u64 = 1 << 16;

/// Mid-transfer silence from the receiver (which reports every 5 ms) after
/// which the sender says Hello, to learn whether it is still there.
pub const SILENCE_PROBE_AFTER: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Hello is repeated this often until acknowledged.
    pub hello_interval: Duration,
    /// End probes are repeated this often while nothing is left to send.
    pub probe_interval: Duration,
    /// Give up when the transfer has not moved for this long: no answer to
    /// the Hello, or no new chunk reported held by the receiver (control
    /// chatter does not count).
    pub timeout: Duration,
    /// Least time between the last retransmit of a repair round and accepting
    /// the next round, so chunks still in flight are not sent twice. Raised to
    /// twice the handshake round trip when that is longer.
    pub repair_guard: Duration,
    /// Flow control: the first pass runs at most this many chunks ahead of the
    /// receiver's reported high-water mark. Together with `max_repairs` it
    /// should not exceed what the receiver can buffer (its RX ring).
    pub window: u64,
    /// Most chunks taken from one NACK round; the rest come in later rounds.
    pub max_repairs: usize,
    /// A full window with no progress for this long re-posts its last chunk.
    pub tail_probe_after: Duration,
    /// Names the input file in the Hello, so a receiver about to write over
    /// it refuses.
    pub source: SourceId,
    /// Ask for the file over TCP (the fallback where AF_XDP cannot run).
    pub via_tcp: bool,
    /// Seal every control message, and require the receiver's to be sealed
    /// (`--key-file`).
    pub keys: Option<Keys>,
    /// With `keys`: the payloads are encrypted with this AEAD (the Hello
    /// says so), not only tagged.
    pub encrypt: Option<crate::wire::message::Cipher>,
    /// The input file's name (no directory), for a receiver whose output is
    /// a directory.
    pub name: String,
    /// The source ports of the transmit queues (the Hello lists them), when
    /// there are several.
    pub data_ports: crate::wire::message::DataPorts,
    /// The input's mode and mtime, which the receiver gives its copy.
    pub attrs: Option<crate::wire::message::FileAttrs>,
    /// The session carries a tree: its stream starts with the manifest.
    pub tree: Option<crate::wire::message::TreeShape>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            hello_interval: Duration::from_millis(100),
            probe_interval: Duration::from_millis(20),
            timeout: Duration::from_secs(10),
            repair_guard: Duration::from_millis(10),
            window: 12288,
            max_repairs: 4096,
            tail_probe_after: Duration::from_millis(30),
            source: [0; 16],
            via_tcp: false,
            keys: None,
            encrypt: None,
            name: String::new(),
            data_ports: crate::wire::message::DataPorts::NONE,
            attrs: None,
            tree: None,
        }
    }
}

/// A prebuilt frame the driver should post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameId {
    Data(u64),
    /// Session info on the data path: first packet (`last == false`) and the
    /// packet that ends the first pass (`last == true`).
    Meta {
        last: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no answer from the receiver for {} during the handshake; is `xdpblast recv` running and reachable?", crate::units::human_secs(*.0))]
    HandshakeTimeout(Duration),
    #[error("the receiver went silent for {} mid-transfer", crate::units::human_secs(*.0))]
    Timeout(Duration),
    #[error(
        "the receiver has taken in none of our data in {secs}; are our {size}-byte packets above an MTU on the path? (lower --packet-size)",
        secs = crate::units::human_secs(*.0),
        size = .1
    )]
    NothingArrived(Duration, usize),
    #[error("the receiver reported no new data for {}, whatever else it said", crate::units::human_secs(*.0))]
    Stalled(Duration),
    #[error("the receiver reports a digest mismatch: the file it rebuilt differs from ours")]
    DigestMismatch,
    #[error("the receiver aborted: {0}")]
    ReceiverAborted(String),
    #[error("this receiver takes the file over TCP only (recv --mode tcp); send with --mode sendfile")]
    ReceiverTakesTcpOnly,
    #[error(
        "no sealed answer from the receiver for {secs}; it refused us without the key: {reason} (the receiver may have no key or another one; with a key an unsealed refusal is never trusted, since anyone on the path could forge it)",
        secs = crate::units::human_secs(*.0),
        reason = .1
    )]
    RefusedUnsealed(Duration, String),
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SendStats {
    /// Data frames posted in the first pass.
    pub first_pass: u64,
    /// Data frames posted again because the receiver reported them missing.
    pub retransmits: u64,
    pub meta_frames: u64,
    pub end_probes: u64,
    pub nack_rounds: u64,
    /// NACKs ignored as stale or too soon after a repair.
    pub nacks_ignored: u64,
    /// Chunks the receiver last reported holding.
    pub peer_received: u64,
    /// The receiver's contiguous prefix: every chunk below it is delivered.
    pub peer_prefix: u64,
    /// NACKed chunks whose frame was already reused (never, from an honest
    /// receiver: frames are reused only below its reported prefix).
    pub repairs_unavailable: u64,
    /// The receiver's last reported high-water mark.
    pub peer_high: u64,
    /// Times the first pass had to wait for the receiver (window full).
    pub window_stalls: u64,
    /// Tail chunks re-posted because a full window saw no progress.
    pub tail_probes: u64,
    /// Loss reports received (one per NACK round), for rate adaptation.
    pub loss_reports: u64,
    /// NACKs dropped: a round too far ahead, or counts beyond the file.
    pub nacks_out_of_window: u64,
    /// Datagrams from the receiver's address without its cookie.
    pub bad_cookie: u64,
    /// With a key: datagrams whose seal did not verify, or replayed.
    pub bad_seal: u64,
    /// Hellos sent mid-transfer to a receiver silent for
    /// [`SILENCE_PROBE_AFTER`].
    pub silence_probes: u64,
}

/// Where a session stands on resuming an interrupted transfer (the
/// receiver offers, we check and answer, it settles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResumeStage {
    /// Nothing offered: the stream starts at 0.
    None,
    /// The receiver holds the stream's first `from` bytes, digest `hash`;
    /// the driver checks them against ours ([`Sender::resume_offer`]).
    Offered {
        from: u64,
        hash: [u8; 32],
    },
    /// Our answer (`from`, or 0 to start over) goes in every Hello until
    /// the receiver's HelloAck settles it.
    Answered {
        from: u64,
    },
    Settled {
        from: u64,
    },
}

#[derive(Debug)]
enum State {
    /// Saying Hello until acknowledged, and (the driver still preloading)
    /// until [`Sender::start`] supplies the digest. Hellos after the ack are
    /// keepalives that hold the receiver's idle timer off.
    Handshake {
        last_hello: Option<Instant>,
        next_hello: Instant,
        acked: bool,
    },
    Transfer,
    Finished,
}

#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    session: u64,
    info: SessionInfo,
    state: State,
    next_first_pass: u64,
    /// The driver called [`Sender::start`].
    started: bool,
    meta_first_sent: bool,
    meta_last_sent: bool,
    repairs: VecDeque<u64>,
    round: Option<u64>,
    round_parts: HashSet<u16>,
    last_repair_post: Option<Instant>,
    repair_guard: Duration,
    /// Since when the window has been full without the receiver moving it.
    stalled_since: Option<Instant>,
    /// For each repaired chunk, the position in the send sequence when the
    /// repair was posted: during the first pass, the next first-pass chunk;
    /// after it, `n_chunks` + closing markers posted so far. The data path is
    /// FIFO, so the receiver cannot have seen the repair until its reported
    /// position passes that one; a NACK naming the chunk before then is stale,
    /// not a second loss.
    repair_pos: HashMap<u64, u64>,
    /// Closing Metas posted: the first ends the first pass, each later one
    /// follows a round of repairs and marks how far the receiver has got.
    markers_posted: u64,
    /// A repair went out after the pass; a marker must follow the round.
    marker_due: bool,
    /// The receiver's cookie, from its first HelloAck.
    cookie: Option<u64>,
    /// The receiver's largest datagram, from its first HelloAck, when ours
    /// are larger: the driver must [`Sender::reshape`] before the handshake
    /// goes on (no Hello is sent meanwhile).
    reshape_to: Option<u32>,
    /// With a key: our control messages' counter, and the receiver's seen.
    counter: Counter,
    replay: ReplayGuard,
    /// With a key: the reason of an unsealed Abort heard before the cookie.
    /// A receiver without our key can refuse us no other way, but anyone
    /// could have sent it, so it only explains a handshake that times out.
    unsealed_refusal: Option<String>,
    /// Chunks the driver can post: `[floor, readable)` (a bounded UMEM holds
    /// only a window of the file).
    readable: u64,
    floor: u64,
    ring_full: bool,
    /// The last NACK round taken in (heartbeats included): the anchor of the
    /// window of rounds accepted.
    latest_round: u64,
    /// When the transfer last moved (the handshake went on, the receiver
    /// reported new chunks); the timeout runs from here.
    last_progress: Instant,
    /// When the receiver last said anything at all (for the error's words).
    last_heard: Instant,
    /// Mid-transfer, no Hello goes out to a silent receiver before this.
    next_silence_probe: Instant,
    next_probe: Instant,
    outcome: Option<Result<(), SendError>>,
    pub stats: SendStats,
    pub rtt: Option<Duration>,
    /// The worst loss reported since the driver last asked, in basis points.
    loss_unread: Option<u16>,
    /// The first chunk the receiver's latest report names missing.
    peer_first_missing: Option<u64>,
    /// After the receiver's Done: one last End with the final counts.
    final_end_due: bool,
    resume: ResumeStage,
}

impl Sender {
    pub fn new(cfg: SenderConfig, session: u64, info: SessionInfo, now: Instant) -> Sender {
        Sender {
            repair_guard: cfg.repair_guard,
            cfg,
            session,
            info,
            state: State::Handshake { last_hello: None, next_hello: now, acked: false },
            next_first_pass: 0,
            started: false,
            meta_first_sent: false,
            meta_last_sent: false,
            repairs: VecDeque::new(),
            round: None,
            round_parts: HashSet::new(),
            last_repair_post: None,
            stalled_since: None,
            repair_pos: HashMap::new(),
            markers_posted: 0,
            marker_due: false,
            cookie: None,
            reshape_to: None,
            counter: Counter::default(),
            replay: ReplayGuard::default(),
            unsealed_refusal: None,
            readable: info.n_chunks,
            floor: 0,
            ring_full: false,
            latest_round: 0,
            last_progress: now,
            last_heard: now,
            next_silence_probe: now,
            next_probe: now,
            outcome: None,
            stats: SendStats::default(),
            rtt: None,
            loss_unread: None,
            peer_first_missing: None,
            final_end_due: false,
            resume: ResumeStage::None,
        }
    }

    /// Bytes of a full data datagram: header, chunk, and with a key its tag.
    fn datagram_len(&self) -> usize {
        let tag = if self.cfg.keys.is_some() { DATA_TAG_LEN } else { 0 };
        HEADER_LEN + self.info.chunk_size as usize + tag
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The receiver takes datagrams of at most this many bytes, fewer than
    /// ours: the driver plans smaller chunks and calls [`Sender::reshape`].
    pub fn reshape_needed(&self) -> Option<u32> {
        self.reshape_to
    }

    /// Takes the driver's new plan (smaller chunks) during the handshake;
    /// the next Hello carries it.
    pub fn reshape(&mut self, info: SessionInfo) {
        if matches!(self.state, State::Handshake { acked: false, .. }) {
            self.readable = info.n_chunks;
            self.info = info;
            self.reshape_to = None;
        }
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    pub fn is_transferring(&self) -> bool {
        matches!(self.state, State::Transfer)
    }

    /// The receiver has acknowledged the Hello, and where the stream
    /// starts is settled.
    pub fn is_acked(&self) -> bool {
        let settled = matches!(self.resume, ResumeStage::None | ResumeStage::Settled { .. });
        matches!(self.state, State::Handshake { acked: true, .. } | State::Transfer) && settled
    }

    /// The receiver offers to resume: it holds the stream's first `from`
    /// bytes, whose digest (with the session's hasher) is `hash`. The
    /// driver hashes its own and answers with [`Sender::answer_resume`].
    pub fn resume_offer(&self) -> Option<(u64, [u8; 32])> {
        match self.resume {
            ResumeStage::Offered { from, hash } => Some((from, hash)),
            _ => None,
        }
    }

    /// Our answer to the receiver's offer: resume there (`accept`), or
    /// start over. Said at once in a Hello, and in each until settled.
    pub fn answer_resume(&mut self, now: Instant, accept: bool) {
        if let ResumeStage::Offered { from, .. } = self.resume {
            self.resume = ResumeStage::Answered { from: if accept { from } else { 0 } };
            if let State::Handshake { next_hello, .. } = &mut self.state {
                *next_hello = now;
            }
        }
    }

    /// The byte where the stream resumed, once settled (0: from the start).
    pub fn resumed_from(&self) -> u64 {
        match self.resume {
            ResumeStage::Settled { from } => from,
            _ => 0,
        }
    }

    /// A HelloAck's resume part: an offer is taken once, before we answer;
    /// the receiver's settlement must echo our answer. The first pass then
    /// starts at the first chunk the receiver does not hold whole.
    fn take_resume(&mut self, resume: Option<crate::wire::message::Resume>) {
        use crate::wire::message::Resume;
        match (self.resume, resume) {
            (ResumeStage::None, Some(Resume::Offer { from, hash })) if from <= self.info.file_size => {
                self.resume = ResumeStage::Offered { from, hash };
            }
            (ResumeStage::Answered { from: ours }, Some(Resume::Settled { from })) if from == ours => {
                self.resume = ResumeStage::Settled { from };
                self.next_first_pass = if from == self.info.file_size {
                    self.info.n_chunks
                } else {
                    from / u64::from(self.info.chunk_size)
                };
                // The receiver holds these: the window counts from there.
                self.stats.peer_high = self.stats.peer_high.max(self.next_first_pass);
            }
            _ => {}
        }
    }

    /// The receiver's cookie, once its first HelloAck came.
    pub fn cookie(&self) -> Option<u64> {
        self.cookie
    }

    /// The driver is ready to send: data may flow once (or as soon as) the
    /// receiver has acknowledged. The digest may follow later
    /// ([`Sender::set_digest`]); the pass does not close without it.
    pub fn start(&mut self, now: Instant) {
        self.started = true;
        if self.is_acked() && matches!(self.state, State::Handshake { .. }) {
            self.state = State::Transfer;
            self.last_progress = now;
        }
    }

    /// The whole file's digest, known once the file has been read.
    pub fn set_digest(&mut self, digest: [u8; 32]) {
        self.info.digest = Some(digest);
    }

    /// Chunks the driver holds built: `[floor, readable)`. The first pass
    /// waits at `readable`; a repair below `floor` cannot be posted.
    /// `ring_full`: the driver cannot build more until the receiver's prefix
    /// moves (as opposed to still reading).
    pub fn set_readable(&mut self, floor: u64, readable: u64, ring_full: bool) {
        self.floor = floor;
        self.readable = readable.min(self.info.n_chunks);
        self.ring_full = ring_full;
    }

    /// Where the send sequence stands (see `repair_pos`).
    fn position(&self) -> u64 {
        if self.meta_last_sent {
            self.info.n_chunks + self.markers_posted
        } else {
            self.next_first_pass
        }
    }

    /// A tree's chunks past its manifest wait until the receiver reports
    /// the manifest delivered: it makes the files from it first, and
    /// drops what comes before.
    fn first_pass_gate(&self) -> u64 {
        match self.cfg.tree {
            Some(t) => {
                let manifest_chunks = t.manifest_len.div_ceil(u64::from(self.info.chunk_size));
                if self.stats.peer_prefix < manifest_chunks {
                    manifest_chunks
                } else {
                    u64::MAX
                }
            }
            None => u64::MAX,
        }
    }

    fn pass_done(&self) -> bool {
        self.next_first_pass >= self.info.n_chunks && self.meta_last_sent
    }

    /// Frames still queued for posting (repairs plus the rest of the first pass).
    pub fn backlog(&self) -> u64 {
        self.repairs.len() as u64 + (self.info.n_chunks - self.next_first_pass)
    }

    /// Frames that could be posted now: repairs plus first-pass chunks the
    /// driver has built.
    pub fn backlog_ready(&self) -> u64 {
        self.repairs.len() as u64 + self.readable.saturating_sub(self.next_first_pass)
    }

    /// Fills `out` with the next frames to post; returns how many.
    pub fn next_frames(&mut self, now: Instant, out: &mut [FrameId]) -> usize {
        if !matches!(self.state, State::Transfer) || self.receiver_silent(now) {
            return 0;
        }
        let mut n = 0;
        if !self.meta_first_sent && n < out.len() {
            out[n] = FrameId::Meta { last: false };
            self.meta_first_sent = true;
            self.stats.meta_frames += 1;
            n += 1;
        }
        while n < out.len() {
            if let Some(chunk) = self.repairs.pop_front() {
                out[n] = FrameId::Data(chunk);
                self.stats.retransmits += 1;
                self.last_repair_post = Some(now);
                self.repair_pos.insert(chunk, self.position());
                self.marker_due = self.meta_last_sent;
            } else if self.next_first_pass < self.readable
                && self.next_first_pass < self.stats.peer_high + self.cfg.window
                && self.next_first_pass < self.first_pass_gate()
            {
                out[n] = FrameId::Data(self.next_first_pass);
                self.next_first_pass += 1;
                self.stats.first_pass += 1;
            } else if self.next_first_pass < self.info.n_chunks
                && (self.next_first_pass < self.readable || self.ring_full)
            {
                // The window or the sender's ring is full: wait for the
                // receiver's next report. If none moves it, probe: the
                // window's tail may be lost (the receiver cannot NACK what it
                // has not seen past); with a full ring, the chunk at the
                // receiver's prefix holds everything up, and its repair may
                // have been lost while the send position stood still (so a
                // NACK for it looks like one for a repair in flight).
                match self.stalled_since {
                    None => {
                        self.stalled_since = Some(now);
                        self.stats.window_stalls += 1;
                    }
                    Some(t) if now >= t + self.cfg.tail_probe_after && self.next_first_pass > 0 => {
                        self.stalled_since = Some(now);
                        // The first chunk the receiver misses, as its latest
                        // report names it, else its prefix.
                        let head = self.peer_first_missing.unwrap_or(self.stats.peer_prefix);
                        let probe = if self.ring_full && head >= self.floor && head < self.next_first_pass {
                            head
                        } else {
                            self.next_first_pass - 1
                        };
                        out[n] = FrameId::Data(probe);
                        self.stats.retransmits += 1;
                        self.stats.tail_probes += 1;
                        n += 1;
                    }
                    Some(_) => {}
                }
                break;
            } else if (!self.meta_last_sent || self.marker_due) && self.info.digest.is_some() {
                out[n] = FrameId::Meta { last: true };
                self.meta_last_sent = true;
                self.marker_due = false;
                self.markers_posted += 1;
                self.stats.meta_frames += 1;
                // The first end probe follows one probe interval after the pass.
                self.next_probe = now + self.cfg.probe_interval;
            } else {
                break;
            }
            n += 1;
        }
        n
    }

    /// The next control datagram to send, if one is due.
    pub fn poll_control(&mut self, now: Instant) -> Option<Vec<u8>> {
        match &mut self.state {
            State::Handshake { last_hello, next_hello, .. } => {
                if now < *next_hello || self.reshape_to.is_some() {
                    return None;
                }
                *last_hello = Some(now);
                *next_hello = now + self.cfg.hello_interval;
                Some(self.hello())
            }
            State::Transfer => {
                // The receiver reports every few milliseconds: silence this
                // long means it is busy, or gone. A Hello changes nothing in
                // an open session (it earns a HelloAck), but from a host
                // whose receiver exited it draws an ICMP "port unreachable",
                // and the driver fails at once instead of at the timeout.
                if now >= self.last_heard + SILENCE_PROBE_AFTER && now >= self.next_silence_probe {
                    self.next_silence_probe = now + SILENCE_PROBE_AFTER;
                    self.stats.silence_probes += 1;
                    return Some(self.hello());
                }
                if !self.pass_done() || !self.repairs.is_empty() || now < self.next_probe {
                    return None;
                }
                self.next_probe = now + self.cfg.probe_interval;
                self.stats.end_probes += 1;
                let end = Message::End { session: self.session, info: self.info, retransmits: self.stats.retransmits };
                Some(self.seal(&end))
            }
            State::Finished if self.final_end_due => {
                self.final_end_due = false;
                let end = Message::End { session: self.session, info: self.info, retransmits: self.stats.retransmits };
                Some(self.seal(&end))
            }
            State::Finished => None,
        }
    }

    /// Encodes a control message with the cookie and, with a key, seals it.
    /// Our Hello, sealed (with the cookie once known).
    fn hello(&mut self) -> Vec<u8> {
        let name = self.cfg.name.clone();
        let hello = Message::Hello {
            session: self.session,
            info: self.info,
            source: self.cfg.source,
            via_tcp: self.cfg.via_tcp,
            keyed: self.cfg.keys.is_some(),
            encrypted: self.cfg.encrypt.filter(|_| self.cfg.keys.is_some()),
            name: &name,
            data_ports: self.cfg.data_ports,
            attrs: self.cfg.attrs,
            tree: self.cfg.tree,
            resume_from: match self.resume {
                ResumeStage::Answered { from } | ResumeStage::Settled { from } => Some(from),
                _ => None,
            },
        };
        self.seal(&hello)
    }

    pub fn seal(&mut self, msg: &Message<'_>) -> Vec<u8> {
        let mut d = msg.encode(self.cookie.unwrap_or(0));
        if let Some(k) = &self.cfg.keys {
            k.seal(Direction::ToReceiver, self.counter.bump(), &mut d);
        }
        d
    }

    /// With a key, whether a datagram from the receiver is sealed, fresh, and
    /// ours to take. An unsealed Abort before the cookie is known is kept as
    /// a hint (a receiver without the key can refuse us no other way) but
    /// not taken: anyone on the path could race the real answer with one.
    fn authentic(&mut self, bytes: &[u8], msg: &Message<'_>) -> bool {
        let Some(k) = &self.cfg.keys else { return true };
        match k.open(Direction::ToSender, bytes) {
            Some(c) if self.replay.accept(c) => true,
            None => {
                self.stats.bad_seal += 1;
                if let (None, Message::Abort { session, reason }) = (self.cookie, msg) {
                    if *session == self.session {
                        self.unsealed_refusal = Some(untrusted_text(reason));
                    }
                }
                false
            }
            Some(_) => {
                self.stats.bad_seal += 1;
                false
            }
        }
    }

    /// Whether the receiver has said nothing for [`SILENCE_PROBE_AFTER`]
    /// mid-transfer. Data waits then, while Hellos ask whether it is still
    /// there: frames to a receiver that exited would each draw an ICMP
    /// error from its host, and the host's rate limit (about one a second)
    /// would then spend itself on them instead of on the Hello's, which is
    /// the one our control socket hears.
    pub fn receiver_silent(&self, now: Instant) -> bool {
        now >= self.last_heard + SILENCE_PROBE_AFTER
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.last_progress + self.cfg.timeout;
        match &self.state {
            State::Handshake { next_hello, .. } => Some((*next_hello).min(deadline)),
            State::Transfer => {
                let silence_probe = (self.last_heard + SILENCE_PROBE_AFTER).max(self.next_silence_probe);
                let end_probe = if self.pass_done() && self.repairs.is_empty() { self.next_probe } else { deadline };
                Some(deadline.min(silence_probe).min(end_probe))
            }
            State::Finished => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.last_progress + self.cfg.timeout {
            return;
        }
        let t = self.cfg.timeout;
        let err = match self.state {
            State::Handshake { acked: true, .. } => SendError::Timeout(t),
            State::Handshake { .. } => match &self.unsealed_refusal {
                Some(reason) => SendError::RefusedUnsealed(t, reason.clone()),
                None => SendError::HandshakeTimeout(t),
            },
            State::Transfer if now >= self.last_heard + t => SendError::Timeout(t),
            State::Transfer if self.stats.peer_received == 0 => SendError::NothingArrived(t, self.datagram_len() + 28),
            State::Transfer => SendError::Stalled(t),
            State::Finished => return,
        };
        self.state = State::Finished;
        self.outcome = Some(Err(err));
    }

    /// The worst loss the receiver reported since the last call, in basis
    /// points of the chunks each report covered.
    pub fn take_loss_report(&mut self) -> Option<u16> {
        self.loss_unread.take()
    }

    /// Ends the transfer from the driver's side (e.g. the link went down).
    pub fn fail_local(&mut self) {
        self.state = State::Finished;
    }

    pub fn outcome(&self) -> Option<&Result<(), SendError>> {
        self.outcome.as_ref()
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }
}
