//! Directory trees: many files as one stream.
//!
//! A tree travels on the data path a single file takes, as one stream:
//! its manifest ([`crate::wire::manifest`]), then every file's bytes back
//! to back. One session, one handshake, one digest over the stream; small
//! files share chunks.
//! - [`scan`]: the sender walks the paths it was given into a manifest;
//! - [`input`]: the sender reads the stream (one file, or a tree's files
//!   in turn) for the frames or a TCP socket;
//! - [`output`]: the receiver makes the tree beneath `--out`, never
//!   following a link, and commits every file once the digest matched.

pub mod input;
pub mod output;
pub mod scan;

use crate::wire::manifest::{EntryKind, Manifest};

/// One file's bytes in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Its index among the manifest's entries.
    pub entry: usize,
    /// Where its bytes start in the stream.
    pub start: u64,
    pub len: u64,
}

/// Where each file's bytes lie in a tree's stream.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub manifest_len: u64,
    /// Files with bytes, in stream order.
    pub spans: Vec<Span>,
}

impl Layout {
    pub fn new(manifest: &Manifest, manifest_len: u64) -> Layout {
        let mut at = manifest_len;
        let mut spans = Vec::new();
        for (entry, e) in manifest.entries.iter().enumerate() {
            if e.kind == EntryKind::File && e.size > 0 {
                spans.push(Span { entry, start: at, len: e.size });
                at += e.size;
            }
        }
        Layout { manifest_len, spans }
    }

    /// The stream's length.
    pub fn len(&self) -> u64 {
        self.spans.last().map_or(self.manifest_len, |s| s.start + s.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The span holding stream byte `offset` (at or past the manifest),
    /// by its index in `spans`.
    pub fn span_at(&self, offset: u64) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.start + s.len <= offset);
        (i < self.spans.len() && self.spans[i].start <= offset).then_some(i)
    }

    /// Splits `len` stream bytes at `offset` (past the manifest) into
    /// per-file pieces: (span index, offset in that file, bytes).
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let mut at = offset;
        let end = offset + len;
        let mut i = self.span_at(offset);
        std::iter::from_fn(move || {
            let idx = i?;
            if at >= end {
                return None;
            }
            let s = self.spans.get(idx)?;
            let take = (s.start + s.len).min(end) - at;
            let piece = (idx, at - s.start, take);
            at += take;
            i = Some(idx + 1);
            Some(piece)
        })
    }
}

/// Which file a tree's stream has reached, for progress lines: files
/// done of all, and the one in progress.
#[derive(Debug, Clone, Default)]
pub struct FileProgress {
    /// Per file in stream order (empty ones too): where its bytes end.
    ends: Vec<u64>,
    paths: Vec<String>,
}

impl FileProgress {
    pub fn new(manifest: &Manifest, manifest_len: u64) -> FileProgress {
        let mut at = manifest_len;
        let mut p = FileProgress::default();
        for e in manifest.entries.iter().filter(|e| e.kind == EntryKind::File) {
            at += e.size;
            p.ends.push(at);
            p.paths.push(e.path.clone());
        }
        p
    }

    /// With the stream's first `done` bytes delivered: files whole, all
    /// files, and the path of the next one.
    pub fn at(&self, done: u64) -> (u64, u64, Option<&str>) {
        let whole = self.ends.partition_point(|&end| end <= done);
        (whole as u64, self.ends.len() as u64, self.paths.get(whole).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::manifest::Entry;

    #[test]
    fn progress_counts_whole_files_and_names_the_next() {
        let m = sample();
        let p = FileProgress::new(&m, 10);
        assert_eq!(p.at(0), (0, 3, Some("d/a")));
        assert_eq!(p.at(12), (0, 3, Some("d/a")));
        assert_eq!(p.at(13), (2, 3, Some("d/b")), "an empty file is done with the one before");
        assert_eq!(p.at(18), (3, 3, None));
    }

    fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
        Entry { path: path.into(), kind, mode: 0o644, mtime_ns: 0, size }
    }

    /// A directory holding a 3-byte file, an empty one and a 5-byte one.
    fn sample() -> Manifest {
        Manifest {
            entries: vec![
                entry("d", EntryKind::Dir, 0),
                entry("d/a", EntryKind::File, 3),
                entry("d/empty", EntryKind::File, 0),
                entry("d/b", EntryKind::File, 5),
            ],
        }
    }

    #[test]
    fn pieces_split_at_file_boundaries_and_skip_empty_files() {
        let m = sample();
        let l = Layout::new(&m, 10);
        assert_eq!(l.len(), 18);
        assert_eq!(l.spans.iter().map(|s| s.entry).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(l.pieces(11, 6).collect::<Vec<_>>(), vec![(0, 1, 2), (1, 0, 4)]);
        assert_eq!(l.pieces(17, 5).collect::<Vec<_>>(), vec![(1, 4, 1)], "never past the end");
        assert_eq!(l.span_at(18), None);
    }
}
