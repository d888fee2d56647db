//! The TCP baseline: the zero-copy ladder's other rungs, with the same
//! guarantee as AF_XDP (the receiver writes `PATH.partial`, checks BLAKE3 and
//! renames only on a match; both sides exit 0 only then).
//!
//! Admission follows the datagram rules: the sender first says Hello on the
//! receiver's control port (`via_tcp`), echoes the receiver's cookie, and only
//! then connects; the stream's header ([`crate::wire::stream`]) names that
//! admitted session. The receiver refuses any other connection before reading
//! a byte of file, bounds the header's arrival by its timeout, and fails a
//! stream that stops making progress (at least [`PROGRESS_QUANTUM`] bytes per
//! timeout), however slowly bytes still trickle in.
//!
//! The sender hashes the file on a second thread while the body goes out; the
//! digest follows the data.
//!
//! | mode      | how the sender moves the file            |
//! |-----------|------------------------------------------|
//! | sendfile  | `sendfile(2)` in a loop                  |
//! | readwrite | `read` into a buffer, then `write`       |
//! | mmap      | `mmap` the file, `write` from the mapping |
//! | splice    | file -> pipe -> socket with `splice(2)`  |

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tracing::{info, warn};

use super::control::Control;
use super::output::{Output, OutputPolicy};
use super::stream_accept::PendingStreams;
use crate::proto::{Sender, SenderConfig};
use crate::report::{hex, human_bytes, summary_line, Intervals};
use crate::wire::message::{FileAttrs, SessionInfo};
use crate::wire::stream::{stream_range, StreamHeader, MAX_STREAMS, REPLY_LEN};

const CHUNK: usize = 1 << 20;
/// A stream must deliver at least this much per timeout to count as moving.
pub const PROGRESS_QUANTUM: u64 = 64 << 10;

use crate::os::sys::{self, Doing};
use crate::os::syscount::count as count_syscalls;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcpMode {
    Sendfile,
    Readwrite,
    Mmap,
    Splice,
}

impl TcpMode {
    pub fn name(self) -> &'static str {
        match self {
            TcpMode::Sendfile => "sendfile",
            TcpMode::Readwrite => "readwrite",
            TcpMode::Mmap => "mmap",
            TcpMode::Splice => "splice",
        }
    }
}

/// What either side reports at the end (the same keys as the AF_XDP reports).
#[derive(Debug, Serialize)]
pub struct TcpReport {
    #[serde(flatten)]
    pub summary: crate::report::Summary,
    /// Connections the file travelled over at once.
    pub streams: u16,
    /// Admission and connecting, before the first byte (the file is hashed
    /// while it is sent).
    pub prepare_s: f64,
    pub error: Option<String>,
    pub path: Option<String>,
    pub rusage: crate::os::process::Rusage,
    /// CPU and context switches from the first byte to the verdict.
    pub transfer_rusage: crate::os::process::Rusage,
    pub syscalls: u64,
    /// Process start to the verdict.
    pub e2e_s: f64,
    /// The file's bits over `e2e_s`, as the AF_XDP sender reports it.
    pub e2e_goodput_bps: f64,
    /// VmHWM: the most memory this process held at once.
    pub peak_rss_bytes: u64,
    /// Sender in auto mode: why AF_XDP was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub afxdp_not_used: Option<String>,
}

/// Hashes the file on its own thread; a stop request (SIGINT, SIGTERM)
/// ends it within one 1 MiB read.
fn hash_file(file: &File, mut h: blake3::Hasher) -> io::Result<[u8; 32]> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        if crate::os::signals::stop_requested() {
            return Err(interrupted());
        }
        let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

fn interrupted() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "interrupted")
}

