//! Whole Ethernet frames: built once at preload, parsed on receive.
//!
//! Building uses etherparse's header types (valid IPv4 header and UDP checksums,
//! IPv6 with its mandatory UDP checksum, so tshark decodes our packets
//! cleanly); parsing goes through etherparse's checked slicing, which
//! validates every length before reading a field.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, LaxNetSlice, LaxSlicedPacket,
    NetSlice, SlicedPacket, TransportSlice, UdpHeader,
};

use super::{checksum, WireError};

pub const ETH_LEN: usize = Ethernet2Header::LEN;
pub const IPV4_LEN: usize = Ipv4Header::MIN_LEN;
pub const IPV6_LEN: usize = Ipv6Header::LEN;
pub const UDP_LEN: usize = UdpHeader::LEN;
/// Bytes in front of the UDP payload in an untagged IPv4 frame.
pub const IPV4_UDP_OVERHEAD: usize = ETH_LEN + IPV4_LEN + UDP_LEN;

/// The IP version of a transfer's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    pub fn of(addr: &SocketAddr) -> IpVersion {
        match addr {
            SocketAddr::V4(_) => IpVersion::V4,
            SocketAddr::V6(_) => IpVersion::V6,
        }
    }

    /// IP + UDP header bytes, counted against the MTU (which excludes the
    /// Ethernet header).
    pub fn l3_overhead(self) -> usize {
        match self {
            IpVersion::V4 => IPV4_LEN + UDP_LEN,
            IpVersion::V6 => IPV6_LEN + UDP_LEN,
        }
    }

    /// Bytes in front of the UDP payload in an untagged frame.
    pub fn udp_payload_offset(self) -> usize {
        ETH_LEN + self.l3_overhead()
    }

    pub fn name(self) -> &'static str {
        match self {
            IpVersion::V4 => "IPv4",
            IpVersion::V6 => "IPv6",
        }
    }
}

/// The addresses every frame of one transfer shares; `src` and `dst` are of
/// one IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTemplate {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
}

impl FrameTemplate {
    pub fn ip(&self) -> IpVersion {
        IpVersion::of(&self.dst)
    }

    /// Where the UDP payload starts in this template's frames.
    pub fn udp_payload_offset(&self) -> usize {
        self.ip().udp_payload_offset()
    }

    /// Writes `[Ethernet | IP | UDP | udp_payload]` into `out` and returns the
    /// frame length. `udp_payload` is copied; the checksums cover it.
    pub fn build(&self, udp_payload: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
        let at = self.udp_payload_offset();
        let total = at + udp_payload.len();
        if out.len() < total {
            return Err(FrameError::TooLong { need: total, have: out.len() });
        }
        out[at..total].copy_from_slice(udp_payload);
        self.build_in_place(out, udp_payload.len())
    }

    /// Like [`FrameTemplate::build`], for a UDP payload already in place at
    /// `frame[self.udp_payload_offset()..]` (the reader reads the file
    /// straight there).
    pub fn build_in_place(&self, frame: &mut [u8], udp_payload_len: usize) -> Result<usize, FrameError> {
        self.build_in_place_summed(frame, udp_payload_len, None)
    }

