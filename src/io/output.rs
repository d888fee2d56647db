//! The output file: written at `PATH.partial`, renamed to `PATH` only after
//! its BLAKE3 digest matched the sender's.
//!
//! The receiver often runs as root and writes where others can write too (a
//! 1777 directory), so nothing it does follows a link or reuses a file it did
//! not make:
//! - `PATH.partial` is created new (`O_CREAT|O_EXCL|O_NOFOLLOW`); a leftover
//!   of that name is unlinked first (unlink never follows a link), and if
//!   another one appears in between, creation fails instead of opening it;
//! - the commit renames our own inode (checked by device and inode) over
//!   `PATH`. A rename replaces `PATH` itself, never a file a link at `PATH`
//!   points to, as rsync does; with `--no-clobber` an existing `PATH` is
//!   refused up front and at the rename (`RENAME_NOREPLACE`);
//! - a session whose input file is `PATH` or `PATH.partial` on this host (the
//!   sender names it by [`source_id`]) is refused before anything is touched.
//!
//! - `PATH.partial` is readable by its owner only while it fills; the commit
//!   gives it the sender's permission bits masked by our umask, as cp does
//!   (or the umask's default where the sender did not say), and the
//!   sender's mtime. A private file never becomes world-readable.
//!
//! Space is reserved up front with `fallocate`, so a full disk is a clear error
//! at the start. Each receive batch is written with one `pwritev` per run of
//! contiguous chunks, straight from the receive buffers (the UMEM frames): no
//! intermediate copy, no page faults, and I/O errors come back as errors.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::digest::{Digest, Params, Scratch, StreamDigest, BLOCK};
use crate::os::sys::{self, Doing};
use crate::wire::message::{FileAttrs, SourceId};

/// Names a file on this host: its device and inode, hashed with the boot id
/// so that the same numbers on another machine (or after a reboot) differ.
pub fn source_id(meta: &std::fs::Metadata) -> SourceId {
    let boot = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(b"xdpblast source id v1");
    h.update(&boot);
    h.update(&meta.dev().to_be_bytes());
    h.update(&meta.ino().to_be_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

/// What the receiver may do to an existing `PATH`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputPolicy {
    /// Refuse an existing `PATH` instead of replacing it.
    pub no_clobber: bool,
}

/// Checks, before the receiver says it is ready, that `path` can be written
/// at all: its directory exists, it is not a directory, and (`no_clobber`) it
/// does not exist.
pub fn check_target(path: &Path, policy: OutputPolicy) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    writable_dir(parent)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!("--out {} is a directory; name the file to write, e.g. {}/FILE", path.display(), path.display()),
        )),
        Ok(_) if policy.no_clobber => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and --no-clobber is set", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Checks `--out` before the receiver says ready: a directory (the file
/// goes inside it, under the sender's name, as with cp and scp), or a file
/// path [`check_target`] accepts.
pub fn check_out(out: &Path, policy: OutputPolicy) -> io::Result<()> {
    // A trailing slash names a directory, as it does for cp: one that does
    // not exist is an error, not a file to create inside its parent.
    let names_dir = out.as_os_str().as_encoded_bytes().ends_with(b"/");
    if names_dir || std::fs::metadata(out).is_ok_and(|m| m.is_dir()) {
        return writable_dir(out);
    }
    check_target(out, policy)
}

/// The directory a file will be created in: it exists, is a directory, and
/// this process may create files in it (`access(2)` also answers a
/// read-only filesystem for root).
fn writable_dir(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory, so no output can be created in it", dir.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the output directory {} does not exist", dir.display()),
            ))
        }
        Err(e) => return Err(e).doing(|| format!("the output directory {}", dir.display())),
    }
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK).map_err(|e| {
        io::Error::new(io::Error::from(e).kind(), format!("cannot create files in {}: {}", dir.display(), e.desc()))
    })
}

