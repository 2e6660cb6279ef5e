//! Postfix's typed parameter values (spec §5.2): integers, time values with
//! units, booleans, with the same acceptance rules and messages.

/// Parses an int as `mail_conf_int` does: the whole value, fitting a C int.
/// Error: `bad numerical configuration: NAME = VALUE`.
pub fn parse_int(name: &str, value: &str) -> Result<i64, ValueError> {
    let t = value.trim_start();
    let digits = t.strip_prefix('+').unwrap_or(t);
    match t.parse::<i64>().or_else(|_| digits.parse::<i64>()) {
        Ok(v) if i32::try_from(v).is_ok() => Ok(v),
        _ => Err(ValueError::BadInt {
            name: name.into(),
            value: value.into(),
        }),
    }
}

/// Checks an int against Postfix's range rules (`min`/`max` 0 = unbounded).
pub fn check_int(name: &str, v: i64, min: i64, max: i64) -> Result<i64, ValueError> {
    if min != 0 && v < min {
        return Err(ValueError::IntBelow {
            name: name.into(),
            value: v,
            min,
        });
    }
    if max != 0 && v > max {
        return Err(ValueError::IntAbove {
            name: name.into(),
            value: v,
            max,
        });
    }
    Ok(v)
}

/// Parses a time value as `conv_time` does: digits, then an optional unit
/// (`s m h d w`, lowercase; characters after the unit are ignored, as in
/// Postfix). A bare number takes `default_unit`. Returns seconds.
/// Error: `parameter NAME: bad time value or unit: VALUE`.
pub fn parse_time(name: &str, value: &str, default_unit: char) -> Result<u64, ValueError> {
    let bad = || ValueError::BadTime {
        name: name.into(),
        value: value.into(),
    };
    let t = value.trim_start();
    let t = t.strip_prefix('+').unwrap_or(t);
    let ndigits = t.bytes().take_while(u8::is_ascii_digit).count();
    if ndigits == 0 {
        return Err(bad());
    }
    let n: i64 = t[..ndigits].parse().map_err(|_| bad())?;
    let unit = t[ndigits..].chars().next().unwrap_or(default_unit);
    let mult: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 604800,
        _ => return Err(bad()),
    };
    if n >= i64::from(i32::MAX) / mult {
        return Err(bad());
    }
    Ok((n * mult) as u64)
}

/// Checks a time value against its range (`min`/`max` 0 = unbounded), with
/// Postfix's messages `invalid NAME: V (min M)` / `(max M)`.
pub fn check_time(name: &str, v: u64, min: u64, max: u64) -> Result<u64, ValueError> {
    if min != 0 && v < min {
        return Err(ValueError::TimeBelow {
            name: name.into(),
            value: v,
            min,
        });
    }
    if max != 0 && v > max {
        return Err(ValueError::TimeAbove {
            name: name.into(),
            value: v,
            max,
        });
    }
    Ok(v)
}

/// Parses a boolean: `yes`/`no` (Postfix also accepts `true`/`false`),
/// case-insensitive. Error: `bad boolean configuration: NAME = VALUE`.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ValueError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(ValueError::BadBool {
            name: name.into(),
            value: value.into(),
        }),
    }
}

/// A parameter value Postfix would refuse, in Postfix's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not an integer that fits a C int.
    #[error("bad numerical configuration: {name} = {value}")]
    BadInt {
        /// The parameter.
        name: String,
        /// Its value.
        value: String,
    },
    /// An integer below the parameter's minimum.
    #[error("invalid {name} parameter value {value} < {min}")]
    IntBelow {
        /// The parameter.
        name: String,
        /// Its value.
        value: i64,
        /// The minimum.
        min: i64,
    },
    /// An integer above the parameter's maximum.
    #[error("invalid {name} parameter value {value} > {max}")]
    IntAbove {
        /// The parameter.
        name: String,
        /// Its value.
        value: i64,
        /// The maximum.
        max: i64,
    },
    /// Not a time value with a known unit.
    #[error("parameter {name}: bad time value or unit: {value}")]
    BadTime {
        /// The parameter.
        name: String,
        /// Its value.
        value: String,
    },
    /// A time below the parameter's minimum (seconds).
    #[error("invalid {name}: {value} (min {min})")]
    TimeBelow {
        /// The parameter.
        name: String,
        /// Its value.
        value: u64,
        /// The minimum.
        min: u64,
    },
    /// A time above the parameter's maximum (seconds).
    #[error("invalid {name}: {value} (max {max})")]
    TimeAbove {
        /// The parameter.
        name: String,
        /// Its value.
        value: u64,
        /// The maximum.
        max: u64,
    },
    /// Not `yes`/`no` (or `true`/`false`).
    #[error("bad boolean configuration: {name} = {value}")]
    BadBool {
        /// The parameter.
        name: String,
        /// Its value.
        value: String,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn time_units_and_quirks() {
        assert_eq!(parse_time("t", "3600", 's').unwrap(), 3600);
        assert_eq!(parse_time("t", "3600s", 's').unwrap(), 3600);
        assert_eq!(parse_time("t", "2h", 's').unwrap(), 7200);
        assert_eq!(parse_time("t", "1w", 's').unwrap(), 604800);
        assert_eq!(parse_time("t", "10sec", 's').unwrap(), 10);
        assert_eq!(parse_time("t", "5", 'm').unwrap(), 300);
        assert_eq!(parse_time("t", " +7", 's').unwrap(), 7);
        for bad in ["", "-1", "x", "1H", "1y", "99999999999"] {
            assert_eq!(
                parse_time("t", bad, 's').unwrap_err().to_string(),
                format!("parameter t: bad time value or unit: {bad}")
            );
        }
    }

    #[test]
    fn time_ranges() {
        assert_eq!(
            check_time("smtpd_tls_session_cache_timeout", 8640001, 0, 8640000)
                .unwrap_err()
                .to_string(),
            "invalid smtpd_tls_session_cache_timeout: 8640001 (max 8640000)"
        );
        assert_eq!(check_time("x", 0, 0, 10).unwrap(), 0);
        assert_eq!(
            check_time("x", 0, 1, 0).unwrap_err().to_string(),
            "invalid x: 0 (min 1)"
        );
    }

    #[test]
    fn ints() {
        assert_eq!(parse_int("n", "32").unwrap(), 32);
        assert_eq!(parse_int("n", "-3").unwrap(), -3);
        assert_eq!(
            parse_int("n", "3x").unwrap_err().to_string(),
            "bad numerical configuration: n = 3x"
        );
        assert!(parse_int("n", "99999999999").is_err());
        assert_eq!(
            check_int("tls_random_bytes", 0, 1, 0)
                .unwrap_err()
                .to_string(),
            "invalid tls_random_bytes parameter value 0 < 1"
        );
    }

    #[test]
    fn bools() {
        assert!(parse_bool("b", "YES").unwrap());
        assert!(!parse_bool("b", "no").unwrap());
        assert!(parse_bool("b", "maybe").is_err());
    }
}
