//! Taking TCP streams without letting a connection stall anyone: each
//! connection's header is read without blocking, a little each turn, with a
//! short deadline of its own. A peer that connects and sends nothing, or
//! trickles, holds only its slot among [`MAX_PENDING`] until its deadline,
//! never the receive loop that calls [`PendingStreams::poll`].

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::wire::stream::{StreamHeader, HEADER_LEN};

/// Connections whose header is still arriving, at most. When full, the one
/// nearest its deadline makes room: a crowd of idle connections cannot keep
/// the real sender's out.
pub const MAX_PENDING: usize = 16;

/// How long a connection may take to send its header. A sender writes it
/// the moment it connects.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(2);

struct Pending {
    sock: TcpStream,
    from: SocketAddr,
    buf: [u8; HEADER_LEN],
    got: usize,
    until: Instant,
}

/// What became of a connection whose header is complete.
pub struct Arrived {
    pub sock: TcpStream,
    pub from: SocketAddr,
    pub header: Result<StreamHeader, String>,
}

/// The connections taken from a listener whose headers are still arriving.
pub struct PendingStreams {
    conns: Vec<Pending>,
    deadline: Duration,
    warnings: Throttle,
}

/// Warnings anyone who can connect may trigger: at most [`Throttle::PER_WINDOW`]
/// in each [`Throttle::WINDOW`] are shown, the rest counted and their number
/// given with the next one shown, or when the receiver is done. A sustained
/// flood so prints about one line every 1.7 s, however fast it connects.
#[derive(Default)]
struct Throttle {
    since: Option<Instant>,
    shown: u32,
    hidden: u64,
}

impl Throttle {
    const PER_WINDOW: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(10);

    /// `Some(hidden since the last one shown)` when this one may be shown.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.since.is_none_or(|s| now >= s + Self::WINDOW) {
            self.since = Some(now);
            self.shown = 0;
        }
        if self.shown >= Self::PER_WINDOW {
            self.hidden += 1;
            return None;
        }
        self.shown += 1;
        Some(std::mem::take(&mut self.hidden))
    }
}

impl Drop for PendingStreams {
    fn drop(&mut self) {
        if self.warnings.hidden > 0 {
            warn!(count = self.warnings.hidden, "more refused TCP connections were not logged one by one");
        }
    }
}

/// Says why a connection was refused, within the throttle.
macro_rules! refused {
    ($self:ident, $now:expr, $($arg:tt)+) => {
        if let Some(hidden) = $self.warnings.allow($now) {
            if hidden > 0 {
                warn!(hidden, "refused TCP connections not logged one by one since the last line");
            }
            warn!($($arg)+);
        }
    };
}

impl PendingStreams {
    pub fn new(deadline: Duration) -> PendingStreams {
        PendingStreams { conns: Vec::new(), deadline, warnings: Throttle::default() }
    }

    /// Accepts what waits on `listener`, closing at once those from an
    /// address `welcome` refuses; reads what each pending connection has
    /// sent; drops those past their deadline or closed. Returns the first
    /// connection whose header is complete, parsed or not. Never blocks.
    pub fn poll(&mut self, listener: &TcpListener, welcome: impl Fn(IpAddr) -> bool, now: Instant) -> Option<Arrived> {
        self.accept(listener, &welcome, now);
        let mut i = 0;
        while i < self.conns.len() {
            let p = &mut self.conns[i];
            crate::os::syscount::count(1);
            match p.sock.read(&mut p.buf[p.got..]) {
                Ok(0) => {
                    refused!(self, now, from = %p.from, "a TCP connection closed before its stream header");
                    self.conns.swap_remove(i);
                    continue;
                }
                Ok(n) => p.got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    refused!(self, now, from = %p.from, "a TCP connection failed before its stream header: {e}");
                    self.conns.swap_remove(i);
                    continue;
                }
            }
            if p.got == HEADER_LEN {
                let p = self.conns.swap_remove(i);
                return Some(arrived(p));
            }
            if now >= p.until {
                refused!(self, now, from = %p.from, got = p.got, "refused a TCP connection: no stream header within {:?}", self.deadline);
                self.conns.swap_remove(i);
                continue;
            }
            i += 1;
        }
        None
    }

    /// Connections whose header is still arriving.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    fn accept(&mut self, listener: &TcpListener, welcome: &impl Fn(IpAddr) -> bool, now: Instant) {
        loop {
            crate::os::syscount::count(1);
            let Ok((sock, from)) = listener.accept() else { return };
            if !welcome(from.ip()) {
                refused!(self, now, %from, "refused a TCP connection: no session admitted from that address takes a TCP stream (a TCP sender says Hello on the control port first)");
                continue;
            }
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            if self.conns.len() >= MAX_PENDING {
                if let Some(oldest) = (0..self.conns.len()).min_by_key(|&i| self.conns[i].until) {
                    let old = self.conns.swap_remove(oldest);
                    refused!(self, now, from = %old.from, "dropped a TCP connection still without its header: too many waiting");
                }
            }
            self.conns.push(Pending { sock, from, buf: [0; HEADER_LEN], got: 0, until: now + self.deadline });
        }
    }
}

