//! Per-block keyed hashes (with a pre-shared key): the file cut into blocks
//! of whole chunks, each hashed with the block key and its index.
//!
//! The sender hashes each block in the same pass that reads it and sends the
//! hashes in sealed `Blocks` messages. The receiver checks a block once every
//! chunk of it is in; a block that fails (a forged or corrupted data frame)
//! has its chunks dropped and asked for again, so it costs a repair, never a
//! wrong file. Its reported prefix stops at the first unchecked block, so the
//! sender keeps those chunks' frames until they are proven.

use std::ops::Range;

use super::auth::Keys;
use crate::wire::message::SessionInfo;

/// A block holds about this many file bytes (whole chunks).
pub const BLOCK_BYTES: u64 = 1 << 20;
/// The largest block a receiver takes: it reads a whole block back at once.
pub const MAX_BLOCK_BYTES: u64 = 4 << 20;

/// How a file is cut into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlan {
    pub block_chunks: u32,
    chunk_size: u32,
    n_chunks: u64,
    file_size: u64,
}

impl BlockPlan {
    /// Chunks per block for chunks of `chunk_size` bytes, with at most
    /// `ring_slots` chunks held at once by the sender: about [`BLOCK_BYTES`],
    /// and never more than a quarter of the ring, so the ring can hold the
    /// blocks still waiting to be checked while it reads the next.
    pub fn chunks_per_block(chunk_size: u32, ring_slots: u32) -> u32 {
        let by_bytes = (BLOCK_BYTES / u64::from(chunk_size.max(1))).max(1);
        by_bytes.min(u64::from(ring_slots / 4).max(1)) as u32
    }

    /// The plan for a session, `None` when `block_chunks` is 0 or makes
    /// blocks above [`MAX_BLOCK_BYTES`].
    pub fn new(info: &SessionInfo, block_chunks: u32) -> Option<BlockPlan> {
        let bytes = u64::from(block_chunks) * u64::from(info.chunk_size);
        (block_chunks > 0 && bytes <= MAX_BLOCK_BYTES).then_some(BlockPlan {
            block_chunks,
            chunk_size: info.chunk_size,
            n_chunks: info.n_chunks,
            file_size: info.file_size,
        })
    }

    /// Blocks in the file (none for an empty file).
    pub fn count(&self) -> u64 {
        self.n_chunks.div_ceil(u64::from(self.block_chunks))
    }

    /// The chunks of block `b`.
    pub fn chunks(&self, b: u64) -> Range<u64> {
        let per = u64::from(self.block_chunks);
        (b * per).min(self.n_chunks)..((b + 1) * per).min(self.n_chunks)
    }

    /// The file bytes of block `b`.
    pub fn bytes(&self, b: u64) -> Range<u64> {
        let c = self.chunks(b);
        let cs = u64::from(self.chunk_size);
        (c.start * cs).min(self.file_size)..(c.end * cs).min(self.file_size)
    }

    /// Bytes in one full block.
    pub fn block_bytes(&self) -> u64 {
        u64::from(self.block_chunks) * u64::from(self.chunk_size)
    }
}

/// Hashes a file's bytes, given in order in pieces of any size, block by
/// block.
pub struct BlockHasher {
    keys: Keys,
    block_bytes: u64,
    /// The block being hashed and its bytes so far.
    index: u64,
    filled: u64,
    current: blake3::Hasher,
    /// Finished blocks not yet taken.
    done: Vec<[u8; 32]>,
}

impl BlockHasher {
    pub fn new(keys: Keys, plan: &BlockPlan) -> Self {
        BlockHasher {
            current: keys.block_hasher(0),
            keys,
            block_bytes: plan.block_bytes(),
            index: 0,
            filled: 0,
            done: Vec::new(),
        }
    }

    /// The next bytes of the file.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (self.block_bytes - self.filled).min(bytes.len() as u64) as usize;
            self.current.update(&bytes[..take]);
            self.filled += take as u64;
            bytes = &bytes[take..];
            if self.filled == self.block_bytes {
                self.close();
            }
        }
    }

    /// The file ended: closes a last, shorter block.
    pub fn finish(&mut self) {
        if self.filled > 0 {
            self.close();
        }
    }

    fn close(&mut self) {
        let next = self.keys.block_hasher(self.index + 1);
        let h = std::mem::replace(&mut self.current, next);
        self.done.push(*h.finalize().as_bytes());
        self.index += 1;
        self.filled = 0;
    }

    /// The hashes finished since the last call, in block order.
    pub fn take(&mut self) -> Vec<[u8; 32]> {
        std::mem::take(&mut self.done)
    }
}

/// Block `index`'s hash over its `bytes` in one piece.
pub fn block_hash(keys: &Keys, index: u64, bytes: &[u8]) -> [u8; 32] {
    let mut h = keys.block_hasher(index);
    h.update(bytes);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(file_size: u64, chunk_size: u32) -> SessionInfo {
        SessionInfo { file_size, chunk_size, n_chunks: file_size.div_ceil(u64::from(chunk_size)), digest: None }
    }

    #[test]
    fn blocks_cover_the_file_in_whole_chunks() {
        let p = BlockPlan::new(&info(10_500, 1000), 4).unwrap();
        assert_eq!(p.count(), 3);
        assert_eq!(p.chunks(0), 0..4);
        assert_eq!(p.chunks(2), 8..11);
        assert_eq!(p.bytes(2), 8000..10_500);
        assert_eq!(BlockPlan::new(&info(0, 1000), 4).unwrap().count(), 0);
        assert!(BlockPlan::new(&info(10, 1000), 0).is_none());
        assert!(BlockPlan::new(&info(10, 60_000), 100).is_none(), "6 MB blocks are refused");
    }

    #[test]
    fn block_size_follows_the_chunk_and_the_ring() {
        assert_eq!(BlockPlan::chunks_per_block(1440, 16_000), 728);
        assert_eq!(BlockPlan::chunks_per_block(1440, 256), 64);
        assert_eq!(BlockPlan::chunks_per_block(60_000, 3), 1);
    }

    #[test]
    fn hashing_in_pieces_matches_hashing_each_block_whole() {
        let keys = Keys::derive(&[3; 32]);
        let data: Vec<u8> = (0..10_500u32).map(|i| (i * 7 % 251) as u8).collect();
        let plan = BlockPlan::new(&info(data.len() as u64, 1000), 4).unwrap();
        let mut h = BlockHasher::new(keys.clone(), &plan);
        for piece in data.chunks(333) {
            h.update(piece);
        }
        h.finish();
        let got = h.take();
        let want: Vec<_> = (0..plan.count())
            .map(|b| {
                let r = plan.bytes(b);
                block_hash(&keys, b, &data[r.start as usize..r.end as usize])
            })
            .collect();
        assert_eq!(got, want);
        assert_ne!(want[0], block_hash(&keys, 1, &data[..4000]), "the index is part of the hash");
    }
}
