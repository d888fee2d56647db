//! The receiver, shared by the AF_XDP and UDP-socket data paths: the
//! protocol's state, the output and the report ([`ReceiveLoop`]), driven by
//! [`queues`], one thread per data path (receive queue) around that state,
//! each writing and hashing what it takes, and a main thread for control,
//! timers, the journal and the verdict.

mod queues;
pub use queues::QueueFigures;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::control::Control;
use super::output::{Destination, Landing, OutputPolicy};
use super::resume::{Journaling, OutputPlan};
use super::stream_accept::PendingStreams;
use crate::proto::receiver::{DropCounts, DropReason, Event};
use crate::proto::{Receiver, ReceiverConfig};
use crate::report::{hex, human_bytes, summary_line, Intervals};
use crate::wire::message::FileAttrs;
use crate::wire::stream::StreamHeader;
use crate::wire::WireError;

/// One received datagram: its source and UDP payload, or why its frame was
/// not a UDP datagram for us.
pub type Datagram<'a> = Result<(SocketAddr, Payload<'a>), WireError>;

/// A datagram's UDP payload where it lies: in one piece (ours to change in
/// place), or for a packet that came as a chain of frames (XDP
/// multi-buffer), its first part and the parts after it, in order.
pub struct Payload<'a> {
    pub head: &'a mut [u8],
    pub rest: &'a [&'a [u8]],
}

