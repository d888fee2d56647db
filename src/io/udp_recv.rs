//! The plain UDP-socket receive path: `recvmmsg` in batches. The interop check,
//! and the mode for hosts without XDP.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use tracing::{debug, info};

use super::receive::{DataPath, Datagram, Payload};
use crate::os::sys::setsockopt_u32;
use crate::os::sys::Doing;
use crate::wire::WireError;

const BATCH: usize = 64;
const SLOT: usize = 9216;
const RCVBUF: u32 = 64 << 20;

pub struct UdpReceiver {
    sock: UdpSocket,
    bufs: Vec<u8>,
    iov: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iov` and `hdrs` point into this struct's own
// heap buffers (`bufs`, `iov`, `addrs`), which move with it and are reached
// only through `&mut self`; nothing is shared with another thread.
unsafe impl Send for UdpReceiver {}

impl UdpReceiver {
    pub fn bind(listen: SocketAddr) -> io::Result<UdpReceiver> {
        let sock = UdpSocket::bind(listen).doing(|| format!("binding the data socket to {listen}"))?;
        sock.set_nonblocking(true)?;
        // A deep socket buffer absorbs bursts; FORCE needs CAP_NET_ADMIN.
        if setsockopt_u32(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let r = setsockopt_u32(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
            debug!("SO_RCVBUFFORCE refused; SO_RCVBUF: {r:?} (capped by net.core.rmem_max)");
        }
        info!(%listen, "UDP receive path ready");
        Ok(UdpReceiver {
            sock,
            bufs: vec![0u8; BATCH * SLOT],
            iov: Vec::with_capacity(BATCH),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        })
    }
}

/// The sender's address the kernel wrote, IPv4 or IPv6.
fn socket_addr(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(a.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // it is large and aligned enough for.
            let v4 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(v6.sin6_port), v6.sin6_flowinfo, v6.sin6_scope_id)))
        }
        _ => None,
    }
}

impl DataPath for UdpReceiver {
    fn poll(&mut self, f: &mut dyn FnMut(&mut [Datagram<'_>])) -> io::Result<usize> {
        self.iov.clear();
        for slot in self.bufs.chunks_exact_mut(SLOT) {
            self.iov.push(libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: SLOT });
        }
        for i in 0..BATCH {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        crate::os::syscount::count(1);
        // SAFETY: every header points at a live iovec over its own SLOT-byte
        // region of `bufs` and at its own sockaddr_storage; all outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        // On the stack: a receive allocates nothing.
        let mut batch: [Datagram<'_>; BATCH] = std::array::from_fn(|_| Err(WireError::NotUdp));
        let bufs = self.bufs.chunks_exact_mut(SLOT);
        for (i, (slot, buf)) in batch.iter_mut().zip(bufs).enumerate().take(n) {
            let len = (self.hdrs[i].msg_len as usize).min(SLOT);
            *slot = socket_addr(&self.addrs[i])
                .ok_or(WireError::NotUdp)
                .map(|from| (from, Payload::whole(&mut buf[..len])));
        }
        if n > 0 {
            f(&mut batch[..n]);
        }
        Ok(n)
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
