//! When a NamespaceMapping syncs: the pure decision from its mode, its status and the
//! clock, so it can be table-tested and so a reconcile caused by our own status write
//! decides "nothing to do" instead of looping.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::{NamespaceMapping, ReplicationMode, keys};
/// Go-style durations; defined below both the controller and `datasync`.
pub use crate::schedule::parse_duration;

/// Pause before retrying a failed sync.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// What the reconciler should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `spec.paused`.
    Paused,
    /// Sync now, for this reason (shown in logs and events).
    Sync(&'static str),
    /// Nothing to do until this time (`None`: until something changes).
    Wait(Option<Timestamp>),
}

/// A schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.schedule {schedule:?}: {message}")]
pub struct ScheduleError {
    /// The schedule.
    pub schedule: String,
    /// Why.
    pub message: String,
}

/// The next run of a 5-field cron schedule (or `@hourly`-style macro) strictly after `after`,
/// in UTC; the error names `spec.schedule` ([`crate::schedule::next_run`] does the work).
pub fn next_run(schedule: &str, after: Timestamp) -> Result<Timestamp, ScheduleError> {
    crate::schedule::next_run(schedule, after).map_err(|e| ScheduleError {
        schedule: e.schedule,
        message: e.message,
    })
}

/// Inputs of the decision that are not in the mapping itself.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Now.
    pub now: Timestamp,
    /// A watched object changed since the last sync (Continuous mode).
    pub changed: bool,
    /// Full re-export interval (Continuous mode).
    pub resync: Duration,
}

fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    t.0
}