    /// Like [`FrameTemplate::build_in_place`], given the one's-complement
    /// sum ([`checksum::sum`]) of the UDP payload's tail: `(tail_len, sum)`
    /// for its last `tail_len` bytes, which must start at an even offset of
    /// the payload. The read-ahead sums each chunk while it is hot in cache
    /// (it has just copied it for hashing) instead of reading it again here.
    pub fn build_in_place_summed(
        &self,
        frame: &mut [u8],
        udp_payload_len: usize,
        tail: Option<(usize, u32)>,
    ) -> Result<usize, FrameError> {
        let at = self.udp_payload_offset();
        let total = at + udp_payload_len;
        if frame.len() < total {
            return Err(FrameError::TooLong { need: total, have: frame.len() });
        }
        let too_long = FrameError::TooLong { need: total, have: 65535 };
        let ip_payload = u16::try_from(UDP_LEN + udp_payload_len).map_err(|_| too_long)?;
        let (ip_end, ether_type) = match (self.src, self.dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
                let mut ip = Ipv4Header::new(ip_payload, self.ttl, IpNumber::UDP, src.ip().octets(), dst.ip().octets())
                    .map_err(|_| too_long)?;
                // Each datagram fits one frame; forbid fragmentation so an MTU
                // mistake shows up as an error rather than a silent split.
                ip.dont_fragment = true;
                ip.header_checksum = ip.calc_header_checksum();
                frame[ETH_LEN..ETH_LEN + IPV4_LEN].copy_from_slice(&ip.to_bytes());
                (ETH_LEN + IPV4_LEN, EtherType::IPV4)
            }
            (SocketAddr::V6(src), SocketAddr::V6(dst)) => {
                let ip = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: ip_payload,
                    next_header: IpNumber::UDP,
                    hop_limit: self.ttl,
                    source: src.ip().octets(),
                    destination: dst.ip().octets(),
                };
                frame[ETH_LEN..ETH_LEN + IPV6_LEN].copy_from_slice(&ip.to_bytes());
                (ETH_LEN + IPV6_LEN, EtherType::IPV6)
            }
            _ => return Err(FrameError::MixedVersions { src: self.src, dst: self.dst }),
        };
        let eth = Ethernet2Header { source: self.src_mac, destination: self.dst_mac, ether_type };
        frame[..ETH_LEN].copy_from_slice(&eth.to_bytes());
        // The UDP checksum (mandatory over IPv6, RFC 8200) over the header
        // with a zero checksum field, the payload and the pseudo-header; a
        // sum of zero goes out as all ones (RFC 768).
        let udp = UdpHeader {
            source_port: self.src.port(),
            destination_port: self.dst.port(),
            length: ip_payload,
            checksum: 0,
        };
        frame[ip_end..at].copy_from_slice(&udp.to_bytes());
        let acc = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => checksum::pseudo_ipv4(s.octets(), d.octets(), total - ip_end),
            (IpAddr::V6(s), IpAddr::V6(d)) => checksum::pseudo_ipv6(s.octets(), d.octets(), total - ip_end),
            _ => return Err(FrameError::MixedVersions { src: self.src, dst: self.dst }),
        };
        let sum = match tail {
            Some((tail_len, tail_sum)) if tail_len <= udp_payload_len && (udp_payload_len - tail_len) % 2 == 0 => {
                checksum::finish(checksum::sum(acc, &frame[ip_end..total - tail_len]) + tail_sum)
            }
            _ => checksum::finish(checksum::sum(acc, &frame[ip_end..total])),
        };
        let sum = if sum == 0 { 0xffff } else { sum };
        frame[ip_end + 6..ip_end + 8].copy_from_slice(&sum.to_be_bytes());
        Ok(total)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {need} bytes does not fit in {have}")]
    TooLong { need: usize, have: usize },
    #[error("source {src} and destination {dst} are of different IP versions")]
    MixedVersions { src: SocketAddr, dst: SocketAddr },
}

/// A UDP datagram found in a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// Finds the UDP datagram in an Ethernet frame (VLAN tags, IPv4 or IPv6).
///
/// Refuses fragments, non-UDP traffic and frames whose headers disagree with
/// their length.
pub fn parse_udp(frame: &[u8]) -> Result<UdpDatagram<'_>, WireError> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|_| WireError::NotUdp)?;
    let udp = match sliced.transport {
        Some(TransportSlice::Udp(udp)) => udp,
        _ => return Err(WireError::NotUdp),
    };
    // A frame handed to us raw (AF_XDP) has not been checked by the kernel's
    // stack: a damaged one is refused here, counted, and repaired like a loss.
    let (src_ip, dst_ip): (std::net::IpAddr, std::net::IpAddr) = match &sliced.net {
        Some(NetSlice::Ipv4(v4)) => {
            if v4.is_payload_fragmented() {
                return Err(WireError::NotUdp);
            }
            let h = v4.header();
            if checksum::internet_checksum(h.slice()) != 0 {
                return Err(WireError::BadChecksum);
            }
            // Checksum 0: the sender computed none (RFC 768).
            if udp.checksum() != 0 && checksum::udp_ipv4(h.source(), h.destination(), udp.slice()) != 0 {
                return Err(WireError::BadChecksum);
            }
            (h.source_addr().into(), h.destination_addr().into())
        }
        Some(NetSlice::Ipv6(v6)) => {
            if v6.is_payload_fragmented() {
                return Err(WireError::NotUdp);
            }
            let h = v6.header();
            // Over IPv6 the UDP checksum is mandatory (RFC 8200).
            if checksum::udp_ipv6(h.source(), h.destination(), udp.slice()) != 0 {
                return Err(WireError::BadChecksum);
            }
            (h.source_addr().into(), h.destination_addr().into())
        }
        _ => return Err(WireError::NotUdp),
    };
    Ok(UdpDatagram {
        src: SocketAddr::new(src_ip, udp.source_port()),
        dst: SocketAddr::new(dst_ip, udp.destination_port()),
        payload: udp.payload(),
    })
}

