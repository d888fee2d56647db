//! Zero-copy or copy mode: what the driver says it can do, and how a socket
//! should bind for packets of a given length.
//!
//! Two facts decide. Whether the driver has AF_XDP zero-copy at all (the
//! `xsk_zerocopy` XDP feature), and how many descriptors one packet may span
//! in zero-copy mode (`xdp_zc_max_segs`, from the netdev netlink family).
//! A driver that advertises zero-copy can still refuse the bind (virtio-net
//! without VIRTIO_F_ACCESS_PLATFORM does, with EINVAL), so only a bind tells
//! for certain; see [`super::xsk::Xsk::mode`].

use super::program::{self, XdpQuery};
use super::xsk::BindMode;

/// What the driver reports about AF_XDP zero-copy on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DriverZeroCopy {
    /// The driver advertises `xsk_zerocopy`.
    pub advertised: bool,
    /// Most descriptors one packet may span in zero-copy mode: 1 means no
    /// descriptor chains (virtio_net, and any kernel before 6.6).
    pub max_segs: u32,
}

impl DriverZeroCopy {
    /// Asks the kernel; `None` when it cannot be asked (no such interface,
    /// or a kernel without XDP feature reporting).
    pub fn query(ifindex: u32) -> Option<DriverZeroCopy> {
        program::query(ifindex).ok().map(|q| DriverZeroCopy::from_query(&q))
    }

    pub fn from_query(q: &XdpQuery) -> DriverZeroCopy {
        DriverZeroCopy { advertised: q.feature_flags & XdpQuery::ACT_XSK_ZEROCOPY != 0, max_segs: q.zc_max_segs.max(1) }
    }
}

/// Why zero-copy, asked for by name, cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZeroCopyError {
    #[error(
        "{ifname}'s driver has no AF_XDP zero-copy (it does not advertise xsk_zerocopy); use --xdp-bind auto or copy"
    )]
    NotAdvertised { ifname: String },
    #[error(
        "in zero-copy mode {ifname}'s driver takes packets of at most {max_segs} UMEM frame{s}, and a {packet}-byte packet needs {chain} frames of {frame_size} bytes; use --packet-size {fits} or less, or --xdp-bind copy for {packet}-byte packets",
        s = if *.max_segs == 1 { "" } else { "s" }
    )]
    ChainTooLong { ifname: String, max_segs: u32, chain: u32, packet: u32, frame_size: u32, fits: u32 },
}

/// How to bind, and the reason when it is not what the user might expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindChoice {
    pub bind: BindMode,
    /// Said on the mode line when `auto` chose copy mode on a driver that
    /// has zero-copy.
    pub note: Option<String>,
}

/// The packet a plan sends: its length at IP and in UMEM frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketShape {
    pub packet: u32,
    /// UMEM frames one packet spans.
    pub chain: u32,
    pub frame_size: u32,
    /// Bytes of a frame before the IP packet (the Ethernet header).
    pub link_header: u32,
}

impl PacketShape {
    /// The largest IP packet that fits `segs` frames.
    fn fits(&self, segs: u32) -> u32 {
        (segs * self.frame_size).saturating_sub(self.link_header)
    }
}

