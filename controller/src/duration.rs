//! Go `time.Duration` strings (`10s`, `1m30s`, `500ms`, `1.5h`), as Kubernetes writes
//! `metav1.Duration`, converted to whole milliseconds. Negative durations are rejected.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidDuration {
    #[error("invalid duration {0:?}: empty")]
    Empty(String),
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
    #[error("invalid duration {0:?}: expected a number followed by a unit (ns, us, ms, s, m, h)")]
    Syntax(String),
    #[error("invalid duration {0:?}: unknown unit {1:?} (use ns, us, ms, s, m, h)")]
    Unit(String, String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

/// Parses a Go duration and returns milliseconds, rounding a non-zero sub-millisecond rest up
/// (a 1500us timeout must not become 1ms shorter than asked, nor 0 = "no timeout").
pub fn parse_duration_ms(input: &str) -> Result<u64, InvalidDuration> {
    let s = input.trim();
    if s.is_empty() {
        return Err(InvalidDuration::Empty(input.into()));
    }
    let s = match s.strip_prefix('+') {
        Some(rest) => rest,
        None if s.starts_with('-') => {
            return if s == "-0" {
                Ok(0)
            } else {
                Err(InvalidDuration::Negative(input.into()))
            };
        }
        None => s,
    };
    if s == "0" {
        return Ok(0);
    }
    let overflow = || InvalidDuration::Overflow(input.into());
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(InvalidDuration::Syntax(input.into()));
        }
        if unit.is_empty() {
            return Err(InvalidDuration::Syntax(input.into()));
        }
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(InvalidDuration::Unit(input.into(), other.into())),
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut ns = int.checked_mul(unit_ns).ok_or_else(overflow)?;
        // Fraction digits beyond nanosecond precision cannot matter.
        let mut scale = unit_ns;
        for d in frac_part.chars().take(20) {
            scale /= 10;
            let digit = u128::from(d.to_digit(10).unwrap_or(0));
            ns = ns.checked_add(digit * scale).ok_or_else(overflow)?;
        }
        total_ns = total_ns.checked_add(ns).ok_or_else(overflow)?;
        rest = next;
    }
    let ms = total_ns.div_ceil(1_000_000);
    u64::try_from(ms).map_err(|_| overflow())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_to_milliseconds() {
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("2h45m0.5s"), Ok(9_900_500));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("+5s"), Ok(5_000));
        assert_eq!(parse_duration_ms(".5s"), Ok(500));
    }

    #[test]
    fn sub_millisecond_rest_rounds_up() {
        assert_eq!(parse_duration_ms("1500us"), Ok(2));
        assert_eq!(parse_duration_ms("1ns"), Ok(1));
        assert_eq!(parse_duration_ms("100µs"), Ok(1));
    }

    #[test]
    fn malformed_durations_are_rejected() {
        assert!(matches!(
            parse_duration_ms(""),
            Err(InvalidDuration::Empty(_))
        ));
        assert!(matches!(
            parse_duration_ms("10"),
            Err(InvalidDuration::Syntax(_))
        ));
        assert!(matches!(
            parse_duration_ms("s"),
            Err(InvalidDuration::Syntax(_))
        ));
        assert!(matches!(
            parse_duration_ms("1..2s"),
            Err(InvalidDuration::Syntax(_))
        ));
        assert!(matches!(
            parse_duration_ms("10d"),
            Err(InvalidDuration::Unit(_, _))
        ));
        assert!(matches!(
            parse_duration_ms("-1s"),
            Err(InvalidDuration::Negative(_))
        ));
        assert!(matches!(
            parse_duration_ms("99999999999999999999999999h"),
            Err(InvalidDuration::Overflow(_))
        ));
    }
}