/// The file a session writes: `out` itself, or `out/NAME` when `out` is a
/// directory, NAME being the sender's file name (already checked to be one
/// safe path component, [`crate::wire::safe_file_name`]).
pub fn output_path(out: &Path, name: Option<&str>) -> io::Result<PathBuf> {
    if !std::fs::metadata(out).is_ok_and(|m| m.is_dir()) {
        return Ok(out.to_path_buf());
    }
    match name {
        Some(n) => Ok(out.join(n)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--out {} is a directory and the sender's file name cannot be created in it (empty, a path, a leading '-', or control characters: the sender's warning names which); name the file, e.g. {}/FILE",
                out.display(),
                out.display()
            ),
        )),
    }
}

/// Refuses when `path` (or the link it is) names the file being sent.
fn refuse_own_input(path: &Path, source: &SourceId) -> io::Result<()> {
    let stats = [std::fs::metadata(path), std::fs::symlink_metadata(path)];
    if stats.iter().flatten().any(|m| source_id(m) == *source) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is the sender's own input file; refusing to write over it", path.display()),
        ));
    }
    Ok(())
}

/// Where `path` fills before its commit: `PATH.partial`, or for a name too
/// long to take the suffix within NAME_MAX (255 bytes), a short hidden name
/// in the same directory, made from the name so that every part of the
/// receiver finds the same one.
pub fn partial_path(path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    const SUFFIX: &str = ".partial";
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    if name.len() + SUFFIX.len() > NAME_MAX {
        let h = blake3::hash(name);
        return path.with_file_name(format!(".xdpblast-{}{SUFFIX}", crate::report::hex(&h.as_bytes()[..8])));
    }
    let mut p = path.as_os_str().to_owned();
    p.push(SUFFIX);
    PathBuf::from(p)
}

/// The longest file name Linux file systems take, in bytes.
const NAME_MAX: usize = 255;

/// Most iovecs one `pwritev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// Writes into an [`Output`] from another thread: `pwritev` at offsets,
/// so writers on several threads need no lock.
#[derive(Debug)]
pub struct OutputWriter {
    file: File,
    len: u64,
    sparse: bool,
}

impl OutputWriter {
    /// As [`Output::write_batch`].
    pub fn write_batch(&self, writes: &mut [(u64, &[u8])]) -> io::Result<()> {
        write_runs(&self.file, self.len, self.sparse, writes)
    }
}

/// Sorts `writes` and issues one `pwritev` per contiguous run, refusing
/// any past `len`. `sparse`: writes of nothing but zeros are left out, so
/// a hole stays a hole (the file's length is set, unwritten bytes read 0).
fn write_runs(file: &File, len: u64, sparse: bool, writes: &mut [(u64, &[u8])]) -> io::Result<()> {
    writes.sort_unstable_by_key(|w| w.0);
    let zeros = |w: &(u64, &[u8])| sparse && w.1.iter().all(|&b| b == 0);
    let mut i = 0;
    while i < writes.len() {
        let start = writes[i].0;
        let mut end = start;
        let mut j = i;
        while j < writes.len() && writes[j].0 == end && j - i < IOV_MAX && !zeros(&writes[j]) {
            end += writes[j].1.len() as u64;
            j += 1;
        }
        if j == i {
            // A block of zeros: nothing to write, but it must still fit.
            if start + writes[i].1.len() as u64 > len {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("write past the end (> {len})")));
            }
            i += 1;
            continue;
        }
        if end > len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("write past the end ({end} > {len})")));
        }
        write_run(file, start, &writes[i..j])?;
        i = j;
    }
    Ok(())
}

