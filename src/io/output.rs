//! The output file: written at `PATH.partial`, renamed to `PATH` only after
//! its BLAKE3 digest matched the sender's.
//!
//! Space is reserved up front with `fallocate`, so a full disk is a clear error
//! at the start. Each receive batch is written with one `pwritev` per run of
//! contiguous chunks, straight from the receive buffers (the UMEM frames): no
//! intermediate copy, no page faults, and I/O errors come back as errors.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

pub fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Most iovecs one `pwritev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

pub struct Output {
    path: PathBuf,
    partial: PathBuf,
    file: File,
    len: u64,
    /// BLAKE3 over `0..hashed`, read back from the file as it fills in order.
    hasher: blake3::Hasher,
    hashed: u64,
    /// Writeback has been started for `0..synced`.
    synced: u64,
    buf: Vec<u8>,
}

/// Start writeback in steps of this many bytes.
const WRITEBACK_STEP: u64 = 32 << 20;

impl Output {
    pub fn create(path: &Path, len: u64) -> io::Result<Output> {
        let partial = partial_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", partial.display())))?;
        if len > 0 {
            let off_len = libc::off_t::try_from(len).map_err(|_| io::Error::other("file too large"))?;
            // SAFETY: fallocate on a file descriptor we own, mode 0, in-range values.
            let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    warn!(
                        "{} cannot reserve space (no fallocate); a full disk would show up mid-transfer",
                        partial.display()
                    );
                    file.set_len(len)?;
                } else {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reserving {len} bytes for {}: {e}", partial.display()),
                    ));
                }
            }
        }
        info!(path = %partial.display(), bytes = len, "output reserved");
        Ok(Output {
            path: path.to_path_buf(),
            partial,
            file,
            len,
            hasher: blake3::Hasher::new(),
            hashed: 0,
            synced: 0,
            buf: vec![0u8; 1 << 20],
        })
    }

    /// Writes each `(offset, bytes)`; sorts them and issues one `pwritev` per
    /// contiguous run.
    pub fn write_batch(&mut self, writes: &mut [(u64, &[u8])]) -> io::Result<()> {
        writes.sort_unstable_by_key(|w| w.0);
        let mut i = 0;
        while i < writes.len() {
            let start = writes[i].0;
            let mut end = start;
            let mut j = i;
            while j < writes.len() && writes[j].0 == end && j - i < IOV_MAX {
                end += writes[j].1.len() as u64;
                j += 1;
            }
            if end > self.len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("write past the end ({end} > {})", self.len),
                ));
            }
            self.write_run(start, &writes[i..j])?;
            i = j;
        }
        Ok(())
    }

    fn write_run(&self, mut offset: u64, run: &[(u64, &[u8])]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = run.iter().map(|w| IoSlice::new(w.1)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let off = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
            crate::syscount::count(1);
            let n = nix::sys::uio::pwritev(&self.file, rest, off).map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
            }
            offset += n as u64;
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    /// Hashes the file, read back, from where it stopped up to `upto` (bytes
    /// known to be final), at most `budget` bytes this call; and starts
    /// writeback of what it has hashed, so the final sync has little left.
    pub fn hash_ahead(&mut self, upto: u64, budget: u64) -> io::Result<()> {
        let mut end = upto.min(self.len).min(self.hashed.saturating_add(budget));
        // Read back in whole buffers (one syscall per MiB); the last partial
        // buffer waits for the end, when `digest` takes it.
        if end < self.len {
            let step = self.buf.len() as u64;
            end = self.hashed + (end.saturating_sub(self.hashed) / step) * step;
        }
        while self.hashed < end {
            let want = (end - self.hashed).min(self.buf.len() as u64) as usize;
            crate::syscount::count(1);
            let n = std::os::unix::fs::FileExt::read_at(&self.file, &mut self.buf[..want], self.hashed)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the output is shorter than what was written",
                ));
            }
            self.hasher.update(&self.buf[..n]);
            self.hashed += n as u64;
        }
        if self.hashed >= self.synced + WRITEBACK_STEP {
            let (off, len) = (self.synced, self.hashed - self.synced);
            crate::syscount::count(1);
            // SAFETY: sync_file_range on our own descriptor with in-range
            // offsets; it only starts writeback and touches no memory of ours.
            let r = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    off as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if r == 0 {
                self.synced = self.hashed;
            }
        }
        Ok(())
    }

    /// BLAKE3 of the whole file, read back from the file (the part hashed
    /// ahead of time is not read twice).
    pub fn digest(&mut self) -> io::Result<[u8; 32]> {
        self.hash_ahead(self.len, u64::MAX)?;
        Ok(*self.hasher.finalize().as_bytes())
    }

    /// Flushes to disk and renames `PATH.partial` to `PATH`.
    pub fn commit(self) -> io::Result<PathBuf> {
        self.file.sync_data()?;
        std::fs::rename(&self.partial, &self.path).map_err(|e| {
            io::Error::new(e.kind(), format!("renaming {} to {}: {e}", self.partial.display(), self.path.display()))
        })?;
        Ok(self.path)
    }

    pub fn partial(&self) -> &Path {
        &self.partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_at_offsets_and_commit_renames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut o = Output::create(&path, 12).unwrap();
        assert!(partial_path(&path).exists());
        // Out of order, with a gap filled by a later batch.
        o.write_batch(&mut [(5, &b"wor"[..]), (0, &b"hello"[..]), (8, &b"ld"[..])]).unwrap();
        o.write_batch(&mut [(10, &b"!!"[..])]).unwrap();
        assert!(o.write_batch(&mut [(11, &b"xy"[..])]).is_err(), "past the end");
        o.hash_ahead(5, 3).unwrap(); // part of the prefix, in a small step
        assert_eq!(o.digest().unwrap(), *blake3::hash(b"helloworld!!").as_bytes());
        o.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"helloworld!!");
        assert!(!partial_path(&path).exists());
    }

    #[test]
    fn empty_output_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        let mut o = Output::create(&path, 0).unwrap();
        assert_eq!(o.digest().unwrap(), *blake3::hash(b"").as_bytes());
        o.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 0);
    }
}
