//! What the receiver says on the control path: its cookie and HelloAck,
//! its NACK rounds (progress, loss, repairs), Done and Abort. Each is checked
//! against the session and the cookie before it changes anything.

use std::time::{Duration, Instant};

use super::{SendError, Sender, State, MAX_ROUND_JUMP};
use crate::wire::message::{Message, Nack};
use crate::wire::{untrusted_text, WireError};

impl Sender {
    /// A datagram from the receiver's control socket. Errors are for counting;
    /// the datagram is simply ignored.
    pub fn on_control(&mut self, now: Instant, bytes: &[u8]) -> Result<(), WireError> {
        let (msg, cookie) = Message::parse_with_cookie(bytes)?;
        if !self.authentic(bytes, &msg) {
            return Err(WireError::BadBody);
        }
        self.check_session(&msg)?;
        if self.take_cookie(now, cookie, &msg)? {
            return Ok(());
        }
        self.last_heard = now;
        match msg {
            Message::HelloAck { opened: false, .. } => {}
            Message::HelloAck { delay_us, resume, .. } => {
                self.take_resume(resume);
                self.on_hello_ack(now, delay_us)
            }
            Message::Nack { nack, .. } => self.on_nack(now, &nack),
            Message::Done { ok, digest, .. } => {
                self.state = State::Finished;
                let verified = ok && Some(digest) == self.info.digest;
                // The receiver may have finished before any end probe told it
                // the final retransmit count: one last End does, while it
                // lingers.
                self.final_end_due = verified;
                self.outcome = Some(if verified { Ok(()) } else { Err(SendError::DigestMismatch) });
            }
            Message::Abort { reason, .. } => {
                self.state = State::Finished;
                self.outcome = Some(Err(SendError::ReceiverAborted(untrusted_text(reason))));
            }
            _ => {}
        }
        Ok(())
    }

    /// Only the receiver's messages, for this session, while it runs.
    fn check_session(&self, msg: &Message<'_>) -> Result<(), WireError> {
        let session = match msg {
            Message::HelloAck { session, .. }
            | Message::Nack { session, .. }
            | Message::Done { session, .. }
            | Message::Abort { session, .. } => *session,
            _ => return Err(WireError::UnknownKind),
        };
        if session != self.session || matches!(self.state, State::Finished) {
            return Err(WireError::BadBody);
        }
        Ok(())
    }

    /// Once the receiver has given its cookie, everything from it carries
    /// the cookie; before, only its challenge and a refusal can come.
    /// `Ok(true)`: the message was the challenge, taken here.
    fn take_cookie(&mut self, now: Instant, cookie: u64, msg: &Message<'_>) -> Result<bool, WireError> {
        match (self.cookie, msg) {
            (Some(k), _) if k != cookie => {
                self.stats.bad_cookie += 1;
                Err(WireError::BadBody)
            }
            (None, Message::HelloAck { opened: false, tcp_only: true, .. }) if !self.cfg.via_tcp => {
                self.state = State::Finished;
                self.outcome = Some(Err(SendError::ReceiverTakesTcpOnly));
                Ok(true)
            }
            (None, Message::HelloAck { opened: false, max_datagram, .. }) if cookie != 0 => {
                let max_datagram = *max_datagram;
                self.cookie = Some(cookie);
                if !self.cfg.via_tcp && max_datagram > 0 && (max_datagram as usize) < self.datagram_len() {
                    self.reshape_to = Some(max_datagram);
                }
                if let State::Handshake { next_hello, .. } = &mut self.state {
                    *next_hello = now; // echo it at once
                }
                Ok(true)
            }
            (None, Message::Abort { .. }) => Ok(false),
            (None, _) => Err(WireError::BadBody),
            _ => Ok(false),
        }
    }

    /// The session is open: the round trip is measured (less the receiver's
    /// own delay preparing its output, which is not path time).
    fn on_hello_ack(&mut self, now: Instant, delay_us: u64) {
        let State::Handshake { last_hello, acked, .. } = &mut self.state else { return };
        self.last_progress = now;
        if !*acked {
            *acked = true;
            let rtt = last_hello
                .map(|t| now.saturating_duration_since(t).saturating_sub(Duration::from_micros(delay_us)))
                .unwrap_or_default();
            self.rtt = Some(rtt);
            self.repair_guard = self.cfg.repair_guard.max(rtt * 2);
        }
        if self.started && self.is_acked() {
            self.state = State::Transfer;
        }
    }