/// A complete header, parsed, with its connection made blocking again for
/// the transfer.
fn arrived(p: Pending) -> Arrived {
    let header = StreamHeader::parse(&p.buf).map_err(|e| format!("not an xdpblast TCP stream ({e})"));
    let header = match p.sock.set_nonblocking(false) {
        Ok(()) => header,
        Err(e) => Err(format!("cannot use the connection: {e}")),
    };
    Arrived { sock: p.sock, from: p.from, header }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let a = l.local_addr().expect("addr");
        (l, a)
    }

    fn header() -> StreamHeader {
        StreamHeader { file_size: 5, session: 7, cookie: 9, source: [1; 16], index: 0, count: 1 }
    }

    /// Polls until something arrives or `within` passes.
    fn poll_for(p: &mut PendingStreams, l: &TcpListener, within: Duration) -> Option<Arrived> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(a) = p.poll(l, |_| true, Instant::now()) {
                return Some(a);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    #[test]
    fn an_idle_connection_stalls_nobody_and_the_real_stream_gets_through() {
        let (l, a) = listener();
        let mut p = PendingStreams::new(Duration::from_millis(300));
        let _idle = TcpStream::connect(a).expect("idle");
        let start = Instant::now();
        assert!(p.poll(&l, |_| true, Instant::now()).is_none());
        assert!(start.elapsed() < Duration::from_millis(50), "a poll must not wait on the idle peer");
        assert_eq!(p.len(), 1);
        let mut real = TcpStream::connect(a).expect("real");
        real.write_all(&header().emit()).expect("header");
        let got = poll_for(&mut p, &l, Duration::from_secs(2)).expect("the real stream");
        assert_eq!(got.header.expect("parsed"), header());
        std::thread::sleep(Duration::from_millis(350));
        assert!(p.poll(&l, |_| true, Instant::now()).is_none());
        assert!(p.is_empty(), "the idle connection is dropped at its deadline");
    }

    #[test]
    fn strangers_are_closed_at_once_and_a_bad_header_is_handed_back_refused() {
        let (l, a) = listener();
        let mut p = PendingStreams::new(Duration::from_secs(1));
        let _stranger = TcpStream::connect(a).expect("stranger");
        std::thread::sleep(Duration::from_millis(20));
        assert!(p.poll(&l, |_| false, Instant::now()).is_none());
        assert!(p.is_empty(), "a connection from an unwelcome address is never read");
        let mut junk = TcpStream::connect(a).expect("junk");
        junk.write_all(&[0xAB; HEADER_LEN]).expect("junk");
        let got = poll_for(&mut p, &l, Duration::from_secs(2)).expect("the junk");
        assert!(got.header.is_err());
    }

    #[test]
    fn a_trickled_header_is_dropped_at_its_deadline() {
        let (l, a) = listener();
        let mut p = PendingStreams::new(Duration::from_millis(400));
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(a).expect("connect");
            for b in header().emit() {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        assert!(poll_for(&mut p, &l, Duration::from_secs(1)).is_none(), "48 bytes at 20 a second cannot beat 0.4 s");
        assert!(p.is_empty());
        t.join().expect("trickler");
    }

    #[test]
    fn a_crowd_of_idle_connections_cannot_keep_the_sender_out() {
        let (l, a) = listener();
        let mut p = PendingStreams::new(Duration::from_secs(5));
        let crowd: Vec<TcpStream> = (0..MAX_PENDING + 4).map(|_| TcpStream::connect(a).expect("idle")).collect();
        std::thread::sleep(Duration::from_millis(20));
        assert!(p.poll(&l, |_| true, Instant::now()).is_none());
        assert_eq!(p.len(), MAX_PENDING);
        let mut real = TcpStream::connect(a).expect("real");
        real.write_all(&header().emit()).expect("header");
        assert!(poll_for(&mut p, &l, Duration::from_secs(2)).is_some_and(|g| g.header.is_ok()));
        drop(crowd);
    }

    #[test]
    fn the_throttle_shows_a_burst_per_window_and_counts_the_rest() {
        let mut t = Throttle::default();
        let start = Instant::now();
        // A flood of one refusal every 10 ms for 60 s.
        let (mut shown, mut counted) = (0u64, 0u64);
        for i in 0..6000u64 {
            if let Some(hidden) = t.allow(start + Duration::from_millis(10 * i)) {
                shown += 1;
                counted += hidden;
            }
        }
        assert_eq!(shown, 6 * u64::from(Throttle::PER_WINDOW), "five lines in each 10 s window");
        assert_eq!(counted + t.hidden + shown, 6000, "every refusal is shown or counted");
    }
}
