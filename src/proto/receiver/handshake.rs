//! The control path: Hellos (with their cookie round trip and the checks
//! before a session opens), and the other control messages.

use std::net::SocketAddr;
use std::time::Instant;

use crate::proto::auth::DATA_TAG_LEN;
use crate::proto::chunkset::ChunkSet;
use crate::wire::message::{Cipher, Message, SessionInfo, TreeShape, HEADER_LEN, MIN_CHUNK_SIZE};
use crate::wire::untrusted_text;

use super::*;

impl Receiver {
    /// A datagram on the control socket.
    pub fn on_control(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let Err(r) = self.control(now, from, bytes) {
            self.stats.drops.add(r);
        }
    }

    fn control(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Result<(), DropReason> {
        let (msg, cookie) = Message::parse_with_cookie(bytes).map_err(DropReason::Wire)?;
        if let Message::Hello {
            session,
            info,
            source,
            via_tcp,
            keyed,
            encrypted,
            name,
            data_ports,
            attrs,
            tree,
            resume_from,
        } = msg
        {
            let admitted = self
                .key_matches(keyed, bytes)
                .map_err(|why| (why, DropReason::BadSeal))
                .and_then(|()| self.encryption_fits(encrypted).map_err(|why| (why, DropReason::WrongMode)));
            if let Err((why, reason)) = admitted {
                if self.session.is_none() {
                    self.refuse(from, session, why);
                }
                return Err(reason);
            }
            let name = crate::wire::safe_file_name(name).map(str::to_string);
            let hello =
                HelloFields { session, info, source, via_tcp, encrypted, name, data_ports, attrs, tree, resume_from };
            return self.hello(now, from, cookie, hello);
        }
        // Every sealed control message counts up: a replay is refused.
        if !self.authentic(bytes, true) {
            return Err(DropReason::BadSeal);
        }
        let s = self.session.as_mut().ok_or(DropReason::NoSession)?;
        let session = match msg {
            Message::End { session, .. } | Message::Abort { session, .. } => session,
            _ => return Err(DropReason::WrongKind),
        };
        if from != s.peer {
            return Err(DropReason::WrongSource);
        }
        if session != s.id {
            return Err(DropReason::WrongSession);
        }
        if cookie != s.cookie {
            return Err(DropReason::BadCookie);
        }
        match msg {
            Message::End { info, retransmits, .. } => {
                if !info.same_transfer(&s.info) {
                    return Err(DropReason::InfoMismatch);
                }
                s.info.digest = s.info.digest.or(info.digest);
                s.end_probed = true;
                self.stats.peer_retransmits = self.stats.peer_retransmits.max(retransmits);
                match &mut self.state {
                    State::Complete { ok, last_probe } => {
                        *last_probe = now;
                        let digest = s.digest.unwrap_or([0; 32]);
                        let reply = s.encode(&Message::Done { session, ok: *ok, digest });
                        self.transmit.push_back(reply);
                    }
                    // Report what is missing without waiting for the timer.
                    State::Receiving => self.next_nack = now,
                    _ => {}
                }
                self.maybe_verify();
            }
            Message::Abort { reason, .. } => self.fail(RecvError::PeerAborted(untrusted_text(reason))),
            _ => {}
        }
        Ok(())
    }

    /// Refuses a sender's Hello, telling it why; the driver learns it too
    /// ([`Receiver::take_refusal`]), for its operator.
    fn refuse(&mut self, to: SocketAddr, session: u64, reason: &str) {
        self.transmit.push_back((to, Message::Abort { session, reason }.to_vec()));
        if self.refusals.len() < MAX_QUEUED_REFUSALS {
            self.refusals.push_back((to, reason.to_string()));
        }
    }

    /// A Hello refused since the last call, and the reason its sender was
    /// given.
    pub fn take_refusal(&mut self) -> Option<(SocketAddr, String)> {
        self.refusals.pop_front()
    }

    /// Whether a Hello's sender and we agree on using a key, and its seal
    /// holds (no replay check: a Hello before the session has no counter to
    /// compare with, and only a sealed echo of the cookie opens anything).
    fn key_matches(&mut self, keyed: bool, bytes: &[u8]) -> Result<(), &'static str> {
        match (self.cfg.keys.is_some(), keyed) {
            (false, true) => Err("the sender uses a key; start the receiver with the same --key-file"),
            (true, false) => Err("this receiver requires a key; send with the same --key-file"),
            (true, true) if !self.authentic(bytes, false) => Err("wrong key: the Hello's seal does not verify"),
            _ => Ok(()),
        }
    }

