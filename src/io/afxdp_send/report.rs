//! What a transfer reports: its figures, the line that says how it goes
//! out, and the summary lines.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::transmit::Transmit;
use super::SendOptions;
use crate::afxdp::xsk::XskMode;
use crate::datapath::plan::FramePlan;
use crate::proto::pacer::Rate;
use crate::proto::sender::SendStats;
use crate::proto::Sender;
use crate::report::{hex, human_bytes, summary_line};

#[derive(Debug, Serialize)]
pub struct SendReport {
    #[serde(flatten)]
    pub summary: crate::report::Summary,
    /// The file's bits over the whole command (`e2e_s`).
    pub e2e_goodput_bps: f64,
    #[serde(flatten)]
    pub process: crate::report::ProcessFigures,
    /// The UMEM ring's size (`--umem`), whatever the file's.
    pub umem_bytes: u64,
    /// Where the file was read ahead: "inline" or "thread".
    pub reader: &'static str,
    /// Time spent reading the file into frames.
    pub read_s: f64,
    /// Time the first pass waited for the reader with nothing else to send.
    pub tx_stall_s: f64,
    /// Time the reader waited for the transmit side: the ring was full until
    /// the receiver's prefix (or the kernel's completions) freed a slot.
    pub reader_stall_s: f64,
    /// Chunks read a second time. Always 0 by design: a frame is reused only
    /// once the receiver's prefix is past its chunk, so no repair can need a
    /// re-read (`stats.repairs_unavailable` counts any NACK that would have).
    pub reread_chunks: u64,
    pub packet_size: u32,
    pub chunk_size: u32,
    pub kicks: u64,
    /// Kicks that moved nothing because the device queue was full.
    pub kicks_unproductive: u64,
    /// Kicks answered EBUSY: a frame the device dropped after it left our ring.
    pub kernel_tx_drops: u64,
    /// Transmit queues used, and what each carried.
    pub queues: u32,
    pub per_queue: Vec<QueueFigures>,
    pub rtt_us: Option<u64>,
    /// The AEAD every payload was encrypted with (with a key, unless
    /// `--no-encrypt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<&'static str>,
    /// Bytes the receiver held from an interrupted transfer (checked
    /// against ours), not sent again.
    pub resumed_bytes: u64,
    /// A tree's files the walk skipped (links, special files), and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_files: Vec<crate::tree::output::FailedFile>,
    pub stats: SendStats,
    /// With rate control (the default without `--rate`): the pace over time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptation: Option<Adaptation>,
}

