//! Just enough of master.cf (spec §4.1) to tell how master(8) starts the
//! `tlsmgr` service: whether it is chrooted into `queue_directory`, which
//! decides where the state is on disk. `tlsmgr check` uses it.

use std::path::Path;

/// How master.cf has master(8) run the `tlsmgr` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsmgrService {
    /// The chroot column says `y` (a `-` means Postfix's default, `n`).
    pub chroot: bool,
    /// The line of master.cf that defines it.
    pub line: usize,
}

/// Finds the `tlsmgr unix` service in the text of a master.cf: logical
/// lines (a line that starts with white space continues the one before),
/// `#` comments, fields `service type private unpriv chroot wakeup
/// maxproc command...`. `None` when the service is not defined.
pub fn find_tlsmgr(text: &str) -> Option<TlsmgrService> {
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with([' ', '\t']) || line.trim_start().starts_with('#') {
            continue; // a continuation or a comment: the fields are on the first line
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [service, "unix", _private, _unpriv, chroot, ..] = fields.as_slice() {
            if *service == "tlsmgr" {
                // The last definition wins, as in master(8).
                found = Some(TlsmgrService {
                    chroot: *chroot == "y",
                    line: i + 1,
                });
            }
        }
    }
    found
}

/// [`find_tlsmgr`] on `config_dir/master.cf`; `None` when it cannot be read
/// or does not define the service.
pub fn tlsmgr_service(config_dir: &Path) -> Option<TlsmgrService> {
    let text = std::fs::read_to_string(config_dir.join("master.cf")).ok()?;
    find_tlsmgr(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_and_upstream_lines() {
        let debian = "# comment\nsmtp      inet  n       -       y       -       -       smtpd\n\
                      tlsmgr    unix  -       -       y       1000?   1       tlsmgr\n";
        assert_eq!(
            find_tlsmgr(debian),
            Some(TlsmgrService {
                chroot: true,
                line: 3
            })
        );
        let upstream = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n  -o x=y\n";
        assert_eq!(find_tlsmgr(upstream).map(|s| s.chroot), Some(false));
        let default = "tlsmgr    unix  -       -       -       1000?   1       tlsmgr\n";
        assert_eq!(find_tlsmgr(default).map(|s| s.chroot), Some(false));
        assert_eq!(find_tlsmgr("#tlsmgr unix - - y 1000? 1 tlsmgr\n"), None);
        assert_eq!(find_tlsmgr("tlsmgr inet - - y 1000? 1 tlsmgr\n"), None);
    }
}
