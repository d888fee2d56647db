//! Authentication with a pre-shared key (`--key-file`).
//!
//! From the one 32-byte key, BLAKE3's key derivation makes four: a MAC key
//! for each direction (so a datagram cannot be reflected back to its
//! sender), the key of the whole-file digest, and the key of the per-block
//! hashes ([`super::blocks`]). A sealed datagram carries,
//! after the message its header announces (where a reader without the key
//! sees only ignored trailing bytes):
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

use crate::wire::message::{Header, HEADER_LEN};

/// A pre-shared key.
pub type Key = [u8; 32];

/// Bytes a seal adds: counter and tag.
pub const SEAL_LEN: usize = 8 + TAG_LEN;
const TAG_LEN: usize = 32;

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
    block: Key,
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
            block: blake3::derive_key("xdpblast 2026-11 block hash", key),
        }
    }

    /// The hasher for the whole-file digest: keyed, so that only a holder of
    /// the key can announce a digest that a file will match.
    pub fn digest_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.digest)
    }

    /// The hasher for block `index`'s hash: keyed, and bound to the block's
    /// place, so a block's hash cannot vouch for the same bytes elsewhere.
    pub fn block_hasher(&self, index: u64) -> blake3::Hasher {
        let mut h = blake3::Hasher::new_keyed(&self.block);
        h.update(&index.to_be_bytes());
        h
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
