//! The admin socket (`tlsmgr_admin_socket`): `stats`, `keys list`, `keys
//! rotate`, `cache purge TYPE`, `cache delete TYPE ID` (protocol:
//! [`crate::admin`]), served on the daemon thread, never on an I/O thread.
//!
//! Access: the socket file is mode 0600 (bound before any chroot, owned by
//! whoever bound it: mail_owner under master(8)), and every connection's
//! peer uid (`SO_PEERCRED`) must be root's, mail_owner's or the daemon's
//! own; anyone else is told `permission denied` and logged. Each action is
//! logged with the uid that asked.
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once, so that
//! admin clients, however many and however idle, take a bounded number of
//! descriptors (counted in `limits::OWN_FILES_RESERVE`) and never
//! those the stores need; a connection beyond that is told so and closed.
//! A failing accept(2) is logged at most once every
//! `limits::EXHAUSTION_LOG_INTERVAL`, like the main socket's.

use super::limits::{self, LogEvery};
use super::sharing::{self, SharedRemoval};
use super::Services;
use crate::actors::ticket::RotateNow;
use crate::admin::{AdminRequest, MAX_LINE, TIMEOUT};
use crate::protocol::CacheType;
use slog::{info, warn};
use std::cell::Cell;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Binds the admin socket at `path` (`private_socket::bind`:
/// mode 0600, only a stale socket replaced), creating its directory first
/// when missing.
pub fn bind(path: &Path) -> Result<UnixListener, crate::Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::Error::io(format!("create {}", dir.display()), e))?;
        }
    }
    super::private_socket::bind(path)
}

