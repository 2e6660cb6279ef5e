//! The `tlsmgr` command: `serve` (the standalone daemon), `client` (the
//! protocol probe), and, when the first argument is an option such as
//! master(8)'s `-l -t unix -u -c`, the master(8) child ([`tlsmgr::master`]).

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tlsmgr::actors::watcher::WatchOptions;
use tlsmgr::client::{self, ClientCommand};
use tlsmgr::config::Config;
use tlsmgr::logging::stderr_logger;

#[derive(Parser)]
#[command(
    name = "tlsmgr",
    version,
    about = "Drop-in replacement for Postfix tlsmgr(8)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground, logging to stderr.
    Serve {
        /// Configuration directory holding main.cf (default: $MAIL_CONFIG,
        /// else /etc/postfix). Edits to its main.cf apply live.
        #[arg(short = 'c', value_name = "CONFIG_DIR")]
        config_dir: Option<PathBuf>,
        /// Listen here instead of $queue_directory/private/tlsmgr.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Override a main.cf parameter (name=value), as master.cf's -o does.
        #[arg(short = 'o', value_name = "NAME=VALUE")]
        overrides: Vec<String>,
        /// Verbose logging.
        #[arg(short = 'v')]
        verbose: bool,
    },
    /// Check main.cf: print the effective value of every parameter tlsmgr
    /// uses (like `postconf -x`), or the errors, exiting non-zero.
    Check {
        /// Configuration directory (default: $MAIL_CONFIG, else /etc/postfix).
        #[arg(short = 'c', value_name = "CONFIG_DIR")]
        config_dir: Option<PathBuf>,
        /// Override a main.cf parameter (name=value), as master.cf's -o does.
        #[arg(short = 'o', value_name = "NAME=VALUE")]
        overrides: Vec<String>,
    },
    /// Send one request to a running tlsmgr and print the reply.
    Client {
        /// Configuration directory whose main.cf gives the socket,
        /// $queue_directory/private/tlsmgr (default: $MAIL_CONFIG, else
        /// /etc/postfix).
        #[arg(short = 'c', value_name = "CONFIG_DIR", conflicts_with = "socket")]
        config_dir: Option<PathBuf>,
        /// The tlsmgr socket (default: $queue_directory/private/tlsmgr of
        /// main.cf).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print data as raw bytes instead of hex.
        #[arg(long)]
        raw: bool,
        #[command(subcommand)]
        request: ClientCommand,
    },
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if tlsmgr::master::args::looks_like_master_child(&argv[1.min(argv.len())..]) {
        let argv0 = argv.first().map(String::as_str).unwrap_or("tlsmgr");
        return tlsmgr::master::main(argv0, &argv[1..]);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config_dir,
            socket,
            overrides,
            verbose,
        } => serve(
            &tlsmgr::config::config_directory(config_dir),
            socket,
            &overrides,
            verbose,
        ),
        Command::Client {
            config_dir,
            socket,
            raw,
            request,
        } => match socket.map_or_else(|| main_cf_socket(config_dir), Ok) {
            Ok(socket) => client::run_command(&socket, &request, raw),
            Err(code) => code,
        },
        Command::Check {
            config_dir,
            overrides,
        } => check(config_dir, &overrides),
    }
}

/// The socket `tlsmgr serve` and master(8) use: `$queue_directory/private/tlsmgr`
/// of the main.cf in `dir` (else `$MAIL_CONFIG`, else /etc/postfix). A
/// main.cf that cannot be read or is invalid exits 2, as an unreachable
/// server does.
fn main_cf_socket(dir: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    let dir = tlsmgr::config::config_directory(dir);
    match Config::load(&dir, &[]) {
        Ok(config) => Ok(config.default_socket()),
        Err(e) => {
            eprintln!("tlsmgr client: fatal: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn check(dir: Option<PathBuf>, overrides: &[String]) -> ExitCode {
    let dir = tlsmgr::config::config_directory(dir);
    match Config::load(&dir, overrides) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("tlsmgr: warning: {w}");
            }
            for (name, value) in &config.effective {
                println!("{name} = {value}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tlsmgr: fatal: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(dir: &Path, socket: Option<PathBuf>, overrides: &[String], verbose: bool) -> ExitCode {
    let pre_log = stderr_logger("postfix/tlsmgr", verbose);
    let config = match Config::load(dir, overrides) {
        Ok(c) => c,
        Err(e) => {
            slog::crit!(pre_log, "{}", e);
            return ExitCode::from(1);
        }
    };
    let log = stderr_logger(&format!("{}/tlsmgr", config.syslog_name), verbose);
    for w in &config.warnings {
        slog::warn!(log, "{}", w);
    }
    let socket = socket.unwrap_or_else(|| config.default_socket());
    // Opened now, before any chroot, so that live reload keeps reading it.
    let watch = match tlsmgr::config::dir::ConfigDir::open(dir) {
        Ok(handle) => {
            let mut w = WatchOptions::new(handle, overrides.to_vec());
            w.sighup = true;
            Some(w)
        }
        Err(e) => {
            slog::warn!(log, "open {}: {} -- live reload disabled", dir.display(), e);
            None
        }
    };
    match tlsmgr::daemon::standalone(config, &socket, log.clone(), watch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            slog::crit!(log, "{}", e);
            ExitCode::from(1)
        }
    }
}
