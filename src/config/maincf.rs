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
            },
        );
        Ok(())
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
