//! The run of the stream a receive thread holds back before hashing it.
//!
//! A receive thread lands a few dozen datagrams at a time (37 on average on
//! a veth at MTU 1500). Hashed as a run of its own, each batch leaves BLAKE3
//! short subtrees and partial chunks at both ends, which it hashes one
//! compression at a time: that measured 3.4 GiB/s against 4.9 for batches
//! of 64. Held here until the stream reaches the next [`WINDOW`] boundary,
//! the in-order stream is hashed a whole aligned window at a time, from the
//! copy the hashing made anyway.

/// Held bytes are hashed when they reach a multiple of this in the stream
/// (or its end): four of the widest subtrees `split` hashes, and small
/// enough to stay in cache from the copy to the hash.
pub(super) const WINDOW: u64 = 256 << 10;

/// A contiguous piece of the stream, copied, not yet hashed.
#[derive(Debug)]
pub(super) struct Held {
    /// Stream offset of `bytes[0]`.
    at: u64,
    bytes: Vec<u8>,
}

impl Held {
    pub(super) fn new() -> Held {
        Held { at: 0, bytes: Vec::with_capacity(WINDOW as usize) }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn end(&self) -> u64 {
        self.at + self.bytes.len() as u64
    }

    /// Holds `bytes`, at offset `at` of a `len`-byte stream. What is held
    /// goes to `hash` first when `at` does not continue it, and each window
    /// as soon as it is complete.
    pub(super) fn append(&mut self, mut at: u64, mut bytes: &[u8], len: u64, mut hash: impl FnMut(u64, &[u8])) {
        if !self.bytes.is_empty() && at != self.end() {
            self.take(&mut hash);
        }
        while !bytes.is_empty() {
            if self.bytes.is_empty() {
                self.at = at;
            }
            // Past the stream's end nothing completes: held until released
            // (and there ignored, as the tree ignores such pieces).
            let end =
                if at < len { ((at / WINDOW).saturating_add(1).saturating_mul(WINDOW)).min(len) } else { u64::MAX };
            let n = end.saturating_sub(at).min(bytes.len() as u64) as usize;
            self.bytes.extend_from_slice(&bytes[..n]);
            (at, bytes) = (at.saturating_add(n as u64), &bytes[n..]);
            if at == end {
                self.take(&mut hash);
            }
        }
    }

    /// Hands what is held to `hash`, and holds nothing.
    pub(super) fn take(&mut self, mut hash: impl FnMut(u64, &[u8])) {
        if !self.bytes.is_empty() {
            hash(self.at, &self.bytes);
            self.bytes.clear();
        }
    }
}
