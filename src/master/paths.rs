//! Where files go: spec §2.9's data_directory redirection for the stores,
//! and, under `-c`, the paths as seen from inside the chroot.

use super::privileges::{self, MailOwner};
use crate::config::Config;
use crate::store::location::Backend;
use slog::{warn, Logger};
use std::path::{Path, PathBuf};

/// Under `-c`, the stores and the ticket key file must be reachable from
/// inside `queue_directory`: paths below it become relative (our working
/// directory is `queue_directory` before and `/` after the chroot, so they
/// name the same files). Returns the paths that lie outside.
pub(super) fn relocate_into_chroot(cfg: &mut Config) -> Vec<PathBuf> {
    let root = cfg.queue_directory.clone();
    let mut outside = Vec::new();
    let mut inside = |p: &Path| -> Option<PathBuf> {
        match p.strip_prefix(&root) {
            Ok(rel) if p.is_absolute() => Some(rel.to_path_buf()),
            _ if p.is_relative() => Some(p.to_path_buf()),
            _ => {
                outside.push(p.to_path_buf());
                None
            }
        }
    };
    let mut new_dirs = Vec::new();
    for cc in cfg.caches.iter() {
        let new = match cc.location.as_ref().map(|l| &l.backend) {
            Some(Backend::Fjall { dir }) => inside(dir),
            _ => None,
        };
        new_dirs.push(new);
    }
    let key_file = if cfg.persistent_state {
        cfg.ticket_key_file.as_deref().map(&mut inside)
    } else {
        None
    };
    if !outside.is_empty() {
        return outside;
    }
    for (cc, new) in cfg.caches.iter_mut().zip(new_dirs) {
        if let (Some(loc), Some(dir)) = (cc.location.as_mut(), new) {
            loc.backend = Backend::Fjall { dir };
        }
    }
    if let Some(Some(k)) = key_file {
        cfg.ticket_key_file = Some(k);
    }
    outside
}

/// Applies spec §2.9 to the store directories (the check is on the
/// directory that holds `PATH.fjall`).
pub(super) fn redirect_stores(cfg: &mut Config, owner: &MailOwner, log: &Logger) {
    let data_dir = cfg.data_directory.clone();
    for cc in cfg.caches.iter_mut() {
        let Some(loc) = cc.location.as_mut() else {
            continue;
        };
        if let Backend::Fjall { dir } = &loc.backend {
            let (new, warnings) = privileges::data_redirect(dir, "table", owner, &data_dir);
            for w in warnings {
                warn!(log, "{}", w);
            }
            loc.backend = Backend::Fjall { dir: new };
        }
    }
}

/// The path decisions of start-up (§2.9 redirection, relocation into the
/// chroot), kept so that a live reload reaches the same files: a store,
/// ticket key file or exchange file whose main.cf value did not change
/// keeps the path chosen at start (inside a chroot the original directory
/// can no longer even be looked at); a changed one is decided afresh, and
/// a reload that would put a store outside the chroot is refused.
pub(super) struct PathPolicy {
    owner: Option<MailOwner>,
    chrooted: bool,
    as_configured: Config,
    as_started: Config,
    log: Logger,
}

impl PathPolicy {
    /// Applies the start-up decisions to `cfg` and remembers them.
    /// Returns the policy and the paths that keep a chroot from happening.
    pub(super) fn at_start(
        cfg: &mut Config,
        owner: Option<MailOwner>,
        chroot: bool,
        log: &Logger,
    ) -> (PathPolicy, Vec<PathBuf>) {
        let as_configured = cfg.clone();
        redirect_all(cfg, owner.as_ref(), log);
        let outside = if chroot {
            relocate_into_chroot(cfg)
        } else {
            Vec::new()
        };
        let policy = PathPolicy {
            owner,
            chrooted: chroot && outside.is_empty(),
            as_configured,
            as_started: cfg.clone(),
            log: log.clone(),
        };
        (policy, outside)
    }

    /// Adjusts a freshly read configuration; `Err` refuses it.
    pub(super) fn adjust(&self, cfg: &mut Config) -> Result<(), String> {
        let (conf, start) = (&self.as_configured, &self.as_started);
        let mut fresh = cfg.clone();
        redirect_all(&mut fresh, self.owner.as_ref(), &self.log);
        for ((cc, f), (c0, s0)) in cfg
            .caches
            .iter_mut()
            .zip(&fresh.caches)
            .zip(conf.caches.iter().zip(&start.caches))
        {
            cc.location = if cc.location == c0.location {
                s0.location.clone()
            } else {
                f.location.clone()
            };
        }
        if cfg.tls_random_exchange_name == conf.tls_random_exchange_name {
            cfg.tls_random_exchange_name = start.tls_random_exchange_name.clone();
        } else {
            cfg.tls_random_exchange_name = fresh.tls_random_exchange_name;
        }
        if cfg.ticket_key_file == conf.ticket_key_file {
            cfg.ticket_key_file = start.ticket_key_file.clone();
        }
        if self.chrooted {
            let outside = relocate_into_chroot(cfg);
            if !outside.is_empty() {
                let list: Vec<String> = outside.iter().map(|p| p.display().to_string()).collect();
                return Err(format!(
                    "{} outside the chroot {}",
                    list.join(", "),
                    cfg.queue_directory.display()
                ));
            }
        }
        Ok(())
    }
}

/// §2.9 for everything tlsmgr creates: the stores and the exchange file.
fn redirect_all(cfg: &mut Config, owner: Option<&MailOwner>, log: &Logger) {
    let Some(o) = owner else { return };
    if let Some(path) = cfg.tls_random_exchange_name.clone() {
        let (p, warnings) = privileges::data_redirect(&path, "file", o, &cfg.data_directory);
        for w in warnings {
            warn!(log, "{}", w);
        }
        cfg.tls_random_exchange_name = Some(p);
    }
    redirect_stores(cfg, o, log);
}
