//! The kernel's neighbour table: which MAC answers for a next hop (ARP for
//! IPv4, neighbour discovery for IPv6).

use std::io;
use std::net::IpAddr;

use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::dump;

/// The MAC of `ip` on interface `ifindex`, if the kernel has a usable entry.
pub fn lookup(ifindex: u32, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
    let msgs = dump(RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()))?;
    for m in msgs {
        let RouteNetlinkMessage::NewNeighbour(n) = m else { continue };
        if n.header.ifindex != ifindex {
            continue;
        }
        if matches!(n.header.state, NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None) {
            continue;
        }
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(IpAddr::V4(*d)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
            _ => None,
        });
        if dst != Some(ip) {
            continue;
        }
        if let Some(mac) = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => Some(l.clone()),
            _ => None,
        }) {
            let mut out = [0u8; 6];
            out.copy_from_slice(&mac);
            return Ok(Some(out));
        }
    }
    Ok(None)
}
