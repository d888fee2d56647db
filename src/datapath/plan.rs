//! The frame plan: how a file is cut into chunks and frames, and where they
//! sit in the UMEM. Both ways of filling frames use it: [`super::preload`]
//! (the whole file at once, `send --raw`) and [`super::readahead`]
//! (a bounded ring of frames, transfers).
//!
//! Frame layout in the UMEM, with `s` data slots of `k` UMEM frames each
//! (`k` = [`FramePlan::chain`]):
//!
//! ```text
//! frame 0 .. s*k-1   data slots: chunk c lives in slot c % s, frames
//!                    (c % s)*k .. (c % s)*k + k-1, built contiguously:
//!                    [Eth | IPv4 | UDP | xdpblast header | payload]
//! frame s*k          Meta (first packet of the transfer)
//! frame s*k+1        Meta (last packet of the first pass)
//! frame s*k+2 ..     spare frames that keep the fill ring populated
//! ```
//!
//! A packet longer than one UMEM frame (jumbo frames, XDP multi-buffer) is
//! still built in one piece: its slot's frames are adjacent in memory, so
//! headers, checksums and the payload's `preadv` do not know about the cut.
//! Only posting does: the packet goes out as a chain of descriptors, one per
//! UMEM frame, all but the last flagged `XDP_PKT_CONTD`
//! ([`super::tx`]). This is the design for both copy-mode and
//! zero-copy drivers; UMEM frames larger than a page (a hugepage-backed
//! UMEM) would avoid chains, but kernel 6.18 refused 16 KiB frames with
//! EINVAL on this kind of host, and zero-copy drivers cap them anyway.

use std::io;

use crate::afxdp::umem::UmemError;
use crate::proto::chunk_count;
use crate::wire::frame::{IpVersion, ETH_LEN};
use crate::wire::message::{SessionInfo, HEADER_LEN, MIN_CHUNK_SIZE};

/// Spare frames for the sender's fill ring.
pub const FILL_SPARE: u32 = 64;

/// How a file is cut into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePlan {
    /// IPv4 or IPv6: how many header bytes come before each chunk.
    pub ip: IpVersion,
    /// IP packet size of a full data frame (what the MTU limits).
    pub packet_size: u32,
    /// File bytes per data frame.
    pub chunk_size: u32,
    /// Bytes of the tag behind each payload (with a key; 0 without).
    pub tag_len: u32,
    pub file_size: u64,
    /// Bytes of one UMEM frame: the most one descriptor carries.
    pub frame_size: u32,
    /// UMEM frames per data slot: 1, or the length of the descriptor chain
    /// a packet above one frame needs (at most [`MAX_CHAIN`]).
    pub chain: u32,
    pub n_chunks: u64,
    /// Data slots in the UMEM ring (all chunks when the file fits).
    pub slots: u32,
    /// UMEM frames: data slots × chain + Meta + spare frames.
    pub total_frames: u32,
}

/// Most descriptors one packet may span: the kernel's copy path builds an
/// skb of a head and at most `MAX_SKB_FRAGS - 1` (16) fragments, which holds
/// a 65,535-byte veth packet in 4096-byte frames. Zero-copy drivers may allow
/// fewer; the kernel drops a longer chain as invalid.
pub const MAX_CHAIN: u32 = 17;

