//! Logging through slog, formatted the way Postfix formats its lines, so
//! existing log tools keep working: `postfix/tlsmgr[1234]: warning: text`.
//!
//! slog levels map to Postfix's prefixes: Info → none, Warning → `warning: `,
//! Error → `error: `, Critical → `fatal: `. Debug and Trace are the `-v`
//! verbose lines (shown only when verbose logging is on).
//!
//! Destinations: stderr (`tlsmgr serve`, and `-V` under master(8), where
//! Postfix leaves out the pid), a buffer (tests), syslog ([`SyslogDrain`],
//! ident `<syslog_name>/<process_name>`, `LOG_PID`, the `syslog_facility`),
//! or postlogd ([`PostlogDrain`], when `maillog_file` is set), spec §6.

use slog::{Drain, Level, OwnedKVList, Record, KV};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// The Postfix prefix for a level.
pub fn prefix(level: Level) -> &'static str {
    match level {
        Level::Critical => "fatal: ",
        Level::Error => "error: ",
        Level::Warning => "warning: ",
        Level::Info | Level::Debug | Level::Trace => "",
    }
}

/// Writes one line per record: `TAG[PID]: PREFIX MESSAGE [key=value ...]`.
pub struct PostfixDrain<W: Write + Send> {
    tag: String,
    out: Mutex<W>,
    verbose: bool,
    with_pid: bool,
}

impl<W: Write + Send> PostfixDrain<W> {
    /// A drain writing to `out` with tag e.g. `postfix/tlsmgr`.
    pub fn new(tag: impl Into<String>, out: W, verbose: bool) -> Self {
        PostfixDrain {
            tag: tag.into(),
            out: Mutex::new(out),
            verbose,
            with_pid: true,
        }
    }

    /// Lines without `[pid]`, as Postfix writes them to stderr (`-V`).
    pub fn without_pid(mut self) -> Self {
        self.with_pid = false;
        self
    }
}

/// The text after the tag: prefix, message and key=value pairs, cut at
/// Postfix's 2000 characters without splitting a UTF-8 sequence.
fn message_text(record: &Record<'_>, values: &OwnedKVList) -> String {
    let mut kv = KvText(String::new());
    let _ = record.kv().serialize(record, &mut kv);
    let _ = values.serialize(record, &mut kv);
    let mut text = format!("{}{}{}", prefix(record.level()), record.msg(), kv.0);
    if text.len() > 2000 {
        let mut cut = 2000;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn shown(record: &Record<'_>, verbose: bool) -> bool {
    verbose || !matches!(record.level(), Level::Debug | Level::Trace)
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl<W: Write + Send> Drain for PostfixDrain<W> {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), std::io::Error> {
        if !shown(record, self.verbose) {
            return Ok(());
        }
        let text = message_text(record, values);
        let line = if self.with_pid {
            format!("{}[{}]: {}\n", self.tag, std::process::id(), text)
        } else {
            format!("{}: {}\n", self.tag, text)
        };
        // A poisoned lock only means another thread panicked mid-write: keep logging.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(line.as_bytes())?;
        out.flush()
    }
}

/// A logger writing Postfix-style lines to stderr.
pub fn stderr_logger(tag: &str, verbose: bool) -> slog::Logger {
    let drain = PostfixDrain::new(tag, std::io::stderr(), verbose).ignore_res();
    slog::Logger::root(drain, slog::o!())
}

/// The syslog facility named like syslog.conf does (`mail`, `local0`, ...).
pub fn syslog_facility(name: &str) -> Option<libc::c_int> {
    Some(match name.to_ascii_lowercase().as_str() {
        "auth" => libc::LOG_AUTH,
        "authpriv" => libc::LOG_AUTHPRIV,
        "cron" => libc::LOG_CRON,
        "daemon" => libc::LOG_DAEMON,
        "ftp" => libc::LOG_FTP,
        "kern" => libc::LOG_KERN,
        "lpr" => libc::LOG_LPR,
        "mail" => libc::LOG_MAIL,
        "news" => libc::LOG_NEWS,
        "syslog" => libc::LOG_SYSLOG,
        "user" => libc::LOG_USER,
        "uucp" => libc::LOG_UUCP,
        "local0" => libc::LOG_LOCAL0,
        "local1" => libc::LOG_LOCAL1,
        "local2" => libc::LOG_LOCAL2,
        "local3" => libc::LOG_LOCAL3,
        "local4" => libc::LOG_LOCAL4,
        "local5" => libc::LOG_LOCAL5,
        "local6" => libc::LOG_LOCAL6,
        "local7" => libc::LOG_LOCAL7,
        _ => return None,
    })
}

/// Lines to syslog(3). There is one syslog connection per process, so
/// [`SyslogDrain::open`] replaces any earlier ident and facility.
pub struct SyslogDrain {
    verbose: bool,
}

impl SyslogDrain {
    /// `openlog(tag, LOG_PID | LOG_NDELAY, facility)`: LOG_NDELAY connects
    /// to /dev/log now, before a chroot hides it.
    pub fn open(tag: &str, facility: libc::c_int, verbose: bool) -> SyslogDrain {
        let ident = std::ffi::CString::new(tag.replace('\0', ""))
            .unwrap_or_else(|_| c"postfix/tlsmgr".to_owned());
        // openlog keeps the pointer, so the ident must live for the process.
        let ident: &'static std::ffi::CStr = Box::leak(ident.into_boxed_c_str());
        // SAFETY: `ident` is a valid NUL-terminated string that is never
        // freed; openlog has no other preconditions.
        unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, facility) };
        SyslogDrain { verbose }
    }
}

