//! TLS 1.3 records (RFC 8446, 5.2) for the TCP modes' encrypted streams,
//! sealed and opened in user space: byte for byte what the kernel's TLS
//! (kTLS) writes and reads with the same [`RecordKeys`], so each end uses
//! the kernel where it has kTLS and this where it does not, and the two
//! still understand each other.
//!
//! ```text
//!  type 23 | version 0x0303 | length (2) | AEAD(data | type 23) | tag (16)
//! ```
//!
//! The five header bytes are the associated data; record `n` of a stream
//! (from 0) uses the nonce `iv XOR n`. There is no handshake: both ends
//! derive the keys from the pre-shared key and the session's random values
//! ([`crate::proto::auth::Keys::record_keys`]).

use crate::proto::auth::RecordKeys;

/// Record header bytes.
pub const HEADER_LEN: usize = 5;
/// Most plaintext bytes a record carries (2^14).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// The AEAD tag behind each record's ciphertext.
pub const TAG_LEN: usize = 16;
/// Largest record: header, plaintext, inner type, tag (no padding written;
/// a peer's padding up to the TLS limit is taken).
pub const MAX_RECORD: usize = HEADER_LEN + MAX_PLAINTEXT + 256;
const APPLICATION_DATA: u8 = 23;
/// TLS 1.3 records say TLS 1.2 in their header (RFC 8446, 5.1).
const LEGACY_VERSION: [u8; 2] = [3, 3];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a TLS application-data record (header {0:02x?})")]
    BadHeader([u8; HEADER_LEN]),
    #[error("a TLS record of {0} bytes, over the limit")]
    TooLong(usize),
    #[error("a TLS record failed to open: wrong key, or changed on the way")]
    BadTag,
    #[error("a TLS record of content type {0}, not application data")]
    NotData(u8),
}

/// Seals one direction of a stream.
pub struct RecordSealer {
    keys: RecordKeys,
    aead: aws_lc_rs::aead::LessSafeKey,
    seq: u64,
}

impl RecordSealer {
    pub fn new(keys: &RecordKeys) -> RecordSealer {
        RecordSealer { keys: keys.clone(), aead: keys.aead(), seq: 0 }
    }

    /// Appends `data` to `out` as records of at most [`MAX_PLAINTEXT`]
    /// bytes each.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) {
        for piece in data.chunks(MAX_PLAINTEXT) {
            let len = piece.len() + 1 + TAG_LEN;
            let at = out.len();
            out.push(APPLICATION_DATA);
            out.extend_from_slice(&LEGACY_VERSION);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(piece);
            out.push(APPLICATION_DATA);
            let (header, body) = out[at..].split_at_mut(HEADER_LEN);
            let aad = aws_lc_rs::aead::Aad::from(&*header);
            let mut tag = [0u8; TAG_LEN];
            // Only inputs beyond the AEAD's limits fail, never a record; a
            // zero tag would then fail to open.
            if let Ok(t) = self.aead.seal_in_place_separate_tag(self.keys.nonce(self.seq), aad, body) {
                tag.copy_from_slice(t.as_ref());
            }
            out.extend_from_slice(&tag);
            self.seq += 1;
        }
    }
}

/// Opens one direction of a stream.
pub struct RecordOpener {
    keys: RecordKeys,
    aead: aws_lc_rs::aead::LessSafeKey,
    seq: u64,
}

impl RecordOpener {
    pub fn new(keys: &RecordKeys) -> RecordOpener {
        RecordOpener { keys: keys.clone(), aead: keys.aead(), seq: 0 }
    }

    /// The whole length of the record whose header starts `buf`, once
    /// [`HEADER_LEN`] bytes are there.
    pub fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
        let Some(h) = buf.get(..HEADER_LEN) else { return Ok(None) };
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(h);
        if header[0] != APPLICATION_DATA || header[1..3] != LEGACY_VERSION {
            return Err(RecordError::BadHeader(header));
        }
        let body = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if HEADER_LEN + body > MAX_RECORD || body < 1 + TAG_LEN {
            return Err(RecordError::TooLong(body));
        }
        Ok(Some(HEADER_LEN + body))
    }

    /// Opens the next record, whole in `record`, in place; returns where its
    /// data lies in `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<std::ops::Range<usize>, RecordError> {
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let aad = aws_lc_rs::aead::Aad::from(&*header);
        let (sealed, tag) = body.split_at_mut(body.len() - TAG_LEN);
        self.aead
            .open_in_place_separate_tag(self.keys.nonce(self.seq), aad, tag, sealed)
            .map_err(|_| RecordError::BadTag)?;
        self.seq += 1;
        // The inner content type is the last non-zero byte (zeros are padding).
        let end = sealed.iter().rposition(|&b| b != 0).ok_or(RecordError::NotData(0))?;
        match sealed[end] {
            APPLICATION_DATA => Ok(HEADER_LEN..HEADER_LEN + end),
            other => Err(RecordError::NotData(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::auth::{Keys, StreamDirection};
    use crate::wire::message::Cipher;

    fn keys(cipher: Cipher) -> RecordKeys {
        Keys::derive(&[3; 32]).record_keys(1, 2, 0, StreamDirection::ToReceiver, cipher)
    }

    /// Opens every record in `wire`, back to back.
    fn open_all(opener: &mut RecordOpener, mut wire: Vec<u8>) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let len = RecordOpener::record_len(&wire[at..])?.expect("a whole header");
            let data = opener.open(&mut wire[at..at + len])?;
            out.extend_from_slice(&wire[at + data.start..at + data.end]);
            at += len;
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_in_order_and_fail_out_of_order() {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            let mut sealer = RecordSealer::new(&keys(cipher));
            sealer.seal(&data[..30_000], &mut wire);
            sealer.seal(&data[30_000..], &mut wire);
            assert_eq!(wire.len(), data.len() + 3 * (HEADER_LEN + 1 + TAG_LEN), "records of at most 16 KiB");
            assert!(!wire.windows(32).any(|w| data.windows(32).any(|d| d == w)), "no run of the data in clear");
            assert_eq!(open_all(&mut RecordOpener::new(&keys(cipher)), wire.clone()), Ok(data.clone()));
            // The second record first: its nonce is record 1's, not 0's.
            let first = RecordOpener::record_len(&wire).unwrap().unwrap();
            let swapped = wire[first..].to_vec();
            assert_eq!(open_all(&mut RecordOpener::new(&keys(cipher)), swapped), Err(RecordError::BadTag));
            let mut flipped = wire.clone();
            flipped[HEADER_LEN + 10] ^= 1;
            assert_eq!(open_all(&mut RecordOpener::new(&keys(cipher)), flipped), Err(RecordError::BadTag));
            let other = Keys::derive(&[4; 32]).record_keys(1, 2, 0, StreamDirection::ToReceiver, cipher);
            assert_eq!(open_all(&mut RecordOpener::new(&other), wire), Err(RecordError::BadTag));
        }
    }

    #[test]
    fn bad_headers_are_refused_before_any_work() {
        assert_eq!(RecordOpener::record_len(&[23, 3, 3]), Ok(None));
        assert!(matches!(RecordOpener::record_len(&[22, 3, 3, 0, 40]), Err(RecordError::BadHeader(_))));
        assert_eq!(RecordOpener::record_len(&[23, 3, 3, 0xff, 0xff]), Err(RecordError::TooLong(0xffff)));
        assert_eq!(RecordOpener::record_len(&[23, 3, 3, 0, 5]), Err(RecordError::TooLong(5)));
        assert_eq!(RecordOpener::record_len(&[23, 3, 3, 0, 17]), Ok(Some(22)));
    }
}
