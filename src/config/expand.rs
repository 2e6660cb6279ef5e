//! `$name` expansion of main.cf values (spec §5.3), done when a value is read,
//! following Postfix 3.7's grammar (`mac_parse`/`mac_expand`):
//!
//! - `$name`, `${name}`, `$(name)`; `$$` is a literal `$`; a `$` followed by
//!   anything else is an error ("empty macro name"), as in Postfix.
//! - `${name?value}`, `${name:value}`, `${name?{v1}:{v2}}`, `${name?{v1}:v2}`.
//!   The `?`/`:` test looks at the *raw* value (so `x = $empty` counts as
//!   set), exactly as Postfix does; a bare (unbraced) operand takes the rest
//!   of the text, `:` included.
//! - `${{a} OP {b}}` with `==`, `!=`, `<`, `<=`, `>`, `>=` (numeric when both
//!   sides are all digits, else byte-wise), and the `level` variants
//!   (`<level` ...) that compare `compatibility_level` values; the result is
//!   `true` or empty and may be followed by `?`/`:` operands.
//! - Whitespace around `{...}` operands and around a name is ignored, not
//!   inside the braces. Undefined names expand to nothing. Nesting deeper
//!   than [`MAX_DEPTH`] is an error.
//! - Unlike Postfix, the work is capped (see [`MAX_VALUE_LEN`] and the
//!   constants after it): an expansion past a cap is an error, not a hang.
//!
//! Errors are returned in Postfix's words; the caller adds the parameter.

use std::cmp::Ordering;

/// Postfix's nesting limit for macro expansion.
pub const MAX_DEPTH: usize = 100;

// Caps on the work of expansion. Postfix has none (it expands until memory
// runs out), but a valid main.cf such as `a = x`, `b = $a $a`, `c = $b $b`,
// ... doubles at each line: 27 lines give ~100 MB and seconds of CPU, and
// with empty values the work doubles while the output stays empty. The caps
// are far above any real main.cf (whose longest expanded values are lists of
// a few KB, built from a few dozen references, and all of whose values
// tlsmgr reads take a few hundred lookups), so they refuse only such
// configurations, with an error naming the parameter. They also bound the
// CPU time a pathological main.cf costs a reload (well under a second).

/// Longest expansion of one parameter value, in bytes (1 MiB). Text made
/// for `${{a} == {b}}` operands counts too.
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Most `$name` lookups while expanding one parameter value.
pub const MAX_VALUE_LOOKUPS: usize = 20_000;
/// Most raw text scanned while expanding one parameter value, in bytes
/// (4 MiB): each looked-up value counts each time it is looked up.
pub const MAX_VALUE_SCAN: usize = 4 << 20;
/// Longest total expansion over one [`Budget`] (one configuration read).
pub const MAX_TOTAL_LEN: usize = 4 << 20;
/// Most lookups over one [`Budget`].
pub const MAX_TOTAL_LOOKUPS: usize = 50_000;
/// Most text scanned over one [`Budget`], in bytes (16 MiB).
pub const MAX_TOTAL_SCAN: usize = 16 << 20;

/// Looks up the raw (unexpanded) value of a parameter, defaults included.
pub trait Lookup {
    /// The raw value of `name`, or `None` when undefined.
    fn raw(&self, name: &str) -> Option<String>;
}

/// What expansion has used: output bytes, lookups, bytes scanned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes produced.
    pub len: usize,
    /// `$name` lookups.
    pub lookups: usize,
    /// Raw text scanned, in bytes.
    pub scanned: usize,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.len = self.len.saturating_add(other.len);
        self.lookups = self.lookups.saturating_add(other.lookups);
        self.scanned = self.scanned.saturating_add(other.scanned);
    }
}

/// The expansion work allowed for a set of values read together (one
/// configuration): each value within the per-value caps, all of them within
/// the totals.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    used: Usage,
}

impl Budget {
    /// A fresh budget.
    pub fn new() -> Self {
        Budget::default()
    }
    /// What the values expanded with this budget have used so far, failed
    /// expansions included; never more than the totals (what a cap refused
    /// is not counted).
    pub fn used(&self) -> Usage {
        self.used
    }
}

/// One value's expansion in progress.
struct Exp<'a> {
    lookup: &'a dyn Lookup,
    /// Used by earlier values of the same budget.
    before: Usage,
    /// Used by this value.
    used: Usage,
}

