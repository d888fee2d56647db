//! Authentication with a pre-shared key (`--key-file`).
//!
//! From the one 32-byte key, BLAKE3's key derivation makes four: a MAC key
//! for each direction (so a datagram cannot be reflected back to its
//! sender), the key of the whole-file digest, and the key of the data
//! frames' tags. A sealed control datagram carries, after the message its
//! header announces (where a reader without the key sees only ignored
//! trailing bytes):
//!
//! ```text
//!  ... message (header + body) | counter (8, big-endian) | tag (32)
//! ```
//!
//! The tag is keyed BLAKE3 over the message and the counter. Control
//! messages count up from 1 in each direction and the receiving side takes
//! each counter at most once and only rising ([`ReplayGuard`]); the data
//! path's Meta frames are sealed with counter 0 and not replay-checked (they
//! are posted again on purpose, and repeat only what was already said).
//!
//! A data frame carries a shorter tag behind its payload, computed once when
//! the sender reads the chunk into its frame:
//!
//! ```text
//!  header (session, cookie, chunk index) | payload | tag (16)
//! ```
//!
//! The tag is AES-256-GCM's over the header and payload as associated data
//! (GMAC: nothing is encrypted), under a key of the session's own
//! ([`Keys::data_key`]: derived from the pre-shared key, the sender's random
//! session id and the receiver's cookie) with the chunk's index as the
//! nonce. The receiver checks it before the chunk counts for anything, so a
//! forged chunk is dropped on arrival and costs only its own bytes; the
//! genuine copy still finds its place free. A retransmit posts the same
//! frame: same key, nonce and bytes give the same tag and reveal nothing
//! new. A frame replayed into another session opens under no key, and one
//! moved to another place fails its nonce. Per-packet encryption seals the
//! payload under the same key and nonce, with its tag in the same place.
//!
//! Why GMAC and not keyed BLAKE3, which the control messages use: BLAKE3 is
//! fast on long inputs, whose 1 KiB chunks it hashes in parallel, but a
//! packet is one or two of them. Per 1,472-byte packet here, keyed BLAKE3
//! took 1,309 ns, and AES-GCM's tag over the same bytes 135 ns (aws-lc-rs,
//! AES-NI and carry-less multiply).

use crate::wire::message::{Header, HEADER_LEN};

/// A pre-shared key.
pub type Key = [u8; 32];

/// Bytes a seal adds: counter and tag.
pub const SEAL_LEN: usize = 8 + TAG_LEN;
const TAG_LEN: usize = 32;
/// Bytes of a data frame's tag, behind its payload.
pub const DATA_TAG_LEN: usize = 16;

/// Who a datagram is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToReceiver,
    ToSender,
}

/// The keys derived from one pre-shared key.
#[derive(Clone)]
pub struct Keys {
    to_receiver: Key,
    to_sender: Key,
    digest: Key,
    data: Key,
    journal: Key,
}

/// The key that tags one session's data frames (and, encrypted, seals
/// them): AES-256-GCM, each chunk's index its nonce.
pub struct DataKey(aws_lc_rs::aead::LessSafeKey);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    fn nonce(chunk: u64) -> aws_lc_rs::aead::Nonce {
        let mut n = [0u8; aws_lc_rs::aead::NONCE_LEN];
        n[4..].copy_from_slice(&chunk.to_be_bytes());
        aws_lc_rs::aead::Nonce::assume_unique_for_key(n)
    }

    /// The tag of chunk `chunk`'s data `message` (its header and payload, as
    /// they lie in the frame).
    pub fn tag(&self, chunk: u64, message: &[u8]) -> [u8; DATA_TAG_LEN] {
        let aad = aws_lc_rs::aead::Aad::from(message);
        let mut out = [0u8; DATA_TAG_LEN];
        // Sealing nothing fails only for inputs above GCM's limits (64 GiB),
        // which no datagram reaches; an all-zero tag then fails to open.
        if let Ok(tag) = self.0.seal_in_place_separate_tag(Self::nonce(chunk), aad, &mut []) {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    /// Whether `tag` is the tag of chunk `chunk`'s `message` (compared in
    /// constant time by the library).
    pub fn tag_matches(&self, chunk: u64, message: &[u8], tag: &[u8]) -> bool {
        let aad = aws_lc_rs::aead::Aad::from(message);
        tag.len() == DATA_TAG_LEN && self.0.open_in_place_separate_tag(Self::nonce(chunk), aad, tag, &mut []).is_ok()
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn derive(key: &Key) -> Keys {
        Keys {
            to_receiver: blake3::derive_key("xdpblast 2026-11 MAC, sender to receiver", key),
            to_sender: blake3::derive_key("xdpblast 2026-11 MAC, receiver to sender", key),
            digest: blake3::derive_key("xdpblast 2026-11 whole-file digest", key),
            data: blake3::derive_key("xdpblast 2026-12 data frame session key", key),
            journal: blake3::derive_key("xdpblast 2026-12 resume journal seal", key),
        }
    }

    /// The hasher for the whole-file digest: keyed, so that only a holder of
    /// the key can announce a digest that a file will match.
    pub fn digest_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.digest)
    }

    /// The hasher that seals a receiver's resume journal
    /// ([`crate::io::journal`]): one written under another key is refused.
    pub fn journal_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.journal)
    }

    /// The key of one session's data frames. Both ends' random values go
    /// into it (the sender's session id, the receiver's cookie, whose key
    /// each receiver draws at start), so no two sessions share a key, and a
    /// chunk index is a nonce used for one chunk's bytes only.
    pub fn data_key(&self, session: u64, cookie: u64) -> DataKey {
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&session.to_be_bytes());
        input[8..].copy_from_slice(&cookie.to_be_bytes());
        let key = blake3::keyed_hash(&self.data, &input);
        // A 32-byte key is what AES-256 takes: this cannot fail.
        let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key.as_bytes())
            .expect("AES-256-GCM takes a 32-byte key");
        DataKey(aws_lc_rs::aead::LessSafeKey::new(unbound))
    }

    fn mac_key(&self, dir: Direction) -> &Key {
        match dir {
            Direction::ToReceiver => &self.to_receiver,
            Direction::ToSender => &self.to_sender,
        }
    }

    /// Appends `counter` and the tag to a datagram that holds one message.
    pub fn seal(&self, dir: Direction, counter: u64, datagram: &mut Vec<u8>) {
        datagram.extend_from_slice(&counter.to_be_bytes());
        let tag = blake3::keyed_hash(self.mac_key(dir), datagram);
        datagram.extend_from_slice(tag.as_bytes());
    }

    /// Checks the seal behind the message in `datagram`; returns its counter.
    pub fn open(&self, dir: Direction, datagram: &[u8]) -> Option<u64> {
        let h = Header::new_checked(datagram).ok()?;
        let end = HEADER_LEN + h.body().len();
        let sealed = datagram.get(..end + 8)?;
        let tag = datagram.get(end + 8..end + SEAL_LEN)?;
        let want = blake3::keyed_hash(self.mac_key(dir), sealed);
        let mut got = [0u8; TAG_LEN];
        got.copy_from_slice(tag);
        // blake3's Hash compares in constant time.
        if want != blake3::Hash::from_bytes(got) {
            return None;
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&datagram[end..end + 8]);
        Some(u64::from_be_bytes(c))
    }
}

