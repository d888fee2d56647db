//! The TCP baseline: the zero-copy ladder's other rungs, with the same
//! guarantee as AF_XDP (the receiver writes `PATH.partial`, checks BLAKE3 and
//! renames only on a match; both sides exit 0 only then).
//!
//! Stream: a 24-byte header (magic, version, file size), the file's bytes, the
//! 32-byte BLAKE3 digest. Reply: one status byte (1 = verified) and the
//! receiver's digest.
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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tracing::info;

use super::output::Output;
use crate::report::{hex, human_bits_per_sec, human_bytes};

const MAGIC: u32 = 0x5842_4c54; // "XBLT"
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
const CHUNK: usize = 1 << 20;

use crate::syscount::count as count_syscalls;

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
    /// Untimed: hashing the file before sending (the AF_XDP preload's twin).
    pub prepare_s: f64,
    pub error: Option<String>,
    pub path: Option<String>,
    pub rusage: super::Rusage,
    /// CPU and context switches from the first byte to the verdict.
    pub transfer_rusage: super::Rusage,
    pub syscalls: u64,
}

fn header(size: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&VERSION.to_be_bytes());
    h[8..16].copy_from_slice(&size.to_be_bytes());
    h
}

fn hash_file(file: &File) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

fn check(r: isize, what: &str) -> io::Result<usize> {
    count_syscalls(1);
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r as usize)
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

fn send_body(
    mode: TcpMode,
    file: &File,
    size: u64,
    sock: &mut TcpStream,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let fd_in = file.as_raw_fd();
    let fd_out = sock.as_raw_fd();
    match mode {
        TcpMode::Sendfile => {
            let mut off: libc::off_t = 0;
            while (off as u64) < size {
                let want = ((size - off as u64) as usize).min(SENDFILE_STEP);
                // SAFETY: sendfile between two descriptors we own, with a valid
                // offset pointer; the kernel moves page references, no buffers of ours.
                let n = check(unsafe { libc::sendfile(fd_out, fd_in, &mut off, want) }, "sendfile")?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being sent"));
                }
                progress(off as u64);
            }
        }
        TcpMode::Readwrite => {
            let mut buf = vec![0u8; CHUNK];
            let mut off = 0u64;
            while off < size {
                let want = ((size - off) as usize).min(CHUNK);
                count_syscalls(1);
                let n = std::os::unix::fs::FileExt::read_at(file, &mut buf[..want], off)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being sent"));
                }
                write_all_counted(sock, &buf[..n])?;
                off += n as u64;
                progress(off);
            }
        }
        TcpMode::Mmap => {
            if size > 0 {
                // SAFETY: a read-only private mapping of a file we opened; a
                // concurrent truncation by another process could fault, which is
                // the documented hazard of this rung of the ladder.
                let map = unsafe { memmap2::MmapOptions::new().len(size as usize).map(file) }?;
                count_syscalls(1);
                let mut sent = 0u64;
                for chunk in map.chunks(CHUNK) {
                    write_all_counted(sock, chunk)?;
                    sent += chunk.len() as u64;
                    progress(sent);
                }
            }
        }
        TcpMode::Splice => {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two descriptors into the array we pass.
            check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as isize, "pipe2")?;
            // SAFETY: both descriptors were just created and are owned here only.
            let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // A bigger pipe moves more per call; failure only costs calls.
            // SAFETY: fcntl on our own pipe descriptor.
            unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
            let mut off: libc::loff_t = 0;
            while (off as u64) < size {
                let want = ((size - off as u64) as usize).min(CHUNK);
                // SAFETY: splice between our descriptors with a valid offset pointer.
                let mut inpipe = check(
                    unsafe {
                        libc::splice(
                            fd_in,
                            &mut off,
                            wr.as_raw_fd(),
                            std::ptr::null_mut(),
                            want,
                            libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
                        )
                    },
                    "splice file->pipe",
                )?;
                if inpipe == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being sent"));
                }
                while inpipe > 0 {
                    // SAFETY: as above, pipe -> socket.
                    let n = check(
                        unsafe {
                            libc::splice(
                                rd.as_raw_fd(),
                                std::ptr::null_mut(),
                                fd_out,
                                std::ptr::null_mut(),
                                inpipe,
                                libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
                            )
                        },
                        "splice pipe->socket",
                    )?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::WriteZero, "the receiver closed the connection"));
                    }
                    inpipe -= n;
                }
                progress(off as u64);
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
}

