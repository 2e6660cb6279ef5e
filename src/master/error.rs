//! What can go wrong in the master(8) adapter: the account, the switch of
//! ids and the chroot, the locations of state inside the jail, logging.
//! Every message is what the daemon logs after `fatal:` (or `warning:` on
//! a reload), so it names the parameter, path or system call.

use std::path::PathBuf;

/// Errors of the master(8) adapter.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// `mail_owner` names no account (Postfix's own wording).
    #[error("parameter mail_owner: unknown user name value: {0}")]
    UnknownOwner(String),
    /// The password database could not be read.
    #[error("cannot look up mail_owner {name}: {source}")]
    OwnerLookup {
        /// The account looked up.
        name: String,
        /// Why it failed.
        source: nix::Error,
    },
    /// A set*id, chroot or chdir call failed; `call` is the call as
    /// written in the log, e.g. `setuid(102)` or `chroot(/var/spool/postfix)`.
    #[error("{call}: {source}")]
    Privileges {
        /// The call and its argument.
        call: String,
        /// Why it failed.
        source: nix::Error,
    },
    /// A store or the key file would sit among the jail's system
    /// directories, which Postfix manages.
    #[error(
        "{} would be kept at {} inside the chroot's {top}/ directory, which Postfix manages; \
         choose a location outside {}/{top}",
        configured.display(), on_disk.display(), root.display()
    )]
    ReservedInJail {
        /// The path as configured.
        configured: PathBuf,
        /// Where it would be on disk.
        on_disk: PathBuf,
        /// The chroot directory.
        root: PathBuf,
        /// The system directory it would be in (`etc`, `usr`, ...).
        top: String,
    },
    /// A reload moved a store or the key file to a directory that does not
    /// exist inside the chroot; only root could make it, at the next start.
    #[error(
        "{}: directory {} does not exist inside the chroot {} (it is created at the next start)",
        configured.display(), dir.display(), root.display()
    )]
    MissingInJail {
        /// The path as configured.
        configured: PathBuf,
        /// The missing directory, as seen inside the chroot.
        dir: PathBuf,
        /// The chroot directory.
        root: PathBuf,
    },
    /// Preparing the jail failed: `op` is `create`, `chmod` or `chown`.
    #[error("{op} {}: {source}", path.display())]
    Jail {
        /// What was done.
        op: &'static str,
        /// To which directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// `syslog_facility` names no facility.
    #[error("file {}: parameter syslog_facility: unrecognized value: {value}", main_cf.display())]
    Facility {
        /// The main.cf that set it.
        main_cf: PathBuf,
        /// The value.
        value: String,
    },
    /// One of the above, about the location set by `parameter`.
    #[error("parameter {parameter}: {source}")]
    Parameter {
        /// The main.cf parameter, e.g. `tlsmgr_ticket_key_file`.
        parameter: String,
        /// What is wrong with it.
        source: Box<MasterError>,
    },
}

impl MasterError {
    /// A failed system call `call`.
    pub(crate) fn call(call: impl Into<String>) -> impl FnOnce(nix::Error) -> MasterError {
        let call = call.into();
        move |source| MasterError::Privileges { call, source }
    }

    /// This error, about the location set by `parameter`.
    pub(crate) fn for_parameter(self, parameter: impl Into<String>) -> MasterError {
        MasterError::Parameter {
            parameter: parameter.into(),
            source: Box::new(self),
        }
    }
}
