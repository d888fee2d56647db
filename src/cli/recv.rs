//! `xdpblast recv`: the receive path chosen (AF_XDP with our XDP program,
//! or a UDP socket), a session taken, and a TCP fallback served.

use super::args::{seconds, RecvArgs, RecvMode};
use super::tools::load_keys;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use xdpblast::afxdp::program::{Steering, TestKnobs};
use xdpblast::io::afxdp_recv::AfxdpReceiver;
use xdpblast::io::control::{control_port, Control};
use xdpblast::io::output::{check_out, OutputPolicy};
use xdpblast::io::receive::{self, Outcome, PathStats, RecvOptions};
use xdpblast::io::tcp::{self};
use xdpblast::io::udp_recv::UdpReceiver;
use xdpblast::net::iface::Interface;
use xdpblast::wire::frame::IpVersion;

pub(crate) fn cmd_recv(a: RecvArgs, quiet: bool) -> anyhow::Result<bool> {
    if !(0.0..=1.0).contains(&a.inject_loss) {
        bail!("--inject-loss must be between 0.0 and 1.0, got {}", a.inject_loss);
    }
    if a.serve && !a.out.is_dir() {
        bail!(
            "--serve needs --out DIR, an existing directory: each transfer is written there under its own name ({} is not one)",
            a.out.display()
        );
    }
    let knobs = TestKnobs { loss: a.inject_loss, capacity_pps: a.inject_capacity };
    let policy = OutputPolicy { no_clobber: a.no_clobber };
    // Bound once: with --serve, a sender that arrives between transfers
    // finds the ports open, and its Hellos wait for the next transfer.
    let ctrl_addr = SocketAddr::new(a.listen.ip(), control_port(a.listen.port())?);
    let mut ctrl = Control::bind(ctrl_addr)?;
    // Every mode serves a TCP sender too, once admitted on the control port.
    let listener = tcp::listen(a.listen)?;
    let mut served = 0u64;
    loop {
        let verified = receive_one(&a, knobs, policy, quiet, &mut ctrl, &listener)?;
        if !a.serve || xdpblast::os::signals::stop_requested() {
            return Ok(verified);
        }
        served += 1;
        tracing::info!(served, verified, "transfer over; waiting for the next sender");
    }
}

