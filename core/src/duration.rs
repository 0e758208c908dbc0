//! Human durations such as `30s`, `15m`, `24h`, `7d` or `1h30m`, as written in flags and config.

use std::time::Duration;

/// Why a duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write e.g. 90s, 15m, 24h, 7d or 1h30m)")]
pub struct InvalidDuration {
    /// The offending input.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a sequence of `<number><unit>` groups with units `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(input: &str) -> Result<Duration, InvalidDuration> {
    let err = |reason| InvalidDuration {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = rest.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            "" => return Err(err("a unit is missing")),
            _ => return Err(err("unknown unit")),
        };
        total = total.checked_add(part).ok_or_else(|| err("too large"))?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration in the largest whole units, e.g. `1d2h` or `90s` (the inverse of parsing).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("90s", 90),
            ("15m", 900),
            ("24h", 86_400),
            ("7d", 604_800),
            ("1h30m", 5400),
            (" 2m ", 120),
        ];
        for (input, secs) in ok {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_secs(secs)),
                "{input}"
            );
        }
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "h", "10", "10x", "1.5h", "-1h", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse_duration("10x")
            .unwrap_err()
            .to_string()
            .contains("\"10x\""));
    }

    #[test]
    fn format_round_trips() {
        for secs in [1, 59, 60, 3600, 5400, 86_400, 90_061] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