/// Writes `run` (at most [`IOV_MAX`] pieces, back to back from `offset`)
/// with `pwritev`; its iovecs live on the stack.
pub(crate) fn write_run(file: &File, mut offset: u64, run: &[(u64, &[u8])]) -> io::Result<()> {
    debug_assert!(run.len() <= IOV_MAX, "a run of {} pieces", run.len());
    let mut slices: arrayvec::ArrayVec<IoSlice<'_>, IOV_MAX> =
        run.iter().take(IOV_MAX).map(|w| IoSlice::new(w.1)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let off = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        crate::os::syscount::count(1);
        let n = nix::sys::uio::pwritev(file, rest, off).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

pub struct Output {
    path: PathBuf,
    partial: PathBuf,
    policy: OutputPolicy,
    file: File,
    len: u64,
    /// Blocks of zeros are not written ([`write_runs`]).
    sparse: bool,
    /// The file's digest: hashed on arrival by the receive threads, or
    /// read back in order as it fills (TCP, and a resumed prefix).
    digest: StreamDigest,
    /// Writeback has been started for `0..synced`.
    synced: u64,
    /// For an output larger than half the machine's memory: pages below this
    /// were written back and dropped from the page cache (see
    /// `start_writeback`); `None` keeps them cached.
    dropped: Option<u64>,
    buf: Vec<u8>,
    /// The sender's mode and mtime, applied at the commit.
    attrs: Option<FileAttrs>,
}

/// This process's umask, from /proc (reading it with umask(2) would change
/// it for a moment under the other threads); the usual 022 where /proc does
/// not say.
pub(crate) fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string())))
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022)
}

/// What a sender tells the receiver of its input besides the bytes.
pub fn file_attrs(meta: &std::fs::Metadata) -> FileAttrs {
    let allocated = meta.blocks().saturating_mul(512);
    FileAttrs {
        mode: meta.mode() & 0o777,
        mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
        data_bytes: (allocated < meta.len()).then_some(allocated),
    }
}

/// Reserves a new partial's space: all of it with `fallocate`, or for a
/// sparse file its length and a check that its data fits.
fn reserve(file: &File, len: u64, sparse: Option<u64>, partial: &Path) -> io::Result<()> {
    if let Some(data) = sparse {
        let st = nix::sys::statvfs::fstatvfs(file).map_err(io::Error::from)?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        if data > free {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC))
                .doing(|| format!("reserving the sparse file's {data} bytes of data for {}", partial.display()));
        }
        file.set_len(len).doing(|| format!("sizing {}", partial.display()))?;
    } else if len > 0 {
        let off_len = libc::off_t::try_from(len).map_err(|_| io::Error::other("file too large"))?;
        match sys::fallocate(file, off_len) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                warn!(
                    "{} cannot reserve space (no fallocate); a full disk would show up mid-transfer",
                    partial.display()
                );
                file.set_len(len)?;
            }
            Err(e) => return Err(e.err).doing(|| format!("reserving {len} bytes for {}", partial.display())),
        }
    }
    Ok(())
}

/// Start writeback in steps of this many bytes.
const WRITEBACK_STEP: u64 = 32 << 20;

