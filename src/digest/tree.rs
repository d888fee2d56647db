//! BLAKE3's tree, filled in any order.
//!
//! Within a [`BLOCK`], subtrees meet their siblings as they arrive, and
//! partial chunks wait in a 1 KiB buffer until their other part comes.
//! Whole blocks are then merged in stream order on a stack, lazily, as
//! `blake3::Hasher` merges chunks: so the stack can always be finished into
//! the root hash of the prefix it holds.
//!
//! BLAKE3's tree is left-complete: a node with no right sibling (along the
//! stream's right edge) is its parent. [`Block::insert`] follows that rule.

use std::collections::{BTreeMap, HashMap};

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt};

use super::split::Subtree;
use super::{Cv, Params, BLOCK, BLOCK_CHUNKS, CHUNK};

/// A stream's digest as its pieces come in.
#[derive(Debug)]
pub struct TreeDigest {
    params: Params,
    /// Blocks with some of their bytes in.
    open: HashMap<u64, Block>,
    /// Whole blocks waiting for one before them.
    whole: BTreeMap<u64, Cv>,
    /// Blocks merged in order so far, and their stack (as a
    /// `blake3::Hasher`'s: one entry per bit of `merged`, plus one).
    merged: u64,
    stack: Vec<Cv>,
    /// The first block's top children: a one-block prefix's root hash.
    first_halves: Option<(Cv, Cv)>,
    /// A stream of one chunk or less: its root hash, from its bytes.
    short_root: Option<[u8; 32]>,
}

/// One block's tree, partly filled.
#[derive(Debug, Default)]
struct Block {
    /// Nodes waiting for their sibling: (level, index within the block).
    nodes: HashMap<(u8, u64), Cv>,
    /// Chunks cut by a run's edge: their bytes so far, and how many.
    partial: HashMap<u64, (Box<[u8; CHUNK as usize]>, usize)>,
}

/// A block's top node, and the two children it was merged from.
struct Top {
    cv: Cv,
    halves: Option<(Cv, Cv)>,
}

impl Block {
    /// Adds the node `(level, index)` of a block of `chunks` chunks and
    /// merges it up as far as its siblings allow; the block's top when
    /// that completes it.
    fn insert(&mut self, p: &Params, chunks: u64, mut level: u8, mut index: u64, mut cv: Cv) -> Option<Top> {
        loop {
            let span = 1u64 << level;
            if span >= chunks {
                return Some(Top { cv, halves: None });
            }
            let sibling = index ^ 1;
            if sibling * span >= chunks {
                // Nothing to its right: this node is its parent.
                (level, index) = (level + 1, index / 2);
                continue;
            }
            let Some(other) = self.nodes.remove(&(level, sibling)) else {
                self.nodes.insert((level, index), cv);
                return None;
            };
            let (left, right) = if index % 2 == 0 { (cv, other) } else { (other, cv) };
            cv = merge_subtrees_non_root(&left, &right, p.mode());
            (level, index) = (level + 1, index / 2);
            if (span * 2) >= chunks {
                return Some(Top { cv, halves: Some((left, right)) });
            }
        }
    }
}

impl TreeDigest {
    pub fn new(params: Params) -> TreeDigest {
        TreeDigest {
            params,
            open: HashMap::new(),
            whole: BTreeMap::new(),
            merged: 0,
            stack: Vec::new(),
            first_halves: None,
            short_root: None,
        }
    }

    /// Chunks in block `b`: all of them but in the stream's last block.
    fn chunks_in(&self, b: u64) -> u64 {
        (self.params.len.saturating_sub(b * BLOCK)).div_ceil(CHUNK).min(BLOCK_CHUNKS)
    }

    /// Whether block `b` is still to be filled (a piece of any other is
    /// stale: a caller's mistake, ignored rather than corrupting the tree).
    fn wants(&self, b: u64) -> bool {
        b >= self.merged && b < self.params.blocks() && !self.whole.contains_key(&b)
    }

