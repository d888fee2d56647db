//! The `xdpblast` command line: send, recv, probe.

mod cli;

use clap::Parser;
use std::process::ExitCode;

use cli::args::{Cli, Cmd};
use cli::probe;
use cli::recv::cmd_recv;
use cli::send::cmd_send;
use cli::tools::{cmd_bench, cmd_keygen, cmd_sink};

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
        Cmd::Probe(a) => probe::run(&a.iface, a.json, a.attach),
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