impl Output {
    /// Creates `PATH.partial` anew for a file of `len` bytes sent from
    /// `source` (see the module's rules) and reserves its space. `sparse`:
    /// the file has holes and this much data ([`FileAttrs::data_bytes`]):
    /// the holes are kept, and only the data must fit.
    pub fn create(
        path: &Path,
        len: u64,
        sparse: Option<u64>,
        source: &SourceId,
        policy: OutputPolicy,
    ) -> io::Result<Output> {
        let partial = partial_path(path);
        refuse_own_input(path, source)?;
        refuse_own_input(&partial, source)?;
        check_target(path, policy)?;
        match std::fs::remove_file(&partial) {
            Ok(()) => info!(path = %partial.display(), "replaced a partial file left by an earlier transfer"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).doing(|| format!("removing the old {}", partial.display())),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&partial)
            .doing(|| format!("creating {}", partial.display()))?;
        // A file that cannot hold the data is no partial worth keeping.
        if let Err(e) = reserve(&file, len, sparse, &partial) {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        info!(path = %partial.display(), bytes = len, "output reserved");
        Ok(Output::over(path, partial, file, len, sparse.is_some(), policy))
    }

    fn over(path: &Path, partial: PathBuf, file: File, len: u64, sparse: bool, policy: OutputPolicy) -> Output {
        Output {
            path: path.to_path_buf(),
            partial,
            policy,
            file,
            len,
            sparse,
            digest: StreamDigest::new(Params { key: None, len }),
            synced: 0,
            dropped: crate::os::process::total_memory_bytes().filter(|m| len > m / 2).map(|_| 0),
            buf: Vec::new(),
            attrs: None,
        }
    }

    /// Opens the `PATH.partial` an interrupted transfer of the same `len`
    /// bytes left, to resume it: only a regular file of this user's, with
    /// one link and that length (what [`Output::create`] made), is taken;
    /// anything else is an error and the caller starts over.
    pub fn reopen(path: &Path, len: u64, sparse: bool, source: &SourceId, policy: OutputPolicy) -> io::Result<Output> {
        let partial = partial_path(path);
        refuse_own_input(path, source)?;
        refuse_own_input(&partial, source)?;
        check_target(path, policy)?;
        // O_NONBLOCK: a FIFO planted under the name must not hold the open
        // (it is refused below, as anything but a regular file is).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&partial)
            .doing(|| format!("opening {}", partial.display()))?;
        let m = file.metadata()?;
        if !m.is_file() || m.uid() != nix::unistd::geteuid().as_raw() || m.nlink() != 1 || m.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not the partial file an earlier transfer left", partial.display()),
            ));
        }
        Ok(Output::over(path, partial, file, len, sparse, policy))
    }

    /// The digest of what was hashed so far, and how far that is: what a
    /// journal records and a resume offers.
    pub fn prefix_digest(&self) -> (u64, [u8; 32]) {
        self.digest.prefix()
    }

    /// Hashes again from the start: the bytes hashed so far were not the
    /// sender's (a resume it refused) and will be written again.
    pub fn restart_digest(&mut self) {
        self.digest.restart();
        self.synced = 0;
    }

    /// From now on the receive threads hash what they write, with the
    /// digest returned; nothing is read back.
    pub fn hash_on_arrival(&mut self) -> Arc<Digest> {
        self.digest.on_arrival()
    }

    /// Gives the committed file the sender's mode (masked by our umask) and
    /// mtime; `None` leaves the mode a new file gets here and today's mtime.
    pub fn with_attrs(mut self, attrs: Option<FileAttrs>) -> Output {
        self.attrs = attrs;
        self
    }

    /// The mode and mtime the file keeps, set on our descriptor before the
    /// rename, so what appears under `PATH` has them from the first moment.
    fn apply_attrs(&self) -> io::Result<()> {
        let mode = self.attrs.map_or(0o666, |a| a.mode & 0o777) & !process_umask();
        let fd = &self.file;
        nix::sys::stat::fchmod(fd, nix::sys::stat::Mode::from_bits_truncate(mode))
            .map_err(io::Error::from)
            .doing(|| "setting the mode of the output".into())?;
        if let Some(a) = self.attrs {
            let mtime = nix::sys::time::TimeSpec::new(
                a.mtime_ns.div_euclid(1_000_000_000),
                a.mtime_ns.rem_euclid(1_000_000_000),
            );
            nix::sys::stat::futimens(fd, &nix::sys::time::TimeSpec::UTIME_OMIT, &mtime)
                .map_err(io::Error::from)
                .doing(|| "setting the modification time of the output".into())?;
        }
        Ok(())
    }

    /// Computes the digest keyed with `key` (a pre-shared key's digest
    /// key) instead of plain BLAKE3. Call before anything is hashed.
    pub fn with_digest_key(mut self, key: Option<[u8; 32]>) -> Output {
        self.digest = StreamDigest::new(Params { key, len: self.len });
        self
    }

    /// Writes each `(offset, bytes)`; sorts them and issues one `pwritev` per
    /// contiguous run.
    pub fn write_batch(&mut self, writes: &mut [(u64, &[u8])]) -> io::Result<()> {
        write_runs(&self.file, self.len, self.sparse, writes)
    }

    /// A handle that writes into the output from another thread (each
    /// receive queue's), while this one hashes and commits.
    pub fn writer(&self) -> io::Result<OutputWriter> {
        Ok(OutputWriter { file: self.file.try_clone()?, len: self.len, sparse: self.sparse })
    }

    /// Hashes the file, read back, from where it stopped up to `upto`,
    /// unless the receive threads hash it on arrival: a resumed prefix, at
    /// the start.
    pub fn hash_read_back(&mut self, upto: u64) -> io::Result<()> {
        if let Some(fed) = self.digest.fed() {
            let mut end = upto.min(self.len);
            // Read back in whole digest blocks (one syscall per MiB), so a
            // journal's prefix ends where one did; the last partial block
            // waits for the end.
            if end < self.len {
                end = fed + (end.saturating_sub(fed) / BLOCK) * BLOCK;
            }
            // Only a session that reads back needs the buffer.
            self.buf.resize(BLOCK as usize, 0);
            let mut at = fed;
            while at < end {
                let want = (end - at).min(self.buf.len() as u64) as usize;
                self.read_back(at, want)?;
                self.digest.feed(&self.buf[..want]);
                at += want as u64;
            }
        }
        Ok(())
    }

    /// Whether [`Output::write_back`] has a step to start.
    pub fn writeback_due(&self) -> bool {
        self.digest.verified() >= self.synced + WRITEBACK_STEP
    }

    /// Reads `len` bytes of the output at `at` into the buffer's start.
    fn read_back(&mut self, at: u64, len: usize) -> io::Result<()> {
        let mut got = 0;
        while got < len {
            crate::os::syscount::count(1);
            let n = std::os::unix::fs::FileExt::read_at(&self.file, &mut self.buf[got..len], at + got as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the output is shorter than what was written",
                ));
            }
            got += n;
        }
        Ok(())
    }

    /// Starts writeback of what is verified, in steps of [`WRITEBACK_STEP`],
    /// so the final sync has little left.
    pub fn write_back(&mut self) {
        let verified = self.digest.verified();
        if verified >= self.synced + WRITEBACK_STEP {
            let (off, len) = (self.synced, verified - self.synced);
            if sys::start_writeback(&self.file, off, len).is_ok() {
                // What the previous step started is on disk by now (or
                // nearly): an output that cannot stay cached drops it, so its
                // dirty pages do not crowd out everything else.
                if let Some(d) = self.dropped.as_mut() {
                    let _ = nix::fcntl::posix_fadvise(
                        &self.file,
                        *d as libc::off_t,
                        (off - *d) as libc::off_t,
                        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                    *d = off;
                }
                self.synced = verified;
            }
        }
    }

    /// BLAKE3 of the whole file: what was hashed on arrival, or read back
    /// from the file (the part hashed ahead of time is not read twice).
    pub fn digest(&mut self) -> io::Result<[u8; 32]> {
        self.hash_read_back(self.len)?;
        self.digest
            .finish()
            .map_err(|missing| io::Error::other(format!("{missing} bytes of the output were never hashed")))
    }

    /// Flushes to disk and renames `PATH.partial` to `PATH`, provided
    /// `PATH.partial` is still the file we created.
    pub fn commit(self) -> io::Result<PathBuf> {
        self.apply_attrs()?;
        self.file.sync_data()?;
        let ours = self.file.metadata()?;
        let there = std::fs::symlink_metadata(&self.partial)?;
        if (there.dev(), there.ino()) != (ours.dev(), ours.ino()) {
            return Err(io::Error::other(format!(
                "{} was replaced by someone else during the transfer; not committing it",
                self.partial.display()
            )));
        }
        let renamed = if self.policy.no_clobber {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &self.partial,
                nix::fcntl::AT_FDCWD,
                &self.path,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(io::Error::from)
        } else {
            std::fs::rename(&self.partial, &self.path)
        };
        renamed.doing(|| format!("renaming {} to {}", self.partial.display(), self.path.display()))?;
        Ok(self.path)
    }

    /// Removes `PATH.partial`, provided it is still the file we created, and
    /// with it the space reserved for it: for a session that ended before
    /// any data arrived, whose empty partial would only hold disk (a
    /// stranger's Hello can open a session) and claim something was kept.
    pub fn discard(self) -> io::Result<()> {
        let ours = self.file.metadata()?;
        let there = std::fs::symlink_metadata(&self.partial)?;
        if (there.dev(), there.ino()) != (ours.dev(), ours.ino()) {
            return Err(io::Error::other(format!("{} is no longer ours; left alone", self.partial.display())));
        }
        std::fs::remove_file(&self.partial)
    }

    /// How much of the file, from its start, the digest has verified.
    pub fn hashed_bytes(&self) -> u64 {
        self.digest.verified()
    }

    /// Bytes the digest read back from the file.
    pub fn read_back_bytes(&self) -> u64 {
        self.digest.read_back()
    }

    pub fn partial(&self) -> &Path {
        &self.partial
    }
}

