//! The master(8) child's loggers (spec §6): before main.cf is read, syslog
//! with the `MAIL_LOGTAG` tag and the mail facility plus stderr; after it,
//! syslog with `<syslog_name>/<process_name>` and `syslog_facility`, or
//! postlogd when `maillog_file` is set, plus stderr with `-V`.

use super::args::MasterArgs;
use super::error::MasterError;
use crate::config::Config;
use crate::logging::{
    syslog_socket_path, BoxedDrain, DatagramDrain, Framing, PostfixDrain, SwitchDrain,
};
use slog::{info, warn, Drain, Logger};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Builds a logger from drains (any of them may be absent).
pub(super) fn build_logger(
    syslog: Option<DatagramDrain>,
    postlog: Option<DatagramDrain>,
    stderr_tag: Option<(String, bool)>,
) -> Logger {
    Logger::root(build_drain(syslog, postlog, stderr_tag), slog::o!())
}

/// The drain of [`build_logger`]. Each drain here masks client text with
/// [`crate::logging::printable`] where it formats a line, so nothing
/// needs masking on the way in.
fn build_drain(
    syslog: Option<DatagramDrain>,
    postlog: Option<DatagramDrain>,
    stderr_tag: Option<(String, bool)>,
) -> BoxedDrain {
    let main: BoxedDrain = match (syslog, postlog) {
        (_, Some(p)) => Box::new(p.ignore_res()),
        (Some(s), None) => Box::new(s.ignore_res()),
        (None, None) => Box::new(slog::Discard),
    };
    match stderr_tag {
        Some((tag, verbose)) => {
            let err = PostfixDrain::new(tag, std::io::stderr(), verbose)
                .without_pid()
                .ignore_res();
            Box::new(slog::Duplicate::new(main, err).ignore_res())
        }
        None => main,
    }
}

/// The logger used until main.cf is read.
pub(super) fn early_logger(process_name: &str) -> Logger {
    let name = std::env::var("MAIL_LOGTAG").unwrap_or_else(|_| "postfix".into());
    let tag = format!("{name}/{process_name}");
    build_logger(
        Some(DatagramDrain::new(
            vec![syslog_socket_path()],
            &tag,
            Framing::Syslog {
                facility: libc::LOG_MAIL,
            },
            false,
        )),
        None,
        Some((tag.clone(), false)),
    )
}

/// The daemon's logger, built over a [`SwitchDrain`] that [`LogFollower`]
/// re-points when a reload changes the log settings; `Err` is the text of
/// a fatal configuration error.
pub(super) fn daemon_logger(
    cfg: &Config,
    config_dir: &Path,
    args: &MasterArgs,
    process_name: &str,
    early_log: &Logger,
) -> Result<(Logger, SwitchDrain), MasterError> {
    let switch = SwitchDrain::new(daemon_drain(
        cfg,
        config_dir,
        args,
        process_name,
        early_log,
    )?);
    Ok((Logger::root(switch.clone(), slog::o!()), switch))
}

/// The settings that decide where and under which tag lines go.
fn log_settings(cfg: &Config) -> [String; 4] {
    [
        cfg.syslog_name.clone(),
        cfg.syslog_facility.clone(),
        cfg.maillog_file.clone(),
        cfg.postlog_service_name.clone(),
    ]
}

/// Makes logging follow live reloads of `syslog_name`, `syslog_facility`,
/// `maillog_file` and `postlog_service_name`.
pub(super) struct LogFollower {
    switch: SwitchDrain,
    log: Logger,
    config_dir: PathBuf,
    args: MasterArgs,
    process_name: String,
    current: Mutex<[String; 4]>,
}

impl LogFollower {
    pub(super) fn new(
        switch: SwitchDrain,
        log: Logger,
        cfg: &Config,
        config_dir: &Path,
        args: &MasterArgs,
        process_name: &str,
    ) -> Self {
        LogFollower {
            switch,
            log,
            config_dir: config_dir.to_path_buf(),
            args: args.clone(),
            process_name: process_name.to_string(),
            current: Mutex::new(log_settings(cfg)),
        }
    }

    /// Called with each newly applied configuration.
    pub(super) fn follow(&self, cfg: &Config) {
        let want = log_settings(cfg);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if *current == want {
            return;
        }
        let drain = daemon_drain(
            cfg,
            &self.config_dir,
            &self.args,
            &self.process_name,
            &self.log,
        );
        match drain {
            Ok(d) => {
                info!(
                    self.log,
                    "logging as {}/{} from now on", cfg.syslog_name, self.process_name
                );
                self.switch.switch(d);
                *current = want;
            }
            Err(text) => warn!(self.log, "{} -- logging as before", text),
        }
    }
}

fn daemon_drain(
    cfg: &Config,
    config_dir: &Path,
    args: &MasterArgs,
    process_name: &str,
    early_log: &Logger,
) -> Result<BoxedDrain, MasterError> {
    let verbose = args.verbose > 0;
    let tag = format!("{}/{}", cfg.syslog_name, process_name);
    let Some(facility) = crate::logging::syslog_facility(&cfg.syslog_facility) else {
        return Err(MasterError::Facility {
            main_cf: config_dir.join("main.cf"),
            value: cfg.syslog_facility.clone(),
        });
    };
    let postlog = if cfg.maillog_file.is_empty() {
        None
    } else {
        let rel = Path::new("public").join(&cfg.postlog_service_name);
        let mut paths: Vec<PathBuf> = std::env::var_os("POSTLOG_SERVICE")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        paths.push(cfg.queue_directory.join(&rel));
        if args.chroot {
            paths.push(Path::new("/").join(&rel));
        }
        let host = std::env::var("POSTLOG_HOSTNAME").unwrap_or_else(|_| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        });
        let d = DatagramDrain::new(paths, &tag, Framing::Postlog { host }, verbose);
        if d.connected() {
            Some(d)
        } else {
            warn!(early_log, "cannot connect to postlogd -- logging to syslog");
            None
        }
    };
    let syslog = postlog.is_none().then(|| {
        // Inside the chroot, /dev/log is $queue_directory/dev/log (Debian's
        // rsyslog setup provides it) once the first connection is lost.
        let path = syslog_socket_path();
        DatagramDrain::new(vec![path], &tag, Framing::Syslog { facility }, verbose)
    });
    Ok(build_drain(
        syslog,
        postlog,
        args.stderr.then(|| (tag.clone(), verbose)),
    ))
}