/// Fewest data slots a UMEM must have to make progress at a useful rate.
pub const MIN_SLOTS: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--packet-size {size} is above the MTU of {iface} ({mtu}); the peer would drop these frames silently. Use --packet-size {mtu} or less, or raise the MTU")]
    AboveMtu { size: u32, mtu: u32, iface: String },
    #[error("--packet-size {0} is too small: {ip} + UDP + xdpblast headers need {min} bytes, and each packet carries at least {MIN_CHUNK_SIZE} bytes of the file", ip = .1.name(), min = .1.l3_overhead() + HEADER_LEN)]
    TooSmall(u32, IpVersion),
    #[error("a {frame} byte frame needs more than {MAX_CHAIN} UMEM frames of {frame_size} bytes; use a larger --frame-size or a smaller --packet-size")]
    FrameTooBig { frame: u32, frame_size: u32 },
    #[error("--frame-size {0} must be 2048 or 4096")]
    FrameSize(u32),
    #[error("--umem {umem} bytes holds too few {frame_size}-byte frames; give at least {need} bytes")]
    UmemTooSmall { umem: u64, frame_size: u32, need: u64 },
    #[error("raw mode keeps the whole file in the UMEM: it needs {need} bytes, above --umem {umem}")]
    FileAboveUmem { need: u64, umem: u64 },
}

impl FramePlan {
    /// Cuts a file of `file_size` bytes into `ip` packets of `packet_size`
    /// (at most `mtu`) within a UMEM of at most `umem_bytes`.
    pub fn new(
        file_size: u64,
        packet_size: u32,
        mtu: u32,
        iface: &str,
        umem_bytes: u64,
        ip: IpVersion,
    ) -> Result<FramePlan, PlanError> {
        if packet_size > mtu {
            return Err(PlanError::AboveMtu { size: packet_size, mtu, iface: iface.into() });
        }
        let frame_size = if ETH_LEN as u32 + packet_size <= 2048 { 2048 } else { 4096 };
        let mut plan = FramePlan {
            ip,
            packet_size,
            chunk_size: 0,
            tag_len: 0,
            file_size,
            frame_size,
            chain: 1,
            n_chunks: 0,
            slots: 0,
            total_frames: 0,
        };
        plan.cut()?;
        plan.chain = plan.chain_for(frame_size)?;
        plan.fit(umem_bytes)?;
        Ok(plan)
    }

    /// The same plan with a tag of `tag_len` bytes behind every payload
    /// (with a key): the chunks shrink so that packets keep their size.
    pub fn with_tags(mut self, tag_len: u32, umem_bytes: u64) -> Result<FramePlan, PlanError> {
        self.tag_len = tag_len;
        self.cut()?;
        self.fit(umem_bytes)?;
        Ok(self)
    }

    /// Sets the chunk size (what is left of a packet after the headers and
    /// the tag) and the chunk count.
    fn cut(&mut self) -> Result<(), PlanError> {
        let overhead = (self.ip.l3_overhead() + HEADER_LEN) as u32 + self.tag_len;
        match self.packet_size.checked_sub(overhead) {
            Some(c) if c >= MIN_CHUNK_SIZE => self.chunk_size = c,
            _ => return Err(PlanError::TooSmall(self.packet_size, self.ip)),
        }
        self.n_chunks = chunk_count(self.file_size, self.chunk_size);
        Ok(())
    }

    /// UMEM frames of `frame_size` bytes that one full data frame spans.
    fn chain_for(&self, frame_size: u32) -> Result<u32, PlanError> {
        let frame = ETH_LEN as u32 + self.packet_size;
        let chain = frame.div_ceil(frame_size);
        if chain > MAX_CHAIN {
            return Err(PlanError::FrameTooBig { frame, frame_size });
        }
        Ok(chain)
    }

    /// What the bind choice needs to know of the packets: their size, and
    /// how many UMEM frames each spans.
    pub fn packet_shape(&self) -> crate::afxdp::zerocopy::PacketShape {
        crate::afxdp::zerocopy::PacketShape {
            packet: self.packet_size,
            chain: self.chain,
            frame_size: self.frame_size,
            link_header: ETH_LEN as u32,
        }
    }

    /// Whether data frames span several UMEM frames (XDP multi-buffer).
    pub fn multi_buffer(&self) -> bool {
        self.chain > 1
    }

    /// Bytes of one data slot: `chain` adjacent UMEM frames.
    pub fn slot_bytes(&self) -> u32 {
        self.frame_size * self.chain
    }

