//! The UMEM: one anonymous mapping cut into equal frames.
//!
//! It tries 2 MiB huge pages first (fewer TLB misses when the kernel copies out
//! of a large UMEM), then transparent huge pages, and says which it got.

use std::io;
use std::ptr::NonNull;

use tracing::{debug, info};

const HUGE_PAGE: usize = 2 << 20;

/// How the mapping is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backing {
    HugeTlb,
    /// Regular pages with `MADV_HUGEPAGE` advice.
    Thp,
}

/// An anonymous, page-aligned region of `frames * frame_size` bytes.
pub struct UmemArea {
    ptr: NonNull<u8>,
    len: usize,
    frame_size: u32,
    frames: u32,
    backing: Backing,
}

// SAFETY: the area is plain memory owned by this value; access is governed by
// `&`/`&mut` borrows of it, and the kernel only touches frames we hand it.
unsafe impl Send for UmemArea {}
// SAFETY: shared references only read.
unsafe impl Sync for UmemArea {}

#[derive(Debug, thiserror::Error)]
pub enum UmemError {
    #[error("frame size {0} must be 2048 or 4096")]
    FrameSize(u32),
    #[error("a UMEM of {frames} frames of {frame_size} bytes overflows the address space")]
    TooBig { frames: u64, frame_size: u32 },
    #[error("cannot map a UMEM of {bytes} bytes: {source} (free memory, or the memory cgroup's limit, is too small)")]
    Map { bytes: usize, source: io::Error },
}

impl UmemArea {
    pub fn new(frames: u32, frame_size: u32) -> Result<UmemArea, UmemError> {
        if frame_size != 2048 && frame_size != 4096 {
            return Err(UmemError::FrameSize(frame_size));
        }
        let bytes = u64::from(frames) * u64::from(frame_size);
        let len = usize::try_from(bytes)
            .ok()
            .filter(|l| *l <= isize::MAX as usize)
            .ok_or(UmemError::TooBig { frames: u64::from(frames), frame_size })?
            .max(frame_size as usize);
        let huge_len = len.div_ceil(HUGE_PAGE) * HUGE_PAGE;

        // SAFETY: an anonymous private mapping with no address hint; the result
        // is checked against MAP_FAILED before use.
        let huge = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                huge_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        let (ptr, len, backing) = if huge != libc::MAP_FAILED {
            (huge, huge_len, Backing::HugeTlb)
        } else {
            debug!("no 2 MiB huge pages ({}); using regular pages with THP advice", io::Error::last_os_error());
            // SAFETY: as above, without MAP_HUGETLB.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(UmemError::Map { bytes: len, source: io::Error::last_os_error() });
            }
            // SAFETY: advice on a mapping we own; failure only means no THP.
            unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
            (p, len, Backing::Thp)
        };
        info!(bytes = len, frames, frame_size, ?backing, "UMEM mapped");
        Ok(UmemArea {
            // mmap never returns null on success.
            ptr: NonNull::new(ptr.cast()).ok_or(UmemError::Map { bytes: len, source: io::Error::other("null mapping") })?,
            len,
            frame_size,
            frames,
            backing,
        })
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }
    pub fn frames(&self) -> u32 {
        self.frames
    }
    pub fn backing(&self) -> Backing {
        self.backing
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// UMEM address (offset) of frame `idx`.
    pub fn addr(&self, idx: u32) -> u64 {
        u64::from(idx) * u64::from(self.frame_size)
    }

    /// The whole area, for registering with the kernel.
    pub fn as_nonnull_slice(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    /// Frame `idx` for writing (preload). `None` past the end.
    pub fn frame_mut(&mut self, idx: u32) -> Option<&mut [u8]> {
        if idx >= self.frames {
            return None;
        }
        let fs = self.frame_size as usize;
        // SAFETY: idx < frames, so [idx*fs, idx*fs+fs) lies inside the mapping of
        // `len >= frames*fs` bytes; `&mut self` makes the borrow exclusive.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(idx as usize * fs), fs) })
    }

    /// The whole area for writing (preload), e.g. to cut into frames with
    /// `chunks_exact_mut(frame_size)`.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes long and owned by us; `&mut self`
        // makes the borrow exclusive (no kernel ring refers to it before the
        // socket takes ownership of the area).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Bytes at UMEM address `addr`, `len` long, if inside the area. Used on
    /// receive, for descriptors the kernel handed back.
    ///
    /// # Safety
    /// The caller must own the frame at `addr` (the kernel returned it on the RX
    /// ring and it has not been given back on the fill ring), so the kernel is
    /// not writing it concurrently.
    pub unsafe fn bytes_at(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len as usize)?;
        if end > self.len {
            return None;
        }
        // SAFETY: bounds checked just above; exclusivity is the caller's promise.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), len as usize) })
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mmap returned; every socket that
        // registered it is dropped before this (see field order in the owners).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_disjoint_and_bounded() {
        let mut a = UmemArea::new(8, 2048).unwrap();
        assert!(a.len() >= 8 * 2048);
        a.frame_mut(0).unwrap().fill(1);
        a.frame_mut(7).unwrap().fill(7);
        assert!(a.frame_mut(8).is_none());
        // SAFETY: no kernel is attached to this area in the test.
        unsafe {
            assert_eq!(a.bytes_at(0, 2048).unwrap(), &[1u8; 2048][..]);
            assert_eq!(a.bytes_at(a.addr(7), 2048).unwrap(), &[7u8; 2048][..]);
            assert!(a.bytes_at(a.len() as u64 - 1, 2).is_none());
        }
        assert!(UmemArea::new(1, 1000).is_err());
    }
}
