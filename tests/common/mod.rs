//! Test bed for the integration tests: two network namespaces joined by a veth
//! pair, created through `scripts/veth.sh` (the same script people use) and
//! removed when the test ends, whether it passes or panics.
//!
//! These tests need root, network namespaces, veth and AF_XDP. Where they are
//! missing, the test fails and says why: a silent pass would hide that
//! nothing was tested.
#![allow(dead_code)]

pub mod packet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_xdpblast");
pub const TX_IP: &str = "10.77.0.1";
pub const RX_IP: &str = "10.77.0.2";
/// The receiver's address on a [`Veth::ipv6_only`] pair (scripts/veth.sh up6).
pub const RX_IP6: &str = "fd00:77::2";
/// The attacker's address on a [`Veth::lan`].
pub const X_IP: &str = "10.77.0.3";

/// Network tests run one at a time: the machine has two cores, and timing
/// between concurrent blasts would only measure contention.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the network-test lock, for tests that make their own test bed.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new pre-shared key written by `xdpblast keygen` into `dir/psk`; its path.
pub fn key_file(dir: &Path) -> String {
    let path = dir.join("psk");
    let st = Command::new(BIN).args(["keygen", path.to_str().expect("utf-8")]).output().expect("keygen");
    assert!(st.status.success(), "keygen: {}", String::from_utf8_lossy(&st.stderr));
    path.to_str().expect("utf-8").to_string()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test with the reason if this host cannot run it.
pub fn require_privileges() {
    let euid = unsafe_free_euid();
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, veth, XDP, AF_XDP); run the README's test command as root"
    );
    let ok = Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(ok.is_ok_and(|s| s.success()), "this test needs iproute2's `ip` (scripts/install-deps.sh installs it)");
}

fn unsafe_free_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().nth(1).unwrap_or("1").to_string()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX)
}

pub struct Veth {
    pub name: String,
    pub tx_ns: String,
    pub rx_ns: String,
    pub tx_if: String,
    pub rx_if: String,
    /// The attacker's namespace and interface ([`Veth::lan`] only).
    pub x_ns: String,
    pub x_if: String,
    /// The receiver's data address, `IP:PORT` or `[IPv6]:PORT`.
    pub rx_data: String,
    _serial: MutexGuard<'static, ()>,
}

impl Veth {
    pub fn new() -> Veth {
        Veth::with_queues(1)
    }

    pub fn with_queues(queues: u32) -> Veth {
        Veth::create(&["up", &queues.to_string()])
    }

    /// One queue, both ends at `mtu` (jumbo frames: XDP multi-buffer).
    pub fn with_mtu(mtu: u32) -> Veth {
        Veth::create(&["up", "1", &mtu.to_string()])
    }

    /// The same pair with IPv6 addresses only (no IPv4 on either end).
    pub fn ipv6_only() -> Veth {
        Veth::create(&["up6"])
    }

    /// Sender and receiver on a bridge that floods every frame, with an
    /// attacker in a third namespace that sees all of their traffic.
    pub fn lan() -> Veth {
        Veth::create(&["lan"])
    }

    fn create(how: &[&str]) -> Veth {
        require_privileges();
        let serial = serial();
        let name = format!("xt{}{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(repo().join("scripts/veth.sh"))
            .arg(how[0])
            .arg(&name)
            .args(&how[1..])
            .output()
            .expect("running scripts/veth.sh");
        assert!(
            out.status.success(),
            "scripts/veth.sh {how:?} {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rx_data = if how[0] == "up6" { format!("[{RX_IP6}]:9000") } else { format!("{RX_IP}:9000") };
        Veth {
            rx_data,
            tx_ns: format!("{name}-tx"),
            rx_ns: format!("{name}-rx"),
            tx_if: format!("{name}-a"),
            rx_if: format!("{name}-b"),
            x_ns: format!("{name}-x"),
            x_if: format!("{name}-x"),
            name,
            _serial: serial,
        }
    }

    /// Sets an interface's MTU inside its namespace.
    pub fn set_mtu(&self, ns: &str, ifname: &str, mtu: u32) {
        let st = Command::new("ip")
            .args(["-n", ns, "link", "set", "dev", ifname, "mtu", &mtu.to_string()])
            .status()
            .expect("ip link set mtu");
        assert!(st.success(), "setting MTU {mtu} on {ifname} failed");
    }

    pub fn in_ns(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, BIN]).args(args);
        c
    }