/// One transfer, from opening the data path to the report.
fn receive_one(
    a: &RecvArgs,
    knobs: TestKnobs,
    policy: OutputPolicy,
    quiet: bool,
    ctrl: &mut Control,
    listener: &std::net::TcpListener,
) -> anyhow::Result<bool> {
    // Everything that would refuse the output is checked before `ready`.
    check_out(&a.out, policy)?;
    let iface = match &a.iface {
        Some(name) => Some(Interface::lookup(name)?),
        None => None,
    };
    let mut opts = recv_options(a, iface.as_ref(), policy, !a.json && !quiet)?;
    let outcome = match a.mode() {
        RecvMode::Tcp => {
            ready(quiet, format_args!("{} (tcp)", a.listen));
            receive::run("tcp", Vec::new(), ctrl, &opts, Some(listener))
        }
        RecvMode::Afxdp => {
            let iface = iface.context("--iface is required with --mode afxdp")?;
            receive_afxdp(a, &iface, knobs, ctrl, &mut opts, listener, quiet)?
        }
        RecvMode::Udp => receive_udp(a, iface.as_ref(), knobs, ctrl, &opts, listener, quiet)?,
    };
    let report = match outcome {
        Outcome::Done(r) => r,
        Outcome::TcpFallback(handoff) => {
            let receive::TcpHandoff { stream, header, out, pending, prepared, resumed_from, encrypted } = *handoff;
            let topts = tcp::TcpReceiveOptions {
                resumed_from,
                encrypted: opts.keys.as_ref().zip(encrypted),
                out: &out,
                timeout: opts.idle_timeout,
                intervals: opts.intervals,
                listener: Some(listener),
            };
            let report = tcp::receive(stream, &header, &topts, pending, prepared);
            return finish_tcp(report, a.json);
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(e) = &report.error {
        match &report.path {
            Some(p) => eprintln!(
                "xdpblast: error: {e}; what arrived is kept at {p}: the same transfer run again resumes there (recv --no-resume starts over)"
            ),
            None => eprintln!("xdpblast: error: {e}; nothing was written"),
        }
    }
    Ok(report.summary.verified)
}

/// The receive loop's options from the command line. The largest datagram
/// is the MTU of `--iface`, or else of the interface that holds the listen
/// address, less the IP and UDP headers (28 bytes for IPv4, 48 for IPv6).
fn recv_options(
    a: &RecvArgs,
    iface: Option<&Interface>,
    policy: OutputPolicy,
    intervals: bool,
) -> anyhow::Result<RecvOptions> {
    let ip_udp_overhead = IpVersion::of(&a.listen).l3_overhead();
    let mtu = match iface {
        Some(i) => Some(i.mtu),
        None => Interface::holding(a.listen.ip()).ok().flatten().map(|i| i.mtu),
    };
    Ok(RecvOptions {
        keys: load_keys(a.key_file.as_deref())?,
        require_encryption: a.require_encryption,
        out: a.out.clone(),
        policy,
        idle_timeout: seconds(a.timeout, "--timeout")?,
        wait_for_sender: a.wait.map(|w| seconds(w, "--wait")).transpose()?,
        allow_from: a.allow_from,
        max_size: a.max_size,
        max_files: a.max_files,
        max_datagram: mtu.map(|mtu| (mtu as usize).saturating_sub(ip_udp_overhead)),
        ip_udp_overhead,
        tcp_only: a.mode() == RecvMode::Tcp,
        no_resume: a.no_resume,
        intervals,
    })
}

/// `--mode afxdp`: our XDP program steers the data port into a socket per
/// queue.
fn receive_afxdp(
    a: &RecvArgs,
    iface: &Interface,
    knobs: TestKnobs,
    ctrl: &mut Control,
    opts: &mut RecvOptions,
    listener: &std::net::TcpListener,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    let mut rx = AfxdpReceiver::open(iface, a.listen, knobs, a.xdp_bind.into(), a.queues).map_err(|e| {
        if nix::unistd::geteuid().is_root() {
            return e;
        }
        e.context("--mode afxdp needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_NET_RAW); `recv --mode udp` needs none")
    })?;
    // Without multi-buffer AF_XDP, less than the MTU: senders learn it.
    opts.max_datagram = Some((rx.max_packet() as usize).saturating_sub(opts.ip_udp_overhead));
    let mode = rx.mode().name();
    let queues = rx.queues();
    ready(
        quiet,
        format_args!(
            "{} ({mode}, {queues} queue{} bound, XDP {}, packets up to {} B{})",
            a.listen,
            if queues == 1 { "" } else { "s" },
            rx.steering().mode().name(),
            rx.max_packet(),
            if rx.multi_buffer() { " as multi-buffer chains" } else { "" }
        ),
    );
    Ok(match receive::run(mode, rx.data_paths(), ctrl, opts, Some(listener)) {
        Outcome::Done(mut report) => {
            report.path_stats = Some(PathStats { xdp: Some(rx.steering().counters()), xsk: Some(rx.socket_stats()) });
            Outcome::Done(report)
        }
        other => other,
    })
}

/// `--mode udp`: a plain socket. The loss knob lives in our XDP program;
/// with no socket in its map it passes every surviving packet to the stack.
fn receive_udp(
    a: &RecvArgs,
    iface: Option<&Interface>,
    knobs: TestKnobs,
    ctrl: &mut Control,
    opts: &RecvOptions,
    listener: &std::net::TcpListener,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    let steering = match (iface, knobs != TestKnobs::default()) {
        (Some(i), true) => Some(Steering::attach(&i.name, i.index, None, a.listen.port(), knobs)?),
        (None, true) => bail!("--inject-loss and --inject-capacity need --iface (our XDP program injects them)"),
        _ => None,
    };
    let udp = UdpReceiver::bind(a.listen)?;
    ready(quiet, format_args!("{} (udp)", a.listen));
    let paths: Vec<receive::BoxedPath<'_>> = vec![Box::new(udp)];
    Ok(match receive::run("udp", paths, ctrl, opts, Some(listener)) {
        Outcome::Done(mut report) => {
            report.path_stats = steering.as_ref().map(|s| PathStats { xdp: Some(s.counters()), xsk: None });
            Outcome::Done(report)
        }
        other => other,
    })
}

/// The line scripts wait for (on stderr): the receiver takes packets now.
pub(crate) fn ready(quiet: bool, what: std::fmt::Arguments<'_>) {
    if !quiet {
        eprintln!("xdpblast recv: ready, listening on {what}");
    }
}

pub(crate) fn finish_tcp(report: tcp::TcpReport, json: bool) -> anyhow::Result<bool> {
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(e) = &report.error {
        eprintln!("xdpblast: error: {e}");
    }
    Ok(report.summary.verified)
}
