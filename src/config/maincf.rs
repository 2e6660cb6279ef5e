//! Reading main.cf into raw `name = value` definitions (spec §5.3).
//!
//! Logical lines: a line that starts with whitespace continues the previous
//! one; blank lines and lines whose first non-blank character is `#` are
//! skipped anywhere, even between continuation lines. Values are kept raw
//! (unexpanded): expansion happens when a parameter is read, as in Postfix.

use super::ConfigError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One definition as written, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue {
    /// The unexpanded value, whitespace-trimmed.
    pub value: String,
    /// 1-based line number of the definition's first line; `None` for `-o`.
    pub line: Option<usize>,
    /// The file of the definition when it is not [`RawConfig::file`]:
    /// tlsmgr.cf, for our own parameters joined to main.cf's.
    pub file: Option<PathBuf>,
}

/// Every definition of one main.cf, later ones overriding earlier ones,
/// plus command-line overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConfig {
    /// The file read, for messages; `None` when built from a map.
    pub file: Option<PathBuf>,
    /// Definitions by parameter name.
    pub entries: BTreeMap<String, RawValue>,
    /// Warnings produced while reading (e.g. overriding earlier entries).
    pub warnings: Vec<String>,
    /// Advice logged as information, not as a warning: our parameters
    /// left in main.cf work, and tests and tools that count warnings
    /// should not see one for each start and reload.
    pub notes: Vec<String>,
}

