//! The Internet checksum (RFC 1071).
//!
//! Frames are built at preload with etherparse, which computes the IPv4 and UDP
//! checksums; this independent implementation is the oracle the tests hold those
//! frames to, and what a receiver can use to validate a frame it was handed raw.

/// Adds `data` to a running one's-complement sum; the result is folded to
/// at most 16 bits, so small values may be added to it without overflow.
/// `data` must start at an even offset of the summed range.
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    // Four bytes at a time into a wide accumulator: 2^32 = 2^16 = 1 modulo
    // 0xffff, so folding the wide sum gives the 16-bit one's-complement sum.
    let mut wide = u64::from(acc);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        wide += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        wide += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        wide += u64::from(*last) << 8;
    }
    while wide > 0xffff {
        wide = (wide & 0xffff) + (wide >> 16);
    }
    wide as u32
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
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc = acc.wrapping_add(17); // zero byte + protocol
    acc = acc.wrapping_add(udp.len() as u32);
    finish(sum(acc, udp))
}

/// The UDP checksum over an IPv6 pseudo-header and the whole datagram; 0 for
/// a datagram whose checksum is correct.
pub fn udp_ipv6(src: [u8; 16], dst: [u8; 16], udp: &[u8]) -> u16 {
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc = sum(acc, &(udp.len() as u32).to_be_bytes());
    acc = acc.wrapping_add(17); // next header
    finish(sum(acc, udp))
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
