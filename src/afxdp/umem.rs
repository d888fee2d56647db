//! The UMEM: one anonymous mapping cut into equal frames.
//!
//! It tries 2 MiB huge pages first (fewer TLB misses when the kernel copies out
//! of a large UMEM), then transparent huge pages, and says which it got.

use std::io;
use std::ptr::NonNull;

use memmap2::{Advice, MmapMut, MmapOptions};

use tracing::{debug, info};

const HUGE_PAGE: usize = 2 << 20;

/// How the mapping is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backing {
    HugeTlb,
    /// Regular pages with `MADV_HUGEPAGE` advice.
    Thp,
    /// Regular pages, no advice ([`UmemArea::new_ring`]).
    Regular,
}

impl Backing {
    pub fn name(self) -> &'static str {
        match self {
            Backing::HugeTlb => "hugetlb",
            Backing::Thp => "transparent huge pages",
            Backing::Regular => "regular pages",
        }
    }
}

/// An anonymous, page-aligned region of `frames * frame_size` bytes.
pub struct UmemArea {
    map: MmapMut,
    /// Base of `map`, taken once: receive-side reads build a slice over one
    /// frame from it, never a reference to the whole area, which the kernel
    /// writes into concurrently.
    base: NonNull<u8>,
    frame_size: u32,
    frames: u32,
    backing: Backing,
}

#[derive(Debug, thiserror::Error)]
pub enum UmemError {
    #[error("frame size {0} must be 2048 or 4096")]
    FrameSize(u32),
    #[error("a UMEM of {frames} frames of {frame_size} bytes overflows the address space")]
    TooBig { frames: u64, frame_size: u32 },
    #[error("cannot map a UMEM of {bytes} bytes: {source} (free memory, or the memory cgroup's limit, is too small)")]
    Map { bytes: usize, source: io::Error },
    #[error("the UMEM needs {bytes} bytes, but this host has only {available} bytes available (MemAvailable in /proc/meminfo); send a smaller file or free memory (streaming files larger than memory is not supported yet)")]
    AboveMemory { bytes: u64, available: u64 },
    #[error("the UMEM needs {bytes} bytes of locked memory, above RLIMIT_MEMLOCK ({limit} bytes), and this process lacks CAP_IPC_LOCK; run as root with CAP_IPC_LOCK, raise the limit (`ulimit -l`), or send a smaller file")]
    AboveMemlock { bytes: u64, limit: u64 },
}

/// Checks, before anything is allocated or sent, that a UMEM of `bytes` can
/// exist here: it must fit the memory available, and the kernel charges it to
/// RLIMIT_MEMLOCK unless the process holds CAP_IPC_LOCK.
pub fn check_fits(bytes: u64) -> Result<(), UmemError> {
    if let Some(available) = meminfo_available() {
        if bytes > available {
            return Err(UmemError::AboveMemory { bytes, available });
        }
    }
    if !has_cap_ipc_lock() {
        if let Ok((limit, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK) {
            if limit != libc::RLIM_INFINITY && bytes > limit {
                return Err(UmemError::AboveMemlock { bytes, limit });
            }
        }
    }
    Ok(())
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CAP_IPC_LOCK (bit 14) in the effective set, from /proc/self/status.
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

// SAFETY: `base` points into `map`, which this value owns; moving the value
// to another thread moves the mapping with it.
unsafe impl Send for UmemArea {}
// SAFETY: shared access only reads, through `bytes_at`, whose caller promises
// the bytes are not being written.
unsafe impl Sync for UmemArea {}

impl UmemArea {
    pub fn new(frames: u32, frame_size: u32) -> Result<UmemArea, UmemError> {
        UmemArea::map(frames, frame_size, true)
    }

    /// Like [`UmemArea::new`], without transparent huge pages: for the
    /// transfer's ring, which is small and registered on the critical path.
    /// Registration pins, so faults and zeroes, every page up front. On this
    /// project's VM a 32 MiB ring in fresh 2 MiB pages took up to 68 ms to
    /// register and about 10 ms in 4 KiB pages. The transfer phase measured
    /// the same either way: 6 interleaved runs of 1 GiB at MTU 9000 gave
    /// 8.25 against 8.11 Gb/s end to end, median.
    pub fn new_ring(frames: u32, frame_size: u32) -> Result<UmemArea, UmemError> {
        UmemArea::map(frames, frame_size, false)
    }

    fn map(frames: u32, frame_size: u32, thp: bool) -> Result<UmemArea, UmemError> {
        if frame_size != 2048 && frame_size != 4096 {
            return Err(UmemError::FrameSize(frame_size));
        }
        let bytes = u64::from(frames) * u64::from(frame_size);
        let len = usize::try_from(bytes)
            .ok()
            .filter(|l| *l <= isize::MAX as usize / 2)
            .ok_or(UmemError::TooBig { frames: u64::from(frames), frame_size })?
            .max(frame_size as usize);
        let huge_len = len.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let (map, backing) = match MmapOptions::new().len(huge_len).huge(Some(21)).populate().map_anon() {
            Ok(m) => (m, Backing::HugeTlb),
            Err(e) => {
                let m =
                    MmapOptions::new().len(len).map_anon().map_err(|source| UmemError::Map { bytes: len, source })?;
                if thp {
                    debug!("no 2 MiB huge pages ({e}); using regular pages with THP advice");
                    // Failure only means no transparent huge pages.
                    let _ = m.advise(Advice::HugePage);
                    (m, Backing::Thp)
                } else {
                    debug!("no 2 MiB huge pages ({e}); using regular pages");
                    (m, Backing::Regular)
                }
            }
        };
        info!(bytes = map.len(), frames, frame_size, backing = backing.name(), "UMEM mapped");
        let mut map = map;
        let base = NonNull::new(map.as_mut_ptr())
            .ok_or(UmemError::Map { bytes: len, source: io::Error::other("null mapping") })?;
        Ok(UmemArea { map, base, frame_size, frames, backing })
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
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// UMEM address (offset) of frame `idx`.
    pub fn addr(&self, idx: u32) -> u64 {
        u64::from(idx) * u64::from(self.frame_size)
    }

    /// The whole area, for registering with the kernel.
    pub fn as_nonnull_slice(&mut self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.map.len())
    }

    /// Frame `idx` for writing (preload). `None` past the end.
    pub fn frame_mut(&mut self, idx: u32) -> Option<&mut [u8]> {
        let fs = self.frame_size as usize;
        let start = (idx < self.frames).then_some(idx as usize * fs)?;
        self.map.get_mut(start..start + fs)
    }

    /// The whole area for writing (preload), e.g. to cut into frames with
    /// `chunks_exact_mut(frame_size)`. Only reachable before a socket owns the
    /// area: [`super::xsk::Xsk`] hands out shared references, and received
    /// frames one at a time ([`UmemArea::bytes_at_mut`]).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..]
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
        if end > self.map.len() {
            return None;
        }
        // SAFETY: [start, end) lies inside the mapping (checked above), which
        // lives as long as `self`; the caller guarantees the kernel is not
        // writing these bytes while the slice is alive.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len as usize) })
    }

    /// [`UmemArea::bytes_at`], writable: for a received frame that is ours
    /// until it goes back on the fill ring.
    ///
    /// # Safety
    ///
    /// The kernel must not read or write these bytes while the slice is
    /// alive, and no other slice may overlap them.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_at_mut(&self, addr: u64, len: u32) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len as usize)?;
        if end > self.map.len() {
            return None;
        }
        // SAFETY: inside the mapping, which lives as long as `self`; the
        // caller guarantees that nothing else reads or writes these bytes
        // while the slice is alive.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len as usize) })
    }
}

