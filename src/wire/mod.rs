//! Bytes on the wire.
//!
//! Untrusted bytes only ever meet a checked view ([`message::Header::new_checked`],
//! [`frame::parse_udp`]) that validates lengths before any field is read, so
//! parsing never panics. The parsed meaning ([`message::Message`]) is kept apart
//! from those views, in the style of smoltcp's `wire` module.

pub mod checksum;
pub mod frame;
pub mod message;

/// Why a datagram was refused. Every variant is a drop reason the receiver counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// Shorter than the header it claims to carry.
    Truncated,
    /// Not an xdpblast datagram.
    BadMagic,
    /// An xdpblast datagram of a version we do not speak.
    BadVersion,
    /// The length field disagrees with the bytes present.
    BadLength,
    /// A kind this version does not define.
    UnknownKind,
    /// The body of a known kind is malformed.
    BadBody,
    /// Not Ethernet / IP / UDP, or a header was inconsistent.
    NotUdp,
}

impl WireError {
    pub fn as_str(self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::BadMagic => "bad_magic",
            WireError::BadVersion => "bad_version",
            WireError::BadLength => "bad_length",
            WireError::UnknownKind => "unknown_kind",
            WireError::BadBody => "bad_body",
            WireError::NotUdp => "not_udp",
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for WireError {}
