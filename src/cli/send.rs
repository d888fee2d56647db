//! `xdpblast send`: the input and the options checked, then the transfer
//! over AF_XDP or TCP (`--mode auto` picks), or a raw run.

use super::args::{seconds, CipherArg, ReaderArg, SendArgs, SendMode, XskBind};
use super::tools::load_keys;
use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;
use xdpblast::afxdp::umem::UmemError;
use xdpblast::io::afxdp_send::{self, SendOptions};
use xdpblast::io::raw_send::{self, RawOptions};
use xdpblast::io::tcp::{self, TcpMode, TcpSendOptions};
use xdpblast::io::QueueCount;
use xdpblast::net::iface::parse_mac;
use xdpblast::proto::sender::SendError;
use xdpblast::tree::scan::{scan, Scanned};
use xdpblast::wire::message::Cipher;

pub(crate) fn cmd_send(a: SendArgs, quiet: bool) -> anyhow::Result<bool> {
    let json = a.json;
    let r = send_checked(a, !json && !quiet);
    if let (true, Err(e)) = (json, &r) {
        // `--json` promises one object on stdout, failures included.
        let mut report = serde_json::json!({
            "verified": false,
            "error": format!("{e:#}"),
            "e2e_s": xdpblast::os::process::since_process_start(),
            "peak_rss_bytes": xdpblast::os::process::peak_rss_bytes(),
        });
        if let Some(p) = xdpblast::tree::input::changed_file(e) {
            let reason = "changed while the tree was being sent (written, truncated or replaced)";
            report["failed_files"] = serde_json::json!([{ "path": p.display().to_string(), "reason": reason }]);
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    r
}

/// The input must be a regular file: checked with `stat` before anything
/// opens it (a FIFO would block the open, a device would never end).
pub(crate) fn check_input(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot send {}", path.display()))?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        // Opened here, before any mode is chosen, so that a file we may not
        // read is reported as such, not as the failure of a fallback.
        return std::fs::File::open(path).map(drop).with_context(|| format!("failed to open {path:?}"));
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    bail!("cannot send {}: it is {kind}; xdpblast sends regular files and directories", path.display())
}

/// Says before the handshake when the input's name is one a receiver
/// will not create in a directory (`recv --out DIR`), and which rule it
/// breaks; a receiver given a file path takes it all the same.
pub(crate) fn warn_of_unusable_name(path: &std::path::Path) {
    let name = xdpblast::io::file_name(path);
    if let Some(problem) = xdpblast::wire::file_name_problem(&name) {
        tracing::warn!(
            "the file name \"{}\" {problem}: a receiver whose --out is a directory will refuse it; give that receiver --out DIR/NAME, or rename the file",
            xdpblast::wire::untrusted_text(&name)
        );
    }
}

/// Options only AF_XDP can honour that were given, by name.
pub(crate) fn afxdp_only_options(a: &SendArgs) -> Vec<&'static str> {
    let given = [
        ("--rate", a.rate.is_some()),
        ("--adapt", a.adapt),
        ("--no-adapt", a.no_adapt),
        ("--raw", a.raw),
        ("--direct", a.direct),
        ("--umem", a.umem.is_some()),
        ("--packet-size", a.packet_size.is_some()),
        ("--frame-size", a.frame_size.is_some()),
        ("--dst-mac", a.dst_mac.is_some()),
        ("--reader", a.reader != ReaderArg::Auto),
        ("--xdp-bind", a.xdp_bind != XskBind::Auto),
    ];
    given.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect()
}

/// "--rate works only with AF_XDP", or "--rate, --raw work ...".
pub(crate) fn only_afxdp(options: &[&str]) -> String {
    let verb = if options.len() == 1 { "works" } else { "work" };
    format!("{} {verb} only with AF_XDP", options.join(", "))
}

pub(crate) fn them(options: &[&str]) -> &'static str {
    if options.len() == 1 {
        "it"
    } else {
        "them"
    }
}

/// `human`: print the mode line, interval lines and summary.
/// The tree `a` names, walked: when it names a directory or several
/// paths. `None` for one regular file, which goes as itself.
fn tree_of(a: &SendArgs, human: bool) -> anyhow::Result<Option<Arc<Scanned>>> {
    let one_file = a.paths.len() == 1 && !std::fs::metadata(a.file()).is_ok_and(|m| m.is_dir());
    if one_file {
        check_input(a.file())?;
        warn_of_unusable_name(a.file());
        return Ok(None);
    }
    if a.raw {
        bail!("--raw sends one file's frames round and round; give it one file, not a tree");
    }
    let scanned = scan(&a.paths)?;
    let m = &scanned.manifest;
    let dirs = m.entries.len() - m.files();
    info!(files = m.files(), dirs, bytes = m.data_bytes(), skipped = scanned.skipped.len(), "tree walked");
    if human {
        let skipped = match scanned.skipped.len() {
            0 => String::new(),
            n => format!("; {n} skipped (links and special files, see the warnings)"),
        };
        println!(
            "Tree: {} files in {dirs} directories, {}{skipped}",
            m.files(),
            xdpblast::report::human_bytes(m.data_bytes())
        );
    }
    Ok(Some(Arc::new(scanned)))
}

