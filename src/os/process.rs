//! Figures about this process and machine (CPU time, peak memory, the
//! start instant every end-to-end time counts from) and its random source.

use std::time::Instant;

static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Marks the process's start; `main` calls it first thing. End-to-end
/// figures run from here.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(std::time::Instant::now);
}

/// The instant [`mark_process_start`] marked: time zero of a sender's lines.
pub fn process_start() -> Instant {
    *PROCESS_START.get_or_init(Instant::now)
}

/// Seconds since [`mark_process_start`] (or since the first call).
pub fn since_process_start() -> f64 {
    PROCESS_START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

/// The most resident memory this process has held (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// The machine's memory (MemTotal), if /proc says.
pub fn total_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = s
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
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