/// A writer's view of a UMEM's frames, apart from the socket that owns the
/// area, so that a reader (inline or on its own thread) can build frames while
/// the transmit side posts others.
pub struct FrameWriter {
    base: NonNull<u8>,
    frame_size: u32,
    frames: u32,
}

// SAFETY: the view is a pointer into a mapping that `UmemArea::writer`'s
// caller keeps alive for the view's life; which frames may be written is the
// contract of `frames_mut`, not of the thread that holds the view.
unsafe impl Send for FrameWriter {}

impl UmemArea {
    /// A writer's view of this area's frames.
    ///
    /// # Safety
    /// The area (and so its mapping) must outlive the view and every slice
    /// taken from it: drop or join the holder before the area is dropped.
    pub unsafe fn writer(&self) -> FrameWriter {
        FrameWriter { base: self.base, frame_size: self.frame_size, frames: self.frames }
    }
}

impl FrameWriter {
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Frames `first .. first + count` as one slice. `None` past the end.
    ///
    /// # Safety
    /// Nobody else may read or write these frames while the slice lives: the
    /// kernel holds no descriptor for them (every post was completed, none is
    /// on the fill ring), and no other slice of them exists.
    pub unsafe fn frames_mut(&mut self, first: u32, count: u32) -> Option<&mut [u8]> {
        if first.checked_add(count)? > self.frames {
            return None;
        }
        let fs = self.frame_size as usize;
        let start = (first as usize).checked_mul(fs)?;
        let len = (count as usize).checked_mul(fs)?;
        // SAFETY: [start, start + len) lies inside the mapping (the frames
        // are inside the area, checked above), which outlives this view
        // (`writer`'s contract); the caller guarantees exclusive access.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len) })
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

    #[test]
    fn writer_reaches_the_same_frames_and_no_further() {
        let a = UmemArea::new(4, 2048).unwrap();
        // SAFETY: `a` outlives the writer; no kernel is attached, and the
        // slices below are the only ones taken.
        unsafe {
            let mut w = a.writer();
            w.frames_mut(2, 2).unwrap().fill(9);
            assert!(w.frames_mut(3, 2).is_none());
            assert!(w.frames_mut(u32::MAX, 2).is_none());
            assert_eq!(a.bytes_at(a.addr(2), 4096).unwrap(), &[9u8; 4096][..]);
            assert_eq!(a.bytes_at(a.addr(1), 2048).unwrap(), &[0u8; 2048][..]);
        }
    }
}
