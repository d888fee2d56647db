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
//! The key is the session's own ([`Keys::data_key`]: derived from the
//! pre-shared key, the sender's random session id and the receiver's
//! cookie, a random value of its own), and the chunk's index is the nonce.
//! Two protections share that layout:
//! - **encrypted** (the default with a key): the payload is sealed with an
//!   AEAD (AES-256-GCM, or ChaCha20-Poly1305 on a CPU without AES
//!   instructions), the header its associated data;
//! - **authenticated only** (`send --no-encrypt`): AES-256-GCM's tag over
//!   header and payload as associated data (GMAC: nothing is encrypted).
//!
//! The receiver checks (and opens) a frame before the chunk counts for
//! anything, so a forged chunk is dropped on arrival and costs only its own
//! bytes; the genuine copy still finds its place free. A retransmit posts
//! the same frame: same key, nonce and plaintext give the same ciphertext
//! and tag, and reveal nothing new. A frame replayed into another session
//! opens under no key, and one moved to another place fails its nonce.
//!
//! Why an AEAD and not keyed BLAKE3, which the control messages use: BLAKE3
//! is fast on long inputs, whose 1 KiB chunks it hashes in parallel, but a
//! packet is one or two of them. Per 1,472-byte packet here, keyed BLAKE3
//! took 1,309 ns, and AES-GCM's tag over the same bytes 135 ns (aws-lc-rs,
//! AES-NI and carry-less multiply).
//!
//! The TCP modes encrypt too, as TLS 1.3 records ([`RecordKeys`]): each
//! stream's keys, one per direction, come from the same pre-shared key and
//! both ends' random values, and the kernel seals (kTLS) where it can.

use crate::wire::message::{Cipher, Header, HEADER_LEN};

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
    stream: Key,
    journal: Key,
}

/// The key that tags one session's data frames, or seals them: each
/// chunk's index its nonce.
pub struct DataKey(aws_lc_rs::aead::LessSafeKey);

/// The AEAD of `cipher`, as the crypto library names it.
fn algorithm(cipher: Cipher) -> &'static aws_lc_rs::aead::Algorithm {
    match cipher {
        Cipher::Aes256Gcm => &aws_lc_rs::aead::AES_256_GCM,
        Cipher::ChaCha20Poly1305 => &aws_lc_rs::aead::CHACHA20_POLY1305,
    }
}

fn aead_key(cipher: Cipher, key: &[u8; 32]) -> aws_lc_rs::aead::LessSafeKey {
    // Both AEADs take 32-byte keys: this cannot fail.
    let unbound = aws_lc_rs::aead::UnboundKey::new(algorithm(cipher), key).expect("a 256-bit AEAD takes 32 bytes");
    aws_lc_rs::aead::LessSafeKey::new(unbound)
}

/// What a derived key is for, as one byte of its derivation's input: only
/// tagging (`None`), or encrypting with an AEAD.
fn protection_id(encrypted: Option<Cipher>) -> u8 {
    match encrypted {
        None => 0,
        Some(Cipher::Aes256Gcm) => 1,
        Some(Cipher::ChaCha20Poly1305) => 2,
    }
}

/// The AEAD this machine seals fastest: AES-256-GCM where the CPU has AES
/// and carry-less multiply instructions, ChaCha20-Poly1305 where it does
/// not (its software AES would be several times slower).
pub fn preferred_cipher() -> Cipher {
    #[cfg(target_arch = "x86_64")]
    let hardware_aes = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let hardware_aes = std::arch::is_aarch64_feature_detected!("aes");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let hardware_aes = false;
    if hardware_aes {
        Cipher::Aes256Gcm
    } else {
        Cipher::ChaCha20Poly1305
    }
}

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

    /// Encrypts chunk `chunk`'s `payload` in place, `header` (as it lies in
    /// the frame) bound to it; returns the tag.
    pub fn seal(&self, chunk: u64, header: &[u8], payload: &mut [u8]) -> [u8; DATA_TAG_LEN] {
        let aad = aws_lc_rs::aead::Aad::from(header);
        let mut out = [0u8; DATA_TAG_LEN];
        // As in `tag`: only inputs above the AEAD's limits fail, and then
        // the zero tag fails to open.
        if let Ok(tag) = self.0.seal_in_place_separate_tag(Self::nonce(chunk), aad, payload) {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    /// Decrypts chunk `chunk`'s `payload` in place if `tag` holds for it and
    /// `header`; on `false` the payload is left as garbage, never to be used.
    pub fn open(&self, chunk: u64, header: &[u8], payload: &mut [u8], tag: &[u8]) -> bool {
        let aad = aws_lc_rs::aead::Aad::from(header);
        tag.len() == DATA_TAG_LEN && self.0.open_in_place_separate_tag(Self::nonce(chunk), aad, tag, payload).is_ok()
    }
}

/// Which way a TCP stream's bytes go: the file to the receiver, the
/// verdict back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamDirection {
    ToReceiver,
    ToSender,
}

