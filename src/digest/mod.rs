//! The whole-stream digest, hashed where the bytes already are.
//!
//! BLAKE3 is a tree over 1 KiB chunks: any aligned run of 2^k chunks is a
//! subtree whose chaining value can be computed alone (the `blake3` crate's
//! `hazmat`) and merged later. So each receive queue's thread hashes the
//! bytes it has just written, from the frames they arrived in, and a small
//! shared tree (`tree::TreeDigest`) merges the chaining values in BLAKE3's own
//! shape. The result is exactly `blake3::hash` (or `keyed_hash`) of the
//! stream: the sender's digest, with no read-back of the output.
//!
//! - [`split`] cuts a contiguous run of the stream into aligned subtrees,
//!   hashed outside any lock, and the partial chunks at its two ends;
//! - [`held`] holds a receive thread's in-order run back until a whole
//!   window of it can be hashed at once;
//! - [`tree`] stitches those partial chunks, merges subtrees into 1 MiB
//!   [`BLOCK`]s, and blocks in stream order, which gives the digest of the
//!   verified prefix (a resume journal's) at every block boundary.
//!
//! Nothing here does I/O; it knows no protocol.

mod held;
mod split;
mod tree;

use std::sync::{Arc, Mutex, MutexGuard};

pub use split::Scratch;
use tree::TreeDigest;

/// BLAKE3's chunk: the leaf of its tree.
pub const CHUNK: u64 = blake3::CHUNK_LEN as u64;
/// The unit of order: blocks are merged in stream order, so a verified
/// prefix (what a journal records and a resume offers) ends at a block's
/// boundary or at the stream's end.
pub const BLOCK: u64 = 1 << 20;
const BLOCK_CHUNKS: u64 = BLOCK / CHUNK;

/// A chaining value: a subtree's non-root hash.
type Cv = blake3::hazmat::ChainingValue;

/// What every piece of one stream's digest shares: its key and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// BLAKE3's keyed mode with this key (a pre-shared key's digest key).
    pub key: Option<[u8; 32]>,
    /// The stream's length in bytes.
    pub len: u64,
}

impl Params {
    fn hasher(&self) -> blake3::Hasher {
        self.key.as_ref().map_or_else(blake3::Hasher::new, blake3::Hasher::new_keyed)
    }

    fn mode(&self) -> blake3::hazmat::Mode<'_> {
        self.key.as_ref().map_or(blake3::hazmat::Mode::Hash, blake3::hazmat::Mode::KeyedHash)
    }

    fn blocks(&self) -> u64 {
        self.len.div_ceil(BLOCK)
    }

    /// Where chunk `c` ends: the stream's last chunk may be short.
    fn chunk_end(&self, c: u64) -> u64 {
        c.saturating_add(1).saturating_mul(CHUNK).min(self.len)
    }
}

/// One stream's digest, shared by the threads that hash its pieces.
#[derive(Debug)]
pub struct Digest {
    params: Params,
    tree: Mutex<TreeDigest>,
}

impl Digest {
    pub fn new(params: Params) -> Digest {
        Digest { params, tree: Mutex::new(TreeDigest::new(params)) }
    }

    pub fn params(&self) -> Params {
        self.params
    }

    /// Hashes `segments` (stream offset, bytes), not overlapping; sorted by
    /// offset, neighbours without a gap between them are hashed as one run. The hashing runs
    /// on the calling thread without the lock; only the merge takes it.
    /// Every byte of the stream must be absorbed exactly once.
    ///
    /// A [`Scratch::holding`] holds back the bytes that continue its run
    /// instead, and hashes them a whole window at a time (or on
    /// [`Digest::release`]).
    pub fn absorb(&self, segments: &[(u64, &[u8])], scratch: &mut Scratch) {
        let Some(mut held) = scratch.held.take() else { return self.hash(segments, scratch) };
        for &(at, bytes) in segments {
            held.append(at, bytes, self.params.len, |at, run| self.hash(&[(at, run)], scratch));
        }
        scratch.held = Some(held);
    }

