//! The command line as clap reads it: the commands, their options, and
//! the parsers for sizes, rates and endpoints.

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use xdpblast::afxdp::xsk::BindMode;
use xdpblast::datapath::reader::ReaderMode;
use xdpblast::io::tcp::TcpMode;
use xdpblast::io::QueueCount;
use xdpblast::proto::pacer::Rate;

#[derive(Parser)]
#[command(name = "xdpblast", version, about = "Blast a file over AF_XDP, verified end to end with BLAKE3")]
pub(crate) struct Cli {
    /// Print errors only: no mode line, interval lines or summary (`--json`
    /// still prints its object).
    #[arg(short, long, global = true, conflicts_with = "verbose", help_heading = "Global options")]
    pub(crate) quiet: bool,
    /// Also log what happens, on stderr: -v for each step, -vv for detail.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub(crate) verbose: u8,
    /// Log filter (tracing env-filter syntax), e.g. `debug` or
    /// `xdpblast=trace`; overrides -q and -v [default: warn].
    #[arg(long, global = true, env = "XDPBLAST_LOG", help_heading = "Global options")]
    pub(crate) log: Option<String>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Send files and directory trees to a receiver.
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
pub(crate) struct KeygenArgs {
    /// Where to write the key; an existing file is never overwritten. `-`
    /// prints it on stdout instead.
    pub(crate) path: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct SinkArgs {
    /// Interface whose incoming datagrams are dropped (our XDP program is
    /// attached to it for the run).
    #[arg(long, value_name = "IF")]
    pub(crate) iface: String,
    /// UDP destination port to drop.
    #[arg(long, default_value_t = 9000)]
    pub(crate) port: u16,
    /// Seconds to run.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Print one JSON object at the end instead of interval lines.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Size of the generated file (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    pub(crate) size: String,
    /// Send this file instead of generating one.
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// Modes to compare, comma-separated (also: afxdp-key, AF_XDP with a
    /// pre-shared key on both ends, authenticated only; afxdp-enc, the same
    /// with every payload encrypted; sendfile-ktls, sendfile over TLS
    /// records, by the kernel where it has kTLS; afxdp-inline and
    /// afxdp-thread, AF_XDP with `send --reader` pinned).
    #[arg(long, value_delimiter = ',', default_value = "afxdp,sendfile,readwrite,mmap,splice")]
    pub(crate) modes: Vec<String>,
    /// Runs per mode, interleaved across modes.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,
    /// Write the results as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Draw an SVG chart of goodput and CPU per GiB here.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// Where the receiving veth's NAPI runs: in softirq context on the
    /// sending CPU, or in a kthread the scheduler may move to the other core.
    #[arg(long, value_enum, default_value = "softirq")]
    pub(crate) napi: Napi,
    /// The veth pair's MTU, both ends; every mode runs at it (TCP too).
    /// Above about 4000 bytes, AF_XDP sends each packet as a chain of UMEM
    /// frames (XDP multi-buffer); veth takes up to 65535.
    #[arg(long, value_name = "BYTES", default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    pub(crate) mtu: u32,
    /// Queues on each veth end: above 1, every mode also runs with N queues
    /// (AF_XDP, `send --queues N`) or N streams (TCP, `--streams N`), beside
    /// its single-queue row.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) queues: u32,
    /// Drop the page cache before each send, so every mode reads the file
    /// from disk.
    #[arg(long)]
    pub(crate) cold: bool,
    /// Send a generated tree instead of one file, and report files/s:
    /// tiny (10,000 x 4 KiB), small (1,000 x 1 MiB) or large (4 x 256 MiB).
    /// Each run's tree is compared file by file with the one sent.
    #[arg(long, value_name = "SET", conflicts_with_all = ["file", "size"])]
    pub(crate) dataset: Option<String>,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub(crate) enum Napi {
    Softirq,
    Threaded,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub(crate) enum SendMode {
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
    pub(crate) fn tcp(self) -> Option<TcpMode> {
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
pub(crate) enum XskBind {
    Auto,
    Copy,
    Zerocopy,
}

/// `send --reader`.
#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReaderArg {
    /// A thread when the machine has more than two CPUs, inline otherwise.
    Auto,
    /// In the transmit loop, between posts.
    Inline,
    /// On a thread of its own.
    Thread,
}

impl ReaderArg {
    pub(crate) fn mode(self) -> ReaderMode {
        match self {
            ReaderArg::Auto => ReaderMode::auto(),
            ReaderArg::Inline => ReaderMode::Inline,
            ReaderArg::Thread => ReaderMode::Thread,
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct SendArgs {
    /// The files and directories to send. One file goes as itself; a
    /// directory, or several paths, go as one tree (each under its base
    /// name, as `scp -r` sends them) in one session. Symbolic links inside
    /// a directory are skipped with a warning, never followed.
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,
    /// Interface to transmit on; required for AF_XDP (--mode auto, the
    /// default, and afxdp), not used by the TCP modes.
    #[arg(
        long,
        value_name = "IF",
        required_unless_present = "mode",
        required_if_eq_any([("mode", "auto"), ("mode", "afxdp")])
    )]
    pub(crate) iface: Option<String>,
    /// Receiver's address: IP:PORT, [IPv6]:PORT or HOST:PORT. Datagrams go
    /// to PORT and its control port PORT + 1; TCP modes connect to PORT.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_endpoint)]
    pub(crate) dst: SocketAddr,
    /// Next hop's MAC, like 02:00:00:00:00:01 (AF_XDP); default: the
    /// kernel's neighbour table.
    #[arg(long, value_name = "MAC")]
    pub(crate) dst_mac: Option<String>,
    /// Source address (AF_XDP), of --dst's IP version; default: the
    /// interface's (for IPv6, its first of global scope).
    #[arg(long, value_name = "IP")]
    pub(crate) src: Option<IpAddr>,
    /// IP packet size in bytes (AF_XDP); default and maximum: the interface
    /// MTU.
    #[arg(long, value_name = "BYTES")]
    pub(crate) packet_size: Option<u32>,
    /// UMEM frame size in bytes, 2048 or 4096 (AF_XDP); default: the
    /// smallest that holds a packet.
    #[arg(long, value_name = "BYTES")]
    pub(crate) frame_size: Option<u32>,
    /// How to send: auto (AF_XDP where it can run on --iface, else sendfile
    /// over TCP), afxdp, or one of the TCP modes [default: auto].
    #[arg(long, value_enum)]
    pub(crate) mode: Option<SendMode>,
    /// Force AF_XDP copy or zero-copy instead of letting the kernel choose.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) xdp_bind: XskBind,
    /// Give up when the receiver is silent this long, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub(crate) timeout: f64,
    /// UMEM size (K, M, G suffixes): the ring of frames the file streams
    /// through, whatever its size [default: 32M]. Larger rides out longer
    /// repair delays (see README). Raw mode holds the whole file and
    /// defaults to what it needs.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) umem: Option<u64>,
    /// Read the file with O_DIRECT, so a file not in the page cache does not
    /// flood it (AF_XDP transfers).
    #[arg(long, conflicts_with = "raw")]
    pub(crate) direct: bool,
    /// Where the file is read ahead into the UMEM ring (AF_XDP transfers):
    /// in the transmit loop, or on a thread of its own (see README).
    #[arg(long, value_enum, default_value = "auto", conflicts_with = "raw")]
    pub(crate) reader: ReaderArg,
    /// Encrypt and authenticate with the pre-shared key in PATH (`xdpblast
    /// keygen`): the receiver must use the same key; every payload is
    /// encrypted (AF_XDP: per datagram; TCP modes: TLS 1.3 records, by the
    /// kernel where it has kTLS), control messages are sealed, the digest
    /// is keyed.
    #[arg(long, value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,
    /// With --key-file: authenticate only, and send the file's bytes in
    /// clear (each datagram still carries a tag the receiver checks).
    #[arg(long, requires = "key_file")]
    pub(crate) no_encrypt: bool,
    /// With --key-file: the AEAD. auto takes AES-256-GCM where the CPU has
    /// AES instructions and ChaCha20-Poly1305 where it does not.
    #[arg(long, value_enum, default_value_t = CipherArg::Auto, requires = "key_file")]
    pub(crate) cipher: CipherArg,
    /// Descriptors posted per batch, 1 to 2048 (the TX ring).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=2048))]
    pub(crate) batch: u32,
    /// Pace at this fixed rate, as iperf3 -b does: bits/s counted over whole
    /// Ethernet frames (500M, 10G) or packets/s (200kpps). Default: rate
    /// control up to the link speed.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) rate: Option<Rate>,
    /// Rate control: pace at the rate the receiver is shown to take, probing
    /// for more, never above --rate or the link speed. On by default without
    /// --rate; with --rate it makes that rate a ceiling.
    #[arg(long, conflicts_with_all = ["raw", "no_adapt"])]
    pub(crate) adapt: bool,
    /// No rate control: send as fast as the link (or --rate) allows, however
    /// much the receiver loses.
    #[arg(long, conflicts_with = "raw")]
    pub(crate) no_adapt: bool,
    /// Send the whole file even where the receiver holds part of it from
    /// an interrupted transfer. By default that part is checked (both ends
    /// hash it) and, where it is ours, not sent again.
    #[arg(long)]
    pub(crate) no_resume: bool,
    /// Raw mode: send the preloaded frames round and round for --duration
    /// seconds, with no protocol and no receiver (measure against a drop sink,
    /// e.g. `xdpblast sink` on the peer).
    #[arg(long, requires = "duration")]
    pub(crate) raw: bool,
    /// Seconds to transmit in raw mode.
    #[arg(long, value_name = "SECS", requires = "raw")]
    pub(crate) duration: Option<f64>,
    /// Transmit queues 0 to N-1, each with an AF_XDP socket on one shared UMEM
    /// and a thread that drives it (AF_XDP); auto: one per TX queue the
    /// interface uses, at most the CPUs less one and 16 (see README).
    #[arg(long, value_name = "N|auto", default_value = "1")]
    pub(crate) queues: QueueCount,
    /// TCP modes: split the file into N ranges sent over N connections at
    /// once, verified as one file (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) streams: u32,
    /// Raw mode: prefer busy polling on the sockets (SO_PREFER_BUSY_POLL,
    /// SO_BUSY_POLL, SO_BUSY_POLL_BUDGET = --batch).
    #[arg(long, requires = "raw")]
    pub(crate) busy_poll: bool,
    /// Print one JSON object at the end instead of interval lines.
    #[arg(long)]
    pub(crate) json: bool,
    /// Machine-readable progress lines on stderr (used by `bench`).
    #[arg(long, hide = true)]
    pub(crate) progress: bool,
}

impl SendArgs {
    /// The first path given: the file, or the path that names a tree.
    pub(crate) fn file(&self) -> &std::path::Path {
        self.paths.first().map_or(std::path::Path::new(""), |p| p.as_path())
    }
}

impl RecvArgs {
    pub(crate) fn mode(&self) -> RecvMode {
        self.mode.unwrap_or(RecvMode::Afxdp)
    }
}

impl SendArgs {
    pub(crate) fn mode(&self) -> SendMode {
        self.mode.unwrap_or(SendMode::Auto)
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub(crate) enum RecvMode {
    /// Our XDP program steers the data port into AF_XDP sockets.
    Afxdp,
    /// A plain UDP socket (recvmmsg).
    Udp,
    /// TCP only (the sendfile / readwrite / mmap / splice senders).
    Tcp,
}

#[derive(clap::Args)]
pub(crate) struct RecvArgs {
    /// Interface to receive on: required for --mode afxdp (the default) and
    /// for the test knobs. Every mode also accepts a TCP sender on the same
    /// address.
    #[arg(long, value_name = "IF", required_unless_present = "mode", required_if_eq("mode", "afxdp"))]
    pub(crate) iface: Option<String>,
    /// Data address to listen on: IP:PORT or [IPv6]:PORT (a HOST:PORT is
    /// resolved); the control socket uses PORT + 1. 0.0.0.0 or [::] takes
    /// any address of that version.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    pub(crate) listen: SocketAddr,
    /// Where the file goes; written as PATH.partial (created new, never
    /// through a link) until verified, then renamed over PATH. An existing
    /// PATH is replaced, as cp, scp and rsync do, unless --no-clobber. A
    /// directory takes the file under the sender's file name.
    #[arg(long, value_name = "PATH")]
    pub(crate) out: PathBuf,
    /// Refuse to replace an existing PATH (checked at start and at the rename).
    #[arg(long)]
    pub(crate) no_clobber: bool,
    /// Start over instead of resuming. By default an interrupted transfer's
    /// PATH.partial and its journal (PATH.partial.journal) are kept, and the
    /// same transfer run again moves only what is missing, once both ends
    /// have checked that the bytes kept are the source's.
    #[arg(long)]
    pub(crate) no_resume: bool,
    /// Take only a sender holding the pre-shared key in PATH (`xdpblast
    /// keygen`). Its data arrives encrypted (AF_XDP: each datagram; TCP: TLS
    /// records, opened by the kernel where it has kTLS) unless it sends with
    /// --no-encrypt.
    #[arg(long, value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,
    /// With --key-file: refuse a sender that only authenticates (`send
    /// --no-encrypt`), so the file never crosses the network in clear.
    #[arg(long, requires = "key_file")]
    pub(crate) require_encryption: bool,
    /// Refuse files larger than this (K, M, G, T suffixes). Default: any
    /// size the disk has room for.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_size: Option<u64>,
    /// Refuse a tree of more files and directories than this.
    #[arg(long, value_name = "N", default_value_t = xdpblast::proto::receiver::DEFAULT_MAX_FILES)]
    pub(crate) max_files: u64,
    /// How the data arrives (every mode also takes a TCP sender)
    /// [default: afxdp].
    #[arg(long, value_enum)]
    pub(crate) mode: Option<RecvMode>,
    /// Once a sender has opened a session: give up if no new data arrives
    /// for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub(crate) timeout: f64,
    /// Give up if no sender opens a session within this many seconds.
    /// Default: wait until interrupted, as a server does.
    #[arg(long, value_name = "SECS")]
    pub(crate) wait: Option<f64>,
    /// Serve transfer after transfer into --out DIR until interrupted
    /// (with --json, one report per transfer).
    #[arg(long)]
    pub(crate) serve: bool,
    /// Test knob: our XDP program drops data packets with this probability,
    /// 0.0 to 1.0.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub(crate) inject_loss: f64,
    /// Test knob: our XDP program takes at most this many data packets per
    /// second and drops the rest, like a receiver too slow for the sender.
    #[arg(long, value_name = "PPS", default_value_t = 0)]
    pub(crate) inject_capacity: u32,
    /// Accept a session only from this address (datagram and TCP senders
    /// alike). Without it, the first sender to complete the handshake is
    /// served.
    #[arg(long, value_name = "IP")]
    pub(crate) allow_from: Option<IpAddr>,
    /// Force AF_XDP copy or zero-copy instead of letting the kernel choose.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) xdp_bind: XskBind,
    /// Receive queues 0 to N-1 to bind, one AF_XDP socket and one thread each
    /// (AF_XDP); auto: every queue the interface receives on.
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    pub(crate) queues: QueueCount,
    /// Print one JSON object at the end instead of interval lines.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args)]
pub(crate) struct ProbeArgs {
    /// The interface to examine. By default the probe changes nothing: it
    /// reads the link, the driver's XDP features (netdev netlink) and
    /// registers a UMEM without binding it.
    #[arg(long, value_name = "IF")]
    pub(crate) iface: String,
    /// Also attach our XDP program (it passes every packet) and bind
    /// throwaway AF_XDP sockets on queue 0 (zero-copy, copy, multi-buffer),
    /// to see what really works. Some drivers reset the link when a program
    /// is attached or a zero-copy socket binds.
    #[arg(long)]
    pub(crate) attach: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    xdpblast::net::endpoint::parse_endpoint(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_rate(s: &str) -> Result<Rate, String> {
    Rate::parse(s)
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    xdpblast::bench::parse_size(s).map_err(|e| e.to_string())
}

pub(crate) fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s < 1e7) {
        bail!("{what} must be a positive number of seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
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

/// `send --cipher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CipherArg {
    Auto,
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    #[value(name = "chacha20-poly1305")]
    ChaCha20Poly1305,
}
