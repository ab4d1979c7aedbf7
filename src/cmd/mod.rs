//! One module per subcommand, plus the small helpers they share.

pub(crate) mod bench;
pub(crate) mod decode;
pub(crate) mod r#gen;
pub(crate) mod kafka_tail;
pub(crate) mod profile;
pub(crate) mod replay;
pub(crate) mod run;
pub(crate) mod top;

/// Formats Unix milliseconds as an RFC 3339 UTC time with milliseconds,
/// e.g. `2023-04-05T00:44:45.099Z`.
pub(crate) fn utc_ms(ms: u64) -> String {
    let secs = ms / 1_000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3_600,
        s / 60 % 60,
        s % 60,
        ms % 1_000
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (days are never negative here).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_ms(1_680_655_485_099), "2023-04-05T00:44:45.099Z");
        // A leap day, and the end of a century that is not a leap year.
        assert_eq!(utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc_ms(4_107_542_399_000), "2100-02-28T23:59:59.000Z");
    }
}
