//! Where raw values come from ([`Source`]: a parsed main.cf, or a plain map
//! in unit tests) and how typed values are read from them ([`Resolver`]:
//! expansion with a shared budget, Postfix's defaults, errors that name the
//! file, line and parameter).

use super::maincf::RawConfig;
use super::{expand, values, ConfigError, DEFAULTS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Raw, unexpanded parameter values, and where each was defined.
pub trait Source {
    /// The raw value of `name` if the source defines it.
    fn raw(&self, name: &str) -> Option<String>;
    /// The line that defines `name`, if known.
    fn line_of(&self, _name: &str) -> Option<usize> {
        None
    }
    /// The file the values came from, if any.
    fn file(&self) -> Option<&Path> {
        None
    }
    /// The file that defines `name` (main.cf or tlsmgr.cf), if known.
    fn file_of(&self, _name: &str) -> Option<&Path> {
        self.file()
    }
}

impl Source for RawConfig {
    fn raw(&self, name: &str) -> Option<String> {
        self.entries.get(name).map(|v| v.value.clone())
    }
    fn line_of(&self, name: &str) -> Option<usize> {
        self.entries.get(name).and_then(|v| v.line)
    }
    fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
    fn file_of(&self, name: &str) -> Option<&Path> {
        RawConfig::file_of(self, name).or(self.file.as_deref())
    }
}

impl Source for HashMap<String, String> {
    fn raw(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Reads typed parameter values from a [`Source`].
pub(super) struct Resolver<'a> {
    source: &'a dyn Source,
    /// Caps the expansion work of all the values one snapshot reads.
    budget: std::cell::RefCell<expand::Budget>,
}

impl expand::Lookup for Resolver<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        self.source.raw(name).or_else(|| {
            DEFAULTS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }
}

impl<'a> Resolver<'a> {
    pub(super) fn new(source: &'a dyn Source) -> Self {
        Resolver {
            source,
            budget: Default::default(),
        }
    }
    pub(super) fn err(&self, name: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            file: self.source.file_of(name).map(Path::to_path_buf),
            line: self.source.line_of(name),
            message: message.to_string(),
        }
    }
    pub(super) fn string(&self, name: &str) -> Result<String, ConfigError> {
        let raw = expand::Lookup::raw(self, name).unwrap_or_default();
        let mut budget = self.budget.borrow_mut();
        expand::expand_with(&raw, self, &mut budget)
            .map_err(|m| self.err(name, format!("parameter {name}: {m}")))
    }
    pub(super) fn time(&self, name: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let v = self.string(name)?;
        values::parse_time(name, &v, 's')
            .and_then(|t| values::check_time(name, t, min, max))
            .map_err(|m| self.err(name, m))
    }
    pub(super) fn int(&self, name: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
        let v = self.string(name)?;
        values::parse_int(name, &v)
            .and_then(|n| values::check_int(name, n, min, max))
            .map_err(|m| self.err(name, m))
    }
    pub(super) fn bool(&self, name: &str) -> Result<bool, ConfigError> {
        let v = self.string(name)?;
        values::parse_bool(name, &v).map_err(|m| self.err(name, m))
    }
    pub(super) fn path(&self, name: &str) -> Result<Option<PathBuf>, ConfigError> {
        let v = self.string(name)?;
        Ok((!v.is_empty()).then(|| PathBuf::from(v)))
    }
}

/// The expanded value of every parameter in [`DEFAULTS`], as `postconf -x`
/// would print it; an expansion error names the file, line and parameter.
pub fn effective_values(source: &dyn Source) -> Result<Vec<(&'static str, String)>, ConfigError> {
    Resolver::new(source).effective()
}

/// The expanded value of `name` in `source` (defaults included), its work
/// charged to `budget`; an error names the file, line and parameter.
pub fn expand_parameter(
    source: &dyn Source,
    name: &str,
    budget: &mut expand::Budget,
) -> Result<String, ConfigError> {
    let r = Resolver::new(source);
    r.budget.replace(std::mem::take(budget));
    let value = r.string(name);
    *budget = r.budget.into_inner();
    value
}

impl Resolver<'_> {
    pub(super) fn effective(&self) -> Result<Vec<(&'static str, String)>, ConfigError> {
        DEFAULTS
            .iter()
            .map(|(name, _)| Ok((*name, self.string(name)?)))
            .collect()
    }
}
