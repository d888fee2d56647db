//! `tar -c | TCP | tar -x`: the outside reference for a dataset, as
//! iperf3 is for one file. The sending side is GNU tar writing into
//! bash's `/dev/tcp` in the transmit namespace; the receiving side is a
//! listener of ours in the receive namespace that feeds `tar -x`, as
//! `nc -l | tar -x` would, then flushes the file system as our receivers do
//! before they answer. It verifies nothing: the tree is compared after.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::testbed::{Testbed, RX_IP};
use super::Stat;
use crate::report::median;

/// The reference's port in the receive namespace (ours use 9000 and 9001,
/// iperf3 5201).
const PORT: u16 = 5202;
/// The longest one reference run may take.
const LIMIT: Duration = Duration::from_secs(300);

/// The tools it needs, when this machine has them.
pub(super) struct Tar {
    tar: PathBuf,
    bash: PathBuf,
}

impl Tar {
    pub fn find() -> Option<Tar> {
        Some(Tar { tar: super::child::find_in_path("tar")?, bash: super::child::find_in_path("bash")? })
    }

    /// Sends `set` once into `out` (made here); returns the seconds from
    /// the sending tar's start to the receiving tar's exit and the flush.
    pub fn run_once(&self, bed: &Testbed, set: &Path, out: &Path) -> anyhow::Result<f64> {
        let (parent, name) = match (set.parent(), set.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => bail!("{} is not a directory to send", set.display()),
        };
        std::fs::create_dir_all(out).with_context(|| format!("making {}", out.display()))?;
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (ns, tar, into) = (format!("/run/netns/{}", bed.rx_ns), self.tar.clone(), out.to_path_buf());
        let receiver = std::thread::Builder::new()
            .name("bench-tar-rx".into())
            .spawn(move || receive(&ns, &tar, &into, &ready_tx))
            .context("starting the tar reference's receiver")?;
        ready.recv_timeout(Duration::from_secs(10)).context("the tar reference's receiver did not start")?;
        let started = Instant::now();
        let script = format!("exec \"$0\" -C \"$1\" -cf - \"$2\" > /dev/tcp/{RX_IP}/{PORT}");
        let sent = bed
            .exec(&bed.tx_ns)
            .arg(&self.bash)
            .arg("-c")
            .arg(script)
            .arg(&self.tar)
            .arg(parent)
            .arg(name)
            .stdin(Stdio::null())
            .status()
            .context("running tar -c in the transmit namespace")?;
        let received = receiver.join().map_err(|_| anyhow::anyhow!("the tar reference's receiver panicked"))?;
        let secs = started.elapsed().as_secs_f64();
        if !sent.success() {
            bail!("tar -c into /dev/tcp failed ({sent})");
        }
        received?;
        Ok(secs)
    }
}

/// The receiving half, on a thread that joins the receive namespace.
fn receive(ns: &str, tar: &Path, out: &Path, ready: &std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    let netns = File::open(ns).with_context(|| format!("opening {ns}"))?;
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).context("joining the receive namespace")?;
    let listener = TcpListener::bind((RX_IP, PORT)).with_context(|| format!("listening on {RX_IP}:{PORT}"))?;
    listener.set_nonblocking(true)?;
    let _ = ready.send(());
    let deadline = Instant::now() + LIMIT;
    let mut sock = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e).context("waiting for tar -c to connect"),
        }
    };
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(LIMIT))?;
    let mut child = Command::new(tar)
        .arg("-xf")
        .arg("-")
        .arg("-C")
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .context("running tar -x")?;
    let mut stdin = child.stdin.take().context("tar -x's stdin")?;
    let copied = std::io::copy(&mut sock, &mut stdin);
    drop(stdin);
    let status = child.wait().context("waiting for tar -x")?;
    copied.context("feeding tar -x")?;
    if !status.success() {
        bail!("tar -x failed ({status})");
    }
    let top = File::open(out).with_context(|| format!("opening {}", out.display()))?;
    nix::unistd::syncfs(&top).context("flushing what tar -x wrote")?;
    Ok(())
}

/// The reference's figures over its runs.
#[derive(Debug, Serialize)]
pub struct TarReference {
    pub runs: usize,
    pub files_per_s: Stat,
    pub e2e_goodput_bps: Stat,
}

impl TarReference {
    /// From each run's seconds, for a set of `files` files and `bytes`.
    pub(super) fn of(secs: &[f64], files: u64, bytes: u64) -> Option<TarReference> {
        let stat = |v: Vec<f64>| Stat {
            median: median(v.clone()),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(0.0, f64::max),
        };
        (!secs.is_empty()).then(|| TarReference {
            runs: secs.len(),
            files_per_s: stat(secs.iter().map(|s| files as f64 / s.max(1e-9)).collect()),
            e2e_goodput_bps: stat(secs.iter().map(|s| bytes as f64 * 8.0 / s.max(1e-9)).collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_reports_files_and_bits_per_second() {
        let r = TarReference::of(&[2.0, 1.0, 4.0], 1000, 1 << 30).expect("three runs");
        assert_eq!((r.runs, r.files_per_s.median, r.files_per_s.min, r.files_per_s.max), (3, 500.0, 250.0, 1000.0));
        assert_eq!(r.e2e_goodput_bps.median, (1u64 << 30) as f64 * 8.0 / 2.0);
        assert!(TarReference::of(&[], 1, 1).is_none());
    }
}
