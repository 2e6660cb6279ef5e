//! The `tlsmgr` command: `serve` (the standalone daemon), `client` (the
//! protocol probe), `check`, and, when the first argument is an option such
//! as master(8)'s `-l -t unix -u -c`, the master(8) child
//! ([`tlsmgr::master`]). The hidden `man` command prints the tlsmgr-rs(8)
//! manual page: this command reference, generated with clap_mangen, followed
//! by the hand-written sections of `man/tlsmgr-rs.8.in`.

use clap::{CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tlsmgr::admin::AdminRequest;
use tlsmgr::client::{self, ClientCommand};
use tlsmgr::config::Config;

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
    /// Run the daemon in the foreground, logging to stderr. As root it
    /// makes no file in a directory another user owns (on a Postfix host,
    /// data_directory is mail_owner's): it refuses, and names the
    /// parameter, at start and at a reload.
    Serve {
        /// Configuration directory holding main.cf and tlsmgr.cf (default:
        /// $MAIL_CONFIG, else /etc/postfix). Edits to either apply live.
        #[arg(short = 'c', value_name = "CONFIG_DIR")]
        config_dir: Option<PathBuf>,
        /// Listen here instead of $queue_directory/private/tlsmgr. The
        /// socket is made mode 0600 and missing directories 0700, whatever
        /// the umask; only a stale socket at PATH is replaced.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Override a parameter of main.cf or tlsmgr.cf (name=value), as
        /// master.cf's -o does.
        #[arg(short = 'o', value_name = "NAME=VALUE")]
        overrides: Vec<String>,
        /// Verbose logging.
        #[arg(short = 'v')]
        verbose: bool,
    },
    /// Check main.cf and tlsmgr.cf: print the effective value of every
    /// parameter tlsmgr uses (like `postconf -x`), each set in a file
    /// preceded by a `# from FILE, line N` note, or the errors, exiting
    /// non-zero.
    Check {
        /// Configuration directory (default: $MAIL_CONFIG, else /etc/postfix).
        #[arg(short = 'c', value_name = "CONFIG_DIR")]
        config_dir: Option<PathBuf>,
        /// Override a parameter of main.cf or tlsmgr.cf (name=value), as
        /// master.cf's -o does.
        #[arg(short = 'o', value_name = "NAME=VALUE")]
        overrides: Vec<String>,
    },
    /// Send one request to a running tlsmgr and print the reply.
    #[command(subcommand_value_name = "REQUEST")]
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
    /// Print the running daemon's counters: a table per cache, then ticket
    /// keys, PRNG, the last reload and connections. Talks to the admin
    /// socket (tlsmgr_admin_socket of tlsmgr.cf).
    Stats {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print one JSON object (with a `version` member) instead.
        #[arg(long)]
        json: bool,
        /// Print again every SECONDS, as rates per second.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
    /// Session ticket keys of the running daemon.
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Act on a session cache of the running daemon.
    Cache {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Print the tlsmgr-rs(8) manual page (roff) on stdout.
    #[command(hide = true)]
    Man,
}

/// Where the admin commands find the daemon.
#[derive(clap::Args)]
struct AdminArgs {
    /// Configuration directory whose tlsmgr.cf (or main.cf) gives
    /// tlsmgr_admin_socket (default: $MAIL_CONFIG, else /etc/postfix).
    // Global, so that it may also follow the action (`tlsmgr keys rotate
    // -c /etc/postfix`).
    #[arg(
        short = 'c',
        value_name = "CONFIG_DIR",
        conflicts_with = "socket",
        global = true
    )]
    config_dir: Option<PathBuf>,
    /// The admin socket (default: tlsmgr_admin_socket of tlsmgr.cf).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Make a new key current at once and retire the current one early
    /// (a suspected compromise). Tickets under the old key still resume
    /// for half the smtpd cache timeout.
    Rotate,
    /// Names, ages and expiry of the keys (never key bytes).
    List,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Remove every entry of one cache; of a shared cache, the site's
    /// entries of that type in the shared store too (exit 1, after the
    /// local part, when the store does not answer).
    Purge {
        /// smtpd, smtp or lmtp.
        cache_type: String,
    },
    /// Remove one entry; of a shared cache, its copy in the shared store
    /// too (exit 1, after the local part, when the store does not answer).
    Delete {
        /// smtpd, smtp or lmtp.
        cache_type: String,
        /// The cache id, as Postfix logs it.
        cache_id: String,
    },
}

