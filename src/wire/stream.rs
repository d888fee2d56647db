//! The TCP stream's header: what a TCP sender says before the file's bytes.
//!
//! ```text
//!  0      4       5      6     8           16           24           32            48
//!  +------+-------+------+-----+-----------+------------+------------+-------------+
//!  |magic |version|flags | 0 0 | file size | session id |   cookie   |  source id  |
//!  +------+-------+------+-----+-----------+------------+------------+-------------+
//! ```
//!
//! All integers are big-endian. The stream continues with the file's bytes and
//! the 32-byte BLAKE3 digest; the receiver answers one status byte (1 =
//! verified) and its own digest ([`REPLY_LEN`] bytes).
//!
//! A TCP sender is admitted over the control channel first, like a datagram
//! sender (Hello, cookie, Hello with the cookie, `via_tcp`); the header names
//! that admitted session, and the receiver takes the stream only if session,
//! cookie, size and the peer's address all match it.

use super::message::SourceId;
use super::WireError;

pub const MAGIC: u32 = 0x5842_4c54; // "XBLT"
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 48;
/// The receiver's verdict: status byte + its digest.
pub const REPLY_LEN: usize = 33;

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub file_size: u64,
    pub session: u64,
    pub cookie: u64,
    pub source: SourceId,
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl StreamHeader {
    /// Checks and parses the first [`HEADER_LEN`] bytes of a stream.
    pub fn parse(buf: &[u8]) -> Result<StreamHeader, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if buf[0..4] != MAGIC.to_be_bytes() {
            return Err(WireError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(WireError::BadVersion);
        }
        // No flags are defined yet; reserved bytes must be zero so a later
        // version can give them meaning.
        if buf[5] != 0 || buf[6..8] != [0, 0] {
            return Err(WireError::BadBody);
        }
        let mut source = [0u8; 16];
        source.copy_from_slice(&buf[32..48]);
        Ok(StreamHeader {
            file_size: be_u64(&buf[8..16]),
            session: be_u64(&buf[16..24]),
            cookie: be_u64(&buf[24..32]),
            source,
        })
    }

    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        h[4] = VERSION;
        h[8..16].copy_from_slice(&self.file_size.to_be_bytes());
        h[16..24].copy_from_slice(&self.session.to_be_bytes());
        h[24..32].copy_from_slice(&self.cookie.to_be_bytes());
        h[32..48].copy_from_slice(&self.source);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StreamHeader {
        StreamHeader { file_size: 0x0102_0304_0506, session: 7, cookie: 0xdead_beef, source: [9; 16] }
    }

    #[test]
    fn round_trips_and_matches_fixture() {
        let h = sample();
        let bytes = h.emit();
        assert_eq!(StreamHeader::parse(&bytes), Ok(h));
        // A fixed fixture: the layout is part of the protocol.
        let mut fixture = vec![0x58, 0x42, 0x4c, 0x54, 2, 0, 0, 0];
        fixture.extend_from_slice(&[0, 0, 1, 2, 3, 4, 5, 6]);
        fixture.extend_from_slice(&7u64.to_be_bytes());
        fixture.extend_from_slice(&0xdead_beefu64.to_be_bytes());
        fixture.extend_from_slice(&[9; 16]);
        assert_eq!(&bytes[..], &fixture[..]);
    }

    #[test]
    fn refuses_what_is_not_our_header() {
        let good = sample().emit();
        for end in 0..HEADER_LEN {
            assert_eq!(StreamHeader::parse(&good[..end]), Err(WireError::Truncated));
        }
        let mut b = good;
        b[0] = b'G'; // "GET / HTTP/1.1" and friends
        assert_eq!(StreamHeader::parse(&b), Err(WireError::BadMagic));
        let mut b = good;
        b[4] = 1;
        assert_eq!(StreamHeader::parse(&b), Err(WireError::BadVersion));
        let mut b = good;
        b[5] = 1;
        assert_eq!(StreamHeader::parse(&b), Err(WireError::BadBody));
    }
}
