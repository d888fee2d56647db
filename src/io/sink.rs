//! `xdpblast sink`: our XDP program as a native drop sink. Every UDP datagram
//! for the port is dropped in the driver and counted, so a sender's packet
//! rate can be measured where it arrives, without a receiving process.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::afxdp::program::{AttachMode, Steering};
use crate::net::iface::Interface;
use crate::report::{human_bits_per_sec, human_pps, PacketRate, RateSample};

#[derive(Debug, Serialize)]
pub struct SinkReport {
    pub iface: String,
    pub port: u16,
    pub xdp_mode: AttachMode,
    pub elapsed_s: f64,
    pub packets: u64,
    pub bytes: u64,
    pub pps: f64,
    pub bits_per_sec: f64,
    /// Median over the one-second intervals in which packets arrived, less
    /// the first and the last of them (partly idle).
    pub median_pps: f64,
    pub intervals: Vec<RateSample>,
}

/// Drops and counts for `duration` (or until interrupted). The program is
/// detached when this returns, or when the process dies.
pub fn run(iface: &Interface, port: u16, duration: Duration, print: bool) -> anyhow::Result<SinkReport> {
    let steering = Steering::attach_sink(&iface.name, iface.index, port)?;
    if print {
        eprintln!("xdpblast sink: dropping UDP port {port} on {} (XDP {:?})", iface.name, steering.mode());
    }
    let start = Instant::now();
    let end = start + duration;
    let mut rates = PacketRate::new(print, start);
    let label = "dropped at XDP";
    while Instant::now() < end && !crate::os::signals::stop_requested() {
        std::thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
        let c = steering.counters();
        rates.tick(Instant::now(), c.sunk, c.sunk_bytes, label);
    }
    let c = steering.counters();
    let elapsed = start.elapsed();
    rates.close(start + elapsed, c.sunk, c.sunk_bytes, label);
    let secs = elapsed.as_secs_f64();
    // Seconds before the sender started or after it stopped are not its rate,
    // and the first and last seconds with traffic are partly idle.
    let mut active: Vec<f64> = rates.samples.iter().map(|s| s.pps).filter(|p| *p > 0.0).collect();
    if active.len() > 2 {
        active = active[1..active.len() - 1].to_vec();
    }
    let report = SinkReport {
        iface: iface.name.clone(),
        port,
        xdp_mode: steering.mode(),
        elapsed_s: secs,
        packets: c.sunk,
        bytes: c.sunk_bytes,
        pps: c.sunk as f64 / secs,
        bits_per_sec: c.sunk_bytes as f64 * 8.0 / secs,
        median_pps: crate::report::median(active),
        intervals: rates.samples.clone(),
    };
    if print {
        println!(
            "- - - - -\n[  0.00-{secs:6.2} sec]  {:>10}  {:>16}  sink, median {} per active second",
            human_pps(report.pps),
            human_bits_per_sec(report.bits_per_sec),
            human_pps(report.median_pps)
        );
    }
    Ok(report)
}