/// One direction of one TCP stream's TLS 1.3 record protection: the key
/// and the 12-byte IV, whose last 8 bytes each record's sequence number
/// (from 0) is XORed into (RFC 8446, 5.3). The kernel takes the same values
/// (`TLS_TX`, `TLS_RX`), so either end may seal in the kernel or in user
/// space and the other still opens.
#[derive(Clone)]
pub struct RecordKeys {
    pub cipher: Cipher,
    pub key: [u8; 32],
    pub iv: [u8; 12],
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordKeys({}, ..)", self.cipher.name())
    }
}

impl RecordKeys {
    /// The AEAD key, for sealing or opening in user space.
    pub fn aead(&self) -> aws_lc_rs::aead::LessSafeKey {
        aead_key(self.cipher, &self.key)
    }

    /// The nonce of record `seq`.
    pub fn nonce(&self, seq: u64) -> aws_lc_rs::aead::Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        aws_lc_rs::aead::Nonce::assume_unique_for_key(n)
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
            stream: blake3::derive_key("xdpblast 2026-12 TCP stream record keys", key),
            journal: blake3::derive_key("xdpblast 2026-12 resume journal seal", key),
        }
    }

    /// The hasher for the whole-file digest: keyed, so that only a holder of
    /// the key can announce a digest that a file will match.
    pub fn digest_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.digest)
    }

    /// The key of [`Keys::digest_hasher`], for a digest hashed in pieces
    /// ([`crate::digest`]).
    pub fn digest_key(&self) -> [u8; 32] {
        self.digest
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
    ///
    /// `encrypted`: the AEAD that seals the payloads; `None` tags them with
    /// AES-256-GCM (GMAC). The choice goes into the key too, so the two
    /// protections never share one.
    ///
    /// BLAKE3 keyed with a key of its own, over both ends' values, is the
    /// key derivation here and for the TCP records: a PRF keyed with a
    /// uniformly random key needs no HKDF extract step, and BLAKE3 is
    /// already what every other key comes from.
    pub fn data_key(&self, session: u64, cookie: u64, encrypted: Option<Cipher>) -> DataKey {
        let mut input = [0u8; 17];
        input[..8].copy_from_slice(&session.to_be_bytes());
        input[8..16].copy_from_slice(&cookie.to_be_bytes());
        input[16] = protection_id(encrypted);
        let key = blake3::keyed_hash(&self.data, &input);
        DataKey(aead_key(encrypted.unwrap_or(Cipher::Aes256Gcm), key.as_bytes()))
    }

    /// The record keys of TCP stream `index` of a session, in direction
    /// `dir`: both ends' random values (session id, cookie) go in, so no two
    /// sessions, streams or directions share a key and every record
    /// sequence starts at 0 safely.
    pub fn record_keys(
        &self,
        session: u64,
        cookie: u64,
        index: u16,
        dir: StreamDirection,
        cipher: Cipher,
    ) -> RecordKeys {
        let mut h = blake3::Hasher::new_keyed(&self.stream);
        h.update(&session.to_be_bytes());
        h.update(&cookie.to_be_bytes());
        h.update(&index.to_be_bytes());
        h.update(&[u8::from(dir == StreamDirection::ToSender), protection_id(Some(cipher))]);
        let mut okm = [0u8; 44];
        h.finalize_xof().fill(&mut okm);
        let mut keys = RecordKeys { cipher, key: [0; 32], iv: [0; 12] };
        keys.key.copy_from_slice(&okm[..32]);
        keys.iv.copy_from_slice(&okm[32..]);
        keys
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
        let key = keys.data_key(1, 3, None);
        let msg = Message::Data { session: 1, chunk: 9, payload: &[5; 100] }.encode(3);
        let tag = key.tag(9, &msg);
        assert!(key.tag_matches(9, &msg, &tag));
        assert_eq!(key.tag(9, &msg), tag, "a retransmit carries the same tag");
        assert!(!key.tag_matches(10, &msg, &tag), "another nonce (place)");
        assert!(!keys.data_key(2, 3, None).tag_matches(9, &msg, &tag), "another session");
        assert!(!keys.data_key(1, 4, None).tag_matches(9, &msg, &tag), "another cookie");
        assert!(!Keys::derive(&[8; 32]).data_key(1, 3, None).tag_matches(9, &msg, &tag), "another pre-shared key");
        assert!(!key.tag_matches(9, &msg, &tag[..15]), "a cut tag");
        assert!(!key.tag_matches(9, &msg, &[0; DATA_TAG_LEN]), "a guessed tag");
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 1;
            assert!(!key.tag_matches(9, &bad, &tag), "a flipped bit at {i}");
        }
    }

    #[test]
    fn an_encrypted_payload_opens_only_in_its_place_and_session() {
        let keys = Keys::derive(&[7; 32]);
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let key = keys.data_key(1, 3, Some(cipher));
            let plain: Vec<u8> = (0..1440).map(|i| i as u8).collect();
            let header = [9u8; HEADER_LEN];
            let mut sealed = plain.clone();
            let tag = key.seal(9, &header, &mut sealed);
            assert!(sealed.windows(16).all(|w| !plain.windows(16).any(|p| p == w)), "no 16-byte run in clear");
            let mut again = plain.clone();
            assert_eq!(key.seal(9, &header, &mut again), tag, "a retransmit carries the same bytes");
            assert_eq!(again, sealed);
            let opens = |k: &DataKey, chunk, header: &[u8], tag: &[u8]| {
                let mut p = sealed.clone();
                k.open(chunk, header, &mut p, tag) && p == plain
            };
            assert!(opens(&key, 9, &header, &tag), "{}", cipher.name());
            assert!(!opens(&key, 10, &header, &tag), "another place");
            assert!(!opens(&keys.data_key(2, 3, Some(cipher)), 9, &header, &tag), "another session");
            assert!(!opens(&keys.data_key(1, 3, None), 9, &header, &tag), "the tag-only key");
            assert!(!opens(&key, 9, &[8; HEADER_LEN], &tag), "another header");
            let mut flipped = sealed.clone();
            flipped[700] ^= 1;
            assert!(!key.open(9, &header, &mut flipped, &tag), "a flipped payload bit");
        }
    }

    #[test]
    fn record_keys_differ_by_stream_and_direction_and_nonces_count_records() {
        let keys = Keys::derive(&[7; 32]);
        let a = keys.record_keys(1, 2, 0, StreamDirection::ToReceiver, Cipher::Aes256Gcm);
        let b = keys.record_keys(1, 2, 0, StreamDirection::ToSender, Cipher::Aes256Gcm);
        let c = keys.record_keys(1, 2, 1, StreamDirection::ToReceiver, Cipher::Aes256Gcm);
        let d = keys.record_keys(1, 3, 0, StreamDirection::ToReceiver, Cipher::Aes256Gcm);
        assert!(a.key != b.key && a.key != c.key && a.key != d.key);
        assert_eq!(a.nonce(0).as_ref(), &a.iv);
        let mut want = a.iv;
        want[11] ^= 5;
        want[4] ^= 1;
        assert_eq!(a.nonce((1 << 56) | 5).as_ref(), &want, "the sequence number, big-endian, into the last 8 bytes");
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
