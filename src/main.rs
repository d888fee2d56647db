//! The `xdpblast` command line: send, recv, probe.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use tracing::info;

use xdpblast::afxdp::program::{Steering, TestKnobs};
use xdpblast::afxdp::umem::UmemError;
use xdpblast::afxdp::xsk::BindMode;
use xdpblast::datapath::reader::ReaderMode;
use xdpblast::io::afxdp_recv::AfxdpReceiver;
use xdpblast::io::afxdp_send::{self, SendOptions};
use xdpblast::io::control::{control_port, Control};
use xdpblast::io::output::{check_out, OutputPolicy};
use xdpblast::io::raw_send::{self, RawOptions};
use xdpblast::io::receive::{self, Outcome, RecvOptions};
use xdpblast::io::tcp::{self, TcpMode, TcpSendOptions};
use xdpblast::io::udp_recv::UdpReceiver;
use xdpblast::io::QueueCount;
use xdpblast::net::iface::{parse_mac, Interface};
use xdpblast::proto::pacer::Rate;
use xdpblast::wire::frame::IpVersion;

mod probe;

#[derive(Parser)]
#[command(name = "xdpblast", version, about = "Blast a file over AF_XDP, verified end to end with BLAKE3")]
struct Cli {
    /// Print errors only: no mode line, interval lines or summary (`--json`
    /// still prints its object).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also log what happens, on stderr: -v for each step, -vv for detail.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log filter (tracing env-filter syntax), e.g. `debug` or
    /// `xdpblast=trace`; overrides -q and -v [default: warn].
    #[arg(long, global = true, env = "XDPBLAST_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send FILE to a receiver.
    Send(SendArgs),
    /// Receive one file and verify it.
    Recv(RecvArgs),
    /// Report what this host and interface can do (briefly attaches our XDP
    /// program, which passes every packet, to find out).
    Probe(ProbeArgs),
    /// Put every mode side by side on a veth pair this command creates (root).
    Bench(BenchArgs),
    /// Drop and count UDP packets for a port in our XDP program (a native
    /// drop sink for `send --raw` packet-rate runs).
    Sink(SinkArgs),
    /// Write a fresh pre-shared key to PATH (mode 0600) for --key-file.
    Keygen(KeygenArgs),
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Where to write the key; an existing file is never overwritten. `-`
    /// prints it on stdout instead.
    path: PathBuf,
}

