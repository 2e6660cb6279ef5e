//! The admin socket of `tlsmgr serve`, end to end through the command
//! line: `keys rotate` changes the key `tktkey` returns, `keys list` shows
//! no key bytes, `cache purge` and `cache delete`, and everyone but root,
//! mail_owner and the daemon's own user is refused (`nobody`).
#![allow(clippy::unwrap_used)]

use crate::common::serve::ServeProcess;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tlsmgr");

struct Serve {
    daemon: ServeProcess,
    dir: PathBuf,
}

impl Serve {
    fn start(dir: &Path) -> Serve {
        std::fs::write(
            dir.join("main.cf"),
            format!(
                "queue_directory = {d}\ndata_directory = {d}/data\n\
                 smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let serve = Serve {
            daemon: ServeProcess::start(dir, ServeProcess::NO_ENV),
            dir: dir.to_path_buf(),
        };
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(serve.admin_socket()).is_ok() {
                return serve;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tlsmgr serve did not start: {}", serve.stop());
    }

    /// The default: `$queue_directory/private/tlsmgr.admin`.
    fn admin_socket(&self) -> PathBuf {
        self.dir.join("private/tlsmgr.admin")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `tlsmgr ARGS -c DIR`, finding the sockets from main.cf alone.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(&args[..1])
            .arg("-c")
            .arg(&self.dir)
            .args(&args[1..]);
        cmd
    }

    fn tktkey(&self, name: Option<&str>) -> Output {
        let mut args = vec!["client", "tktkey"];
        args.extend(name);
        self.run(&args)
    }

    /// The keybuf (hex) of an OK `tktkey` reply.
    fn current_key(&self) -> String {
        let o = self.tktkey(None);
        let text = String::from_utf8(o.stdout).unwrap();
        text.strip_prefix("status: OK\nkeybuf: ")
            .unwrap_or_else(|| panic!("{text}"))
            .trim_end()
            .to_string()
    }

    /// SIGTERM; the daemon's log.
    fn stop(self) -> String {
        self.daemon.stop_with_log().1
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn keys_rotate_changes_the_key_tktkey_returns() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    let mode = std::fs::metadata(serve.admin_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let old = serve.current_key();
    assert_eq!(serve.current_key(), old, "no rotation without asking");
    let list = serve.run(&["keys", "list"]);
    assert!(list.status.success());
    let before = text(&list);
    // keybuf = name (16) + AES key (32) + HMAC key (32) + tout: the list
    // shows the name, never the key bytes.
    let (old_name, old_bits, old_hmac) = (&old[..32], &old[32..96], &old[96..160]);
    assert!(before.contains(&format!("current  {old_name}")), "{before}");
    assert!(
        !before.contains(old_bits) && !before.contains(old_hmac),
        "{before}"
    );
    let old_next = before
        .lines()
        .find(|l| l.starts_with("next "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();

    let o = serve.run(&["keys", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new = serve.current_key();
    assert_ne!(new[..32], old[..32], "a new current key");
    assert_ne!(new[..32], old_next, "not the next key made in advance");
    assert_eq!(text(&o), format!("new current key {}\n", &new[..32]));
    // Tickets under the old key still resume; the old next key is gone.
    let by_old = serve.tktkey(Some(old_name));
    assert_eq!(by_old.status.code(), Some(0), "{}", text(&by_old));
    assert_eq!(serve.tktkey(Some(&old_next)).status.code(), Some(1));
    let after = text(&serve.run(&["keys", "list"]));
    assert!(
        after.contains(&format!("previous {old_name} retired ")),
        "{after}"
    );
    assert!(
        after.contains(&format!("current  {}", &new[..32])),
        "{after}"
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&serve.run(&["stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["tickets"]["rotations"], 1);
    let log = serve.stop();
    assert!(
        log.contains("admin: keys rotate requested by uid 0"),
        "{log}"
    );
}

#[test]
fn cache_purge_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    for id in ["a", "b", "c"] {
        let mut child = serve
            .command(&["client", "update", "smtpd", id, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"session").unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = serve.run(&["cache", "delete", "smtpd", "b"]);
    assert_eq!(text(&o), "removed 1 entry from the smtpd TLS cache\n");
    let o = serve.run(&["cache", "delete", "smtpd", "b"]);
    assert_eq!(text(&o), "no such entry in the smtpd TLS cache\n");
    assert_eq!(
        serve.run(&["client", "lookup", "smtpd", "b"]).status.code(),
        Some(1)
    );
    assert_eq!(
        serve.run(&["client", "lookup", "smtpd", "a"]).status.code(),
        Some(0)
    );
    let o = serve.run(&["cache", "purge", "smtpd"]);
    assert_eq!(text(&o), "removed 2 entries from the smtpd TLS cache\n");
    assert_eq!(
        serve.run(&["client", "lookup", "smtpd", "a"]).status.code(),
        Some(1)
    );
    assert_eq!(
        serve.run(&["client", "lookup", "smtpd", "c"]).status.code(),
        Some(1)
    );
    // A disabled cache, an unknown one: refused, exit 1.
    let o = serve.run(&["cache", "purge", "smtp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the smtp TLS cache is disabled"));
    let o = serve.run(&["cache", "purge", "imap"]);
    assert_eq!(o.status.code(), Some(1));
    let log = serve.stop();
    assert!(
        log.contains("admin: cache delete smtpd b requested by uid 0"),
        "{log}"
    );
    assert!(
        log.contains("admin: cache purge smtpd requested by uid 0"),
        "{log}"
    );
}

const NOBODY: u32 = 65534;

#[test]
fn nobody_gets_permission_denied() {
    if nix::unistd::geteuid().as_raw() != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("skipping: needs root to run a command as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    let key = serve.current_key();
    let as_nobody = |args: &[&str]| {
        let mut cmd = serve.command(args);
        cmd.uid(NOBODY).gid(NOBODY);
        cmd.output().unwrap()
    };
    // The socket is 0600: nobody cannot even connect.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = as_nobody(&["keys", "rotate"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("Permission denied"), "{err}");
    // With the file and its directory (0700 since serve makes it so)
    // opened to all, the peer check still refuses.
    let admin = serve.admin_socket();
    if let Some(parent) = admin.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [
        &["keys", "rotate"][..],
        &["stats"],
        &["cache", "purge", "smtpd"],
    ] {
        let o = as_nobody(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains("fatal: permission denied"), "{err}");
        assert!(o.stdout.is_empty());
    }
    assert_eq!(serve.current_key(), key, "nobody's rotate did nothing");
    // Root still may.
    assert!(serve.run(&["stats"]).status.success());
    let log = serve.stop();
    assert_eq!(
        log.matches(&format!(
            "admin socket: connection from uid {NOBODY} refused: permission denied"
        ))
        .count(),
        3,
        "{log}"
    );
    assert!(!log.contains("admin: keys rotate"), "{log}");
}

/// `-c DIR` may come before or after the action, as an admin types it
/// either way: `tlsmgr keys -c DIR list` and `tlsmgr keys list -c DIR`.
#[test]
fn config_dir_may_follow_the_action() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Serve::start(tmp.path());
    for (args, what) in [
        (vec!["keys", "list"], "keys list"),
        (vec!["cache", "purge", "smtpd"], "cache purge smtpd"),
        (vec!["stats"], "stats"),
    ] {
        let o = Command::new(BIN)
            .args(&args)
            .arg("-c")
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{what} -c DIR: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    d.stop();
}
