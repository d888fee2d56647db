//! `send --raw`: the preloaded frames transmitted round and round for a fixed
//! time, with no protocol and no receiver process, to measure the transmit
//! path alone (against a drop sink such as `xdpblast sink`).
//!
//! One AF_XDP socket per TX queue, all on one UMEM, each driven by its own
//! thread pinned to a core. The loop is the transfer's hot loop without the
//! scheduler: reap completions, post a batch of descriptors, kick when asked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tracing::{info, warn};

use super::afxdp_send::{resolve_mac, Prepared, SendOptions, COMP_RING, TX_RING};
use crate::afxdp::xsk::Queue;
use crate::datapath::preload::preload;
use crate::datapath::tx::{Kicker, TxEngine};
use crate::net::iface::format_mac;
use crate::os::sys::setsockopt_u32;
use crate::proto::pacer::{Pacer, Rate};
use crate::report::{human_bits_per_sec, human_pps, PacketRate, RateSample};
use crate::wire::frame::FrameTemplate;

#[derive(Debug, Clone)]
pub struct RawOptions {
    pub duration: Duration,
    pub queues: u32,
    /// Busy-poll socket options on every XSK (`SO_PREFER_BUSY_POLL`,
    /// `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`).
    pub busy_poll: bool,
}

#[derive(Debug, Serialize)]
pub struct QueueStats {
    pub queue: u32,
    pub cpu: Option<usize>,
    pub packets: u64,
    pub kicks: u64,
    pub kicks_unproductive: u64,
    pub device_drops: u64,
}

#[derive(Debug, Serialize)]
pub struct RawReport {
    pub mode: String,
    pub queues: u32,
    /// Bytes of each frame from the Ethernet header on (what the interface
    /// counters count; add 24 for preamble, FCS and gap on a real wire).
    pub frame_len: u32,
    pub packet_size: u32,
    pub batch: u32,
    pub rate: Option<String>,
    pub busy_poll: bool,
    pub umem_backing: String,
    pub elapsed_s: f64,
    /// Frames the kernel completed (took from the TX ring and transmitted).
    pub packets: u64,
    pub bytes: u64,
    pub pps: f64,
    pub bits_per_sec: f64,
    /// Median over the one-second intervals.
    pub median_pps: f64,
    pub intervals: Vec<RateSample>,
    pub per_queue: Vec<QueueStats>,
    pub rusage: crate::os::process::Rusage,
    pub syscalls: u64,
}

/// Shared between the queue threads and the reporting thread.
struct Shared {
    stop: AtomicBool,
    packets: Vec<AtomicU64>,
}

/// The preload's tick: a line a second while it lasts longer than that (the
/// whole file is read before the first frame leaves), and a stop on SIGINT
/// or SIGTERM.
fn preload_progress(print: bool, total: u64) -> impl FnMut(u64) -> bool {
    let start = Instant::now();
    let mut next = start + Duration::from_secs(1);
    move |done| {
        let now = Instant::now();
        if print && now >= next {
            next = now + Duration::from_secs(1);
            println!(
                "preloading: {} of {} ({:.0}%) in {:.1} s",
                crate::report::human_bytes(done),
                crate::report::human_bytes(total),
                done as f64 * 100.0 / total.max(1) as f64,
                (now - start).as_secs_f64()
            );
        }
        !crate::os::signals::stop_requested()
    }
}

/// The frames of a raw run, built once, and what they are.
struct RawFrames {
    area: crate::afxdp::umem::UmemArea,
    /// Frames sent round and round: every chunk's, less a short last one.
    full: u64,
    frame_len: u32,
    /// Holds the source port the frames carry for the run.
    _port: std::net::UdpSocket,
}

