//! The receiver's side of a tree: made beneath `--out`, committed file by
//! file once the stream's digest matched.
//!
//! The sender's manifest is untrusted, and the receiver often runs as root
//! in a directory others can write to, so:
//! - the manifest is checked whole before anything is made
//!   ([`Manifest::parse`]: names, duplicates, parents, `--max-files`);
//! - every path is resolved from a descriptor of the output directory with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no `..`, and no
//!   link followed, whoever planted it and whenever;
//! - directories are made with `mkdirat` under their parent's descriptor;
//!   files fill as `NAME.partial`, created new (`O_CREAT | O_EXCL`),
//!   readable by their owner only, and appear under their names only
//!   after the digest matched, each rename checked to move our own inode;
//! - only regular files and directories are ever made.
//!
//! Until the manifest is in, nothing is known of where the bytes go: the
//! first `held` bytes of the stream (the manifest and, on the datagram
//! path, the rest of its last chunk) are kept in memory, and the data path
//! holds back the rest (the protocol's hold, or a TCP reader's wait).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use tracing::info;

use super::Layout;
use crate::digest::{Digest, Params, StreamDigest};
use crate::io::output::{partial_path, process_umask, OutputPolicy};
use crate::wire::manifest::{EntryKind, Limits, Manifest};
use crate::wire::message::TreeShape;

/// Largest manifest a receiver holds in memory before it is checked.
pub const MAX_MANIFEST_LEN: u64 = 256 << 20;

/// Opens `rel` strictly beneath `root` (see the module's rules).
fn open_beneath(root: &OwnedFd, rel: &str, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    nix::fcntl::openat2(root, rel, how).map_err(|e| {
        let why = match e {
            nix::errno::Errno::ELOOP => "a symbolic link is in the way, and links in the output are never followed",
            nix::errno::Errno::ENOTDIR => "a part of it is a file where the tree has a directory",
            nix::errno::Errno::EXDEV => "it would lead outside the output directory",
            _ => e.desc(),
        };
        io::Error::new(io::Error::from(e).kind(), format!("{rel}: {why}"))
    })
}

/// The partial's path of the file at `rel` (same directory).
fn partial_rel(rel: &str) -> String {
    partial_path(Path::new(rel)).to_string_lossy().into_owned()
}

/// Splits a relative path into its parent (None at the top) and its name.
fn split(rel: &str) -> (Option<&str>, &str) {
    match rel.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, rel),
    }
}

/// What the writers need once the files exist.
struct Made {
    root: OwnedFd,
    layout: Layout,
    /// Per span: the partial's path beneath the root.
    partials: Vec<CString>,
}

/// Writes a tree's stream from the receive threads: bytes at stream
/// offsets, into the held buffer or the files.
pub struct TreeWriter {
    total: u64,
    manifest_len: u64,
    held_len: u64,
    held: Mutex<Vec<u8>>,
    /// Bytes written into the held part (each once: the protocol drops
    /// duplicates, and a TCP stream writes its range once).
    held_filled: std::sync::atomic::AtomicU64,
    made: OnceLock<Made>,
    made_signal: (Mutex<bool>, Condvar),
}

/// How long a TCP stream waits for the files before writing past the
/// manifest: making a million entries takes a while.
const MADE_WAIT: Duration = Duration::from_secs(120);

