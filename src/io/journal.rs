//! The receiver's journal of an interrupted transfer: beside its partial
//! output, what the source was and how much of the stream is in, so that
//! running the same commands again moves only the rest.
//!
//! A journal says little and proves nothing by itself: the prefix it
//! names is read back and hashed before it is offered, and the sender
//! hashes its own first bytes and answers; the stream resumes only where
//! both digests agree. So a journal left stale by a crash (it is never
//! synced: the data it names may not have reached the disk), or one
//! altered, costs a restart, never a mixed file.
//!
//! Layout (big-endian): a fixed part, then for a tree its manifest.
//!
//! ```text
//! "XBRJ" | version u8 | tree u8 | 0 u16 | size u64 | mtime_ns i64
//! | manifest_len u64 | entries u32 | verified u64 | hash [32] | seal [32]
//! | manifest (manifest_len bytes, trees only)
//! ```
//!
//! `seal` is a BLAKE3 of everything else (the manifest by its hash), keyed
//! with a key derived from the pre-shared key when there is one: a journal
//! written under another key, or torn, is discarded with a message.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::os::sys::Doing;
use crate::proto::auth::Keys;
use crate::wire::message::TreeShape;

const MAGIC: &[u8; 4] = b"XBRJ";
const VERSION: u8 = 1;
/// Bytes of the fixed part, seal included.
const FIXED_LEN: usize = 4 + 1 + 1 + 2 + 8 + 8 + 8 + 4 + 8 + 32 + 32;
const SEAL_AT: usize = FIXED_LEN - 32;

/// What the sender's source was, as its Hello described it: a resumed
/// transfer must be of the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The stream's length (a tree's manifest and files).
    pub size: u64,
    /// The file's modification time (0 where the sender did not say; a
    /// tree's are in its manifest, which the digest covers).
    pub mtime_ns: i64,
    pub tree: Option<TreeShape>,
}

/// One journal's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub identity: Identity,
    /// The stream's first `verified` bytes are in the output, and
    /// `hash` is their digest (with the session's hasher).
    pub verified: u64,
    pub hash: [u8; 32],
    /// A tree's manifest: the files' names and sizes, needed to read the
    /// partials back before the sender says anything.
    pub manifest: Vec<u8>,
}

/// Why an existing journal was not used; said to the user as "…;
/// starting over".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("its journal is damaged, or was written under another key")]
    Damaged,
    #[error("the source changed since the interrupted transfer (its size or modification time differ)")]
    SourceChanged,
    #[error("its journal is not a regular file of ours")]
    NotOurs,
}

fn seal(keys: Option<&Keys>, body: &[u8], manifest_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = keys.map_or_else(blake3::Hasher::new, Keys::journal_hasher);
    h.update(body);
    h.update(manifest_hash);
    *h.finalize().as_bytes()
}