/// Chooses the bind for packets of `shape` on a driver reporting `driver`.
///
/// - `copy` stays copy.
/// - `zerocopy` is refused up front, naming the limit, where the driver has no
///   zero-copy or takes shorter chains than the packets need.
/// - `auto` leaves the choice to the kernel (zero-copy where it binds), except
///   where the packets need chains the driver cannot take in zero-copy: then
///   copy mode, asked for by name, keeps the packet size, and the note says
///   which packet size would allow zero-copy. The kernel would pick copy mode
///   there anyway, but silently.
pub fn choose(
    requested: BindMode,
    ifname: &str,
    shape: PacketShape,
    driver: Option<DriverZeroCopy>,
) -> Result<BindChoice, ZeroCopyError> {
    let plain = |bind| Ok(BindChoice { bind, note: None });
    let Some(driver) = driver else { return plain(requested) };
    let chains_refused = shape.chain > driver.max_segs;
    match requested {
        BindMode::Copy => plain(BindMode::Copy),
        BindMode::ZeroCopy if !driver.advertised => {
            Err(ZeroCopyError::NotAdvertised { ifname: ifname.to_string() })
        }
        BindMode::ZeroCopy if chains_refused => Err(ZeroCopyError::ChainTooLong {
            ifname: ifname.to_string(),
            max_segs: driver.max_segs,
            chain: shape.chain,
            packet: shape.packet,
            frame_size: shape.frame_size,
            fits: shape.fits(driver.max_segs),
        }),
        BindMode::ZeroCopy => plain(BindMode::ZeroCopy),
        BindMode::Auto if driver.advertised && chains_refused => Ok(BindChoice {
            bind: BindMode::Copy,
            note: Some(format!(
                "copy mode because {}-byte packets span {} UMEM frames and {ifname}'s driver takes {} in zero-copy; --packet-size {} would allow zero-copy",
                shape.packet,
                shape.chain,
                if driver.max_segs == 1 { "no chains".to_string() } else { format!("at most {}", driver.max_segs) },
                shape.fits(driver.max_segs)
            )),
        }),
        BindMode::Auto => plain(BindMode::Auto),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JUMBO: PacketShape = PacketShape { packet: 9000, chain: 3, frame_size: 4096, link_header: 14 };
    const PLAIN: PacketShape = PacketShape { packet: 1500, chain: 1, frame_size: 2048, link_header: 14 };
    const VIRTIO: DriverZeroCopy = DriverZeroCopy { advertised: true, max_segs: 1 };
    const NONE: DriverZeroCopy = DriverZeroCopy { advertised: false, max_segs: 1 };

    #[test]
    fn auto_leaves_single_frames_to_the_kernel() {
        let c = choose(BindMode::Auto, "eth0", PLAIN, Some(VIRTIO)).unwrap();
        assert_eq!(c, BindChoice { bind: BindMode::Auto, note: None });
        let c = choose(BindMode::Auto, "veth0", JUMBO, Some(NONE)).unwrap();
        assert_eq!(c.bind, BindMode::Auto, "no zero-copy to lose: nothing to say");
        assert_eq!(c.note, None);
    }

    #[test]
    fn auto_takes_copy_mode_by_name_and_says_why_where_zero_copy_takes_no_chains() {
        let c = choose(BindMode::Auto, "eth0", JUMBO, Some(VIRTIO)).unwrap();
        assert_eq!(c.bind, BindMode::Copy);
        let note = c.note.unwrap();
        assert!(note.contains("takes no chains") && note.contains("--packet-size 4082"), "{note}");
        let ice = DriverZeroCopy { advertised: true, max_segs: 5 };
        assert_eq!(choose(BindMode::Auto, "eth0", JUMBO, Some(ice)).unwrap().bind, BindMode::Auto);
    }

    #[test]
    fn zerocopy_by_name_fails_up_front_naming_the_limit_and_the_size_that_fits() {
        let e = choose(BindMode::ZeroCopy, "eth0", JUMBO, Some(VIRTIO)).unwrap_err();
        assert_eq!(
            e,
            ZeroCopyError::ChainTooLong {
                ifname: "eth0".into(),
                max_segs: 1,
                chain: 3,
                packet: 9000,
                frame_size: 4096,
                fits: 4082
            }
        );
        let text = e.to_string();
        assert!(text.contains("at most 1 UMEM frame,") && text.contains("--packet-size 4082"), "{text}");
        let e = choose(BindMode::ZeroCopy, "veth0", PLAIN, Some(NONE)).unwrap_err();
        assert!(matches!(e, ZeroCopyError::NotAdvertised { .. }), "{e}");
        assert_eq!(choose(BindMode::ZeroCopy, "eth0", PLAIN, Some(VIRTIO)).unwrap().bind, BindMode::ZeroCopy);
    }

    #[test]
    fn copy_and_unknown_drivers_are_taken_as_asked() {
        assert_eq!(choose(BindMode::Copy, "eth0", JUMBO, Some(VIRTIO)).unwrap().bind, BindMode::Copy);
        assert_eq!(choose(BindMode::ZeroCopy, "eth0", JUMBO, None).unwrap().bind, BindMode::ZeroCopy);
    }
}