/// One transmit queue's share of a transfer.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFigures {
    pub queue: u32,
    /// The UDP source port its data frames carry (RSS spreads by it).
    pub source_port: u16,
    /// Frames posted on its ring (first pass, repairs and Metas), and their
    /// bytes from the Ethernet header on.
    pub packets: u64,
    pub bytes: u64,
    /// Turns its ring had no room (every descriptor still in flight).
    pub ring_full_turns: u64,
    pub kicks: u64,
    /// Kicks the device could not take (its queue full).
    pub kicks_unproductive: u64,
    pub device_drops: u64,
    /// CPU time of its kicker thread (0 for queue 0: the scheduler kicks
    /// it).
    pub kicker_cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Adaptation {
    pub ceiling: String,
    /// "bits_per_sec" or "packets_per_sec".
    pub unit: &'static str,
    /// Times the pace came down to what the receiver was shown to take.
    pub decreases: u64,
    /// Seconds since the first frame, the pace, and the loss the last
    /// report gave (basis points): every 20 ms, thinned to at most
    /// [`RateLog::MAX`] points over a long transfer.
    pub rate_log: Vec<RatePoint>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RatePoint {
    pub t: f64,
    pub rate: f64,
    pub loss_bp: u16,
}

/// The line that says how the file goes out.
pub(super) fn mode_line(
    opts: &SendOptions,
    ifname: &str,
    mode: XskMode,
    plan: &FramePlan,
    size: u64,
    queues: u32,
) -> String {
    let on = if queues == 1 { "queue 0".to_string() } else { format!("queues 0-{}", queues - 1) };
    let protection = match (&opts.keys, opts.encrypt) {
        (Some(_), Some(c)) => format!(", encrypted ({})", c.name()),
        (Some(_), None) => ", authenticated, not encrypted".to_string(),
        _ => String::new(),
    };
    format!(
        "Sending {} ({}) to {} over AF_XDP: {} mode on {ifname} {on}, reader {}, {} B {} packets{protection}",
        opts.file.display(),
        human_bytes(size),
        opts.dst,
        mode.kind(),
        opts.reader.name(),
        plan.packet_size,
        plan.ip.name()
    )
}

/// What a verified transfer leaves for its report.
pub(super) struct Finished {
    pub(super) mode: XskMode,
    pub(super) file_size: u64,
    pub(super) plan: FramePlan,
    pub(super) queues: u32,
    pub(super) digest: [u8; 32],
    pub(super) verified: bool,
    pub(super) read_time: Duration,
    pub(super) per_queue: Vec<QueueFigures>,
}

/// Prints the summary lines (end to end first) and builds the report.
pub(super) fn final_report(opts: &SendOptions, tx: &mut Transmit, sender: &Sender, done: Finished) -> SendReport {
    let Finished { mode, file_size, plan, queues, digest, verified, read_time, per_queue } = done;
    let stats = sender.stats.clone();
    let elapsed = tx.elapsed_s();
    // The transfer phase runs from the first frame to the verdict.
    let process = crate::report::ProcessFigures::now(&tx.rusage_at_start);
    let e2e_s = process.e2e_s;
    if opts.intervals {
        let iv = &mut tx.intervals;
        iv.finish(Instant::now(), file_size, Some(stats.retransmits));
        let first = iv.at(tx.sched.first_post().unwrap_or(tx.start));
        let what = "sender, end to end: command start to verified file";
        println!("{}", summary_line(0.0, e2e_s, file_size, Some(stats.retransmits), what));
        let what = "sender, transfer phase: first frame to verified file";
        println!("{}", summary_line(first, e2e_s, file_size, None, what));
        println!("Verified by the receiver: blake3 {}", hex(&digest));
    }
    SendReport {
        summary: crate::report::Summary {
            mode: mode.name().to_string(),
            bytes: file_size,
            packets: Some(stats.first_pass + stats.retransmits + stats.meta_frames),
            retransmits: stats.retransmits,
            goodput_bps: file_size as f64 * 8.0 / elapsed.max(1e-9),
            elapsed_s: elapsed,
            digest: hex(&digest),
            verified,
        },
        e2e_goodput_bps: file_size as f64 * 8.0 / e2e_s.max(1e-9),
        process,
        umem_bytes: plan.umem_bytes(),
        reader: opts.reader.name(),
        read_s: read_time.as_secs_f64(),
        tx_stall_s: tx.sched.tx_stall().as_secs_f64(),
        reader_stall_s: tx.sched.reader_stall().as_secs_f64(),
        reread_chunks: 0,
        packet_size: plan.packet_size,
        chunk_size: plan.chunk_size,
        kicks: per_queue.iter().map(|q| q.kicks).sum(),
        kicks_unproductive: per_queue.iter().map(|q| q.kicks_unproductive).sum(),
        kernel_tx_drops: per_queue.iter().map(|q| q.device_drops).sum(),
        queues,
        per_queue,
        resumed_bytes: sender.resumed_from(),
        failed_files: crate::tree::scan::skipped_files(opts.tree.as_deref()),
        rtt_us: sender.rtt.map(|d| d.as_micros() as u64),
        encrypted: opts.encrypt.filter(|_| opts.keys.is_some()).map(|c| c.name()),
        stats,
        adaptation: tx.control.take().map(|a| Adaptation {
            ceiling: a.ceiling().to_string(),
            unit: match a.ceiling() {
                Rate::BitsPerSec(_) => "bits_per_sec",
                Rate::PacketsPerSec(_) => "packets_per_sec",
            },
            decreases: a.decreases,
            rate_log: tx.rate_log.take(),
        }),
    }
}

/// The pace over a transfer, in bounded memory and JSON: a point every
/// `every`; when [`RateLog::MAX`] are held, every other one goes and the
/// spacing doubles, so any transfer's log spans it evenly.
#[derive(Debug)]
pub(super) struct RateLog {
    points: Vec<RatePoint>,
    every: f64,
    next: f64,
}

impl RateLog {
    pub const MAX: usize = 512;

    pub fn new() -> RateLog {
        RateLog { points: Vec::with_capacity(RateLog::MAX), every: 0.02, next: 0.0 }
    }

    pub fn note(&mut self, p: RatePoint) {
        if p.t < self.next {
            return;
        }
        self.points.push(p);
        self.next = p.t + self.every;
        if self.points.len() == RateLog::MAX {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.every *= 2.0;
        }
    }

    pub fn take(&mut self) -> Vec<RatePoint> {
        std::mem::take(&mut self.points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_transfer_s_rate_log_stays_bounded_and_spans_it() {
        let mut log = RateLog::new();
        for ms in 0..600_000u32 {
            log.note(RatePoint { t: f64::from(ms) / 1000.0, rate: 1.0, loss_bp: 0 });
        }
        let points = log.take();
        assert!(points.len() < RateLog::MAX && points.len() > RateLog::MAX / 4, "{}", points.len());
        assert!(points[0].t == 0.0 && points.last().is_some_and(|p| p.t > 550.0));
        assert!(points.windows(2).all(|w| w[1].t > w[0].t));
    }
}
