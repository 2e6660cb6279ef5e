//! Logging through slog, formatted the way Postfix formats its lines, so
//! existing log tools keep working: `postfix/tlsmgr[1234]: warning: text`.
//!
//! slog levels map to Postfix's prefixes: Info → none, Warning → `warning: `,
//! Error → `error: `, Critical → `fatal: `. Debug and Trace are the `-v`
//! verbose lines (shown only when verbose logging is on).
//! The syslog and postlogd drains arrive with the master(8) integration;
//! here lines go to stderr (`tlsmgr serve`) or to a buffer (tests).

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
}

impl<W: Write + Send> PostfixDrain<W> {
    /// A drain writing to `out` with tag e.g. `postfix/tlsmgr`.
    pub fn new(tag: impl Into<String>, out: W, verbose: bool) -> Self {
        PostfixDrain {
            tag: tag.into(),
            out: Mutex::new(out),
            verbose,
        }
    }
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
        if !self.verbose && matches!(record.level(), Level::Debug | Level::Trace) {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let mut line = format!(
            "{}[{}]: {}{}{}",
            self.tag,
            std::process::id(),
            prefix(record.level()),
            record.msg(),
            kv.0
        );
        // Postfix truncates at 2000 characters; never split a UTF-8 sequence.
        if line.len() > 2000 {
            let mut cut = 2000;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        line.push('\n');
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
