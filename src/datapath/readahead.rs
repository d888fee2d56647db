//! Read-ahead: the file read once, in order, into a bounded ring of UMEM
//! frames while the transfer runs, whatever the file's size.
//!
//! Chunk `c` is built in slot `c % slots` ([`FramePlan::slot_of`]): headers,
//! checksums, and the payload read by `preadv` straight into the frame;
//! BLAKE3 runs over the payloads in the same pass, and with a key each
//! payload is encrypted (or only tagged) there too, while it is in cache:
//! once per chunk, however often the frame is posted. The reader writes only
//! the chunks it was granted ([`SlotLedger`], kept by the transmit side): a
//! slot is granted for the chunk `slots` further on only when both hold:
//! - the receiver's reports show the old chunk delivered (its contiguous
//!   prefix is past it), so no NACK can name it again;
//! - the kernel has handed back every descriptor posted for it (TX
//!   completions), so no transmit is still reading it.
//!
//! A retransmit therefore always finds its chunk in its slot and posts the
//! same descriptor.
//!
//! With `--direct` the file is opened `O_DIRECT`, so a cold file does not
//! flood the page cache. Payloads sit at an unaligned offset inside their
//! frames, so direct reads land in an aligned bounce buffer of
//! [`DIRECT_BLOCK`] bytes and are copied from there into the frames: one CPU
//! copy per byte, as the buffered path's (page cache to frame). The digest is known once the last chunk is read; the file
//! is checked then (size, times, inode) and a change fails the transfer
//! before the digest is ever sent, so the receiver cannot verify a mix.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::time::{Duration, Instant};

use super::plan::{hash_payloads, FramePlan, PreloadError};
use crate::afxdp::umem::FrameWriter;
use crate::proto::auth::{DataKey, Direction, Keys, DATA_TAG_LEN};
use crate::tree::input::Input;
use crate::wire::frame::FrameTemplate;
use crate::wire::message::{emit_header, lane_of, Cipher, Kind, Message, SessionInfo, HEADER_LEN};

/// Most chunks one `preadv` scatters over.
const MAX_BATCH: u64 = 1024;
/// Payload bytes one run reads, hashes and builds: about 1 MiB, so a run
/// stays in the core's 2 MiB L2 from the read to the last checksum, and
/// BLAKE3 still gets a long contiguous input (jumbo chunks would otherwise
/// make 9 MiB runs).
const RUN_BYTES: u64 = 1 << 20;
/// One `O_DIRECT` read: aligned, and large enough that the disk streams.
pub const DIRECT_BLOCK: usize = 4 << 20;
/// Offsets and lengths of `O_DIRECT` reads are multiples of this.
const DIRECT_ALIGN: u64 = 4096;

/// The template of chunk `c`'s frame: the source port of its lane, where
/// there are several.
fn lane_template(tpl: &FrameTemplate, ports: &[u16], c: u64) -> FrameTemplate {
    match ports.len() {
        0 | 1 => *tpl,
        n => FrameTemplate { src: std::net::SocketAddr::new(tpl.src.ip(), ports[lane_of(c, n)]), ..*tpl },
    }
}

/// An aligned window of the file read with `O_DIRECT`.
struct Bounce {
    buf: memmap2::MmapMut,
    /// File offset of `buf[0]` and the valid bytes from there.
    start: u64,
    len: usize,
}

pub struct ReadAhead {
    input: Input,
    /// With a pre-shared key: the Metas are sealed, the digest keyed, and
    /// each data frame tagged with the session's [`DataKey`] in the same pass.
    keys: Option<Keys>,
    data_key: Option<DataKey>,
    /// The data key encrypts the payloads, not only tags them.
    encrypted: bool,
    /// `Some` when the file was opened with `O_DIRECT`.
    bounce: Option<Bounce>,
    plan: FramePlan,
    shape: SessionInfo,
    tpl: FrameTemplate,
    /// With several transmit queues: the source port of each queue's flow;
    /// runs of chunks take them in turn ([`lane_of`]).
    lane_ports: Vec<u16>,
    session: u64,
    cookie: u64,
    hasher: blake3::Hasher,
    /// For a file larger than the page cache can hold: drops the pages
    /// already read (see [`DropBehind`]).
    drop_behind: Option<DropBehind>,
    /// One run's payloads side by side, for hashing, and each payload's
    /// checksum sum (see `hash_payloads`).
    gather: Vec<u8>,
    sums: Vec<u32>,
    /// The next chunk to read.
    next: u64,
    frames: FrameWriter,
    /// Time spent reading and building frames.
    pub read_time: Duration,
    digest: Option<[u8; 32]>,
}

