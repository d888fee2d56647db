//! Why a datagram was dropped, and the count of each reason.

use serde::Serialize;

use crate::wire::WireError;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Wire(WireError),
    /// Data before any session was opened.
    NoSession,
    /// From an address or port other than the one that opened the session.
    WrongSource,
    WrongSession,
    /// Chunk index beyond the end of the file.
    OutOfRange,
    /// Payload length is not the chunk's length.
    BadLength,
    /// Already held.
    Duplicate,
    /// A kind that does not belong on this path.
    WrongKind,
    /// Session parameters disagree with the ones agreed at Hello.
    InfoMismatch,
    /// A second sender tried to open a session while one is active.
    Busy,
    /// A new sender's Hello while the last session, done, only lingers for
    /// its end probes: left unanswered, so that the sender's next Hello is
    /// taken by the next transfer (`recv --serve`). Not a refusal.
    Finishing,
    /// A Hello from an address `--allow-from` does not name.
    Refused,
    /// A Hello for a file with more chunks than `max_chunks`, or chunks no
    /// datagram can carry.
    TooLarge,
    /// The header's cookie is not the one this session's sender was given.
    BadCookie,
    /// A Hello asking for a transport this receiver does not take, or
    /// without the encryption it requires.
    WrongMode,
    /// With a key: a control message or Meta without a valid seal, or a
    /// replayed one; a data frame whose tag does not verify (forged or
    /// corrupted).
    BadSeal,
    /// A tree's chunk past its manifest, before the receiver has made the
    /// files it goes to (an honest sender holds them back until then).
    HeldForManifest,
}

impl DropReason {
    pub const ALL: [DropReason; 24] = [
        DropReason::Wire(WireError::Truncated),
        DropReason::Wire(WireError::BadMagic),
        DropReason::Wire(WireError::BadVersion),
        DropReason::Wire(WireError::BadLength),
        DropReason::Wire(WireError::UnknownKind),
        DropReason::Wire(WireError::BadBody),
        DropReason::Wire(WireError::NotUdp),
        DropReason::Wire(WireError::BadChecksum),
        DropReason::NoSession,
        DropReason::WrongSource,
        DropReason::WrongSession,
        DropReason::OutOfRange,
        DropReason::BadLength,
        DropReason::Duplicate,
        DropReason::WrongKind,
        DropReason::InfoMismatch,
        DropReason::Busy,
        DropReason::Finishing,
        DropReason::TooLarge,
        DropReason::BadCookie,
        DropReason::WrongMode,
        DropReason::Refused,
        DropReason::BadSeal,
        DropReason::HeldForManifest,
    ];

    pub(super) fn index(self) -> usize {
        // Every reason is listed in ALL (the unit test checks it).
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Wire(e) => e.as_str(),
            DropReason::NoSession => "no_session",
            DropReason::WrongSource => "wrong_source",
            DropReason::WrongSession => "wrong_session",
            DropReason::OutOfRange => "out_of_range",
            DropReason::BadLength => "bad_chunk_length",
            DropReason::Duplicate => "duplicate",
            DropReason::WrongKind => "wrong_kind",
            DropReason::InfoMismatch => "info_mismatch",
            DropReason::Busy => "busy",
            DropReason::Finishing => "finishing",
            DropReason::TooLarge => "too_large",
            DropReason::BadCookie => "bad_cookie",
            DropReason::WrongMode => "wrong_mode",
            DropReason::Refused => "refused",
            DropReason::BadSeal => "bad_seal",
            DropReason::HeldForManifest => "held_for_manifest",
        }
    }
}

/// Dropped datagrams, by reason.
#[derive(Debug, Clone, Default)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    pub fn add(&mut self, r: DropReason) {
        self.0[r.index()] += 1;
    }
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// Non-zero counters by name.
    pub fn by_name(&self) -> std::collections::BTreeMap<&'static str, u64> {
        DropReason::ALL.iter().filter(|r| self.get(**r) > 0).map(|r| (r.as_str(), self.get(*r))).collect()
    }
}

impl Serialize for DropCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.by_name().serialize(s)
    }
}