impl TreeWriter {
    pub fn write_batch(&self, writes: &mut [(u64, &[u8])]) -> io::Result<()> {
        writes.sort_unstable_by_key(|w| w.0);
        let mut past: Vec<(u64, &[u8])> = Vec::with_capacity(writes.len());
        // Once the files exist, only the manifest stays in memory.
        let held_len = if self.made.get().is_some() { self.manifest_len } else { self.held_len };
        for &(off, bytes) in writes.iter() {
            let end = off + bytes.len() as u64;
            if end > self.total {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("write past the end ({end} > {})", self.total),
                ));
            }
            if off < held_len {
                let cut = (held_len.min(end) - off) as usize;
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                let to = (off as usize) + cut;
                if held.len() < to {
                    held.resize(to, 0);
                }
                held[off as usize..to].copy_from_slice(&bytes[..cut]);
                self.held_filled.fetch_add(cut as u64, std::sync::atomic::Ordering::Release);
                if cut < bytes.len() {
                    past.push((held_len, &bytes[cut..]));
                }
            } else {
                past.push((off, bytes));
            }
        }
        if past.is_empty() {
            return Ok(());
        }
        let made = self.wait_made()?;
        write_files(made, &past)
    }

    /// The files, made; waits for them (a TCP stream ahead of the manifest).
    fn wait_made(&self) -> io::Result<&Made> {
        if let Some(m) = self.made.get() {
            return Ok(m);
        }
        let (lock, cv) = &self.made_signal;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = cv.wait_timeout_while(guard, MADE_WAIT, |made| !*made);
        self.made.get().ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "the tree's files were never made"))
    }

    fn held_bytes(&self, range: std::ops::Range<u64>) -> Vec<u8> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let end = (range.end as usize).min(held.len());
        held.get(range.start as usize..end).map(<[u8]>::to_vec).unwrap_or_default()
    }
}

/// Writes sorted stream writes past the held part into their files: one
/// `pwritev` per run that is contiguous within one file.
fn write_files(made: &Made, writes: &[(u64, &[u8])]) -> io::Result<()> {
    let mut open: Option<(usize, File)> = None;
    let mut run: Vec<(u64, &[u8])> = Vec::new();
    let mut run_span = usize::MAX;
    let flush = |open: &Option<(usize, File)>, run: &mut Vec<(u64, &[u8])>| -> io::Result<()> {
        if let (Some((_, f)), Some(&(start, _))) = (open, run.first()) {
            crate::io::output::write_run(f, start, run)?;
        }
        run.clear();
        Ok(())
    };
    for &(off, bytes) in writes {
        let mut used = 0usize;
        for (span, file_off, len) in made.layout.pieces(off, bytes.len() as u64) {
            let piece = &bytes[used..used + len as usize];
            used += len as usize;
            let contiguous = run.last().is_some_and(|&(o, b)| o + b.len() as u64 == file_off);
            if span != run_span || !contiguous || run.len() >= 1024 {
                flush(&open, &mut run)?;
            }
            if open.as_ref().is_none_or(|(s, _)| *s != span) {
                let rel = made.partials[span].to_str().unwrap_or_default();
                open = Some((span, File::from(open_beneath(&made.root, rel, OFlag::O_WRONLY, 0)?)));
            }
            run_span = span;
            run.push((file_off, piece));
        }
        if used != bytes.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a write past the tree's last file"));
        }
    }
    flush(&open, &mut run)
}

/// A file of a verified tree that could not be put in place, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedFile {
    pub path: String,
    pub reason: String,
}

/// Some of a verified tree's files could not be put in place (they stay
/// as their partials); the rest were.
#[derive(Debug, thiserror::Error)]
#[error("{} of the tree's {of} files could not be put in place, the first: {}: {}; they stay as NAME.partial", .failed.len(), .failed.first().map_or("", |f| f.path.as_str()), .failed.first().map_or("", |f| f.reason.as_str()))]
pub struct CommitFailed {
    pub failed: Vec<FailedFile>,
    pub of: usize,
}

/// The files a commit's error names, if it is a [`CommitFailed`].
pub fn failed_files(e: &io::Error) -> Vec<FailedFile> {
    e.get_ref().and_then(|i| i.downcast_ref::<CommitFailed>()).map(|c| c.failed.clone()).unwrap_or_default()
}

/// One file the tree made: where, and which inode, so the commit renames
/// only what we created.
struct MadeFile {
    entry: usize,
    dev_ino: (u64, u64),
}