impl Drain for SyslogDrain {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), std::io::Error> {
        if !shown(record, self.verbose) {
            return Ok(());
        }
        let priority = match record.level() {
            Level::Critical => libc::LOG_CRIT,
            Level::Error => libc::LOG_ERR,
            Level::Warning => libc::LOG_WARNING,
            Level::Info => libc::LOG_INFO,
            Level::Debug | Level::Trace => libc::LOG_DEBUG,
        };
        let text = std::ffi::CString::new(message_text(record, values).replace('\0', ""))
            .unwrap_or_default();
        // SAFETY: the format is a literal "%s" and its one argument is a
        // valid NUL-terminated string that outlives the call; syslog(3) is
        // thread-safe in glibc.
        unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
        Ok(())
    }
}

/// Lines to postlogd(8) (`maillog_file`, Postfix 3.4+): one datagram per
/// line on the `public/postlog` socket, formatted as Postfix's
/// msg_logger does: `Mon DD HH:MM:SS host tag[pid]: text`.
pub struct PostlogDrain {
    socket: Mutex<std::os::unix::net::UnixDatagram>,
    paths: Vec<std::path::PathBuf>,
    tag: String,
    host: String,
    verbose: bool,
}

impl PostlogDrain {
    /// Connects to the first of `paths` that answers (the absolute socket
    /// path, then the path as seen from inside a chroot); reconnects the
    /// same way after a send fails.
    pub fn connect(
        paths: Vec<std::path::PathBuf>,
        tag: &str,
        host: &str,
        verbose: bool,
    ) -> std::io::Result<PostlogDrain> {
        let socket = Self::open(&paths)?;
        // glibc's localtime_r loads the zone once: do it before a chroot
        // hides /etc/localtime.
        let _ = syslog_timestamp();
        Ok(PostlogDrain {
            socket: Mutex::new(socket),
            paths,
            tag: tag.to_string(),
            host: host.split('.').next().unwrap_or(host).to_string(),
            verbose,
        })
    }

    fn open(paths: &[std::path::PathBuf]) -> std::io::Result<std::os::unix::net::UnixDatagram> {
        let mut last = std::io::Error::other("no postlog socket configured");
        for p in paths {
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            match s.connect(p) {
                Ok(()) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// `%b %d %H:%M:%S` in local time.
fn syslog_timestamp() -> String {
    let now: libc::time_t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: `tm` is plain old data, fully written by localtime_r before
    // strftime reads it; the output buffer's size is passed to strftime,
    // which returns how many bytes it wrote (0 on overflow).
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return String::new();
        }
        let mut buf = [0u8; 64];
        let n = libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%b %d %H:%M:%S".as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drain for PostlogDrain {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), std::io::Error> {
        if !shown(record, self.verbose) {
            return Ok(());
        }
        let line = format!(
            "{} {} {}[{}]: {}",
            syslog_timestamp(),
            self.host,
            self.tag,
            std::process::id(),
            message_text(record, values)
        );
        let mut sock = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        if sock.send(line.as_bytes()).is_err() {
            *sock = Self::open(&self.paths)?;
            sock.send(line.as_bytes())?;
        }
        Ok(())
    }
}

/// A shared in-memory buffer that collects log lines (tests, `tlsmgr check`).
#[derive(Clone, Default)]
pub struct MemoryLog(Arc<Mutex<Vec<u8>>>);

impl MemoryLog {
    /// A logger writing into this buffer.
    pub fn logger(&self, tag: &str) -> slog::Logger {
        let drain = PostfixDrain::new(tag, self.clone(), true).ignore_res();
        slog::Logger::root(drain, slog::o!())
    }
    /// Everything logged so far.
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Write for MemoryLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        b.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::{info, warn};

    #[test]
    fn postfix_format() {
        let mem = MemoryLog::default();
        let log = mem.logger("postfix/tlsmgr");
        warn!(log, "bogus cache type \"x\" in \"policy\" request");
        info!(log, "plain");
        let pid = std::process::id();
        assert_eq!(
            mem.text(),
            format!(
                "postfix/tlsmgr[{pid}]: warning: bogus cache type \"x\" in \"policy\" request\npostfix/tlsmgr[{pid}]: plain\n"
            )
        );
    }
}
