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

mod recv;
mod secure;
mod send;

use std::io::{self};
use std::net::{SocketAddr, TcpListener};

use serde::Serialize;

use crate::os::sys::Doing;

pub use recv::{receive, TcpReceiveOptions};
pub use secure::StreamEncryption;
pub use send::{send, TcpSendOptions};

const CHUNK: usize = 1 << 20;
/// A stream must deliver at least this much per timeout to count as moving.
pub const PROGRESS_QUANTUM: u64 = 64 << 10;

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
    /// Bytes an interrupted transfer had delivered, not sent again.
    pub resumed_bytes: u64,
    /// Receiver: a verified tree's files that could not be put in place.
    /// Sender: its tree's files that changed while being sent, or were
    /// skipped (links, special files), and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_files: Vec<crate::tree::output::FailedFile>,
    /// The transfer phase runs from the first byte to the verdict.
    #[serde(flatten)]
    pub process: crate::report::ProcessFigures,
    /// The file's bits over `e2e_s`, as the AF_XDP sender reports it.
    pub e2e_goodput_bps: f64,
    /// Sender in auto mode: why AF_XDP was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub afxdp_not_used: Option<String>,
    /// An encrypted session's: the AEAD, and whether the kernel sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<secure::StreamEncryption>,
    /// Receiver: bytes of the output read back to hash them (a resumed
    /// prefix; the streams hash the rest as it arrives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_back_bytes: Option<u64>,
}

fn interrupted() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "interrupted")
}

/// Binds the TCP listener every receive mode offers (the sender's fallback).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let l = TcpListener::bind(addr).doing(|| format!("binding TCP {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}