impl<'a> Payload<'a> {
    pub fn whole(bytes: &'a mut [u8]) -> Payload<'a> {
        Payload { head: bytes, rest: &[] }
    }
}

/// A data path that a receive queue's thread can own.
pub type BoxedPath<'a> = Box<dyn DataPath + Send + 'a>;

/// A source of datagrams for the data port.
pub trait DataPath {
    /// Takes what is ready (a bounded batch) and hands it to `f` in one call,
    /// so writes can be coalesced while the batch's buffers are held. The
    /// payloads are `f`'s to change (an encrypted one is opened in place).
    fn poll(&mut self, f: &mut dyn FnMut(&mut [Datagram<'_>])) -> io::Result<usize>;
    /// A descriptor that becomes readable when datagrams arrive.
    fn fd(&self) -> RawFd;
    /// Called before the loop blocks in `poll`: a chance to wake the kernel.
    fn before_block(&mut self) {}
}

pub struct RecvOptions {
    pub out: PathBuf,
    pub policy: OutputPolicy,
    pub idle_timeout: Duration,
    /// None: wait for a sender until stopped.
    pub wait_for_sender: Option<Duration>,
    pub allow_from: Option<IpAddr>,
    /// Refuse files larger than this (`--max-size`).
    pub max_size: Option<u64>,
    /// Most files and directories a tree may hold (`--max-files`).
    pub max_files: u64,
    /// Largest UDP payload the data path takes (from the interface's MTU).
    pub max_datagram: Option<usize>,
    /// IP + UDP header bytes (28 for IPv4, 48 for IPv6).
    pub ip_udp_overhead: usize,
    /// Take files over TCP only (`recv --mode tcp`).
    pub tcp_only: bool,
    /// Replace an interrupted transfer's output instead of resuming it.
    pub no_resume: bool,
    /// The pre-shared key's derived keys (`--key-file`).
    pub keys: Option<crate::proto::auth::Keys>,
    /// Refuse a keyed sender that does not encrypt (`--require-encryption`).
    pub require_encryption: bool,
    pub intervals: bool,
}

#[derive(Debug, Serialize)]
pub struct RecvReport {
    #[serde(flatten)]
    pub summary: crate::report::Summary,
    /// Where the file is: PATH once verified, PATH.partial after a failure
    /// that left one, none when nothing was written.
    pub path: Option<String>,
    pub nacks_sent: u64,
    /// The AEAD the payloads came encrypted with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<&'static str>,
    /// Bytes an interrupted transfer had delivered, kept and not sent again.
    pub resumed_bytes: u64,
    pub dropped: DropCounts,
    pub error: Option<String>,
    /// The transfer phase runs from the session's Hello to the verdict
    /// (setting up sockets and the XDP program is not counted).
    #[serde(flatten)]
    pub process: crate::report::ProcessFigures,
    /// Every chunk in to the digest known: what was left to hash and merge
    /// (the queues hash as the data arrives).
    pub final_hash_s: Option<f64>,
    /// Bytes of the output read back to hash them: none where the receive
    /// threads hash on arrival, but a resumed prefix (checked at the start).
    pub read_back_bytes: u64,
    /// A verified tree's files that could not be put in place, and why
    /// (they stay as their partials).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_files: Vec<crate::tree::output::FailedFile>,
    /// With a thread per receive queue: what each took in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_queue: Vec<QueueFigures>,
    /// Extra path-specific figures (XDP counters, socket statistics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_stats: Option<PathStats>,
}

/// What the receive path's kernel parts counted: our XDP program, where it
/// ran, and the AF_XDP sockets, where there were any.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp: Option<crate::afxdp::program::XdpCounters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xsk: Option<super::afxdp_recv::SocketStats>,
}

/// How a receive ended: a report, or the TCP stream of a session admitted
/// over the control channel (a sender that asked for TCP), its header read
/// and checked, to be served instead.
pub enum Outcome {
    Done(Box<RecvReport>),
    /// The session's file comes over TCP: hand it to [`super::tcp::receive`].
    TcpFallback(Box<TcpHandoff>),
}

/// What the receive loop hands the TCP receiver of a session admitted over
/// TCP.
pub struct TcpHandoff {
    /// The first stream, and its header.
    pub stream: std::net::TcpStream,
    pub header: StreamHeader,
    /// The output path (inside `--out` when that is a directory).
    pub out: std::path::PathBuf,
    /// Connections already taken whose headers are still arriving: the
    /// sender's further streams may be among them.
    pub pending: PendingStreams,
    /// The output prepared when the session opened (an interrupted
    /// transfer's, when it resumes), and its journal.
    pub prepared: Option<(Destination, Journaling)>,
    /// Where the stream resumes (0: from the start).
    pub resumed_from: u64,
    /// The AEAD of an encrypted session's streams.
    pub encrypted: Option<crate::wire::message::Cipher>,
}

/// Runs one transfer to completion. The report's `error` is set and `verified`
/// false when it failed. `fallback`, if given, is polled for the TCP stream
/// of a session admitted with `via_tcp`.
pub fn run(
    mode: &str,
    paths: Vec<BoxedPath<'_>>,
    ctrl: &mut Control,
    opts: &RecvOptions,
    fallback: Option<&std::net::TcpListener>,
) -> Outcome {
    queues::run(mode, paths, ctrl, opts, fallback)
}

/// The receive loop's state: the protocol's receiver, the output, and the
/// figures for the report.
struct ReceiveLoop {
    rx: Receiver,
    /// "afxdp-copy", "udp", ...
    mode: String,
    /// Where the file goes: `--out`, or the sender's file name inside it
    /// when `--out` is a directory (known once the session opens).
    out_path: std::path::PathBuf,
    /// The sender's file mode and mtime, for the output (once the session
    /// opens; a sender that does not say leaves the defaults).
    attrs: Option<FileAttrs>,
    /// The session carries a directory tree of this shape.
    tree: Option<crate::wire::message::TreeShape>,
    /// The open session's description, its input's identity and name.
    opened: Option<(crate::wire::message::SessionInfo, crate::wire::message::SourceId, Option<String>)>,
    /// The output's journal, for resuming if this transfer is interrupted.
    journal: Option<Journaling>,
    /// A session whose file comes on the data path (not over TCP) is open.
    datagram_session: bool,
    out: Option<Destination>,
    /// Where the receive queues' threads write into `out` and hash.
    landing: Option<Arc<Landing>>,
    start: Instant,
    packets: u64,
    verified_at: Option<Instant>,
    /// How long the final digest took once every chunk was in.
    final_hash: Option<Duration>,
    /// Bytes the digest read back (the report's `read_back_bytes`).
    read_back: u64,
    /// The first local failure, which the report names.
    fatal: Option<String>,
    intervals: Intervals,
    rusage_at_start: Option<crate::os::process::Rusage>,
    /// Addresses whose refused Hello was logged.
    refusals_logged: std::collections::HashSet<IpAddr>,
    /// The last sender refused, and why.
    last_refusal: Option<String>,
    /// A verified tree's files its commit could not put in place.
    failed_files: Vec<crate::tree::output::FailedFile>,
}

impl ReceiveLoop {
    fn new(opts: &RecvOptions, mode: &str) -> ReceiveLoop {
        let start = Instant::now();
        let cfg = ReceiverConfig {
            idle_timeout: opts.idle_timeout,
            wait_for_sender: opts.wait_for_sender,
            allow_from: opts.allow_from,
            max_file_size: opts.max_size,
            max_files: opts.max_files,
            max_datagram: opts.max_datagram,
            ip_udp_overhead: opts.ip_udp_overhead,
            tcp_only: opts.tcp_only,
            cookie_key: crate::os::process::random_bytes(),
            keys: opts.keys.clone(),
            require_encryption: opts.require_encryption,
            ..Default::default()
        };
        ReceiveLoop {
            rx: Receiver::new(cfg, start),
            mode: mode.to_string(),
            out_path: opts.out.clone(),
            attrs: None,
            tree: None,
            opened: None,
            journal: None,
            datagram_session: false,
            out: None,
            landing: None,
            start,
            packets: 0,
            verified_at: None,
            final_hash: None,
            read_back: 0,
            fatal: None,
            intervals: Intervals::new(opts.intervals, start, 0),
            rusage_at_start: None,
            refusals_logged: std::collections::HashSet::new(),
            last_refusal: None,
            failed_files: Vec::new(),
        }
    }

    /// Ends the transfer on a local failure, telling the sender.
    fn fail(&mut self, msg: String) {
        self.rx.abort(&msg);
        self.fatal.get_or_insert(msg);
    }

    /// A session that failed before any data arrived keeps no partial: its
    /// reserved space goes back, and the report says nothing was written.
    fn discard_if_nothing_arrived(&mut self) {
        if self.rx.stats().first_data.is_some() || matches!(self.rx.outcome(), Some(Ok(_))) {
            return;
        }
        // An interrupted transfer's output holds what it held.
        if self.out.as_ref().is_some_and(|o| o.hashed_bytes() > 0) {
            return;
        }
        let Some(o) = self.out.take() else { return };
        if let Some(j) = self.journal.as_mut() {
            let _ = j.stop();
        }
        let partial = o.partial().to_path_buf();
        self.landing = None;
        match o.discard() {
            Ok(()) => info!(path = %partial.display(), "no data arrived: removed the empty partial file"),
            Err(e) => warn!(path = %partial.display(), "no data arrived, but the partial file stays: {e}"),
        }
    }

    /// Takes every waiting control datagram. Returns how many.
    fn poll_control(&mut self, ctrl: &mut Control, now: Instant) -> usize {
        let mut got = 0;
        loop {
            match ctrl.recv() {
                Ok(Some((from, bytes))) => {
                    got += 1;
                    let before =
                        (self.rx.stats().drops.get(DropReason::Refused), self.rx.stats().drops.get(DropReason::Busy));
                    self.rx.on_control(now, from, bytes);
                    self.log_refusal(from, before);
                    while let Some((to, why)) = self.rx.take_refusal() {
                        self.log_refused_sender(to, &why);
                    }
                }
                Ok(None) => break,
                // ICMP errors from an earlier reply (the sender went away).
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => continue,
                Err(e) => {
                    warn!("control socket: {e}");
                    break;
                }
            }
        }
        got
    }

    /// Says once per address (for the first 64) that a Hello was refused:
    /// `--allow-from` does not name it, or another session is open.
    fn log_refusal(&mut self, from: std::net::SocketAddr, (refused, busy): (u64, u64)) {
        let why = if self.rx.stats().drops.get(DropReason::Refused) > refused {
            "--allow-from does not name it"
        } else if self.rx.stats().drops.get(DropReason::Busy) > busy {
            "another session is open"
        } else {
            return;
        };
        if self.refusals_logged.len() < 64 && self.refusals_logged.insert(from.ip()) {
            warn!("refused a Hello from {from}: {why}");
        }
    }

    /// Says once per address (for the first 64) why a sender was refused,
    /// in the words it was told; the last one also goes into the error of a
    /// receiver that no sender reached.
    fn log_refused_sender(&mut self, to: std::net::SocketAddr, why: &str) {
        if self.refusals_logged.len() < 64 && self.refusals_logged.insert(to.ip()) {
            warn!("refused {to}: {why}");
        }
        self.last_refusal = Some(format!("{}: {why}", to.ip()));
    }

    /// Acts on what the protocol asks: prepare the output, verify it.
    fn handle_events(&mut self, opts: &RecvOptions) {
        while let Some(ev) = self.rx.poll_event() {
            match ev {
                Event::Start { info, peer, source, via_tcp, name, attrs, tree } => {
                    self.attrs = attrs;
                    self.tree = tree;
                    self.start_session(opts, info, peer, source, via_tcp, name.as_deref())
                }
                Event::Resumed { from } => self.resumed(opts, from),
                Event::Verify => self.verify(),
            }
        }
    }

    /// What a receiver knows of the open session's output.
    fn plan<'a>(&'a self, opts: &'a RecvOptions) -> Option<OutputPlan<'a>> {
        let (info, source, name) = self.opened.as_ref()?;
        // On the datagram path, a tree's manifest's last chunk is held
        // whole, with the file bytes that share it.
        let held_len = match (self.tree, self.datagram_session) {
            (Some(t), true) => t.manifest_len.div_ceil(u64::from(info.chunk_size)) * u64::from(info.chunk_size),
            (Some(t), false) => t.manifest_len,
            (None, _) => 0,
        };
        Some(OutputPlan {
            path: &self.out_path,
            info: *info,
            source: *source,
            attrs: self.attrs,
            tree: self.tree,
            name: name.as_deref(),
            held_len,
            policy: opts.policy,
            max_files: opts.max_files,
            keys: opts.keys.as_ref(),
            no_resume: opts.no_resume,
        })
    }

    /// The sender answered our resume offer.
    fn resumed(&mut self, opts: &RecvOptions, from: u64) {
        let (Some(mut out), Some(mut journal)) = (self.out.take(), self.journal.take()) else { return };
        let r = match self.plan(opts) {
            Some(plan) => super::resume::settled(&plan, &mut out, &mut journal, from),
            None => Ok(()),
        };
        if opts.intervals && from > 0 && self.datagram_session {
            let size = self.rx.info().map_or(0, |i| i.file_size);
            println!("Resuming: {} of {} already here and verified", human_bytes(from), human_bytes(size));
        }
        self.intervals.resumed(from);
        let landing = out.landing();
        self.out = Some(out);
        self.journal = Some(journal);
        match (r, landing) {
            (Ok(()), Ok(l)) => self.landing = Some(Arc::new(l)),
            (Err(e), _) | (_, Err(e)) => self.fail(format!("cannot prepare the output: {e}")),
        }
    }

    /// Brings the journal up to date with what is verified (`force`: now).
    fn record_journal(&mut self, force: bool) {
        if let (Some(j), Some(o)) = (self.journal.as_mut(), self.out.as_ref()) {
            j.record(o, force);
        }
    }

    /// A transfer that failed with data in: record what is verified in
    /// order (hashed as it arrived), so the next run resumes from there.
    fn record_before_exit(&mut self) {
        if matches!(self.rx.outcome(), Some(Ok(_))) {
            return;
        }
        self.record_journal(true);
    }

    fn start_session(
        &mut self,
        opts: &RecvOptions,
        info: crate::wire::message::SessionInfo,
        peer: std::net::SocketAddr,
        source: crate::wire::message::SourceId,
        via_tcp: bool,
        name: Option<&str>,
    ) {
        self.rusage_at_start = Some(crate::os::process::Rusage::of_self());
        self.opened = Some((info, source, name.map(str::to_string)));
        let session = format!("{:016x}", self.rx.session_id().unwrap_or(0));
        info!(%peer, session, bytes = info.file_size, chunks = info.n_chunks, chunk_size = info.chunk_size, via_tcp, "session opened");
        let path = if self.tree.is_some() { Ok(opts.out.clone()) } else { super::output::output_path(&opts.out, name) };
        match path {
            Ok(p) => self.out_path = p,
            Err(e) => return self.fail(e.to_string()),
        }
        if !via_tcp {
            // The receiver's lines count from the session's opening (a
            // file over TCP prints its own).
            self.datagram_session = true;
            self.intervals = Intervals::new(opts.intervals, Instant::now(), info.file_size);
            if opts.intervals {
                let out = self.out_path.display();
                let encrypted = self.rx.encrypted().map_or(String::new(), |c| format!(", encrypted ({})", c.name()));
                println!("Accepted {peer}: {} into {out} over {}{encrypted}", human_bytes(info.file_size), self.mode);
            }
        }
        // Over TCP too: what an interrupted transfer left is offered before
        // the session's answer goes out.
        let Some(plan) = self.plan(opts) else { return };
        let prepared = super::resume::prepare(&plan).and_then(|mut p| Ok((p.dest.landing()?, p)));
        match prepared {
            Ok((landing, p)) => {
                if let Some((from, hash)) = p.offer {
                    self.rx.offer_resume(from, hash);
                }
                self.out = Some(p.dest);
                self.journal = Some(p.journal);
                self.landing = Some(Arc::new(landing));
            }
            Err(e) => self.fail(format!("cannot prepare the output: {e}")),
        }
    }

    /// A tree's manifest is in (every write of it done): make its files,
    /// start its journal, then let the protocol take the rest. A resumed
    /// tree was made from its journal already: its hold ends here, once
    /// the sender has settled where the stream resumes.
    fn make_tree(&mut self) {
        let made = match self.out.as_mut() {
            Some(Destination::Tree(t)) if t.is_made() => Ok(None),
            Some(Destination::Tree(t)) => t.make().map(|()| t.manifest_bytes()),
            _ => return,
        };
        if let Some(Destination::Tree(t)) = &self.out {
            if let Some(files) = t.file_progress() {
                self.intervals.set_files(files);
            }
        }
        let started = made.and_then(|manifest| match (self.journal.as_mut(), manifest) {
            (Some(j), Some(m)) => j.start(m),
            _ => Ok(()),
        });
        match started {
            Ok(()) => self.rx.release_hold(),
            Err(e) => self.fail(format!("{e}")),
        }
    }

    /// Hashes the output and commits it on a match, before acknowledging:
    /// when the sender hears Done, the file is in place.
    fn verify(&mut self) {
        let Some(mut o) = self.out.take() else { return };
        let hashing = Instant::now();
        let digest = o.digest();
        self.final_hash = Some(hashing.elapsed());
        self.read_back = o.read_back_bytes();
        let digest = match digest {
            Ok(d) => d,
            Err(e) => return self.fail(format!("reading the output back to verify it: {e}")),
        };
        if Some(digest) == self.rx.info().and_then(|i| i.digest) {
            match o.commit() {
                Ok(p) => info!(path = %p.display(), "digest verified; output committed"),
                Err(e) => {
                    self.failed_files = crate::tree::output::failed_files(&e);
                    return self.fail(format!("verified, but cannot commit the output: {e}"));
                }
            }
        } else {
            warn!(partial = %o.partial().display(), "digest mismatch; output left as partial");
        }
        // Committed, or not worth resuming: its bytes are not the sender's.
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.stop() {
                warn!("removing the journal {}: {e}", j.path().display());
            }
        }
        self.verified_at = Some(Instant::now());
        self.rx.verified(Instant::now(), digest);
    }

    /// Runs the protocol's timers and sends its replies; prints intervals.
    fn timers_and_replies(&mut self, ctrl: &Control, now: Instant, idle: bool) {
        if idle {
            self.rx.note_idle(now);
        }
        if self.rx.poll_timeout().is_some_and(|t| t <= now) {
            self.rx.handle_timeout(now);
        }
        while let Some((to, bytes)) = self.rx.poll_transmit(Instant::now()) {
            if let Err(e) = ctrl.send_to(to, &bytes) {
                if e.raw_os_error() != Some(libc::ECONNREFUSED) {
                    warn!("sending to {to}: {e}");
                }
            }
        }
        // A file that comes over TCP prints its own lines (`tcp::receive`).
        if let (Some(size), true) = (self.rx.info().map(|i| i.file_size), self.datagram_session) {
            let done = self.rx.stats().bytes + self.rx.stats().resumed_bytes;
            let phase = if done >= size { "verifying" } else { "" };
            self.intervals.tick(now, done, None, phase);
        }
    }

    fn report(mut self, mode: &str, opts: &RecvOptions) -> RecvReport {
        self.record_before_exit();
        self.discard_if_nothing_arrived();
        let rx = &self.rx;
        let first = rx.stats().first_data.unwrap_or(self.start);
        let end = self.verified_at.unwrap_or_else(Instant::now);
        let elapsed = end.saturating_duration_since(first).as_secs_f64();
        let (verified, digest, error) = match rx.outcome() {
            Some(Ok(s)) => (true, hex(&s.digest), None),
            Some(Err(e)) => {
                let mut why = self.fatal.clone().unwrap_or_else(|| e.to_string());
                if let (crate::proto::receiver::RecvError::NoSender(_), Some(r)) = (e, &self.last_refusal) {
                    why = format!("{why} (the last sender refused was {r})");
                }
                (false, String::new(), Some(why))
            }
            None => (false, String::new(), Some(self.fatal.clone().unwrap_or_else(|| "receiver stopped".into()))),
        };
        let bytes = rx.info().map_or(0, |i| i.file_size);
        let partial = super::output::partial_path(&self.out_path);
        let path = if verified {
            Some(self.out_path.display().to_string())
        } else {
            (self.out.is_some() || partial.exists()).then(|| partial.display().to_string())
        };
        if opts.intervals && verified {
            let iv = &mut self.intervals;
            iv.finish(end, bytes, None);
            let (t_first, t_end) = (iv.at(first), iv.at(end));
            println!("{}", summary_line(0.0, t_end, bytes, None, "receiver, session: Hello to verified file"));
            println!(
                "{}",
                summary_line(t_first, t_end, bytes, None, "receiver, transfer phase: first data to verified file")
            );
            println!("Verified: blake3 {digest}; written to {}", self.out_path.display());
        } else if opts.intervals && crate::os::signals::stop_requested() {
            // Ctrl-C: what arrived, as iperf3 prints a summary when interrupted.
            let got = rx.stats().bytes;
            self.intervals.finish(end, got, None);
            let (t_first, t_end) = (self.intervals.at(first), self.intervals.at(end));
            let what = "receiver, interrupted: what arrived before Ctrl-C";
            println!("{}", summary_line(t_first.min(t_end), t_end, got, None, what));
        }
        RecvReport {
            summary: crate::report::Summary {
                mode: mode.to_string(),
                bytes,
                packets: Some(self.packets),
                retransmits: rx.stats().peer_retransmits,
                goodput_bps: if verified { bytes as f64 * 8.0 / elapsed.max(1e-9) } else { 0.0 },
                elapsed_s: elapsed,
                digest,
                verified,
            },
            encrypted: rx.encrypted().map(|c| c.name()),
            path,
            nacks_sent: rx.stats().nacks_sent,
            resumed_bytes: rx.stats().resumed_bytes,
            dropped: rx.stats().drops.clone(),
            error,
            process: crate::report::ProcessFigures::now(&self.rusage_at_start.unwrap_or_default()),
            final_hash_s: self.final_hash.map(|d| d.as_secs_f64()),
            read_back_bytes: self.read_back,
            failed_files: std::mem::take(&mut self.failed_files),
            per_queue: Vec::new(),
            path_stats: None,
        }
    }
}

/// Takes the admitted session's TCP stream, if its header has arrived.
/// Connections are read without blocking (see [`PendingStreams`]): one from
/// an address with no session taking TCP is closed unread, so no TCP
/// connection reaches a datagram session, and a peer that connects and
/// sends nothing holds nothing up. A TCP peer follows the same admission as
/// a datagram sender (`--allow-from`, the cookie).
fn accept_admitted(
    listener: &std::net::TcpListener,
    pending: &mut PendingStreams,
    rx: &Receiver,
) -> Option<(std::net::TcpStream, StreamHeader)> {
    let arrived = pending.poll(listener, |ip| rx.awaits_tcp_from(ip), Instant::now())?;
    let from = arrived.from;
    match arrived.header {
        Ok(h) if rx.tcp_admits(from.ip(), &h) => {
            info!(%from, "the admitted sender connected over TCP");
            Some((arrived.sock, h))
        }
        Ok(_) => {
            warn!(%from, "refused a TCP stream: its session, cookie or size is not the admitted session's");
            None
        }
        Err(e) => {
            warn!(%from, "refused a TCP stream: {e}");
            None
        }
    }
}
