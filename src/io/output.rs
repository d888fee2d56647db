//! The output file: written at `PATH.partial`, renamed to `PATH` only after
//! its BLAKE3 digest matched the sender's.
//!
//! Space is reserved up front with `fallocate`, so a full disk is a clear error
//! at the start rather than a fault mid-transfer. Payloads are copied into a
//! shared mapping of the file at their offsets.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use tracing::{info, warn};

pub fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

pub struct Output {
    path: PathBuf,
    partial: PathBuf,
    file: File,
    map: Option<MmapMut>,
    len: u64,
}

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
                    warn!("{} cannot reserve space (no fallocate); a full disk would show up mid-transfer", partial.display());
                    file.set_len(len)?;
                } else {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reserving {len} bytes for {}: {e}", partial.display()),
                    ));
                }
            }
        }
        let map = if len > 0 {
            // SAFETY: the file was just created (truncated) by us and is only
            // written through this mapping; its length is fixed for the mapping's
            // life, so no access goes past the end.
            // Prefaulted, so first touches do not fault on the receive path.
            Some(unsafe { memmap2::MmapOptions::new().populate().map_mut(&file) }.map_err(|e| io::Error::new(e.kind(), format!("mapping {}: {e}", partial.display())))?)
        } else {
            None
        };
        info!(path = %partial.display(), bytes = len, "output reserved");
        Ok(Output { path: path.to_path_buf(), partial, file, map, len })
    }

    /// Copies `bytes` to `offset`. Returns false if it does not fit (which the
    /// protocol's checks already rule out).
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let Some(map) = self.map.as_mut() else { return bytes.is_empty() };
        let Ok(start) = usize::try_from(offset) else { return false };
        let Some(end) = start.checked_add(bytes.len()).filter(|e| *e as u64 <= self.len) else { return false };
        map[start..end].copy_from_slice(bytes);
        true
    }

    /// BLAKE3 of the whole file as written.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        if let Some(map) = &self.map {
            h.update(map);
        }
        *h.finalize().as_bytes()
    }

    /// Flushes to disk and renames `PATH.partial` to `PATH`.
    pub fn commit(self) -> io::Result<PathBuf> {
        if let Some(map) = &self.map {
            map.flush()?;
        }
        self.file.sync_data()?;
        std::fs::rename(&self.partial, &self.path)
            .map_err(|e| io::Error::new(e.kind(), format!("renaming {} to {}: {e}", self.partial.display(), self.path.display())))?;
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
    fn writes_land_at_offsets_and_commit_renames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut o = Output::create(&path, 10).unwrap();
        assert!(partial_path(&path).exists());
        assert!(o.write_at(5, b"world"));
        assert!(o.write_at(0, b"hello"));
        assert!(!o.write_at(8, b"xyz"), "past the end");
        assert_eq!(o.digest(), *blake3::hash(b"helloworld").as_bytes());
        o.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"helloworld");
        assert!(!partial_path(&path).exists());
    }

    #[test]
    fn empty_output_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        let o = Output::create(&path, 0).unwrap();
        assert_eq!(o.digest(), *blake3::hash(b"").as_bytes());
        o.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 0);
    }
}