fn write_all_counted(sock: &mut TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        count_syscalls(1);
        match sock.write(buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the receiver closed the connection")),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bytes per sendfile call: large enough that a GiB takes a handful of calls,
/// small enough that progress shows.
const SENDFILE_STEP: usize = 64 << 20;

/// Sends the file's bytes in `range`; `progress` hears how many of them
/// are out after each step.
fn send_body(
    mode: TcpMode,
    file: &File,
    range: std::ops::Range<u64>,
    sock: &mut TcpStream,
    progress: &mut dyn FnMut(u64) -> io::Result<()>,
) -> io::Result<()> {
    let fd_in = file.as_raw_fd();
    let fd_out = sock.as_raw_fd();
    let (base, size) = (range.start, range.end);
    let mut progress = |at: u64| progress(at - base);
    match mode {
        TcpMode::Sendfile => {
            let mut off = libc::off_t::try_from(base).map_err(|_| io::Error::other("offset too large"))?;
            while (off as u64) < size {
                let want = ((size - off as u64) as usize).min(SENDFILE_STEP);
                let n = sys::sendfile(fd_out, fd_in, &mut off, want)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being sent"));
                }
                progress(off as u64)?;
            }
        }
        TcpMode::Readwrite => {
            let mut buf = vec![0u8; CHUNK];
            let mut off = base;
            while off < size {
                let want = ((size - off) as usize).min(CHUNK);
                count_syscalls(1);
                let n = std::os::unix::fs::FileExt::read_at(file, &mut buf[..want], off)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being sent"));
                }
                write_all_counted(sock, &buf[..n])?;
                off += n as u64;
                progress(off)?;
            }
        }
        TcpMode::Mmap => {
            if size > base {
                // SAFETY: a read-only private mapping of a file we opened; a
                // concurrent truncation by another process could fault, which is
                // the documented hazard of this rung of the ladder.
                let map = unsafe { memmap2::MmapOptions::new().len(size as usize).map(file) }?;
                count_syscalls(1);
                let mut sent = base;
                for chunk in map[base as usize..].chunks(CHUNK) {
                    write_all_counted(sock, chunk)?;
                    sent += chunk.len() as u64;
                    progress(sent)?;
                }
            }
        }
        TcpMode::Splice => {
            let (rd, wr) = sys::pipe()?;
            // A bigger pipe moves more per call; failure only costs calls.
            let _ = sys::set_pipe_size(&wr, CHUNK);
            let mut off = libc::loff_t::try_from(base).map_err(|_| io::Error::other("offset too large"))?;
            while (off as u64) < size {
                let want = ((size - off as u64) as usize).min(CHUNK);
                let mut inpipe = sys::splice(fd_in, Some(&mut off), wr.as_raw_fd(), want, "splice file->pipe")?;
                if inpipe == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being sent"));
                }
                while inpipe > 0 {
                    let n = sys::splice(rd.as_raw_fd(), None, fd_out, inpipe, "splice pipe->socket")?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::WriteZero, "the receiver closed the connection"));
                    }
                    inpipe -= n;
                }
                progress(off as u64)?;
            }
        }
    }
    Ok(())
}

pub struct TcpSendOptions {
    pub file: PathBuf,
    pub dst: SocketAddr,
    pub mode: TcpMode,
    pub timeout: Duration,
    pub intervals: bool,
    /// Print `progress BYTES TOTAL` lines on stderr (for `bench`).
    pub progress: bool,
    /// The pre-shared key's derived keys (`--key-file`).
    pub keys: Option<crate::proto::auth::Keys>,
    /// Why TCP carries the file when AF_XDP was asked for (auto's fallback),
    /// for the mode line.
    pub fallback_reason: Option<String>,
    /// Connections the file's ranges travel over at once (`--streams`).
    pub streams: u16,
}