/// The admin socket of `args`: `--socket`, else tlsmgr_admin_socket of
/// tlsmgr.cf (or main.cf). Exit 2 when there is none.
fn admin_socket(command: &str, args: AdminArgs) -> Result<PathBuf, ExitCode> {
    if let Some(s) = args.socket {
        return Ok(s);
    }
    // Only what names the socket is read: an admin looks at a daemon
    // exactly when the files may hold an invalid edit, which the daemon
    // refused and runs on without.
    let dir = tlsmgr::config::config_directory(args.config_dir);
    let path = tlsmgr::config::dir::ConfigDir::open(&dir)
        .map_err(|e| tlsmgr::config::ConfigError::new(format!("open {}: {e}", dir.display())))
        .and_then(|handle| tlsmgr::config::read_raw(&handle, &[]))
        .and_then(|raw| {
            tlsmgr::config::expand_parameter(
                &raw,
                tlsmgr::config::params::TLSMGR_ADMIN_SOCKET,
                &mut Default::default(),
            )
        });
    match path {
        Ok(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        Ok(_) => {
            eprintln!(
                "tlsmgr {command}: fatal: tlsmgr_admin_socket is empty in {}/{} (or main.cf)",
                dir.display(),
                tlsmgr::config::TLSMGR_CF
            );
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("tlsmgr {command}: fatal: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Sends one admin command and prints the answer; exit 0, 1 (refused), 2
/// (unreachable).
fn admin_command(command: &str, args: AdminArgs, request: &AdminRequest) -> ExitCode {
    let socket = match admin_socket(command, args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match tlsmgr::admin::request(&socket, request) {
        Ok(body) => match write_stdout(body.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => stdout_failed(&e, ExitCode::SUCCESS),
        },
        Err(e) => admin_error(command, &e),
    }
}

fn admin_error(command: &str, e: &tlsmgr::admin::AdminError) -> ExitCode {
    eprintln!("tlsmgr {command}: fatal: {e}");
    match e {
        tlsmgr::admin::AdminError::Refused(_) => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}

fn stats(args: AdminArgs, json: bool, watch: Option<u64>) -> ExitCode {
    let socket = match admin_socket("stats", args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut prev: Option<(serde_json::Value, std::time::Instant)> = None;
    loop {
        let now = match tlsmgr::admin::stats(&socket) {
            Ok(v) => v,
            Err(e) => return admin_error("stats", &e),
        };
        let taken = std::time::Instant::now();
        let mut out = if json {
            format!("{now}\n")
        } else {
            let p = prev
                .as_ref()
                .map(|(v, at)| (v, taken.duration_since(*at).as_secs_f64()));
            tlsmgr::admin::render_table(&now, p)
        };
        if watch.is_some() && !json {
            out.push('\n');
        }
        if let Err(e) = write_stdout(out.as_bytes()) {
            return stdout_failed(&e, ExitCode::SUCCESS);
        }
        match watch {
            None => return ExitCode::SUCCESS,
            Some(secs) => {
                prev = Some((now, taken));
                std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
            }
        }
    }
}

/// The allocator: jemalloc, with the options of `JEMALLOC_CONF`. Against glibc's
/// malloc with one arena (what we used before) it took 14 % of the CPU per
/// request off the 64-connection load and lowered peak memory while filling
/// a cache of 100 000 sessions (BENCHMARKS.md, "Seventh pass"): glibc served
/// the 2-4 KiB blocks and sessions of the store from its locked bins, and
/// kept what the store's workers freed.
#[cfg(feature = "jemalloc")]
mod allocator {
    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's options, read by jemalloc at its first allocation: one arena
    /// (per-thread caches serve the request path; more arenas keep more freed
    /// memory), and freed pages returned to the kernel at once rather than
    /// after jemalloc's default 10 s decay, which let a flush's or compaction's
    /// transient memory add up. `_RJEM_MALLOC_CONF` in the environment
    /// overrides any of them (jemalloc reads it after this).
    const JEMALLOC_CONF: &[u8] = b"narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0\0";

    /// The `malloc_conf` symbol jemalloc looks for: a pointer to a C string.
    #[repr(transparent)]
    pub struct MallocConf(*const libc::c_char);

    // SAFETY: the pointer is to a `'static` byte string that nothing writes;
    // sharing it between threads is sharing an immutable constant.
    unsafe impl Sync for MallocConf {}

    /// jemalloc (as built by tikv-jemalloc-sys, whose symbols carry the
    /// `_rjem_` prefix) reads its compiled-in options from this symbol.
    #[export_name = "_rjem_malloc_conf"]
    pub static MALLOC_CONF: MallocConf = MallocConf(JEMALLOC_CONF.as_ptr().cast());
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
        } => tlsmgr::serve::main(
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
        Command::Stats { admin, json, watch } => stats(admin, json, watch),
        Command::Keys { admin, action } => match action {
            KeysAction::Rotate => admin_command("keys", admin, &AdminRequest::KeysRotate),
            KeysAction::List => admin_command("keys", admin, &AdminRequest::KeysList),
        },
        Command::Cache { admin, action } => {
            let (cache_type, id) = match action {
                CacheAction::Purge { cache_type } => (cache_type, None),
                CacheAction::Delete {
                    cache_type,
                    cache_id,
                } => (cache_type, Some(cache_id)),
            };
            if id.as_ref().is_some_and(|id| id.contains('\n')) {
                eprintln!("tlsmgr cache: fatal: a cache id cannot contain a newline");
                return ExitCode::from(2);
            }
            // Refused as the daemon refuses it (same words, exit 1): the
            // request carries a cache type, not any word.
            let ct = match tlsmgr::admin::cache_type(&cache_type) {
                Ok(ct) => ct,
                Err(why) => return admin_error("cache", &tlsmgr::admin::AdminError::Refused(why)),
            };
            let request = match id {
                None => AdminRequest::CachePurge(ct),
                Some(id) => AdminRequest::CacheDelete(ct, id),
            };
            admin_command("cache", admin, &request)
        }
        Command::Man => match write_stdout(&man_page()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => stdout_failed(&e, ExitCode::SUCCESS),
        },
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

/// The hand-written sections of tlsmgr-rs(8): parameters, live reload,
/// differences from stock, files, see also.
const MAN_SECTIONS: &str = include_str!("../man/tlsmgr-rs.8.in");

/// The tlsmgr-rs(8) page: title, name and synopsis, then one subsection
/// per command (clap_mangen's rendering of its description and options),
/// then [`MAN_SECTIONS`].
fn man_page() -> Vec<u8> {
    let mut cmd = Cli::command();
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone())
        .title("TLSMGR-RS")
        .section("8")
        .source(format!("tlsmgr-rs {version}"))
        .manual("System Manager's Manual");
    let _ = man.render_title(&mut out);
    out.extend_from_slice(
        b".SH NAME\ntlsmgr-rs \\- drop-in replacement for the Postfix tlsmgr(8) daemon, in Rust\n",
    );
    // Every command, depth first: `tlsmgr serve`, ..., `tlsmgr client seed`.
    let mut commands = Vec::new();
    let top: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .cloned()
        .collect();
    let mut stack = top.clone();
    stack.reverse();
    while let Some(c) = stack.pop() {
        let mut subs: Vec<clap::Command> = c
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .cloned()
            .collect();
        subs.reverse();
        commands.push(c);
        stack.extend(subs);
    }
    out.extend_from_slice(b".SH SYNOPSIS\n");
    out.extend_from_slice(
        b"\\fBtlsmgr\\fR \\fB\\-l \\-t unix\\fR [\\fB\\-u\\fR] [\\fB\\-c\\fR] \
          [\\fB\\-v\\fR] [\\fB\\-V\\fR] [\\fB\\-n\\fR \\fIname\\fR] \
          [\\fB\\-o\\fR \\fIname\\fR=\\fIvalue\\fR]...\n.br\n",
    );
    for c in &top {
        out.extend_from_slice(synopsis(c).as_bytes());
        out.extend_from_slice(b".br\n");
    }
    let _ = man.render_description_section(&mut out);
    out.extend_from_slice(
        b".PP\nStarted by master(8) with its generic daemon options (see \\fBMASTER(8) CHILD\\fR \
          below), \\fBtlsmgr\\fR is the daemon. Given a command word, it is one of the \
          commands below.\n.SH COMMANDS\n",
    );
    for c in &commands {
        let name = c.get_bin_name().unwrap_or_else(|| c.get_name()).to_string();
        out.extend_from_slice(format!(".SS \"{name}\"\n").as_bytes());
        let sub = clap_mangen::Man::new(c.clone());
        out.extend_from_slice(synopsis(c).as_bytes());
        out.extend_from_slice(b".PP\n");
        out.extend_from_slice(&body(|w| sub.render_description_section(w)));
        let options = body(|w| sub.render_options_section(w));
        if !options.is_empty() {
            out.extend_from_slice(b".PP\n");
            out.extend_from_slice(&options);
        }
    }
    out.extend_from_slice(MAN_SECTIONS.as_bytes());
    out
}

/// One synopsis line for `c` (clap_mangen's leaves out option values):
/// `\fBtlsmgr serve\fR [\fB\-c\fR \fICONFIG_DIR\fR] ...`.
fn synopsis(c: &clap::Command) -> String {
    let roff = |s: &str| s.replace('\\', "\\e").replace('-', "\\-");
    let name = c.get_bin_name().unwrap_or_else(|| c.get_name());
    let mut line = format!("\\fB{}\\fR", roff(name));
    for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
        let value = a
            .get_value_names()
            .map(|v| v.join(" "))
            .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
        let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
        let item = match (a.get_short(), a.get_long()) {
            _ if a.is_positional() => format!("\\fI{}\\fR", roff(&value)),
            (Some('h'), Some("help")) => continue,
            (short, long) => {
                let flag =
                    short.map_or_else(|| format!("--{}", long.unwrap_or("")), |s| format!("-{s}"));
                if takes_value {
                    format!("\\fB{}\\fR \\fI{}\\fR", roff(&flag), roff(&value))
                } else {
                    format!("\\fB{}\\fR", roff(&flag))
                }
            }
        };
        let repeat = if matches!(a.get_action(), clap::ArgAction::Append) {
            "..."
        } else {
            ""
        };
        if a.is_required_set() {
            line.push_str(&format!(" {item}{repeat}"));
        } else {
            line.push_str(&format!(" [{item}]{repeat}"));
        }
    }
    if c.has_subcommands() {
        let what = c
            .get_subcommand_value_name()
            .unwrap_or("COMMAND")
            .to_lowercase();
        line.push_str(&format!(" \\fI{what}\\fR ..."));
    }
    line.push('\n');
    line
}

/// What `render` writes, without the `.SH` heading lines.
fn body(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = render(&mut buf);
    let mut out = Vec::new();
    for line in buf.split_inclusive(|b| *b == b'\n') {
        if !line.starts_with(b".SH ") {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Writes `out` to stdout and flushes it.
fn write_stdout(out: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out).and_then(|()| stdout.flush())
}

/// The exit after a failed write to stdout. A reader that has gone, as in
/// `tlsmgr check | head -1`, has what it wanted: the command ends quietly
/// with `done`, its status had the write succeeded, as other Unix tools
/// do. Any other write error is fatal.
fn stdout_failed(e: &std::io::Error, done: ExitCode) -> ExitCode {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return done;
    }
    eprintln!("tlsmgr: fatal: write: {e}");
    ExitCode::from(1)
}

fn check(dir: Option<PathBuf>, overrides: &[String]) -> ExitCode {
    use tlsmgr::config::{dir::ConfigDir, params, read_raw, ConfigError};
    let dir = tlsmgr::config::config_directory(dir);
    let loaded = ConfigDir::open(&dir)
        .map_err(|e| ConfigError::new(format!("open {}: {e}", dir.display())))
        .and_then(|handle| read_raw(&handle, overrides))
        .and_then(|raw| Ok((Config::from_raw(&raw)?, raw)));
    match loaded {
        Ok((config, raw)) => {
            for w in &config.warnings {
                eprintln!("tlsmgr: warning: {w}");
            }
            for n in &config.notes {
                eprintln!("tlsmgr: {n}");
            }
            // Each value set in a file (or by -o) is preceded by where; a
            // value without a note is the default. config_directory is
            // where the files are.
            let mut out = String::new();
            for (name, value) in &config.effective {
                if *name != params::CONFIG_DIRECTORY {
                    if let Some(origin) = raw.origin(name) {
                        out += &format!("# from {origin}\n");
                    }
                }
                // A Redis password stays in the file: this output is
                // pasted into tickets and mail.
                out += &format!("{name} = {}\n", tlsmgr::config::shown_value(name, value));
            }
            let code = on_disk(&dir, &config, &mut out);
            match write_stdout(out.as_bytes()) {
                Ok(()) => code,
                Err(e) => stdout_failed(&e, code),
            }
        }
        Err(e) => {
            eprintln!("tlsmgr: fatal: {e}");
            ExitCode::from(1)
        }
    }
}

/// `check`'s last lines, as main.cf comments: where the state is on disk,
/// given how master.cf starts the service. A location the chroot refuses
/// is fatal, as it would be at start.
fn on_disk(dir: &Path, config: &Config, out: &mut String) -> ExitCode {
    use tlsmgr::master::{mastercf, paths};
    let service = mastercf::tlsmgr_service(dir);
    let chroot = service.is_some_and(|s| s.chroot);
    match paths::state_on_disk(config, chroot) {
        Ok(list) => {
            *out += &match service {
                Some(s) if s.chroot => format!(
                    "# on disk ({}/master.cf, line {}: tlsmgr chrooted into {}):\n",
                    dir.display(),
                    s.line,
                    config.queue_directory.display()
                ),
                Some(s) => format!(
                    "# on disk ({}/master.cf, line {}: tlsmgr not chrooted):\n",
                    dir.display(),
                    s.line
                ),
                None => format!(
                    "# on disk (no tlsmgr service in {}/master.cf; as `tlsmgr serve` uses them):\n",
                    dir.display()
                ),
            };
            for (param, path) in list {
                *out += &format!("#   {param}: {}\n", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tlsmgr: fatal: {e}");
            ExitCode::from(1)
        }
    }
}
