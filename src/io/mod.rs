//! Drivers that move the protocol's datagrams between [`crate::proto`]'s state
//! machines and the kernel.
//!
//! - [`afxdp_send`]: the sender, preloaded UMEM frames posted on the TX ring;
//! - [`receive`]: the receiver loop shared by both receive paths, with
//!   [`afxdp_recv`] (our XDP program + an XSK) and [`udp_recv`] (recvmmsg);
//! - [`control`] and [`output`]: the control socket and the output file.

pub mod afxdp_recv;
pub mod afxdp_send;
pub mod control;
pub mod output;
pub mod raw_send;
pub mod receive;
pub mod sink;
pub mod stream_accept;
pub mod tcp;
pub mod udp_recv;

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
/// The first signal that asked us to stop (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    let _ = STOP_SIGNAL.compare_exchange(0, sig, Ordering::Relaxed, Ordering::Relaxed);
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGINT, SIGTERM and SIGHUP request a clean stop: loops see
/// [`stop_requested`], unwind, detach and remove what they made.
pub fn install_stop_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &act) } {
            tracing::warn!("cannot install a handler for {sig}: {e}");
        }
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The signal that asked us to stop, if one did: a command it cut short
/// exits with 128 + its number, as shells report it (130 for Ctrl-C).
pub fn stop_signal() -> Option<i32> {
    Some(STOP_SIGNAL.load(Ordering::Relaxed)).filter(|&s| s != 0)
}

/// Bytes from the kernel's random source (getrandom(2)); a clock-and-pid
/// mix only if that fails, which Linux does not do once booted.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_ok() {
        return b;
    }
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let seed = blake3::hash(&[t.to_ne_bytes(), u64::from(std::process::id()).to_ne_bytes()].concat());
    for (i, x) in b.iter_mut().enumerate() {
        *x = seed.as_bytes()[i % 32];
    }
    b
}

/// A random session id.
pub fn random_session() -> u64 {
    u64::from_ne_bytes(random_bytes())
}

/// CPU time and context switches of this process (getrusage).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Rusage {
    pub user_s: f64,
    pub sys_s: f64,
    pub voluntary_ctx_switches: u64,
    pub involuntary_ctx_switches: u64,
}

impl Rusage {
    pub fn of_self() -> Rusage {
        Rusage::of(nix::sys::resource::UsageWho::RUSAGE_SELF)
    }

    /// The calling thread's alone.
    pub fn of_thread() -> Rusage {
        Rusage::of(nix::sys::resource::UsageWho::RUSAGE_THREAD)
    }

    fn of(who: nix::sys::resource::UsageWho) -> Rusage {
        use nix::sys::resource::getrusage;
        match getrusage(who) {
            Ok(u) => {
                let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
                Rusage {
                    user_s: secs(u.user_time()),
                    sys_s: secs(u.system_time()),
                    voluntary_ctx_switches: u.voluntary_context_switches() as u64,
                    involuntary_ctx_switches: u.involuntary_context_switches() as u64,
                }
            }
            Err(_) => Rusage::default(),
        }
    }

    /// What was used since `earlier`.
    pub fn since(&self, earlier: &Rusage) -> Rusage {
        Rusage {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            sys_s: (self.sys_s - earlier.sys_s).max(0.0),
            voluntary_ctx_switches: self.voluntary_ctx_switches.saturating_sub(earlier.voluntary_ctx_switches),
            involuntary_ctx_switches: self.involuntary_ctx_switches.saturating_sub(earlier.involuntary_ctx_switches),
        }
    }

    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    pub fn ctx_switches(&self) -> u64 {
        self.voluntary_ctx_switches + self.involuntary_ctx_switches
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub fn wait_readable(fds: &[std::os::fd::RawFd], timeout: std::time::Duration) {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // ppoll, not poll: poll counts in milliseconds, and a pacer's or a
    // timer's wait is often shorter; rounded down to 0 it returned at once,
    // and a paced sender spun a core instead of sleeping.
    let timeout = timeout.min(std::time::Duration::from_secs(1));
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos().into() };
    crate::syscount::count(1);
    // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structs, `ts` a
    // live timespec; no signal mask is passed.
    unsafe { libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, &ts, std::ptr::null()) };
}

/// The name a Hello gives the input: its last path component, as UTF-8
/// (lossy), for a receiver whose `--out` is a directory.
pub fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// `--queues N|auto`: how many queues a transfer uses on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueCount {
    /// Chosen from the interface's queues and the CPUs (see each side).
    Auto,
    Fixed(u32),
}

impl std::str::FromStr for QueueCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(QueueCount::Auto);
        }
        match s.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is neither a number of queues (1 or more) nor auto")),
            Ok(n) => Ok(QueueCount::Fixed(n)),
        }
    }
}
