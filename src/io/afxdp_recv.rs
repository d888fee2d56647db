//! The AF_XDP receive path: our XDP program steers the data port into one XSK
//! per receive queue; frames are parsed in place and recycled to the fill ring.
//! Above one UMEM frame (jumbo MTUs) the sockets bind with XDP_USE_SG and a
//! packet arrives as a descriptor chain, joined before it is parsed.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use serde::Serialize;
use tracing::{info, warn};

use super::receive::{BoxedPath, DataPath, Datagram, Payload};
use super::QueueCount;
use crate::afxdp::program::{Steering, TestKnobs};
use crate::afxdp::umem::UmemArea;
use crate::afxdp::xsk::{rx_frame_capacity, BindMode, Xsk, XskConfig, XskError, XskMode, RX_BATCH_MAX};
use crate::net::iface::Interface;
use crate::wire::frame::{parse_udp_chain_mut, ETH_LEN};
use crate::wire::WireError;

/// Bytes of each queue's receive UMEM, and the RX ring's size. The fill
/// ring can hold every frame, so a frame always has somewhere to go back to.
pub const RX_UMEM_BYTES: u32 = 64 << 20;
pub const RX_RING: u32 = 16384;
const BATCH: u32 = 256;

/// One XSK per queue, attached behind our XDP program.
pub struct AfxdpReceiver {
    // Sockets before the program: the map entries go with the sockets.
    sockets: Vec<Xsk>,
    steering: Steering,
    data_port: u16,
    /// The largest IP packet the sockets take whole.
    max_packet: u32,
    multi_buffer: bool,
}

/// Binds one receive socket on a UMEM of its own. Where the first queue
/// cannot bind with multi-buffer (a kernel before 6.6, a driver without
/// it), binds without and says so: the receiver then takes packets of one
/// UMEM frame, and senders learn that size in its HelloAck. Returns the
/// socket and whether it takes chains.
fn bind_queue(mut cfg: XskConfig, frames: u32, frame_size: u32, mtu: u32) -> Result<(Xsk, bool), XskError> {
    match Xsk::open(UmemArea::new(frames, frame_size)?, &cfg) {
        Err(XskError::Bind { errno: libc::EINVAL | libc::EOPNOTSUPP, multi_buffer: true, .. }) if cfg.queue == 0 => {
            cfg.multi_buffer = false;
            let x = Xsk::open(UmemArea::new(frames, frame_size)?, &cfg)?;
            warn!(
                iface = %cfg.ifname,
                mtu,
                max_packet = one_frame_packet(frame_size),
                "no multi-buffer AF_XDP (XDP_USE_SG) here: taking packets of at most one UMEM frame; senders are told"
            );
            Ok((x, false))
        }
        other => other.map(|x| (x, cfg.multi_buffer)),
    }
}

/// `recv --queues`: `None` for auto (every queue that binds), or the count
/// asked for, refused when the interface receives on more queues (data on
/// those would never reach a socket) or has fewer.
fn rx_queues(q: QueueCount, iface: &Interface) -> anyhow::Result<Option<u32>> {
    let in_use = iface.rx_queues_in_use().max(1);
    match q {
        QueueCount::Auto => Ok(None),
        QueueCount::Fixed(n) if n < in_use => anyhow::bail!(
            "--queues {n} but {} receives on {in_use} queues: data arriving on the others would reach no socket; give --queues {in_use} or auto",
            iface.name
        ),
        QueueCount::Fixed(n) if n > in_use => anyhow::bail!(
            "--queues {n} but {} has {in_use} RX queue(s); for a veth pair create it with `numtxqueues N numrxqueues N`",
            iface.name
        ),
        QueueCount::Fixed(n) => Ok(Some(n)),
    }
}

/// How the receive UMEM is cut for an interface's MTU: 2048-byte frames
/// while a packet fits one, 4096 above, and chains (XDP multi-buffer)
/// where a packet needs several. A frame receives at most its size less
/// the kernel's headroom.
fn rx_layout(mtu: u32) -> (u32, bool) {
    let frame = ETH_LEN as u32 + mtu;
    let frame_size = if frame <= rx_frame_capacity(2048) { 2048 } else { 4096 };
    (frame_size, frame > rx_frame_capacity(frame_size))
}

/// The largest IP packet a receiver without chains takes in one frame.
fn one_frame_packet(frame_size: u32) -> u32 {
    rx_frame_capacity(frame_size) - ETH_LEN as u32
}