/// Reads the whole file into frames addressed to `opts.dst`. No receiver,
/// so no cookie: the frames only have to reach a drop sink.
fn build_frames(opts: &SendOptions, prep: &Prepared) -> anyhow::Result<RawFrames> {
    let Prepared { iface, plan, src, input, file_size, .. } = prep;
    let file = input.file().context("--raw sends one file's frames, not a tree")?;
    let port = std::net::UdpSocket::bind(src).context("reserving a source port")?;
    let local = port.local_addr()?;
    let dst_mac = match opts.dst_mac {
        Some(m) => m,
        None => resolve_mac(iface, src.ip(), opts.dst.ip())?,
    };
    info!(dst = %opts.dst, dst_mac = %format_mac(&dst_mac), src = %local, iface = %iface.name, "raw mode: no protocol, frames sent round and round");
    let tpl = FrameTemplate { src_mac: iface.mac, dst_mac, src: local, dst: opts.dst, ttl: 64 };
    let session = crate::os::process::random_session();
    let pre = preload(file, plan, &tpl, session, 0, preload_progress(opts.intervals, *file_size))?;
    // Equal frames only, so bytes = packets x frame length exactly: leave out a
    // short last chunk unless it is all there is.
    let full = if plan.n_chunks > 1 && pre.info.chunk_len(plan.n_chunks - 1) != Some(plan.chunk_size as usize) {
        plan.n_chunks - 1
    } else {
        plan.n_chunks
    };
    Ok(RawFrames { full, frame_len: plan.data_len(&pre.info, 0), area: pre.area, _port: port })
}

pub fn run(opts: &SendOptions, raw: &RawOptions, prep: Prepared) -> anyhow::Result<RawReport> {
    let frames = build_frames(opts, &prep)?;
    let Prepared { iface, plan, bind, .. } = prep;
    let RawFrames { area, full, frame_len, _port } = frames;
    let backing = format!("{:?}", area.backing()).to_lowercase();
    let mut xsk = super::afxdp_send::open_sockets(&iface, &plan, area, bind.bind, raw.queues)?;
    if let (true, Some(note)) = (opts.intervals, &bind.note) {
        println!("{note}");
    }
    if raw.busy_poll {
        for q in xsk.queues_mut() {
            set_busy_poll(q, opts.batch)?;
        }
    }
    let mode = xsk.mode().name();
    let lane = Lane {
        index: 0,
        frames: full,
        slot_bytes: u64::from(plan.slot_bytes()),
        unit: plan.frame_size,
        frame_len,
        batch: opts.batch.clamp(1, TX_RING),
        rate: opts.rate.map(|r| r.scaled(1.0 / f64::from(raw.queues))),
    };
    let label = format!("{mode}, {} queue(s), {frame_len} B frames", raw.queues);
    let start = Instant::now();
    let mut rates = PacketRate::new(opts.intervals, start);
    let results = run_lanes(xsk.queues_mut(), &lane, start + raw.duration, &mut rates, &label);
    let elapsed = start.elapsed();
    let mut per_queue = Vec::new();
    for r in results {
        per_queue.push(r.with_context(|| format!("transmit failed on {}", iface.name))?);
    }
    let packets: u64 = per_queue.iter().map(|q| q.packets).sum();
    let bytes = packets * u64::from(frame_len);
    rates.close(start + elapsed, packets, bytes, &label);
    if crate::os::signals::stop_requested() {
        bail!("interrupted");
    }
    let secs = elapsed.as_secs_f64();
    let report = RawReport {
        mode: mode.into(),
        queues: raw.queues,
        frame_len,
        packet_size: plan.packet_size,
        batch: lane.batch,
        rate: opts.rate.map(|r| r.to_string()),
        busy_poll: raw.busy_poll,
        umem_backing: backing,
        elapsed_s: secs,
        packets,
        bytes,
        pps: packets as f64 / secs,
        bits_per_sec: bytes as f64 * 8.0 / secs,
        median_pps: rates.median_pps(),
        intervals: rates.samples.clone(),
        per_queue,
        rusage: crate::os::process::Rusage::of_self(),
        syscalls: crate::os::syscount::total(),
    };
    if opts.intervals {
        println!(
            "- - - - -\n[  0.00-{secs:6.2} sec]  {:>10}  {:>16}  sender, median {} per second",
            human_pps(report.pps),
            human_bits_per_sec(report.bits_per_sec),
            human_pps(report.median_pps)
        );
    }
    Ok(report)
}