impl Journal {
    /// The fixed part, sealed; `manifest_hash`: BLAKE3 of the manifest.
    fn fixed(&self, keys: Option<&Keys>, manifest_hash: &[u8; 32]) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = u8::from(self.identity.tree.is_some());
        b[8..16].copy_from_slice(&self.identity.size.to_be_bytes());
        b[16..24].copy_from_slice(&self.identity.mtime_ns.to_be_bytes());
        let (mlen, entries) = self.identity.tree.map_or((0, 0), |t| (t.manifest_len, t.entries));
        b[24..32].copy_from_slice(&mlen.to_be_bytes());
        b[32..36].copy_from_slice(&entries.to_be_bytes());
        b[36..44].copy_from_slice(&self.verified.to_be_bytes());
        b[44..76].copy_from_slice(&self.hash);
        let s = seal(keys, &b[..SEAL_AT], manifest_hash);
        b[SEAL_AT..].copy_from_slice(&s);
        b
    }

    /// Parses a journal's bytes, checking its seal.
    pub fn parse(bytes: &[u8], keys: Option<&Keys>) -> Result<Journal, Unusable> {
        let fixed = bytes.get(..FIXED_LEN).ok_or(Unusable::Damaged)?;
        if &fixed[0..4] != MAGIC || fixed[4] != VERSION || fixed[5] > 1 {
            return Err(Unusable::Damaged);
        }
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&fixed[at..at + 8]);
            u64::from_be_bytes(a)
        };
        let mlen = u64_at(24);
        let mut entries = [0u8; 4];
        entries.copy_from_slice(&fixed[32..36]);
        let tree = (fixed[5] == 1).then_some(TreeShape { manifest_len: mlen, entries: u32::from_be_bytes(entries) });
        let manifest = &bytes[FIXED_LEN..];
        if manifest.len() as u64 != tree.map_or(0, |t| t.manifest_len) {
            return Err(Unusable::Damaged);
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&fixed[44..76]);
        let j = Journal {
            identity: Identity { size: u64_at(8), mtime_ns: u64_at(16) as i64, tree },
            verified: u64_at(36),
            hash,
            manifest: manifest.to_vec(),
        };
        // Compared in constant time by the library.
        let sealed = blake3::Hash::from(seal(keys, &fixed[..SEAL_AT], blake3::hash(manifest).as_bytes()));
        if sealed != blake3::Hash::from(<[u8; 32]>::try_from(&fixed[SEAL_AT..]).map_err(|_| Unusable::Damaged)?) {
            return Err(Unusable::Damaged);
        }
        if j.verified > j.identity.size {
            return Err(Unusable::Damaged);
        }
        Ok(j)
    }

    /// Reads the journal at `path`: `Ok(None)` when there is none, an
    /// [`Unusable`] when it cannot be used for a source of `identity`.
    pub fn load(path: &Path, identity: Identity, keys: Option<&Keys>) -> Result<Option<Journal>, Unusable> {
        // O_NONBLOCK: a FIFO planted under the name must not hold the open.
        let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => return Err(Unusable::NotOurs),
        };
        let meta = file.metadata().map_err(|_| Unusable::NotOurs)?;
        if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.nlink() != 1 {
            return Err(Unusable::NotOurs);
        }
        let want = FIXED_LEN as u64 + identity.tree.map_or(0, |t| t.manifest_len);
        if meta.len() != want {
            return Err(if meta.len() < FIXED_LEN as u64 { Unusable::Damaged } else { Unusable::SourceChanged });
        }
        let mut bytes = vec![0u8; want as usize];
        file.read_exact_at(&mut bytes, 0).map_err(|_| Unusable::Damaged)?;
        let j = Journal::parse(&bytes, keys)?;
        if j.identity != identity {
            return Err(Unusable::SourceChanged);
        }
        Ok(Some(j))
    }
}

/// Where the journal of the file `path` lies: beside its partial, named
/// from it.
pub fn journal_path(path: &Path) -> PathBuf {
    let partial = crate::io::output::partial_path(path);
    let name = partial.file_name().map(|n| n.len()).unwrap_or_default();
    if name + ".journal".len() > 255 {
        let h = blake3::hash(partial.as_os_str().as_encoded_bytes());
        return path.with_file_name(format!(".xdpblast-{}.journal", crate::report::hex(&h.as_bytes()[..8])));
    }
    let mut p = partial.into_os_string();
    p.push(".journal");
    PathBuf::from(p)
}

/// Where the journal of a tree sent as `name` (the first path the sender
/// gave) into `out` lies.
pub fn tree_journal_path(out: &Path, name: &str) -> PathBuf {
    let h = blake3::hash(name.as_bytes());
    out.join(format!(".xdpblast-tree-{}.journal", crate::report::hex(&h.as_bytes()[..8])))
}

/// The journal a session keeps up to date while it receives.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    file: File,
    keys: Option<Keys>,
    /// What it holds, less the manifest (written once; its hash is sealed).
    journal: Journal,
    manifest_hash: [u8; 32],
}

