//! The TCP stream's header: what a TCP sender says before the file's bytes.
//!
//! ```text
//!  0      4       5      6       8           16           24           32            48
//!  +------+-------+------+-------+-----------+------------+------------+-------------+
//!  |magic |version|index | count | file size | session id |   cookie   |  source id  |
//!  +------+-------+------+-------+-----------+------------+------------+-------------+
//! ```
//!
//! All integers are big-endian. A file may travel over `count` streams at
//! once (1 to [`MAX_STREAMS`]); stream `index` carries the byte range
//! [`stream_range`] gives it. Each continues with its range's bytes and the
//! 32-byte BLAKE3 digest of the whole file; the receiver answers each with
//! one status byte (1 = verified) and its own digest ([`REPLY_LEN`] bytes).
//!
//! A TCP sender is admitted over the control channel first, like a datagram
//! sender (Hello, cookie, Hello with the cookie, `via_tcp`); the header names
//! that admitted session, and the receiver takes the stream only if session,
//! cookie, size and the peer's address all match it.

use super::message::SourceId;
use super::WireError;

pub const MAGIC: u32 = 0x5842_4c54; // "XBLT"
pub const VERSION: u8 = 3;
/// Most streams one file travels over.
pub const MAX_STREAMS: u16 = 64;
/// Ranges start on multiples of this (page-aligned for sendfile and the
/// page cache).
const RANGE_ALIGN: u64 = 1 << 20;
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
    /// This stream's place among the file's streams.
    pub index: u16,
    pub count: u16,
}

/// The bytes of a `size`-byte file that stream `index` of `count` carries:
/// equal ranges, aligned to 1 MiB, the last one shorter (some empty when
/// the file is small).
pub fn stream_range(size: u64, count: u16, index: u16) -> std::ops::Range<u64> {
    let per = size.div_ceil(u64::from(count.max(1))).div_ceil(RANGE_ALIGN) * RANGE_ALIGN;
    let start = (u64::from(index) * per).min(size);
    start..(start + per).min(size)
}

/// Stream `index`'s range of a transfer that resumes at byte `from`: the
/// bytes from there on, split as [`stream_range`] splits a whole file.
pub fn resumed_range(from: u64, size: u64, count: u16, index: u16) -> std::ops::Range<u64> {
    let r = stream_range(size - from.min(size), count, index);
    r.start + from..r.end + from
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
        let (index, count) = (u16::from(buf[5]), u16::from_be_bytes([buf[6], buf[7]]));
        if count == 0 || count > MAX_STREAMS || index >= count {
            return Err(WireError::BadBody);
        }
        let mut source = [0u8; 16];
        source.copy_from_slice(&buf[32..48]);
        Ok(StreamHeader {
            file_size: be_u64(&buf[8..16]),
            session: be_u64(&buf[16..24]),
            cookie: be_u64(&buf[24..32]),
            source,
            index,
            count,
        })
    }

    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        h[4] = VERSION;
        h[5] = self.index as u8;
        h[6..8].copy_from_slice(&self.count.to_be_bytes());
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
        StreamHeader {
            file_size: 0x0102_0304_0506,
            session: 7,
            cookie: 0xdead_beef,
            source: [9; 16],
            index: 2,
            count: 3,
        }
    }

    #[test]
    fn round_trips_and_matches_fixture() {
        let h = sample();
        let bytes = h.emit();
        assert_eq!(StreamHeader::parse(&bytes), Ok(h));
        // A fixed fixture: the layout is part of the protocol.
        let mut fixture = vec![0x58, 0x42, 0x4c, 0x54, 3, 2, 0, 3];
        fixture.extend_from_slice(&[0, 0, 1, 2, 3, 4, 5, 6]);
        fixture.extend_from_slice(&7u64.to_be_bytes());
        fixture.extend_from_slice(&0xdead_beefu64.to_be_bytes());
        fixture.extend_from_slice(&[9; 16]);
        assert_eq!(&bytes[..], &fixture[..]);
    }

    /// A resumed transfer's streams cover exactly the bytes from the
    /// resume point on, each once, in order; from 0 they are the plain
    /// split, and from the end nothing is left.
    #[test]
    fn resumed_ranges_tile_the_rest_of_the_file() {
        let size = 10_000_000;
        for (from, count) in [(0, 1), (0, 3), (4_194_305, 2), (9_999_999, 4), (size, 2)] {
            let ranges: Vec<_> = (0..count).map(|i| resumed_range(from, size, count, i)).collect();
            assert_eq!(ranges[0].start, from);
            assert_eq!(ranges[count as usize - 1].end, size);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start), "{ranges:?}");
            if from == 0 {
                assert!((0..count).all(|i| resumed_range(0, size, count, i) == stream_range(size, count, i)));
            }
        }
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
        for (index, count) in [(0u8, 0u16), (3, 3), (0, MAX_STREAMS + 1)] {
            let mut b = good;
            b[5] = index;
            b[6..8].copy_from_slice(&count.to_be_bytes());
            assert_eq!(StreamHeader::parse(&b), Err(WireError::BadBody), "stream {index} of {count}");
        }
    }

    /// The ranges tile the file in order, aligned, whatever the count.
    #[test]
    fn stream_ranges_tile_the_file() {
        for size in [0u64, 1, RANGE_ALIGN - 1, RANGE_ALIGN, 5 * RANGE_ALIGN + 7, 1 << 30] {
            for count in [1u16, 2, 3, 8, MAX_STREAMS] {
                let mut at = 0;
                for i in 0..count {
                    let r = stream_range(size, count, i);
                    assert_eq!(r.start, at, "{size} bytes, stream {i} of {count}");
                    assert!(r.start % RANGE_ALIGN == 0 || r.start == size);
                    at = r.end;
                }
                assert_eq!(at, size, "{size} bytes over {count} streams");
            }
        }
        assert_eq!(stream_range(3 << 20, 2, 1), (2 << 20)..(3 << 20));
    }
}