    /// Hashes what `scratch` holds: until then, those bytes count as
    /// missing from the digest.
    pub fn release(&self, scratch: &mut Scratch) {
        if let Some(mut held) = scratch.held.take() {
            held.take(|at, run| self.hash(&[(at, run)], scratch));
            scratch.held = Some(held);
        }
    }

    fn hash(&self, segments: &[(u64, &[u8])], scratch: &mut Scratch) {
        let join = !scratch.in_place_only;
        scratch.subtrees.clear();
        split::for_each_run(segments, join, |run| split::hash_interior(&self.params, run, scratch));
        let mut tree = self.lock();
        for s in scratch.subtrees.drain(..) {
            tree.add_subtree(s);
        }
        split::for_each_run(segments, join, |run| {
            split::edges(&self.params, run, |at, bytes| tree.add_edge(at, bytes))
        });
    }

    /// Bytes merged in order from the start: a block boundary, or the length.
    pub fn verified(&self) -> u64 {
        self.lock().verified()
    }

    /// The verified prefix and its digest: what BLAKE3 gives for those bytes.
    pub fn prefix(&self) -> (u64, [u8; 32]) {
        self.lock().prefix()
    }

    /// The whole stream's digest, once every byte was absorbed.
    pub fn finish(&self) -> Option<[u8; 32]> {
        self.lock().finish()
    }

    /// Forgets everything absorbed: the stream is hashed again from the start.
    pub fn reset(&self) {
        *self.lock() = TreeDigest::new(self.params);
    }

    fn lock(&self) -> MutexGuard<'_, TreeDigest> {
        // The tree is consistent between calls: a panicking hasher left it so.
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A stream's digest as its output owns it: fed in order (bytes read back
/// from the output), until the receive threads take over and hash what
/// they write as it arrives ([`StreamDigest::on_arrival`]).
#[derive(Debug)]
pub struct StreamDigest {
    shared: Arc<Digest>,
    scratch: Scratch,
    /// How far the in-order feed went; `None` once hashed on arrival.
    fed: Option<u64>,
    /// Bytes fed in order in all.
    read_back: u64,
}

impl StreamDigest {
    pub fn new(params: Params) -> StreamDigest {
        StreamDigest { shared: Arc::new(Digest::new(params)), scratch: Scratch::new(), fed: Some(0), read_back: 0 }
    }

    /// Where the next in-order bytes start: `None` when the bytes are
    /// hashed on arrival, and nothing is to be read back.
    pub fn fed(&self) -> Option<u64> {
        self.fed
    }

    /// Hashes the next `bytes` in stream order.
    pub fn feed(&mut self, bytes: &[u8]) {
        let Some(at) = self.fed else { return };
        self.shared.absorb(&[(at, bytes)], &mut self.scratch);
        self.fed = Some(at + bytes.len() as u64);
        self.read_back += bytes.len() as u64;
    }

    /// Bytes hashed in order (read back from the output) so far.
    pub fn read_back(&self) -> u64 {
        self.read_back
    }

    /// From now on, whoever writes the bytes hashes them, with the digest
    /// this returns; nothing more is fed in order. What was fed stays.
    pub fn on_arrival(&mut self) -> Arc<Digest> {
        self.fed = None;
        Arc::clone(&self.shared)
    }

    /// Forgets what was hashed: the stream starts again from its first byte
    /// (fed in order, or on arrival as before).
    pub fn restart(&mut self) {
        self.shared.reset();
        self.fed = self.fed.map(|_| 0);
    }

    pub fn verified(&self) -> u64 {
        self.shared.verified()
    }

    pub fn prefix(&self) -> (u64, [u8; 32]) {
        self.shared.prefix()
    }

    /// The digest, or how many bytes were never hashed.
    pub fn finish(&self) -> Result<[u8; 32], u64> {
        self.shared.finish().ok_or_else(|| self.shared.params().len - self.verified())
    }
}

#[cfg(test)]
mod tests;
