//! Privileges as a Postfix daemon handles them (spec §2.2, §4.1): started
//! as root, files are created with the effective uid/gid of `mail_owner`;
//! then `-c` chroots into `queue_directory` and `-u` drops to `mail_owner`
//! for good (setgid, initgroups, setuid).

use super::error::MasterError;
use nix::unistd::{Gid, Uid, User};
use std::ffi::CString;
use std::path::Path;

/// The `mail_owner` account.
#[derive(Debug, Clone)]
pub struct MailOwner {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: Uid,
    /// Its primary gid.
    pub gid: Gid,
}

impl MailOwner {
    /// Looks `name` up in the password database.
    pub fn lookup(name: &str) -> Result<MailOwner, MasterError> {
        match User::from_name(name) {
            Ok(Some(u)) => Ok(MailOwner {
                name: name.to_string(),
                uid: u.uid,
                gid: u.gid,
            }),
            Ok(None) => Err(MasterError::UnknownOwner(name.to_string())),
            Err(source) => Err(MasterError::OwnerLookup {
                name: name.to_string(),
                source,
            }),
        }
    }
}

/// Whether we run as root (and so can and must switch ids).
pub fn is_root() -> bool {
    Uid::effective().is_root() || Uid::current().is_root()
}

/// `SAVE_AND_SET_EUGID`: effective ids of `owner` (process-wide: glibc
/// applies set*id calls to every thread), so new files are owner's.
pub fn set_effective(owner: &MailOwner) -> Result<(), MasterError> {
    nix::unistd::seteuid(Uid::from_raw(0)).map_err(MasterError::call("seteuid(0)"))?;
    nix::unistd::setegid(owner.gid)
        .map_err(MasterError::call(format!("setegid({})", owner.gid)))?;
    nix::unistd::setgroups(&[owner.gid]).map_err(MasterError::call("setgroups"))?;
    nix::unistd::seteuid(owner.uid).map_err(MasterError::call(format!("seteuid({})", owner.uid)))
}

/// Back to root's effective ids (`RESTORE_SAVED_EUGID`).
pub fn restore_root() -> Result<(), MasterError> {
    nix::unistd::seteuid(Uid::from_raw(0)).map_err(MasterError::call("seteuid(0)"))?;
    nix::unistd::setegid(Gid::from_raw(0)).map_err(MasterError::call("setegid(0)"))
}

/// `chroot_uid`: chroot into `root` (then `chdir("/")`) when asked, then
/// drop to `owner` for good when asked.
pub fn chroot_and_drop(root: Option<&Path>, owner: Option<&MailOwner>) -> Result<(), MasterError> {
    if let Some(owner) = owner {
        nix::unistd::setgid(owner.gid)
            .map_err(MasterError::call(format!("setgid({})", owner.gid)))?;
        let cname = CString::new(owner.name.clone())
            .map_err(|_| MasterError::UnknownOwner(owner.name.clone()))?;
        nix::unistd::initgroups(&cname, owner.gid)
            .map_err(MasterError::call(format!("initgroups({})", owner.name)))?;
    }
    if let Some(root) = root {
        nix::unistd::chroot(root)
            .map_err(MasterError::call(format!("chroot({})", root.display())))?;
        nix::unistd::chdir("/").map_err(MasterError::call("chdir(/)"))?;
    }
    if let Some(owner) = owner {
        nix::unistd::setuid(owner.uid)
            .map_err(MasterError::call(format!("setuid({})", owner.uid)))?;
    }
    Ok(())
}

/// Spec §2.9 (`data_redirect_file`): a file whose directory exists but is
/// not owned by mail_owner is moved to `data_directory`, with Postfix's two
/// warnings. Returns the path to use and the warnings to log.
pub fn data_redirect(
    path: &Path,
    kind: &str,
    owner: &MailOwner,
    data_directory: &Path,
) -> (std::path::PathBuf, Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return (path.to_path_buf(), Vec::new());
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.uid() != owner.uid.as_raw() => {
            let Some(base) = path.file_name() else {
                return (path.to_path_buf(), Vec::new());
            };
            let warnings = vec![
                format!(
                    "request to update {kind} {} in non-{} directory {}",
                    path.display(),
                    owner.name,
                    dir.display()
                ),
                format!(
                    "redirecting the request to {}-owned data_directory {}",
                    owner.name,
                    data_directory.display()
                ),
            ];
            (data_directory.join(base), warnings)
        }
        _ => (path.to_path_buf(), Vec::new()),
    }
}
