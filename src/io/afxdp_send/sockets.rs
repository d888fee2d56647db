//! The transmit sockets, one per queue on one UMEM ring, their source
//! ports, and the kicker threads of queues past the first.

use std::net::SocketAddr;

use anyhow::Context;
use tracing::info;

use super::{COMP_RING, TX_RING, UNREAD_RX_RING};
use crate::afxdp::umem::UmemArea;
use crate::afxdp::xsk::{BindMode, Queue, Xsk, XskConfig, XskMode};
use crate::datapath::kicker::{KickCounts, KickRequests};
use crate::datapath::plan::{FramePlan, FILL_SPARE};
use crate::net::iface::Interface;
use crate::wire::message::DataPorts;

/// A transmit-only socket's rings (queue 0; `Xsk::open_queues` takes others),
/// bound for descriptor chains when the plan's packets span several UMEM
/// frames.
pub(super) fn tx_config(ifname: &str, bind: BindMode, plan: &FramePlan) -> XskConfig {
    XskConfig {
        ifname: ifname.to_string(),
        queue: 0,
        rx_size: UNREAD_RX_RING,
        tx_size: TX_RING,
        fill_size: FILL_SPARE,
        comp_size: COMP_RING,
        bind,
        multi_buffer: plan.multi_buffer(),
    }
}

/// The UDP source port of each transmit queue: the control socket's for
/// queue 0, and one reserved by a bound socket for each other.
pub(crate) struct LanePorts {
    pub(super) ports: Vec<u16>,
    _held: Vec<std::net::UdpSocket>,
}

impl LanePorts {
    pub(crate) fn reserve(control: SocketAddr, queues: u32) -> anyhow::Result<LanePorts> {
        let mut ports = vec![control.port()];
        let mut held = Vec::new();
        for _ in 1..queues {
            let s = std::net::UdpSocket::bind(SocketAddr::new(control.ip(), 0))
                .context("reserving a source port for a transmit queue")?;
            ports.push(s.local_addr()?.port());
            held.push(s);
        }
        Ok(LanePorts { ports, _held: held })
    }

    /// What the Hello lists: every queue's port, when there are several.
    pub(super) fn announced(&self) -> DataPorts {
        if self.ports.len() > 1 {
            DataPorts::new(&self.ports).unwrap_or(DataPorts::NONE)
        } else {
            DataPorts::NONE
        }
    }
}

/// Binds one transmit socket per queue on `area` (a shared UMEM ring laid
/// out by `plan`), raises the copy-mode TX budget, and shares the spare
/// frames out over the fill rings. Transfers and raw mode both open theirs
/// here.
pub(crate) fn open_sockets(
    iface: &Interface,
    plan: &FramePlan,
    area: UmemArea,
    bind: BindMode,
    queues: u32,
) -> anyhow::Result<Xsk> {
    let ids: Vec<u32> = (0..queues).collect();
    let mut xsk = Xsk::open_queues(area, &tx_config(&iface.name, bind, plan), &ids)?;
    let mode = xsk.mode();
    info!(mode = mode.name(), umem_bytes = plan.umem_bytes(), slots = plan.slots, queues, "transmit sockets bound");
    // Some drivers need a populated fill ring even for TX-only sockets.
    let spare: Vec<u64> = plan.spare_frames().map(|i| xsk.area().addr(i)).collect();
    let share = (spare.len() / queues as usize).max(1);
    for (i, q) in xsk.queues_mut().iter_mut().enumerate() {
        if mode == XskMode::Copy {
            let _ = q.set_tx_budget(TX_RING);
        }
        let mine = spare.iter().copied().skip(i * share).take(share);
        q.fill(mine, FILL_SPARE);
    }
    Ok(xsk)
}

pub(super) type Kicking<'scope> = Vec<std::thread::ScopedJoinHandle<'scope, (KickCounts, f64)>>;

/// Starts a kicker thread for each of `queues` (all but queue 0, which the
/// loop kicks): each returns its counts and its CPU time.
pub(super) fn spawn_kickers<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    kickers: &'scope [KickRequests],
    queues: &[Queue],
) -> anyhow::Result<Kicking<'scope>> {
    kickers
        .iter()
        .zip(queues)
        .map(|(k, q)| {
            let handle = q.kick_handle();
            std::thread::Builder::new()
                .name(format!("xdpblast-kick{}", q.queue_id()))
                .spawn_scoped(scope, move || {
                    let counts = k.serve(|| handle.kick());
                    (counts, crate::os::process::Rusage::of_thread().cpu_s())
                })
                .context("starting a kicker thread")
        })
        .collect()
}

/// Stops the kicker threads once they have served what was asked; returns
/// each one's counts and CPU time.
pub(super) fn stop_kickers(kickers: &[KickRequests], kicking: Kicking<'_>) -> anyhow::Result<Vec<(KickCounts, f64)>> {
    for k in kickers {
        k.stop();
    }
    kicking.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("a kicker thread panicked"))).collect()
}