impl Exp<'_> {
    /// Checks one usage figure against its per-value cap and, with what
    /// earlier values used, its total cap. `what` and `unit` word the error.
    fn check(
        used: usize,
        before: usize,
        (cap, total): (usize, usize),
        (what, unit): (&'static str, &'static str),
    ) -> Result<(), ExpandError> {
        if used > cap {
            return Err(ExpandError::Unreasonable {
                what,
                limit: cap,
                unit,
                in_all: false,
            });
        }
        if before.saturating_add(used) > total {
            return Err(ExpandError::Unreasonable {
                what,
                limit: total,
                unit,
                in_all: true,
            });
        }
        Ok(())
    }

    /// Appends `s` to `out`, within the length caps.
    /// What is refused is not counted, so the usage never exceeds a cap.
    fn push(&mut self, out: &mut String, s: &str) -> Result<(), ExpandError> {
        let len = self.used.len.saturating_add(s.len());
        Self::check(
            len,
            self.before.len,
            (MAX_VALUE_LEN, MAX_TOTAL_LEN),
            ("macro expansion length", "bytes"),
        )?;
        self.used.len = len;
        out.push_str(s);
        Ok(())
    }

    /// Counts `n` bytes of text about to be scanned.
    fn scan(&mut self, n: usize) -> Result<(), ExpandError> {
        let scanned = self.used.scanned.saturating_add(n);
        Self::check(
            scanned,
            self.before.scanned,
            (MAX_VALUE_SCAN, MAX_TOTAL_SCAN),
            ("macro expansion work", "bytes scanned"),
        )?;
        self.used.scanned = scanned;
        Ok(())
    }

    /// Looks `name` up, counting the lookup and the raw value's length.
    fn raw(&mut self, name: &str) -> Result<Option<String>, ExpandError> {
        let lookups = self.used.lookups.saturating_add(1);
        Self::check(
            lookups,
            self.before.lookups,
            (MAX_VALUE_LOOKUPS, MAX_TOTAL_LOOKUPS),
            ("number of macro lookups", "lookups"),
        )?;
        self.used.lookups = lookups;
        let raw = self.lookup.raw(name);
        self.scan(raw.as_ref().map_or(0, String::len))?;
        Ok(raw)
    }
}

/// Why a value could not be expanded. The message is Postfix's, without
/// the parameter name (the caller adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// A cap on the work of one value, or of all values together, was
    /// reached (a pathological main.cf, e.g. exponential `$x` nesting).
    #[error(
        "macro processing error: unreasonable {what}: more than {limit} {unit}{}",
        if *in_all { " in all parameters" } else { "" }
    )]
    Unreasonable {
        /// What grew too large, e.g. `macro expansion length`.
        what: &'static str,
        /// The cap.
        limit: usize,
        /// Its unit, e.g. `bytes`.
        unit: &'static str,
        /// Whether the cap is the one on all values together.
        in_all: bool,
    },
    /// Malformed macro syntax: what Postfix's `mac_expand` says.
    #[error("macro processing error: {0}")]
    Syntax(String),
}

const WS: &[char] = &[' ', '\t', '\r', '\n'];

/// Expands `text`, resolving names through `lookup`, with a budget of its
/// own. Errors are messages in Postfix's words, without the parameter name
/// (the caller adds it).
pub fn expand(text: &str, lookup: &dyn Lookup) -> Result<String, ExpandError> {
    expand_with(text, lookup, &mut Budget::new())
}

/// Like [`expand`], charging the work to `budget`, so that a configuration's
/// values are capped together as well as one by one.
pub fn expand_with(
    text: &str,
    lookup: &dyn Lookup,
    budget: &mut Budget,
) -> Result<String, ExpandError> {
    let mut x = Exp {
        lookup,
        before: budget.used,
        used: Usage::default(),
    };
    let mut out = String::with_capacity(text.len().min(MAX_VALUE_LEN));
    let result = expand_into(text, &mut x, 0, &mut out);
    budget.used.add(x.used);
    result.map(|()| out)
}