/// Where a session's bytes land: one file, or a tree beneath a directory
/// ([`crate::tree::output`]). The receive loops hash, verify and commit
/// either the same way.
pub enum Destination {
    File(Output),
    Tree(crate::tree::output::TreeOutput),
}

/// Where a receive thread lands what it received: written into the
/// output, then hashed into the digest while the bytes are in cache.
pub struct Landing {
    writer: DestinationWriter,
    digest: Arc<Digest>,
}

impl Landing {
    /// Writes `writes` (sorting them) and hashes them.
    ///
    /// A [`Scratch::holding`] may hold their hashing back: such bytes are
    /// written but not yet in the digest until [`Landing::release`].
    pub fn land(&self, writes: &mut [(u64, &[u8])], scratch: &mut Scratch) -> io::Result<()> {
        self.writer.write_batch(writes)?;
        self.digest.absorb(writes, scratch);
        Ok(())
    }

    /// Hashes what `scratch` holds of what was landed here.
    pub fn release(&self, scratch: &mut Scratch) {
        self.digest.release(scratch);
    }
}

/// Writes into a [`Destination`] from the receive threads.
pub enum DestinationWriter {
    File(OutputWriter),
    Tree(std::sync::Arc<crate::tree::output::TreeWriter>),
}

impl DestinationWriter {
    pub fn write_batch(&self, writes: &mut [(u64, &[u8])]) -> io::Result<()> {
        match self {
            DestinationWriter::File(w) => w.write_batch(writes),
            DestinationWriter::Tree(w) => w.write_batch(writes),
        }
    }
}

