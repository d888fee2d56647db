//! The receiver's record of which chunks it holds: one bit per chunk.

/// A fixed-size set of chunk indices `0..len`.
#[derive(Debug, Clone)]
pub struct ChunkSet {
    words: Vec<u64>,
    len: u64,
    count: u64,
    /// Chunks `0..prefix` are all held.
    prefix: u64,
}

impl ChunkSet {
    pub fn new(len: u64) -> ChunkSet {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        ChunkSet { words: vec![0; words], len, count: 0, prefix: 0 }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct chunks held.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_complete(&self) -> bool {
        self.count == self.len
    }

    /// Marks `idx` as held. Returns true if it was new, false for a duplicate or
    /// an index out of range.
    pub fn insert(&mut self, idx: u64) -> bool {
        if idx >= self.len {
            return false;
        }
        let (w, b) = ((idx / 64) as usize, idx % 64);
        let mask = 1u64 << b;
        if self.words[w] & mask != 0 {
            return false;
        }
        self.words[w] |= mask;
        self.count += 1;
        if idx == self.prefix {
            self.prefix = self.next_missing(idx, self.len).unwrap_or(self.len);
        }
        true
    }

    /// Forgets the chunks in `range` (held ones become missing again): a
    /// block that failed its check is asked for again.
    pub fn remove_range(&mut self, range: std::ops::Range<u64>) {
        for idx in range.start..range.end.min(self.len) {
            let (w, b) = ((idx / 64) as usize, idx % 64);
            let mask = 1u64 << b;
            if self.words[w] & mask != 0 {
                self.words[w] &= !mask;
                self.count -= 1;
                self.prefix = self.prefix.min(idx);
            }
        }
    }

    /// How many leading chunks are all held.
    pub fn prefix(&self) -> u64 {
        self.prefix
    }

    pub fn contains(&self, idx: u64) -> bool {
        idx < self.len && self.words[(idx / 64) as usize] & (1 << (idx % 64)) != 0
    }

    /// The first missing chunk at or after `from` and before `upto`.
    /// Chunks in `from..upto` not held.
    pub fn count_missing(&self, from: u64, upto: u64) -> u64 {
        let upto = upto.min(self.len);
        if from >= upto {
            return 0;
        }
        let mut held = 0u64;
        let mut idx = from;
        while idx < upto {
            let w = (idx / 64) as usize;
            let lo = idx % 64;
            let hi = (upto - (idx - lo)).min(64);
            let mask = if hi - lo == 64 { !0 } else { ((1u64 << (hi - lo)) - 1) << lo };
            held += u64::from((self.words[w] & mask).count_ones());
            idx = idx - lo + hi;
        }
        (upto - from) - held
    }

    pub fn next_missing(&self, from: u64, upto: u64) -> Option<u64> {
        let upto = upto.min(self.len);
        let mut idx = from;
        while idx < upto {
            let w = (idx / 64) as usize;
            // Bits at or above idx%64 that are missing.
            let missing = !self.words[w] & (!0u64 << (idx % 64));
            if missing != 0 {
                let found = (w as u64) * 64 + u64::from(missing.trailing_zeros());
                return (found < upto).then_some(found);
            }
            idx = (w as u64 + 1) * 64;
        }
        None
    }

    /// Writes a missing-chunk bitmap for `[base, base + nbits)` into `out`
    /// (LSB-first per byte), clipped to the set's length. Returns the number of
    /// bits described.
    pub fn missing_bitmap(&self, base: u64, nbits: u32, out: &mut Vec<u8>) -> u32 {
        let end = (base + u64::from(nbits)).min(self.len);
        let nbits = end.saturating_sub(base) as u32;
        out.clear();
        out.resize((nbits as usize).div_ceil(8), 0);
        for i in 0..nbits as u64 {
            if !self.contains(base + i) {
                out[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        nbits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_count_and_duplicates() {
        let mut s = ChunkSet::new(130);
        assert!(s.insert(0));
        assert!(s.insert(129));
        assert!(!s.insert(129), "duplicate");
        assert!(!s.insert(130), "out of range");
        assert_eq!(s.count(), 2);
        assert!(s.contains(129) && !s.contains(1));
        assert_eq!(s.prefix(), 1);
        for i in 2..129 {
            s.insert(i);
        }
        assert_eq!(s.prefix(), 1, "chunk 1 still missing");
        s.insert(1);
        assert_eq!(s.prefix(), 130);
    }

    #[test]
    fn count_missing_matches_a_scan() {
        let mut c = ChunkSet::new(300);
        for i in (0..300).filter(|i| i % 3 != 0 && i % 7 != 1) {
            c.insert(i);
        }
        for (from, upto) in [(0, 300), (5, 6), (63, 65), (64, 128), (1, 299), (10, 10), (250, 900)] {
            let want = (from..upto.min(300)).filter(|i| !c.contains(*i)).count() as u64;
            assert_eq!(c.count_missing(from, upto), want, "{from}..{upto}");
        }
    }

    #[test]
    fn next_missing_skips_full_words() {
        let mut s = ChunkSet::new(200);
        for i in 0..150 {
            s.insert(i);
        }
        assert_eq!(s.next_missing(0, 200), Some(150));
        assert_eq!(s.next_missing(0, 150), None);
        s.insert(150);
        assert_eq!(s.next_missing(10, 200), Some(151));
        for i in 151..200 {
            s.insert(i);
        }
        assert!(s.is_complete());
        assert_eq!(s.next_missing(0, 200), None);
    }

    #[test]
    fn bitmap_marks_exactly_the_missing() {
        let mut s = ChunkSet::new(20);
        for i in [0, 1, 3, 8, 19] {
            s.insert(i);
        }
        let mut out = Vec::new();
        let n = s.missing_bitmap(0, 100, &mut out);
        assert_eq!(n, 20);
        let missing: Vec<u64> = (0..n as u64).filter(|i| out[(*i / 8) as usize] & (1 << (i % 8)) != 0).collect();
        let expect: Vec<u64> = (0..20).filter(|i| ![0, 1, 3, 8, 19].contains(i)).collect();
        assert_eq!(missing, expect);
    }

    #[test]
    fn empty_set_is_complete() {
        let s = ChunkSet::new(0);
        assert!(s.is_complete());
        assert_eq!(s.next_missing(0, 10), None);
    }

    #[test]
    fn removed_chunks_are_missing_again_and_pull_the_prefix_back() {
        let mut s = ChunkSet::new(200);
        for i in 0..150 {
            s.insert(i);
        }
        s.remove_range(64..130);
        assert_eq!(s.prefix(), 64);
        assert_eq!(s.count(), 84);
        assert_eq!(s.next_missing(0, 200), Some(64));
        assert!(!s.contains(129) && s.contains(130));
        s.remove_range(190..300);
        assert_eq!(s.count(), 84, "removing chunks not held changes nothing");
        for i in 64..130 {
            assert!(s.insert(i));
        }
        assert_eq!(s.prefix(), 150);
    }
}
