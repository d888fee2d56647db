//! The control channel: an ordinary UDP socket on each side.
//!
//! The receiver's control port is its data port + 1. NACKs, acks and probes
//! travel here, outside the data path and outside any loss injection.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::os::sys::{Doing, SysError};
use crate::proto::Sender;

pub fn control_port(data_port: u16) -> io::Result<u16> {
    data_port.checked_add(1).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the data port must be below 65535 (control uses port + 1)")
    })
}

pub struct Control {
    sock: UdpSocket,
    buf: Vec<u8>,
    /// Before the session is acknowledged: when the peer's port first
    /// answered "closed" (ICMP port unreachable), and when it last did.
    refused: Option<(Instant, Instant)>,
}

impl Control {
    pub fn bind(addr: SocketAddr) -> io::Result<Control> {
        let sock = UdpSocket::bind(addr).doing(|| format!("binding the control socket to {addr}"))?;
        sock.set_nonblocking(true)?;
        Ok(Control { sock, buf: vec![0u8; 65536], refused: None })
    }

    /// Binds to `local` and connects to `peer`, so ICMP errors (the peer's port
    /// closed) come back as ECONNREFUSED.
    pub fn connect(local: SocketAddr, peer: SocketAddr) -> io::Result<Control> {
        let c = Control::bind(local)?;
        c.sock.connect(peer).map_err(|e| {
            let version = if peer.is_ipv4() { "IPv4" } else { "IPv6" };
            let hint = match e.raw_os_error() {
                Some(libc::EADDRNOTAVAIL | libc::ENETUNREACH) => {
                    format!(" (this host has no {version} address or route for it)")
                }
                _ => String::new(),
            };
            io::Error::from(SysError::new(format!("cannot reach {peer}"), e).hint(hint))
        })?;
        Ok(c)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Next datagram, or `None` when nothing is waiting.
    pub fn recv(&mut self) -> io::Result<Option<(SocketAddr, &[u8])>> {
        crate::os::syscount::count(1);
        match self.sock.recv_from(&mut self.buf) {
            Ok((n, from)) => Ok(Some((from, &self.buf[..n]))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn send_to(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        crate::os::syscount::count(1);
        self.sock.send_to(bytes, to).map(|_| ())
    }

    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        crate::os::syscount::count(1);
        self.sock.send(bytes).map(|_| ())
    }
}

/// Takes every waiting control datagram into the sender, sends what is due,
/// and runs its timers. Fails when the receiver's control port closes after
/// the handshake (it exited).
pub fn service(sender: &mut Sender, ctrl: &mut Control, now: Instant, peer: SocketAddr) -> anyhow::Result<()> {
    loop {
        match ctrl.recv() {
            Ok(Some((_, bytes))) => {
                let _ = sender.on_control(now, bytes);
            }
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                if sender.is_acked() {
                    anyhow::bail!("the receiver's control port {peer} is closed: the receiver exited");
                }
                // A receiver started a moment after us is not up yet: the
                // handshake keeps trying for a while (see `handshake`).
                let first = ctrl.refused.map_or(now, |(f, _)| f);
                ctrl.refused = Some((first, now));
                break;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("control socket")),
        }
    }
    while let Some(c) = sender.poll_control(now) {
        if let Err(e) = ctrl.send(&c) {
            if e.raw_os_error() != Some(libc::ECONNREFUSED) {
                tracing::warn!("control send: {e}");
            }
        }
    }
    if sender.poll_timeout().is_some_and(|t| t <= now) {
        sender.handle_timeout(now);
    }
    Ok(())
}

/// Answers the receiver's offer to resume, if one waits: its first `from`
/// bytes' digest against ours (`prefix_digest`), or start over when they
/// differ or `refuse` (`send --no-resume`). Says which (`print`: on
/// standard output too, with the interval lines).
pub fn answer_resume(
    sender: &mut Sender,
    now: Instant,
    refuse: bool,
    print: bool,
    prefix_digest: &mut dyn FnMut(u64) -> std::io::Result<[u8; 32]>,
) -> anyhow::Result<()> {
    let Some((from, theirs)) = sender.resume_offer() else { return Ok(()) };
    let size = sender.info().file_size;
    let (what, total) = (crate::report::human_bytes(from), crate::report::human_bytes(size));
    let accept = if refuse {
        tracing::warn!(
            "the receiver holds the first {what} of {total} from an interrupted transfer; --no-resume: starting over"
        );
        false
    } else {
        let ours = prefix_digest(from)
            .map_err(|e| anyhow::anyhow!("reading the input to check the receiver's partial: {e}"))?;
        // Compared in constant time by the library.
        let same = blake3::Hash::from(ours) == blake3::Hash::from(theirs);
        if same {
            tracing::info!(
                "resuming: the receiver holds the first {what} of {total}, the same as ours; sending the rest"
            );
            if print {
                println!("Resuming: the receiver holds the first {what} of {total} (checked); sending the rest");
            }
        } else {
            tracing::warn!(
                "the receiver's partial copy differs from the first {what} of ours (the input changed since the interrupted transfer); starting over"
            );
        }
        same
    };
    sender.answer_resume(now, accept);
    Ok(())
}

/// How long the receiver's control port may answer "closed" (ICMP port
/// unreachable) before the handshake gives up: a receiver started together
/// with the sender is up well within it.
pub const REFUSED_FOR: Duration = Duration::from_secs(1);

/// Says Hello until the receiver has opened the session (the cookie's round
/// trip included), or fails with why it did not: at once (after
/// [`REFUSED_FOR`]) when nothing listens on the receiver's control port, at
/// the sender's timeout when nothing answers at all. `each_turn` runs every
/// turn, after the control socket was read: progress lines, and a new plan
/// when the receiver takes smaller datagrams ([`Sender::reshape_needed`]).
pub fn handshake(
    sender: &mut Sender,
    ctrl: &mut Control,
    peer: SocketAddr,
    each_turn: &mut dyn FnMut(&mut Sender, Instant) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    while !sender.is_acked() {
        let now = Instant::now();
        service(sender, ctrl, now, peer)?;
        each_turn(sender, now)?;
        if let Some((first, last)) = ctrl.refused {
            if last.saturating_duration_since(first) >= REFUSED_FOR && now.saturating_duration_since(last) < REFUSED_FOR
            {
                anyhow::bail!(
                    "nothing is listening on {peer} (connection refused): is `xdpblast recv` running there with --listen on port {}?",
                    peer.port().saturating_sub(1)
                );
            }
        }
        if crate::os::signals::stop_requested() {
            anyhow::bail!("interrupted");
        }
        if let Some(r) = sender.outcome() {
            // The protocol's own error, kept typed: `send --mode auto`
            // tells a TCP-only receiver by it.
            return Err(match r {
                Err(e) => anyhow::Error::new(e.clone()),
                Ok(()) => anyhow::anyhow!("handshake ended early"),
            });
        }
        let wait =
            sender.poll_timeout().map_or(Duration::from_millis(5), |t| t.saturating_duration_since(Instant::now()));
        crate::os::sys::wait_readable(&[ctrl.fd()], wait.min(Duration::from_millis(20)));
    }
    Ok(())
}