    fn on_nack(&mut self, now: Instant, nack: &Nack<'_>) {
        let sane = nack.round <= self.latest_round.saturating_add(MAX_ROUND_JUMP)
            && nack.prefix <= nack.received
            && nack.received <= self.info.n_chunks
            && nack.high <= self.info.n_chunks.saturating_add(self.markers_posted);
        if !sane {
            self.stats.nacks_out_of_window += 1;
            return;
        }
        self.latest_round = self.latest_round.max(nack.round);
        if !matches!(self.state, State::Transfer) {
            // While the driver prepares, the receiver's heartbeats show it
            // is still there.
            if self.is_acked() {
                self.last_progress = now;
            }
            return;
        }
        self.note_progress(now, nack);
        if nack.nbits > 0 && self.accept_round(now, nack) {
            self.queue_repairs(nack);
        }
    }

    /// What the receiver holds: the window, the stall clock and loss.
    fn note_progress(&mut self, now: Instant, nack: &Nack<'_>) {
        if nack.received > self.stats.peer_received {
            self.last_progress = now;
        }
        self.stats.peer_received = self.stats.peer_received.max(nack.received);
        if nack.prefix > self.stats.peer_prefix {
            self.stats.peer_prefix = nack.prefix;
            self.stalled_since = None;
        }
        if let (0, Some(l)) = (nack.part, nack.loss_bp) {
            self.stats.loss_reports += 1;
            self.loss_unread = Some(self.loss_unread.map_or(l, |o| o.max(l)));
        }
        // Past the first pass the reported position counts markers; the
        // window only cares about first-pass chunks.
        let high = nack.high.min(self.next_first_pass);
        if high > self.stats.peer_high {
            self.stats.peer_high = high;
            self.stalled_since = None;
        }
        if nack.part == 0 {
            // Part 0 starts at the first missing chunk.
            self.peer_first_missing = (nack.nbits > 0).then_some(nack.base);
        }
    }

    /// Whether this NACK part is one to act on: a new part of the current
    /// round, or the first of a newer round once the last repairs settled.
    fn accept_round(&mut self, now: Instant, nack: &Nack<'_>) -> bool {
        let same_round = self.round == Some(nack.round);
        let newer = self.round.is_none_or(|r| nack.round > r);
        let settled = self.repairs.is_empty() && self.last_repair_post.is_none_or(|t| now >= t + self.repair_guard);
        if same_round {
            // A duplicate datagram is not.
            return self.round_parts.insert(nack.part);
        }
        if newer && settled {
            self.round = Some(nack.round);
            self.round_parts.clear();
            self.round_parts.insert(nack.part);
            self.stats.nack_rounds += 1;
            return true;
        }
        self.stats.nacks_ignored += 1;
        false
    }

    /// Queues the reported losses for retransmit. Only chunks already sent
    /// can be lost; anything else is noise.
    fn queue_repairs(&mut self, nack: &Nack<'_>) {
        let limit = self.next_first_pass;
        let room = self.cfg.max_repairs.saturating_sub(self.repairs.len());
        let repair_pos = &self.repair_pos;
        let in_flight = |c: &u64| repair_pos.get(c).is_some_and(|&p| nack.high <= p);
        // A round whose chunks are all still in flight queues nothing, so
        // the next round is accepted at once.
        let before = self.repairs.len();
        let mut stale = 0u64;
        for c in nack.missing().filter(|c| *c < limit) {
            if c < self.floor {
                self.stats.repairs_unavailable += 1;
            } else if in_flight(&c) {
                stale += 1;
            } else if self.repairs.len() - before < room {
                self.repairs.push_back(c);
            }
        }
        // After the pass, only a marker moves the receiver's position. If
        // the one after our last repairs was lost, everything looks in
        // flight for ever: send another.
        if self.meta_last_sent && stale > 0 && self.repairs.len() == before {
            self.marker_due = true;
        }
    }
}
