//! The AF_XDP receive path: our XDP program steers the data port into one XSK
//! per receive queue; frames are parsed in place and recycled to the fill ring.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use tracing::info;

use super::receive::{DataPath, Datagram};
use crate::afxdp::program::{Steering, TestKnobs};
use crate::afxdp::umem::UmemArea;
use crate::afxdp::xsk::{BindMode, Xsk, XskConfig, XskError, XskMode};
use crate::net::iface::Interface;
use crate::wire::frame::parse_udp;
use crate::wire::WireError;

/// Frames per receive UMEM, and the ring sizes. The fill ring can hold every
/// frame, so a frame always has somewhere to go back to.
pub const RX_FRAMES: u32 = 32768;
pub const RX_RING: u32 = 16384;
const BATCH: u32 = 256;

/// One XSK per queue, attached behind our XDP program.
pub struct AfxdpReceiver {
    // Sockets before the program: the map entries go with the sockets.
    sockets: Vec<Xsk>,
    steering: Steering,
    data_port: u16,
}

impl AfxdpReceiver {
    pub fn open(
        iface: &Interface,
        listen: SocketAddr,
        knobs: TestKnobs,
        bind: BindMode,
    ) -> anyhow::Result<AfxdpReceiver> {
        let dst_ip = (!listen.ip().is_unspecified()).then_some(listen.ip());
        let steering = Steering::attach(&iface.name, iface.index, dst_ip, listen.port(), knobs)?;
        // Netlink reports the queues a device has room for, not how many are
        // in use (a veth allocates one per CPU): bind from queue 0 up and stop
        // at the first the kernel calls out of range.
        let max_queues = iface.rx_queues.clamp(1, 64);
        let mut sockets = Vec::with_capacity(max_queues as usize);
        for q in 0..max_queues {
            let area = UmemArea::new(RX_FRAMES, 2048)?;
            let cfg = XskConfig {
                ifname: iface.name.clone(),
                queue: q,
                rx_size: RX_RING,
                tx_size: 0,
                fill_size: RX_FRAMES,
                comp_size: 64,
                bind,
            };
            let mut xsk = match Xsk::open(area, &cfg) {
                Ok(x) => x,
                Err(XskError::Bind { errno: libc::EINVAL, .. }) if q > 0 => break,
                Err(e) => return Err(e.into()),
            };
            let addrs: Vec<u64> = (0..RX_FRAMES).map(|i| xsk.area().addr(i)).collect();
            let filled = xsk.fill(addrs.into_iter(), RX_FRAMES);
            anyhow::ensure!(filled == RX_FRAMES, "could fill only {filled} of {RX_FRAMES} receive frames");
            steering.add_socket(q, xsk.fd())?;
            sockets.push(xsk);
        }
        let mode = sockets.first().map_or("none", |s| s.mode().name());
        info!(queues = sockets.len(), mode, "AF_XDP receive path ready");
        Ok(AfxdpReceiver { sockets, steering, data_port: listen.port() })
    }

    pub fn mode(&self) -> XskMode {
        self.sockets.first().map_or(XskMode::Copy, |s| s.mode())
    }

    pub fn queues(&self) -> usize {
        self.sockets.len()
    }

    pub fn steering(&self) -> &Steering {
        &self.steering
    }

    /// Kernel-side drops on our sockets (RX ring full, fill ring empty...).
    pub fn socket_stats(&self) -> serde_json::Value {
        let mut rx_dropped = 0;
        let mut ring_full = 0;
        let mut fill_empty = 0;
        for s in &self.sockets {
            if let Some(st) = s.statistics() {
                rx_dropped += st.rx_dropped;
                ring_full += st.rx_ring_full;
                fill_empty += st.rx_fill_ring_empty_descs;
            }
        }
        serde_json::json!({"rx_dropped": rx_dropped, "rx_ring_full": ring_full, "rx_fill_ring_empty": fill_empty})
    }

    pub fn data_paths(&mut self) -> Vec<Box<dyn DataPath + '_>> {
        let port = self.data_port;
        self.sockets.iter_mut().map(|x| Box::new(XskPath { xsk: x, port }) as Box<dyn DataPath>).collect()
    }
}

struct XskPath<'a> {
    xsk: &'a mut Xsk,
    port: u16,
}

impl DataPath for XskPath<'_> {
    fn poll(&mut self, f: &mut dyn FnMut(&[Datagram<'_>])) -> io::Result<usize> {
        let port = self.port;
        let n = self.xsk.receive(BATCH, |frames| {
            let batch: Vec<Datagram<'_>> = frames
                .iter()
                .map(|frame| match parse_udp(frame) {
                    Ok(d) if d.dst.port() == port => Ok((d.src, d.payload)),
                    Ok(_) => Err(WireError::NotUdp),
                    Err(e) => Err(e),
                })
                .collect();
            f(&batch);
        });
        Ok(n as usize)
    }

    fn before_block(&mut self) {
        // Drivers that need it are woken before we sleep on an empty ring.
        self.xsk.wake_rx_if_needed();
    }

    fn fd(&self) -> RawFd {
        self.xsk.fd()
    }
}