impl Destination {
    fn writer(&self) -> io::Result<DestinationWriter> {
        Ok(match self {
            Destination::File(o) => DestinationWriter::File(o.writer()?),
            Destination::Tree(t) => DestinationWriter::Tree(t.writer()),
        })
    }

    /// Hashes what an interrupted transfer left, read back up to `upto`.
    pub fn hash_read_back(&mut self, upto: u64) -> io::Result<()> {
        match self {
            Destination::File(o) => o.hash_read_back(upto),
            Destination::Tree(t) => t.hash_read_back(upto),
        }
    }

    /// Whether [`Destination::write_back`] has a step to start (a tree's
    /// files are synced at the commit).
    pub fn writeback_due(&self) -> bool {
        match self {
            Destination::File(o) => o.writeback_due(),
            Destination::Tree(_) => false,
        }
    }

    pub fn write_back(&mut self) {
        if let Destination::File(o) = self {
            o.write_back();
        }
    }

    /// Where the receive threads land the data: from now on they hash
    /// what they write, and nothing more is read back.
    pub fn landing(&mut self) -> io::Result<Landing> {
        let writer = self.writer()?;
        let digest = match self {
            Destination::File(o) => o.hash_on_arrival(),
            Destination::Tree(t) => t.hash_on_arrival(),
        };
        Ok(Landing { writer, digest })
    }

