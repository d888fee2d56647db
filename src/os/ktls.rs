//! Kernel TLS (kTLS): the socket seals and opens TLS 1.3 records itself,
//! so `sendfile` and `splice` keep moving pages without bringing them to
//! user space. Set up with `TCP_ULP "tls"`, then a key per direction
//! (`TLS_TX`, `TLS_RX`); nix wraps the three options, errno kept typed.

use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};

/// One direction's TLS 1.3 key and 12-byte IV (the sequence number is
/// XORed into its last 8 bytes, from 0).
#[derive(Clone)]
pub enum RecordKey {
    Aes256Gcm { key: [u8; 32], iv: [u8; 12] },
    ChaCha20Poly1305 { key: [u8; 32], iv: [u8; 12] },
}

/// Which directions the kernel took; the error of each it did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelTls {
    pub tx: Result<(), Errno>,
    pub rx: Result<(), Errno>,
}

/// Asks the kernel to seal what `sock` sends with `tx` and open what it
/// receives with `rx`, each record sequence from 0. A kernel without TLS
/// (`ENOENT`: no `tls` module) refuses both; the caller then seals in user
/// space, byte for byte the same records.
pub fn enable(sock: &impl AsFd, tx: &RecordKey, rx: &RecordKey) -> KernelTls {
    if let Err(e) = setsockopt(sock, sockopt::TcpUlp::default(), b"tls") {
        return KernelTls { tx: Err(e), rx: Err(e) };
    }
    KernelTls {
        tx: setsockopt(sock, sockopt::TcpTlsTx, &crypto_info(tx)),
        rx: setsockopt(sock, sockopt::TcpTlsRx, &crypto_info(rx)),
    }
}

/// Why the kernel took no TLS, for the mode line.
pub fn describe(e: Errno) -> String {
    match e {
        Errno::ENOENT => "this kernel has no TLS module (CONFIG_TLS)".into(),
        Errno::ENOPROTOOPT => "this kernel has no TLS upper layer protocol".into(),
        e => format!("kernel TLS refused: {}", e.desc()),
    }
}

fn crypto_info(k: &RecordKey) -> sockopt::TlsCryptoInfo {
    let version = libc::TLS_1_3_VERSION;
    match *k {
        RecordKey::Aes256Gcm { key, iv: full } => {
            // The kernel's 12-byte nonce is salt | iv.
            let mut salt = [0u8; 4];
            let mut iv = [0u8; 8];
            salt.copy_from_slice(&full[..4]);
            iv.copy_from_slice(&full[4..]);
            sockopt::TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_AES_GCM_256 },
                iv,
                key,
                salt,
                rec_seq: [0; 8],
            })
        }
        RecordKey::ChaCha20Poly1305 { key, iv } => {
            sockopt::TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305 },
                iv,
                key,
                salt: [],
                rec_seq: [0; 8],
            })
        }
    }
}