/// Runs a thread per queue, each pinned to a core, sending `lane`'s frames
/// until `end`, a stop request, or a thread's failure; ticks `rates` on the
/// way. Returns each queue's figures.
fn run_lanes(
    queues: &mut [Queue],
    lane: &Lane,
    end: Instant,
    rates: &mut PacketRate,
    label: &str,
) -> Vec<std::io::Result<QueueStats>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = queues.len();
    let shared = Shared { stop: AtomicBool::new(false), packets: (0..n).map(|_| AtomicU64::new(0)).collect() };
    std::thread::scope(|scope| {
        let handles: Vec<_> = queues
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                let shared = &shared;
                let cpu = (n > 1 || cpus > 1).then_some(i % cpus);
                let lane = Lane { index: i, ..*lane };
                scope.spawn(move || {
                    if let Some(c) = cpu {
                        pin_to(c);
                    }
                    let r = lane.transmit(q, shared);
                    r.map(|(packets, k)| QueueStats {
                        queue: q.queue_id(),
                        cpu,
                        packets,
                        kicks: k.kicks,
                        kicks_unproductive: k.unproductive,
                        device_drops: k.device_drops,
                    })
                })
            })
            .collect();
        loop {
            let now = Instant::now();
            let total: u64 = shared.packets.iter().map(|p| p.load(Ordering::Relaxed)).sum();
            if now >= end || crate::os::signals::stop_requested() || handles.iter().any(|h| h.is_finished()) {
                shared.stop.store(true, Ordering::Relaxed);
                break;
            }
            rates.tick(now, total, total * u64::from(lane.frame_len), label);
            std::thread::sleep(Duration::from_millis(5).min(end.saturating_duration_since(now)));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("a transmit thread panicked"))))
            .collect()
    })
}

/// One queue's share of the work.
struct Lane {
    index: usize,
    frames: u64,
    /// Bytes from one frame's start to the next's (its chain of UMEM frames).
    slot_bytes: u64,
    /// Bytes of one UMEM frame: a longer frame goes out as a chain.
    unit: u32,
    frame_len: u32,
    batch: u32,
    rate: Option<Rate>,
}

impl Lane {
    /// Transmits until told to stop. Returns frames completed and kick counts.
    fn transmit(&self, q: &mut Queue, shared: &Shared) -> std::io::Result<(u64, Kicker)> {
        let pacer = self.rate.map(|r| Pacer::new(r, self.frame_len, Instant::now()));
        let mut engine = TxEngine::new(self.batch, COMP_RING, pacer).chained(self.unit);
        // Completions come per descriptor; every frame here has as many.
        let descs_per_frame = u64::from(self.frame_len.div_ceil(self.unit));
        // Lanes start at different frames; any frame may be posted by any lane.
        let mut next = (self.index as u64 * self.frames / 2).min(self.frames.saturating_sub(1));
        let mut spins = 0u32;
        while !shared.stop.load(Ordering::Relaxed) {
            if engine.reap(q, |_| {}) > 0 {
                shared.packets[self.index].store(engine.completed / descs_per_frame, Ordering::Relaxed);
            }
            let (start, frames, size, len) = (next, self.frames, self.slot_bytes, self.frame_len);
            let posted = engine
                .post(q, Instant::now(), len, |cap| (0..cap).map(move |k| (((start + k as u64) % frames) * size, len)));
            next = (next + u64::from(posted)) % self.frames;
            engine.kick(q, posted)?;
            if posted == 0 && engine.outstanding() == 0 && !engine.chain_cut() {
                // Paced and waiting for tokens: sleep when the wait is long.
                spins += 1;
                if let (Some(p), true) = (engine.pacer(), spins > 64) {
                    let wait = p.ready_at(self.frame_len).saturating_duration_since(Instant::now());
                    if wait > Duration::from_micros(50) {
                        std::thread::sleep(wait.min(Duration::from_millis(5)));
                    }
                }
            } else {
                spins = 0;
            }
        }
        // Let the frames in flight complete, bounded.
        let left = engine.drain(q, Instant::now() + Duration::from_millis(100), |_| {});
        if left > 0 {
            warn!(queue = q.queue_id(), outstanding = left, "frames still in flight at the end");
        }
        Ok((engine.completed / descs_per_frame, engine.kicker))
    }
}

fn set_busy_poll(q: &Queue, budget: u32) -> anyhow::Result<()> {
    let fd = q.fd();
    setsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_PREFER_BUSY_POLL, 1).context("SO_PREFER_BUSY_POLL")?;
    setsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, 20).context("SO_BUSY_POLL (needs CAP_NET_ADMIN)")?;
    setsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL_BUDGET, budget).context("SO_BUSY_POLL_BUDGET")?;
    info!(queue = q.queue_id(), budget, "busy polling preferred on this socket");
    Ok(())
}

/// Pins the calling thread to one CPU; a failure is logged, not fatal.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let r = set.set(cpu).and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    match r {
        Ok(()) => info!(cpu, "transmit thread pinned"),
        Err(e) => warn!(cpu, "cannot pin the transmit thread: {e}"),
    }
}