    /// Runs another program in namespace `ns`.
    pub fn in_ns_cmd(&self, ns: &str, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]).args(args);
        c
    }

    /// Starts `xdpblast recv` in the receive namespace and waits for `ready`.
    pub fn start_receiver(&self, out: &Path, extra: &[&str]) -> Proc {
        let mut args = vec!["--iface", self.rx_if.as_str()];
        args.extend_from_slice(extra);
        self.start_receiver_without_iface(out, &args)
    }

    /// [`Veth::start_receiver`] without `--iface` (unless `extra` gives it).
    pub fn start_receiver_without_iface(&self, out: &Path, extra: &[&str]) -> Proc {
        let listen = self.rx_data.clone();
        let out_s = out.to_str().expect("utf-8 path");
        let mut args = vec!["--log", "warn", "recv", "--listen", &listen, "--out", out_s, "--json"];
        args.extend_from_slice(extra);
        // A receiver waits for a sender until stopped; a test's must not.
        // A test's --timeout bounds that wait too, unless it says --wait.
        let timeout = extra.iter().position(|a| *a == "--timeout").and_then(|i| extra.get(i + 1)).copied();
        if !extra.iter().any(|a| *a == "--wait" || *a == "--serve") {
            args.extend_from_slice(&["--wait", timeout.unwrap_or("10")]);
        }
        let stderr_path = out.with_extension("recv.log");
        let stderr = std::fs::File::create(&stderr_path).expect("receiver log");
        let child = self
            .in_ns(&self.rx_ns, &args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning the receiver");
        wait_for_text(&stderr_path, "ready", 15);
        Proc { child: Some(child), log: stderr_path }
    }

    /// Starts `xdpblast send FILE` in the transmit namespace without waiting
    /// for it; its log goes to `log` (at info level unless `extra` says).
    pub fn start_sender(&self, file: &Path, log: &Path, extra: &[&str]) -> Proc {
        let dst = self.rx_data.clone();
        let f = file.to_str().expect("utf-8 path");
        let mut args = vec!["--log", "info", "send", f, "--iface", &self.tx_if, "--dst", &dst, "--json"];
        args.extend_from_slice(extra);
        afxdp_unless_a_mode_is_named(&mut args, extra);
        let stderr = std::fs::File::create(log).expect("sender log");
        let child =
            self.in_ns(&self.tx_ns, &args).stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawning the sender");
        Proc { child: Some(child), log: log.to_path_buf() }
    }

    /// Runs `xdpblast send FILE` from the transmit namespace, bounded in time.
    pub fn send(&self, file: &Path, extra: &[&str]) -> Output {
        let dst = self.rx_data.clone();
        let f = file.to_str().expect("utf-8 path");
        let mut args = vec!["--log", "warn", "send", f, "--iface", &self.tx_if, "--dst", &dst, "--json"];
        args.extend_from_slice(extra);
        afxdp_unless_a_mode_is_named(&mut args, extra);
        let mut c = Command::new("timeout");
        c.args(["120", "ip", "netns", "exec", &self.tx_ns, BIN]).args(&args);
        c.output().expect("running the sender")
    }

    /// The `xdp` object `ip -d -j link show` reports for the receive interface,
    /// or None when no XDP program is attached.
    pub fn rx_xdp(&self) -> Option<serde_json::Value> {
        let out = Command::new("ip")
            .args(["-n", &self.rx_ns, "-d", "-j", "link", "show", "dev", &self.rx_if])
            .output()
            .expect("ip link show");
        assert!(out.status.success(), "ip link show failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output is JSON");
        v.get(0).and_then(|l| l.get("xdp")).cloned()
    }

    /// Packets the transmit interface has sent, from the kernel's counters.
    pub fn tx_packets(&self) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.tx_ns, "-s", "-j", "link", "show", "dev", &self.tx_if])
            .output()
            .expect("ip -s link show");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output is JSON");
        v[0]["stats64"]["tx"]["packets"].as_u64().expect("tx packet counter")
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/veth.sh")).args(["down", &self.name]).status();
        let bridge = format!("{}-br", self.name);
        for ns in [&self.tx_ns, &self.rx_ns, &self.x_ns, &bridge] {
            let still = Command::new("ip")
                .args(["netns", "list"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(ns.as_str()));
            if still.unwrap_or(false) && !std::thread::panicking() {
                panic!("namespace {ns} was not removed");
            }
        }
    }
}

/// `--mode auto` takes sendfile on a copy-mode veth: the sender helpers'
/// tests are about AF_XDP unless they name a mode.
fn afxdp_unless_a_mode_is_named(args: &mut Vec<&str>, extra: &[&str]) {
    if !extra.contains(&"--mode") {
        args.extend_from_slice(&["--mode", "afxdp"]);
    }
}