fn expand_into(
    text: &str,
    x: &mut Exp<'_>,
    depth: usize,
    out: &mut String,
) -> Result<(), ExpandError> {
    if depth > MAX_DEPTH {
        return Err(ExpandError::Syntax(format!(
            "unreasonable macro call nesting: \"{text}\""
        )));
    }
    x.scan(text.len())?;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let Some(off) = text[i..].find('$') else {
            x.push(out, &text[i..])?;
            break;
        };
        x.push(out, &text[i..i + off])?;
        i += off + 1;
        match bytes.get(i) {
            Some(b'$') => {
                x.push(out, "$")?;
                i += 1;
            }
            Some(&open @ (b'{' | b'(')) => {
                let close = if open == b'{' { b'}' } else { b')' };
                let end = matching(bytes, i, open, close).ok_or_else(|| {
                    ExpandError::Syntax(format!("truncated macro reference: \"{text}\""))
                })?;
                eval_expr(&text[i + 1..end], text, x, depth, out)?;
                i = end + 1;
            }
            Some(c) if is_name_byte(*c) => {
                let len = bytes[i..].iter().take_while(|c| is_name_byte(**c)).count();
                if let Some(raw) = x.raw(&text[i..i + len])? {
                    expand_into(&raw, x, depth + 1, out)?;
                }
                i += len;
            }
            _ => return Err(ExpandError::Syntax(format!("empty macro name: \"{text}\""))),
        }
    }
    Ok(())
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
            level = level.saturating_sub(1);
            if level == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// Splits `{payload}rest` (text starting at `{`) into the payload and the
/// rest with leading whitespace skipped.
fn curly(text: &str) -> Result<(&str, &str), ExpandError> {
    let end = matching(text.as_bytes(), 0, b'{', b'}').ok_or_else(|| {
        ExpandError::Syntax(format!(
            "unbalanced {{}} in attribute expression: \"{text}\""
        ))
    })?;
    Ok((&text[1..end], text[end + 1..].trim_start_matches(WS)))
}

/// Text starting at `{` after optional whitespace, if any.
fn at_curly(text: &str) -> Option<&str> {
    let t = text.trim_start_matches(WS);
    t.starts_with('{').then_some(t)
}

/// Evaluates the inside of `${...}` / `$(...)`, appending to `out`.
fn eval_expr(
    inner: &str,
    whole: &str,
    x: &mut Exp<'_>,
    depth: usize,
    out: &mut String,
) -> Result<(), ExpandError> {
    // The test value (Some non-empty = true) and what follows it.
    let (test, rest): (Option<String>, &str);
    if let Some(t) = at_curly(inner) {
        let (result, after) = logical(t, x, depth)?;
        let truth = if result { "true" } else { "" };
        match after.chars().next() {
            None => {
                x.push(out, truth)?;
                return Ok(());
            }
            Some('?' | ':') => {}
            Some(_) => {
                return Err(ExpandError::Syntax(format!(
                    "\"?\" or \":\" expected at: \"...}}>>>{after}\""
                )))
            }
        }
        test = Some(truth.to_string());
        rest = after;
    } else {
        let split = inner.find(['?', ':']).unwrap_or(inner.len());
        let name = inner[..split].trim_matches(WS);
        if let Some(pos) = name.bytes().position(|c| !is_name_byte(c)) {
            return Err(ExpandError::Syntax(format!(
                "attribute name syntax error at: \"...{}>>>{}\"",
                &name[..pos],
                &name[pos..]
            )));
        }
        if split == inner.len() {
            if name.is_empty() {
                return Err(ExpandError::Syntax(format!(
                    "empty macro name: \"{whole}\""
                )));
            }
            if let Some(raw) = x.raw(name)? {
                expand_into(&raw, x, depth + 1, out)?;
            }
            return Ok(());
        }
        test = x.raw(name)?;
        rest = &inner[split..];
    }
    conditional(test.is_some_and(|v| !v.is_empty()), rest, x, depth, out)
}