impl JournalFile {
    /// Starts a journal at `path` anew (an old one is replaced: unlinked,
    /// never followed or reopened), owner-only, holding what is known now.
    pub fn create(path: &Path, journal: Journal, keys: Option<Keys>) -> io::Result<JournalFile> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).doing(|| format!("removing the old journal {}", path.display())),
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .doing(|| format!("creating the journal {}", path.display()))?;
        let manifest_hash = *blake3::hash(&journal.manifest).as_bytes();
        file.write_all_at(&journal.fixed(keys.as_ref(), &manifest_hash), 0)?;
        file.write_all_at(&journal.manifest, FIXED_LEN as u64)?;
        let journal = Journal { manifest: Vec::new(), ..journal };
        Ok(JournalFile { path: path.to_path_buf(), file, keys, journal, manifest_hash })
    }

    /// Records that the stream's first `verified` bytes are in, with
    /// digest `hash`. One small write in place; not synced (see the
    /// module's notes).
    pub fn record(&mut self, verified: u64, hash: [u8; 32]) -> io::Result<()> {
        self.journal.verified = verified;
        self.journal.hash = hash;
        self.file.write_all_at(&self.journal.fixed(self.keys.as_ref(), &self.manifest_hash), 0)
    }

    pub fn verified(&self) -> u64 {
        self.journal.verified
    }

    /// The transfer is done (verified and committed): nothing to resume.
    pub fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(tree: bool) -> Journal {
        let manifest = if tree { b"XBMF manifest bytes".to_vec() } else { Vec::new() };
        let shape = tree.then_some(TreeShape { manifest_len: manifest.len() as u64, entries: 3 });
        Journal {
            identity: Identity { size: 1 << 20, mtime_ns: 1_700_000_000_123_456_789, tree: shape },
            verified: 65536,
            hash: [9; 32],
            manifest,
        }
    }

    #[test]
    fn a_journal_round_trips_and_is_updated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        for tree in [false, true] {
            let j = journal(tree);
            let path = dir.path().join(format!("j{tree}"));
            let manifest = j.manifest.clone();
            let mut f = JournalFile::create(&path, j.clone(), None).unwrap();
            assert_eq!(Journal::load(&path, j.identity, None).unwrap(), Some(j.clone()));
            f.record(1 << 19, [3; 32]).unwrap();
            let again = Journal::load(&path, j.identity, None).unwrap().unwrap();
            assert_eq!((again.verified, again.hash, again.manifest), (1 << 19, [3; 32], manifest));
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            f.remove().unwrap();
            assert_eq!(Journal::load(&path, j.identity, None).unwrap(), None);
        }
    }

    #[test]
    fn another_source_another_key_or_a_torn_journal_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = journal(false);
        let keys = Keys::derive(&[1; 32]);
        JournalFile::create(&path, j.clone(), Some(keys.clone())).unwrap();
        assert_eq!(Journal::load(&path, j.identity, Some(&keys)).unwrap(), Some(j.clone()));
        assert_eq!(Journal::load(&path, j.identity, None), Err(Unusable::Damaged), "written under a key");
        let other = Keys::derive(&[2; 32]);
        assert_eq!(Journal::load(&path, j.identity, Some(&other)), Err(Unusable::Damaged));
        let changed = Identity { mtime_ns: j.identity.mtime_ns + 1, ..j.identity };
        assert_eq!(Journal::load(&path, changed, Some(&keys)), Err(Unusable::SourceChanged));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1; // the verified length
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Journal::load(&path, j.identity, Some(&keys)), Err(Unusable::Damaged));
        std::fs::write(&path, &bytes[..50]).unwrap();
        assert_eq!(Journal::load(&path, j.identity, Some(&keys)), Err(Unusable::Damaged));
    }

    #[test]
    fn a_planted_link_is_not_a_journal() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let j = journal(false);
        JournalFile::create(&target, j.clone(), None).unwrap();
        let path = dir.path().join("j");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert_eq!(Journal::load(&path, j.identity, None), Err(Unusable::NotOurs));
        // Creating one over the link replaces the link, not its target.
        JournalFile::create(&path, j.clone(), None).unwrap();
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(Journal::load(&target, j.identity, None).unwrap(), Some(j));
    }

    /// A FIFO planted as the journal or as the partial is refused at
    /// once; an open without O_NONBLOCK would wait for a writer for ever.
    #[test]
    fn a_planted_fifo_holds_nothing_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let j = journal(false);
        nix::unistd::mkfifo(&journal_path(&path), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(Journal::load(&journal_path(&path), j.identity, None), Err(Unusable::NotOurs));
        let partial = crate::io::output::partial_path(&path);
        nix::unistd::mkfifo(&partial, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let policy = crate::io::output::OutputPolicy::default();
        assert!(crate::io::output::Output::reopen(&path, 1, false, &[0; 16], policy).is_err());
    }

    #[test]
    fn journal_names_stay_within_name_max() {
        let p = journal_path(Path::new("/d/file.bin"));
        assert_eq!(p, Path::new("/d/file.bin.partial.journal"));
        let long = journal_path(&Path::new("/d").join("n".repeat(250)));
        assert!(long.file_name().unwrap().len() < 64, "{}", long.display());
        assert_ne!(tree_journal_path(Path::new("/o"), "a"), tree_journal_path(Path::new("/o"), "b"));
    }
}