    /// UMEM address of the slot that carries chunk `chunk`.
    pub fn data_addr(&self, chunk: u64) -> u64 {
        u64::from(self.slot_of(chunk)) * u64::from(self.slot_bytes())
    }

    /// UMEM address of the Meta frame.
    pub fn meta_addr(&self, last: bool) -> u64 {
        u64::from(self.meta_frame(last)) * u64::from(self.frame_size)
    }

    /// The data slot a descriptor at UMEM address `addr` belongs to (any
    /// frame of its chain), or `None` for Meta and spare frames.
    pub fn slot_at(&self, addr: u64) -> Option<u32> {
        let slot = addr / u64::from(self.slot_bytes());
        (slot < u64::from(self.slots)).then_some(slot as u32)
    }

    /// Descriptors a frame of `len` bytes takes.
    pub fn descs_for(&self, len: u32) -> u32 {
        len.div_ceil(self.frame_size).max(1)
    }

    /// Sizes the data ring for a UMEM of at most `umem_bytes`: as many slots
    /// as fit, but no more than the file has chunks.
    fn fit(&mut self, umem_bytes: u64) -> Result<(), PlanError> {
        let fixed = 2 + FILL_SPARE;
        let fit = umem_bytes.saturating_sub(u64::from(fixed) * u64::from(self.frame_size));
        let most = (u32::MAX - fixed) / self.chain;
        let slots = (fit / u64::from(self.slot_bytes())).min(u64::from(most));
        if slots < u64::from(MIN_SLOTS) && slots < self.n_chunks {
            let need = u64::from(MIN_SLOTS) * u64::from(self.slot_bytes()) + u64::from(fixed * self.frame_size);
            return Err(PlanError::UmemTooSmall { umem: umem_bytes, frame_size: self.slot_bytes(), need });
        }
        self.slots = slots.min(self.n_chunks.max(1)) as u32;
        self.total_frames = self.slots * self.chain + fixed;
        Ok(())
    }

    /// The same plan in UMEM frames of `frame_size` bytes (2048 or 4096)
    /// instead of the default; a packet longer than one frame is chained.
    pub fn with_frame_size(mut self, frame_size: u32, umem_bytes: u64) -> Result<FramePlan, PlanError> {
        if !(frame_size == 2048 || frame_size == 4096) {
            return Err(PlanError::FrameSize(frame_size));
        }
        self.chain = self.chain_for(frame_size)?;
        self.frame_size = frame_size;
        self.fit(umem_bytes)?;
        Ok(self)
    }

    /// Bytes of UMEM this plan maps.
    pub fn umem_bytes(&self) -> u64 {
        u64::from(self.total_frames) * u64::from(self.frame_size)
    }

    /// Whether every chunk has a slot of its own (the whole file fits).
    pub fn holds_whole_file(&self) -> bool {
        u64::from(self.slots) >= self.n_chunks
    }

    /// The UMEM frame that carries chunk `chunk`.
    pub fn slot_of(&self, chunk: u64) -> u32 {
        (chunk % u64::from(self.slots)) as u32
    }

    /// The UMEM frame of the first (or the last) Meta.
    pub fn meta_frame(&self, last: bool) -> u32 {
        self.slots * self.chain + u32::from(last)
    }

    pub fn spare_frames(&self) -> std::ops::Range<u32> {
        self.slots * self.chain + 2..self.total_frames
    }

    /// Where the xdpblast header starts in a data frame.
    pub fn header_offset(&self) -> usize {
        self.ip.udp_payload_offset()
    }

    /// Where the file's bytes start in a data frame.
    pub fn payload_offset(&self) -> usize {
        self.header_offset() + HEADER_LEN
    }

