//! The sending side: Hello on the control port, then the file over one or
//! more streams, by the mode's rung of the ladder, and the digest behind it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tracing::info;

use super::secure::SecureStream;
use super::{interrupted, TcpMode, TcpReport, CHUNK};
use crate::io::control::Control;
use crate::os::sys::{self};
use crate::os::syscount::count as count_syscalls;
use crate::proto::{Sender, SenderConfig};
use crate::report::{hex, human_bytes, summary_line, Intervals};
use crate::tree::input::{Piece, TreeInput};
use crate::tree::scan::Scanned;
use crate::wire::message::SessionInfo;
use crate::wire::stream::{resumed_range, StreamHeader, MAX_STREAMS, REPLY_LEN};

/// Hashes the file on its own thread; a stop request (SIGINT, SIGTERM)
/// ends it within one 1 MiB read.
pub(super) fn hash_file(file: &File, mut h: blake3::Hasher) -> io::Result<[u8; 32]> {
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

/// What a TCP send reads: one file, or a tree's stream.
#[derive(Clone, Copy)]
pub(super) enum TcpInput<'a> {
    File(&'a File),
    Tree(&'a Scanned),
}

impl TcpInput<'_> {
    /// The input as the datagram sender reads it, to hash a prefix.
    fn prefix_input(self) -> io::Result<crate::tree::input::Input> {
        Ok(match self {
            TcpInput::File(f) => crate::tree::input::Input::File(f.try_clone()?),
            TcpInput::Tree(s) => crate::tree::input::Input::Tree(TreeInput::new(s)?),
        })
    }

    /// The digest of the whole stream, read on its own thread.
    fn hash(self, mut h: blake3::Hasher) -> io::Result<[u8; 32]> {
        let tree = match self {
            TcpInput::File(f) => return hash_file(f, h),
            TcpInput::Tree(s) => s,
        };
        let mut input = TreeInput::new(tree)?;
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < input.len() {
            if crate::os::signals::stop_requested() {
                return Err(interrupted());
            }
            let n = input.read_vectored_at(&mut [io::IoSliceMut::new(&mut buf)], off)?;
            h.update(&buf[..n]);
            off += n as u64;
        }
        input.check_open()?;
        Ok(*h.finalize().as_bytes())
    }

    /// Sends the stream's bytes in `range` as [`send_body`] does a file's:
    /// a tree's manifest written from memory, its files each by `mode`.
    fn send_range(
        self,
        mode: TcpMode,
        range: std::ops::Range<u64>,
        sock: &mut SecureStream,
        progress: &mut dyn FnMut(u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let tree = match self {
            TcpInput::File(f) => return send_body(mode, f, range, sock, progress),
            TcpInput::Tree(s) => s,
        };
        let mut input = TreeInput::new(tree)?;
        let base = range.start;
        input.for_each_piece(range, &mut |piece, at| match piece {
            Piece::Bytes(b) => {
                write_all_counted(sock, b)?;
                progress(at - base + b.len() as u64)
            }
            Piece::File(f, r) => {
                let before = at - base;
                send_body(mode, f, r, sock, &mut |done| progress(before + done))
            }
        })?;
        input.check_open()
    }
}

pub(super) fn write_all_counted(sock: &mut impl Write, mut buf: &[u8]) -> io::Result<()> {
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
pub(super) const SENDFILE_STEP: usize = 64 << 20;

/// Sends the file's bytes in `range`; `progress` hears how many of them
/// are out after each step. A stream sealed in user space takes every
/// byte through a buffer, whatever the mode.
pub(super) fn send_body(
    mode: TcpMode,
    file: &File,
    range: std::ops::Range<u64>,
    sock: &mut SecureStream,
    progress: &mut dyn FnMut(u64) -> io::Result<()>,
) -> io::Result<()> {
    let fd_in = file.as_raw_fd();
    let fd_out = sock.as_raw_fd();
    let (base, size) = (range.start, range.end);
    let mut progress = |at: u64| progress(at - base);
    let mode = if sock.seals_in_user_space() { TcpMode::Readwrite } else { mode };
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
    /// The file, or with `tree` the first path given.
    pub file: PathBuf,
    /// A directory tree (or several paths), walked: sent as one stream.
    pub tree: Option<std::sync::Arc<Scanned>>,
    pub dst: SocketAddr,
    pub mode: TcpMode,
    pub timeout: Duration,
    pub intervals: bool,
    /// Print `progress BYTES TOTAL` lines on stderr (for `bench`).
    pub progress: bool,
    /// The pre-shared key's derived keys (`--key-file`).
    pub keys: Option<crate::proto::auth::Keys>,
    /// With `keys`: the AEAD of the streams' TLS records (`None`: in clear,
    /// `send --no-encrypt`).
    pub encrypt: Option<crate::wire::message::Cipher>,
    /// Why TCP carries the file when AF_XDP was asked for (auto's fallback),
    /// for the mode line.
    pub fallback_reason: Option<String>,
    /// Connections the file's ranges travel over at once (`--streams`).
    pub streams: u16,
    /// Start over even where the receiver holds part of the file
    /// (`send --no-resume`).
    pub no_resume: bool,
}

pub fn send(opts: &TcpSendOptions) -> anyhow::Result<TcpReport> {
    let file = File::open(&opts.file).with_context(|| format!("opening {}", opts.file.display()))?;
    let meta = file.metadata()?;
    let (input, size, tree) = match opts.tree.as_deref() {
        Some(scanned) => {
            let t = TreeInput::new(scanned)?;
            (TcpInput::Tree(scanned), t.len(), Some(t.shape()))
        }
        None if meta.is_file() => (TcpInput::File(&file), meta.len(), None),
        None => bail!("{} is not a regular file", opts.file.display()),
    };
    let count = opts.streams.clamp(1, MAX_STREAMS);
    let t_prep = Instant::now();
    let mut intervals = Intervals::new(opts.intervals, crate::os::process::process_start(), size);
    if let (Some(scanned), Some(shape)) = (opts.tree.as_deref(), tree) {
        intervals = intervals.with_files(crate::tree::FileProgress::new(&scanned.manifest, shape.manifest_len));
    }
    let (session, cookie, from) = admit(opts, input, size, &meta, tree, &mut intervals)?;
    intervals.resumed(from);
    let socks = (0..count).map(|_| connect(opts)).collect::<anyhow::Result<Vec<TcpStream>>>()?;
    let mut socks = secure_streams(opts, socks, size, session, cookie, &meta)?;
    let encryption = socks.first().and_then(|s| s.encryption().cloned());
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
        if let Some(e) = &encryption {
            println!("{}", e.describe());
        }
    }
    let rusage_at_start = crate::os::process::Rusage::of_self();
    let start = Instant::now();
    let fds: Vec<std::os::fd::RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let retransmits_all = || fds.iter().map(|&fd| sys::tcp_retransmits(fd).ok()).sum::<Option<u64>>();
    let digest = send_streams(opts, input, from..size, &mut socks, &mut intervals, &retransmits_all)?;
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
    let process = crate::report::ProcessFigures::now(&rusage_at_start);
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
        resumed_bytes: from,
        failed_files: crate::tree::scan::skipped_files(opts.tree.as_deref()),
        error: None,
        path: None,
        e2e_goodput_bps: size as f64 * 8.0 / process.e2e_s.max(1e-9),
        process,
        afxdp_not_used: opts.fallback_reason.clone(),
        encryption,
        read_back_bytes: None,
    })
}

