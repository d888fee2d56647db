//! The Internet checksum (RFC 1071).
//!
//! The sender sums every payload it builds and the receiver every datagram it
//! takes, so this is on the data path: it sums eight bytes at a time. The tests
//! hold it to the plain 16-bit definition and the frames it builds to
//! etherparse's independent implementation.

/// Adds `data` to a running one's-complement sum; the result is folded to
/// at most 16 bits, so small values may be added to it without overflow.
/// `data` must start at an even offset of the summed range.
///
/// Eight bytes at a time, in the machine's byte order, into a 128-bit
/// accumulator: the one's-complement sum does not depend on byte order
/// except for a swap of the folded result (RFC 1071, section 2 B), and
/// 2^64 = 2^16 = 1 modulo 0xffff, so the wide sum folds to the 16-bit one.
/// This runs at memory speed on a jumbo payload; the sender sums every
/// payload it builds and the receiver every datagram it takes.
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(8);
    let mut wide: u128 = 0;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        wide += u128::from(u64::from_ne_bytes(b));
    }
    let mut native = fold(wide);
    if cfg!(target_endian = "little") {
        native = native.swap_bytes();
    }
    let mut acc = u64::from(acc) + u64::from(native);
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(u128::from(acc)) as u32
}

/// [`sum`] for data that starts at an `odd` offset of the summed range:
/// its bytes pair the other way, which swaps the folded sum's bytes
/// (RFC 1071, section 2 B). A chain of frames splits a datagram anywhere.
pub fn sum_at(acc: u32, data: &[u8], odd: bool) -> u32 {
    if !odd {
        return sum(acc, data);
    }
    let own = fold(u128::from(sum(0, data))).swap_bytes();
    fold(u128::from(acc) + u128::from(own)) as u32
}

/// Folds a wide one's-complement sum to 16 bits (end-around carries).
fn fold(mut x: u128) -> u16 {
    while x > 0xffff {
        x = (x & 0xffff) + (x >> 16);
    }
    x as u16
}

/// Folds a running sum to 16 bits and complements it.
pub fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The checksum of `data` alone: what goes into an IPv4 header.
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// The UDP checksum over an IPv4 pseudo-header and the whole UDP datagram
/// (header included, its checksum field as found). A datagram whose checksum
/// field is correct yields 0 here.
pub fn udp_ipv4(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
    finish(sum(pseudo_ipv4(src, dst, udp.len()), udp))
}

/// The running sum of the IPv4 pseudo-header of a `udp_len`-byte datagram.
pub fn pseudo_ipv4(src: [u8; 4], dst: [u8; 4], udp_len: usize) -> u32 {
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc = acc.wrapping_add(17); // zero byte + protocol
    acc.wrapping_add(udp_len as u32)
}

/// The running sum of the IPv6 pseudo-header of a `udp_len`-byte datagram.
pub fn pseudo_ipv6(src: [u8; 16], dst: [u8; 16], udp_len: usize) -> u32 {
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc = sum(acc, &(udp_len as u32).to_be_bytes());
    acc.wrapping_add(17) // next header
}

/// The UDP checksum over an IPv6 pseudo-header and the whole datagram; 0 for
/// a datagram whose checksum is correct.
pub fn udp_ipv6(src: [u8; 16], dst: [u8; 16], udp: &[u8]) -> u16 {
    finish(sum(pseudo_ipv6(src, dst, udp.len()), udp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_worked_example() {
        // RFC 1071 section 3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(0, &data)), !0xddf2);
    }

    #[test]
    fn known_ipv4_header_vector() {
        // A widely quoted IPv4 header: 192.168.0.1 -> 192.168.0.199, TTL 64, UDP,
        // total length 115, DF. Its checksum is 0xb861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&hdr), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(internet_checksum(&hdr), 0, "a valid header sums to zero");
    }

    #[test]
    fn known_udp_vector() {
        // 10.0.0.1:1234 -> 10.0.0.2:5678, payload "hi", checksum field zeroed.
        // Worked by hand: pseudo-header 0x0a00+0x0001+0x0a00+0x0002+0x0011+0x000a
        // = 0x141e; datagram 0x04d2+0x162e+0x000a+0x0000+0x6869 = 0x8373;
        // 0x141e + 0x8373 = 0x9791 -> !0x9791 = 0x686e.
        let udp = [0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0a, 0x00, 0x00, b'h', b'i'];
        assert_eq!(udp_ipv4([10, 0, 0, 1], [10, 0, 0, 2], &udp), 0x686e);
    }

    /// The word-wide sum against the plain 16-bit one of RFC 1071, for
    /// every length up to 300 and a running start value.
    #[test]
    fn wide_sum_matches_the_plain_definition() {
        fn plain(data: &[u8]) -> u16 {
            let mut acc: u64 = 0x1234;
            for pair in data.chunks(2) {
                acc += u64::from(pair[0]) << 8 | u64::from(*pair.get(1).unwrap_or(&0));
            }
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            !(acc as u16)
        }
        let mut x = 0x9e37_79b9u32;
        let data: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in 0..data.len() {
            assert_eq!(finish(sum(0x1234, &data[..len])), plain(&data[..len]), "length {len}");
        }
        // Jumbo lengths, and a range that starts at an even but unaligned
        // address.
        let big: Vec<u8> = (0..9100u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for (from, len) in [(0, 8972), (2, 9000), (6, 9093), (0, 9100)] {
            let part = &big[from..from + len.min(big.len() - from)];
            assert_eq!(finish(sum(0x1234, part)), plain(part), "from {from}, length {len}");
        }
        assert_eq!(finish(sum(0, &[0xff; 4096])), 0, "all ones sums to negative zero");
    }

    #[test]
    fn udp_ipv6_checksum_verifies_its_own_result() {
        let (src, dst) = ([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0xfd; 16]);
        let mut udp = [0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0b, 0x00, 0x00, b'h', b'i', b'!'];
        let c = udp_ipv6(src, dst, &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(udp_ipv6(src, dst, &udp), 0);
        udp[9] ^= 1;
        assert_ne!(udp_ipv6(src, dst, &udp), 0);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(internet_checksum(&[0xab]), !0xab00);
        assert_eq!(internet_checksum(&[]), 0xffff);
    }
}