/// Applies `?iftrue[:iffalse]` or `:iffalse` (`rest` starts at `?` or `:`).
fn conditional(
    truth: bool,
    rest: &str,
    x: &mut Exp<'_>,
    depth: usize,
    out: &mut String,
) -> Result<(), ExpandError> {
    // One operand: `{text}` (then the rest continues) or bare text to the end.
    fn operand(text: &str) -> Result<(&str, &str), ExpandError> {
        match at_curly(text) {
            Some(t) => curly(t),
            None => Ok((text, "")),
        }
    }
    let mut rest = rest;
    if let Some(r) = rest.strip_prefix('?') {
        let (iftrue, after) = operand(r)?;
        if truth {
            expand_into(iftrue, x, depth + 1, out)?;
        }
        if after.is_empty() {
            return Ok(());
        }
        let Some(after) = after.strip_prefix(':') else {
            return Err(ExpandError::Syntax(format!(
                "\":\" expected at: \"...{iftrue}}}>>>{after}\""
            )));
        };
        rest = after;
    } else if let Some(r) = rest.strip_prefix(':') {
        rest = r;
    }
    let (iffalse, after) = operand(rest)?;
    if !truth {
        expand_into(iffalse, x, depth + 1, out)?;
    }
    if !after.is_empty() {
        return Err(ExpandError::Syntax(format!(
            "unexpected input at: \"...{iffalse}}}>>>{after}\""
        )));
    }
    Ok(())
}

/// Parses and evaluates `{a} OP {b}` (text starting at `{`); returns the
/// result and the text after the right operand (leading whitespace skipped).
fn logical<'a>(
    text: &'a str,
    x: &mut Exp<'_>,
    depth: usize,
) -> Result<(bool, &'a str), ExpandError> {
    const ANY_OP: &str = "\"==\" or \"!=\" or \"<\" or \"<=\" or \">=\" or \">\"";
    let (left, after) = curly(text)?;
    let op_len = after
        .bytes()
        .take_while(|c| b"<>!=?+-*/~&|%".contains(c))
        .count();
    let op = &after[..op_len];
    if !matches!(op, "==" | "!=" | "<" | "<=" | ">" | ">=") {
        return Err(ExpandError::Syntax(format!(
            "{ANY_OP} expected at: \"...{left}}}>>>{after}\""
        )));
    }
    let after = &after[op_len..];
    let suffix_len = after.bytes().take_while(|c| is_name_byte(*c)).count();
    let level = match &after[..suffix_len] {
        "" => false,
        "level" => true,
        _ => {
            return Err(ExpandError::Syntax(format!(
                "bad operator suffix at: \"...{op}>>>{after}\""
            )))
        }
    };
    let after = &after[suffix_len..];
    let Some(right_text) = at_curly(after) else {
        return Err(ExpandError::Syntax(format!(
            "\"{{expression}}\" expected at: \"...{{{left}}} {op}>>>{after}\""
        )));
    };
    let (right, after) = curly(right_text)?;
    let l = {
        let mut s = String::new();
        expand_into(left, x, depth + 1, &mut s)?;
        s
    };
    let r = {
        let mut s = String::new();
        expand_into(right, x, depth + 1, &mut s)?;
        s
    };
    let ord = if level {
        compat_level(&l)?.cmp(&compat_level(&r)?)
    } else {
        compare(&l, &r)?
    };
    let result = match op {
        "==" => ord == Ordering::Equal,
        "!=" => ord != Ordering::Equal,
        "<" => ord == Ordering::Less,
        "<=" => ord != Ordering::Greater,
        ">" => ord == Ordering::Greater,
        _ => ord != Ordering::Less,
    };
    Ok((result, after))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
}

/// Numeric when both sides are all digits, else byte-wise (`strcmp`).
fn compare(l: &str, r: &str) -> Result<Ordering, ExpandError> {
    if all_digits(l) && all_digits(r) {
        let num = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| ExpandError::Syntax(format!("bad conversion: {s}")))
        };
        return Ok(num(l)?.cmp(&num(r)?));
    }
    Ok(l.as_bytes().cmp(r.as_bytes()))
}

