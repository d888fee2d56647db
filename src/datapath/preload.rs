//! Preload: the whole file read once into fully built frames, for
//! `send --raw`, which sends them round and round. Transfers stream through
//! the same layout ([`super::plan`]) with [`super::readahead`].
//!
//! `preadv` scatters each read over up to 1024 frames' payload areas, so file
//! bytes land where they will be transmitted from; BLAKE3 and the checksums are
//! computed in the same pass. A retransmit posts the same descriptor.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::MetadataExt;

use tracing::info;

use super::plan::{hash_payloads, FramePlan, PlanError, PreloadError, FILL_SPARE};
use crate::afxdp::umem::UmemArea;
use crate::wire::frame::FrameTemplate;
use crate::wire::message::{emit_header, Kind, Message, SessionInfo, HEADER_LEN};

pub struct Preloaded {
    pub area: UmemArea,
    pub info: SessionInfo,
    pub meta_len: u32,
}

/// Reads `file` once into a new UMEM laid out by `plan`, every frame stamped
/// with `session` and the receiver's `cookie`. `tick` runs after every batch
/// of frames (about every 1.5 MB) with the bytes read so far, so the caller
/// can show progress; it returns false to stop (a stop request), which fails
/// the preload with [`PreloadError::Interrupted`].
pub fn preload(
    file: &File,
    plan: &FramePlan,
    tpl: &FrameTemplate,
    session: u64,
    cookie: u64,
    mut tick: impl FnMut(u64) -> bool,
) -> Result<Preloaded, PreloadError> {
    let before = file.metadata()?;
    let file_size = before.len();
    if !plan.holds_whole_file() {
        let need = plan.n_chunks * u64::from(plan.slot_bytes()) + u64::from((2 + FILL_SPARE) * plan.frame_size);
        return Err(PreloadError::Plan(PlanError::FileAboveUmem { need, umem: plan.umem_bytes() }));
    }
    let mut area = UmemArea::new(plan.total_frames, plan.frame_size)?;
    let slot_bytes = plan.slot_bytes() as usize;
    let mut hasher = blake3::Hasher::new();
    let mut gather = Vec::new();
    let mut sums = Vec::new();
    let started = std::time::Instant::now();
    let (header_at, payload_at) = (plan.header_offset(), plan.payload_offset());

    let info_without_digest =
        |digest| SessionInfo { file_size, chunk_size: plan.chunk_size, n_chunks: plan.n_chunks, digest };
    let shape = info_without_digest(None);
    {
        let mut frames: Vec<&mut [u8]> =
            area.as_mut_slice().chunks_exact_mut(slot_bytes).take(plan.n_chunks as usize).collect();
        let mut idx = 0usize;
        let mut offset = 0u64;
        while idx < frames.len() {
            let batch_end = (idx + 1024).min(frames.len());
            // Scatter one read over this batch's payload areas.
            let want: usize = (idx..batch_end).map(|i| shape.chunk_len(i as u64).unwrap_or(0)).sum();
            let mut got = 0usize;
            while got < want {
                let mut iov: Vec<IoSliceMut<'_>> = Vec::with_capacity(batch_end - idx);
                let mut skip = got;
                for (i, f) in frames[idx..batch_end].iter_mut().enumerate() {
                    let len = shape.chunk_len((idx + i) as u64).unwrap_or(0);
                    if skip >= len {
                        skip -= len;
                        continue;
                    }
                    iov.push(IoSliceMut::new(&mut f[payload_at + skip..payload_at + len]));
                    skip = 0;
                }
                let n = nix::sys::uio::preadv(file, &mut iov, (offset + got as u64) as libc::off_t)
                    .map_err(io::Error::from)?;
                if n == 0 {
                    let after = file.metadata()?.len();
                    return Err(PreloadError::Changed { before: file_size, after });
                }
                got += n;
            }
            let lens: Vec<usize> = (idx..batch_end).map(|c| shape.chunk_len(c as u64).unwrap_or(0)).collect();
            hash_payloads(&mut hasher, &mut gather, Some(&mut sums), &frames[idx..batch_end], &lens, payload_at);
            for (i, f) in frames[idx..batch_end].iter_mut().enumerate() {
                let c = (idx + i) as u64;
                let len = lens[i];
                emit_header(&mut f[header_at..], Kind::Data, len as u16, session, cookie, c);
                tpl.build_in_place_summed(f, HEADER_LEN + len, Some((len, sums[i])))?;
            }
            offset += want as u64;
            idx = batch_end;
            if !tick(offset) {
                return Err(PreloadError::Interrupted);
            }
        }
    }

    let after = file.metadata()?;
    if after.len() != file_size || after.mtime() != before.mtime() || after.mtime_nsec() != before.mtime_nsec() {
        return Err(PreloadError::Changed { before: file_size, after: after.len() });
    }

    let info = info_without_digest(Some(*hasher.finalize().as_bytes()));
    let mut meta_len = 0;
    for last in [false, true] {
        let msg = Message::Meta { session, last, info }.encode(cookie);
        let idx = plan.meta_frame(last);
        let f = area.frame_mut(idx).ok_or(PreloadError::Layout(idx))?;
        meta_len = tpl.build(&msg, f)? as u32;
    }
    let secs = started.elapsed().as_secs_f64();
    info!(
        bytes = file_size,
        chunks = plan.n_chunks,
        chunk_size = plan.chunk_size,
        secs = format!("{secs:.3}"),
        "preloaded the file into the UMEM (one read, frames built, BLAKE3 in the same pass)"
    );
    Ok(Preloaded { area, info, meta_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{example_template, parse_udp, IpVersion};
    use std::io::Write;

    #[test]
    fn preload_builds_parseable_frames_with_file_bytes() {
        let mut tmp = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        tmp.write_all(&data).unwrap();
        // One UMEM frame per packet, and jumbo packets over chains of three.
        for packet in [1000, 9000] {
            let plan = FramePlan::new(data.len() as u64, packet, 9000, "v", u64::MAX, IpVersion::V4).unwrap();
            let tpl = example_template();
            let mut ticks = 0;
            let mut last = 0;
            let p = preload(&tmp, &plan, &tpl, 42, 0xc00c1e, |done| {
                ticks += 1;
                last = done;
                true
            })
            .unwrap();
            assert!(ticks >= 1 && last == data.len() as u64, "progress reaches the file's size");
            let stopped = preload(&tmp, &plan, &tpl, 42, 0xc00c1e, |_| false);
            assert!(matches!(stopped, Err(PreloadError::Interrupted)), "a false tick stops the preload");
            assert_eq!(p.info.digest, Some(*blake3::hash(&data).as_bytes()));
            let mut rebuilt = Vec::new();
            for c in 0..plan.n_chunks {
                let len = plan.data_len(&p.info, c);
                // SAFETY: no kernel uses this area in the test.
                let frame = unsafe { p.area.bytes_at(plan.data_addr(c), len) }.unwrap();
                let d = parse_udp(frame).unwrap();
                match Message::parse_with_cookie(d.payload).unwrap() {
                    (Message::Data { session, chunk, payload }, cookie) => {
                        assert_eq!((session, chunk, cookie), (42, c, 0xc00c1e));
                        rebuilt.extend_from_slice(payload);
                    }
                    m => panic!("unexpected {m:?}"),
                }
            }
            assert_eq!(rebuilt, data, "packet size {packet}");
            // SAFETY: as above.
            let meta = unsafe { p.area.bytes_at(plan.meta_addr(true), p.meta_len) }.unwrap();
            let d = parse_udp(meta).unwrap();
            assert_eq!(Message::parse(d.payload).unwrap(), Message::Meta { session: 42, last: true, info: p.info });
        }
    }
}
