//! What the kernel knows about one interface.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, State, XdpAttached};
use netlink_packet_route::RouteNetlinkMessage;
use serde::Serialize;

use super::netlink::dump;

#[derive(Debug, Clone, Serialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    #[serde(serialize_with = "mac_text")]
    pub mac: [u8; 6],
    pub mtu: u32,
    pub tx_queues: u32,
    pub rx_queues: u32,
    pub oper_up: bool,
    pub ipv4: Option<Ipv4Addr>,
    /// Its first IPv6 address of global (or unique local) scope; link-local
    /// addresses need a scope id our sockets do not carry.
    pub ipv6: Option<Ipv6Addr>,
    /// An XDP program is attached (by anyone), and how.
    pub xdp_attached: Option<String>,
}

/// A MAC as `aa:bb:cc:dd:ee:ff` in JSON, as `ip -j link` writes it.
fn mac_text<S: serde::Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_mac(mac))
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("no interface named {0:?} in this network namespace (see `ip link`)")]
    NotFound(String),
    #[error("asking the kernel about interfaces failed: {0}")]
    Netlink(#[from] io::Error),
}

impl Interface {
    /// The TX queues in use: sysfs's `queues/tx-N` entries (netlink's
    /// count is the room allocated; a veth has one per possible CPU but
    /// uses one unless created with `numtxqueues`). Netlink's count when
    /// sysfs does not show this namespace's device.
    pub fn tx_queues_in_use(&self) -> u32 {
        self.queues_in_use("tx-").unwrap_or(self.tx_queues)
    }

    /// The RX queues in use, as [`Interface::tx_queues_in_use`].
    pub fn rx_queues_in_use(&self) -> u32 {
        self.queues_in_use("rx-").unwrap_or(self.rx_queues)
    }

    fn queues_in_use(&self, prefix: &str) -> Option<u32> {
        let entries = std::fs::read_dir(format!("/sys/class/net/{}/queues", self.name)).ok()?;
        let n = entries.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count();
        (n > 0).then_some(n as u32)
    }

    pub fn lookup(name: &str) -> Result<Interface, IfaceError> {
        let links = dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        let link = links
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .find(|l| l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)))
            .ok_or_else(|| IfaceError::NotFound(name.to_string()))?;

        let mut iface = Interface {
            name: name.to_string(),
            index: link.header.index,
            mac: [0; 6],
            mtu: 1500,
            tx_queues: 1,
            rx_queues: 1,
            oper_up: false,
            ipv4: None,
            ipv6: None,
            xdp_attached: None,
        };
        for a in &link.attributes {
            match a {
                LinkAttribute::Address(mac) if mac.len() == 6 => iface.mac.copy_from_slice(mac),
                LinkAttribute::Mtu(m) => iface.mtu = *m,
                LinkAttribute::NumTxQueues(q) => iface.tx_queues = *q,
                LinkAttribute::NumRxQueues(q) => iface.rx_queues = *q,
                // veth reports "unknown" when up without carrier detection.
                LinkAttribute::OperState(s) => iface.oper_up = matches!(s, State::Up | State::Unknown),
                LinkAttribute::Xdp(xdp) => {
                    for x in xdp {
                        if let LinkXdp::Attached(at) = x {
                            iface.xdp_attached = match at {
                                XdpAttached::None => None,
                                XdpAttached::Driver => Some("native".into()),
                                XdpAttached::SocketBuffer => Some("generic".into()),
                                XdpAttached::Hardware => Some("offload".into()),
                                other => Some(format!("{other:?}").to_lowercase()),
                            };
                        }
                    }
                }
                _ => {}
            }
        }

        let addrs: Vec<IpAddr> = dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == iface.index => Some(a),
                _ => None,
            })
            .flat_map(|a| a.attributes)
            .filter_map(|a| match a {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(ip),
                _ => None,
            })
            .collect();
        iface.ipv4 = addrs.iter().find_map(|a| match a {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        });
        iface.ipv6 = addrs.iter().find_map(|a| match a {
            IpAddr::V6(ip) if !is_link_local(ip) && !ip.is_loopback() => Some(*ip),
            _ => None,
        });
        Ok(iface)
    }

    /// The interface that holds address `ip` in this namespace, if one does
    /// (none for an unspecified address such as 0.0.0.0).
    pub fn holding(ip: IpAddr) -> Result<Option<Interface>, IfaceError> {
        if ip.is_unspecified() {
            return Ok(None);
        }
        let index =
            dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.attributes.iter().any(
                        |x| matches!(x, AddressAttribute::Local(l) | AddressAttribute::Address(l) if *l == ip),
                    ) =>
                {
                    Some(a.header.index)
                }
                _ => None,
            });
        let Some(index) = index else { return Ok(None) };
        let name = dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if l.header.index == index => {
                l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
            }
            _ => None,
        });
        name.map(|n| Interface::lookup(&n)).transpose()
    }

    /// The interface's address of the version `to` needs: the source for
    /// packets to `to`.
    pub fn source_for(&self, to: IpAddr) -> Option<IpAddr> {
        match to {
            IpAddr::V4(_) => self.ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => self.ipv6.map(IpAddr::V6),
        }
    }
}

/// fe80::/10.
fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:aB:00:11:22:ff").unwrap();
        assert_eq!(format_mac(&m), "02:ab:00:11:22:ff");
        assert!(parse_mac("02:ab:00:11:22").is_none());
        assert!(parse_mac("02:ab:00:11:22:zz").is_none());
        assert!(parse_mac("002:ab:00:11:22:ff").is_none());
    }

    #[test]
    fn loopback_is_found_and_unknown_is_refused() {
        let lo = Interface::lookup("lo").expect("every namespace has lo");
        assert_eq!(lo.index, 1);
        assert!(lo.mtu >= 1500);
        assert!(matches!(Interface::lookup("no-such-if0"), Err(IfaceError::NotFound(_))));
    }
}
