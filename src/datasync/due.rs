//! When a mapping's scheduled data sync is due: the pure decision from its cron schedule,
//! the last sync attempt and the clock, so it can be table-tested.
//!
//! The last attempt comes from `status.pvcData`, not from the task's memory, so a run whose
//! slot passed while no controller was running is caught up when the task starts: once,
//! however many slots were missed (like the manifest scheduler in
//! `controller::schedule::decide`), and the schedule is followed from there.

use jiff::Timestamp;

use crate::api::{NamespaceMapping, PvcDataStatus};
use crate::schedule;

/// The cron schedule of a mapping's data syncs and the field it was read from, so an
/// error points at what the user has to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule<'a> {
    /// 5-field cron expression or `@hourly`-style macro (UTC).
    pub cron: &'a str,
    /// Where `cron` was read from, e.g. `spec.pvcConfig.dataSyncConfig.schedule`.
    pub field: &'static str,
}

/// A data-sync schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {cron:?}: {message}")]
pub struct ScheduleError {
    /// The field the schedule was read from.
    pub field: &'static str,
    /// The schedule as written.
    pub cron: String,
    /// Why it cannot be used.
    pub message: String,
}

impl<'a> Schedule<'a> {
    /// The data schedule of `nm`: `spec.pvcConfig.dataSyncConfig.schedule`, else the
    /// mapping's `spec.schedule`; `None` when neither is set (only the
    /// `dr-syncer.io/sync-data-now` trigger runs syncs then).
    pub fn of(nm: &'a NamespaceMapping) -> Option<Schedule<'a>> {
        let data = nm
            .spec
            .pvc_config
            .as_ref()
            .and_then(|p| p.data_sync_config.as_ref())
            .and_then(|d| d.schedule.as_deref());
        match (data, nm.spec.schedule.as_deref()) {
            (Some(cron), _) => Some(Schedule {
                cron,
                field: "spec.pvcConfig.dataSyncConfig.schedule",
            }),
            (None, Some(cron)) => Some(Schedule {
                cron,
                field: "spec.schedule",
            }),
            (None, None) => None,
        }
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Result<Timestamp, ScheduleError> {
        schedule::next_run(self.cron, after).map_err(|e| ScheduleError {
            field: self.field,
            cron: self.cron.to_string(),
            message: e.message,
        })
    }
}

/// Why a scheduled data sync runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No attempt is recorded: the mapping never synced its data.
    NeverSynced,
    /// The slot at this time passed after the last attempt (more slots may have passed
    /// since; they are all covered by this one run).
    Missed(Timestamp),
}

/// What the schedule asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Run the data syncs now.
    Run(Why),
    /// Nothing is due before this slot (`None`: no schedule, only triggers run syncs).
    Wait(Option<Timestamp>),
}

/// Decides whether a scheduled data sync is due at `now`, given the `last` attempt.
///
/// A slot that passed after the last attempt is due now; the run it causes becomes the
/// new last attempt, so several missed slots give exactly one run.
pub fn decide(
    schedule: Option<Schedule<'_>>,
    last: Option<Timestamp>,
    now: Timestamp,
) -> Result<Due, ScheduleError> {
    let Some(schedule) = schedule else {
        return Ok(Due::Wait(None));
    };
    // Parse even when there is no attempt yet: a broken schedule is reported at once,
    // not after a first sync that made it look fine.
    let first_after_now = schedule.next_after(now)?;
    let Some(last) = last else {
        return Ok(Due::Run(Why::NeverSynced));
    };
    let slot = schedule.next_after(last)?;
    if slot <= now {
        Ok(Due::Run(Why::Missed(slot)))
    } else {
        // `slot` is the first after the last attempt and it is still ahead; for an attempt
        // recorded in the future (clock skew) do not wait past the first slot after now.
        Ok(Due::Wait(Some(slot.min(first_after_now))))
    }
}