impl AfxdpReceiver {
    pub fn open(
        iface: &Interface,
        listen: SocketAddr,
        knobs: TestKnobs,
        bind: BindMode,
        queues: QueueCount,
    ) -> anyhow::Result<AfxdpReceiver> {
        let wanted = rx_queues(queues, iface)?;
        let dst_ip = (!listen.ip().is_unspecified()).then_some(listen.ip());
        let steering = Steering::attach(&iface.name, iface.index, dst_ip, listen.port(), knobs)?;
        // Netlink reports the queues a device has room for, not how many are
        // in use (a veth allocates one per CPU): with auto, bind from queue 0
        // up and stop at the first the kernel calls out of range.
        let max_queues = wanted.unwrap_or(iface.rx_queues.clamp(1, 64));
        let (frame_size, mut multi_buffer) = rx_layout(iface.mtu);
        let frames = RX_UMEM_BYTES / frame_size;
        let mut sockets = Vec::with_capacity(max_queues as usize);
        for q in 0..max_queues {
            let cfg = XskConfig {
                ifname: iface.name.clone(),
                queue: q,
                rx_size: RX_RING.min(frames),
                tx_size: 0,
                fill_size: frames,
                comp_size: 64,
                bind,
                multi_buffer,
            };
            let mut xsk = match bind_queue(cfg, frames, frame_size, iface.mtu) {
                Ok((x, sg)) => {
                    multi_buffer = sg;
                    x
                }
                Err(XskError::Bind { errno: libc::EINVAL, .. }) if q > 0 && wanted.is_none() => break,
                Err(e) => return Err(e.into()),
            };
            let addrs: Vec<u64> = (0..frames).map(|i| xsk.area().addr(i)).collect();
            let filled = xsk.fill(addrs.into_iter(), frames);
            anyhow::ensure!(filled == frames, "could fill only {filled} of {frames} receive frames");
            steering.add_socket(q, xsk.fd())?;
            sockets.push(xsk);
        }
        let mode = sockets.first().map_or("none", |s| s.mode().name());
        let max_packet = if multi_buffer { iface.mtu } else { iface.mtu.min(one_frame_packet(frame_size)) };
        info!(queues = sockets.len(), mode, frame_size, multi_buffer, max_packet, "AF_XDP receive path ready");
        Ok(AfxdpReceiver { sockets, steering, data_port: listen.port(), max_packet, multi_buffer })
    }

    /// The largest IP packet this receiver takes: the MTU, or one UMEM
    /// frame's worth where multi-buffer AF_XDP is missing.
    pub fn max_packet(&self) -> u32 {
        self.max_packet
    }

    /// Whether the sockets take packets as descriptor chains (XDP_USE_SG).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
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
    pub fn socket_stats(&self) -> SocketStats {
        let per_queue: Vec<QueueDrops> = self
            .sockets
            .iter()
            .map(|s| {
                let st = s.statistics().unwrap_or_default();
                let drops = SocketDrops {
                    rx_dropped: st.rx_dropped,
                    rx_ring_full: st.rx_ring_full,
                    rx_fill_ring_empty: st.rx_fill_ring_empty_descs,
                    rx_bad_chains: s.rx_bad_chains,
                };
                QueueDrops { queue: s.queue_id(), drops }
            })
            .collect();
        let total = per_queue.iter().fold(SocketDrops::default(), |t, q| t.plus(&q.drops));
        SocketStats { total, multi_buffer: self.multi_buffer, per_queue }
    }

    pub fn data_paths(&mut self) -> Vec<BoxedPath<'_>> {
        let port = self.data_port;
        self.sockets.iter_mut().map(|x| Box::new(XskPath { xsk: x, port }) as BoxedPath<'_>).collect()
    }
}

/// Packets the kernel dropped on a receive socket, by reason.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct SocketDrops {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    /// Descriptor chains we refused (too long, or cut off).
    pub rx_bad_chains: u64,
}

impl SocketDrops {
    fn plus(self, o: &SocketDrops) -> SocketDrops {
        SocketDrops {
            rx_dropped: self.rx_dropped + o.rx_dropped,
            rx_ring_full: self.rx_ring_full + o.rx_ring_full,
            rx_fill_ring_empty: self.rx_fill_ring_empty + o.rx_fill_ring_empty,
            rx_bad_chains: self.rx_bad_chains + o.rx_bad_chains,
        }
    }
}

/// One receive queue's socket's drops: where a queue's thread fell behind.
#[derive(Debug, Clone, Serialize)]
pub struct QueueDrops {
    pub queue: u32,
    #[serde(flatten)]
    pub drops: SocketDrops,
}

/// The receive sockets' figures in the report (`path_stats.xsk`).
#[derive(Debug, Clone, Serialize)]
pub struct SocketStats {
    /// Summed over the queues.
    #[serde(flatten)]
    pub total: SocketDrops,
    pub multi_buffer: bool,
    pub per_queue: Vec<QueueDrops>,
}

struct XskPath<'a> {
    xsk: &'a mut Xsk,
    port: u16,
}

impl DataPath for XskPath<'_> {
    fn poll(&mut self, f: &mut dyn FnMut(&mut [Datagram<'_>])) -> io::Result<usize> {
        let port = self.port;
        let n = self.xsk.receive(BATCH, |packets| {
            // On the stack: a receive allocates nothing.
            let mut batch: [Datagram<'_>; RX_BATCH_MAX] = std::array::from_fn(|_| Err(WireError::NotUdp));
            let count = packets.len();
            for (slot, p) in batch.iter_mut().zip(packets.iter_mut()) {
                let rest = p.rest;
                *slot = match parse_udp_chain_mut(std::mem::take(&mut p.head), rest) {
                    Ok((src, dst, head)) if dst.port() == port => Ok((src, Payload { head, rest })),
                    Ok(_) => Err(WireError::NotUdp),
                    Err(e) => Err(e),
                };
            }
            f(&mut batch[..count]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_layout_leaves_the_kernel_its_headroom() {
        assert_eq!(rx_layout(1500), (2048, false));
        // 1,814 bytes on the wire: more than a 2 KiB frame receives.
        assert_eq!(rx_layout(1800), (4096, false));
        assert_eq!(rx_layout(3826), (4096, false));
        assert_eq!(rx_layout(3827), (4096, true), "above 3,840 bytes a frame takes a chain");
        assert_eq!(rx_layout(9000), (4096, true));
        assert_eq!(one_frame_packet(4096), 3826, "what a receiver without chains tells senders");
        assert_eq!(one_frame_packet(2048), 1778);
    }
}
