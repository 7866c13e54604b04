//! Pure time helpers shared by the manifest scheduler (`controller::schedule`) and the
//! volume data sync (`datasync`): the next slot of a cron schedule and Go-style durations.
//!
//! They sit below both so that `datasync` does not import the controller (which imports
//! `datasync`): dependencies run one way, controller → datasync → these helpers.

use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use jiff::Timestamp;

/// A cron schedule that cannot be parsed or has no next slot. Callers add the field the
/// schedule was read from (`spec.schedule`, `spec.pvcConfig.dataSyncConfig.schedule`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{schedule:?}: {message}")]
pub struct CronError {
    /// The schedule as written.
    pub schedule: String,
    /// Why it cannot be used.
    pub message: String,
}

/// The next run of a 5-field cron schedule (or `@hourly`-style macro) strictly after `after`,
/// in UTC.
pub fn next_run(schedule: &str, after: Timestamp) -> Result<Timestamp, CronError> {
    let err = |message: String| CronError {
        schedule: schedule.to_string(),
        message,
    };
    let cron = Cron::from_str(schedule.trim()).map_err(|e| err(e.to_string()))?;
    let start = after.to_zoned(jiff::tz::TimeZone::UTC);
    let next = cron
        .find_next_occurrence(&start, false)
        .map_err(|e| err(e.to_string()))?;
    Ok(next.timestamp())
}

/// Parses a Go-style duration (`5s`, `1h30m`, `500ms`), as the CRD pattern allows.
pub fn parse_duration(s: &str) -> Option<Duration> {
    // Parsed on every reconcile: compile the pattern once.
    static UNIT: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"([0-9]+)(ms|s|m|h)").expect("valid regex"));
    let re = &*UNIT;
    let mut total = Duration::ZERO;
    let mut consumed = 0;
    for c in re.captures_iter(s) {
        let n: u64 = c[1].parse().ok()?;
        consumed += c[0].len();
        total += match &c[2] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            _ => Duration::from_secs(n * 3600),
        };
    }
    (consumed == s.len() && !s.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_run_table() {
        let cases = [
            (
                "*/5 * * * *",
                "2026-11-26T10:02:00Z",
                "2026-11-26T10:05:00Z",
            ),
            (
                "*/5 * * * *",
                "2026-11-26T10:05:00Z",
                "2026-11-26T10:10:00Z",
            ),
            (
                "0 8-18/2 * * MON-FRI",
                "2026-11-27T19:00:00Z",
                "2026-11-30T08:00:00Z",
            ),
            (
                "15,45 0 1 jan,jul *",
                "2026-11-26T00:00:00Z",
                "2027-01-01T00:15:00Z",
            ),
            ("@hourly", "2026-11-26T10:30:00Z", "2026-11-26T11:00:00Z"),
            ("@daily", "2026-11-26T10:30:00Z", "2026-11-27T00:00:00Z"),
        ];
        for (schedule, after, expected) in cases {
            assert_eq!(
                next_run(schedule, t(after)).unwrap(),
                t(expected),
                "{schedule} after {after}"
            );
        }
    }

    #[test]
    fn next_run_invalid_names_the_schedule() {
        let err = next_run("61 * * * *", t("2026-11-26T10:00:00Z")).unwrap_err();
        assert_eq!(err.schedule, "61 * * * *");
        assert!(err.to_string().starts_with("\"61 * * * *\": "), "{err}");
    }

    #[test]
    fn parse_duration_table() {
        let cases = [
            ("5s", Some(5_000)),
            ("1h30m", Some(5_400_000)),
            ("500ms", Some(500)),
            ("", None),
            ("5 s", None),
            ("1d", None),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s).map(|d| d.as_millis() as u64), ms, "{s}");
        }
    }
}
