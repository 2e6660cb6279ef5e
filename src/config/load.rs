//! Reading the configuration: where it is (`-c`, `$MAIL_CONFIG`), main.cf
//! and tlsmgr.cf read and joined, `-o` overrides applied, and the one step
//! from their text to a [`Config`] that both start-up and a live reload take.

use super::maincf::{self, RawConfig};
use super::{dir, params, Config, ConfigError};
use std::path::{Path, PathBuf};

/// The configuration directory: `-c DIR` if given, else `$MAIL_CONFIG`, else
/// `/etc/postfix` (Postfix's order).
pub fn config_directory(cli: Option<PathBuf>) -> PathBuf {
    cli.or_else(|| {
        std::env::var_os("MAIL_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from("/etc/postfix"))
}

/// Postfix's configuration file, in the configuration directory.
pub const MAIN_CF: &str = "main.cf";
/// Ours, beside it: `tlsmgr_*` parameters, out of Postfix's sight.
pub const TLSMGR_CF: &str = "tlsmgr.cf";

/// Reads tlsmgr.cf through `dir`: `Ok(None)` when there is none (our
/// parameters then have their defaults, or main.cf's values).
pub fn read_ours(dir: &dir::ConfigDir) -> Result<Option<Vec<u8>>, ConfigError> {
    match dir.read(TLSMGR_CF) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::new(format!(
            "open {}: {}",
            dir.display_path(TLSMGR_CF).display(),
            e
        ))),
    }
}

/// Reads main.cf and tlsmgr.cf through `dir`, sets `config_directory` from
/// the directory (as Postfix does from `-c`/`MAIL_CONFIG`) and applies `-o`
/// overrides.
pub fn read_raw(dir: &dir::ConfigDir, overrides: &[String]) -> Result<RawConfig, ConfigError> {
    let (text, ours) = read_texts(dir)?;
    parse_raw(&text, ours.as_deref(), dir, overrides)
}

/// The text of main.cf and of tlsmgr.cf (`None`: there is none) in `dir`.
fn read_texts(dir: &dir::ConfigDir) -> Result<(Vec<u8>, Option<Vec<u8>>), ConfigError> {
    let path = dir.display_path(MAIN_CF);
    let text = dir
        .read(MAIN_CF)
        .map_err(|e| ConfigError::new(format!("open {}: {}", path.display(), e)))?;
    Ok((text, read_ours(dir)?))
}

/// Parses main.cf text and tlsmgr.cf text (`None`: no such file) read from
/// `dir`, joins them ([`RawConfig::join_ours`]), sets `config_directory`
/// from the directory (as Postfix does from `-c`/`MAIL_CONFIG`) and applies
/// `-o` overrides, which win over both files.
pub fn parse_raw(
    text: &[u8],
    ours: Option<&[u8]>,
    dir: &dir::ConfigDir,
    overrides: &[String],
) -> Result<RawConfig, ConfigError> {
    let path = dir.display_path(MAIN_CF);
    let mut raw = RawConfig::parse(&String::from_utf8_lossy(text), Some(&path))?;
    let ours_path = dir.display_path(TLSMGR_CF);
    let ours = ours
        .map(|t| RawConfig::parse(&String::from_utf8_lossy(t), Some(&ours_path)))
        .transpose()?;
    raw.join_ours(ours, &ours_path);
    raw.entries.insert(
        params::CONFIG_DIRECTORY.to_string(),
        maincf::RawValue {
            value: dir.path().display().to_string(),
            line: None,
            file: None,
        },
    );
    for o in overrides {
        raw.apply_override(o)?;
    }
    Ok(raw)
}

impl Config {
    /// Reads `DIR/main.cf` and `DIR/tlsmgr.cf`, applies `-o` overrides, and
    /// builds the snapshot.
    /// `config_directory` is set from `dir`, as Postfix sets it from `-c`.
    pub fn load(dir: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let handle = dir::ConfigDir::open(dir)
            .map_err(|e| ConfigError::new(format!("open {}: {}", dir.display(), e)))?;
        Config::load_from(&handle, overrides)
    }

    /// Like [`Config::load`], reading the files through an open directory
    /// handle (which keeps working after a chroot).
    pub fn load_from(dir: &dir::ConfigDir, overrides: &[String]) -> Result<Config, ConfigError> {
        let (main, ours) = read_texts(dir)?;
        Config::from_text(&main, ours.as_deref(), dir, overrides)
    }

    /// The one step from the text of main.cf and tlsmgr.cf (`None`: no such
    /// file) read from `dir` to a snapshot, `-o` overrides applied: start-up
    /// ([`Config::load_from`]) and a live reload (the watcher, which reads
    /// the files itself to compare them with its last read) take it alike.
    pub fn from_text(
        main: &[u8],
        ours: Option<&[u8]>,
        dir: &dir::ConfigDir,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        Config::from_raw(&parse_raw(main, ours, dir, overrides)?)
    }

    /// Builds the snapshot of what [`read_raw`] or `parse_raw` read, with
    /// the warnings of the reading.
    pub fn from_raw(raw: &RawConfig) -> Result<Config, ConfigError> {
        let mut cfg = Config::from_source(raw)?;
        cfg.warnings = raw.warnings.clone();
        cfg.notes = raw.notes.clone();
        Ok(cfg)
    }
}
