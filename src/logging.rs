//! Logging through slog, formatted the way Postfix formats its lines, so
//! existing log tools keep working: `postfix/tlsmgr[1234]: warning: text`.
//!
//! slog levels map to Postfix's prefixes: Info → none, Warning → `warning: `,
//! Error → `error: `, Critical → `fatal: `. Debug and Trace are the `-v`
//! verbose lines (shown only when verbose logging is on).
//!
//! Destinations: stderr (`tlsmgr serve`, and `-V` under master(8), where
//! Postfix leaves out the pid), a buffer (tests), syslog or postlogd (when
//! `maillog_file` is set), spec §6: both are datagrams on a local socket
//! ([`DatagramDrain`]), framed as glibc's syslog(3) and Postfix's
//! msg_logger frame them, so the tag is `<syslog_name>/<process_name>`, the
//! pid follows it, and the facility is `syslog_facility`.

use slog::{Drain, Level, OwnedKVList, Record, KV};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// A boxed drain that can live in a [`SwitchDrain`] or a [`slog::Logger`].
pub type BoxedDrain = Box<
    dyn Drain<Ok = (), Err = slog::Never>
        + Send
        + Sync
        + std::panic::RefUnwindSafe
        + std::panic::UnwindSafe,
>;

/// A drain whose destination can be replaced while every logger built over
/// it (cloned into actors and connections) lives on: a live reload that
/// changes `syslog_name` or `syslog_facility` switches it.
#[derive(Clone)]
pub struct SwitchDrain(Arc<arc_swap::ArcSwap<BoxedDrain>>);

impl SwitchDrain {
    /// A switch sending to `drain`.
    pub fn new(drain: BoxedDrain) -> Self {
        SwitchDrain(Arc::new(arc_swap::ArcSwap::from_pointee(drain)))
    }
    /// Sends every later record to `drain`.
    pub fn switch(&self, drain: BoxedDrain) {
        self.0.store(Arc::new(drain));
    }
}

impl Drain for SwitchDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        self.0.load().log(record, values)
    }
}

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

/// Whether Postfix's `printable()` lets `c` through: printable ASCII, and
/// valid UTF-8 as with `smtputf8_enable = yes` (the default from
/// compatibility level 1 on). Invalid UTF-8 reaches us as U+FFFD (text
/// from the wire is converted lossily) and is masked like Postfix masks
/// it. We also mask what Postfix would let through but a log reader may
/// take for a line break or a control: C1 controls (U+0085 NEL among
/// them) and the Unicode line and paragraph separators.
fn is_printable(c: char) -> bool {
    if c.is_ascii() {
        return c == ' ' || c.is_ascii_graphic();
    }
    !(c.is_control() || matches!(c, char::REPLACEMENT_CHARACTER | '\u{2028}' | '\u{2029}'))
}

/// Postfix's `printable(text, '?')`: every character that is not printable
/// becomes `?`. Log text holds names and values that clients sent; a
/// newline in one would otherwise start a forged line in the mail log.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().all(is_printable) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| if is_printable(c) { c } else { '?' })
        .collect::<String>()
        .into()
}

