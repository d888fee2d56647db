//! What the sender reads: one file, or a tree's stream (its manifest, then
//! its files in turn, each opened when its bytes are first needed, so a
//! tree of any size holds one descriptor).
//!
//! A tree's file found changed (length or mtime) against the scan, when it
//! is opened or once it was read, fails the transfer before the digest is
//! sent, as a single file's change does.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::ops::Range;
use std::path::PathBuf;

use super::scan::{Scanned, Stamp};
use super::Layout;
use crate::wire::message::TreeShape;

/// The sender's input: one file, or a tree's stream.
pub enum Input {
    File(File),
    Tree(TreeInput),
}

impl Input {
    /// Reads stream bytes at `offset` into `iov`; one `preadv` (a tree's
    /// read stops at the end of a file). Returns how many.
    pub fn read_vectored_at(&mut self, iov: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        match self {
            Input::File(f) => {
                crate::os::syscount::count(1);
                Ok(nix::sys::uio::preadv(&*f, iov, offset as libc::off_t)?)
            }
            Input::Tree(t) => t.read_vectored_at(iov, offset),
        }
    }

    /// The digest of the stream's first `len` bytes with `hasher`: what a
    /// receiver's resume offer is checked against.
    pub fn hash_prefix(&mut self, len: u64, mut hasher: blake3::Hasher) -> io::Result<[u8; 32]> {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < len {
            let want = (len - at).min(buf.len() as u64) as usize;
            let n = self.read_vectored_at(&mut [IoSliceMut::new(&mut buf[..want])], at)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the input is shorter than it was"));
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(*hasher.finalize().as_bytes())
    }

    /// The one file, if the input is one.
    pub fn file(&self) -> Option<&File> {
        match self {
            Input::File(f) => Some(f),
            Input::Tree(_) => None,
        }
    }

    /// Once everything was read: a tree checks its last file against the
    /// scan (a single file's stamp is the caller's to check).
    pub fn check_end(&mut self) -> io::Result<()> {
        match self {
            Input::File(_) => Ok(()),
            Input::Tree(t) => t.check_open(),
        }
    }
}

pub struct TreeInput {
    manifest: Vec<u8>,
    layout: Layout,
    /// Per span: the local path and what the scan saw of it.
    files: Vec<(PathBuf, Stamp)>,
    entries: u32,
    /// The span whose file is open.
    open: Option<(usize, File)>,
}

/// A part of the stream for a TCP send: bytes held in memory, or a range
/// of an open file.
pub enum Piece<'a> {
    Bytes(&'a [u8]),
    File(&'a File, Range<u64>),
}

impl TreeInput {
    pub fn new(scanned: &Scanned) -> io::Result<TreeInput> {
        let manifest = scanned.manifest.encode();
        let layout = Layout::new(&scanned.manifest, manifest.len() as u64);
        let files = layout.spans.iter().map(|s| (scanned.sources[s.entry].clone(), scanned.stamps[s.entry])).collect();
        let entries = u32::try_from(scanned.manifest.entries.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "more than 4 billion entries"))?;
        Ok(TreeInput { manifest, layout, files, entries, open: None })
    }

    pub fn shape(&self) -> TreeShape {
        TreeShape { manifest_len: self.layout.manifest_len, entries: self.entries }
    }

    pub fn len(&self) -> u64 {
        self.layout.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file of span `i`, opened (and the one before checked) if not yet.
    fn file(&mut self, i: usize) -> io::Result<&File> {
        if self.open.as_ref().is_none_or(|(o, _)| *o != i) {
            self.check_open()?;
            let (path, stamp) = &self.files[i];
            let f =
                File::open(path).map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
            if Stamp::of(&f.metadata()?) != *stamp {
                return Err(changed(path));
            }
            self.open = Some((i, f));
        }
        match &self.open {
            Some((_, f)) => Ok(f),
            None => Err(io::Error::other("no file open")),
        }
    }

    /// Checks the open file (read by now) against the scan, and closes it.
    pub fn check_open(&mut self) -> io::Result<()> {
        if let Some((i, f)) = self.open.take() {
            let (path, stamp) = &self.files[i];
            if Stamp::of(&f.metadata()?) != *stamp {
                return Err(changed(path));
            }
        }
        Ok(())
    }

    /// Reads stream bytes at `offset` into `iov`, from one file (or the
    /// manifest) per call, like one `preadv`; returns how many.
    pub fn read_vectored_at(&mut self, iov: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        let mlen = self.layout.manifest_len;
        if offset < mlen {
            let mut src = &self.manifest[offset as usize..];
            let mut n = 0;
            for s in iov.iter_mut() {
                let take = s.len().min(src.len());
                s[..take].copy_from_slice(&src[..take]);
                src = &src[take..];
                n += take;
                if src.is_empty() {
                    break;
                }
            }
            return Ok(n);
        }
        let Some(i) = self.layout.span_at(offset) else { return Ok(0) };
        let span = self.layout.spans[i];
        let mut left = (span.start + span.len - offset) as usize;
        let mut limited: Vec<IoSliceMut<'_>> = Vec::with_capacity(iov.len());
        for s in iov.iter_mut() {
            if left == 0 {
                break;
            }
            let take = s.len().min(left);
            limited.push(IoSliceMut::new(&mut s[..take]));
            left -= take;
        }
        let file = self.file(i)?;
        crate::os::syscount::count(1);
        let at = (offset - span.start) as libc::off_t;
        let n = nix::sys::uio::preadv(file, &mut limited, at).map_err(io::Error::from)?;
        if n == 0 {
            return Err(changed(&self.files[i].0));
        }
        Ok(n)
    }

    /// Calls `f` with the stream's bytes in `range`, in order: the
    /// manifest's from memory, each file's as an open file and a range.
    pub fn for_each_piece(
        &mut self,
        range: Range<u64>,
        f: &mut dyn FnMut(Piece<'_>, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mlen = self.layout.manifest_len;
        let mut at = range.start;
        if at < mlen {
            let end = range.end.min(mlen);
            f(Piece::Bytes(&self.manifest[at as usize..end as usize]), at)?;
            at = end;
        }
        let pieces: Vec<_> = self.layout.pieces(at, range.end.saturating_sub(at)).collect();
        for (i, off, len) in pieces {
            let start = self.layout.spans[i].start + off;
            let file = self.file(i)?;
            f(Piece::File(file, off..off + len), start)?;
        }
        Ok(())
    }
}

/// A tree's file changed under the sender (length or mtime against the
/// walk's): the transfer fails, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{} changed while the tree was being sent (written, truncated or replaced); start again", .path.display())]
pub struct FileChanged {
    pub path: PathBuf,
}

fn changed(path: &std::path::Path) -> io::Error {
    io::Error::other(FileChanged { path: path.to_path_buf() })
}

/// The file an error names as changed under the sender, anywhere in its
/// chain of causes.
pub fn changed_file(e: &anyhow::Error) -> Option<&std::path::Path> {
    e.chain().find_map(|c| {
        let io = c.downcast_ref::<io::Error>()?;
        io.get_ref()?.downcast_ref::<FileChanged>().map(|f| f.path.as_path())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_the_manifest_then_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a"), b"hello").unwrap();
        std::fs::write(root.join("b"), b"").unwrap();
        std::fs::write(root.join("c"), b"world!").unwrap();
        let scanned = super::super::scan::scan(std::slice::from_ref(&root)).unwrap();
        let mut input = TreeInput::new(&scanned).unwrap();
        let mlen = input.shape().manifest_len as usize;
        assert_eq!(input.len() as usize, mlen + 11);
        let mut all = vec![0u8; input.len() as usize];
        let mut got = 0;
        // Odd-sized slices, so reads cross both the manifest's end and a file's.
        let total = all.len();
        while got < total {
            let (a, b) = all[got..].split_at_mut(((total - got) / 2).max(1));
            let mut iov = [IoSliceMut::new(a), IoSliceMut::new(b)];
            got += input.read_vectored_at(&mut iov, got as u64).unwrap();
        }
        assert_eq!(&all[..mlen], scanned.manifest.encode());
        assert_eq!(&all[mlen..], b"helloworld!");
        let mut pieces = Vec::new();
        input
            .for_each_piece(mlen as u64 - 2..input.len(), &mut |p, at| {
                pieces.push(match p {
                    Piece::Bytes(b) => (at, b.len() as u64),
                    Piece::File(_, r) => (at, r.end - r.start),
                });
                Ok(())
            })
            .unwrap();
        assert_eq!(pieces, [(mlen as u64 - 2, 2), (mlen as u64, 5), (mlen as u64 + 5, 6)]);
        // A file that changed once read fails the check that follows it.
        std::fs::write(root.join("c"), b"WORLD!!").unwrap();
        assert!(input.check_open().unwrap_err().to_string().contains("changed"));
        // And one changed before it is opened fails the read.
        std::fs::write(root.join("a"), b"HELLO!").unwrap();
        let mut buf = [0u8; 5];
        let r = input.read_vectored_at(&mut [IoSliceMut::new(&mut buf)], mlen as u64);
        let e = anyhow::Error::new(r.unwrap_err()).context("reading the tree");
        assert!(format!("{e:#}").contains("changed"));
        // The JSON names it, however deep in the error.
        assert_eq!(changed_file(&e), Some(root.join("a").as_path()));
    }
}
