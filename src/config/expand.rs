//! `$name` expansion of main.cf values (spec §5.3), done when a value is read.
//!
//! Supported: `$name`, `${name}`, `$(name)`, `$$`, `${name?value}`,
//! `${name:value}`, `${name?{v1}:{v2}}` and `${name?{v1}:v2}`; undefined names
//! expand to nothing; recursion is limited to [`MAX_DEPTH`] levels.
//! The comparison form `${{a} == {b} ? {x} : {y}}` is reported as an error
//! (not silently mis-expanded); full support arrives with the main.cf issue.

/// Postfix's nesting limit for macro expansion.
pub const MAX_DEPTH: usize = 100;

/// Looks up the raw (unexpanded) value of a parameter, defaults included.
pub trait Lookup {
    /// The raw value of `name`, or `None` when undefined.
    fn raw(&self, name: &str) -> Option<String>;
}

/// Expands `text`, resolving names through `lookup`. Errors are messages in
/// Postfix's words, without the parameter name (the caller adds it).
pub fn expand(text: &str, lookup: &dyn Lookup) -> Result<String, String> {
    expand_at(text, lookup, 0)
}

fn expand_at(text: &str, lookup: &dyn Lookup, depth: usize) -> Result<String, String> {
    if depth > MAX_DEPTH {
        return Err("macro processing error: nesting too deep".to_string());
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let Some(off) = text[i..].find('$') else {
            out.push_str(&text[i..]);
            break;
        };
        out.push_str(&text[i..i + off]);
        i += off + 1;
        match bytes.get(i) {
            Some(b'$') => {
                out.push('$');
                i += 1;
            }
            Some(&open @ (b'{' | b'(')) => {
                let close = if open == b'{' { b'}' } else { b')' };
                let end = matching(bytes, i, open, close).ok_or_else(|| {
                    format!("macro processing error: unbalanced '{}'", open as char)
                })?;
                let inner = &text[i + 1..end];
                out.push_str(&expand_braced(inner, lookup, depth)?);
                i = end + 1;
            }
            Some(c) if is_name_byte(*c) => {
                let len = bytes[i..].iter().take_while(|c| is_name_byte(**c)).count();
                out.push_str(&value_of(&text[i..i + len], lookup, depth)?);
                i += len;
            }
            // A lone `$` (end of text or followed by punctuation) stays as is.
            _ => out.push('$'),
        }
    }
    Ok(out)
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Index of the `close` that balances the `open` at `start`.
fn matching(bytes: &[u8], start: usize, open: u8, close: u8) -> Option<usize> {
    let mut level = 0usize;
    for (k, &c) in bytes.iter().enumerate().skip(start) {
        if c == open {
            level += 1;
        } else if c == close {
            level -= 1;
            if level == 0 {
                return Some(k);
            }
        }
    }
    None
}

fn value_of(name: &str, lookup: &dyn Lookup, depth: usize) -> Result<String, String> {
    match lookup.raw(name) {
        Some(raw) => expand_at(&raw, lookup, depth + 1),
        None => Ok(String::new()),
    }
}

fn expand_braced(inner: &str, lookup: &dyn Lookup, depth: usize) -> Result<String, String> {
    let trimmed = inner.trim_start();
    if trimmed.starts_with('{') {
        return Err(format!(
            "macro processing error: unsupported expression \"${{{inner}}}\""
        ));
    }
    let len = inner.bytes().take_while(|c| is_name_byte(*c)).count();
    if len == 0 {
        return Err(format!(
            "macro processing error: bad macro name \"{inner}\""
        ));
    }
    let (name, rest) = inner.split_at(len);
    let value = value_of(name, lookup, depth)?;
    let Some(op) = rest.chars().next() else {
        return Ok(value);
    };
    let rest = &rest[1..];
    let (then_part, else_part) = split_alternatives(rest)?;
    let chosen = match op {
        '?' if !value.is_empty() => Some(then_part),
        '?' => else_part,
        ':' if else_part.is_some() => {
            return Err(format!(
                "macro processing error: bad conditional \"{inner}\""
            ))
        }
        ':' if value.is_empty() => Some(then_part),
        ':' => None,
        _ => return Err(format!("macro processing error: bad macro \"{inner}\"")),
    };
    match chosen {
        Some(text) => expand_at(text, lookup, depth + 1),
        None => Ok(String::new()),
    }
}

/// Splits `value`, `{value}` or `{v1}:{v2}` / `{v1}:v2` into its alternatives.
fn split_alternatives(rest: &str) -> Result<(&str, Option<&str>), String> {
    let t = rest.trim();
    if !t.starts_with('{') {
        return Ok((rest, None));
    }
    let end = matching(t.as_bytes(), 0, b'{', b'}')
        .ok_or_else(|| "macro processing error: unbalanced '{'".to_string())?;
    let first = &t[1..end];
    let after = t[end + 1..].trim_start();
    if after.is_empty() {
        return Ok((first, None));
    }
    let Some(second) = after.strip_prefix(':') else {
        return Err(format!(
            "macro processing error: unexpected text \"{after}\""
        ));
    };
    let second = second.trim();
    let second = match second.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        Some(inner) => inner,
        None => second,
    };
    Ok((first, Some(second)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);
    impl Lookup for Map {
        fn raw(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }
    fn map() -> Map {
        Map(HashMap::from([
            ("data_directory", "/var/lib/postfix"),
            ("nested", "$data_directory/x"),
            ("empty", ""),
            ("loop", "$loop"),
        ]))
    }

    #[test]
    fn plain_forms() {
        let m = map();
        assert_eq!(
            expand("$data_directory/a", &m).unwrap(),
            "/var/lib/postfix/a"
        );
        assert_eq!(
            expand("${data_directory}b", &m).unwrap(),
            "/var/lib/postfixb"
        );
        assert_eq!(expand("$(data_directory)", &m).unwrap(), "/var/lib/postfix");
        assert_eq!(expand("$nested", &m).unwrap(), "/var/lib/postfix/x");
        assert_eq!(expand("a$$b", &m).unwrap(), "a$b");
        assert_eq!(expand("[$undefined]", &m).unwrap(), "[]");
    }

    #[test]
    fn conditionals() {
        let m = map();
        assert_eq!(expand("${data_directory?yes}", &m).unwrap(), "yes");
        assert_eq!(expand("${empty?yes}", &m).unwrap(), "");
        assert_eq!(expand("${empty:dflt}", &m).unwrap(), "dflt");
        assert_eq!(expand("${data_directory:dflt}", &m).unwrap(), "");
        assert_eq!(expand("${empty?{a}:{b}}", &m).unwrap(), "b");
        assert_eq!(
            expand("${nested?{$nested}:{b}}", &m).unwrap(),
            "/var/lib/postfix/x"
        );
        assert_eq!(expand("${undefined?{a}:b}", &m).unwrap(), "b");
        assert_eq!(
            expand(
                "${multi_instance_name?{$multi_instance_name}:{postfix}}",
                &m
            )
            .unwrap(),
            "postfix"
        );
    }

    #[test]
    fn errors_are_reported_not_guessed() {
        let m = map();
        assert!(expand("$loop", &m).unwrap_err().contains("nesting"));
        assert!(expand("${data_directory", &m)
            .unwrap_err()
            .contains("unbalanced"));
        assert!(expand("${{a} == {b} ? {x} : {y}}", &m)
            .unwrap_err()
            .contains("unsupported"));
    }
}
