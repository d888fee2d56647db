//! The transfer protocol, without I/O.
//!
//! Nothing here opens a socket or reads a clock: datagrams and the current
//! [`std::time::Instant`] are passed in, datagrams to send and events come out.
//! Every driver in [`crate::io`] (AF_XDP, UDP socket) runs the same machines,
//! and the tests below run them over a simulated lossy network, deterministically.
//!
//! The exchange:
//!
//! ```text
//! sender                                   receiver
//!   Hello(info) ─────────── control ──────────▶   (no state yet)
//!   ◀────────────────────── control ─────────── HelloAck(cookie, not opened)
//!   Hello(info) + cookie ── control ──────────▶   (opens PATH.partial)
//!   ◀────────────────────── control ─────────── HelloAck(opened)
//!   Meta(first), Data 0..n, Meta(last, digest) ── data path (AF_XDP) ──▶
//!   ◀──── Nack(round, prefix, bitmap) every tick (empty = heartbeat)
//!   Data (repairs, same frames again) ── data ──▶
//!   End(info) every probe interval once idle ──▶
//!   ◀────────────────────── Done(ok, digest)    (after BLAKE3 of the file)
//! ```
//!
//! Every datagram after the first Hello carries the cookie; with a
//! pre-shared key, control messages and Metas are sealed, and every data
//! frame carries a tag the receiver checks before the chunk counts
//! ([`auth`]).

pub mod auth;
pub mod chunkset;
pub mod pacer;
pub mod rate_control;
pub mod receiver;
pub mod record;
pub mod sender;

#[cfg(test)]
mod sim;

pub use receiver::{Receiver, ReceiverConfig};
pub use sender::{FrameId, Sender, SenderConfig};

/// Number of chunks for a file of `file_size` bytes in chunks of `chunk_size`.
pub fn chunk_count(file_size: u64, chunk_size: u32) -> u64 {
    file_size.div_ceil(u64::from(chunk_size.max(1)))
}
