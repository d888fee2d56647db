//! The smaller commands: `keygen`, `sink` and `bench`, and the key loader.

use super::args::{seconds, BenchArgs, Napi, SinkArgs};
use anyhow::Context;
use xdpblast::net::iface::Interface;

pub(crate) fn cmd_keygen(path: &std::path::Path, quiet: bool) -> anyhow::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key: [u8; 32] = xdpblast::os::process::random_bytes();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    if path == std::path::Path::new("-") {
        println!("{hex}");
        return Ok(true);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                anyhow::anyhow!("{} exists; an existing key file is never overwritten", path.display())
            }
            _ => anyhow::Error::new(e).context(format!("creating {}", path.display())),
        })?;
    f.write_all(format!("{hex}\n").as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    if quiet {
        return Ok(true);
    }
    eprintln!(
        "xdpblast: wrote a new key to {} (mode 0600); give both ends --key-file {}",
        path.display(),
        path.display()
    );
    Ok(true)
}

/// Reads `--key-file` and derives the keys.
pub(crate) fn load_keys(path: Option<&std::path::Path>) -> anyhow::Result<Option<xdpblast::proto::auth::Keys>> {
    let Some(path) = path else { return Ok(None) };
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the key file {}", path.display()))?;
    let key = xdpblast::proto::auth::parse_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if std::fs::metadata(path).map(|m| m.mode() & 0o077 != 0).unwrap_or(false) {
        tracing::warn!("{} is readable by others; chmod 600 it", path.display());
    }
    Ok(Some(xdpblast::proto::auth::Keys::derive(&key)))
}

pub(crate) fn cmd_sink(a: SinkArgs, quiet: bool) -> anyhow::Result<bool> {
    let iface = Interface::lookup(&a.iface)?;
    let report = xdpblast::io::sink::run(&iface, a.port, seconds(a.duration, "--duration")?, !a.json && !quiet)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(true)
}

pub(crate) fn cmd_bench(a: BenchArgs) -> anyhow::Result<bool> {
    let opts = xdpblast::bench::BenchOptions {
        size: xdpblast::bench::parse_size(&a.size)?,
        file: a.file,
        modes: a
            .modes
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .map(|m| m.parse().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        runs: a.runs,
        json: a.json,
        plot: a.plot,
        threaded_napi: a.napi == Napi::Threaded,
        cold: a.cold,
        mtu: a.mtu,
        queues: a.queues,
        dataset: a.dataset.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?,
    };
    let report = xdpblast::bench::run(&opts)?;
    Ok(report.results.iter().all(|r| r.verified))
}
