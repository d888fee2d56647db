//! The manifest of a directory tree: what a session that carries several
//! files says about them, ahead of their bytes.
//!
//! A tree travels as one stream, the same data path a single file takes:
//! the manifest's bytes first, then every file's bytes back to back in the
//! manifest's order, with no padding. Small files thus share chunks, and
//! 10,000 of them cost one handshake.
//!
//! ```text
//!  0        4       5          8          12
//!  +--------+-------+----------+----------+-----------+-----------+-----
//!  | "XBMF" |version| reserved | entries  | entry 0   | entry 1   | ...
//!  +--------+-------+----------+----------+-----------+-----------+-----
//!
//!  entry: kind u8 | mode u32 | mtime_ns i64 | size u64 | path len u16 | path
//! ```
//!
//! Integers are big-endian. `path` is relative, its components joined by
//! `/`, each one a name [`super::file_name_problem`] accepts. A parent
//! directory is listed before anything inside it. The manifest comes from
//! the network: [`Manifest::parse`] checks every rule before anything
//! reads a field, and refuses the whole manifest with the first broken
//! rule, naming the entry.

use std::collections::HashSet;

use super::{file_name_problem, untrusted_text};

const MAGIC: &[u8; 4] = b"XBMF";
const VERSION: u8 = 1;
const FIXED_LEN: usize = 12;
const ENTRY_FIXED_LEN: usize = 1 + 4 + 8 + 8 + 2;
/// Longest relative path an entry carries, in bytes (Linux's PATH_MAX less
/// room for the output directory).
pub const MAX_PATH_LEN: usize = 3072;
/// Deepest nesting an entry may have: the receiver walks each path one
/// component at a time.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// One file or directory of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated; the first component is the base name of a
    /// path given to `send`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`0o777`).
    pub mode: u32,
    pub mtime_ns: i64,
    /// Bytes of a file; 0 for a directory.
    pub size: u64,
}

impl Entry {
    /// The path's components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.path.split('/')
    }
}

/// What a receiver lets a manifest hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files and directories).
    pub max_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is cut short or malformed")]
    Malformed,
    #[error("the manifest holds {entries} entries, more than --max-files {max}")]
    TooMany { entries: u64, max: u64 },
    #[error("manifest entry {path:?}: {problem}")]
    BadPath { path: String, problem: &'static str },
    #[error("manifest entry {path:?} is listed twice")]
    Duplicate { path: String },
    #[error("manifest entry {path:?} lies in a directory the manifest does not list before it")]
    NoParent { path: String },
    #[error("the manifest's files hold {listed} bytes but the session carries {carried}")]
    SizeMismatch { listed: u64, carried: u64 },
}

