//! [`ConfigError`]: what a refused configuration says, in Postfix's words,
//! located at the file and line of the definition.

use std::path::{Path, PathBuf};

/// A configuration error, shown as `FILE, line N: MESSAGE` where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the definition came from.
    pub file: Option<PathBuf>,
    /// The line of the definition.
    pub line: Option<usize>,
    /// The message, in Postfix's words, naming the parameter.
    pub message: String,
}

impl ConfigError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            message: message.into(),
        }
    }
    /// Locates the error at `file`, `line`.
    pub fn at(mut self, file: Option<&Path>, line: usize) -> Self {
        self.file = file.map(Path::to_path_buf);
        self.line = Some(line);
        self
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => {
                write!(f, "{}, line {}: {}", file.display(), line, self.message)
            }
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.message),
            _ => f.write_str(&self.message),
        }
    }
}
