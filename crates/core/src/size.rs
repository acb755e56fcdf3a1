//! Human-friendly memory sizes (`80GiB`, `20GB`, `512MiB`, `1.5GiB`, plain bytes), and
//! their display.

use crate::InvalidInput;
use crate::duration::number_and_unit;

/// Parses `80GiB`, `512MiB`, `20GB` (powers of ten), `1.5GiB` or a plain number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, InvalidInput> {
    let (value, unit) = number_and_unit(text)
        .ok_or_else(|| InvalidInput(format!("{text:?} is not a size (try 80GiB, 512MiB)")))?;
    let scale: f64 = match unit {
        "" | "B" => 1.0,
        "KiB" | "Ki" => 1024.0,
        "MiB" | "Mi" => 1024.0 * 1024.0,
        "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        "TiB" | "Ti" => 1024f64.powi(4),
        "kB" | "KB" | "K" => 1e3,
        "MB" | "M" => 1e6,
        "GB" | "G" => 1e9,
        "TB" | "T" => 1e12,
        other => {
            return Err(InvalidInput(format!(
                "{text:?} has an unknown unit {other:?} (use MiB, GiB, MB, GB or bytes)"
            )));
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(InvalidInput(format!("{text:?} is too large")));
    }
    Ok(bytes.round() as u64)
}

/// A byte count for people: `600 MiB`, `1.5 GiB`, `80 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= GIB {
        let g = b / GIB;
        if (g - g.round()).abs() < 0.05 {
            format!("{:.0} GiB", g)
        } else {
            format!("{g:.1} GiB")
        }
    } else if b >= MIB {
        format!("{:.0} MiB", b / MIB)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_bytes("80GiB").unwrap(), 80 * (1 << 30));
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 * (1 << 20));
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 * (1 << 29));
        assert_eq!(parse_bytes("20GB").unwrap(), 20_000_000_000);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5XB").unwrap_err().0.contains("unknown unit"));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_bytes(80 * (1 << 30)), "80 GiB");
        assert_eq!(format_bytes(3 * (1 << 29)), "1.5 GiB");
        assert_eq!(format_bytes(600 * (1 << 20)), "600 MiB");
    }
}