pub fn send(opts: &TcpSendOptions) -> anyhow::Result<TcpReport> {
    let file = File::open(&opts.file).with_context(|| format!("opening {}", opts.file.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", opts.file.display());
    }
    let size = meta.len();
    let count = opts.streams.clamp(1, MAX_STREAMS);
    let t_prep = Instant::now();
    let mut intervals = Intervals::new(opts.intervals, crate::os::process::process_start(), size);
    let (session, cookie) = admit(opts, size, &meta, &mut intervals)?;
    let mut socks = (0..count).map(|_| connect(opts)).collect::<anyhow::Result<Vec<TcpStream>>>()?;
    let prepare_s = t_prep.elapsed().as_secs_f64();
    info!(dst = %opts.dst, mode = opts.mode.name(), bytes = size, streams = count, "transfer started");
    if opts.intervals {
        let why = opts.fallback_reason.as_deref().map_or(String::new(), |w| format!("; AF_XDP not used: {w}"));
        let over = if count == 1 { String::new() } else { format!(", {count} streams") };
        println!(
            "Sending {} ({}) to {} over TCP ({}{over}){why}",
            opts.file.display(),
            human_bytes(size),
            opts.dst,
            opts.mode.name()
        );
    }
    let rusage_at_start = crate::os::process::Rusage::of_self();
    let start = Instant::now();
    for (i, sock) in socks.iter_mut().enumerate() {
        let source = super::output::source_id(&meta);
        let header = StreamHeader { file_size: size, session, cookie, source, index: i as u16, count };
        write_all_counted(sock, &header.emit())?;
    }
    let fds: Vec<std::os::fd::RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let retransmits_all = || fds.iter().map(|&fd| sys::tcp_retransmits(fd).ok()).sum::<Option<u64>>();
    let digest = send_streams(opts, &file, size, &mut socks, &mut intervals, &retransmits_all)?;
    for sock in socks.iter_mut() {
        write_all_counted(sock, &digest)?;
    }
    for (i, sock) in socks.iter_mut().enumerate() {
        let reply = await_verdict(sock, opts.timeout, &mut |now| {
            intervals.tick(now, size, retransmits_all(), "the receiver is verifying")
        })?;
        if !(reply[0] == 1 && reply[1..] == digest) {
            bail!("the receiver reports a digest mismatch (stream {i}): the file it rebuilt differs from ours");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let goodput = size as f64 * 8.0 / elapsed.max(1e-9);
    let retr = retransmits_all();
    if opts.intervals {
        // The whole command first (the handshake included), the transfer
        // phase beside it.
        let e2e = crate::os::process::since_process_start();
        intervals.finish(Instant::now(), size, retr);
        let t_start = intervals.at(start);
        println!("{}", summary_line(0.0, e2e, size, retr, "sender, end to end: command start to verified file"));
        println!("{}", summary_line(t_start, e2e, size, None, "sender, transfer phase: connected to verified file"));
        println!("Verified by the receiver: blake3 {}", hex(&digest));
    }
    Ok(TcpReport {
        summary: crate::report::Summary {
            mode: opts.mode.name().to_string(),
            bytes: size,
            packets: None,
            retransmits: retr.unwrap_or(0),
            goodput_bps: goodput,
            elapsed_s: elapsed,
            digest: hex(&digest),
            verified: true,
        },
        streams: count,
        prepare_s,
        error: None,
        path: None,
        rusage: crate::os::process::Rusage::of_self(),
        transfer_rusage: crate::os::process::Rusage::of_self().since(&rusage_at_start),
        syscalls: crate::os::syscount::total(),
        e2e_s: crate::os::process::since_process_start(),
        e2e_goodput_bps: size as f64 * 8.0 / crate::os::process::since_process_start().max(1e-9),
        peak_rss_bytes: crate::os::process::peak_rss_bytes(),
        afxdp_not_used: opts.fallback_reason.clone(),
    })
}

fn connect(opts: &TcpSendOptions) -> anyhow::Result<TcpStream> {
    let sock = TcpStream::connect_timeout(&opts.dst, opts.timeout)
        .with_context(|| format!("connecting to {} (is `xdpblast recv` listening there?)", opts.dst))?;
    sock.set_read_timeout(Some(opts.timeout))?;
    sock.set_write_timeout(Some(opts.timeout))?;
    Ok(sock)
}

/// Sends each stream's range, stream 0 on this thread (which prints the
/// lines) and the others on threads of their own, while another thread
/// hashes the file: the digest travels after the data, and the zero-copy
/// modes never bring the bytes to user space. Both read the same file: if
/// it changes meanwhile, the two can differ, and the receiver's check fails.
fn send_streams(
    opts: &TcpSendOptions,
    file: &File,
    size: u64,
    socks: &mut [TcpStream],
    intervals: &mut Intervals,
    retransmits_all: &dyn Fn() -> Option<u64>,
) -> anyhow::Result<[u8; 32]> {
    let count = socks.len() as u16;
    let hasher = opts.keys.as_ref().map_or_else(blake3::Hasher::new, |k| k.digest_hasher());
    // Bytes the other streams have sent, for stream 0's lines.
    let others = std::sync::atomic::AtomicU64::new(0);
    let mut next_report = Instant::now();
    std::thread::scope(|scope| {
        let hashing = std::thread::Builder::new()
            .name("xdpblast-hash".into())
            .spawn_scoped(scope, || hash_file(file, hasher))
            .context("starting the hashing thread")?;
        let (first, rest) = socks.split_first_mut().context("no stream")?;
        let mut senders = Vec::new();
        for (i, sock) in rest.iter_mut().enumerate() {
            let (range, others) = (stream_range(size, count, i as u16 + 1), &others);
            let mut last = 0;
            let h = std::thread::Builder::new()
                .name(format!("xdpblast-tcp{}", i + 1))
                .spawn_scoped(scope, move || {
                    send_body(opts.mode, file, range, sock, &mut |done| {
                        others.fetch_add(done - last, std::sync::atomic::Ordering::Relaxed);
                        last = done;
                        if crate::os::signals::stop_requested() {
                            return Err(interrupted());
                        }
                        Ok(())
                    })
                })
                .context("starting a stream's thread")?;
            senders.push(h);
        }
        // Called after every step of stream 0: prints, and ends the send
        // on a stop request (SIGINT, SIGTERM).
        let mut report_progress = |mine: u64| {
            if crate::os::signals::stop_requested() {
                return Err(interrupted());
            }
            let done = mine + others.load(std::sync::atomic::Ordering::Relaxed);
            let now = Instant::now();
            if opts.progress && now >= next_report {
                next_report = now + Duration::from_millis(100);
                eprintln!("progress {done} {size}");
            }
            if intervals.due(now) {
                intervals.tick(now, done, retransmits_all(), "");
            }
            Ok(())
        };
        send_body(opts.mode, file, stream_range(size, count, 0), first, &mut report_progress)
            .with_context(|| format!("sending over {}", opts.mode.name()))?;
        for (i, h) in senders.into_iter().enumerate() {
            h.join()
                .map_err(|_| anyhow::anyhow!("the thread of stream {} panicked", i + 1))?
                .with_context(|| format!("sending stream {} over {}", i + 1, opts.mode.name()))?;
        }
        let digest = hashing.join().map_err(|_| anyhow::anyhow!("the hashing thread panicked"))?;
        digest.with_context(|| format!("reading {}", opts.file.display()))
    })
}

/// Waits for the receiver's verdict (it hashes what it still has to, then
/// answers), calling `waiting` at least twice a second; fails after
/// `timeout` of silence.
fn await_verdict(
    sock: &mut TcpStream,
    timeout: Duration,
    waiting: &mut dyn FnMut(Instant),
) -> anyhow::Result<[u8; REPLY_LEN]> {
    let mut reply = [0u8; REPLY_LEN];
    let mut got = 0;
    let deadline = Instant::now() + timeout;
    sock.set_read_timeout(Some(Duration::from_millis(250)))?;
    while got < REPLY_LEN {
        if crate::os::signals::stop_requested() {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("no verdict from the receiver within {}", crate::report::human_secs(timeout));
        }
        waiting(now);
        count_syscalls(1);
        match sock.read(&mut reply[got..]) {
            Ok(0) => bail!("the receiver closed the connection before its verdict"),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("waiting for the receiver's verdict"),
        }
    }
    Ok(reply)
}

/// Opens the session over the receiver's control port, as a datagram sender
/// would, asking for the file over TCP; returns its id and the receiver's
/// cookie for the stream header.
fn admit(
    opts: &TcpSendOptions,
    size: u64,
    meta: &std::fs::Metadata,
    intervals: &mut Intervals,
) -> anyhow::Result<(u64, u64)> {
    let ctrl_peer = SocketAddr::new(opts.dst.ip(), super::control::control_port(opts.dst.port())?);
    let any: SocketAddr = if ctrl_peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().context("wildcard")?;
    let mut ctrl = Control::connect(any, ctrl_peer)?;
    let session = crate::os::process::random_session();
    let chunk = CHUNK as u32;
    let info =
        SessionInfo { file_size: size, chunk_size: chunk, n_chunks: size.div_ceil(u64::from(chunk)), digest: None };
    let cfg = SenderConfig {
        timeout: opts.timeout,
        source: super::output::source_id(meta),
        attrs: Some(super::output::file_attrs(meta)),
        via_tcp: true,
        keys: opts.keys.clone(),
        name: super::file_name(&opts.file),
        ..Default::default()
    };
    let mut sender = Sender::new(cfg, session, info, Instant::now());
    super::control::handshake(&mut sender, &mut ctrl, ctrl_peer, &mut |_, now| {
        intervals.tick(now, 0, None, "waiting for the receiver's answer");
        Ok(())
    })?;
    let cookie = sender.cookie().context("the receiver acknowledged without a cookie")?;
    Ok((session, cookie))
}

/// Receives one admitted TCP transfer: `header` was read and checked
/// against the session by the receive loop.
/// Where and how a TCP receiver writes what it is sent.
pub struct TcpReceiveOptions<'a> {
    pub out: &'a Path,
    /// The sender's file mode and mtime, from its Hello.
    pub attrs: Option<FileAttrs>,
    pub policy: OutputPolicy,
    pub timeout: Duration,
    pub intervals: bool,
    /// The pre-shared key's derived keys: the digest is keyed.
    pub keys: Option<crate::proto::auth::Keys>,
    /// Where a file sent over several streams brings the others.
    pub listener: Option<&'a TcpListener>,
}

/// `pending`: connections the receive loop took whose headers are still
/// arriving (the sender's further streams may be among them).
pub fn receive(
    sock: TcpStream,
    header: &StreamHeader,
    opts: &TcpReceiveOptions<'_>,
    pending: PendingStreams,
) -> TcpReport {
    let (out, intervals) = (opts.out, opts.intervals);
    let start = Instant::now();
    let rusage_at_start = crate::os::process::Rusage::of_self();
    let bytes = header.file_size;
    let mut intervals = Intervals::new(intervals, start, bytes);
    if opts.intervals {
        let peer = sock.peer_addr().map_or("the sender".to_string(), |a| a.to_string());
        println!("Accepted {peer}: {} into {} over TCP", human_bytes(bytes), out.display());
    }
    let r = receive_inner(sock, header, opts, pending, &mut intervals);
    let elapsed = start.elapsed().as_secs_f64();
    let (verified, digest, error) = match r {
        Ok(d) => (true, hex(&d), None),
        Err(e) => (false, String::new(), Some(format!("{e:#}"))),
    };
    if opts.intervals && verified {
        intervals.finish(Instant::now(), bytes, None);
        println!("{}", summary_line(0.0, elapsed, bytes, None, "receiver, connection to verified file"));
        println!("Verified: blake3 {digest}; written to {}", out.display());
    }
    let partial = super::output::partial_path(out);
    TcpReport {
        streams: header.count,
        summary: crate::report::Summary {
            mode: "tcp".into(),
            bytes,
            packets: None,
            retransmits: 0,
            goodput_bps: if verified { bytes as f64 * 8.0 / elapsed.max(1e-9) } else { 0.0 },
            elapsed_s: elapsed,
            digest,
            verified,
        },
        prepare_s: 0.0,
        error,
        path: if verified {
            Some(out.display().to_string())
        } else {
            partial.exists().then(|| partial.display().to_string())
        },
        rusage: crate::os::process::Rusage::of_self(),
        transfer_rusage: crate::os::process::Rusage::of_self().since(&rusage_at_start),
        syscalls: crate::os::syscount::total(),
        e2e_s: crate::os::process::since_process_start(),
        e2e_goodput_bps: if verified {
            bytes as f64 * 8.0 / crate::os::process::since_process_start().max(1e-9)
        } else {
            0.0
        },
        peak_rss_bytes: crate::os::process::peak_rss_bytes(),
        afxdp_not_used: None,
    }
}

/// A deadline that moves only when the stream does: at least
/// [`PROGRESS_QUANTUM`] bytes (or the rest of the stream) per `timeout`.
struct Progress {
    timeout: Duration,
    deadline: Instant,
    mark: u64,
}

impl Progress {
    fn new(timeout: Duration) -> Progress {
        Progress { timeout, deadline: Instant::now() + timeout, mark: 0 }
    }

    /// `got` bytes so far of a stream of `total`.
    fn advance(&mut self, got: u64, total: u64) {
        if got >= self.mark.saturating_add(PROGRESS_QUANTUM) || got == total {
            self.mark = got;
            self.deadline = Instant::now() + self.timeout;
        }
    }

    /// Reads into `buf` before the deadline; 0 only at the end of the stream.
    fn read(&self, sock: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<usize> {
        loop {
            if crate::os::signals::stop_requested() {
                bail!("interrupted");
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the sender delivered under {} KiB in {:?} (idle timeout)", PROGRESS_QUANTUM >> 10, self.timeout);
            }
            // Wake now and then to see a stop request.
            sock.set_read_timeout(Some(left.min(Duration::from_millis(500))))?;
            count_syscalls(1);
            match sock.read(buf) {
                Ok(n) => return Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => bail!("receiving: {e}"),
            }
        }
    }

    fn read_exact(&mut self, sock: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read(sock, &mut buf[got..])?;
            if n == 0 {
                bail!("the sender closed the connection");
            }
            got += n;
        }
        Ok(())
    }
}

fn receive_inner(
    first: TcpStream,
    header: &StreamHeader,
    opts: &TcpReceiveOptions<'_>,
    pending: PendingStreams,
    intervals: &mut Intervals,
) -> anyhow::Result<[u8; 32]> {
    let size = header.file_size;
    let hasher = opts.keys.as_ref().map_or_else(blake3::Hasher::new, |k| k.digest_hasher());
    let mut socks = join_streams(first, header, opts, pending)?;
    let mut output = Output::create(opts.out, size, &header.source, opts.policy)
        .context("preparing the output")?
        .with_hasher(hasher)
        .with_attrs(opts.attrs);
    let writer = output.writer().context("preparing the output")?;
    let got: Vec<std::sync::atomic::AtomicU64> = socks.iter().map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
    let ranges: Vec<_> = (0..header.count).map(|i| stream_range(size, header.count, i)).collect();
    // Each stream on a thread of its own, writing its range; this thread
    // hashes the complete prefix as it grows.
    let digests = std::thread::scope(|scope| {
        let handles: Vec<_> = socks
            .iter_mut()
            .zip(&ranges)
            .zip(&got)
            .map(|((sock, range), got)| {
                let (range, writer) = (range.clone(), &writer);
                scope.spawn(move || receive_range(sock, range, writer, got, opts.timeout))
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            let prefix = complete_prefix(&ranges, &got);
            output.hash_ahead(prefix, 4 << 20).context("reading the output back")?;
            intervals.tick(
                Instant::now(),
                got.iter().map(|g| g.load(std::sync::atomic::Ordering::Acquire)).sum(),
                None,
                "",
            );
            if output.hashed_bytes() + (4 << 20) > prefix {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().map_err(|_| anyhow::anyhow!("the thread of stream {i} panicked"))?)
            .collect::<anyhow::Result<Vec<[u8; 32]>>>()
    })?;
    let ours = output.digest().context("reading the output back")?;
    let ok = digests.iter().all(|d| *d == ours);
    if ok {
        output.commit().context("committing the output")?;
    }
    let mut reply = [0u8; REPLY_LEN];
    reply[0] = u8::from(ok);
    reply[1..].copy_from_slice(&ours);
    for sock in socks.iter_mut() {
        count_syscalls(1);
        sock.write_all(&reply).context("sending the verdict")?;
    }
    if !ok {
        bail!("digest mismatch: the file received does not match the sender's BLAKE3 digest; output kept as partial");
    }
    Ok(ours)
}

/// Bytes from the file's start that every stream has written.
fn complete_prefix(ranges: &[std::ops::Range<u64>], got: &[std::sync::atomic::AtomicU64]) -> u64 {
    let mut prefix = 0;
    for (r, g) in ranges.iter().zip(got) {
        let done = g.load(std::sync::atomic::Ordering::Acquire);
        prefix = r.start + done;
        if done < r.end - r.start {
            break;
        }
    }
    prefix
}

/// Reads one stream's range into the output, then the sender's digest
/// that follows it.
fn receive_range(
    sock: &mut TcpStream,
    range: std::ops::Range<u64>,
    writer: &super::output::OutputWriter,
    got: &std::sync::atomic::AtomicU64,
    timeout: Duration,
) -> anyhow::Result<[u8; 32]> {
    let len = range.end - range.start;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut progress = Progress::new(timeout);
    while done < len {
        if crate::os::signals::stop_requested() {
            bail!("receiver interrupted");
        }
        let want = ((len - done) as usize).min(CHUNK);
        let n = progress.read(sock, &mut buf[..want])?;
        if n == 0 {
            bail!("the sender closed the connection after {done} of the {len} bytes of its range");
        }
        writer.write_batch(&mut [(range.start + done, &buf[..n])]).context("writing the output")?;
        done += n as u64;
        got.store(done, std::sync::atomic::Ordering::Release);
        progress.advance(done, len);
    }
    let mut theirs = [0u8; 32];
    progress.read_exact(sock, &mut theirs)?;
    Ok(theirs)
}

/// The file's other streams, when it comes over several: accepted from
/// the first one's address, each header checked against the first's (the
/// admitted session, its cookie and size), each index once, all within the
/// timeout. Returns every stream, in index order.
fn join_streams(
    first: TcpStream,
    header: &StreamHeader,
    opts: &TcpReceiveOptions<'_>,
    mut pending: PendingStreams,
) -> anyhow::Result<Vec<TcpStream>> {
    let count = usize::from(header.count);
    let mut socks: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let from = first.peer_addr().context("the first stream's address")?.ip();
    socks[usize::from(header.index)] = Some(first);
    let deadline = Instant::now() + opts.timeout;
    while socks.iter().any(Option::is_none) {
        let listener = opts.listener.context("a file sent over several streams, and no listener for the others")?;
        if crate::os::signals::stop_requested() {
            bail!("receiver interrupted");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let have = socks.iter().filter(|s| s.is_some()).count();
            bail!("the sender opened {have} of its {count} streams within {}", crate::report::human_secs(opts.timeout));
        }
        // A bad, late or idle connection, even from the sender's address,
        // is refused on its own and never fails the session.
        let Some(arrived) = pending.poll(listener, |ip| ip == from, Instant::now()) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let peer = arrived.from;
        let h = match arrived.header {
            Ok(h) => h,
            Err(e) => {
                warn!(%peer, "refused a TCP stream: {e}");
                continue;
            }
        };
        let same = StreamHeader { index: h.index, ..*header } == h;
        match socks.get_mut(usize::from(h.index)) {
            Some(slot @ None) if same => *slot = Some(arrived.sock),
            _ => warn!(%peer, index = h.index, "refused a TCP stream: not a missing stream of the admitted session"),
        }
    }
    Ok(socks.into_iter().flatten().collect())
}

/// Binds the TCP listener every receive mode offers (the sender's fallback).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let l = TcpListener::bind(addr).doing(|| format!("binding TCP {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_needs_a_quantum_per_timeout() {
        let mut p = Progress::new(Duration::from_secs(5));
        let first = p.deadline;
        p.advance(PROGRESS_QUANTUM - 1, 1 << 30);
        assert_eq!(p.deadline, first, "under a quantum does not count");
        std::thread::sleep(Duration::from_millis(2));
        p.advance(PROGRESS_QUANTUM, 1 << 30);
        assert!(p.deadline > first);
        let second = p.deadline;
        std::thread::sleep(Duration::from_millis(2));
        p.advance(PROGRESS_QUANTUM + 10, PROGRESS_QUANTUM + 10);
        assert!(p.deadline > second, "the end of the stream counts");
    }
}