/// A tree's files and directories, in the order their bytes travel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], ManifestError> {
    if buf.len() < n {
        return Err(ManifestError::Malformed);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

impl Manifest {
    /// Bytes of every file together: what follows the manifest in the stream.
    pub fn data_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Regular files among the entries.
    pub fn files(&self) -> usize {
        self.entries.iter().filter(|e| e.kind == EntryKind::File).count()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.entries.len() * (ENTRY_FIXED_LEN + 32));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.push(match e.kind {
                EntryKind::File => 0,
                EntryKind::Dir => 1,
            });
            out.extend_from_slice(&(e.mode & 0o777).to_be_bytes());
            out.extend_from_slice(&e.mtime_ns.to_be_bytes());
            out.extend_from_slice(&e.size.to_be_bytes());
            out.extend_from_slice(&(e.path.len() as u16).to_be_bytes());
            out.extend_from_slice(e.path.as_bytes());
        }
        out
    }

    /// Parses untrusted bytes and checks every rule: the layout, the count
    /// against `limits`, each path component (no `..`, no absolute path, no
    /// NUL, no control or text-direction characters, at most 255 bytes), no
    /// duplicates, and every parent listed before its children as a
    /// directory.
    pub fn parse(mut buf: &[u8], limits: Limits) -> Result<Manifest, ManifestError> {
        let fixed = take(&mut buf, FIXED_LEN)?;
        if &fixed[..4] != MAGIC || fixed[4] != VERSION {
            return Err(ManifestError::Malformed);
        }
        let count = u64::from(u32::from_be_bytes(array(&fixed[8..12])));
        if count > limits.max_entries {
            return Err(ManifestError::TooMany { entries: count, max: limits.max_entries });
        }
        // Each entry takes at least its fixed part and one byte of path, so
        // a count the bytes cannot hold is refused before anything is
        // allocated for it.
        if count > (buf.len() / (ENTRY_FIXED_LEN + 1)) as u64 {
            return Err(ManifestError::Malformed);
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut seen: HashSet<String> = HashSet::with_capacity(count as usize);
        let mut dirs: HashSet<String> = HashSet::new();
        for _ in 0..count {
            let f = take(&mut buf, ENTRY_FIXED_LEN)?;
            let kind = match f[0] {
                0 => EntryKind::File,
                1 => EntryKind::Dir,
                _ => return Err(ManifestError::Malformed),
            };
            let mode = u32::from_be_bytes(array(&f[1..5])) & 0o777;
            let mtime_ns = i64::from_be_bytes(array(&f[5..13]));
            let size = u64::from_be_bytes(array(&f[13..21]));
            let path_len = usize::from(u16::from_be_bytes(array(&f[21..23])));
            let raw = take(&mut buf, path_len)?;
            let shown = || untrusted_text(&String::from_utf8_lossy(raw));
            let path = std::str::from_utf8(raw)
                .map_err(|_| ManifestError::BadPath { path: shown(), problem: "is not UTF-8" })?;
            check_path(path).map_err(|problem| ManifestError::BadPath { path: shown(), problem })?;
            if kind == EntryKind::Dir && size != 0 {
                return Err(ManifestError::Malformed);
            }
            if let Some((parent, _)) = path.rsplit_once('/') {
                if !dirs.contains(parent) {
                    return Err(ManifestError::NoParent { path: shown() });
                }
            }
            if !seen.insert(path.to_string()) {
                return Err(ManifestError::Duplicate { path: shown() });
            }
            if kind == EntryKind::Dir {
                dirs.insert(path.to_string());
            }
            entries.push(Entry { path: path.to_string(), kind, mode, mtime_ns, size });
        }
        if !buf.is_empty() {
            return Err(ManifestError::Malformed);
        }
        Ok(Manifest { entries })
    }

    /// Checks that the files fill exactly the `carried` bytes that follow
    /// the manifest in the stream.
    pub fn check_carried(&self, carried: u64) -> Result<(), ManifestError> {
        let listed = self.entries.iter().try_fold(0u64, |a, e| a.checked_add(e.size)).unwrap_or(u64::MAX);
        if listed != carried {
            return Err(ManifestError::SizeMismatch { listed, carried });
        }
        Ok(())
    }
}

