//! Human-friendly durations (`250ms`, `30s`, `10m`, `24h`, `1.5s`, plain seconds).

use std::time::Duration;

use crate::InvalidInput;

/// Parses `250ms`, `30s`, `10m`, `2h`, `1d`, `1.5s`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidInput> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        InvalidInput(format!(
            "{text:?} is not a duration (try 500ms, 30s, 10m, 24h)"
        ))
    })?;
    let scale = match unit.trim() {
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
