//! One sender's session: what it announced, which chunks have arrived,
//! and the marks its NACK rounds reason from.

use std::net::SocketAddr;
use std::time::Instant;

use crate::proto::auth::DataKey;
use crate::proto::chunkset::ChunkSet;
use crate::wire::message::{
    lane_of, Cipher, DataPorts, FileAttrs, Message, Resume, SessionInfo, SourceId, TreeShape, LANE_RUN,
};

#[derive(Debug)]
pub(super) enum State {
    Listening,
    Receiving,
    Verifying,
    /// Done was sent; `ok` says whether the digest matched.
    Complete {
        ok: bool,
        last_probe: Instant,
    },
    Finished,
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: u64,
    /// Our answer to its first Hello, carried by every later datagram.
    pub(super) cookie: u64,
    pub(super) peer: SocketAddr,
    /// The sender's transmit queues' source ports (its Hello's list), from
    /// which data is taken as from `peer`'s own port.
    pub(super) data_ports: DataPorts,
    pub(super) info: SessionInfo,
    pub(super) via_tcp: bool,
    pub(super) chunks: ChunkSet,
    /// Highest chunk index seen + 1, now and at the previous NACK tick.
    pub(super) high: u64,
    pub(super) high_at_last_tick: u64,
    /// With several lanes (transmit queues, see [`LANE_RUN`]): each lane's
    /// highest chunk + 1, now and at the previous tick. A lane's first pass
    /// arrives in order, so a gap below every lane's mark is a loss, while
    /// one above a lagging lane's may still be on its way.
    pub(super) lane_high: Vec<u64>,
    pub(super) lane_high_at_last_tick: Vec<u64>,
    /// The data-path Meta that closes a pass arrived: every gap before it is
    /// a loss (it travels behind the data, in order).
    pub(super) end_seen: bool,
    /// An end probe arrived on the control path. It overtakes data still
    /// queued for us, so it counts only once the data path has gone quiet.
    pub(super) end_probed: bool,
    /// Closing Metas seen: the sender's marks in its send sequence after the
    /// first pass. Reported as position `n_chunks + markers`.
    pub(super) markers: u64,
    /// Since when the driver has found the data path empty (cleared by data).
    pub(super) idle_since: Option<Instant>,
    pub(super) round: u64,
    pub(super) digest: Option<[u8; 32]>,
    /// First chunk not yet counted in a loss report.
    pub(super) loss_from: u64,
    /// With a key: the key the data frames' tags are checked (and their
    /// payloads opened) with.
    pub(super) data_key: Option<std::sync::Arc<DataKey>>,
    /// The AEAD of an encrypted session (the data frames', or over TCP the
    /// records').
    pub(super) encrypted: Option<Cipher>,
    /// A tree's session, until the driver has made its files
    /// ([`super::Receiver::release_hold`]): chunks from this one on (past
    /// the manifest) are dropped, and the reported prefix stays below it,
    /// so the sender holds them back.
    pub(super) held_from: Option<u64>,
    /// Where an interrupted transfer's stream resumes: offered by the
    /// driver (it holds a verified prefix), then settled by the sender's
    /// answer. Echoed in every HelloAck.
    pub(super) resume: Option<Resume>,
}

/// Most chunks of a session whose chunks are below [`MIN_CHUNK_SIZE`]: an
/// 8 KiB bitmap.
pub(super) const MAX_TINY_CHUNKS: u64 = 1 << 16;

/// With lanes: NACK rounds of silence on the data path, after the sender's
/// End probe, before the tails of the lanes the closing Meta did not end
/// count as lost (a lane may lag that long behind another).
pub(super) const LANES_QUIET_ROUNDS: u32 = 4;

/// What a Hello says, once its seal and name are checked.
pub(super) struct HelloFields {
    pub(super) session: u64,
    pub(super) info: SessionInfo,
    pub(super) source: SourceId,
    pub(super) via_tcp: bool,
    pub(super) encrypted: Option<Cipher>,
    pub(super) name: Option<String>,
    pub(super) data_ports: DataPorts,
    pub(super) attrs: Option<FileAttrs>,
    pub(super) tree: Option<TreeShape>,
    pub(super) resume_from: Option<u64>,
}

impl Session {
    /// Data comes from the Hello's address, or from its IP and one of the
    /// transmit queues' ports it listed: `Some` with the lane it came on
    /// (where there are lanes), `None` from anywhere else.
    pub(super) fn data_source(&self, from: SocketAddr) -> Option<Option<usize>> {
        if from.ip() != self.peer.ip() {
            return None;
        }
        match self.data_ports.as_slice().iter().position(|&p| p == from.port()) {
            Some(lane) => Some(Some(lane)),
            None => (from == self.peer).then_some(None),
        }
    }

    /// With several lanes: the chunk below which every gap is a loss, as
    /// of the previous tick. Lanes take runs of [`LANE_RUN`] chunks in
    /// turn and each arrives in order, so a chunk is overdue once its lane
    /// has passed it; the lowest mark of the lanes still due to carry a
    /// chunk above it bounds what is surely overdue. A lane whose chunks
    /// all lie below a mark (it ended its part) does not hold it back.
    pub(super) fn lanes_watermark(&self) -> u64 {
        let n = self.lane_high_at_last_tick.len() as u64;
        let run = LANE_RUN;
        self.lane_high_at_last_tick
            .iter()
            .enumerate()
            .filter_map(|(j, &h)| {
                // The first chunk of lane j at or above its mark (its next
                // run's start when the mark ends a run), if in the file.
                let mut next = h;
                if lane_of(h, n as usize) != j {
                    let cycle = h / (run * n);
                    let start = (cycle * n + j as u64) * run;
                    next = if start >= h { start } else { start + run * n };
                }
                (next < self.info.n_chunks).then_some(next)
            })
            .min()
            .unwrap_or(self.info.n_chunks)
    }

    /// How far through the sender's send sequence we have seen: the first
    /// pass's high-water mark, then `n_chunks` plus the closing markers seen.
    pub(super) fn position(&self) -> u64 {
        if self.markers > 0 {
            self.info.n_chunks + self.markers
        } else {
            self.high
        }
    }

    /// The cumulative ack: chunks below it are held (the sender may reuse
    /// their frames).
    pub(super) fn reported_prefix(&self) -> u64 {
        match self.held_from {
            Some(h) => self.chunks.prefix().min(h.saturating_sub(1)),
            None => self.chunks.prefix(),
        }
    }

    /// Encodes a datagram to this session's sender, with its cookie.
    pub(super) fn encode(&self, msg: &Message<'_>) -> (SocketAddr, Vec<u8>) {
        (self.peer, msg.encode(self.cookie))
    }
}