/// The latest recorded data-sync attempt of any volume of the mapping. A run attempts
/// every eligible PVC at once, so the newest attempt marks the last run; a PVC added since
/// waits for the next slot rather than re-running the others.
pub fn last_attempt(status: &PvcDataStatus) -> Option<Timestamp> {
    status
        .volumes
        .iter()
        .filter_map(|v| v.last_attempt_time.as_ref().map(|t| t.0))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PvcVolumeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const DATA: &str = "spec.pvcConfig.dataSyncConfig.schedule";

    fn every(cron: &str) -> Option<Schedule<'_>> {
        Some(Schedule { cron, field: DATA })
    }

    #[test]
    fn decide_table() {
        let now = t("2026-11-26T10:03:00Z");
        let cases: [(&str, Option<Schedule>, Option<&str>, Due); 9] = [
            (
                "decide_without_schedule_waits_for_a_trigger",
                None,
                None,
                Due::Wait(None),
            ),
            (
                "decide_never_synced_runs_now",
                every("0 * * * *"),
                None,
                Due::Run(Why::NeverSynced),
            ),
            (
                "decide_attempt_after_latest_slot_waits_for_the_next",
                every("*/5 * * * *"),
                Some("2026-11-26T10:01:00Z"),
                Due::Wait(Some(t("2026-11-26T10:05:00Z"))),
            ),
            (
                "decide_attempt_at_the_slot_itself_waits_for_the_next",
                every("*/5 * * * *"),
                Some("2026-11-26T10:00:00Z"),
                Due::Wait(Some(t("2026-11-26T10:05:00Z"))),
            ),
            (
                "decide_missed_one_slot_runs_once_now",
                every("*/5 * * * *"),
                Some("2026-11-26T09:58:00Z"),
                Due::Run(Why::Missed(t("2026-11-26T10:00:00Z"))),
            ),
            (
                "decide_missed_many_slots_runs_once_now",
                every("* * * * *"),
                Some("2026-11-26T07:00:30Z"),
                Due::Run(Why::Missed(t("2026-11-26T07:01:00Z"))),
            ),
            (
                "decide_hourly_attempt_two_hours_old_runs_now",
                every("@hourly"),
                Some("2026-11-26T08:03:00Z"),
                Due::Run(Why::Missed(t("2026-11-26T09:00:00Z"))),
            ),
            (
                "decide_slot_exactly_now_runs",
                every("*/3 * * * *"),
                Some("2026-11-26T10:01:00Z"),
                Due::Run(Why::Missed(t("2026-11-26T10:03:00Z"))),
            ),
            (
                "decide_attempt_in_the_future_waits_for_the_first_slot_after_now",
                every("*/5 * * * *"),
                Some("2026-11-26T10:12:00Z"),
                Due::Wait(Some(t("2026-11-26T10:05:00Z"))),
            ),
        ];
        for (name, schedule, last, expected) in cases {
            assert_eq!(
                decide(schedule, last.map(t), now).unwrap(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn decide_missed_slots_give_exactly_one_run() {
        // The run that catches up becomes the last attempt: the next pass waits for the
        // next slot instead of running once per missed slot.
        let now = t("2026-11-26T10:03:20Z");
        let schedule = every("* * * * *");
        let first = decide(schedule, Some(t("2026-11-26T09:00:00Z")), now).unwrap();
        assert!(matches!(first, Due::Run(Why::Missed(_))), "{first:?}");
        let after = decide(schedule, Some(now), t("2026-11-26T10:03:25Z")).unwrap();
        assert_eq!(after, Due::Wait(Some(t("2026-11-26T10:04:00Z"))));
    }

    #[test]
    fn decide_invalid_cron_names_the_field() {
        let now = t("2026-11-26T10:03:00Z");
        for (name, schedule, last) in [
            (
                "decide_invalid_cron_never_synced",
                every("61 * * * *"),
                None,
            ),
            (
                "decide_invalid_cron_after_an_attempt",
                every("not a cron"),
                Some(t("2026-11-26T10:00:00Z")),
            ),
            (
                "decide_invalid_mapping_schedule",
                Some(Schedule {
                    cron: "* * *",
                    field: "spec.schedule",
                }),
                None,
            ),
        ] {
            let err = decide(schedule, last, now).unwrap_err();
            let text = err.to_string();
            let field = schedule.unwrap().field;
            assert_eq!(err.field, field, "{name}");
            assert!(text.starts_with(field), "{name}: {text}");
            assert!(text.contains(schedule.unwrap().cron), "{name}: {text}");
        }
    }

    fn mapping(data: serde_json::Value, schedule: Option<&str>) -> NamespaceMapping {
        serde_json::from_value(json!({
            "apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "m", "namespace": "dr-syncer"},
            "spec": {"replicationMode": "Manual", "schedule": schedule, "sourceNamespace": "shop",
                     "destination": {"git": {"url": "https://g.example.com/r.git"}},
                     "pvcConfig": {"syncData": true, "dataSyncConfig": data}},
        }))
        .unwrap()
    }

    #[test]
    fn schedule_of_table() {
        let cases = [
            (
                "schedule_of_data_schedule_wins",
                mapping(json!({"schedule": "0 * * * *"}), Some("*/5 * * * *")),
                Some(("0 * * * *", DATA)),
            ),
            (
                "schedule_of_falls_back_to_the_mapping",
                mapping(json!({}), Some("*/5 * * * *")),
                Some(("*/5 * * * *", "spec.schedule")),
            ),
            ("schedule_of_none", mapping(json!({}), None), None),
        ];
        for (name, nm, expected) in cases {
            assert_eq!(
                Schedule::of(&nm).map(|s| (s.cron, s.field)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn last_attempt_table() {
        let volume = |at: Option<&str>| PvcVolumeStatus {
            last_attempt_time: at.map(|s| Time(t(s))),
            ..Default::default()
        };
        let cases = [
            ("last_attempt_no_volumes", vec![], None),
            ("last_attempt_never_attempted", vec![volume(None)], None),
            (
                "last_attempt_newest_of_all_volumes",
                vec![
                    volume(Some("2026-11-26T09:00:00Z")),
                    volume(None),
                    volume(Some("2026-11-26T09:30:00Z")),
                ],
                Some(t("2026-11-26T09:30:00Z")),
            ),
        ];
        for (name, volumes, expected) in cases {
            let status = PvcDataStatus {
                volumes,
                ..Default::default()
            };
            assert_eq!(last_attempt(&status), expected, "{name}");
        }
    }
}
