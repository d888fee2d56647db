//! The receiving side: each admitted stream written into the output at
//! its range, progress enforced, the digest checked before the rename.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tracing::warn;

use super::secure::{SecureStream, StreamEncryption};
use super::{TcpReport, CHUNK, PROGRESS_QUANTUM};
use crate::digest::Scratch;
use crate::io::output::{Destination, Landing};
use crate::io::resume::Journaling;
use crate::io::stream_accept::PendingStreams;
use crate::os::syscount::count as count_syscalls;
use crate::report::{hex, human_bytes, summary_line, Intervals};
use crate::wire::stream::{resumed_range, StreamHeader, REPLY_LEN};

/// Where and how a TCP receiver writes what it is sent (into the output
/// the receive loop prepared when the session opened).
pub struct TcpReceiveOptions<'a> {
    pub out: &'a Path,
    pub timeout: Duration,
    pub intervals: bool,
    /// Where a file sent over several streams brings the others.
    pub listener: Option<&'a TcpListener>,
    /// Where the stream resumes, as settled over the control channel: the
    /// sender's streams carry the bytes from there on.
    pub resumed_from: u64,
    /// An encrypted session's keys and AEAD: its streams are TLS records
    /// after their headers.
    pub encrypted: Option<(&'a crate::proto::auth::Keys, crate::wire::message::Cipher)>,
}

/// Receives one admitted TCP transfer: `header` was read and checked
/// against the session by the receive loop. `pending`: connections the
/// receive loop took whose headers are still arriving (the sender's further
/// streams may be among them).
pub fn receive(
    sock: TcpStream,
    header: &StreamHeader,
    opts: &TcpReceiveOptions<'_>,
    pending: PendingStreams,
    prepared: Option<(Destination, Journaling)>,
) -> TcpReport {
    let (out, intervals) = (opts.out, opts.intervals);
    let start = Instant::now();
    let rusage_at_start = crate::os::process::Rusage::of_self();
    let bytes = header.file_size;
    let mut intervals = Intervals::new(intervals, start, bytes);
    intervals.resumed(opts.resumed_from);
    if opts.intervals {
        let peer = sock.peer_addr().map_or("the sender".to_string(), |a| a.to_string());
        println!("Accepted {peer}: {} into {} over TCP", human_bytes(bytes), out.display());
        if opts.resumed_from > 0 {
            println!(
                "Resuming: {} of {} already here and verified",
                human_bytes(opts.resumed_from),
                human_bytes(bytes)
            );
        }
    }
    let mut facts = Facts::default();
    let r = receive_inner(sock, header, opts, pending, prepared, &mut intervals, &mut facts);
    let Facts { failed_files, encryption, read_back } = facts;
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
    let partial = crate::io::output::partial_path(out);
    let process = crate::report::ProcessFigures::now(&rusage_at_start);
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
        resumed_bytes: opts.resumed_from,
        failed_files,
        error,
        path: if verified {
            Some(out.display().to_string())
        } else {
            partial.exists().then(|| partial.display().to_string())
        },
        e2e_goodput_bps: if verified { bytes as f64 * 8.0 / process.e2e_s.max(1e-9) } else { 0.0 },
        process,
        afxdp_not_used: None,
        encryption,
        read_back_bytes: Some(read_back),
    }
}

/// A deadline that moves only when the stream does: at least
/// [`PROGRESS_QUANTUM`] bytes (or the rest of the stream) per `timeout`.
pub(super) struct Progress {
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
    fn read(&self, sock: &mut SecureStream, buf: &mut [u8]) -> anyhow::Result<usize> {
        loop {
            if crate::os::signals::stop_requested() {
                bail!("interrupted");
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the sender delivered under {} KiB in {:?} (idle timeout)", PROGRESS_QUANTUM >> 10, self.timeout);
            }
            // Wake now and then to see a stop request.
            sock.tcp().set_read_timeout(Some(left.min(Duration::from_millis(500))))?;
            count_syscalls(1);
            match sock.read(buf) {
                Ok(n) => return Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(anyhow::Error::new(e).context("receiving")),
            }
        }
    }

