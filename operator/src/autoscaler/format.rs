//! Human formatting of signal values and durations for decision messages.

use std::time::Duration;

/// `8000.0` → `8,000`; `0.25` → `0.25`; `1234.5` → `1,234.5`; NaN → `no data`.
pub fn value(v: f64) -> String {
    if v.is_nan() {
        return "no data".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        };
    }
    let negative = v < 0.0;
    let abs = v.abs();
    let rounded = (abs * 1000.0).round() / 1000.0;
    let int = rounded.trunc();
    let frac = rounded - int;
    let digits = format!("{int:.0}");
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let mut out = String::new();
    if negative && rounded > 0.0 {
        out.push('-');
    }
    out.push_str(&grouped);
    if frac > 0.0 {
        let f = format!("{frac:.3}");
        out.push_str(f.trim_start_matches('0').trim_end_matches('0'));
    }
    out
}

/// A duration rounded to whole seconds, humantime style (`5m`, `1m 20s`).
pub fn duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// `chrono` differences as std durations, negative clamped to zero.
pub fn since(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_like_the_design_examples() {
        assert_eq!(value(8_000.0), "8,000");
        assert_eq!(value(5_000.0), "5,000");
        assert_eq!(value(999.0), "999");
        assert_eq!(value(1_234_567.0), "1,234,567");
        assert_eq!(value(0.2), "0.2");
        assert_eq!(value(0.25), "0.25");
        assert_eq!(value(1_234.5), "1,234.5");
        assert_eq!(value(-3.0), "-3");
        assert_eq!(value(0.0), "0");
        assert_eq!(value(f64::NAN), "no data");
    }

    #[test]
    fn durations_are_whole_seconds() {
        assert_eq!(duration(Duration::from_millis(80_400)), "1m 20s");
        assert_eq!(duration(Duration::from_secs(300)), "5m");
    }
}
