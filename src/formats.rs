//! The on-disk formats tlsmgr owns, named and versioned in one place.
//!
//! | format | where | identified by | version |
//! |--------|-------|---------------|---------|
//! | session store records | `PATH.fjall/` (fjall 3 database) | [`STORE_FORMAT_FILE`] in the directory | [`STORE_FORMAT`] |
//! | ticket key file | `tlsmgr_ticket_key_file` | its length: three slots of 1 + 88 bytes, or two slots, read only | none (the length) |
//! | PRNG exchange file | `tls_random_exchange_name` | Postfix's: 1024 raw bytes (`prng::exchange::EXCHANGE_SIZE`), no header | none (stock Postfix's format) |
//!
//! # Session store
//!
//! The store's record layout (`src/store/fjall/mod.rs`, "Layout") is ours;
//! fjall versions its own files (its `version` file, checked by fjall).
//! [`STORE_FORMAT_FILE`] holds one line, `tlsmgr-store N`, written when a
//! store is created (and when a store written before the file existed is
//! first opened: its records are format 1). A store whose file names
//! another format, or does not parse, is not read: it is set aside as
//! `PATH.fjall.broken-<UTC time>` and a fresh store is started, as for a
//! store fjall cannot read (the cache only saves full handshakes; Postfix
//! itself starts its caches empty at every start). Change [`STORE_FORMAT`]
//! whenever a record or key layout changes.
//!
//! # Ticket key file
//!
//! `src/tickets/file.rs`: three slots (previous, current, next), each a
//! presence byte and the native 88-byte key struct. It carries no version
//! field: the length tells the layouts apart (the earlier two-slot files
//! are still read). A file of any other length is ignored with a warning
//! and replaced by fresh keys.
//!
//! # PRNG exchange file
//!
//! `src/prng/exchange.rs`: 1024 bytes of generator output, the format
//! stock Postfix reads and writes; it is shared with stock tlsmgr and has
//! no version of its own.

/// The current version of the session store's record format.
pub const STORE_FORMAT: u32 = 1;

/// The format's name, the first word of [`STORE_FORMAT_FILE`].
pub const STORE_FORMAT_NAME: &str = "tlsmgr-store";

/// The file, inside a store's directory, that names its record format.
pub const STORE_FORMAT_FILE: &str = "tlsmgr-format";

/// The line [`STORE_FORMAT_FILE`] holds for `version`.
pub fn store_format_line(version: u32) -> String {
    format!("{STORE_FORMAT_NAME} {version}\n")
}

/// The version a [`STORE_FORMAT_FILE`]'s text names; `None` when it is not
/// such a line.
pub fn parse_store_format(text: &str) -> Option<u32> {
    let (name, version) = text.trim_end_matches('\n').split_once(' ')?;
    if name != STORE_FORMAT_NAME {
        return None;
    }
    version.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_format_line_parses_back() {
        assert_eq!(parse_store_format(&store_format_line(1)), Some(1));
        assert_eq!(parse_store_format(&store_format_line(7)), Some(7));
        assert_eq!(parse_store_format("tlsmgr-store x\n"), None);
        assert_eq!(parse_store_format("other 1\n"), None);
        assert_eq!(parse_store_format(""), None);
    }
}
