//! A TCP stream of a session, in clear or encrypted as TLS 1.3 records
//! ([`crate::proto::record`]). Each direction is sealed by the kernel where
//! it has kTLS (the zero-copy rungs then still run: the kernel encrypts
//! the pages it sends) and in user space where it has not; the records are
//! the same either way, so the two ends choose on their own.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use serde::Serialize;

use crate::os::ktls;
use crate::os::syscount::count as count_syscalls;
use crate::proto::auth::{Keys, RecordKeys, StreamDirection};
use crate::proto::record::{RecordOpener, RecordSealer, MAX_RECORD};
use crate::wire::message::Cipher;

/// User-space reads take up to this much of the stream at once.
const READ_BUF: usize = 256 << 10;

/// How a stream's bytes are protected, for the reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StreamEncryption {
    pub cipher: &'static str,
    /// Whether the kernel sealed what this end sent (kTLS), and opened
    /// what it received.
    pub kernel_tx: bool,
    pub kernel_rx: bool,
    /// Why the kernel did not take a direction, where it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_tls_missing: Option<String>,
}

impl StreamEncryption {
    /// One line for the mode line: what seals the stream.
    pub fn describe(&self) -> String {
        match (&self.kernel_tls_missing, self.kernel_tx && self.kernel_rx) {
            (_, true) => format!("encrypted: {}, kernel TLS", self.cipher),
            (Some(why), _) => format!("encrypted: {}, sealed in user space: {why}", self.cipher),
            (None, false) => format!("encrypted: {}, sealed in user space", self.cipher),
        }
    }
}

/// The kernel's form of one direction's keys.
fn kernel_key(k: &RecordKeys) -> ktls::RecordKey {
    match k.cipher {
        Cipher::Aes256Gcm => ktls::RecordKey::Aes256Gcm { key: k.key, iv: k.iv },
        Cipher::ChaCha20Poly1305 => ktls::RecordKey::ChaCha20Poly1305 { key: k.key, iv: k.iv },
    }
}

/// Opening in user space: the stream's bytes as read, and the data of the
/// record opened last, still to be handed out.
struct Inbound {
    opener: RecordOpener,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    data: std::ops::Range<usize>,
}

pub struct SecureStream {
    sock: TcpStream,
    /// Sealing in user space (the kernel did not take our sending side).
    tx: Option<RecordSealer>,
    sealed: Vec<u8>,
    rx: Option<Inbound>,
    encryption: Option<StreamEncryption>,
}

impl SecureStream {
    /// A stream of a session in clear.
    pub fn clear(sock: TcpStream) -> SecureStream {
        SecureStream { sock, tx: None, sealed: Vec::new(), rx: None, encryption: None }
    }

    /// Stream `index` of an encrypted session, `ours` being the direction
    /// we send in. The keys go to the kernel where it takes them.
    pub fn encrypted(
        sock: TcpStream,
        keys: &Keys,
        (session, cookie, index): (u64, u64, u16),
        ours: StreamDirection,
        cipher: Cipher,
    ) -> SecureStream {
        let theirs = match ours {
            StreamDirection::ToReceiver => StreamDirection::ToSender,
            StreamDirection::ToSender => StreamDirection::ToReceiver,
        };
        let tx_keys = keys.record_keys(session, cookie, index, ours, cipher);
        let rx_keys = keys.record_keys(session, cookie, index, theirs, cipher);
        let (kernel, missing) = if std::env::var_os("XDPBLAST_NO_KTLS").is_some() {
            // Tests of the user-space records against a kernel that has kTLS.
            let off = nix::errno::Errno::ENOPROTOOPT;
            (ktls::KernelTls { tx: Err(off), rx: Err(off) }, Some("kernel TLS turned off (XDPBLAST_NO_KTLS)".into()))
        } else {
            let k = ktls::enable(&sock, &kernel_key(&tx_keys), &kernel_key(&rx_keys));
            (k, k.tx.err().or(k.rx.err()).map(ktls::describe))
        };
        let rx = kernel.rx.is_err().then(|| Inbound {
            opener: RecordOpener::new(&rx_keys),
            buf: vec![0; READ_BUF + MAX_RECORD],
            start: 0,
            end: 0,
            data: 0..0,
        });
        SecureStream {
            sock,
            tx: kernel.tx.is_err().then(|| RecordSealer::new(&tx_keys)),
            sealed: Vec::new(),
            rx,
            encryption: Some(StreamEncryption {
                cipher: cipher.name(),
                kernel_tx: kernel.tx.is_ok(),
                kernel_rx: kernel.rx.is_ok(),
                kernel_tls_missing: missing,
            }),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    pub fn encryption(&self) -> Option<&StreamEncryption> {
        self.encryption.as_ref()
    }

    /// Whether what we send must pass through user space to be sealed: the
    /// zero-copy rungs (sendfile, splice) cannot run then.
    pub fn seals_in_user_space(&self) -> bool {
        self.tx.is_some()
    }

    /// Opens the next whole record in the buffer, if there is one.
    fn open_next(inb: &mut Inbound) -> io::Result<bool> {
        let have = &inb.buf[inb.start..inb.end];
        let len = match RecordOpener::record_len(have) {
            Ok(Some(len)) if len <= have.len() => len,
            Ok(_) => return Ok(false),
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        let record = &mut inb.buf[inb.start..inb.start + len];
        let data = inb.opener.open(record).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        inb.data = inb.start + data.start..inb.start + data.end;
        inb.start += len;
        Ok(true)
    }
}

impl AsRawFd for SecureStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Read for SecureStream {
    /// Plain or kTLS: the socket's bytes. Sealed in user space: the data of
    /// the records that have arrived whole; a timeout or an interruption
    /// keeps what was read for the next call.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(inb) = self.rx.as_mut() else { return self.sock.read(out) };
        loop {
            if !inb.data.is_empty() {
                let n = out.len().min(inb.data.len());
                out[..n].copy_from_slice(&inb.buf[inb.data.start..inb.data.start + n]);
                inb.data.start += n;
                return Ok(n);
            }
            if SecureStream::open_next(inb)? {
                continue;
            }
            if inb.buf.len() - inb.end < MAX_RECORD {
                inb.buf.copy_within(inb.start..inb.end, 0);
                inb.end -= inb.start;
                inb.start = 0;
            }
            let n = self.sock.read(&mut inb.buf[inb.end..])?;
            if n == 0 {
                if inb.start == inb.end {
                    return Ok(0);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended inside a TLS record"));
            }
            inb.end += n;
        }
    }
}

impl Write for SecureStream {
    /// Plain or kTLS: the socket's write. Sealed in user space: all of
    /// `data` becomes records and goes out before this returns.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(sealer) = self.tx.as_mut() else { return self.sock.write(data) };
        self.sealed.clear();
        sealer.seal(data, &mut self.sealed);
        let mut rest = &self.sealed[..];
        while !rest.is_empty() {
            count_syscalls(1);
            match self.sock.write(rest) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the peer closed the connection")),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