/// A tree being received beneath `--out`.
pub struct TreeOutput {
    out: PathBuf,
    root: OwnedFd,
    policy: OutputPolicy,
    limits: Limits,
    manifest_len: u64,
    total: u64,
    writer: Arc<TreeWriter>,
    manifest: Option<Manifest>,
    files: Vec<MadeFile>,
    /// Directories this transfer made (entry indexes): they get their modes
    /// and mtimes at the commit.
    dirs_made: Vec<usize>,
    /// The stream's digest (manifest and files): hashed on arrival, or
    /// read back in order (TCP, and a resumed prefix).
    digest: StreamDigest,
    reading: Option<(usize, File)>,
    buf: Vec<u8>,
    /// Making the tree of an interrupted transfer again: partials and
    /// directories it left are taken, not replaced.
    resuming: bool,
}

impl TreeOutput {
    /// Opens `out` (a directory, made if missing) for a tree of `shape`
    /// and `total` stream bytes, holding the first `held_len` in memory
    /// until the manifest is checked. The space for the files is checked
    /// here, so a full disk is a clear error before any data moves.
    pub fn create(
        out: &Path,
        shape: TreeShape,
        total: u64,
        held_len: u64,
        policy: OutputPolicy,
        limits: Limits,
    ) -> io::Result<TreeOutput> {
        if shape.manifest_len > MAX_MANIFEST_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the tree's manifest is over 256 MiB"));
        }
        match std::fs::create_dir(out) {
            Ok(()) => info!(path = %out.display(), "made the output directory"),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("making the output directory {}: {e}", out.display())))
            }
        }
        let root = nix::fcntl::open(out, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("--out {}: {}", out.display(), e.desc())))?;
        let st = nix::sys::statvfs::fstatvfs(&root).map_err(io::Error::from)?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        if total > free {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the tree needs {total} bytes and {} has {free} free", out.display()),
            ));
        }
        let held_len = held_len.clamp(shape.manifest_len, total);
        let writer = Arc::new(TreeWriter {
            total,
            manifest_len: shape.manifest_len,
            held_len,
            held: Mutex::new(Vec::new()),
            held_filled: std::sync::atomic::AtomicU64::new(0),
            made: OnceLock::new(),
            made_signal: (Mutex::new(false), Condvar::new()),
        });
        Ok(TreeOutput {
            out: out.to_path_buf(),
            root,
            policy,
            limits,
            manifest_len: shape.manifest_len,
            total,
            writer,
            manifest: None,
            files: Vec::new(),
            dirs_made: Vec::new(),
            digest: StreamDigest::new(Params { key: None, len: total }),
            reading: None,
            buf: vec![0u8; 1 << 20],
            resuming: false,
        })
    }

    /// Makes the tree of an interrupted transfer again from its journal's
    /// `manifest` (checked as any manifest), taking the partial files it
    /// left (each only if it is a regular file of ours with one link) and
    /// its directories. The caller then hashes the prefix the journal
    /// names and compares.
    pub fn resume(&mut self, manifest: &[u8]) -> io::Result<()> {
        if manifest.len() as u64 != self.manifest_len {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the journal's manifest has another length"));
        }
        self.writer.write_batch(&mut [(0, manifest)])?;
        self.resuming = true;
        self.make()
    }

    /// The digest keyed with `key`; before anything is hashed.
    pub fn with_digest_key(mut self, key: Option<[u8; 32]>) -> TreeOutput {
        self.digest = StreamDigest::new(Params { key, len: self.total });
        self
    }

    /// As [`crate::io::output::Output::hash_on_arrival`].
    pub fn hash_on_arrival(&mut self) -> Arc<Digest> {
        self.digest.on_arrival()
    }

    pub fn writer(&self) -> Arc<TreeWriter> {
        Arc::clone(&self.writer)
    }

    /// Every byte of the held part was written: a TCP receiver's signal
    /// to make the files (its streams past the manifest wait for them).
    pub fn held_complete(&self) -> bool {
        self.writer.held_filled.load(std::sync::atomic::Ordering::Acquire) >= self.writer.held_len
    }

    pub fn is_made(&self) -> bool {
        self.manifest.is_some()
    }

    /// Where each file lies in the stream, for progress lines, once the
    /// tree is made.
    pub fn file_progress(&self) -> Option<super::FileProgress> {
        self.manifest.as_ref().map(|m| super::FileProgress::new(m, self.manifest_len))
    }

    /// Files the manifest lists (0 before it is in).
    pub fn file_count(&self) -> usize {
        self.manifest.as_ref().map_or(0, Manifest::files)
    }

    /// The manifest is in (every write below its end done): checks it,
    /// makes the directories and the partial files, and lets the writers
    /// past the manifest. On an error nothing of the tree's files is made
    /// beyond what the error names.
    pub fn make(&mut self) -> io::Result<()> {
        let bytes = self.writer.held_bytes(0..self.manifest_len);
        let bad = |e: crate::wire::manifest::ManifestError| {
            io::Error::new(io::ErrorKind::InvalidData, format!("refused the tree: {e}"))
        };
        let manifest = Manifest::parse(&bytes, self.limits).map_err(bad)?;
        manifest.check_carried(self.total - self.manifest_len).map_err(bad)?;
        let layout = Layout::new(&manifest, self.manifest_len);
        for (i, e) in manifest.entries.iter().enumerate() {
            match e.kind {
                EntryKind::Dir => self.make_dir(i, &e.path)?,
                EntryKind::File => self.make_file(i, &e.path)?,
            }
        }
        let partials = layout
            .spans
            .iter()
            .map(|s| CString::new(partial_rel(&manifest.entries[s.entry].path)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a NUL in a name"))?;
        let root = self.root.try_clone()?;
        info!(files = manifest.files(), entries = manifest.entries.len(), "tree made; its data may come");
        self.manifest = Some(manifest);
        let made = Made { root, layout, partials };
        // The held bytes past the manifest (the rest of its last chunk).
        let tail = self.writer.held_bytes(self.manifest_len..self.writer.held_len);
        if !tail.is_empty() {
            write_files(&made, &[(self.manifest_len, &tail)])?;
        }
        let _ = self.writer.made.set(made);
        let (lock, cv) = &self.writer.made_signal;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        Ok(())
    }

    fn make_dir(&mut self, entry: usize, rel: &str) -> io::Result<()> {
        let (parent, name) = split(rel);
        let dir = match parent {
            Some(p) => open_beneath(&self.root, p, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?,
            None => self.root.try_clone()?,
        };
        match nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => self.dirs_made.push(entry),
            // One the interrupted transfer made (it has the mode ours are
            // made with until the commit) gets its mode and mtime then too.
            Err(nix::errno::Errno::EEXIST) if self.resuming => {
                let st = nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
                if st.is_ok_and(|st| {
                    st.st_mode & libc::S_IFMT == libc::S_IFDIR
                        && st.st_mode & 0o7777 == 0o700
                        && st.st_uid == nix::unistd::geteuid().as_raw()
                }) {
                    self.dirs_made.push(entry);
                }
            }
            Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(io::Error::new(io::Error::from(e).kind(), format!("making {rel}: {}", e.desc()))),
        }
        // An existing one must be a directory, not a link to one.
        open_beneath(&self.root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY, 0).map(drop)
    }

    fn make_file(&mut self, entry: usize, rel: &str) -> io::Result<()> {
        let (parent, name) = split(rel);
        let dir = match parent {
            Some(p) => open_beneath(&self.root, p, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?,
            None => self.root.try_clone()?,
        };
        let exists = nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        if let Ok(st) = exists {
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{rel} is a directory here, a file in the tree"),
                ));
            }
            if self.policy.no_clobber {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{rel} exists and --no-clobber is set"),
                ));
            }
        }
        let partial = partial_path(Path::new(name));
        if self.resuming {
            if let Some(dev_ino) = left_partial(&dir, &partial) {
                self.files.push(MadeFile { entry, dev_ino });
                return Ok(());
            }
        }
        match nix::unistd::unlinkat(&dir, &partial, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("removing an old {rel}.partial: {}", e.desc()),
                ))
            }
        }
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&dir, &partial, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("creating {rel}.partial: {}", e.desc())))?;
        let st = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
        self.files.push(MadeFile { entry, dev_ino: (st.st_dev, st.st_ino) });
        Ok(())
    }

    /// Hashes the stream, read back (the manifest from memory, the files
    /// from disk), from where it stopped up to `upto`, unless the receive
    /// threads hash it on arrival: a resumed prefix, at the start.
    pub fn hash_read_back(&mut self, upto: u64) -> io::Result<()> {
        let Some(mut fed) = self.digest.fed() else { return Ok(()) };
        let end = upto.min(self.total);
        if fed < self.manifest_len && end > fed {
            let to = end.min(self.manifest_len);
            let bytes = self.writer.held_bytes(fed..to);
            if bytes.len() as u64 != to - fed {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the manifest is shorter than what was written",
                ));
            }
            self.digest.feed(&bytes);
            fed = to;
        }
        while fed < end {
            let Some(made) = self.writer.made.get() else { break };
            let Some(i) = made.layout.span_at(fed) else { break };
            let span = made.layout.spans[i];
            if self.reading.as_ref().is_none_or(|(s, _)| *s != i) {
                let rel = made.partials[i].to_str().unwrap_or_default();
                self.reading = Some((i, File::from(open_beneath(&made.root, rel, OFlag::O_RDONLY, 0)?)));
            }
            let Some((_, f)) = &self.reading else { break };
            let want = (end - fed).min(span.start + span.len - fed).min(self.buf.len() as u64) as usize;
            let at = fed - span.start;
            let n = std::os::unix::fs::FileExt::read_at(f, &mut self.buf[..want], at)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a file of the tree is shorter than what was written",
                ));
            }
            self.digest.feed(&self.buf[..n]);
            fed += n as u64;
        }
        Ok(())
    }

    /// How much of the stream, from its start, the digest has verified.
    pub fn hashed_bytes(&self) -> u64 {
        self.digest.verified()
    }

    /// Bytes the digest read back (held in memory, or from the files).
    pub fn read_back_bytes(&self) -> u64 {
        self.digest.read_back()
    }

    /// As [`crate::io::output::Output::prefix_digest`].
    pub fn prefix_digest(&self) -> (u64, [u8; 32]) {
        self.digest.prefix()
    }

    /// The manifest's bytes, once the tree is made (a journal keeps them).
    pub fn manifest_bytes(&self) -> Option<Vec<u8>> {
        self.is_made().then(|| self.writer.held_bytes(0..self.manifest_len))
    }

    /// The stream's digest, everything read back.
    pub fn digest(&mut self) -> io::Result<[u8; 32]> {
        self.hash_read_back(self.total)?;
        self.digest.finish().map_err(|missing| match self.digest.fed() {
            Some(_) => io::Error::new(io::ErrorKind::UnexpectedEof, "the tree's files were never made"),
            None => io::Error::other(format!("{missing} bytes of the tree's stream were never hashed")),
        })
    }

    /// Gives every file its mode (masked by our umask) and mtime, renames
    /// it from its partial, flushes the file system, then gives the
    /// directories this transfer made theirs. Returns the output directory.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        self.reading = None;
        let Some(manifest) = self.manifest.take() else {
            return Err(io::Error::other("the tree's files were never made"));
        };
        let umask = process_umask();
        // Each file on its own: one that cannot be put in place (a
        // directory took its name, --no-clobber met a new file) stays as
        // its partial and is named; the others are committed.
        let mut failed = Vec::new();
        for f in &self.files {
            let e = &manifest.entries[f.entry];
            if let Err(why) = self.commit_file(f, &e.path, e.mode & !umask, e.mtime_ns) {
                failed.push(FailedFile { path: e.path.clone(), reason: why.to_string() });
            }
        }
        // One flush for the whole tree (syncfs needs a descriptor that is
        // not O_PATH).
        let top = open_beneath(&self.root, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        nix::unistd::syncfs(&top).map_err(io::Error::from)?;
        // Deepest first: setting a directory's mtime before its children's
        // renames would see it changed again.
        for &i in self.dirs_made.iter().rev() {
            let e = &manifest.entries[i];
            let fd = open_beneath(&self.root, &e.path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
            set_attrs(&fd, e.mode & !umask, e.mtime_ns)?;
        }
        if !failed.is_empty() {
            return Err(io::Error::other(CommitFailed { failed, of: self.files.len() }));
        }
        info!(files = self.files.len(), path = %self.out.display(), "tree verified and committed");
        Ok(self.out)
    }

    /// Gives one verified file its mode and mtime and renames it from its
    /// partial, provided the partial is still the file we made.
    fn commit_file(&self, f: &MadeFile, path: &str, mode: u32, mtime_ns: i64) -> io::Result<()> {
        let partial = partial_rel(path);
        let fd = open_beneath(&self.root, &partial, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, 0)?;
        let st = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
        if (st.st_dev, st.st_ino) != f.dev_ino {
            return Err(io::Error::other(format!("{partial} was replaced by someone else; not committing it")));
        }
        set_attrs(&fd, mode, mtime_ns)?;
        let (parent, name) = split(path);
        let dir = match parent {
            Some(p) => open_beneath(&self.root, p, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?,
            None => self.root.try_clone()?,
        };
        let (_, pname) = split(&partial);
        let flags = if self.policy.no_clobber {
            nix::fcntl::RenameFlags::RENAME_NOREPLACE
        } else {
            nix::fcntl::RenameFlags::empty()
        };
        nix::fcntl::renameat2(&dir, pname, &dir, name, flags).map_err(|e2| {
            io::Error::new(io::Error::from(e2).kind(), format!("renaming {partial} to {path}: {}", e2.desc()))
        })
    }

    pub fn out(&self) -> &Path {
        &self.out
    }
}

/// The partial an interrupted transfer left at `partial` in `dir`, if it
/// is one: a regular file of ours with one link (never a link followed).
fn left_partial(dir: &OwnedFd, partial: &Path) -> Option<(u64, u64)> {
    // O_NONBLOCK: a FIFO planted under the name must not hold the open.
    let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = nix::fcntl::openat(dir, partial, flags, Mode::empty()).ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    let ours =
        st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == nix::unistd::geteuid().as_raw() && st.st_nlink == 1;
    ours.then_some((st.st_dev, st.st_ino))
}

fn set_attrs(fd: &impl AsFd, mode: u32, mtime_ns: i64) -> io::Result<()> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode)).map_err(io::Error::from)?;
    let mtime = nix::sys::time::TimeSpec::new(mtime_ns.div_euclid(1_000_000_000), mtime_ns.rem_euclid(1_000_000_000));
    nix::sys::stat::futimens(fd, &nix::sys::time::TimeSpec::UTIME_OMIT, &mtime).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::manifest::Entry;

    const LIMITS: Limits = Limits { max_entries: 10 };

    fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
        Entry { path: path.into(), kind, mode: 0o750, mtime_ns: 1_000_000_000, size }
    }

    /// A tree whose stream holds `m` then `data`, received into `out`:
    /// every byte written, then the manifest checked and the files made.
    fn receive(out: &Path, m: &Manifest, data: &[u8]) -> io::Result<TreeOutput> {
        let bytes = m.encode();
        let shape = TreeShape { manifest_len: bytes.len() as u64, entries: m.entries.len() as u32 };
        let total = (bytes.len() + data.len()) as u64;
        let mut t = TreeOutput::create(out, shape, total, bytes.len() as u64 + 1, OutputPolicy::default(), LIMITS)?;
        let w = t.writer();
        w.write_batch(&mut [(0, &bytes[..])])?;
        t.make()?;
        w.write_batch(&mut [(bytes.len() as u64, data)])?;
        Ok(t)
    }

    #[test]
    fn a_tree_is_made_verified_and_committed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let m = Manifest {
            entries: vec![
                entry("t", EntryKind::Dir, 0),
                entry("t/a", EntryKind::File, 3),
                entry("t/e", EntryKind::File, 0),
                entry("t/b", EntryKind::File, 2),
            ],
        };
        let mut t = receive(&out, &m, b"abcde").unwrap();
        assert!(
            out.join("t/a.partial").exists() && !out.join("t/a").exists(),
            "unverified files keep their partial names"
        );
        let mut stream = m.encode();
        stream.extend_from_slice(b"abcde");
        assert_eq!(t.digest().unwrap(), *blake3::hash(&stream).as_bytes());
        t.commit().unwrap();
        assert_eq!(std::fs::read(out.join("t/a")).unwrap(), b"abc");
        assert_eq!(std::fs::read(out.join("t/b")).unwrap(), b"de");
        assert_eq!(std::fs::read(out.join("t/e")).unwrap(), b"");
        let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
        assert_eq!(mode(&out.join("t/a")) & 0o777, 0o750 & !process_umask());
        assert!(!out.join("t/a.partial").exists());
    }

    /// A file that cannot be put in place (a directory took its name while
    /// it filled) is named with its reason and stays as its partial; the
    /// other files are committed all the same.
    #[test]
    fn a_file_that_cannot_be_committed_is_named_and_the_rest_committed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let m = Manifest {
            entries: vec![
                entry("t", EntryKind::Dir, 0),
                entry("t/a", EntryKind::File, 3),
                entry("t/b", EntryKind::File, 2),
            ],
        };
        let mut t = receive(&out, &m, b"abcde").unwrap();
        t.digest().unwrap();
        std::fs::create_dir(out.join("t/a")).unwrap();
        std::fs::write(out.join("t/a/inside"), b"x").unwrap();
        let e = t.commit().expect_err("t/a cannot be renamed over a directory");
        let failed = failed_files(&e);
        assert_eq!(failed.len(), 1, "{e}");
        assert_eq!(failed[0].path, "t/a");
        assert!(e.to_string().starts_with("1 of the tree's 2 files could not be put in place"), "{e}");
        assert_eq!(std::fs::read(out.join("t/b")).unwrap(), b"de", "the other file is committed");
        assert_eq!(std::fs::read(out.join("t/a.partial")).unwrap(), b"abc", "nothing is lost");
    }

    /// A link planted in the output tree, to a directory outside it, is
    /// never followed: the tree is refused and nothing lands outside.
    #[test]
    fn a_planted_link_in_the_output_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("t")).unwrap();
        let m = Manifest { entries: vec![entry("t", EntryKind::Dir, 0), entry("t/x", EntryKind::File, 1)] };
        let err = receive(&out, &m, b"x").err().expect("refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside the output");
        // A link where a file goes is replaced by the file, not written through.
        std::fs::remove_file(out.join("t")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), out.join("f")).unwrap();
        let m = Manifest { entries: vec![entry("f", EntryKind::File, 1)] };
        let mut t = receive(&out, &m, b"y").unwrap();
        t.digest().unwrap();
        t.commit().unwrap();
        assert!(!outside.join("victim").exists());
        assert_eq!(std::fs::read(out.join("f")).unwrap(), b"y");
    }

    /// A hostile manifest is refused whole, before anything is made.
    #[test]
    fn a_hostile_manifest_makes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        for bad in [
            vec![entry("../x", EntryKind::File, 1)],
            vec![entry("/abs", EntryKind::File, 1)],
            vec![entry("a", EntryKind::File, 0), entry("a", EntryKind::File, 1)],
            vec![entry(&"n".repeat(300), EntryKind::File, 1)],
            (0..11)
                .map(|i| entry(&format!("f{i}"), EntryKind::File, 0))
                .chain([entry("g", EntryKind::File, 1)])
                .collect(),
        ] {
            let m = Manifest { entries: bad };
            let err = receive(&out, &m, b"z").err().expect("refused");
            assert!(err.to_string().starts_with("refused the tree"), "{err}");
            assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing made for {err}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing beside the output");
    }
}