impl ReadAhead {
    /// A reader for `file` laid out by `plan` in `frames`, every frame
    /// stamped with `session` and the receiver's `cookie`.
    pub fn new(
        input: Input,
        plan: FramePlan,
        frames: FrameWriter,
        tpl: FrameTemplate,
        session: u64,
        cookie: u64,
        file_size: u64,
    ) -> Self {
        let shape = SessionInfo { file_size, chunk_size: plan.chunk_size, n_chunks: plan.n_chunks, digest: None };
        let drop_behind = input.file().and_then(|f| DropBehind::for_file(f, file_size));
        ReadAhead {
            keys: None,
            data_key: None,
            encrypted: false,
            input,
            bounce: None,
            plan,
            shape,
            tpl,
            lane_ports: Vec::new(),
            session,
            cookie,
            hasher: blake3::Hasher::new(),
            drop_behind,
            gather: Vec::with_capacity(RUN_BYTES as usize + plan.chunk_size as usize),
            sums: Vec::with_capacity(MAX_BATCH as usize),
            next: 0,
            frames,
            read_time: Duration::ZERO,
            digest: None,
        }
    }

    /// Stamps data frames with one source port per transmit queue, so that
    /// RSS on the receiver's NIC spreads them over its receive queues: runs
    /// of chunks take the ports in turn ([`lane_of`]). Call
    /// before reading.
    pub fn with_lane_ports(mut self, ports: Vec<u16>) -> Self {
        self.lane_ports = ports;
        self
    }

    /// With a pre-shared key: seals the Metas, keys the digest, and tags
    /// every data frame, or with `encrypted` encrypts its payload. The plan
    /// must leave room for the tags ([`FramePlan::with_tags`]). Call before
    /// reading.
    pub fn keyed(mut self, keys: Keys, encrypted: Option<Cipher>) -> Self {
        self.hasher = keys.digest_hasher();
        self.data_key = Some(keys.data_key(self.session, self.cookie, encrypted));
        self.encrypted = encrypted.is_some();
        self.keys = Some(keys);
        self
    }

    /// Reads through an aligned bounce buffer: for a file opened `O_DIRECT`.
    pub fn direct(mut self) -> io::Result<Self> {
        let buf = memmap2::MmapOptions::new().len(DIRECT_BLOCK).map_anon()?;
        self.bounce = Some(Bounce { buf, start: 0, len: 0 });
        Ok(self)
    }

    /// Chunks read so far: every chunk below this is (or was) built.
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn is_done(&self) -> bool {
        self.next >= self.plan.n_chunks
    }