/// What is wrong with a relative path of the manifest, if anything.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.starts_with('/') {
        return Err("is an absolute path");
    }
    if path.len() > MAX_PATH_LEN {
        return Err("is longer than 3072 bytes");
    }
    if path.contains('\0') {
        return Err("holds a NUL");
    }
    let mut depth = 0;
    for c in path.split('/') {
        depth += 1;
        if depth > MAX_DEPTH {
            return Err("is nested deeper than 64 directories");
        }
        if let Some(problem) = file_name_problem(c) {
            return Err(match problem {
                "is empty" => "holds an empty component ('//' or a trailing '/')",
                "names a directory" => "holds a '.' or '..' component",
                p => p,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_entries: 100 };

    fn file(path: &str, size: u64) -> Entry {
        Entry { path: path.into(), kind: EntryKind::File, mode: 0o640, mtime_ns: 1_700_000_000_123_456_789, size }
    }
    fn dir(path: &str) -> Entry {
        Entry { path: path.into(), kind: EntryKind::Dir, mode: 0o755, mtime_ns: -5, size: 0 }
    }

    fn tree() -> Manifest {
        Manifest {
            entries: vec![
                dir("data"),
                dir("data/empty"),
                file("data/a b.txt", 10),
                dir("data/ünï"),
                file("data/ünï/x", 0),
                file("top", 3),
            ],
        }
    }

    #[test]
    fn a_tree_round_trips() {
        let m = tree();
        let parsed = Manifest::parse(&m.encode(), LIMITS).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(parsed.data_bytes(), 13);
        assert_eq!(parsed.files(), 3);
        assert!(parsed.check_carried(13).is_ok());
        assert!(matches!(parsed.check_carried(14), Err(ManifestError::SizeMismatch { listed: 13, carried: 14 })));
    }

    /// Every hostile path the receiver must never act on is refused by
    /// the parser, with the rule it breaks.
    #[test]
    fn hostile_paths_are_refused() {
        let long = "n".repeat(300);
        let cases: [(&str, &str); 9] = [
            ("../x", "'.' or '..'"),
            ("a/../../x", "no-parent-or-dotdot"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty component"),
            ("x\0y", "NUL"),
            ("esc\u{1b}[2J", "control"),
            ("rtl\u{202e}txt", "control or text-direction"),
            (&long, "255 bytes"),
            ("-rf", "starts with '-'"),
        ];
        for (path, rule) in cases {
            let m = Manifest { entries: vec![file(path, 0)] };
            let err = Manifest::parse(&m.encode(), LIMITS).expect_err(path);
            let text = err.to_string();
            if rule != "no-parent-or-dotdot" {
                assert!(text.contains(rule), "{path:?}: {text}");
            }
            assert!(!text.chars().any(|c| c.is_control()), "the error is safe to print: {text:?}");
        }
    }

    #[test]
    fn duplicates_missing_parents_and_too_many_are_refused() {
        let dup = Manifest { entries: vec![file("a", 1), file("a", 1)] };
        assert!(matches!(Manifest::parse(&dup.encode(), LIMITS), Err(ManifestError::Duplicate { .. })));
        let dir_then_file = Manifest { entries: vec![dir("a"), file("a", 1)] };
        assert!(matches!(Manifest::parse(&dir_then_file.encode(), LIMITS), Err(ManifestError::Duplicate { .. })));
        let orphan = Manifest { entries: vec![file("a/b", 1)] };
        assert!(matches!(Manifest::parse(&orphan.encode(), LIMITS), Err(ManifestError::NoParent { .. })));
        // A file is no directory to put things in.
        let through_file = Manifest { entries: vec![file("a", 1), file("a/b", 1)] };
        assert!(matches!(Manifest::parse(&through_file.encode(), LIMITS), Err(ManifestError::NoParent { .. })));
        let many = Manifest { entries: (0..5).map(|i| file(&format!("f{i}"), 0)).collect() };
        let err = Manifest::parse(&many.encode(), Limits { max_entries: 4 }).unwrap_err();
        assert_eq!(err, ManifestError::TooMany { entries: 5, max: 4 });
        assert!(err.to_string().contains("--max-files 4"));
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let good = tree().encode();
        for cut in 0..good.len() {
            assert!(Manifest::parse(&good[..cut], LIMITS).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Manifest::parse(&trailing, LIMITS), Err(ManifestError::Malformed));
        // A count far beyond the bytes present allocates nothing.
        let mut huge = good[..FIXED_LEN].to_vec();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let lim = Limits { max_entries: u64::MAX };
        assert_eq!(Manifest::parse(&huge, lim), Err(ManifestError::Malformed));
        let mut sized_dir = Manifest { entries: vec![dir("d")] }.encode();
        let at = FIXED_LEN + 13;
        sized_dir[at..at + 8].copy_from_slice(&7u64.to_be_bytes());
        assert_eq!(Manifest::parse(&sized_dir, LIMITS), Err(ManifestError::Malformed));
    }
}