/// A `compatibility_level` value: `major[.minor[.patch]]`.
fn compat_level(s: &str) -> Result<(u64, u64, u64), ExpandError> {
    let bad = || ExpandError::Syntax(format!("malformed compatibility level syntax: \"{s}\""));
    let mut parts = [0u64; 3];
    for (n, part) in s.split('.').enumerate() {
        if n == 3 || !all_digits(part) {
            return Err(bad());
        }
        parts[n] = part.parse().map_err(|_| bad())?;
    }
    Ok((parts[0], parts[1], parts[2]))
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
            ("refers_to_empty", "$empty"),
            ("loop", "$loop"),
            ("a", "5"),
            ("b", "10"),
        ]))
    }
    fn x(text: &str) -> String {
        expand(text, &map()).unwrap()
    }

    #[test]
    fn plain_forms() {
        assert_eq!(x("$data_directory/a"), "/var/lib/postfix/a");
        assert_eq!(x("${data_directory}b"), "/var/lib/postfixb");
        assert_eq!(x("$(data_directory)"), "/var/lib/postfix");
        assert_eq!(x("${ data_directory }"), "/var/lib/postfix");
        assert_eq!(x("$nested"), "/var/lib/postfix/x");
        assert_eq!(x("a$$b"), "a$b");
        assert_eq!(x("$$$a"), "$5");
        assert_eq!(x("[$undefined]"), "[]");
        assert_eq!(x("${a}}"), "5}");
        assert_eq!(x("$(a)(b)"), "5(b)");
    }

    #[test]
    fn conditionals() {
        assert_eq!(x("${data_directory?yes}"), "yes");
        assert_eq!(x("${empty?yes}"), "");
        assert_eq!(x("${empty:dflt}"), "dflt");
        assert_eq!(x("${data_directory:dflt}"), "");
        assert_eq!(x("${empty?{a}:{b}}"), "b");
        assert_eq!(x("${nested?{$nested}:{b}}"), "/var/lib/postfix/x");
        assert_eq!(x("${undefined?{a}:b}"), "b");
        assert_eq!(x("${a?{x}:y}"), "x");
        // Bare operands take the rest of the text, ':' included.
        assert_eq!(x("${a?x:y}"), "x:y");
        assert_eq!(x("${a ?x}"), "x");
        assert_eq!(x("${:x}"), "x");
        assert_eq!(x("${a?{x}}{y}"), "x{y}");
        // Postfix tests the raw value: "$empty" is not empty.
        assert_eq!(x("${refers_to_empty?{set}:{unset}}"), "set");
        assert_eq!(x("$refers_to_empty"), "");
        assert_eq!(
            x("${multi_instance_name?{$multi_instance_name}:{postfix}}"),
            "postfix"
        );
    }

    #[test]
    fn comparisons() {
        assert_eq!(x("${{$a} < {$b} ? {lt} : {ge}}"), "lt");
        assert_eq!(x("${{$a} == {5}}"), "true");
        assert_eq!(x("${{$a} != {5}}"), "");
        assert_eq!(x("${{abc} < {abd} ? {yes}}"), "yes");
        assert_eq!(x("${{10} > {9} ? {num} : {str}}"), "num");
        assert_eq!(x("${{10} > {9a} ? {num} : {str}}"), "str");
        assert_eq!(x("${{007} == {7} ? {num}:{str}}"), "num");
        assert_eq!(x("${{ x } == {x}?{same}:{diff}}"), "diff");
        assert_eq!(x("${{$a}=={5}?x:y}"), "x:y");
        assert_eq!(x("${{1}<={1}?le}"), "le");
        assert_eq!(x("${{2}>={3}?ge:{no}}"), "");
        assert_eq!(x("${{a}=={a}:{x}}"), "");
        assert_eq!(x("${{a} == {a} ? {x} : {y} }"), "x");
        assert_eq!(x("${{} == {} ? {e}:{ne}}"), "e");
        assert_eq!(x("${{$undefined} == {} ? {e}:{ne}}"), "e");
        assert_eq!(x("${{1}<{2}}{rest}"), "true{rest}");
        assert_eq!(x("${{${{1}=={1}}} == {true}?ok}"), "ok");
        assert_eq!(x("${{a} ==  {b} :  {neq} }"), "neq");
        assert_eq!(x("${{$refers_to_empty} == {}?empty}"), "empty");
    }

    #[test]
    fn level_comparisons() {
        assert_eq!(x("${{3.6} <level {3.10} ? {lvl} : {no}}"), "lvl");
        assert_eq!(x("${{3.6} <level {3.6.1}?y}"), "y");
        assert_eq!(x("${{3.6} <level {2}?y}"), "");
        assert_eq!(x("${{3} ==level {3.0}?y}"), "y");
        assert_eq!(x("${{0} <level {1} ? {no} : {yes}}"), "no");
        assert!(expand("${{x} <level {1} ? y : n}", &map())
            .unwrap_err()
            .to_string()
            .contains("malformed compatibility level syntax: \"x\""));
    }

    #[test]
    fn errors_are_reported_not_guessed() {
        let e = |t: &str| expand(t, &map()).unwrap_err().to_string();
        assert!(e("$loop").contains("nesting"));
        assert!(e("x${a").contains("truncated macro reference"));
        assert!(e("$(a}").contains("truncated macro reference"));
        assert!(e("a$-b").contains("empty macro name"));
        assert!(e("a$").contains("empty macro name"));
        assert!(e("${}").contains("empty macro name"));
        assert!(e("${a x}").contains("attribute name syntax error"));
        assert!(e("${{a}==b?x}").contains("bad operator suffix"));
        assert!(e("${{a} === {a}?x}").contains("expected at"));
        assert!(e("${{a}<>{b}?x}").contains("expected at"));
        assert!(e("${{$a}?x}").contains("expected at"));
        assert!(e("${a?{x} junk}").contains("\":\" expected"));
        assert!(e("${a?{x}:{y} junk}").contains("unexpected input"));
        assert!(e("${empty:{x}:{y}}").contains("unexpected input"));
        assert!(e("${{99999999999999999999} > {1}?y:n}").contains("bad conversion"));
        assert!(e("${{a} == {b").contains("truncated"));
    }

    /// `p0 = x`, `pN = $pN-1 $pN-1`: the expansion of `pN` doubles per level.
    struct Doubling {
        zero: String,
        sep: &'static str,
    }
    impl Lookup for Doubling {
        fn raw(&self, name: &str) -> Option<String> {
            let n: usize = name.strip_prefix('p')?.parse().ok()?;
            Some(match n {
                0 => self.zero.clone(),
                n => format!("$p{}{}$p{}", n - 1, self.sep, n - 1),
            })
        }
    }

    #[test]
    fn exponential_expansion_is_capped_by_length() {
        let l = Doubling {
            zero: "x".repeat(1024),
            sep: "",
        };
        // 2^10 copies of 1 KiB: exactly the cap, accepted.
        assert_eq!(expand("$p10", &l).unwrap().len(), MAX_VALUE_LEN);
        let err = expand("$p26", &l).unwrap_err().to_string();
        assert_eq!(
            err,
            "macro processing error: unreasonable macro expansion length: more than 1048576 bytes"
        );
        // With one byte per lookup, the lookup cap comes first.
        let l = Doubling {
            zero: "x".into(),
            sep: " ",
        };
        let err = expand("$p26", &l).unwrap_err().to_string();
        assert_eq!(
            err,
            "macro processing error: unreasonable number of macro lookups: more than 20000 lookups"
        );
    }

    #[test]
    fn exponential_work_without_output_is_capped() {
        // Every value empty: no output, but 2^n lookups.
        let l = Doubling {
            zero: String::new(),
            sep: "",
        };
        assert_eq!(expand("$p10", &l).unwrap(), "");
        let err = expand("$p60", &l).unwrap_err().to_string();
        assert_eq!(
            err,
            "macro processing error: unreasonable number of macro lookups: more than 20000 lookups"
        );
        // A long raw value looked up many times: the scan is capped.
        struct Long;
        impl Lookup for Long {
            fn raw(&self, name: &str) -> Option<String> {
                (name == "long").then(|| format!("${{x?{}}}", "y".repeat(1 << 20)))
            }
        }
        let err = expand(&"$long".repeat(100), &Long).unwrap_err().to_string();
        assert!(err.contains("unreasonable macro expansion work"), "{err}");
    }

    #[test]
    fn budget_caps_values_together() {
        let l = Doubling {
            zero: "x".repeat(1024),
            sep: "",
        };
        let mut budget = Budget::new();
        // Four values of 1 MiB fit in 4 MiB; the fifth does not.
        for _ in 0..4 {
            assert!(expand_with("$p10", &l, &mut budget).is_ok());
        }
        let err = expand_with("$p10", &l, &mut budget)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "macro processing error: unreasonable macro expansion length: more than 4194304 bytes in all parameters"
        );
        // What was refused is not counted: the usage stays within the caps.
        assert_eq!(budget.used().len, MAX_TOTAL_LEN);
        // A fresh budget is not affected.
        assert!(expand("$p10", &l).is_ok());
    }
}