    /// Frame length (bytes on the wire, without FCS) of data chunk `idx`.
    pub fn data_len(&self, info: &SessionInfo, idx: u64) -> u32 {
        (self.payload_offset() + info.chunk_len(idx).unwrap_or(0)) as u32 + self.tag_len
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    #[error(transparent)]
    Umem(#[from] UmemError),
    #[error("reading the file: {0}")]
    Io(#[from] io::Error),
    #[error("the file changed while it was being read (size {before} -> {after}, or modified)")]
    Changed { before: u64, after: u64 },
    #[error("building a frame: {0}")]
    Frame(#[from] crate::wire::frame::FrameError),
    #[error("frame {0} is outside the UMEM plan")]
    Layout(u32),
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// Feeds the run's payloads to BLAKE3 in file order. They are gathered
/// into one contiguous buffer first: BLAKE3 hashes many 1 KiB chunks at
/// once with SIMD only when they are contiguous, and fed one
/// payload at a time (1,400-odd bytes) it compresses serially, which
/// measured as 38 % of the sender's CPU. The gather is one copy out of
/// frames still in cache. Each payload's UDP checksum sum (`sums[i]`) is
/// taken from its copy there, in L1, instead of from the frame later;
/// `None` where the payloads are encrypted after hashing, so the wire
/// carries other bytes.
pub fn hash_payloads(
    hasher: &mut blake3::Hasher,
    gather: &mut Vec<u8>,
    mut sums: Option<&mut Vec<u32>>,
    frames: &[&mut [u8]],
    lens: &[usize],
    at: usize,
) {
    gather.clear();
    if let Some(s) = sums.as_deref_mut() {
        s.clear();
    }
    for (f, &len) in frames.iter().zip(lens) {
        let start = gather.len();
        gather.extend_from_slice(&f[at..at + len]);
        if let Some(s) = sums.as_deref_mut() {
            s.push(crate::wire::checksum::sum(0, &gather[start..]));
        }
    }
    hasher.update(gather);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_shrink_the_chunks_not_the_packets() {
        let plain = FramePlan::new(1_440_000, 1500, 1500, "v", u64::MAX, IpVersion::V4).unwrap();
        let tagged = plain.with_tags(16, u64::MAX).unwrap();
        assert_eq!((plain.chunk_size, plain.n_chunks), (1440, 1000));
        assert_eq!((tagged.chunk_size, tagged.n_chunks, tagged.packet_size), (1424, 1012, 1500));
        let info = SessionInfo { file_size: 1_440_000, chunk_size: 1424, n_chunks: 1012, digest: None };
        assert_eq!(tagged.data_len(&info, 0), 14 + 1500, "a full frame, tag included");
        assert!(tagged.holds_whole_file() && tagged.slots == 1012);
    }

    #[test]
    fn plan_refuses_above_mtu_and_tiny() {
        assert!(matches!(
            FramePlan::new(10, 1600, 1500, "veth0", u64::MAX, IpVersion::V4),
            Err(PlanError::AboveMtu { .. })
        ));
        assert!(matches!(
            FramePlan::new(10, 40, 1500, "veth0", u64::MAX, IpVersion::V4),
            Err(PlanError::TooSmall(40, IpVersion::V4))
        ));
        assert!(matches!(
            FramePlan::new(1 << 30, 1500, 1500, "v", 1 << 19, IpVersion::V4),
            Err(PlanError::UmemTooSmall { .. })
        ));
        // Packets must carry a useful share of the file.
        let least = 28 + HEADER_LEN as u32 + MIN_CHUNK_SIZE;
        assert!(FramePlan::new(10, least, 1500, "v", u64::MAX, IpVersion::V4).is_ok());
        assert!(matches!(
            FramePlan::new(10, least - 1, 1500, "v", u64::MAX, IpVersion::V4),
            Err(PlanError::TooSmall(..))
        ));
        // A file larger than the UMEM streams through a ring of slots.
        let ring = FramePlan::new(1 << 30, 1500, 1500, "v", 64 << 20, IpVersion::V4).unwrap();
        assert_eq!(ring.slots, (64 << 20) / 2048 - 2 - FILL_SPARE);
        assert!(ring.umem_bytes() <= 64 << 20 && !ring.holds_whole_file());
        assert_eq!(ring.slot_of(u64::from(ring.slots) + 5), 5);
        // A small file maps only what it needs.
        let small = FramePlan::new(10_000, 1500, 1500, "v", 64 << 20, IpVersion::V4).unwrap();
        assert!(small.holds_whole_file() && small.total_frames == small.slots + 2 + FILL_SPARE);
        let p = FramePlan::new(10_000, 1500, 1500, "v", u64::MAX, IpVersion::V4).unwrap();
        assert_eq!(p.chunk_size, 1500 - 28 - HEADER_LEN as u32);
        let v6 = FramePlan::new(10_000, 1500, 1500, "v", u64::MAX, IpVersion::V6).unwrap();
        assert_eq!((v6.chunk_size, v6.payload_offset()), (1500 - 48 - HEADER_LEN as u32, 14 + 48 + HEADER_LEN));
        assert_eq!(p.frame_size, 2048);
        assert_eq!(FramePlan::new(10, 3000, 9000, "v", u64::MAX, IpVersion::V4).unwrap().frame_size, 4096);
        let p4 = p.with_frame_size(4096, u64::MAX).unwrap();
        assert_eq!((p4.frame_size, p4.total_frames, p4.chunk_size), (4096, p.total_frames, p.chunk_size));
        assert_eq!(
            FramePlan::new(1 << 30, 1500, 1500, "v", 64 << 20, IpVersion::V4)
                .unwrap()
                .with_frame_size(4096, 64 << 20)
                .unwrap()
                .slots,
            (64 << 20) / 4096 - 2 - FILL_SPARE
        );
        assert!(matches!(p.with_frame_size(3000, u64::MAX), Err(PlanError::FrameSize(3000))));
        let big = FramePlan::new(10, 3000, 9000, "v", u64::MAX, IpVersion::V4).unwrap();
        assert_eq!(big.with_frame_size(2048, u64::MAX).unwrap().chain, 2, "a smaller frame chains");
    }

    #[test]
    fn jumbo_packets_chain_adjacent_frames() {
        let p = FramePlan::new(1 << 30, 9000, 9000, "v", 64 << 20, IpVersion::V4).unwrap();
        assert_eq!((p.frame_size, p.chain, p.slot_bytes()), (4096, 3, 3 * 4096));
        assert!(p.multi_buffer());
        assert_eq!(p.chunk_size, 9000 - 28 - HEADER_LEN as u32);
        assert!(p.umem_bytes() <= 64 << 20);
        assert_eq!(p.total_frames, p.slots * 3 + 2 + FILL_SPARE);
        // Chunk c's frames, then the Metas after the last slot's frames.
        assert_eq!(p.data_addr(1), 3 * 4096);
        assert_eq!(p.meta_addr(false), u64::from(p.slots) * 3 * 4096);
        assert_eq!(p.spare_frames().start, p.slots * 3 + 2);
        // Every descriptor of a chain maps back to its slot; Metas to none.
        for d in 0..3 {
            assert_eq!(p.slot_at(p.data_addr(7) + d * 4096), Some(7));
        }
        assert_eq!(p.slot_at(p.meta_addr(true)), None);
        assert_eq!((p.descs_for(9014), p.descs_for(4096), p.descs_for(4097), p.descs_for(60)), (3, 1, 2, 1));
        // veth's largest MTU still fits the kernel's chain limit; a larger
        // packet is refused by name.
        assert_eq!(FramePlan::new(10, 65535, 65535, "v", u64::MAX, IpVersion::V4).unwrap().chain, MAX_CHAIN);
        assert!(matches!(
            FramePlan::new(10, 65535, 65535, "v", u64::MAX, IpVersion::V4).unwrap().with_frame_size(2048, u64::MAX),
            Err(PlanError::FrameTooBig { .. })
        ));
    }
}