/// Takes each counter at most once, and only rising.
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    highest: u64,
}

impl ReplayGuard {
    pub fn accept(&mut self, counter: u64) -> bool {
        if counter > self.highest {
            self.highest = counter;
            true
        } else {
            false
        }
    }
}

/// Counts sealed control messages in one direction, from 1.
#[derive(Debug, Clone, Default)]
pub struct Counter(u64);

impl Counter {
    pub fn bump(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// Reads a key file: 64 hex digits (surrounding whitespace allowed).
pub fn parse_key(text: &str) -> Result<Key, String> {
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a key file holds 64 hex digits (what `xdpblast keygen` writes)".into());
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::Message;

    #[test]
    fn seal_opens_only_with_the_key_and_the_direction() {
        let keys = Keys::derive(&[7; 32]);
        let mut d = Message::Abort { session: 1, reason: "stop" }.encode(9);
        keys.seal(Direction::ToReceiver, 5, &mut d);
        assert_eq!(keys.open(Direction::ToReceiver, &d), Some(5));
        assert_eq!(keys.open(Direction::ToSender, &d), None, "reflected back: refused");
        assert_eq!(Keys::derive(&[8; 32]).open(Direction::ToReceiver, &d), None, "another key");
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 1;
            assert_eq!(keys.open(Direction::ToReceiver, &bad), None, "a flipped bit at {i}");
        }
        assert_eq!(keys.open(Direction::ToReceiver, &d[..d.len() - 1]), None, "a cut tag");
        // A reader without the key still parses the message.
        assert_eq!(Message::parse(&d), Ok(Message::Abort { session: 1, reason: "stop" }));
    }

    #[test]
    fn a_data_tag_binds_the_session_the_place_and_the_bytes() {
        let keys = Keys::derive(&[7; 32]);
        let key = keys.data_key(1, 3);
        let msg = Message::Data { session: 1, chunk: 9, payload: &[5; 100] }.encode(3);
        let tag = key.tag(9, &msg);
        assert!(key.tag_matches(9, &msg, &tag));
        assert_eq!(key.tag(9, &msg), tag, "a retransmit carries the same tag");
        assert!(!key.tag_matches(10, &msg, &tag), "another nonce (place)");
        assert!(!keys.data_key(2, 3).tag_matches(9, &msg, &tag), "another session");
        assert!(!keys.data_key(1, 4).tag_matches(9, &msg, &tag), "another cookie");
        assert!(!Keys::derive(&[8; 32]).data_key(1, 3).tag_matches(9, &msg, &tag), "another pre-shared key");
        assert!(!key.tag_matches(9, &msg, &tag[..15]), "a cut tag");
        assert!(!key.tag_matches(9, &msg, &[0; DATA_TAG_LEN]), "a guessed tag");
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 1;
            assert!(!key.tag_matches(9, &bad, &tag), "a flipped bit at {i}");
        }
    }

    #[test]
    fn replays_and_old_counters_are_refused() {
        let mut g = ReplayGuard::default();
        assert!(g.accept(1) && g.accept(3));
        assert!(!g.accept(3) && !g.accept(2) && !g.accept(0));
        assert!(g.accept(4));
    }

    #[test]
    fn key_files_are_hex() {
        let hex = "00ff".repeat(16);
        assert_eq!(parse_key(&format!("{hex}\n")).unwrap()[..2], [0, 255]);
        assert!(parse_key("abc").is_err());
        assert!(parse_key(&"zz".repeat(32)).is_err());
    }
}