/// The text after the tag: prefix, message and key=value pairs, masked by
/// [`printable`] (as Postfix's msg_output does to every message before any
/// destination sees it), cut at Postfix's 2000 characters without
/// splitting a UTF-8 sequence. Every drain (stderr, the memory log,
/// syslog, postlogd) formats its lines with this, so no call site has to
/// remember to mask what it logs.
fn message_text(record: &Record<'_>, values: &OwnedKVList) -> String {
    let mut kv = KvText(String::new());
    let _ = record.kv().serialize(record, &mut kv);
    let _ = values.serialize(record, &mut kv);
    let raw = format!("{}{}{}", prefix(record.level()), record.msg(), kv.0);
    let mut text = match printable(&raw) {
        std::borrow::Cow::Borrowed(_) => raw,
        std::borrow::Cow::Owned(masked) => masked,
    };
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

/// Where syslog listens. Test builds (feature `test-hooks`) may point it
/// elsewhere with `TLSMGR_TEST_SYSLOG_PATH`.
pub fn syslog_socket_path() -> std::path::PathBuf {
    #[cfg(feature = "test-hooks")]
    if let Some(p) = std::env::var_os("TLSMGR_TEST_SYSLOG_PATH") {
        return p.into();
    }
    std::path::PathBuf::from("/dev/log")
}

/// How a [`DatagramDrain`] frames a line.
#[derive(Debug, Clone)]
pub enum Framing {
    /// syslog(3) on `/dev/log`, as glibc writes it (`openlog(tag,
    /// LOG_PID|LOG_NDELAY, facility)`): `<PRI>Mon DD HH:MM:SS tag[pid]: text`,
    /// with PRI = facility | severity (info, warning, err, crit; debug for
    /// the verbose lines).
    Syslog {
        /// `LOG_MAIL` etc.
        facility: libc::c_int,
    },
    /// postlogd(8) (`maillog_file`, Postfix 3.4+), as Postfix's msg_logger
    /// writes it: `Mon DD HH:MM:SS host tag[pid]: text`.
    Postlog {
        /// The first label of the host name.
        host: String,
    },
}

/// Lines as datagrams on a local socket: syslog or postlogd. The socket is
/// connected at creation (before a chroot hides the path); after a failed
/// send it is reconnected through the same list of paths (the absolute
/// path, then the path as seen from inside the chroot).
///
/// Logging never holds up the data path for long. A datagram socket queues
/// only a few lines (`net.unix.max_dgram_qlen`, 10 by default), and
/// syslog(3), which Postfix uses, waits on a full queue for as long as the
/// reader takes: a syslogd that stops reading stops the daemon. A send here
/// waits at most [`SEND_WAIT`] for room; a line that still does not fit is
/// dropped and counted, and until a line goes through again the next ones
/// do not wait at all. The first line that goes through is preceded by one
/// warning with the number of lines dropped meanwhile.
pub struct DatagramDrain {
    socket: Mutex<Option<std::os::unix::net::UnixDatagram>>,
    paths: Vec<std::path::PathBuf>,
    tag: String,
    framing: Framing,
    verbose: bool,
    /// Lines dropped since the last line that went through.
    unreported: AtomicU64,
}

/// How long one line may wait for room in the log socket's queue, as long
/// as lines are going through: long enough for a reader that is merely busy
/// (a burst of lines at start), short enough that one stalled request does
/// not matter.
pub const SEND_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Log lines that this process could not send to syslogd or postlogd (the
/// queue was full, or no socket accepted them). Kept per process, as the log
/// socket is; the metrics read it.
static LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since the process started (see [`DatagramDrain`]).
pub fn lines_dropped() -> u64 {
    LINES_DROPPED.load(Relaxed)
}

/// syslog drain (see [`Framing::Syslog`]).
pub type SyslogDrain = DatagramDrain;
/// postlogd drain (see [`Framing::Postlog`]).
pub type PostlogDrain = DatagramDrain;

impl DatagramDrain {
    /// A drain for `tag` (e.g. `postfix/tlsmgr`) sending to the first of
    /// `paths` that accepts a connection.
    pub fn new(
        paths: Vec<std::path::PathBuf>,
        tag: &str,
        framing: Framing,
        verbose: bool,
    ) -> DatagramDrain {
        // glibc's localtime_r loads the zone once: do it before a chroot
        // hides /etc/localtime.
        let _ = syslog_timestamp();
        let framing = match framing {
            Framing::Postlog { host } => Framing::Postlog {
                host: host.split('.').next().unwrap_or(&host).to_string(),
            },
            f => f,
        };
        DatagramDrain {
            socket: Mutex::new(Self::open(&paths).ok()),
            paths,
            tag: tag.to_string(),
            framing,
            verbose,
            unreported: AtomicU64::new(0),
        }
    }

    /// Whether the socket is connected now.
    pub fn connected(&self) -> bool {
        self.socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn open(paths: &[std::path::PathBuf]) -> std::io::Result<std::os::unix::net::UnixDatagram> {
        let mut last = std::io::Error::other("no log socket configured");
        for p in paths {
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            match s.connect(p) {
                Ok(()) => {
                    s.set_write_timeout(Some(SEND_WAIT))?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The datagram for one record.
    fn frame(&self, level: Level, text: &str) -> String {
        let pid = std::process::id();
        match &self.framing {
            Framing::Syslog { facility } => {
                let severity = match level {
                    Level::Critical => libc::LOG_CRIT,
                    Level::Error => libc::LOG_ERR,
                    Level::Warning => libc::LOG_WARNING,
                    Level::Info => libc::LOG_INFO,
                    Level::Debug | Level::Trace => libc::LOG_DEBUG,
                };
                format!(
                    "<{}>{} {}[{}]: {}",
                    facility | severity,
                    syslog_timestamp(),
                    self.tag,
                    pid,
                    text
                )
            }
            Framing::Postlog { host } => {
                format!(
                    "{} {} {}[{}]: {}",
                    syslog_timestamp(),
                    host,
                    self.tag,
                    pid,
                    text
                )
            }
        }
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

impl Drain for DatagramDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !shown(record, self.verbose) {
            return Ok(());
        }
        let line = self.frame(record.level(), &message_text(record, values));
        let mut sock = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let dropping = self.unreported.load(Relaxed) > 0;
        if dropping {
            // Lines are not going through: try without waiting.
            let n = self.unreported.load(Relaxed);
            let report = self.frame(
                Level::Warning,
                &format!(
                    "{}{n} log lines were dropped: the log socket was not reading",
                    prefix(Level::Warning)
                ),
            );
            if self.send(&mut sock, report.as_bytes(), false) {
                self.unreported.fetch_sub(n, Relaxed);
            }
        }
        let still_dropping = self.unreported.load(Relaxed) > 0;
        if !self.send(&mut sock, line.as_bytes(), !still_dropping) {
            self.unreported.fetch_add(1, Relaxed);
            LINES_DROPPED.fetch_add(1, Relaxed);
        }
        Ok(())
    }
}

impl DatagramDrain {
    /// Sends one datagram, waiting up to [`SEND_WAIT`] for room if `wait`;
    /// reconnects once if the socket is gone (the reader restarted).
    /// Whether it went through.
    fn send(
        &self,
        sock: &mut Option<std::os::unix::net::UnixDatagram>,
        bytes: &[u8],
        wait: bool,
    ) -> bool {
        for attempt in 0..2 {
            if attempt == 1 || sock.is_none() {
                *sock = Self::open(&self.paths).ok();
            }
            let Some(s) = sock.as_ref() else {
                return false;
            };
            if s.set_nonblocking(!wait).is_err() {
                return false;
            }
            match s.send(bytes) {
                Ok(_) => return true,
                // A full queue: the reader is there, only not reading.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => {}
            }
        }
        false
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
#[allow(clippy::unwrap_used, clippy::expect_used)]
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

    #[test]
    fn control_characters_and_invalid_utf8_are_masked() {
        assert_eq!(printable("plain text ~!"), "plain text ~!");
        assert!(matches!(printable("ok"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            printable("a\nb\rc\td\0e\u{7f}f\u{1b}[1m"),
            "a?b?c?d?e?f?[1m"
        );
        // Valid UTF-8 stays (smtputf8_enable = yes); invalid bytes, C1
        // controls and Unicode line breaks do not.
        assert_eq!(printable("caf\u{e9} \u{65e5}"), "caf\u{e9} \u{65e5}");
        let lossy = String::from_utf8_lossy(b"x\xffy\xc3");
        assert_eq!(printable(&lossy), "x?y?");
        assert_eq!(printable("a\u{85}b\u{2028}c\u{2029}d"), "a?b?c?d");
    }

    #[test]
    fn every_line_is_masked_where_it_is_formatted() {
        let mem = MemoryLog::default();
        let log = mem.logger("postfix/tlsmgr");
        let name = "seed\npostfix/tlsmgr[1]: fatal: FORGED";
        warn!(log, "unknown request \"{}\" from tlsmgr socket", name; "k" => "v\nw");
        let pid = std::process::id();
        assert_eq!(
            mem.text(),
            format!(
                "postfix/tlsmgr[{pid}]: warning: unknown request \"seed?postfix/tlsmgr[1]: fatal: FORGED\" from tlsmgr socket k=v?w\n"
            )
        );
        // The datagram drains frame the same masked text.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        for framing in [
            Framing::Syslog {
                facility: libc::LOG_MAIL,
            },
            Framing::Postlog {
                host: "mx.example".into(),
            },
        ] {
            let drain = DatagramDrain::new(vec![path.clone()], "postfix/tlsmgr", framing, false);
            let log = slog::Logger::root(drain.ignore_res(), slog::o!());
            warn!(
                log,
                "unexpected attribute {} from tlsmgr socket", "a\r\nb\x00"
            );
            let mut buf = [0u8; 512];
            let n = sock.recv(&mut buf).unwrap();
            let line = String::from_utf8_lossy(&buf[..n]);
            assert!(
                line.ends_with(&format!(
                    "postfix/tlsmgr[{pid}]: warning: unexpected attribute a??b? from tlsmgr socket"
                )),
                "{line}"
            );
        }
    }

    #[test]
    fn a_log_socket_nobody_reads_drops_lines_and_then_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let reader = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let drain = DatagramDrain::new(
            vec![path.clone()],
            "postfix/tlsmgr",
            Framing::Syslog {
                facility: libc::LOG_MAIL,
            },
            false,
        );
        let log = slog::Logger::root(drain.ignore_res(), slog::o!());
        let before = lines_dropped();
        // 200 lines into a queue of a few: before, the sender waited for a
        // reader that never came. On another thread, so that a stall fails
        // the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let logger = log.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                warn!(logger, "line {}", i);
            }
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("logging stalled on a log socket nobody reads");
        let mut queued = Vec::new();
        reader.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        while let Ok(n) = reader.recv(&mut buf) {
            queued.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let dropped = 200 - queued.len() as u64;
        assert!(dropped > 0 && !queued.is_empty(), "{} queued", queued.len());
        assert!(lines_dropped() - before >= dropped);
        // The reader reads again: one report, then the line.
        warn!(log, "after");
        reader.set_nonblocking(false).unwrap();
        let n = reader.recv(&mut buf).unwrap();
        let report = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            report.ends_with(&format!(
                "warning: {dropped} log lines were dropped: the log socket was not reading"
            )),
            "{report}"
        );
        let n = reader.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("warning: after"));
        warn!(log, "later");
        let n = reader.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("warning: later"));
    }
}