    pub fn hashed_bytes(&self) -> u64 {
        match self {
            Destination::File(o) => o.hashed_bytes(),
            Destination::Tree(t) => t.hashed_bytes(),
        }
    }

    /// Bytes read back from the output to hash them: a resumed prefix, or
    /// (over TCP) the whole stream.
    pub fn read_back_bytes(&self) -> u64 {
        match self {
            Destination::File(o) => o.read_back_bytes(),
            Destination::Tree(t) => t.read_back_bytes(),
        }
    }

    pub fn digest(&mut self) -> io::Result<[u8; 32]> {
        match self {
            Destination::File(o) => o.digest(),
            Destination::Tree(t) => t.digest(),
        }
    }

    /// Puts what was verified under its name; returns the path.
    pub fn commit(self) -> io::Result<PathBuf> {
        match self {
            Destination::File(o) => o.commit(),
            Destination::Tree(t) => t.commit(),
        }
    }

    /// Where the unverified bytes are: the partial file, or the tree's
    /// directory (its files end in `.partial` until the commit).
    pub fn partial(&self) -> &Path {
        match self {
            Destination::File(o) => o.partial(),
            Destination::Tree(t) => t.out(),
        }
    }

    pub fn prefix_digest(&self) -> (u64, [u8; 32]) {
        match self {
            Destination::File(o) => o.prefix_digest(),
            Destination::Tree(t) => t.prefix_digest(),
        }
    }