    /// The whole file's BLAKE3, once every chunk was read and the file found
    /// unchanged.
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.digest
    }

    /// Builds the first-pass Meta (no digest yet) in its frame.
    pub fn build_first_meta(&mut self) -> Result<u32, PreloadError> {
        self.build_meta(false, self.shape)
    }

    fn build_meta(&mut self, last: bool, info: SessionInfo) -> Result<u32, PreloadError> {
        let idx = self.plan.meta_frame(last);
        let mut msg = Message::Meta { session: self.session, last, info }.encode(self.cookie);
        if let Some(k) = &self.keys {
            // Meta frames are posted again on purpose: counter 0, no replay check.
            k.seal(Direction::ToReceiver, 0, &mut msg);
        }
        // SAFETY: Meta frames are written before they are first posted (the
        // first before the transfer starts, the last once reading is done and
        // before the sender may post it), and never again.
        let frame = unsafe { self.frames.frames_mut(idx, 1) }.ok_or(PreloadError::Layout(idx))?;
        Ok(self.tpl.build(&msg, frame)? as u32)
    }

    /// Reads and builds chunks from [`ReadAhead::next`] up to (not
    /// including) `granted`, at most `max` of them. Returns how many.
    ///
    /// Every chunk below `granted` must have been granted by the
    /// [`SlotLedger`]: its slot's old chunk is delivered and out of the
    /// kernel's hands.
    pub fn fill(&mut self, granted: u64, max: u64) -> Result<u64, PreloadError> {
        let started = Instant::now();
        let mut done = 0u64;
        while done < max && self.next < granted.min(self.plan.n_chunks) {
            let n = self.fill_run((granted - self.next).min(max - done))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        self.read_time += started.elapsed();
        Ok(done)
    }

    /// One `preadv` over consecutive granted slots (a run stops at the
    /// ring's end, or after [`RUN_BYTES`] or [`MAX_BATCH`] chunks).
    fn fill_run(&mut self, want: u64) -> Result<u64, PreloadError> {
        let first = self.next;
        let slot0 = self.plan.slot_of(first);
        let room_to_end = u64::from(self.plan.slots - slot0);
        let per_run = (RUN_BYTES / u64::from(self.plan.chunk_size)).clamp(1, MAX_BATCH);
        let count = want.min(room_to_end).min(per_run).min(self.plan.n_chunks - first);
        if count == 0 {
            return Ok(0);
        }
        let (chain, slot_bytes) = (self.plan.chain, self.plan.slot_bytes() as usize);
        // SAFETY: these slots were granted (`fill`'s contract): no descriptor
        // for their old chunk is in flight, the sender can no longer post it,
        // and data slots are never on the fill ring (only spare frames are).
        let region = unsafe { self.frames.frames_mut(slot0 * chain, count as u32 * chain) }
            .ok_or(PreloadError::Layout(slot0))?;
        let mut frames: Vec<&mut [u8]> = region.chunks_exact_mut(slot_bytes).collect();
        let lens: Vec<usize> = (0..count).map(|i| self.shape.chunk_len(first + i).unwrap_or(0)).collect();
        let total: usize = lens.iter().sum();
        let offset = first * u64::from(self.plan.chunk_size);
        let at = self.plan.payload_offset();
        match (self.bounce.as_mut(), self.input.file()) {
            (Some(b), Some(file)) => read_direct(file, b, &mut frames, &lens, at, offset, self.shape.file_size)?,
            _ => read_into(&mut self.input, &mut frames, &lens, at, offset, total)?,
        }
        if let (Some(d), Some(file)) = (self.drop_behind.as_mut(), self.input.file()) {
            d.read_up_to(file, offset + total as u64);
        }
        let sums = (!self.encrypted).then_some(&mut self.sums);
        hash_payloads(&mut self.hasher, &mut self.gather, sums, &frames, &lens, at);
        let header_at = self.plan.header_offset();
        for (i, f) in frames.iter_mut().enumerate() {
            let len = lens[i];
            emit_header(&mut f[header_at..], Kind::Data, len as u16, self.session, self.cookie, first + i as u64);
            let tail = match &self.data_key {
                Some(k) if self.encrypted => encrypt_payload(k, first + i as u64, f, header_at, len),
                Some(k) => append_tag(k, first + i as u64, f, header_at, len, (len, self.sums[i])),
                None => (len, self.sums[i]),
            };
            let tpl = lane_template(&self.tpl, &self.lane_ports, first + i as u64);
            tpl.build_in_place_summed(f, HEADER_LEN + tail.0, Some(tail))?;
        }
        self.next += count;
        Ok(count)
    }

    /// After the last chunk: checks that the file did not change while it was
    /// read (`unchanged` compares its stamp), then fixes the digest and builds
    /// the closing Meta that carries it. Returns the Meta's length and the
    /// digest.
    pub fn finish(&mut self, unchanged: impl FnOnce() -> bool) -> Result<(u32, [u8; 32]), PreloadError> {
        let size = self.shape.file_size;
        self.input.check_end()?;
        if !unchanged() {
            let after = self.input.file().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
            return Err(PreloadError::Changed { before: size, after });
        }
        let digest = *self.hasher.finalize().as_bytes();
        self.digest = Some(digest);
        let info = SessionInfo { digest: Some(digest), ..self.shape };
        Ok((self.build_meta(true, info)?, digest))
    }
}

/// The transmit side's account of the ring: which slots the reader may
/// refill. Chunk `c` is granted once its slot's old chunk (`c - slots`) is
/// below the receiver's contiguous prefix (delivered: no NACK can name it)
/// and every descriptor posted for it was completed.
#[derive(Debug)]
pub struct SlotLedger {
    plan: FramePlan,
    /// Per data slot: descriptors posted and not yet completed (a jumbo
    /// frame's chain counts each of its descriptors).
    in_flight: Vec<u32>,
    /// Chunks below this may be (or have been) read.
    granted: u64,
}

impl SlotLedger {
    pub fn new(plan: FramePlan) -> Self {
        SlotLedger { plan, in_flight: vec![0; plan.slots as usize], granted: 0 }
    }

