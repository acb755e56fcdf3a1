//! Human-friendly durations (`250ms`, `30s`, `10m`, `24h`, `1.5s`, plain seconds).

use std::time::Duration;

use crate::InvalidInput;

/// Parses `250ms`, `30s`, `10m`, `2h`, `1d`, `1.5s`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidInput> {
    let (value, unit) = number_and_unit(text).ok_or_else(|| {
        InvalidInput(format!(
            "{text:?} is not a duration (try 500ms, 30s, 10m, 24h)"
        ))
    })?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(InvalidInput(format!(
                "{text:?} has an unknown unit {other:?} (use ms, s, m, h or d)"
            )));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e12 {
        return Err(InvalidInput(format!("{text:?} is too long")));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Splits `1.5GiB` into `1.5` and `GiB` (the unit trimmed); `None` without a number.
pub(crate) fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").unwrap_err().0.contains("unknown unit"));
    }
}