pub fn send(opts: &TcpSendOptions) -> anyhow::Result<TcpReport> {
    let file = File::open(&opts.file).with_context(|| format!("opening {}", opts.file.display()))?;
    let size = file.metadata()?.len();
    let t_prep = Instant::now();
    let digest = hash_file(&file).with_context(|| format!("reading {}", opts.file.display()))?;
    let prepare_s = t_prep.elapsed().as_secs_f64();

    let mut sock = TcpStream::connect_timeout(&opts.dst, opts.timeout)
        .with_context(|| format!("connecting to {} (is `xdpblast recv` listening there?)", opts.dst))?;
    sock.set_read_timeout(Some(opts.timeout))?;
    sock.set_write_timeout(Some(opts.timeout))?;
    info!(dst = %opts.dst, mode = opts.mode.name(), bytes = size, "transfer started");
    let rusage_at_start = super::Rusage::of_self();
    let start = Instant::now();
    write_all_counted(&mut sock, &header(size))?;
    let mut next_report = Instant::now();
    let mut report_progress = |done: u64| {
        if opts.progress && Instant::now() >= next_report {
            next_report = Instant::now() + Duration::from_millis(100);
            eprintln!("progress {done} {size}");
        }
    };
    send_body(opts.mode, &file, size, &mut sock, &mut report_progress)
        .with_context(|| format!("sending over {}", opts.mode.name()))?;
    write_all_counted(&mut sock, &digest)?;
    let mut reply = [0u8; 33];
    count_syscalls(1);
    sock.read_exact(&mut reply).context("waiting for the receiver's verdict (it closed or timed out)")?;
    let elapsed = start.elapsed().as_secs_f64();
    let verified = reply[0] == 1 && reply[1..] == digest;
    if !verified {
        bail!("the receiver reports a digest mismatch: the file it rebuilt differs from ours");
    }
    let goodput = size as f64 * 8.0 / elapsed.max(1e-9);
    if opts.intervals {
        println!(
            "[  0.00-{elapsed:6.2} sec]  {:>12}  {:>16}  sender ({}), verified by receiver",
            human_bytes(size),
            human_bits_per_sec(goodput),
            opts.mode.name()
        );
    }
    Ok(TcpReport {
        summary: crate::report::Summary {
            mode: opts.mode.name().to_string(),
            bytes: size,
            packets: None,
            retransmits: 0,
            goodput_bps: goodput,
            elapsed_s: elapsed,
            digest: hex(&digest),
            verified,
        },
        prepare_s,
        error: None,
        path: None,
        rusage: super::Rusage::of_self(),
        transfer_rusage: super::Rusage::of_self().since(&rusage_at_start),
        syscalls: crate::syscount::total(),
    })
}

/// Receives one TCP transfer on an accepted connection.
pub fn receive(mut sock: TcpStream, out: &Path, idle_timeout: Duration, intervals: bool) -> TcpReport {
    let start = Instant::now();
    let rusage_at_start = super::Rusage::of_self();
    let mut bytes = 0u64;
    let r = receive_inner(&mut sock, out, idle_timeout, &mut bytes);
    let elapsed = start.elapsed().as_secs_f64();
    let (verified, digest, error) = match r {
        Ok(d) => (true, hex(&d), None),
        Err(e) => (false, String::new(), Some(format!("{e:#}"))),
    };
    if intervals && verified {
        println!(
            "[  0.00-{elapsed:6.2} sec]  {:>12}  {:>16}  receiver (tcp), verified blake3:{}",
            human_bytes(bytes),
            human_bits_per_sec(bytes as f64 * 8.0 / elapsed.max(1e-9)),
            &digest[..16]
        );
    }
    TcpReport {
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
        path: Some(if verified {
            out.display().to_string()
        } else {
            super::output::partial_path(out).display().to_string()
        }),
        rusage: super::Rusage::of_self(),
        transfer_rusage: super::Rusage::of_self().since(&rusage_at_start),
        syscalls: crate::syscount::total(),
    }
}

fn receive_inner(
    sock: &mut TcpStream,
    out: &Path,
    idle_timeout: Duration,
    bytes: &mut u64,
) -> anyhow::Result<[u8; 32]> {
    sock.set_read_timeout(Some(idle_timeout))?;
    let idle = |e: io::Error| -> anyhow::Error {
        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            anyhow::anyhow!("no data from the sender for {idle_timeout:?} (idle timeout)")
        } else {
            anyhow::anyhow!("receiving: {e}")
        }
    };
    let mut h = [0u8; HEADER_LEN];
    count_syscalls(1);
    sock.read_exact(&mut h).map_err(idle)?;
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if be32(&h[0..4]) != MAGIC || be32(&h[4..8]) != VERSION {
        bail!("not an xdpblast TCP stream (bad magic or version)");
    }
    let mut size_b = [0u8; 8];
    size_b.copy_from_slice(&h[8..16]);
    let size = u64::from_be_bytes(size_b);
    *bytes = size;
    let mut output = Output::create(out, size).context("preparing the output")?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < size {
        let want = ((size - got) as usize).min(CHUNK);
        count_syscalls(1);
        let n = sock.read(&mut buf[..want]).map_err(idle)?;
        if n == 0 {
            bail!("the sender closed the connection after {got} of {size} bytes");
        }
        count_syscalls(1);
        output.write_batch(&mut [(got, &buf[..n])]).context("writing the output")?;
        got += n as u64;
        output.hash_ahead(got, u64::MAX).context("reading the output back")?;
    }
    let mut theirs = [0u8; 32];
    count_syscalls(1);
    sock.read_exact(&mut theirs).map_err(idle)?;
    let ours = output.digest().context("reading the output back")?;
    let ok = ours == theirs;
    if ok {
        output.commit().context("committing the output")?;
    }
    let mut reply = [0u8; 33];
    reply[0] = u8::from(ok);
    reply[1..].copy_from_slice(&ours);
    count_syscalls(1);
    sock.write_all(&reply).context("sending the verdict")?;
    if !ok {
        bail!("digest mismatch: the file received does not match the sender's BLAKE3 digest; output kept as partial");
    }
    Ok(ours)
}

/// Binds the TCP listener every receive mode offers (the sender's fallback).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let l = TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("binding TCP {addr}: {e}")))?;
    l.set_nonblocking(true)?;
    Ok(l)
}