    pub(super) fn add_subtree(&mut self, s: Subtree) {
        let b = s.first / BLOCK_CHUNKS;
        if !self.wants(b) {
            return;
        }
        let chunks = self.chunks_in(b);
        let index = (s.first % BLOCK_CHUNKS) >> s.level;
        let top = self.open.entry(b).or_default().insert(&self.params, chunks, s.level, index, s.cv);
        if let Some(top) = top {
            self.block_whole(b, top);
        }
    }

    /// Bytes of one chunk at stream offset `at` (they never cross the
    /// chunk's end).
    pub(super) fn add_edge(&mut self, at: u64, bytes: &[u8]) {
        let c = at / CHUNK;
        let (b, within) = (c / BLOCK_CHUNKS, (at % CHUNK) as usize);
        let chunk_len = (self.params.chunk_end(c) - c * CHUNK) as usize;
        if !self.wants(b) || within + bytes.len() > chunk_len {
            return;
        }
        let block = self.open.entry(b).or_default();
        let (buf, filled) = block.partial.entry(c).or_insert_with(|| (Box::new([0; CHUNK as usize]), 0));
        buf[within..within + bytes.len()].copy_from_slice(bytes);
        *filled += bytes.len();
        if *filled < chunk_len {
            return;
        }
        let Some((buf, _)) = block.partial.remove(&c) else { return };
        let mut h = self.params.hasher();
        if self.params.len <= CHUNK {
            h.update(&buf[..chunk_len]);
            self.short_root = Some(*h.finalize().as_bytes());
            self.open.clear();
            self.merged = 1;
            return;
        }
        h.set_input_offset(c * CHUNK);
        h.update(&buf[..chunk_len]);
        self.add_subtree(Subtree { first: c, level: 0, cv: h.finalize_non_root() });
    }

    fn block_whole(&mut self, b: u64, top: Top) {
        self.open.remove(&b);
        if b == 0 {
            self.first_halves = top.halves;
        }
        self.whole.insert(b, top.cv);
        while let Some(cv) = self.whole.remove(&self.merged) {
            // As `blake3::Hasher` does before it pushes a chunk: merge what
            // the blocks so far complete, leaving the last one unmerged.
            while self.stack.len() > self.merged.count_ones() as usize {
                let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else { break };
                self.stack.push(merge_subtrees_non_root(&left, &right, self.params.mode()));
            }
            self.stack.push(cv);
            self.merged += 1;
        }
    }

    /// Bytes merged in order from the start.
    pub fn verified(&self) -> u64 {
        if self.merged >= self.params.blocks() {
            self.params.len
        } else {
            self.merged * BLOCK
        }
    }

    /// The verified prefix and its BLAKE3 root hash.
    pub fn prefix(&self) -> (u64, [u8; 32]) {
        (self.verified(), self.root_of_merged())
    }

    /// The stream's digest, once all of it is in.
    pub fn finish(&self) -> Option<[u8; 32]> {
        (self.verified() == self.params.len).then(|| self.root_of_merged())
    }

    /// The root hash of the blocks merged so far, as one input.
    fn root_of_merged(&self) -> [u8; 32] {
        if let Some(r) = self.short_root {
            return r;
        }
        let mode = self.params.mode();
        let Some((last, rest)) = self.stack.split_last() else {
            return *self.params.hasher().finalize().as_bytes();
        };
        let Some((first, middle)) = rest.split_first() else {
            // One block: the root of its own top node. A one-block stream
            // longer than a chunk, and every first block, has two halves.
            let (l, r) = self.first_halves.unwrap_or((*last, *last));
            return *merge_subtrees_root(&l, &r, mode).as_bytes();
        };
        let right = middle.iter().rev().fold(*last, |right, left| merge_subtrees_non_root(left, &right, mode));
        *merge_subtrees_root(first, &right, mode).as_bytes()
    }
}
