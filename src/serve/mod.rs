//! `tlsmgr serve`: the standalone daemon, started by hand or by a service
//! manager rather than by master(8) (which is [`crate::master`]'s). This is
//! its whole adapter: the configuration loaded and checked, root kept out of
//! other users' directories (`ownership`), its sockets bound (the service
//! socket and, beside it, the admin socket), SIGINT and SIGTERM, and the
//! clean-up of its sockets at exit.

mod ownership;

use crate::actors::watcher::WatchOptions;
use crate::config::Config;
use crate::daemon::{self, private_socket};
use crate::error::Error;
use crate::logging::stderr_logger;
use slog::{info, Logger};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `tlsmgr serve -c DIR [--socket PATH] [-o NAME=VALUE]... [-v]`: loads the
/// configuration, refuses what root must not do (`ownership`), and runs
/// the daemon until SIGINT or SIGTERM.
pub fn main(dir: &Path, socket: Option<PathBuf>, overrides: &[String], verbose: bool) -> ExitCode {
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
    for n in &config.notes {
        slog::info!(log, "{}", n);
    }
    // Root must not make files in mail_owner's data_directory (see the
    // module), neither now nor after a reload.
    let euid = nix::unistd::geteuid().as_raw();
    if let Err(e) = ownership::check(&config, euid) {
        slog::crit!(log, "{}", e);
        return ExitCode::from(1);
    }
    // Beside an explicit --socket (so that two daemons of one main.cf can
    // run side by side), else tlsmgr_admin_socket.
    let admin = match &socket {
        Some(s) => Some(admin_beside(s)),
        None => config.admin_socket.clone(),
    };
    let socket = socket.unwrap_or_else(|| config.default_socket());
    // Opened now, before any chroot, so that live reload keeps reading it.
    let watch = match crate::config::dir::ConfigDir::open(dir) {
        Ok(handle) => {
            let mut w = WatchOptions::new(handle, overrides.to_vec());
            w.sighup = true;
            w.adjust = Some(Box::new(move |cfg: &mut Config| {
                ownership::check(cfg, euid).map_err(Into::into)
            }));
            Some(w)
        }
        Err(e) => {
            slog::warn!(log, "open {}: {} -- live reload disabled", dir.display(), e);
            None
        }
    };
    match standalone(config, &socket, admin.as_deref(), log.clone(), watch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            slog::crit!(log, "{}", e);
            ExitCode::from(1)
        }
    }
}

/// `--socket P` of `tlsmgr serve`: the admin socket is `P.admin`.
fn admin_beside(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".admin");
    PathBuf::from(name)
}

/// `tlsmgr serve`: binds `socket` (creating its directory and the data
/// directory when missing, mode 0700; the socket itself is mode 0600 whatever
/// the umask; a stale socket is replaced, anything else at that path is
/// refused) and the admin socket `admin_socket`, runs until SIGINT or
/// SIGTERM, then flushes the stores and returns.
fn standalone(
    config: Config,
    socket: &std::path::Path,
    admin_socket: Option<&std::path::Path>,
    log: Logger,
    watch: Option<WatchOptions>,
) -> Result<(), Error> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    daemon::limits::raise_nofile_limit(&log);
    for dir in [socket.parent(), Some(config.data_directory.as_path())]
        .into_iter()
        .flatten()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        // Private to the daemon's user, as master(8) makes
        // $queue_directory/private: the socket below it hands out the
        // current ticket key and every cached session. Every directory made
        // here (parents included) is exactly 0700, whatever the umask.
        private_socket::create_dirs_with_mode(dir, 0o700)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        info!(log, "created directory {}", dir.display());
    }
    let listener = private_socket::bind(socket)?;
    // What we bound, so that the clean-up at exit removes our socket and
    // not one a newer tlsmgr bound at the same path meanwhile.
    let bound = std::fs::symlink_metadata(socket)
        .map(|m| (m.dev(), m.ino()))
        .ok();
    info!(log, "listening on {}", socket.display());
    let admin_path = admin_socket.map(std::path::Path::to_path_buf);
    let admin = match &admin_path {
        Some(p) => {
            let l = daemon::admin::bind(p)?;
            info!(log, "admin socket {}", p.display());
            Some(l)
        }
        None => None,
    };
    let opts = daemon::Options {
        config,
        listener,
        clock: crate::clock::system(),
        log: log.clone(),
        #[cfg(feature = "test-hooks")]
        fault_injection: None,
        watch,
        admin,
        // Nothing to open ahead: `tlsmgr serve` never chroots.
        prng_preopened: None,
    };
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let result = daemon::run(opts, shutdown, |_| {});
    let ours = std::fs::symlink_metadata(socket)
        .is_ok_and(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == bound);
    if ours {
        let _ = std::fs::remove_file(socket);
    }
    if let Some(p) = admin_path {
        let _ = std::fs::remove_file(p);
    }
    result
}