/// Decides what to do for `nm`.
pub fn decide(nm: &NamespaceMapping, clock: Clock) -> Result<Decision, ScheduleError> {
    if nm.spec.paused {
        return Ok(Decision::Paused);
    }
    let status = nm.status.clone().unwrap_or_default();
    let generation_changed =
        nm.metadata.generation.is_some() && status.observed_generation != nm.metadata.generation;
    let trigger = nm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::SYNC_NOW));
    // A new sync-now value runs one sync in every mode; the handled value is in status.
    let triggered = trigger.is_some_and(|t| status.last_sync_now.as_ref() != Some(t));
    if triggered && status.last_error.is_none() {
        return Ok(Decision::Sync("sync-now annotation"));
    }
    let last = status.last_sync_time.as_ref().map(ts);
    // A release naming the held batch runs at once.
    let release = nm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::ALLOW_MASS_DELETION));
    if status.phase == Some(crate::api::MappingPhase::Held)
        && let (Some(r), Some(err)) = (release, &status.last_error)
        && err.message.contains(&format!("release batch {r} "))
    {
        return Ok(Decision::Sync("mass deletion released"));
    }
    // After a failure, retry with a pause instead of at once: our own status write of the
    // failure would otherwise start the next attempt immediately.
    if let Some(err) = &status.last_error {
        let retry_at = ts(&err.time)
            + jiff::SignedDuration::try_from(RETRY_AFTER_FAILURE).expect("small duration");
        if clock.now < retry_at && !generation_changed {
            return Ok(Decision::Wait(Some(retry_at)));
        }
    }
    if triggered {
        return Ok(Decision::Sync("sync-now annotation (retry)"));
    }
    match nm.spec.replication_mode {
        ReplicationMode::Manual => Ok(Decision::Wait(None)),
        ReplicationMode::Scheduled => {
            let schedule = nm.spec.schedule.as_deref().unwrap_or("");
            let next = next_run(
                schedule,
                last.unwrap_or(
                    clock
                        .now
                        .checked_sub(jiff::SignedDuration::from_secs(1))
                        .unwrap_or(clock.now),
                ),
            )?;
            if last.is_none() {
                return Ok(Decision::Sync("first sync"));
            }
            if generation_changed {
                return Ok(Decision::Sync("spec changed"));
            }
            if next <= clock.now {
                Ok(Decision::Sync("schedule"))
            } else {
                Ok(Decision::Wait(Some(next)))
            }
        }
        ReplicationMode::Continuous => {
            let Some(last) = last else {
                return Ok(Decision::Sync("first sync"));
            };
            if generation_changed {
                return Ok(Decision::Sync("spec changed"));
            }
            if clock.changed {
                return Ok(Decision::Sync("source changed"));
            }
            let due = last
                + jiff::SignedDuration::try_from(clock.resync)
                    .unwrap_or(jiff::SignedDuration::from_hours(1));
            if due <= clock.now {
                Ok(Decision::Sync("periodic resync"))
            } else {
                Ok(Decision::Wait(Some(due)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn mapping(
        mode: &str,
        annotations: serde_json::Value,
        status: serde_json::Value,
    ) -> NamespaceMapping {
        serde_json::from_value(json!({
            "apiVersion": "dr-syncer.io/v1alpha1", "kind": "NamespaceMapping",
            "metadata": {"name": "m", "namespace": "dr-syncer", "generation": 1, "annotations": annotations},
            "spec": {"replicationMode": mode, "schedule": "*/5 * * * *", "sourceNamespace": "shop",
                     "destination": {"git": {"url": "https://g.example.com/r.git"}}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn decide_table() {
        let now = t("2026-11-26T10:03:00Z");
        let clock = Clock {
            now,
            changed: false,
            resync: Duration::from_secs(3600),
        };
        let synced = |at: &str, handled: Option<&str>| json!({"lastSyncTime": at, "observedGeneration": 1, "lastSyncNow": handled});
        let cases = [
            (
                "manual idle",
                mapping("Manual", json!({}), json!({})),
                clock,
                Decision::Wait(None),
            ),
            (
                "manual trigger",
                mapping("Manual", json!({"dr-syncer.io/sync-now": "1"}), json!({})),
                clock,
                Decision::Sync("sync-now annotation"),
            ),
            (
                "manual handled",
                mapping(
                    "Manual",
                    json!({"dr-syncer.io/sync-now": "1"}),
                    synced("2026-11-26T10:00:00Z", Some("1")),
                ),
                clock,
                Decision::Wait(None),
            ),
            (
                "manual second trigger",
                mapping(
                    "Manual",
                    json!({"dr-syncer.io/sync-now": "2"}),
                    synced("2026-11-26T10:00:00Z", Some("1")),
                ),
                clock,
                Decision::Sync("sync-now annotation"),
            ),
            (
                "scheduled first",
                mapping("Scheduled", json!({}), json!({})),
                clock,
                Decision::Sync("first sync"),
            ),
            (
                "scheduled waits",
                mapping("Scheduled", json!({}), synced("2026-11-26T10:01:00Z", None)),
                clock,
                Decision::Wait(Some(t("2026-11-26T10:05:00Z"))),
            ),
            (
                "scheduled due",
                mapping("Scheduled", json!({}), synced("2026-11-26T09:58:00Z", None)),
                clock,
                Decision::Sync("schedule"),
            ),
            (
                "continuous first",
                mapping("Continuous", json!({}), json!({})),
                clock,
                Decision::Sync("first sync"),
            ),
            (
                "continuous quiet",
                mapping(
                    "Continuous",
                    json!({}),
                    synced("2026-11-26T10:00:00Z", None),
                ),
                clock,
                Decision::Wait(Some(t("2026-11-26T11:00:00Z"))),
            ),
            (
                "continuous change",
                mapping(
                    "Continuous",
                    json!({}),
                    synced("2026-11-26T10:00:00Z", None),
                ),
                Clock {
                    changed: true,
                    ..clock
                },
                Decision::Sync("source changed"),
            ),
            (
                "continuous resync",
                mapping(
                    "Continuous",
                    json!({}),
                    synced("2026-11-26T09:00:00Z", None),
                ),
                clock,
                Decision::Sync("periodic resync"),
            ),
        ];
        for (name, nm, clock, expected) in cases {
            assert_eq!(decide(&nm, clock).unwrap(), expected, "{name}");
        }
    }
}
