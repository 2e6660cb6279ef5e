//! Where files go: spec §2.9's data_directory redirection for the stores,
//! and, under `-c`, the paths as seen from inside the chroot.

use super::error::MasterError;
use super::privileges::{self, MailOwner};
use crate::config::Config;
use crate::store::location::Backend;
use slog::{warn, Logger};
use std::path::{Path, PathBuf};

/// Top-level directories of the jail that `postfix check` looks after
/// (Postfix's own copies of system files live there); no state goes there.
const RESERVED_IN_JAIL: [&str; 5] = ["bin", "etc", "lib", "sbin", "usr"];

/// A store directory or the ticket key file under `-c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPath {
    /// The path as configured.
    pub configured: PathBuf,
    /// The path the daemon opens, valid inside the chroot (and, when
    /// relative, outside it too: the working directory is queue_directory
    /// before the chroot and `/` after).
    pub inside: PathBuf,
    /// Where it is on disk, seen from outside the chroot.
    pub on_disk: PathBuf,
}

/// Where `p` is kept under a chroot into `root`: a path below `root` is
/// used as it is (relative to it); any other absolute path is kept at the
/// same path below `root`, as Postfix's chroot setup does with `etc/`
/// files, e.g. `/var/lib/postfix/smtp_scache.fjall` on disk at
/// `/var/spool/postfix/var/lib/postfix/smtp_scache.fjall`. A place among
/// the jail's system directories is refused.
pub fn jail_path(root: &Path, p: &Path) -> Result<JailPath, MasterError> {
    let (inside, on_disk) = match p.strip_prefix(root) {
        Ok(rel) if p.is_absolute() => (rel.to_path_buf(), p.to_path_buf()),
        _ if p.is_relative() => (p.to_path_buf(), root.join(p)),
        _ => {
            let below = p.strip_prefix("/").unwrap_or(p);
            (p.to_path_buf(), root.join(below))
        }
    };
    let below_root = on_disk.strip_prefix(root).unwrap_or(&on_disk);
    let top = below_root
        .components()
        .find_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    if RESERVED_IN_JAIL.contains(&top.as_str()) {
        return Err(MasterError::ReservedInJail {
            configured: p.to_path_buf(),
            on_disk,
            root: root.to_path_buf(),
            top,
        });
    }
    Ok(JailPath {
        configured: p.to_path_buf(),
        inside,
        on_disk,
    })
}

/// Where the stores and the ticket key file of `cfg` are on disk, by the
/// parameter that sets each: as configured, or, when master.cf chroots the
/// service, at their place below `queue_directory` ([`jail_path`]). `Err`
/// names a location the chroot refuses. (§2.9 redirection, which depends on
/// directory owners at start, is not applied.)
pub fn state_on_disk(cfg: &Config, chroot: bool) -> Result<Vec<(String, PathBuf)>, MasterError> {
    let named = cfg
        .state_paths()
        .into_iter()
        .map(|(param, p)| (param.to_string(), p));
    if !chroot {
        return Ok(named.collect());
    }
    named
        .map(|(param, p)| {
            let jp = jail_path(&cfg.queue_directory, &p).map_err(|e| e.for_parameter(&param))?;
            Ok((param, jp.on_disk))
        })
        .collect()
}

/// Under `-c`, makes the stores and the ticket key file reachable from
/// inside `queue_directory` (rule: [`jail_path`]) and rewrites `cfg` to the
/// inside paths. Returns the paths, or what refuses them.
pub(super) fn relocate_into_chroot(cfg: &mut Config) -> Result<Vec<JailPath>, MasterError> {
    let root = cfg.queue_directory.clone();
    let mut paths = Vec::new();
    for cc in cfg.caches.iter_mut() {
        let Some(loc) = cc.location.as_mut() else {
            continue;
        };
        if let Backend::Fjall { dir } = &loc.backend {
            let jp = jail_path(&root, dir).map_err(|e| {
                e.for_parameter(crate::config::params::cache_database(cc.cache_type))
            })?;
            loc.backend = Backend::Fjall {
                dir: jp.inside.clone(),
            };
            paths.push(jp);
        }
    }
    if cfg.persistent_state {
        if let Some(k) = cfg.ticket_key_file.clone() {
            let jp = jail_path(&root, &k)
                .map_err(|e| e.for_parameter(crate::config::params::TLSMGR_TICKET_KEY_FILE))?;
            cfg.ticket_key_file = Some(jp.inside.clone());
            paths.push(jp);
        }
    }
    Ok(paths)
}

/// Creates, as root and before the chroot, the missing directories that
/// hold `paths` on disk: parents root-owned 0755, the one that holds the
/// store or key file mail_owner's 0700. Returns the directories created.
pub(super) fn prepare_jail(
    root: &Path,
    paths: &[JailPath],
    owner: Option<&MailOwner>,
) -> Result<Vec<PathBuf>, MasterError> {
    use std::os::unix::fs::DirBuilderExt;
    let mut created = Vec::new();
    for jp in paths {
        let Some(holder) = jp.on_disk.parent() else {
            continue;
        };
        let Ok(below) = holder.strip_prefix(root) else {
            continue;
        };
        let mut dir = root.to_path_buf();
        let parts: Vec<_> = below.components().collect();
        for (i, part) in parts.iter().enumerate() {
            dir.push(part);
            if dir.exists() {
                continue;
            }
            let last = i + 1 == parts.len();
            let mode = if last { 0o700 } else { 0o755 };
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&dir)
                .map_err(|source| MasterError::Jail {
                    op: "create",
                    path: dir.clone(),
                    source,
                })?;
            // The mode is exact whatever the umask.
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(|source| MasterError::Jail {
                    op: "chmod",
                    path: dir.clone(),
                    source,
                })?;
            if last {
                if let Some(o) = owner {
                    nix::unistd::chown(&dir, Some(o.uid), Some(o.gid)).map_err(|source| {
                        MasterError::Jail {
                            op: "chown",
                            path: dir.clone(),
                            source: source.into(),
                        }
                    })?;
                }
            }
            created.push(dir.clone());
        }
    }
    Ok(created)
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
    /// Returns the policy and, under `-c`, where the state lives; `Err`
    /// names a location that cannot be used in the chroot.
    pub(super) fn at_start(
        cfg: &mut Config,
        owner: Option<MailOwner>,
        chroot: bool,
        log: &Logger,
    ) -> Result<(PathPolicy, Vec<JailPath>), MasterError> {
        let as_configured = cfg.clone();
        redirect_all(cfg, owner.as_ref(), log);
        let jailed = if chroot {
            relocate_into_chroot(cfg)?
        } else {
            Vec::new()
        };
        let policy = PathPolicy {
            owner,
            chrooted: chroot,
            as_configured,
            as_started: cfg.clone(),
            log: log.clone(),
        };
        Ok((policy, jailed))
    }

    /// Adjusts a freshly read configuration; `Err` refuses it.
    pub(super) fn adjust(&self, cfg: &mut Config) -> Result<(), MasterError> {
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
            // Paths kept from the start are inside paths already; a new one
            // is mapped, and its directory must exist: only root could make
            // it, and we are not root any more.
            for jp in relocate_into_chroot(cfg)? {
                let holder = jp.inside.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(dir) = holder.filter(|d| !d.is_dir()) {
                    return Err(MasterError::MissingInJail {
                        configured: jp.configured.clone(),
                        dir: dir.to_path_buf(),
                        root: cfg.queue_directory.clone(),
                    });
                }
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