/// [`parse_udp`] for a frame that is ours to change: the datagram's source,
/// destination and payload, the payload writable in place.
pub fn parse_udp_mut(frame: &mut [u8]) -> Result<(SocketAddr, SocketAddr, &mut [u8]), WireError> {
    let d = parse_udp(frame)?;
    // The payload lies inside the frame (etherparse slices it from there).
    let at = d.payload.as_ptr() as usize - frame.as_ptr() as usize;
    let (src, dst, len) = (d.src, d.dst, d.payload.len());
    Ok((src, dst, &mut frame[at..at + len]))
}

/// [`parse_udp_mut`] for a packet that came as a chain of frames (XDP
/// multi-buffer): `head` holds the headers and the payload's first part,
/// `rest` the frames after it. Returns the source, the destination and the
/// payload's part in `head`; the payload goes on through `rest`. The
/// headers' lengths must match the chain's exactly, and the UDP checksum
/// is taken over every part, where each lies.
pub fn parse_udp_chain_mut<'a>(
    head: &'a mut [u8],
    rest: &[&[u8]],
) -> Result<(SocketAddr, SocketAddr, &'a mut [u8]), WireError> {
    if rest.is_empty() {
        return parse_udp_mut(head);
    }
    let (src, dst, in_head) = parse_udp_chain(head, rest)?;
    let at = head.len() - in_head;
    Ok((src, dst, &mut head[at..]))
}

/// The checks of [`parse_udp_chain_mut`]; returns how many of the payload's
/// bytes are in `head` (at its end).
fn parse_udp_chain(head: &[u8], rest: &[&[u8]]) -> Result<(SocketAddr, SocketAddr, usize), WireError> {
    let rest_len: usize = rest.iter().map(|r| r.len()).sum();
    let sliced = LaxSlicedPacket::from_ethernet(head).map_err(|_| WireError::NotUdp)?;
    let udp = match sliced.transport {
        Some(TransportSlice::Udp(udp)) => udp,
        _ => return Err(WireError::NotUdp),
    };
    let udp_len = usize::from(udp.length());
    // The datagram's part in `head` runs to the frame's end, and the chain
    // holds exactly the rest of it.
    let in_head = udp.slice();
    if in_head.as_ptr_range().end != head.as_ptr_range().end || in_head.len() + rest_len != udp_len {
        return Err(WireError::NotUdp);
    }
    let (pseudo, src_ip, dst_ip, optional): (u32, IpAddr, IpAddr, bool) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            if v4.is_payload_fragmented() || usize::from(h.total_len()) != h.slice().len() + udp_len {
                return Err(WireError::NotUdp);
            }
            if checksum::internet_checksum(h.slice()) != 0 {
                return Err(WireError::BadChecksum);
            }
            let pseudo = checksum::pseudo_ipv4(h.source(), h.destination(), udp_len);
            (pseudo, h.source_addr().into(), h.destination_addr().into(), true)
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            let h = v6.header();
            let exts = v6.payload().payload.as_ptr() as usize - h.slice().as_ptr() as usize - Ipv6Header::LEN;
            if v6.is_payload_fragmented() || usize::from(h.payload_length()) != exts + udp_len {
                return Err(WireError::NotUdp);
            }
            let pseudo = checksum::pseudo_ipv6(h.source(), h.destination(), udp_len);
            (pseudo, h.source_addr().into(), h.destination_addr().into(), false)
        }
        _ => return Err(WireError::NotUdp),
    };
    // Checksum 0 over IPv4: the sender computed none (RFC 768).
    if !(optional && udp.checksum() == 0) {
        let mut acc = checksum::sum(pseudo, in_head);
        let mut at = in_head.len();
        for part in rest {
            acc = checksum::sum_at(acc, part, at % 2 == 1);
            at += part.len();
        }
        if checksum::finish(acc) != 0 {
            return Err(WireError::BadChecksum);
        }
    }
    let (src, dst) = (SocketAddr::new(src_ip, udp.source_port()), SocketAddr::new(dst_ip, udp.destination_port()));
    Ok((src, dst, in_head.len() - UdpHeader::LEN))
}