/// Sends each stream's header, in clear (it names the session), and
/// makes the streams of an encrypted session encrypted from there on.
fn secure_streams(
    opts: &TcpSendOptions,
    socks: Vec<TcpStream>,
    size: u64,
    session: u64,
    cookie: u64,
    meta: &std::fs::Metadata,
) -> anyhow::Result<Vec<SecureStream>> {
    let count = socks.len() as u16;
    let source = crate::io::output::source_id(meta);
    socks
        .into_iter()
        .enumerate()
        .map(|(i, mut sock)| {
            let index = i as u16;
            let header = StreamHeader { file_size: size, session, cookie, source, index, count };
            write_all_counted(&mut sock, &header.emit())?;
            Ok(match (&opts.keys, opts.encrypt) {
                (Some(keys), Some(cipher)) => SecureStream::encrypted(
                    sock,
                    keys,
                    (session, cookie, index),
                    crate::proto::auth::StreamDirection::ToReceiver,
                    cipher,
                ),
                _ => SecureStream::clear(sock),
            })
        })
        .collect()
}

pub(super) fn connect(opts: &TcpSendOptions) -> anyhow::Result<TcpStream> {
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
pub(super) fn send_streams(
    opts: &TcpSendOptions,
    input: TcpInput<'_>,
    stream: std::ops::Range<u64>,
    socks: &mut [SecureStream],
    intervals: &mut Intervals,
    retransmits_all: &dyn Fn() -> Option<u64>,
) -> anyhow::Result<[u8; 32]> {
    let count = socks.len() as u16;
    let (from, size) = (stream.start, stream.end);
    let hasher = opts.keys.as_ref().map_or_else(blake3::Hasher::new, |k| k.digest_hasher());
    // Bytes the other streams have sent, for stream 0's lines.
    let others = std::sync::atomic::AtomicU64::new(0);
    let mut next_report = Instant::now();
    std::thread::scope(|scope| {
        let hashing = std::thread::Builder::new()
            .name("xdpblast-hash".into())
            .spawn_scoped(scope, || input.hash(hasher))
            .context("starting the hashing thread")?;
        let (first, rest) = socks.split_first_mut().context("no stream")?;
        let mut senders = Vec::new();
        for (i, sock) in rest.iter_mut().enumerate() {
            let (range, others) = (resumed_range(from, size, count, i as u16 + 1), &others);
            let mut last = 0;
            let h = std::thread::Builder::new()
                .name(format!("xdpblast-tcp{}", i + 1))
                .spawn_scoped(scope, move || {
                    input.send_range(opts.mode, range, sock, &mut |done| {
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
            let done = from + mine + others.load(std::sync::atomic::Ordering::Relaxed);
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
        input
            .send_range(opts.mode, resumed_range(from, size, count, 0), first, &mut report_progress)
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
pub(super) fn await_verdict(
    sock: &mut SecureStream,
    timeout: Duration,
    waiting: &mut dyn FnMut(Instant),
) -> anyhow::Result<[u8; REPLY_LEN]> {
    let mut reply = [0u8; REPLY_LEN];
    let mut got = 0;
    let deadline = Instant::now() + timeout;
    sock.tcp().set_read_timeout(Some(Duration::from_millis(250)))?;
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
/// would, asking for the file over TCP; returns its id, the receiver's
/// cookie for the stream header, and where the stream resumes.
pub(super) fn admit(
    opts: &TcpSendOptions,
    input: TcpInput<'_>,
    size: u64,
    meta: &std::fs::Metadata,
    tree: Option<crate::wire::message::TreeShape>,
    intervals: &mut Intervals,
) -> anyhow::Result<(u64, u64, u64)> {
    let ctrl_peer = SocketAddr::new(opts.dst.ip(), crate::io::control::control_port(opts.dst.port())?);
    let any: SocketAddr = if ctrl_peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().context("wildcard")?;
    let mut ctrl = Control::connect(any, ctrl_peer)?;
    let session = crate::os::process::random_session();
    let chunk = CHUNK as u32;
    let info =
        SessionInfo { file_size: size, chunk_size: chunk, n_chunks: size.div_ceil(u64::from(chunk)), digest: None };
    let cfg = SenderConfig {
        timeout: opts.timeout,
        source: crate::io::output::source_id(meta),
        attrs: tree.is_none().then(|| crate::io::output::file_attrs(meta)),
        tree,
        via_tcp: true,
        keys: opts.keys.clone(),
        encrypt: opts.encrypt,
        name: crate::io::file_name(&opts.file),
        ..Default::default()
    };
    let mut sender = Sender::new(cfg, session, info, Instant::now());
    let hasher = || opts.keys.as_ref().map_or_else(blake3::Hasher::new, |k| k.digest_hasher());
    crate::io::control::handshake(&mut sender, &mut ctrl, ctrl_peer, &mut |sender, now| {
        intervals.tick(now, 0, None, "waiting for the receiver's answer");
        crate::io::control::answer_resume(sender, now, opts.no_resume, opts.intervals, &mut |len| {
            input.prefix_input()?.hash_prefix(len, hasher())
        })
    })?;
    let cookie = sender.cookie().context("the receiver acknowledged without a cookie")?;
    Ok((session, cookie, sender.resumed_from()))
}