    /// `descs` descriptors for `chunk` were posted (or handed to the engine,
    /// which posts the rest of a cut chain first thing next turn).
    pub fn posted(&mut self, chunk: u64, descs: u32) {
        self.in_flight[self.plan.slot_of(chunk) as usize] += descs;
    }

    /// The kernel completed the descriptor at UMEM address `addr` (Meta and
    /// spare frames are no slot's).
    pub fn completed(&mut self, addr: u64) {
        if let Some(slot) = self.plan.slot_at(addr) {
            let n = &mut self.in_flight[slot as usize];
            *n = n.saturating_sub(1);
        }
    }

    /// Grants every chunk it can, given the receiver's contiguous `prefix`;
    /// returns the new grant (chunks below it may be read).
    pub fn grant(&mut self, prefix: u64) -> u64 {
        let limit = prefix.saturating_add(u64::from(self.plan.slots)).min(self.plan.n_chunks);
        while self.granted < limit && self.in_flight[self.plan.slot_of(self.granted) as usize] == 0 {
            self.granted += 1;
        }
        self.granted
    }

    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Chunks below this may have had their slot reused: they can no longer
    /// be posted.
    pub fn floor(&self) -> u64 {
        self.granted.saturating_sub(u64::from(self.plan.slots))
    }
}

/// Writes the tag of chunk `chunk`'s data message at `frame[header_at..]`
/// (header and a `len`-byte payload) behind it. Returns the checksum tail to give the
/// frame builder: `tail` (the payload's sum) extended over the tag.
fn append_tag(
    key: &DataKey,
    chunk: u64,
    frame: &mut [u8],
    header_at: usize,
    len: usize,
    tail: (usize, u32),
) -> (usize, u32) {
    let end = header_at + HEADER_LEN + len;
    let tag = key.tag(chunk, &frame[header_at..end]);
    frame[end..end + DATA_TAG_LEN].copy_from_slice(&tag);
    // A running sum continues only from an even offset; an odd payload (the
    // last chunk's, at most) is summed again with its tag.
    let sum = if len % 2 == 0 {
        crate::wire::checksum::sum(tail.1, &tag)
    } else {
        crate::wire::checksum::sum(0, &frame[end - len..end + DATA_TAG_LEN])
    };
    (len + DATA_TAG_LEN, sum)
}

/// Encrypts chunk `chunk`'s `len`-byte payload in place behind its header
/// at `frame[header_at..]` and writes the tag behind it. Returns the
/// checksum tail for the frame builder: what goes on the wire now is the
/// ciphertext, summed while the cipher's output is still in cache.
fn encrypt_payload(key: &DataKey, chunk: u64, frame: &mut [u8], header_at: usize, len: usize) -> (usize, u32) {
    let (header, rest) = frame[header_at..].split_at_mut(HEADER_LEN);
    let (payload, rest) = rest.split_at_mut(len);
    let tag = key.seal(chunk, header, payload);
    rest[..DATA_TAG_LEN].copy_from_slice(&tag);
    let sealed = &frame[header_at + HEADER_LEN..header_at + HEADER_LEN + len + DATA_TAG_LEN];
    (len + DATA_TAG_LEN, crate::wire::checksum::sum(0, sealed))
}

/// Reading a file larger than half the machine's memory through the page
/// cache would evict everything else (the receiver's output, on a loopback
/// test bed) and could not keep the file cached anyway: such a file is read
/// sequentially and the pages behind the reader are dropped, in steps.
struct DropBehind {
    /// Pages below this were dropped.
    dropped: u64,
}

/// Drop pages behind the reader in steps of this many bytes.
const DROP_STEP: u64 = 64 << 20;