    /// Whether a Hello's protection is what this receiver takes: with
    /// `--require-encryption`, only encrypted data.
    fn encryption_fits(&self, encrypted: Option<Cipher>) -> Result<(), &'static str> {
        match (self.cfg.require_encryption, encrypted) {
            (true, None) => Err("this receiver requires encryption; send without --no-encrypt"),
            _ => Ok(()),
        }
    }

    /// A Hello. Without our cookie it only earns one (no state is kept);
    /// with it, it opens the session. Every refusal tells the sender why.
    fn hello(&mut self, now: Instant, from: SocketAddr, cookie: u64, hello: HelloFields) -> Result<(), DropReason> {
        let HelloFields { session, info, source, via_tcp, encrypted, name, data_ports, attrs, tree, resume_from } =
            hello;
        if let Some(s) = &self.session {
            if s.id != session || s.peer != from {
                if matches!(self.state, State::Complete { .. }) {
                    return Err(DropReason::Finishing);
                }
                let busy = Message::Abort { session, reason: "receiver busy with another session" };
                self.transmit.push_back((from, busy.to_vec()));
                return Err(DropReason::Busy);
            }
            if cookie != s.cookie {
                // A repeat of the first Hello: answer the challenge again.
                self.transmit.push_back(s.encode(&Message::HelloAck {
                    session,
                    delay_us: 0,
                    opened: false,
                    tcp_only: false,
                    max_datagram: 0,
                    resume: None,
                }));
                return Ok(());
            }
            // Our ack was lost, or a keepalive while the sender prepares.
            if self.stats.first_data.is_none() {
                self.last_progress = now;
            }
            if let Some(from) = resume_from {
                self.settle_resume(from);
            }
            self.hello_ack_due.get_or_insert(now);
            return Ok(());
        }
        if self.cfg.allow_from.is_some_and(|ip| ip != from.ip()) {
            return Err(DropReason::Refused);
        }
        if let Err((drop, reason)) = self.admissible(&info, via_tcp, tree) {
            if drop == DropReason::WrongMode {
                // Said as a flag first, not only in words: a sender in auto
                // mode switches to TCP on it. The Abort behind it still tells
                // a sender that cannot trust the flag (it has a key and we
                // have none).
                let tcp = Message::HelloAck {
                    session,
                    delay_us: 0,
                    opened: false,
                    tcp_only: true,
                    max_datagram: 0,
                    resume: None,
                };
                self.transmit.push_back((from, tcp.to_vec()));
            }
            self.refuse(from, session, &reason);
            return Err(drop);
        }
        // Datagrams above our MTU still earn the cookie: the answer names our
        // largest datagram, and a sender that adapts says Hello again with
        // smaller chunks. One that does not is refused below, by name.
        let expected = self.cookie_for(from.ip(), session);
        if cookie != expected {
            self.stats.cookies_sent += 1;
            let challenge = Message::HelloAck {
                session,
                delay_us: 0,
                opened: false,
                tcp_only: false,
                max_datagram: self.max_datagram(),
                resume: None,
            };
            self.transmit.push_back((from, challenge.encode(expected)));
            return if cookie == 0 { Ok(()) } else { Err(DropReason::BadCookie) };
        }
        if let Err(reason) = self.fits_datagram(&info, via_tcp) {
            self.refuse(from, session, &reason);
            return Err(DropReason::TooLarge);
        }
        self.session = Some(Session {
            id: session,
            cookie,
            peer: from,
            data_ports,
            info,
            via_tcp,
            chunks: ChunkSet::new(if via_tcp { 0 } else { info.n_chunks }),
            high: 0,
            high_at_last_tick: 0,
            lane_high: vec![0; data_ports.as_slice().len()],
            lane_high_at_last_tick: vec![0; data_ports.as_slice().len()],
            end_seen: false,
            end_probed: false,
            markers: 0,
            idle_since: None,
            round: 0,
            digest: None,
            loss_from: 0,
            // A tree's chunks past its manifest wait until the driver has
            // read the manifest and made the files they go to.
            held_from: tree.filter(|_| !via_tcp).map(|t| t.manifest_len.div_ceil(u64::from(info.chunk_size))),
            data_key: self
                .cfg
                .keys
                .as_ref()
                .filter(|_| !via_tcp)
                .map(|k| std::sync::Arc::new(k.data_key(session, cookie, encrypted))),
            encrypted,
            resume: None,
        });
        self.last_progress = now;
        self.state = State::Receiving;
        self.events.push_back(Event::Start { info, peer: from, source, via_tcp, name, attrs, tree });
        self.hello_ack_due = Some(now);
        if !via_tcp {
            self.maybe_verify();
        }
        Ok(())
    }

    /// Whether a session of `info` fits this receiver; the reason if not.
    fn admissible(
        &self,
        info: &SessionInfo,
        via_tcp: bool,
        tree: Option<TreeShape>,
    ) -> Result<(), (DropReason, String)> {
        if self.cfg.tcp_only && !via_tcp {
            let why = "this receiver takes the file over TCP only (recv --mode tcp); send with --mode sendfile";
            return Err((DropReason::WrongMode, why.into()));
        }
        if let Some(max) = self.cfg.max_file_size.filter(|m| info.file_size > *m) {
            return Err((
                DropReason::TooLarge,
                format!("file of {} bytes is above this receiver's --max-size {max}", info.file_size),
            ));
        }
        if let Some(t) = tree.filter(|t| u64::from(t.entries) > self.cfg.max_files) {
            return Err((
                DropReason::TooLarge,
                format!(
                    "a tree of {} files and directories is above this receiver's --max-files {}",
                    t.entries, self.cfg.max_files
                ),
            ));
        }
        if via_tcp {
            return Ok(());
        }
        // A chunk travels in one UDP datagram, so it is below 64 KiB. Tiny
        // chunks are taken only a few at a time: the bitmap and the writes
        // grow as chunks shrink, and no link needs them.
        if info.chunk_size < MIN_CHUNK_SIZE && info.n_chunks > MAX_TINY_CHUNKS {
            let why = format!("chunks of {} bytes are below this receiver's {MIN_CHUNK_SIZE}", info.chunk_size);
            return Err((DropReason::TooLarge, why));
        }
        if info.n_chunks > self.cfg.max_chunks || info.chunk_size > u32::from(u16::MAX) {
            return Err((DropReason::TooLarge, "file too large for this receiver".into()));
        }
        Ok(())
    }

    /// The largest datagram we take, for HelloAcks (0: unknown).
    pub(super) fn max_datagram(&self) -> u32 {
        self.cfg.max_datagram.map_or(0, |m| u32::try_from(m).unwrap_or(u32::MAX))
    }

    /// Whether the session's datagrams fit our data path (its MTU).
    fn fits_datagram(&self, info: &SessionInfo, via_tcp: bool) -> Result<(), String> {
        if via_tcp {
            return Ok(());
        }
        let tag = if self.cfg.keys.is_some() { DATA_TAG_LEN } else { 0 };
        let datagram = HEADER_LEN + info.chunk_size as usize + tag;
        if let Some(max) = self.cfg.max_datagram.filter(|m| datagram > *m) {
            let o = self.cfg.ip_udp_overhead;
            let reason = format!(
                "the sender's packets of {} bytes are above this receiver's MTU of {} bytes; send with --packet-size {} or less",
                datagram + o,
                max + o,
                max + o
            );
            return Err(reason);
        }
        Ok(())
    }
}