/// A running `xdpblast` (sender or receiver) with its log file.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; returns the log. Fails the test
    /// after `secs`, or if the process exits first.
    pub fn wait_log(&mut self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            let exited = self.child.as_mut().map(|c| c.try_wait().ok().flatten().is_some()).unwrap_or(true);
            assert!(!exited, "exited before logging {needle:?}; log:\n{log}");
            assert!(Instant::now() < deadline, "no {needle:?} in the log within {secs} s; log:\n{log}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` without waiting for the exit.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let st = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill");
        assert!(st.success(), "kill -{signal} {pid} failed");
    }

    /// Waits (bounded by `secs`) for the exit; returns success, stdout and the
    /// log, and how long the wait took.
    pub fn wait_exit(self, secs: u64) -> (bool, String, String, Duration) {
        let started = Instant::now();
        let (ok, stdout, log, _) = self.wait_exit_sampling_memory(secs);
        (ok, stdout, log, started.elapsed())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Waits (bounded) for the exit and parses the JSON report on stdout.
    pub fn finish(self) -> (bool, serde_json::Value, String) {
        let (ok, stdout, log, _) = self.wait_exit(60);
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON report ({e}): {stdout}\nlog:\n{log}"));
        (ok, json, log)
    }

    /// Kills the process with `signal` and reaps it.
    pub fn kill(mut self, signal: &str) {
        let Some(mut child) = self.child.take() else { return };
        // `ip netns exec` execs the binary, so the child's pid is the receiver's.
        let st = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().expect("kill");
        assert!(st.success(), "kill -{signal} failed");
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until the file at `path` (a process's log) contains `needle`;
/// fails the test with what it holds after `secs`.
pub fn wait_for_text(path: &Path, needle: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in {} within {secs} s; it holds:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file of `len` pseudo-random bytes (seeded, so failures reproduce).
pub fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let mut x = seed | 1;
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let p = dir.join(name);
    std::fs::write(&p, &data).expect("writing the test file");
    p
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sender JSON ({e}); exit {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `f` on a thread that has joined network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
        f()
    })
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("reading a") == std::fs::read(b).expect("reading b")
}

/// Like [`random_file`], for files too large to build in memory: written in
/// 8 MiB blocks.
pub fn random_file_streamed(dir: &Path, name: &str, len: u64, seed: u64) -> PathBuf {
    use std::io::Write;
    let p = dir.join(name);
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&p).expect("creating the test file"));
    let mut x = seed | 1;
    let mut block = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("writing the test file");
        left -= n as u64;
    }
    f.flush().expect("flushing the test file");
    p
}

/// Compares two files block by block, without holding either in memory.
pub fn same_file_streamed(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a).expect("opening a"), std::fs::File::open(b).expect("opening b"));
    if fa.metadata().expect("a").len() != fb.metadata().expect("b").len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    loop {
        let n = fa.read(&mut ba).expect("reading a");
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).expect("reading b");
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// The most memory process `pid` has held so far (VmHWM), in bytes.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 =
        s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

impl Proc {
    /// Waits (bounded by `secs`) for the exit while sampling its VmHWM from
    /// /proc; returns success, stdout, the log and the last VmHWM seen.
    pub fn wait_exit_sampling_memory(self, secs: u64) -> (bool, String, String, u64) {
        let (status, stdout, log, hwm) = self.wait_status(secs);
        (status.success(), stdout, log, hwm)
    }

    /// Waits (bounded by `secs`) for the exit; returns its status, stdout,
    /// the log, and the peak resident memory seen meanwhile.
    pub fn wait_status(mut self, secs: u64) -> (std::process::ExitStatus, String, String, u64) {
        let pid = self.pid();
        let Some(mut child) = self.child.take() else { panic!("already finished") };
        // Drained meanwhile: a report larger than the pipe would otherwise
        // block the process in its last write, and the wait would time out.
        let reader = child.stdout.take().map(|mut o| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut o, &mut s);
                s
            })
        });
        let started = Instant::now();
        let mut hwm = 0;
        let status = loop {
            if let Some(v) = vm_hwm(pid) {
                hwm = hwm.max(v);
            }
            if let Some(s) = child.try_wait().expect("waiting for the process") {
                break s;
            }
            if started.elapsed() > Duration::from_secs(secs) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("did not exit within {secs} s; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = reader.map(|r| r.join().unwrap_or_default()).unwrap_or_default();
        (status, stdout, self.log_text(), hwm)
    }
}

/// Waits for the receiver after `sent`: both succeeded and the output is
/// the input. Returns the sender's and the receiver's reports.
pub fn finished_identical(rx: Proc, sent: &Output, file: &Path, out: &Path) -> (serde_json::Value, serde_json::Value) {
    let (rx_ok, recv, log) = rx.finish();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    assert!(rx_ok, "{recv}\n{log}");
    assert!(same_file(file, out), "output differs from input");
    (json(sent), recv)
}

/// A copy of the binary that an unprivileged user can run, in `dir`, made
/// world-readable along with `dir` itself, whatever the permissions of the
/// checkout's path.
pub fn binary_for_nobody(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("xdpblast");
    std::fs::copy(BIN, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    bin
}
