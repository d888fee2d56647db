//! The sender's side of a tree: the paths given to `send`, walked into a
//! manifest.
//!
//! Each path arrives under its base name, as `scp -r` gives it. Symbolic
//! links inside a directory are skipped with a warning, never followed (a
//! link to `/` would send the machine); a path named on the command line
//! is followed, as cp does. Devices, FIFOs and sockets are skipped: the
//! receiver never makes special files.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tracing::warn;

use crate::wire::file_name_problem;
use crate::wire::manifest::{Entry, EntryKind, Manifest, MAX_DEPTH, MAX_PATH_LEN};

/// What the sender knows of a file when it lists it: a change before its
/// bytes are read is caught against this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub mtime_ns: i64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp { len: meta.len(), mtime_ns: mtime_ns(meta) }
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

/// A walked tree: its manifest, and for every entry the local path.
#[derive(Debug, Default)]
pub struct Scanned {
    pub manifest: Manifest,
    pub sources: Vec<PathBuf>,
    pub stamps: Vec<Stamp>,
    /// Entries left out, each with why: symbolic links and special files.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

impl Scanned {
    fn push(&mut self, path: String, source: &Path, meta: &std::fs::Metadata, kind: EntryKind) {
        let size = if kind == EntryKind::File { meta.len() } else { 0 };
        self.manifest.entries.push(Entry { path, kind, mode: meta.mode() & 0o777, mtime_ns: mtime_ns(meta), size });
        self.sources.push(source.to_path_buf());
        self.stamps.push(Stamp::of(meta));
    }

    fn skip(&mut self, source: &Path, why: &'static str) {
        warn!(path = %source.display(), "skipped: {why}");
        self.skipped.push((source.to_path_buf(), why));
    }
}

/// The name a path given to `send` arrives under.
fn base_name(path: &Path) -> anyhow::Result<String> {
    let named = match path.file_name() {
        Some(n) => PathBuf::from(n),
        // `.`, `..` or `/`: the directory's own name.
        None => std::fs::canonicalize(path)
            .with_context(|| format!("resolving {}", path.display()))?
            .file_name()
            .map(PathBuf::from)
            .with_context(|| format!("{} has no name to send it under", path.display()))?,
    };
    component(&named, path)
}

/// One path component as the manifest carries it, or why it cannot go.
fn component(name: &Path, whole: &Path) -> anyhow::Result<String> {
    let Some(s) = name.to_str() else { bail!("{} is not UTF-8, which the manifest needs", whole.display()) };
    if let Some(problem) = file_name_problem(s) {
        bail!("{}: the name {s:?} {problem}, and the receiver would refuse it", whole.display());
    }
    Ok(s.to_string())
}

/// Walks `paths` (files and directories) into a manifest.
pub fn scan(paths: &[PathBuf]) -> anyhow::Result<Scanned> {
    let mut out = Scanned::default();
    let mut names = std::collections::HashSet::new();
    for top in paths {
        let name = base_name(top)?;
        if !names.insert(name.clone()) {
            bail!("two of the paths given are named {name:?}; the receiver would put both at the same place");
        }
        let meta = std::fs::metadata(top).with_context(|| format!("reading {}", top.display()))?;
        walk(&mut out, top, name, &meta, 1)?;
    }
    Ok(out)
}

fn walk(out: &mut Scanned, source: &Path, rel: String, meta: &std::fs::Metadata, depth: usize) -> anyhow::Result<()> {
    if depth > MAX_DEPTH {
        bail!("{} is nested deeper than {MAX_DEPTH} directories", source.display());
    }
    if rel.len() > MAX_PATH_LEN {
        bail!("{}: its path in the tree is longer than {MAX_PATH_LEN} bytes", source.display());
    }
    let ft = meta.file_type();
    if ft.is_file() {
        out.push(rel, source, meta, EntryKind::File);
    } else if ft.is_dir() {
        out.push(rel.clone(), source, meta, EntryKind::Dir);
        let mut children: Vec<_> = std::fs::read_dir(source)
            .with_context(|| format!("listing {}", source.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", source.display()))?;
        // A stable order: the same tree makes the same stream.
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let path = child.path();
            let meta = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            if meta.file_type().is_symlink() {
                out.skip(&path, "a symbolic link (links inside a tree are not followed)");
                continue;
            }
            let name = component(Path::new(&child.file_name()), &path)?;
            walk(out, &path, format!("{rel}/{name}"), &meta, depth + 1)?;
        }
    } else {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device (special files are not sent)"
        };
        out.skip(source, what);
    }
    Ok(())
}

/// What a walk skipped, for a report's `failed_files`.
pub fn skipped_files(scanned: Option<&Scanned>) -> Vec<super::output::FailedFile> {
    scanned.map_or_else(Vec::new, |s| {
        s.skipped
            .iter()
            .map(|(p, why)| super::output::FailedFile {
                path: p.display().to_string(),
                reason: format!("skipped: {why}"),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_listed_parents_first_links_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("sub/empty")).unwrap();
        std::fs::write(root.join("sub/b"), b"bb").unwrap();
        std::fs::write(root.join("a"), b"a").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        // Never opened (an open would block): skipped by its type.
        nix::unistd::mkfifo(&root.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let s = scan(std::slice::from_ref(&root)).unwrap();
        let paths: Vec<_> = s.manifest.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["data", "data/a", "data/sub", "data/sub/b", "data/sub/empty"]);
        assert_eq!(s.manifest.data_bytes(), 3);
        assert_eq!(s.skipped.len(), 2);
        assert!(s.skipped[0].1.contains("symbolic link"));
        assert_eq!(s.skipped[1].1, "a FIFO");
        // What it lists, the receiver's parser takes.
        let lim = crate::wire::manifest::Limits { max_entries: 10 };
        assert_eq!(Manifest::parse(&s.manifest.encode(), lim).unwrap(), s.manifest);
        assert!(scan(&[root.clone(), root.join("sub").join("..")]).is_err(), "two paths of one name");
    }
}
