//! The attacker's tools: a raw packet socket on an interface (it sees every
//! frame a flooding bridge delivers, and sends frames with any addresses),
//! and a sniffer that learns a session from the wire.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use xdpblast::wire::frame::{parse_udp, FrameTemplate};
use xdpblast::wire::message::Message;

pub struct PacketSocket {
    fd: OwnedFd,
}

const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

impl PacketSocket {
    /// A packet socket bound to `ifname` in the calling thread's namespace.
    pub fn open(ifname: &str) -> PacketSocket {
        let index = nix::net::if_::if_nametoindex(ifname).unwrap_or_else(|e| panic!("no interface {ifname}: {e}"));
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(ETH_P_ALL_BE)) };
        assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are plain integers.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL_BE;
        sll.sll_ifindex = index as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` is a valid sockaddr_ll of `len` bytes for the call's duration.
        let r = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(sll).cast(), len) };
        assert_eq!(r, 0, "binding the packet socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        // SAFETY: SO_RCVTIMEO takes a timeval, passed with its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        PacketSocket { fd }
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is a live buffer of `frame.len()` bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "sending a frame: {}", std::io::Error::last_os_error());
    }

    /// The next frame seen, or `None` after a short wait.
    pub fn recv<'a>(&self, buf: &'a mut [u8]) -> Option<&'a [u8]> {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then(|| &buf[..n as usize])
    }
}

/// What an on-path attacker learns from one sniffed data frame.
#[derive(Debug, Clone, Copy)]
pub struct Sniffed {
    pub session: u64,
    pub cookie: u64,
    pub chunk: u64,
    /// The frame's addresses, for forging more "from" the same sender.
    pub tpl: FrameTemplate,
    /// The UDP payload length of the frame seen.
    pub datagram_len: usize,
    /// The whole-file digest, when the message carried it (Meta, End).
    pub digest: Option<[u8; 32]>,
}

/// Watches the wire until a datagram for UDP port `port` parses as an
/// xdpblast message with a nonzero cookie; returns what it reveals.
pub fn sniff(sock: &PacketSocket, port: u16, within: Duration) -> Option<Sniffed> {
    sniff_where(sock, port, within, |_| true)
}

/// Like [`sniff`], for the first such message that `want` accepts.
pub fn sniff_where(
    sock: &PacketSocket,
    port: u16,
    within: Duration,
    want: impl Fn(&Sniffed) -> bool,
) -> Option<Sniffed> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let Some(frame) = sock.recv(&mut buf) else { continue };
        let Ok(d) = parse_udp(frame) else { continue };
        if d.dst.port() != port {
            continue;
        }
        let Ok((msg, cookie)) = Message::parse_with_cookie(d.payload) else { continue };
        if cookie == 0 {
            continue;
        }
        let (session, chunk, digest) = match msg {
            Message::Data { session, chunk, .. } => (session, chunk, None),
            Message::Meta { session, info, .. } | Message::End { session, info, .. } => (session, 0, info.digest),
            Message::Hello { session, .. } | Message::Nack { session, .. } => (session, 0, None),
            _ => continue,
        };
        let (src, dst) = (d.src, d.dst);
        let mut dst_mac = [0u8; 6];
        let mut src_mac = [0u8; 6];
        dst_mac.copy_from_slice(&frame[0..6]);
        src_mac.copy_from_slice(&frame[6..12]);
        let tpl = FrameTemplate { src_mac, dst_mac, src, dst, ttl: 64 };
        let seen = Sniffed { session, cookie, chunk, tpl, datagram_len: d.payload.len(), digest };
        if want(&seen) {
            return Some(seen);
        }
    }
    None
}
