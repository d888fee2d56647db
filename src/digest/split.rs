//! A contiguous run of the stream, cut where BLAKE3's tree allows: the
//! whole chunks inside it as aligned subtrees (hashed here, with the SIMD
//! width the crate has for several chunks at once), and the partial chunks
//! at its ends as edges, which the tree stitches with their neighbours.

use blake3::hazmat::HasherExt;

use super::held::Held;
use super::{Cv, Params, BLOCK_CHUNKS, CHUNK};

/// The largest subtree hashed at once, in chunks: big enough for the
/// widest SIMD path, small enough that a gathered one stays in cache.
const MAX_GROUP: u64 = 64;

/// A subtree's chaining value: `2^level` chunks from chunk `first`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subtree {
    pub first: u64,
    pub level: u8,
    pub cv: Cv,
}

/// A hashing thread's buffers, kept from batch to batch.
#[derive(Debug, Default)]
pub struct Scratch {
    pub(super) subtrees: Vec<Subtree>,
    gather: Vec<u8>,
    /// Hash each segment's own whole chunks only, never copying: the
    /// alternative to gathering that the benchmarks compare.
    pub(super) in_place_only: bool,
    /// With [`Scratch::holding`]: the thread's run, held back until a
    /// window of it is complete.
    pub(super) held: Option<Held>,
}

impl Scratch {
    /// Hashes what it is given at once.
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Holds back the bytes of the run it was last given, and hashes them
    /// a whole window at a time, or when a piece does not continue them,
    /// or on [`super::Digest::release`]. For a receive thread, whose
    /// batches are short pieces of one in-order run.
    pub fn holding() -> Scratch {
        Scratch { held: Some(Held::new()), ..Scratch::default() }
    }

    /// Whether it holds bytes not yet hashed.
    pub fn holds(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.is_empty())
    }

    /// Never gathers a subtree that spans segments: each segment's own
    /// whole chunks are hashed where they are, and the rest is stitched.
    pub fn in_place_only() -> Scratch {
        Scratch { in_place_only: true, ..Scratch::default() }
    }
}

/// Segments `[start, end)` of the stream that follow each other without a gap.
#[derive(Clone, Copy)]
pub(super) struct Run<'s, 'a> {
    segments: &'s [(u64, &'a [u8])],
}

impl<'a> Run<'_, 'a> {
    fn start(&self) -> u64 {
        self.segments[0].0
    }

    fn end(&self) -> u64 {
        let (at, bytes) = self.segments[self.segments.len() - 1];
        at + bytes.len() as u64
    }

    /// Calls `f` with the bytes of `[from, to)`, a segment's slice at a time.
    fn slices(&self, from: u64, to: u64, mut f: impl FnMut(u64, &'a [u8])) {
        // The segments follow each other: start at the one holding `from`
        // (a batch's run has hundreds, a subtree spans a few).
        let first = self.segments.partition_point(|&(at, bytes)| at + bytes.len() as u64 <= from);
        for &(at, bytes) in &self.segments[first..] {
            if at >= to {
                break;
            }
            let end = at + bytes.len() as u64;
            let (lo, hi) = (from.max(at), to.min(end));
            f(lo, &bytes[(lo - at) as usize..(hi - at) as usize]);
        }
    }

    /// `[from, to)` as one slice: the segment's own when one holds it all,
    /// else gathered into `gather`.
    fn contiguous<'g>(&self, from: u64, to: u64, gather: &'g mut Vec<u8>) -> &'g [u8]
    where
        'a: 'g,
    {
        let mut within = None;
        self.slices(from, to, |at, bytes| {
            if at == from && bytes.len() as u64 == to - from {
                within = Some(bytes);
            }
        });
        if let Some(b) = within {
            return b;
        }
        gather.clear();
        self.slices(from, to, |_, bytes| gather.extend_from_slice(bytes));
        gather
    }
}

/// Calls `f` with each run of `segments` (sorted by offset) that has no
/// gap, or (not `join`) with each segment alone.
pub(super) fn for_each_run<'a>(segments: &[(u64, &'a [u8])], join: bool, mut f: impl FnMut(Run<'_, 'a>)) {
    let mut start = 0;
    for i in 1..=segments.len() {
        let joined = join && i < segments.len() && {
            let (at, bytes) = segments[i - 1];
            at + bytes.len() as u64 == segments[i].0
        };
        if !joined && start < i {
            f(Run { segments: &segments[start..i] });
            start = i;
        }
    }
}

/// The whole chunks `[first, past)` of a run: those inside it, the stream's
/// short last chunk included when the run reaches the end.
fn whole_chunks(p: &Params, run: &Run<'_, '_>) -> Option<(u64, u64)> {
    if p.len <= CHUNK {
        // A one-chunk stream's digest is that chunk's root hash: it is
        // stitched whole, then hashed as the root.
        return None;
    }
    let first = run.start().div_ceil(CHUNK);
    let past = if run.end() >= p.len { p.len.div_ceil(CHUNK) } else { run.end() / CHUNK };
    (first < past).then_some((first, past))
}

/// Hashes the whole chunks of `run` as aligned subtrees into
/// `scratch.subtrees`.
pub(super) fn hash_interior(p: &Params, run: Run<'_, '_>, scratch: &mut Scratch) {
    let Some((mut c, past)) = whole_chunks(p, &run) else { return };
    while c < past {
        let n = group_len(p, c, past);
        let (from, to) = (c * CHUNK, p.chunk_end(c + n - 1));
        let bytes = run.contiguous(from, to, &mut scratch.gather);
        let mut h = p.hasher();
        h.set_input_offset(from);
        h.update(bytes);
        scratch.subtrees.push(Subtree { first: c, level: n.trailing_zeros() as u8, cv: h.finalize_non_root() });
        c += n;
    }
}

/// The chunks of the subtree that starts at chunk `c`: the most that are
/// aligned and fit before `past`, never a whole block (whose top the tree
/// merges itself: the first block's two halves give a one-block prefix
/// its root hash).
fn group_len(p: &Params, c: u64, past: u64) -> u64 {
    let aligned = if c == 0 { MAX_GROUP } else { 1 << c.trailing_zeros().min(MAX_GROUP.trailing_zeros()) };
    let mut n = aligned;
    while n > past - c {
        n /= 2;
    }
    let block = c / BLOCK_CHUNKS;
    let block_chunks = (p.len - block * BLOCK_CHUNKS * CHUNK).div_ceil(CHUNK).min(BLOCK_CHUNKS);
    if c % BLOCK_CHUNKS == 0 && n >= block_chunks && n > 1 {
        n /= 2;
    }
    n
}

/// Calls `f` with each piece of `run` that is not a whole chunk inside it,
/// cut at chunk and segment boundaries: what the tree stitches.
pub(super) fn edges<'a>(p: &Params, run: Run<'_, 'a>, mut f: impl FnMut(u64, &'a [u8])) {
    let (start, end) = (run.start(), run.end());
    let mut cut = |from: u64, to: u64| {
        run.slices(from, to, |mut at, mut bytes| {
            while !bytes.is_empty() {
                let room = p.chunk_end(at / CHUNK).saturating_sub(at).min(bytes.len() as u64) as usize;
                let (this, rest) = bytes.split_at(room.max(1));
                f(at, this);
                at += this.len() as u64;
                bytes = rest;
            }
        })
    };
    match whole_chunks(p, &run) {
        Some((first, past)) => {
            cut(start, first * CHUNK);
            cut((past * CHUNK).min(end), end);
        }
        None => cut(start, end),
    }
}
