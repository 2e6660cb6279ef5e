//! `tlsmgr serve` run as root keeps its files out of other users'
//! directories.
//!
//! On a Postfix host the defaults put tlsmgr's files in `data_directory`
//! (`/var/lib/postfix`), which belongs to `mail_owner`. A daemon started by
//! hand as root would make `prng_exch`, the stores and the ticket key file
//! there as root, mode 0600, and the Postfix daemons, which run as
//! `mail_owner`, could then no longer open them: the stock tlsmgr logs
//! "Permission denied" and TLS handshakes fail (seen on a test machine).
//! master(8) never leaves us root (`src/master` switches to `mail_owner`),
//! so this applies to `serve` only: at start, and to every configuration a
//! reload reads (the watcher's adjust hook), which is refused while the
//! last good one stays in force.

use crate::config::{params, Config};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A state file of a root daemon would land in another user's directory.
#[derive(Debug, thiserror::Error)]
pub struct ForeignOwner {
    /// The parameter that names the file.
    pub param: &'static str,
    /// The file or store directory, as configured.
    pub path: PathBuf,
    /// The path itself, or its nearest existing ancestor, that another user owns.
    pub holder: PathBuf,
    /// That user's name, or `uid N` when it has none.
    pub owner: String,
}

impl std::fmt::Display for ForeignOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (param, owner) = (self.param, &self.owner);
        write!(f, "{param}: {}", self.path.display())?;
        if self.holder != self.path {
            write!(f, " is in {}, which", self.holder.display())?;
        }
        write!(
            f,
            " belongs to {owner}, not to root: what tlsmgr serve makes there as root, \
             the daemons that run as {owner} cannot open; run tlsmgr serve as {owner}, \
             or point {param} at a directory of root's"
        )
    }
}

/// Every file and store directory `cfg` writes: the stores and the ticket
/// key file ([`Config::state_paths`]) and the PRNG exchange file.
fn written_paths(cfg: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut paths = cfg.state_paths();
    if let Some(p) = &cfg.tls_random_exchange_name {
        paths.push((params::TLS_RANDOM_EXCHANGE_NAME, p.clone()));
    }
    paths
}

/// The path itself when it exists, else its nearest existing ancestor (a
/// relative path ends at the working directory), with its owner's uid.
fn existing_holder(path: &Path) -> Option<(PathBuf, u32)> {
    let mut p = path;
    loop {
        let probe = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        if let Ok(meta) = std::fs::metadata(probe) {
            return Some((probe.to_path_buf(), meta.uid()));
        }
        p = p.parent()?;
    }
}

/// For a daemon whose effective uid is `euid`: when that is root, the first
/// file or store of `cfg` that lies in (or is) something another user owns.
/// Any other uid may write only where that user's permissions allow.
pub fn check(cfg: &Config, euid: u32) -> Result<(), ForeignOwner> {
    if euid != 0 {
        return Ok(());
    }
    for (param, path) in written_paths(cfg) {
        let Some((holder, uid)) = existing_holder(&path) else {
            continue;
        };
        if uid != euid {
            let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {uid}"), |u| u.name);
            return Err(ForeignOwner {
                param,
                path,
                holder,
                owner,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(data_directory: &Path) -> Config {
        let map: HashMap<String, String> = [
            ("data_directory", data_directory.to_str().unwrap()),
            (
                "smtpd_tls_session_cache_database",
                "btree:${data_directory}/smtpd_scache",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Config::from_source(&map).unwrap()
    }

    #[test]
    fn a_missing_path_is_judged_by_its_nearest_existing_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        assert_eq!(existing_holder(&deep).unwrap().0, tmp.path());
        assert_eq!(
            existing_holder(Path::new("no/such/dir")).unwrap().0,
            Path::new(".")
        );
    }

    #[test]
    fn only_root_is_checked_and_root_may_use_its_own_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(&tmp.path().join("data"));
        // The temporary directory is the test's own: mine, whoever I am.
        let me = nix::unistd::geteuid().as_raw();
        if me == 0 {
            check(&cfg, 0).unwrap();
        }
        // Another uid is never refused: its permissions decide.
        check(&cfg, 12345).unwrap();
    }

    #[test]
    fn root_is_refused_a_directory_another_user_owns() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: chown needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(65534), None).unwrap();
        let err = check(&config(&data), 0).unwrap_err();
        // The first path written there: the smtpd store, judged by data/.
        assert_eq!(err.param, "smtpd_tls_session_cache_database");
        assert_eq!(err.holder, data);
        let text = err.to_string();
        assert!(
            text.contains(&format!("{}/smtpd_scache.fjall", data.display())),
            "{text}"
        );
        assert!(text.contains("not to root"), "{text}");
        // A store of that user's in a directory of root's: the store itself.
        std::os::unix::fs::chown(&data, Some(0), None).unwrap();
        let store = data.join("smtpd_scache.fjall");
        std::fs::create_dir(&store).unwrap();
        std::os::unix::fs::chown(&store, Some(65534), None).unwrap();
        let err = check(&config(&data), 0).unwrap_err();
        assert_eq!(err.holder, store);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "smtpd_tls_session_cache_database: {} belongs to nobody, not to root: ",
                store.display()
            )),
            "{text}"
        );
    }
}