    fn read_exact(&mut self, sock: &mut SecureStream, buf: &mut [u8]) -> anyhow::Result<()> {
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

/// What a receive learned besides the digest, for its report, failed or not.
#[derive(Default)]
pub(super) struct Facts {
    /// A verified tree's files that could not be put in place.
    failed_files: Vec<crate::tree::output::FailedFile>,
    encryption: Option<StreamEncryption>,
    /// Bytes of the output read back to hash them.
    read_back: u64,
}

pub(super) fn receive_inner(
    first: TcpStream,
    header: &StreamHeader,
    opts: &TcpReceiveOptions<'_>,
    pending: PendingStreams,
    prepared: Option<(Destination, Journaling)>,
    intervals: &mut Intervals,
    facts: &mut Facts,
) -> anyhow::Result<[u8; 32]> {
    let size = header.file_size;
    let mut socks = secure_streams(join_streams(first, header, opts, pending)?, header, opts);
    facts.encryption = socks.first().and_then(|s| s.encryption().cloned());
    if let (true, Some(e)) = (opts.intervals, facts.encryption.as_ref()) {
        println!("{}", e.describe());
    }
    // Made when the session opened (`crate::io::resume::prepare`), where an
    // interrupted transfer's output is taken up.
    let (mut output, mut journal) = prepared.context("the session's output was not prepared")?;
    let landing = output.landing().context("preparing the output")?;
    let got: Vec<std::sync::atomic::AtomicU64> = socks.iter().map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
    let from = opts.resumed_from.min(size);
    let ranges: Vec<_> = (0..header.count).map(|i| resumed_range(from, size, header.count, i)).collect();
    let mut files_shown = false;
    // Each stream on a thread of its own, writing and hashing its range;
    // this thread keeps the journal, the tree and the writeback.
    let digests = std::thread::scope(|scope| {
        let handles: Vec<_> = socks
            .iter_mut()
            .zip(&ranges)
            .zip(&got)
            .map(|((sock, range), got)| {
                let (range, landing) = (range.clone(), &landing);
                scope.spawn(move || receive_range(sock, range, landing, got, opts.timeout))
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            let prefix = complete_prefix(&ranges, &got);
            if let Destination::Tree(t) = &mut output {
                // The streams past the manifest wait for its files.
                if !t.is_made() && t.held_complete() {
                    t.make()?;
                    journal.start(t.manifest_bytes().unwrap_or_default())?;
                }
                if let (Some(files), false) = (t.file_progress(), files_shown) {
                    intervals.set_files(files);
                    files_shown = true;
                }
            }
            // The streams hash what they write; this starts its writeback.
            output.write_back();
            journal.record(&output, false);
            intervals.tick(
                Instant::now(),
                from + got.iter().map(|g| g.load(std::sync::atomic::Ordering::Acquire)).sum::<u64>(),
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
    let ours = output.digest().context("the output's digest")?;
    facts.read_back = output.read_back_bytes();
    let ok = digests.iter().all(|d| *d == ours);
    if ok {
        output
            .commit()
            .inspect_err(|e| facts.failed_files = crate::tree::output::failed_files(e))
            .context("committing the output")?;
    }
    // Committed, or not worth resuming: its bytes are not the sender's.
    if let Err(e) = journal.stop() {
        warn!("removing the journal {}: {e}", journal.path().display());
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

/// The session's streams, in index order, encrypted from here on where the
/// session is.
fn secure_streams(socks: Vec<TcpStream>, header: &StreamHeader, opts: &TcpReceiveOptions<'_>) -> Vec<SecureStream> {
    let ids = |i: usize| (header.session, header.cookie, i as u16);
    let we_send = crate::proto::auth::StreamDirection::ToSender;
    let secure = |(i, sock)| match opts.encrypted {
        Some((keys, cipher)) => SecureStream::encrypted(sock, keys, ids(i), we_send, cipher),
        None => SecureStream::clear(sock),
    };
    socks.into_iter().enumerate().map(secure).collect()
}

/// Bytes from the file's start that every stream has written.
pub(super) fn complete_prefix(ranges: &[std::ops::Range<u64>], got: &[std::sync::atomic::AtomicU64]) -> u64 {
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
pub(super) fn receive_range(
    sock: &mut SecureStream,
    range: std::ops::Range<u64>,
    landing: &Landing,
    got: &std::sync::atomic::AtomicU64,
    timeout: Duration,
) -> anyhow::Result<[u8; 32]> {
    let len = range.end - range.start;
    let mut buf = vec![0u8; CHUNK];
    let mut scratch = Scratch::new();
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
        landing.land(&mut [(range.start + done, &buf[..n])], &mut scratch).context("writing the output")?;
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
pub(super) fn join_streams(
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
