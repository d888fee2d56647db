//! A paced sender sleeps while the pacer holds it back, as `pv -L` and
//! `iperf3 -b` do: it must not spin a core, during a transfer or while it
//! waits on a receiver that died. Nor may a receiver that waits for its
//! sender. CPU is read from the kernel (rusage and /proc), not timed.

mod common;

use common::*;

/// CPU ticks (user + system) a process has used, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant of the C library.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100).max(1)
}

/// Runs `during`; returns the CPU-seconds process `pid` used meanwhile, and
/// the seconds it took.
fn cpu_during(pid: u32, during: impl FnOnce()) -> (f64, f64) {
    let (t0, c0) = (std::time::Instant::now(), cpu_ticks(pid));
    during();
    let used = (cpu_ticks(pid) - c0) as f64 / ticks_per_sec() as f64;
    (used, t0.elapsed().as_secs_f64())
}

#[test]
fn a_paced_transfer_uses_less_than_a_quarter_of_a_core() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = random_file(dir.path(), "paced.bin", 4 << 20, 31);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    // 4 MiB at 20 Mb/s: about 1.7 s, mostly waiting for the pacer. (At
    // 100 Mb/s the kernel's own transmit work, charged to the sender in
    // copy mode, is about a fifth of a core by itself.)
    let sent = veth.send(&file, &["--rate", "20M"]);
    let (s, _) = finished_identical(rx, &sent, &file, &out);
    let cpu = s["rusage"]["user_s"].as_f64().unwrap_or(f64::MAX) + s["rusage"]["sys_s"].as_f64().unwrap_or(0.0);
    let wall = s["e2e_s"].as_f64().unwrap_or(0.0);
    assert!(wall > 1.0, "the pacer did not hold the sender back: {wall} s");
    assert!(cpu < 0.25 * wall, "a paced sender used {cpu:.2} CPU-seconds in {wall:.2} s: it spins instead of sleeping");
}

#[test]
fn a_paced_sender_waiting_on_a_silent_receiver_sleeps() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // 8 MiB at 100 Mb/s: the first pass is out after about 0.7 s; from then
    // on the sender only waits for reports from a receiver that is stopped
    // (alive, so no ICMP ends the wait early).
    let file = random_file(dir.path(), "paced.bin", 8 << 20, 32);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let tx = veth.start_sender(&file, &dir.path().join("send.log"), &["--rate", "100M", "--timeout", "5"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    rx.signal("STOP");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (used, span) = cpu_during(tx.pid(), || std::thread::sleep(std::time::Duration::from_secs(2)));
    assert!(running(tx.pid()), "the sender must still be waiting for the stopped receiver: {}", tx.log_text());
    rx.signal("CONT");
    rx.kill("KILL");
    let (ok, _, log, _) = tx.wait_exit(30);
    assert!(!ok, "the sender must fail when its receiver falls silent: {log}");
    assert!(used < 0.25 * span, "waiting on a silent receiver, the sender used {used:.2} CPU-seconds in {span:.2} s");
}

#[test]
fn a_paced_sender_sleeps_while_its_receiver_pauses() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // The receiver pauses for 200 ms at a time, less than the 250 ms after
    // which the sender calls it silent: a 4 MiB UMEM at 400 Mb/s fills in
    // about 60 ms, and the sender then waits for reports that free its
    // slots, with the pacer ready and nothing it may post. 64 MiB keeps it
    // at work for longer than the pauses last.
    let file = random_file(dir.path(), "paused.bin", 64 << 20, 33);
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &[]);
    let tx = veth.start_sender(&file, &dir.path().join("send.log"), &["--rate", "400M", "--umem", "4M"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (used, span) = cpu_during(tx.pid(), || {
        for _ in 0..8 {
            rx.signal("STOP");
            std::thread::sleep(std::time::Duration::from_millis(200));
            rx.signal("CONT");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    assert!(running(tx.pid()), "the transfer ended before the receiver's pauses did: nothing was measured");
    let (ok, _, log, _) = tx.wait_exit(60);
    let (rx_ok, recv, rx_log) = rx.finish();
    assert!(ok && rx_ok, "{log}\n{recv}\n{rx_log}");
    assert!(same_file(&file, &out), "output differs from input");
    assert!(used < 0.25 * span, "while its receiver paused, the sender used {used:.2} CPU-seconds in {span:.2} s");
}

#[test]
fn a_receiver_waiting_for_its_sender_sleeps() {
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.bin");
    let rx = veth.start_receiver(&out, &["--wait", "30"]);
    // A second in, its threads have seen nothing for long enough to sleep
    // long: 3 s of waiting then cost a few ticks, where waking every
    // millisecond on two threads cost 4 % of a core.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (used, span) = cpu_during(rx.pid(), || std::thread::sleep(std::time::Duration::from_secs(3)));
    assert!(used < 0.02 * span, "waiting for a sender, the receiver used {used:.2} CPU-seconds in {span:.2} s");
    // And it still answers the sender that comes at once.
    let file = random_file(dir.path(), "late.bin", 4 << 20, 34);
    let sent = veth.send(&file, &[]);
    finished_identical(rx, &sent, &file, &out);
}

/// Whether a process is alive and not yet a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s[i + 2..].chars().next()))
        .is_some_and(|state| state != 'Z')
}