impl DropBehind {
    fn for_file(file: &File, file_size: u64) -> Option<DropBehind> {
        let mem = crate::os::process::total_memory_bytes()?;
        if file_size <= mem / 2 {
            return None;
        }
        // Advice only: a file system that ignores it reads as before.
        let _ = nix::fcntl::posix_fadvise(file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
        Some(DropBehind { dropped: 0 })
    }

    fn read_up_to(&mut self, file: &File, end: u64) {
        if end >= self.dropped + DROP_STEP {
            let len = (end - self.dropped) as libc::off_t;
            let _ = nix::fcntl::posix_fadvise(
                file,
                self.dropped as libc::off_t,
                len,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.dropped = end;
        }
    }
}

/// Scatters `total` file bytes from `offset` over the payload areas of
/// `frames` (`lens[i]` bytes into frame i, from byte `at`). A short file is
/// a change.
fn read_into(
    input: &mut Input,
    frames: &mut [&mut [u8]],
    lens: &[usize],
    at: usize,
    offset: u64,
    total: usize,
) -> Result<(), PreloadError> {
    let mut got = 0usize;
    while got < total {
        let mut iov: Vec<IoSliceMut<'_>> = Vec::with_capacity(frames.len());
        let mut skip = got;
        for (f, &len) in frames.iter_mut().zip(lens) {
            if skip >= len {
                skip -= len;
                continue;
            }
            iov.push(IoSliceMut::new(&mut f[at + skip..at + len]));
            skip = 0;
        }
        let n = input.read_vectored_at(&mut iov, offset + got as u64)?;
        if n == 0 {
            let after = input.file().map_or(Ok(0), |f| f.metadata().map(|m| m.len()))?;
            return Err(PreloadError::Changed { before: offset + total as u64, after });
        }
        got += n;
    }
    Ok(())
}

/// Fills the payload areas of `frames` (`lens[i]` bytes each, from byte
/// `payload_at`) from file offset `offset`, through the aligned bounce
/// buffer: each `O_DIRECT` read takes the aligned block that holds the next
/// bytes needed.
fn read_direct(
    file: &File,
    b: &mut Bounce,
    frames: &mut [&mut [u8]],
    lens: &[usize],
    payload_at: usize,
    mut offset: u64,
    file_size: u64,
) -> Result<(), PreloadError> {
    for (f, &len) in frames.iter_mut().zip(lens) {
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            if at < b.start || at >= b.start + b.len as u64 {
                b.start = at - at % DIRECT_ALIGN;
                crate::os::syscount::count(1);
                let n = nix::sys::uio::pread(file, &mut b.buf[..], b.start as libc::off_t).map_err(io::Error::from)?;
                b.len = n;
                if at >= b.start + n as u64 {
                    let after = file.metadata()?.len();
                    return Err(PreloadError::Changed { before: file_size, after });
                }
            }
            let from = (at - b.start) as usize;
            let take = (len - done).min(b.len - from);
            f[payload_at + done..payload_at + done + take].copy_from_slice(&b.buf[from..from + take]);
            done += take;
        }
        offset += len as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(slots: u32, n_chunks: u64) -> FramePlan {
        FramePlan {
            ip: crate::wire::frame::IpVersion::V4,
            packet_size: 1500,
            chunk_size: 1440,
            tag_len: 0,
            file_size: n_chunks * 1440,
            frame_size: 2048,
            chain: 1,
            n_chunks,
            slots,
            total_frames: slots + 66,
        }
    }

    #[test]
    fn a_chained_slot_is_granted_once_every_descriptor_completed() {
        let p = FramePlan { packet_size: 9000, chunk_size: 8940, frame_size: 4096, chain: 3, ..plan(4, 10) };
        let mut l = SlotLedger::new(p);
        assert_eq!(l.grant(0), 4);
        l.posted(0, 3);
        l.completed(p.data_addr(0));
        l.completed(p.data_addr(0) + 4096);
        assert_eq!(l.grant(1), 4, "one descriptor of chunk 0's chain is still out");
        l.completed(p.meta_addr(false));
        assert_eq!(l.grant(1), 4, "a Meta completion frees no slot");
        l.completed(p.data_addr(0) + 2 * 4096);
        assert_eq!(l.grant(1), 5);
    }

    #[test]
    fn a_slot_is_granted_only_past_the_prefix_and_after_completion() {
        let mut l = SlotLedger::new(plan(4, 10));
        assert_eq!(l.grant(0), 4, "the first lap needs nothing delivered");
        assert_eq!(l.floor(), 0);
        for c in 0..4 {
            l.posted(c, 1);
        }
        assert_eq!(l.grant(2), 4, "delivered, but chunks 0 and 1 are still in the kernel's hands");
        l.completed(0);
        l.completed(2048);
        assert_eq!(l.grant(2), 6);
        assert_eq!(l.floor(), 2, "chunks 0 and 1 may be overwritten now");
        l.completed(2 * 2048);
        assert_eq!(l.grant(2), 6, "chunk 2 completed but not yet delivered");
        l.posted(4, 1);
        l.completed(3 * 2048);
        assert_eq!(l.grant(4), 8);
        assert_eq!(l.grant(100), 8, "chunk 4 (slot 0) is still in flight");
        l.completed(0);
        assert_eq!(l.grant(100), 10, "never past the file's end");
    }
}