#[derive(clap::Args)]
struct SinkArgs {
    /// Interface whose incoming datagrams are dropped (our XDP program is
    /// attached to it for the run).
    #[arg(long, value_name = "IF")]
    iface: String,
    /// UDP destination port to drop.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Seconds to run.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Print one JSON object at the end instead of interval lines.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Size of the generated file (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    size: String,
    /// Send this file instead of generating one.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Modes to compare, comma-separated (also: afxdp-key, AF_XDP with a
    /// pre-shared key on both ends; afxdp-inline and afxdp-thread, AF_XDP
    /// with `send --reader` pinned).
    #[arg(long, value_delimiter = ',', default_value = "afxdp,sendfile,readwrite,mmap,splice")]
    modes: Vec<String>,
    /// Runs per mode, interleaved across modes.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw an SVG chart of goodput and CPU per GiB here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Where the receiving veth's NAPI runs: in softirq context on the
    /// sending CPU, or in a kthread the scheduler may move to the other core.
    #[arg(long, value_enum, default_value = "softirq")]
    napi: Napi,
    /// The veth pair's MTU, both ends; every mode runs at it (TCP too).
    /// Above about 4000 bytes, AF_XDP sends each packet as a chain of UMEM
    /// frames (XDP multi-buffer); veth takes up to 65535.
    #[arg(long, value_name = "BYTES", default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    mtu: u32,
    /// Queues on each veth end: above 1, every mode also runs with N queues
    /// (AF_XDP, `send --queues N`) or N streams (TCP, `--streams N`), beside
    /// its single-queue row.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    queues: u32,
    /// Drop the page cache before each send, so every mode reads the file
    /// from disk.
    #[arg(long)]
    cold: bool,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Napi {
    Softirq,
    Threaded,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum SendMode {
    /// AF_XDP where the interface allows it, otherwise sendfile over TCP.
    Auto,
    /// AF_XDP, copy or zero-copy as the driver allows.
    Afxdp,
    /// TCP, sendfile(2) in a loop.
    Sendfile,
    /// TCP, read into a buffer then write.
    Readwrite,
    /// TCP, mmap the file then write from the mapping.
    Mmap,
    /// TCP, file -> pipe -> socket with splice(2).
    Splice,
}

impl SendMode {
    fn tcp(self) -> Option<TcpMode> {
        match self {
            SendMode::Sendfile => Some(TcpMode::Sendfile),
            SendMode::Readwrite => Some(TcpMode::Readwrite),
            SendMode::Mmap => Some(TcpMode::Mmap),
            SendMode::Splice => Some(TcpMode::Splice),
            SendMode::Auto | SendMode::Afxdp => None,
        }
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum XskBind {
    Auto,
    Copy,
    Zerocopy,
}

impl From<XskBind> for BindMode {
    fn from(b: XskBind) -> BindMode {
        match b {
            XskBind::Auto => BindMode::Auto,
            XskBind::Copy => BindMode::Copy,
            XskBind::Zerocopy => BindMode::ZeroCopy,
        }
    }
}

/// `send --reader`.
#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum ReaderArg {
    /// A thread when the machine has more than two CPUs, inline otherwise.
    Auto,
    /// In the transmit loop, between posts.
    Inline,
    /// On a thread of its own.
    Thread,
}

impl ReaderArg {
    fn mode(self) -> ReaderMode {
        match self {
            ReaderArg::Auto => ReaderMode::auto(),
            ReaderArg::Inline => ReaderMode::Inline,
            ReaderArg::Thread => ReaderMode::Thread,
        }
    }
}

#[derive(clap::Args)]
struct SendArgs {
    /// The file to send.
    file: PathBuf,
    /// Interface to transmit on; required for AF_XDP (--mode auto, the
    /// default, and afxdp), not used by the TCP modes.
    #[arg(
        long,
        value_name = "IF",
        required_unless_present = "mode",
        required_if_eq_any([("mode", "auto"), ("mode", "afxdp")])
    )]
    iface: Option<String>,
    /// Receiver's address: IP:PORT, [IPv6]:PORT or HOST:PORT. Datagrams go
    /// to PORT and its control port PORT + 1; TCP modes connect to PORT.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_endpoint)]
    dst: SocketAddr,
    /// Next hop's MAC, like 02:00:00:00:00:01 (AF_XDP); default: the
    /// kernel's neighbour table.
    #[arg(long, value_name = "MAC")]
    dst_mac: Option<String>,
    /// Source address (AF_XDP), of --dst's IP version; default: the
    /// interface's (for IPv6, its first of global scope).
    #[arg(long, value_name = "IP")]
    src: Option<IpAddr>,
    /// IP packet size in bytes (AF_XDP); default and maximum: the interface
    /// MTU.
    #[arg(long, value_name = "BYTES")]
    packet_size: Option<u32>,
    /// UMEM frame size in bytes, 2048 or 4096 (AF_XDP); default: the
    /// smallest that holds a packet.
    #[arg(long, value_name = "BYTES")]
    frame_size: Option<u32>,
    /// How to send: auto (AF_XDP where it can run on --iface, else sendfile
    /// over TCP), afxdp, or one of the TCP modes [default: auto].
    #[arg(long, value_enum)]
    mode: Option<SendMode>,
    /// Force AF_XDP copy or zero-copy instead of letting the kernel choose.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_bind: XskBind,
    /// Give up when the receiver is silent this long, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// UMEM size (K, M, G suffixes): the ring of frames the file streams
    /// through, whatever its size [default: 32M]. Larger rides out longer
    /// repair delays (see README). Raw mode holds the whole file and
    /// defaults to what it needs.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    umem: Option<u64>,
    /// Read the file with O_DIRECT, so a file not in the page cache does not
    /// flood it (AF_XDP transfers).
    #[arg(long, conflicts_with = "raw")]
    direct: bool,
    /// Where the file is read ahead into the UMEM ring (AF_XDP transfers):
    /// in the transmit loop, or on a thread of its own (see README).
    #[arg(long, value_enum, default_value = "auto", conflicts_with = "raw")]
    reader: ReaderArg,
    /// Authenticate with the pre-shared key in PATH (`xdpblast keygen`): the
    /// receiver must use the same key; control messages are sealed, the
    /// digest is keyed.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Descriptors posted per batch, 1 to 2048 (the TX ring).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=2048))]
    batch: u32,
    /// Pace to this rate: bits/s counted over whole Ethernet frames (500M,
    /// 10G) or packets/s (200kpps). Default: as fast as the link takes.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    rate: Option<Rate>,
    /// Adapt the rate to the loss the receiver reports (AIMD), never above
    /// --rate (or the link speed). Off by default: it cannot tell random loss
    /// from a receiver that is overrun, and would slow down for both.
    #[arg(long, conflicts_with = "raw")]
    adapt: bool,
    /// Raw mode: send the preloaded frames round and round for --duration
    /// seconds, with no protocol and no receiver (measure against a drop sink,
    /// e.g. `xdpblast sink` on the peer).
    #[arg(long, requires = "duration")]
    raw: bool,
    /// Seconds to transmit in raw mode.
    #[arg(long, value_name = "SECS", requires = "raw")]
    duration: Option<f64>,
    /// Transmit queues 0 to N-1, each with an AF_XDP socket on one shared UMEM
    /// and a thread that drives it (AF_XDP); auto: one per TX queue the
    /// interface uses, at most the CPUs less one and 16 (see README).
    #[arg(long, value_name = "N|auto", default_value = "1")]
    queues: QueueCount,
    /// TCP modes: split the file into N ranges sent over N connections at
    /// once, verified as one file (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    streams: u32,
    /// Raw mode: prefer busy polling on the sockets (SO_PREFER_BUSY_POLL,
    /// SO_BUSY_POLL, SO_BUSY_POLL_BUDGET = --batch).
    #[arg(long, requires = "raw")]
    busy_poll: bool,
    /// Print one JSON object at the end instead of interval lines.
    #[arg(long)]
    json: bool,
    /// Machine-readable progress lines on stderr (used by `bench`).
    #[arg(long, hide = true)]
    progress: bool,
}

impl RecvArgs {
    fn mode(&self) -> RecvMode {
        self.mode.unwrap_or(RecvMode::Afxdp)
    }
}

impl SendArgs {
    fn mode(&self) -> SendMode {
        self.mode.unwrap_or(SendMode::Auto)
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum RecvMode {
    /// Our XDP program steers the data port into AF_XDP sockets.
    Afxdp,
    /// A plain UDP socket (recvmmsg).
    Udp,
    /// TCP only (the sendfile / readwrite / mmap / splice senders).
    Tcp,
}

#[derive(clap::Args)]
struct RecvArgs {
    /// Interface to receive on: required for --mode afxdp (the default) and
    /// for the test knobs. Every mode also accepts a TCP sender on the same
    /// address.
    #[arg(long, value_name = "IF", required_unless_present = "mode", required_if_eq("mode", "afxdp"))]
    iface: Option<String>,
    /// Data address to listen on: IP:PORT or [IPv6]:PORT (a HOST:PORT is
    /// resolved); the control socket uses PORT + 1. 0.0.0.0 or [::] takes
    /// any address of that version.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    listen: SocketAddr,
    /// Where the file goes; written as PATH.partial (created new, never
    /// through a link) until verified, then renamed over PATH. An existing
    /// PATH is replaced, as cp, scp and rsync do, unless --no-clobber. A
    /// directory takes the file under the sender's file name.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Refuse to replace an existing PATH (checked at start and at the rename).
    #[arg(long)]
    no_clobber: bool,
    /// Take only a sender holding the pre-shared key in PATH (`xdpblast
    /// keygen`).
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Refuse files larger than this (K, M, G, T suffixes). Default: any
    /// size the disk has room for.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// How the data arrives (every mode also takes a TCP sender)
    /// [default: afxdp].
    #[arg(long, value_enum)]
    mode: Option<RecvMode>,
    /// Idle timeout in seconds: give up if no new data arrives for this long.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// Test knob: our XDP program drops data packets with this probability,
    /// 0.0 to 1.0.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    inject_loss: f64,
    /// Test knob: our XDP program takes at most this many data packets per
    /// second and drops the rest, like a receiver too slow for the sender.
    #[arg(long, value_name = "PPS", default_value_t = 0)]
    inject_capacity: u32,
    /// Accept a session only from this address (datagram and TCP senders
    /// alike). Without it, the first sender to complete the handshake is
    /// served.
    #[arg(long, value_name = "IP")]
    allow_from: Option<IpAddr>,
    /// Force AF_XDP copy or zero-copy instead of letting the kernel choose.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_bind: XskBind,
    /// Receive queues 0 to N-1 to bind, one AF_XDP socket and one thread each
    /// (AF_XDP); auto: every queue the interface receives on.
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    queues: QueueCount,
    /// Print one JSON object at the end instead of interval lines.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// The interface to examine. Probing briefly attaches our XDP program
    /// (it passes every packet) and opens an AF_XDP socket, to see whether
    /// both work; it skips the attach when another program is there.
    #[arg(long, value_name = "IF")]
    iface: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    xdpblast::net::endpoint::parse_endpoint(s).map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    Rate::parse(s)
}

fn parse_size(s: &str) -> Result<u64, String> {
    xdpblast::bench::parse_size(s).map_err(|e| e.to_string())
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s < 1e7) {
        bail!("{what} must be a positive number of seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() -> ExitCode {
    xdpblast::os::process::mark_process_start();
    let cli = Cli::parse();
    let default_level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let level = cli.log.as_deref().unwrap_or(default_level);
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|e| {
        eprintln!("xdpblast: --log {level:?} is not a valid filter ({e}); using {default_level}");
        tracing_subscriber::EnvFilter::new(default_level)
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .without_time()
        .init();
    let quiet = cli.quiet;
    xdpblast::os::signals::install_stop_handler();

    let r = match cli.cmd {
        Cmd::Send(a) => cmd_send(a, quiet),
        Cmd::Recv(a) => cmd_recv(a, quiet),
        Cmd::Probe(a) => probe::run(&a.iface, a.json),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Sink(a) => cmd_sink(a, quiet),
        Cmd::Keygen(a) => cmd_keygen(&a.path, quiet),
    };
    // A run a signal cut short exits 128 + the signal (130 for Ctrl-C), as
    // iperf3 and shells report it; one that finished anyway keeps its status.
    let failed = || xdpblast::os::signals::stop_signal().map_or(ExitCode::FAILURE, |s| ExitCode::from(128 + s as u8));
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => failed(),
        Err(e) => {
            eprintln!("xdpblast: error: {e:#}");
            failed()
        }
    }
}

fn cmd_keygen(path: &std::path::Path, quiet: bool) -> anyhow::Result<bool> {
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
            _ => anyhow::anyhow!("creating {}: {e}", path.display()),
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
fn load_keys(path: Option<&std::path::Path>) -> anyhow::Result<Option<xdpblast::proto::auth::Keys>> {
    let Some(path) = path else { return Ok(None) };
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the key file {}", path.display()))?;
    let key = xdpblast::proto::auth::parse_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if std::fs::metadata(path).map(|m| m.mode() & 0o077 != 0).unwrap_or(false) {
        tracing::warn!("{} is readable by others; chmod 600 it", path.display());
    }
    Ok(Some(xdpblast::proto::auth::Keys::derive(&key)))
}

fn cmd_sink(a: SinkArgs, quiet: bool) -> anyhow::Result<bool> {
    let iface = Interface::lookup(&a.iface)?;
    let report = xdpblast::io::sink::run(&iface, a.port, seconds(a.duration, "--duration")?, !a.json && !quiet)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(true)
}

fn cmd_bench(a: BenchArgs) -> anyhow::Result<bool> {
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
    };
    let report = xdpblast::bench::run(&opts)?;
    Ok(report.results.iter().all(|r| r.verified))
}

fn cmd_send(a: SendArgs, quiet: bool) -> anyhow::Result<bool> {
    let json = a.json;
    let r = send_checked(a, !json && !quiet);
    if let (true, Err(e)) = (json, &r) {
        // `--json` promises one object on stdout, failures included.
        let report = serde_json::json!({
            "verified": false,
            "error": format!("{e:#}"),
            "e2e_s": xdpblast::os::process::since_process_start(),
            "peak_rss_bytes": xdpblast::os::process::peak_rss_bytes(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    r
}

/// The input must be a regular file: checked with `stat` before anything
/// opens it (a FIFO would block the open, a device would never end).
fn check_input(path: &std::path::Path) -> anyhow::Result<()> {
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
    bail!("cannot send {}: it is {kind}; xdpblast sends regular files", path.display())
}

/// Says before the handshake when the input's name is one a receiver
/// will not create in a directory (`recv --out DIR`), and which rule it
/// breaks; a receiver given a file path takes it all the same.
fn warn_of_unusable_name(path: &std::path::Path) {
    let name = xdpblast::io::file_name(path);
    if let Some(problem) = xdpblast::wire::file_name_problem(&name) {
        tracing::warn!(
            "the file name \"{}\" {problem}: a receiver whose --out is a directory will refuse it; give that receiver --out DIR/NAME, or rename the file",
            xdpblast::wire::untrusted_text(&name)
        );
    }
}

/// Options only AF_XDP can honour that were given, by name.
fn afxdp_only_options(a: &SendArgs) -> Vec<&'static str> {
    let given = [
        ("--rate", a.rate.is_some()),
        ("--adapt", a.adapt),
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
fn only_afxdp(options: &[&str]) -> String {
    let verb = if options.len() == 1 { "works" } else { "work" };
    format!("{} {verb} only with AF_XDP", options.join(", "))
}

fn them(options: &[&str]) -> &'static str {
    if options.len() == 1 {
        "it"
    } else {
        "them"
    }
}

/// `human`: print the mode line, interval lines and summary.
fn send_checked(a: SendArgs, human: bool) -> anyhow::Result<bool> {
    check_input(&a.file)?;
    warn_of_unusable_name(&a.file);
    let timeout = seconds(a.timeout, "--timeout")?;
    let (tcp_mode, why_not_afxdp) = match a.mode().tcp() {
        Some(m) => (Some(m), None),
        None => {
            let iface = a.iface.as_deref().context("--iface is required for AF_XDP (--mode afxdp or auto)")?;
            match (a.mode(), afxdp_send::available(iface)) {
                (SendMode::Auto, Ok(how)) => {
                    info!(iface, "mode auto: AF_XDP ({how})");
                    (None, None)
                }
                (_, Err(e @ afxdp_send::Unavailable::Interface(_))) => return Err(e.into()),
                (SendMode::Auto, Err(why)) => {
                    info!(iface, "mode auto: falling back to sendfile over TCP, because AF_XDP cannot run here: {why}");
                    (Some(TcpMode::Sendfile), Some(format!("AF_XDP cannot run here: {why}")))
                }
                _ => (None, None),
            }
        }
    };
    if a.streams > 1 && a.mode().tcp().is_none() {
        bail!("--streams works only with the TCP modes (--mode sendfile, readwrite, mmap or splice); AF_XDP spreads over --queues");
    }
    if let (Some(mode), QueueCount::Fixed(2..) | QueueCount::Auto) = (tcp_mode, a.queues) {
        let because = why_not_afxdp.as_deref().map_or(String::new(), |w| format!(" ({w})"));
        bail!("--queues works only with AF_XDP; --mode {} spreads over --streams N instead{because}", mode.name());
    }
    if let Some(mode) = tcp_mode {
        let unsupported = afxdp_only_options(&a);
        if !unsupported.is_empty() {
            let because = why_not_afxdp.as_deref().map_or(String::new(), |w| format!(" ({w})"));
            bail!("{}; --mode {} cannot honour {}{because}", only_afxdp(&unsupported), mode.name(), them(&unsupported));
        }
        return send_tcp(&a, a.file.clone(), mode, timeout, human, why_not_afxdp.clone()).map_err(|e| {
            match &why_not_afxdp {
                Some(w) => e.context(format!("AF_XDP was not used ({w}), and the sendfile fallback failed")),
                None => e,
            }
        });
    }
    let dst_mac = match &a.dst_mac {
        Some(s) => {
            Some(parse_mac(s).with_context(|| format!("--dst-mac {s:?} is not a MAC address like 02:00:00:00:00:01"))?)
        }
        None => None,
    };
    let keys = load_keys(a.key_file.as_deref())?;
    let opts = SendOptions {
        keys: keys.clone(),
        file: a.file.clone(),
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
        adapt: a.adapt,
        intervals: human,
        progress: a.progress,
    };
    if a.raw {
        let prep = afxdp_send::prepare(&opts)?;
        let raw = RawOptions {
            duration: seconds(a.duration.unwrap_or(0.0), "--duration")?,
            queues: prep.queues,
            busy_poll: a.busy_poll,
        };
        let report = raw_send::run(&opts, &raw, prep)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        return Ok(true);
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
            return send_tcp(
                &a,
                opts.file,
                TcpMode::Sendfile,
                timeout,
                human,
                Some(format!("AF_XDP cannot run here: {e}")),
            )
            .map_err(|t| t.context(format!("AF_XDP was not used ({e}), and the sendfile fallback failed")));
        }
        Err(e) => return Err(e),
    };
    let report = afxdp_send::send(&opts, prep)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(report.summary.verified)
}

fn send_tcp(
    a: &SendArgs,
    file: PathBuf,
    mode: TcpMode,
    timeout: Duration,
    human: bool,
    fallback_reason: Option<String>,
) -> anyhow::Result<bool> {
    let keys = load_keys(a.key_file.as_deref())?;
    let opts = TcpSendOptions {
        file,
        dst: a.dst,
        mode,
        timeout,
        intervals: human,
        progress: a.progress,
        keys,
        fallback_reason,
        streams: a.streams as u16,
    };
    let report = tcp::send(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(report.summary.verified)
}

fn cmd_recv(a: RecvArgs, quiet: bool) -> anyhow::Result<bool> {
    let human = !a.json && !quiet;
    if !(0.0..=1.0).contains(&a.inject_loss) {
        bail!("--inject-loss must be between 0.0 and 1.0, got {}", a.inject_loss);
    }
    let knobs = TestKnobs { loss: a.inject_loss, capacity_pps: a.inject_capacity };
    let policy = OutputPolicy { no_clobber: a.no_clobber };
    // Everything that would refuse the output is checked before `ready`.
    check_out(&a.out, policy)?;
    let ctrl_addr = SocketAddr::new(a.listen.ip(), control_port(a.listen.port())?);
    let ctrl = Control::bind(ctrl_addr)?;
    let iface = match &a.iface {
        Some(name) => Some(Interface::lookup(name)?),
        None => None,
    };
    let ip_udp_overhead = IpVersion::of(&a.listen).l3_overhead();
    let mut opts = RecvOptions {
        keys: load_keys(a.key_file.as_deref())?,
        out: a.out.clone(),
        policy,
        idle_timeout: seconds(a.timeout, "--timeout")?,
        allow_from: a.allow_from,
        max_size: a.max_size,
        // IP and UDP headers: 28 (IPv4) or 48 (IPv6) bytes of the MTU of
        // --iface, or else of the interface that holds the listen address.
        max_datagram: match &iface {
            Some(i) => Some(i.mtu),
            None => Interface::holding(a.listen.ip()).ok().flatten().map(|i| i.mtu),
        }
        .map(|mtu| (mtu as usize).saturating_sub(ip_udp_overhead)),
        ip_udp_overhead,
        tcp_only: a.mode() == RecvMode::Tcp,
        intervals: human,
    };
    // Every mode serves a TCP sender too, once admitted on the control port.
    let listener = tcp::listen(a.listen)?;
    let outcome = match a.mode() {
        RecvMode::Tcp => {
            ready(quiet, format_args!("{} (tcp)", a.listen));
            receive::run("tcp", Vec::new(), ctrl, &opts, Some(&listener))
        }
        RecvMode::Afxdp => {
            let iface = iface.context("--iface is required with --mode afxdp")?;
            let mut rx = AfxdpReceiver::open(&iface, a.listen, knobs, a.xdp_bind.into(), a.queues)?;
            // Without multi-buffer AF_XDP, less than the MTU: senders learn it.
            opts.max_datagram = Some((rx.max_packet() as usize).saturating_sub(ip_udp_overhead));
            let mode = rx.mode().name();
            let queues = rx.queues();
            ready(
                quiet,
                format_args!(
                    "{} ({mode}, {queues} queue{} bound, XDP {}, packets up to {} B{})",
                    a.listen,
                    if queues == 1 { "" } else { "s" },
                    rx.steering().mode().name(),
                    rx.max_packet(),
                    if rx.multi_buffer() { " as multi-buffer chains" } else { "" }
                ),
            );
            match receive::run(mode, rx.data_paths(), ctrl, &opts, Some(&listener)) {
                Outcome::Done(mut report) => {
                    report.path_stats = serde_json::json!({"xdp": rx.steering().counters(), "xsk": rx.socket_stats()});
                    Outcome::Done(report)
                }
                other => other,
            }
        }
        RecvMode::Udp => {
            // The loss knob lives in our XDP program; with no XSK in its map it
            // passes every surviving packet to the kernel stack.
            let steering = match (&iface, knobs != TestKnobs::default()) {
                (Some(i), true) => Some(Steering::attach(&i.name, i.index, None, a.listen.port(), knobs)?),
                (None, true) => {
                    bail!("--inject-loss and --inject-capacity need --iface (our XDP program injects them)")
                }
                _ => None,
            };
            let udp = UdpReceiver::bind(a.listen)?;
            ready(quiet, format_args!("{} (udp)", a.listen));
            let paths: Vec<receive::BoxedPath<'_>> = vec![Box::new(udp)];
            match receive::run("udp", paths, ctrl, &opts, Some(&listener)) {
                Outcome::Done(mut report) => {
                    if let Some(s) = &steering {
                        report.path_stats = serde_json::json!({"xdp": s.counters()});
                    }
                    Outcome::Done(report)
                }
                other => other,
            }
        }
    };
    let report = match outcome {
        Outcome::Done(r) => r,
        Outcome::TcpFallback(handoff) => {
            let receive::TcpHandoff { stream, header, out, attrs, pending } = *handoff;
            let topts = tcp::TcpReceiveOptions {
                out: &out,
                attrs,
                policy,
                timeout: opts.idle_timeout,
                intervals: opts.intervals,
                keys: opts.keys.clone(),
                listener: Some(&listener),
            };
            let report = tcp::receive(stream, &header, &topts, pending);
            return finish_tcp(report, a.json);
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(e) = &report.error {
        match &report.path {
            Some(p) => eprintln!(
                "xdpblast: error: {e}; the {} that arrived are at {p}, but xdpblast does not resume yet: the next transfer to this path starts over and replaces it",
                xdpblast::report::human_bytes(report.summary.bytes)
            ),
            None => eprintln!("xdpblast: error: {e}; nothing was written"),
        }
    }
    Ok(report.summary.verified)
}

/// The line scripts wait for (on stderr): the receiver takes packets now.
fn ready(quiet: bool, what: std::fmt::Arguments<'_>) {
    if !quiet {
        eprintln!("xdpblast recv: ready, listening on {what}");
    }
}

fn finish_tcp(report: tcp::TcpReport, json: bool) -> anyhow::Result<bool> {
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(e) = &report.error {
        eprintln!("xdpblast: error: {e}");
    }
    Ok(report.summary.verified)
}
