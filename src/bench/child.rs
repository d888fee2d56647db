//! The processes a bench runs (our own binary in each namespace, iperf3),
//! read line by line and never left behind; and the host figures around them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Busy and total jiffies over all CPUs, from /proc/stat.
pub(super) fn proc_stat() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = text.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

pub(super) fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

pub(super) struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // On any early exit (an error, Ctrl-C) no child outlives the bench.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a child with piped stdout and stderr; stderr lines arrive on a channel.
pub(super) fn spawn(mut cmd: Command) -> anyhow::Result<Spawned> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("spawning xdpblast")?;
    let stderr = child.stderr.take().context("child stderr")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(Spawned { child, lines })
}

/// Waits for a stderr line containing `needle`, keeping what it read.
pub(super) fn wait_line(s: &Spawned, needle: &str, timeout: Duration, log: &mut Vec<String>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.lines.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(l) => {
                let hit = l.contains(needle);
                log.push(l);
                if hit {
                    return Ok(());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the process exited before `{needle}`:\n{}", log.join("\n"))
            }
        }
        if crate::os::signals::stop_requested() {
            bail!("interrupted");
        }
        if Instant::now() >= deadline {
            bail!("no `{needle}` within {timeout:?}:\n{}", log.join("\n"));
        }
    }
}

/// Waits (bounded) for the child and parses its stdout as JSON.
pub(super) fn finish(s: Spawned, timeout: Duration, what: &str) -> anyhow::Result<Value> {
    finish_watching(s, timeout, what, |_| {})
}

/// Like [`finish`], handing each stderr line to `on_line` while it waits.
pub(super) fn finish_watching(
    mut s: Spawned,
    timeout: Duration,
    what: &str,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        for line in s.lines.try_iter() {
            on_line(&line);
        }
        if s.child.try_wait()?.is_some() {
            break;
        }
        let interrupted = crate::os::signals::stop_requested();
        if interrupted || Instant::now() >= deadline {
            let _ = s.child.kill();
            let _ = s.child.wait();
            if interrupted {
                bail!("{what}: interrupted");
            }
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = String::new();
    let stdout = s.child.stdout.take();
    if let Some(mut o) = stdout {
        std::io::Read::read_to_string(&mut o, &mut out)?;
    }
    let rest: Vec<String> = s.lines.try_iter().collect();
    serde_json::from_str(&out).with_context(|| format!("{what} printed no JSON report:\n{}", rest.join("\n")))
}

/// Writes dirty pages out and drops the clean page cache, so the next read
/// of the file comes from disk (root).
pub(super) fn drop_page_cache() -> anyhow::Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", b"1\n").context("dropping the page cache (--cold needs root)")
}

pub(super) fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}