impl RawConfig {
    /// Parses main.cf text; `file` is used in messages only.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = RawConfig {
            file: file.map(Path::to_path_buf),
            ..Default::default()
        };
        let label = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "main.cf".to_string());
        let mut current: Option<(usize, String)> = None;
        for (idx, line) in text.lines().enumerate() {
            let lineno = idx + 1;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                match current.as_mut() {
                    Some((_, buf)) => buf.push_str(line),
                    None => cfg.warnings.push(format!(
                        "{label}, line {lineno}: logical line must not start with whitespace: \"{}\"",
                        line.trim()
                    )),
                }
                continue;
            }
            if let Some((start, buf)) = current.take() {
                cfg.define(&label, file, start, &buf)?;
            }
            current = Some((lineno, line.to_string()));
        }
        if let Some((start, buf)) = current.take() {
            cfg.define(&label, file, start, &buf)?;
        }
        Ok(cfg)
    }

    fn define(
        &mut self,
        label: &str,
        file: Option<&Path>,
        line: usize,
        text: &str,
    ) -> Result<(), ConfigError> {
        let Some((name, value)) = text.split_once('=') else {
            return Err(ConfigError::new(format!(
                "missing '=' after attribute name: \"{}\"",
                text.trim()
            ))
            .at(file, line));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(
                ConfigError::new(format!("missing attribute name: \"{}\"", text.trim()))
                    .at(file, line),
            );
        }
        let value = value.trim().to_string();
        if let Some(old) = self.entries.get(name) {
            self.warnings.push(format!(
                "{label}, line {line}: overriding earlier entry: {name}={}",
                old.value
            ));
        }
        self.entries.insert(
            name.to_string(),
            RawValue {
                value,
                line: Some(line),
                file: None,
            },
        );
        Ok(())
    }

    /// The file that defined `name` (main.cf, or tlsmgr.cf for one of
    /// ours set there), if a file did.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        let entry = self.entries.get(name)?;
        entry.file.as_deref().or(self.file.as_deref())
    }

    /// Where `name` was set, as `tlsmgr check` notes it: `FILE, line N`,
    /// or `-o` for a command-line (master.cf) override; `None` when it
    /// has its default.
    pub fn origin(&self, name: &str) -> Option<String> {
        let entry = self.entries.get(name)?;
        match (entry.line, self.file_of(name)) {
            (Some(line), Some(file)) => Some(format!("{}, line {line}", file.display())),
            (Some(line), None) => Some(format!("line {line}")),
            (None, _) => Some("-o".to_string()),
        }
    }

    /// Joins the definitions of tlsmgr.cf (`ours`, read from `ours_path`;
    /// `None` when there is no such file) to main.cf's (`self`).
    ///
    /// tlsmgr.cf exists so that our `tlsmgr_*` parameters are out of
    /// Postfix's sight: in main.cf, postconf(1) and `postfix check` warn
    /// about each as an unused parameter. So:
    ///
    /// - only `tlsmgr_*` names are taken from tlsmgr.cf. Any other name is
    ///   Postfix's (or would be taken for one by `$name`), and Postfix reads
    ///   it from main.cf only; taking it here would make tlsmgr and Postfix
    ///   disagree. It is ignored, with a warning naming file, line and
    ///   parameter;
    /// - a `tlsmgr_*` name set in both files takes tlsmgr.cf's value (the
    ///   file meant for it), with a warning naming both lines;
    /// - `tlsmgr_*` names still set in main.cf keep working, with one
    ///   note (not a warning) for all of them saying to move them.
    pub fn join_ours(&mut self, ours: Option<RawConfig>, ours_path: &Path) {
        let main_label = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "main.cf".to_string());
        let ours_label = ours_path.display().to_string();
        if let Some(ours) = ours {
            self.warnings.extend(ours.warnings);
            let mut defined: Vec<(String, RawValue)> = ours.entries.into_iter().collect();
            defined.sort_by_key(|(_, v)| v.line);
            for (name, mut value) in defined {
                let line = value.line.unwrap_or(0);
                if !super::params::is_ours(&name) {
                    self.warnings.push(format!(
                        "{ours_label}, line {line}: {name} belongs in main.cf, where Postfix \
                         reads it (tlsmgr.cf holds only tlsmgr_* parameters) -- ignored"
                    ));
                    continue;
                }
                if let Some(main_line) = self.entries.get(&name).and_then(|v| v.line) {
                    self.warnings.push(format!(
                        "{ours_label}, line {line}: {name} is also set in {main_label}, \
                         line {main_line}; the value here wins: delete the main.cf line"
                    ));
                }
                value.file = Some(ours_path.to_path_buf());
                self.entries.insert(name, value);
            }
        }
        let mut legacy: Vec<(usize, &str)> = self
            .entries
            .iter()
            .filter(|(name, v)| super::params::is_ours(name) && v.file.is_none())
            .filter_map(|(name, v)| v.line.map(|l| (l, name.as_str())))
            .collect();
        if !legacy.is_empty() {
            legacy.sort_unstable();
            let list: Vec<String> = legacy
                .iter()
                .map(|(line, name)| format!("{name} (line {line})"))
                .collect();
            self.notes.push(format!(
                "{main_label}: {}: Postfix warns that {} unused; move {} to {ours_label}",
                list.join(", "),
                if legacy.len() == 1 {
                    "this parameter is"
                } else {
                    "these parameters are"
                },
                if legacy.len() == 1 { "it" } else { "them" },
            ));
        }
    }

    /// Applies a `-o name=value` override (split at the first `=`, trimmed),
    /// also in master.cf's `-o { name = value }` form (Postfix 3.0+), whose
    /// value may contain spaces.
    pub fn apply_override(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let t = assignment.trim();
        let t = match t.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(inner) => inner,
            None => t,
        };
        let Some((name, value)) = t.split_once('=') else {
            return Err(ConfigError::new(format!(
                "-o: missing '=' in \"{assignment}\""
            )));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(ConfigError::new(format!(
                "-o: missing parameter name in \"{assignment}\""
            )));
        }
        self.entries.insert(
            name.to_string(),
            RawValue {
                value: value.trim().to_string(),
                line: None,
                file: None,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn logical_lines_comments_and_overrides() {
        let text = "# comment\na = 1\nb = x\n  y\n\n# between\n\tz\na=2\n";
        let cfg = RawConfig::parse(text, Some(Path::new("/etc/postfix/main.cf"))).unwrap();
        assert_eq!(cfg.entries["a"].value, "2");
        assert_eq!(cfg.entries["a"].line, Some(8));
        assert_eq!(cfg.entries["b"].value, "x  y\tz");
        assert_eq!(
            cfg.warnings,
            vec!["/etc/postfix/main.cf, line 8: overriding earlier entry: a=1"]
        );
    }

    #[test]
    fn hash_inside_value_is_data() {
        let cfg = RawConfig::parse("a = x # not a comment\n", None).unwrap();
        assert_eq!(cfg.entries["a"].value, "x # not a comment");
    }

    #[test]
    fn missing_equals_names_file_and_line() {
        let err = RawConfig::parse("a = 1\nbogus line\n", Some(Path::new("/c/main.cf")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/c/main.cf, line 2: missing '=' after attribute name: \"bogus line\""
        );
    }

    #[test]
    fn leading_continuation_is_warned_and_ignored() {
        let cfg = RawConfig::parse("  orphan\na = 1\n", None).unwrap();
        assert_eq!(cfg.entries.len(), 1);
        assert_eq!(cfg.warnings.len(), 1);
    }

    fn joined(main: &str, ours: Option<&str>) -> RawConfig {
        let mut raw = RawConfig::parse(main, Some(Path::new("/c/main.cf"))).unwrap();
        let ours_path = Path::new("/c/tlsmgr.cf");
        let ours = ours.map(|t| RawConfig::parse(t, Some(ours_path)).unwrap());
        raw.join_ours(ours, ours_path);
        raw
    }

    #[test]
    fn ours_join_main_cf_and_win() {
        let raw = joined(
            "data_directory = /d\ntlsmgr_io_threads = 2\n",
            Some("tlsmgr_io_threads = 4\ntlsmgr_ticket_key_file = ${data_directory}/k\n"),
        );
        assert_eq!(raw.entries["tlsmgr_io_threads"].value, "4");
        assert_eq!(
            raw.file_of("tlsmgr_io_threads"),
            Some(Path::new("/c/tlsmgr.cf"))
        );
        assert_eq!(raw.file_of("data_directory"), Some(Path::new("/c/main.cf")));
        assert_eq!(
            raw.origin("tlsmgr_ticket_key_file").unwrap(),
            "/c/tlsmgr.cf, line 2"
        );
        assert_eq!(raw.origin("data_directory").unwrap(), "/c/main.cf, line 1");
        assert_eq!(raw.origin("mail_owner"), None);
        assert_eq!(
            raw.warnings,
            [
                "/c/tlsmgr.cf, line 1: tlsmgr_io_threads is also set in /c/main.cf, line 2; \
              the value here wins: delete the main.cf line"
            ]
        );
    }

    #[test]
    fn postfix_parameters_in_tlsmgr_cf_are_ignored_with_a_warning() {
        let raw = joined(
            "data_directory = /d\n",
            Some("\ndata_directory = /elsewhere\nhelper = x\ntlsmgr_io_threads = 1\n"),
        );
        assert_eq!(raw.entries["data_directory"].value, "/d");
        assert!(!raw.entries.contains_key("helper"));
        assert_eq!(
            raw.warnings,
            [
                "/c/tlsmgr.cf, line 2: data_directory belongs in main.cf, where Postfix reads it \
                 (tlsmgr.cf holds only tlsmgr_* parameters) -- ignored",
                "/c/tlsmgr.cf, line 3: helper belongs in main.cf, where Postfix reads it \
                 (tlsmgr.cf holds only tlsmgr_* parameters) -- ignored",
            ]
        );
    }

    #[test]
    fn ours_left_in_main_cf_work_with_one_hint() {
        let raw = joined(
            "tlsmgr_stats_log_interval = 1h\na = 1\ntlsmgr_io_threads = 2\n",
            None,
        );
        assert_eq!(raw.entries["tlsmgr_io_threads"].value, "2");
        assert!(raw.warnings.is_empty());
        assert_eq!(
            raw.notes,
            [
                "/c/main.cf: tlsmgr_stats_log_interval (line 1), tlsmgr_io_threads (line 3): \
              Postfix warns that these parameters are unused; move them to /c/tlsmgr.cf"
            ]
        );
        let raw = joined("tlsmgr_io_threads = 2\n", Some(""));
        assert_eq!(
            raw.notes,
            [
                "/c/main.cf: tlsmgr_io_threads (line 1): Postfix warns that this parameter \
              is unused; move it to /c/tlsmgr.cf"
            ]
        );
        // Moved: no hint.
        let raw = joined("a = 1\n", Some("tlsmgr_io_threads = 2\n"));
        assert!(raw.warnings.is_empty() && raw.notes.is_empty(), "{raw:?}");
    }

    #[test]
    fn override_splits_at_first_equals() {
        let mut cfg = RawConfig::default();
        cfg.apply_override(" x = a=b ").unwrap();
        assert_eq!(cfg.entries["x"].value, "a=b");
        assert_eq!(cfg.entries["x"].line, None);
        cfg.apply_override("{ y = with spaces = ok }").unwrap();
        assert_eq!(cfg.entries["y"].value, "with spaces = ok");
        assert!(cfg.apply_override("{ novalue }").is_err());
        assert!(cfg.apply_override(" = v").is_err());
    }
}