    /// Removes a partial that holds nothing. A tree made nothing before its
    /// manifest arrived, and keeps what it made after.
    pub fn discard(self) -> io::Result<()> {
        match self {
            Destination::File(o) => o.discard(),
            Destination::Tree(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_at_offsets_and_commit_renames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut o = Output::create(&path, 12, None, &[0; 16], OutputPolicy::default()).unwrap();
        assert!(partial_path(&path).exists());
        // Out of order, with a gap filled by a later batch.
        o.write_batch(&mut [(5, &b"wor"[..]), (0, &b"hello"[..]), (8, &b"ld"[..])]).unwrap();
        o.write_batch(&mut [(10, &b"!!"[..])]).unwrap();
        assert!(o.write_batch(&mut [(11, &b"xy"[..])]).is_err(), "past the end");
        o.hash_read_back(5).unwrap(); // part of the prefix
        assert_eq!(o.digest().unwrap(), *blake3::hash(b"helloworld!!").as_bytes());
        o.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"helloworld!!");
        assert!(!partial_path(&path).exists());
    }

    /// Trust round 2, row 5: a sparse file's holes are kept; only its data
    /// is written, and only its data must fit.
    #[test]
    fn a_sparse_output_keeps_its_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let len = 8 << 20;
        let mut o = Output::create(&path, len, Some(4096), &[0; 16], OutputPolicy::default()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        let data = vec![7u8; 4096];
        for at in (0..len).step_by(zeros.len()) {
            o.write_batch(&mut [(at, &zeros[..])]).unwrap();
        }
        o.write_batch(&mut [(len - 4096, &data[..]), (len - 8192, &zeros[..4096])]).unwrap();
        assert!(o.write_batch(&mut [(len, &zeros[..1])]).is_err(), "past the end, zeros or not");
        o.commit().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), len);
        assert!(meta.blocks() * 512 <= 64 << 10, "{} bytes allocated", meta.blocks() * 512);
        let got = std::fs::read(&path).unwrap();
        assert!(got[..got.len() - 4096].iter().all(|&b| b == 0) && got[got.len() - 4096..] == data[..]);
        // More data than the disk holds is refused up front.
        let huge = Output::create(&dir.path().join("huge"), 1 << 50, Some(1 << 50), &[0; 16], OutputPolicy::default());
        assert_eq!(huge.err().and_then(|e| crate::os::sys::errno(&e)), Some(libc::ENOSPC));
        assert!(!partial_path(&dir.path().join("huge")).exists(), "no partial is left");
    }

    /// Trust round 2, row 11. Before: a 254-character name failed with
    /// `….partial: File name too long`.
    #[test]
    fn a_name_too_long_for_the_suffix_fills_under_a_short_hidden_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n".repeat(254));
        let partial = partial_path(&path);
        let hidden = partial.file_name().and_then(|n| n.to_str()).unwrap();
        assert!(hidden.starts_with(".xdpblast-") && hidden.ends_with(".partial") && hidden.len() < 40, "{hidden}");
        assert_eq!(partial.parent(), Some(dir.path()));
        assert_eq!(partial_path(&path), partial, "every part of the receiver finds the same name");
        assert_ne!(partial_path(&dir.path().join("m".repeat(254))), partial);
        let mut o = Output::create(&path, 2, None, &[0; 16], OutputPolicy::default()).unwrap();
        assert!(partial.exists());
        o.write_batch(&mut [(0, &b"ok"[..])]).unwrap();
        o.digest().unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ok");
        assert_eq!(partial_path(&dir.path().join("n".repeat(247))).file_name().unwrap().len(), 255);
    }

    #[test]
    fn empty_output_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        let mut o = Output::create(&path, 0, None, &[0; 16], OutputPolicy::default()).unwrap();
        assert_eq!(o.digest().unwrap(), *blake3::hash(b"").as_bytes());
        o.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_planted_partial_link_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, partial_path(&path)).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let mut o = Output::create(&path, 3, None, &[0; 16], OutputPolicy::default()).unwrap();
        o.write_batch(&mut [(0, &b"new"[..])]).unwrap();
        o.digest().unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the link's target is untouched");
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "PATH is our file now");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn the_senders_own_input_is_refused_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("data.bin");
        std::fs::write(&input, b"input").unwrap();
        let source = source_id(&std::fs::metadata(&input).unwrap());
        let e = Output::create(&input, 5, None, &source, OutputPolicy::default()).err().expect("refused");
        assert!(e.to_string().contains("own input"), "{e}");
        assert_eq!(std::fs::read(&input).unwrap(), b"input");
        // The input is --out's partial.
        let staged = dir.path().join("out.bin.partial");
        std::fs::rename(&input, &staged).unwrap();
        let out = dir.path().join("out.bin");
        let e = Output::create(&out, 5, None, &source, OutputPolicy::default()).err().expect("refused");
        assert!(e.to_string().contains("own input"), "{e}");
        assert_eq!(std::fs::read(&staged).unwrap(), b"input");
        assert!(!out.exists());
        // Another file is not mistaken for it.
        assert!(Output::create(&dir.path().join("other"), 5, None, &source, OutputPolicy::default()).is_ok());
    }

    #[test]
    fn no_clobber_refuses_an_existing_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        let policy = OutputPolicy { no_clobber: true };
        assert_eq!(check_target(&path, policy).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(Output::create(&path, 1, None, &[0; 16], policy).is_err());
        assert_eq!(check_target(dir.path(), OutputPolicy::default()).unwrap_err().kind(), io::ErrorKind::IsADirectory);
        // Appearing during the transfer: the rename refuses too.
        let other = dir.path().join("new.bin");
        let mut o = Output::create(&other, 1, None, &[0; 16], policy).unwrap();
        o.write_batch(&mut [(0, &b"x"[..])]).unwrap();
        std::fs::write(&other, b"raced").unwrap();
        assert!(o.commit().is_err());
        assert_eq!(std::fs::read(&other).unwrap(), b"raced");
    }
}