/// A locally administered unicast MAC, handy in tests.
pub fn test_mac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, last]
}

/// Helper for tests and benches: a template between two documentation-range hosts.
pub fn example_template() -> FrameTemplate {
    FrameTemplate {
        src_mac: test_mac(1),
        dst_mac: test_mac(2),
        src: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000).into(),
        dst: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 9000).into(),
        ttl: 64,
    }
}

/// The same between two documentation-range IPv6 hosts (2001:db8::/32).
pub fn example_template_v6() -> FrameTemplate {
    FrameTemplate {
        src: "[2001:db8::1]:40000".parse().unwrap_or(example_template().src),
        dst: "[2001:db8::2]:9000".parse().unwrap_or(example_template().dst),
        ..example_template()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A jumbo frame cut into a chain anywhere (odd offsets included)
    /// parses as the whole frame does, over IPv4 and IPv6; a chain with a
    /// part missing, one byte changed or the wrong length is refused.
    #[test]
    fn a_chain_of_frames_parses_as_the_whole_frame() {
        for t in [example_template(), example_template_v6()] {
            let payload: Vec<u8> = (0..8940u32).map(|i| (i * 31 + i / 7) as u8).collect();
            let mut buf = vec![0u8; 9100];
            let n = t.build(&payload, &mut buf).unwrap();
            let frame = &buf[..n];
            for cuts in [vec![4096, 8192], vec![3001, 6002], vec![100, 101, 5555]] {
                let mut head = frame[..cuts[0]].to_vec();
                let parts: Vec<&[u8]> = cuts
                    .iter()
                    .zip(cuts.iter().skip(1).chain(std::iter::once(&n)))
                    .map(|(&a, &b)| &frame[a..b])
                    .collect();
                let (src, dst, first) = parse_udp_chain_mut(&mut head, &parts).unwrap();
                assert_eq!((src, dst), (t.src, t.dst));
                let mut whole = first.to_vec();
                parts.iter().for_each(|p| whole.extend_from_slice(p));
                assert_eq!(whole, payload, "cut at {cuts:?}");
                // A part short, a byte changed: refused.
                let mut head = frame[..cuts[0]].to_vec();
                assert_eq!(parse_udp_chain_mut(&mut head, &parts[..parts.len() - 1]), Err(WireError::NotUdp));
                let mut changed = parts[parts.len() - 1].to_vec();
                changed[0] ^= 0x40;
                let mut bad = parts.clone();
                let last = bad.len() - 1;
                bad[last] = &changed;
                let mut head = frame[..cuts[0]].to_vec();
                assert_eq!(parse_udp_chain_mut(&mut head, &bad), Err(WireError::BadChecksum), "cut at {cuts:?}");
            }
        }
    }

    #[test]
    fn build_then_parse_round_trips() {
        let t = example_template();
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut buf = [0u8; 2048];
        let n = t.build(&payload, &mut buf).unwrap();
        assert_eq!(n, IPV4_UDP_OVERHEAD + payload.len());
        let d = parse_udp(&buf[..n]).unwrap();
        assert_eq!(d.src, t.src);
        assert_eq!(d.dst, t.dst);
        assert_eq!(d.payload, &payload[..]);
    }

    #[test]
    fn ipv6_frames_round_trip_with_a_valid_checksum() {
        let t = example_template_v6();
        assert_eq!(t.udp_payload_offset(), 14 + 40 + 8);
        let payload: Vec<u8> = (0..1001u32).map(|i| (i * 13) as u8).collect();
        let mut buf = [0u8; 2048];
        let n = t.build(&payload, &mut buf).unwrap();
        assert_eq!(n, 62 + payload.len());
        assert_eq!(&buf[12..14], &[0x86, 0xdd], "EtherType IPv6");
        assert_eq!(buf[ETH_LEN] >> 4, 6);
        let d = parse_udp(&buf[..n]).unwrap();
        assert_eq!((d.src, d.dst, d.payload), (t.src, t.dst, &payload[..]));
        let mut bad = buf;
        bad[n - 1] ^= 1;
        assert_eq!(parse_udp(&bad[..n]), Err(WireError::BadChecksum));
        let mixed = FrameTemplate { src: example_template().src, ..t };
        assert!(matches!(mixed.build(b"x", &mut buf), Err(FrameError::MixedVersions { .. })));
    }

    #[test]
    fn built_checksums_verify_against_rfc1071_and_etherparse() {
        let t = example_template();
        for len in [0usize, 1, 2, 17, 1400, 1472, 8972] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            let mut buf = [0u8; 9014];
            let n = t.build(&payload, &mut buf).unwrap();
            let ip = &buf[ETH_LEN..ETH_LEN + IPV4_LEN];
            assert_eq!(checksum::internet_checksum(ip), 0, "IPv4 header checksum, len {len}");
            let udp = &buf[ETH_LEN + IPV4_LEN..n];
            let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (t.src, t.dst) else { panic!("an IPv4 template") };
            assert_eq!(checksum::udp_ipv4(src.ip().octets(), dst.ip().octets(), udp), 0, "UDP checksum, len {len}");
            let ip = Ipv4Header::from_slice(ip).unwrap().0;
            let theirs = UdpHeader::with_ipv4_checksum(src.port(), dst.port(), &ip, &udp[UDP_LEN..]).unwrap();
            assert_eq!(&udp[6..8], &theirs.checksum.to_be_bytes(), "etherparse's UDP checksum, len {len}");
        }
    }

    #[test]
    fn a_given_tail_sum_builds_the_same_frame() {
        let t = example_template();
        for (len, tail) in [(1472usize, 1440usize), (8972, 8940), (41, 9), (40, 0)] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let (mut a, mut b) = ([0u8; 9014], [0u8; 9014]);
            let at = t.udp_payload_offset();
            a[at..at + len].copy_from_slice(&payload);
            b[at..at + len].copy_from_slice(&payload);
            let n = t.build_in_place(&mut a, len).unwrap();
            let tail_sum = checksum::sum(0, &payload[len - tail..]);
            assert_eq!(t.build_in_place_summed(&mut b, len, Some((tail, tail_sum))).unwrap(), n);
            assert_eq!(a[..n], b[..n], "payload {len}, tail {tail}");
        }
    }

    #[test]
    fn known_frame_header_checksum() {
        // The RFC 1071 oracle's vector header (192.168.0.1 -> 192.168.0.199, TTL 64,
        // total length 115, DF, id 0) built by our template must carry 0xb861.
        let t = FrameTemplate {
            src: SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), 1).into(),
            dst: SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 199), 2).into(),
            ..example_template()
        };
        let mut buf = [0u8; 256];
        t.build(&[0u8; 115 - 28], &mut buf).unwrap();
        assert_eq!(&buf[ETH_LEN + 10..ETH_LEN + 12], &[0xb8, 0x61]);
    }

    #[test]
    fn damaged_frames_are_refused_by_checksum() {
        let t = example_template();
        let mut frame = [0u8; 2048];
        let n = t.build(b"chunk payload", &mut frame).unwrap();
        assert!(parse_udp(&frame[..n]).is_ok());
        // One bit flipped in the payload, in the IPv4 header's TTL, and in
        // the UDP checksum itself.
        for at in [n - 1, ETH_LEN + 8, ETH_LEN + IPV4_LEN + 6] {
            let mut bad = frame;
            bad[at] ^= 0x10;
            assert_eq!(parse_udp(&bad[..n]), Err(WireError::BadChecksum), "flip at {at}");
        }
        // A UDP checksum of 0 means "none" over IPv4 and is taken.
        let mut none = frame;
        none[ETH_LEN + IPV4_LEN + 6..ETH_LEN + IPV4_LEN + 8].copy_from_slice(&[0, 0]);
        assert!(parse_udp(&none[..n]).is_ok());
    }

    #[test]
    fn refuses_short_buffer_and_garbage() {
        let t = example_template();
        let mut buf = [0u8; 50];
        assert!(t.build(&[0u8; 100], &mut buf).is_err());
        assert_eq!(parse_udp(&[0u8; 10]), Err(WireError::NotUdp));
        let mut frame = [0u8; 2048];
        let n = t.build(b"abc", &mut frame).unwrap();
        for end in 0..n - 3 {
            assert!(parse_udp(&frame[..end]).is_err(), "prefix {end} must not parse");
        }
    }
}