/// Who may use the admin socket: root, `mail_owner` (looked up now, before
/// any chroot hides /etc/passwd) and the daemon's own effective uid.
pub fn allowed_uids(mail_owner: &str) -> Vec<u32> {
    let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
    if let Ok(Some(u)) = nix::unistd::User::from_name(mail_owner) {
        uids.push(u.uid.as_raw());
    }
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Admin connections served at once: a person or a script asks one thing
/// at a time, so a few cover concurrent scripts and monitoring.
pub const MAX_CONNECTIONS: usize = 16;

/// What a connection beyond [`MAX_CONNECTIONS`] is told before it is closed.
const BUSY: &[u8] = b"error: too many admin connections open; try again\n";

/// One admin connection open, for as long as its task lives (it ends, times
/// out or is dropped with the daemon).
struct Open(Rc<Cell<usize>>);

impl Open {
    fn new(count: &Rc<Cell<usize>>) -> Open {
        count.set(count.get() + 1);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Accepts admin connections until the daemon stops.
pub async fn serve(listener: tokio::net::UnixListener, svc: Services, allowed: Vec<u32>) {
    let allowed = std::rc::Rc::new(allowed);
    let open = Rc::new(Cell::new(0usize));
    let mut errors = LogEvery::new(limits::EXHAUSTION_LOG_INTERVAL);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if open.get() >= MAX_CONNECTIONS {
                    // Accepted only to be turned away: left in the listen
                    // queue, the client would wait for the whole timeout
                    // without knowing why. The socket is fresh and empty,
                    // so the one write does not block.
                    let _ = stream.try_write(BUSY);
                    continue;
                }
                let slot = Open::new(&open);
                let svc = svc.clone();
                let allowed = allowed.clone();
                actix_rt::spawn(async move {
                    let _slot = slot;
                    let _ = tokio::time::timeout(TIMEOUT, connection(stream, &svc, &allowed)).await;
                });
            }
            Err(e) => {
                if let Some(unlogged) = errors.due(Instant::now()) {
                    let since = if unlogged > 0 {
                        format!(", {unlogged} more since the last line")
                    } else {
                        String::new()
                    };
                    warn!(
                        svc.log,
                        "admin socket: accept: {}{} (logged at most once every {}s)",
                        e,
                        since,
                        limits::EXHAUSTION_LOG_INTERVAL.as_secs()
                    );
                }
                actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: tokio::net::UnixStream, svc: &Services, allowed: &[u32]) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            warn!(svc.log, "admin socket: cannot get peer credentials: {}", e);
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    if !allowed.contains(&uid) {
        warn!(
            svc.log,
            "admin socket: connection from uid {} refused: permission denied", uid
        );
        let _ = write.write_all(b"error: permission denied\n").await;
        return;
    }
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    if reader.read_until(b'\n', &mut line).await.is_err() {
        return;
    }
    let answer = if line.len() > MAX_LINE || !line.ends_with(b"\n") {
        "error: request line too long or unterminated\n".to_string()
    } else {
        line.pop();
        match String::from_utf8(line) {
            Ok(cmd) => {
                let answer = match AdminRequest::parse(cmd.trim_end_matches('\r')) {
                    Ok(request) => apply(request, uid, svc).await,
                    Err(why) => Err(why),
                };
                match answer {
                    Ok(body) => format!("ok\n{body}"),
                    Err(why) => format!("error: {why}\n"),
                }
            }
            Err(_) => "error: request is not UTF-8\n".to_string(),
        }
    };
    let _ = write.write_all(answer.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Carries out one request for `uid`; the answer's body, or why not.
async fn apply(request: AdminRequest, uid: u32, svc: &Services) -> Result<String, String> {
    match request {
        AdminRequest::Stats => {
            let snap = super::stats::snapshot(svc).await;
            Ok(format!("{}\n", snap.to_json()))
        }
        AdminRequest::KeysList => Ok(keys_list(svc)),
        AdminRequest::KeysRotate => {
            info!(svc.log, "admin: keys rotate requested by uid {}", uid);
            match svc.tickets.send(RotateNow).await {
                Ok(Ok(())) => {
                    let ring = svc.ticket_keys.load();
                    let name = ring
                        .current
                        .map(|k| hex::encode(k.name))
                        .unwrap_or_default();
                    info!(
                        svc.log,
                        "admin: session ticket key {} is current now (rotated for uid {})",
                        name,
                        uid
                    );
                    Ok(format!("new current key {name}\n"))
                }
                Ok(Err(why)) => Err(why.to_string()),
                Err(e) => Err(format!("ticket key actor: {e}")),
            }
        }
        AdminRequest::CachePurge(ct) => cache_removal(ct, None, uid, svc).await,
        AdminRequest::CacheDelete(ct, id) => cache_removal(ct, Some(id), uid, svc).await,
    }
}

/// `cache purge` (`id` = `None`) or `cache delete`: locally and, for a
/// shared cache, in the shared store.
async fn cache_removal(
    ct: CacheType,
    id: Option<String>,
    uid: u32,
    svc: &Services,
) -> Result<String, String> {
    let op = if id.is_some() { "delete" } else { "purge" };
    let cache = svc
        .caches
        .load()
        .get(ct)
        .map(|rc| rc.cache.clone())
        .ok_or_else(|| format!("the {ct} TLS cache is disabled"))?;
    let id = id.map(String::into_bytes);
    let shown = id
        .as_ref()
        .map(|i| format!(" {}", String::from_utf8_lossy(i)))
        .unwrap_or_default();
    info!(
        svc.log,
        "admin: cache {} {}{} requested by uid {}", op, ct, shown, uid
    );
    let timeout = u64::from(cache.limits().timeout);
    // Store I/O blocks: off the daemon thread.
    let local_id = id.clone();
    let local = actix_rt::task::spawn_blocking(move || match local_id {
        None => cache.purge(),
        Some(id) => cache.delete(&id).map(u64::from),
    })
    .await;
    let local = match local {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) => Err(format!("the {ct} TLS cache is not available")),
        Err(e) => Err(format!("cache operation failed: {e}")),
    };
    // The shared copies go too, even when the local store is down:
    // the command is how a suspected leak is contained, and what
    // Redis holds is what every host would read back.
    let shared = match &id {
        None => sharing::admin_purge(svc, ct, timeout).await,
        Some(id) => sharing::admin_delete(svc, ct, id, timeout).await,
    };
    let text = cache_answer(op, ct, &shown, &local, &shared);
    match (&local, &shared) {
        (Ok(_), SharedRemoval::NotShared | SharedRemoval::Removed(_)) => {
            if !matches!(shared, SharedRemoval::NotShared) {
                info!(svc.log, "admin: {}", text);
            }
            Ok(format!("{text}\n"))
        }
        _ => {
            // The protocol's error is one line; a store's message
            // may have more.
            let text = text.replace(['\r', '\n'], " ");
            warn!(svc.log, "admin: {}", text);
            Err(text)
        }
    }
}

/// The answer to `cache delete` (`shown` = " ID") or `cache purge`: where
/// entries were removed, and how many. A cache that is not shared keeps the
/// plain answer it always had.
fn cache_answer(
    op: &str,
    ct: CacheType,
    shown: &str,
    local: &Result<u64, String>,
    shared: &SharedRemoval,
) -> String {
    let done = if op == "delete" { "deleted" } else { "purged" };
    let local_part = match local {
        Ok(n) => format!("local {n}"),
        Err(why) => format!("local not done ({why})"),
    };
    match (local, shared) {
        (Err(why), SharedRemoval::NotShared) => why.clone(),
        (Ok(n), SharedRemoval::NotShared) => match (op, n) {
            ("delete", 0) => format!("no such entry in the {ct} TLS cache"),
            (_, 1) => format!("removed 1 entry from the {ct} TLS cache"),
            _ => format!("removed {n} entries from the {ct} TLS cache"),
        },
        (_, SharedRemoval::Removed(m)) => format!("{done} {ct}{shown}: {local_part}, shared {m}"),
        (
            _,
            SharedRemoval::Failed {
                removed,
                store,
                why,
            },
        ) => {
            let so_far = if *removed > 0 {
                format!("shared {removed} before it failed")
            } else {
                "shared not done".to_string()
            };
            format!(
                "{done} {ct}{shown}: {local_part}, {so_far}: shared store {store}: {why} \
                 -- other hosts may still read {} from it; run the command again when it answers",
                if op == "delete" {
                    "the entry"
                } else {
                    "entries"
                }
            )
        }
    }
}

/// `keys list`: role, name, age and expiry of each key; never key bytes.
fn keys_list(svc: &Services) -> String {
    let ring = svc.ticket_keys.load();
    let now = i64::try_from(svc.clock.now()).unwrap_or(i64::MAX);
    let half = i64::from(svc.config.load().ticket_timeout() / 2);
    let at = |t: i64| super::stats::ctime15(u64::try_from(t).unwrap_or(0));
    let mut out = format!(
        "{:<8} {:<32} {:<18} {:<15} {}\n",
        "role", "name", "age", "encrypts until", "decrypts until"
    );
    for (role, k) in ring.roles() {
        let tout = k.tout_secs();
        // The previous key stopped encrypting at its tout (early, after
        // `keys rotate`); the current one began t - 1 seconds before its
        // tout (Postfix's lifetime), and so does the next one, ahead.
        let age = match role {
            "previous" => format!("retired {}s ago", now - tout),
            _ => match now - (tout - (half - 1)) {
                a if a >= 0 => format!("{a}s"),
                a => format!("starts in {}s", -a),
            },
        };
        out += &format!(
            "{:<8} {} {:<18} {:<15} {}\n",
            role,
            hex::encode(k.name),
            age,
            at(tout),
            at(tout + half),
        );
    }
    out
}
