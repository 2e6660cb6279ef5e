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