pub(crate) fn send_checked(a: SendArgs, human: bool) -> anyhow::Result<bool> {
    let tree = tree_of(&a, human)?;
    let timeout = seconds(a.timeout, "--timeout")?;
    let (tcp_mode, why_not_afxdp) = choose_transport(&a)?;
    if a.streams > 1 && a.mode().tcp().is_none() {
        bail!("--streams works only with the TCP modes (--mode sendfile, readwrite, mmap or splice); AF_XDP spreads over --queues");
    }
    if let Some(mode) = tcp_mode {
        let because = why_not_afxdp.as_deref().map_or(String::new(), |w| format!(" ({w})"));
        if let QueueCount::Fixed(2..) | QueueCount::Auto = a.queues {
            bail!("--queues works only with AF_XDP; --mode {} spreads over --streams N instead{because}", mode.name());
        }
        let unsupported = afxdp_only_options(&a);
        if !unsupported.is_empty() {
            bail!("{}; --mode {} cannot honour {}{because}", only_afxdp(&unsupported), mode.name(), them(&unsupported));
        }
        return send_tcp(&a, tree, mode, timeout, human, why_not_afxdp.clone()).map_err(|e| match &why_not_afxdp {
            Some(w) => e.context(format!("AF_XDP was not used ({w}), and the sendfile fallback failed")),
            None => e,
        });
    }
    let opts = send_options(&a, tree, timeout, human)?;
    if a.raw {
        return send_raw(&a, &opts);
    }
    // Every check that can refuse the job runs before a packet leaves.
    let prep = match afxdp_send::prepare(&opts) {
        Ok(p) => p,
        // In auto mode a UMEM this host cannot lock is a reason to use TCP.
        Err(e)
            if a.mode() == SendMode::Auto
                && e.downcast_ref::<UmemError>().is_some_and(|u| matches!(u, UmemError::AboveMemlock { .. })) =>
        {
            info!("mode auto: falling back to sendfile over TCP, because AF_XDP cannot run here: {e}");
            let unsupported = afxdp_only_options(&a);
            if !unsupported.is_empty() {
                bail!("{}, which cannot run here: {e}", only_afxdp(&unsupported));
            }
            let why = Some(format!("AF_XDP cannot run here: {e}"));
            return send_tcp(&a, opts.tree.clone(), TcpMode::Sendfile, timeout, human, why)
                .map_err(|t| t.context(format!("AF_XDP was not used ({e}), and the sendfile fallback failed")));
        }
        Err(e) => return Err(e),
    };
    if let Some(why) = copy_mode_reason(&a, &prep) {
        info!("mode auto: sendfile over TCP, because {why}");
        return send_tcp(&a, opts.tree.clone(), TcpMode::Sendfile, timeout, human, Some(why.clone()))
            .map_err(|t| t.context(format!("AF_XDP was not used ({why}), and the sendfile fallback failed")));
    }
    let report = match afxdp_send::send(&opts, prep) {
        Ok(r) => r,
        // A receiver started with `--mode tcp` says so in its answer: auto
        // mode takes TCP to it, as its fallback promises.
        Err(e)
            if a.mode() == SendMode::Auto
                && matches!(e.downcast_ref::<SendError>(), Some(SendError::ReceiverTakesTcpOnly)) =>
        {
            info!("mode auto: the receiver takes files over TCP only; sending with sendfile");
            let why = Some("the receiver takes files over TCP only (recv --mode tcp)".to_string());
            return send_tcp(&a, opts.tree.clone(), TcpMode::Sendfile, timeout, human, why);
        }
        Err(e) => return Err(e),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(report.summary.verified)
}

/// Why `--mode auto` takes sendfile where AF_XDP could run: the driver
/// has no zero-copy AF_XDP, and in copy mode sendfile measured faster here
/// (docs/measurements.md). Options only AF_XDP has keep AF_XDP.
fn copy_mode_reason(a: &SendArgs, prep: &afxdp_send::Prepared) -> Option<String> {
    let asks_for_afxdp = !afxdp_only_options(a).is_empty() || a.queues != QueueCount::Fixed(1);
    (a.mode() == SendMode::Auto && prep.zero_copy_advertised == Some(false) && !asks_for_afxdp).then(|| {
        format!(
            "{}'s driver has no zero-copy AF_XDP, and in copy mode sendfile measured faster (AF_XDP at 0.73-0.82x sendfile at MTU 1500, 0.82-1.14x at 9000); --mode afxdp uses it anyway",
            prep.iface.name
        )
    })
}

/// TCP's mode when the file goes over TCP (asked for, or `--mode auto` on
/// a host where AF_XDP cannot run, with the reason); `None` for AF_XDP.
fn choose_transport(a: &SendArgs) -> anyhow::Result<(Option<TcpMode>, Option<String>)> {
    if let Some(m) = a.mode().tcp() {
        return Ok((Some(m), None));
    }
    let iface = a.iface.as_deref().context("--iface is required for AF_XDP (--mode afxdp or auto)")?;
    Ok(match (a.mode(), afxdp_send::available(iface)) {
        (SendMode::Auto, Ok(())) => {
            info!(iface, "mode auto: AF_XDP (sockets available; the kernel picks copy or zero-copy at bind)");
            (None, None)
        }
        (_, Err(e)) if e.is_interface() => return Err(e.into()),
        (SendMode::Auto, Err(why)) => {
            info!(iface, "mode auto: falling back to sendfile over TCP, because AF_XDP cannot run here: {why}");
            (Some(TcpMode::Sendfile), Some(format!("AF_XDP cannot run here: {why}")))
        }
        _ => (None, None),
    })
}

/// The AF_XDP sender's options from the command line.
fn send_options(
    a: &SendArgs,
    tree: Option<Arc<Scanned>>,
    timeout: std::time::Duration,
    human: bool,
) -> anyhow::Result<SendOptions> {
    let dst_mac = match &a.dst_mac {
        Some(s) => {
            Some(parse_mac(s).with_context(|| format!("--dst-mac {s:?} is not a MAC address like 02:00:00:00:00:01"))?)
        }
        None => None,
    };
    Ok(SendOptions {
        keys: load_keys(a.key_file.as_deref())?,
        encrypt: encryption(a),
        file: a.file().to_path_buf(),
        tree,
        iface: a.iface.clone().unwrap_or_default(),
        dst: a.dst,
        dst_mac,
        src: a.src,
        packet_size: a.packet_size,
        frame_size: a.frame_size,
        timeout,
        umem: a.umem.unwrap_or(if a.raw { u64::MAX } else { afxdp_send::DEFAULT_UMEM }),
        direct: a.direct,
        reader: a.reader.mode(),
        bind: a.xdp_bind.into(),
        queues: a.queues,
        batch: a.batch,
        rate: a.rate,
        adapt: !a.raw && (a.adapt || (a.rate.is_none() && !a.no_adapt)),
        intervals: human,
        progress: a.progress,
        no_resume: a.no_resume,
    })
}

/// The AEAD the payloads are encrypted with: with a key, unless
/// `--no-encrypt`.
fn encryption(a: &SendArgs) -> Option<Cipher> {
    if a.key_file.is_none() || a.no_encrypt {
        return None;
    }
    Some(match a.cipher {
        CipherArg::Auto => xdpblast::proto::auth::preferred_cipher(),
        CipherArg::Aes256Gcm => Cipher::Aes256Gcm,
        CipherArg::ChaCha20Poly1305 => Cipher::ChaCha20Poly1305,
    })
}

/// `send --raw`: the preloaded frames round and round for `--duration`.
fn send_raw(a: &SendArgs, opts: &SendOptions) -> anyhow::Result<bool> {
    let prep = afxdp_send::prepare(opts)?;
    let raw = RawOptions {
        duration: seconds(a.duration.unwrap_or(0.0), "--duration")?,
        queues: prep.queues,
        busy_poll: a.busy_poll,
    };
    let report = raw_send::run(opts, &raw, prep)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(true)
}

pub(crate) fn send_tcp(
    a: &SendArgs,
    tree: Option<Arc<Scanned>>,
    mode: TcpMode,
    timeout: Duration,
    human: bool,
    fallback_reason: Option<String>,
) -> anyhow::Result<bool> {
    let keys = load_keys(a.key_file.as_deref())?;
    let opts = TcpSendOptions {
        file: a.file().to_path_buf(),
        tree,
        dst: a.dst,
        mode,
        timeout,
        intervals: human,
        progress: a.progress,
        keys,
        encrypt: encryption(a),
        fallback_reason,
        streams: a.streams as u16,
        no_resume: a.no_resume,
    };
    let report = tcp::send(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(report.summary.verified)
}
