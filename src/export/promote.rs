//! Failover and failback on exported objects. An export is a *standby*: workloads at zero
//! with their source replicas in `dr-syncer.io/original-replicas`, CronJobs and Jobs
//! suspended with `dr-syncer.io/original-suspend`. *Promoting* restores those values and
//! drops the annotations; *demoting* returns to the standby form the export writes.
//! Pure: used on git trees and on objects read from the DR cluster alike.

use serde_json::{Value, json};

use super::builtin::{self, ORIGINAL_SUSPEND};
use super::resource::{Registry, ResourceType};
use super::value::{self, get, str_at};
use crate::api::keys;

/// Marker file at a mapping's path while its DR side is promoted; exports refuse to
/// overwrite a promoted tree (they would scale the live DR workloads back to zero).
pub const PROMOTED_FILE: &str = ".dr-syncer/promoted.yaml";

/// Annotation on a DR Namespace promoted in direct mode (same meaning as the file).
pub const PROMOTED_ANNOTATION: &str = "dr-syncer.io/promoted";

/// What promotion or demotion changed on one object, for the preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `replicas` or `suspend`.
    pub field: &'static str,
    /// Value before.
    pub from: String,
    /// Value after.
    pub to: String,
}

/// The type of `obj` when it is a workload failover changes.
fn workload(obj: &Value) -> Option<&'static ResourceType> {
    let api_version = str_at(obj, &["apiVersion"])?;
    let kind = str_at(obj, &["kind"])?;
    let rt = Registry::builtin_shared().lookup(api_version, kind)?;
    matches!(
        (rt.group.as_str(), rt.kind.as_str()),
        ("apps", "Deployment" | "StatefulSet" | "ReplicaSet") | ("batch", "CronJob" | "Job")
    )
    .then_some(rt)
}

fn shown(v: Option<&Value>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unset".into())
}

/// Restores the source's replicas / suspend and removes the annotations that recorded
/// them. `None` when the object is not a standby workload.
pub fn promote(obj: &mut Value) -> Option<Step> {
    let kind = workload(obj)?.kind.as_str();
    if kind == "CronJob" || kind == "Job" {
        let original = value::annotations(obj).get(ORIGINAL_SUSPEND)?.clone();
        let restored = original.trim() == "true";
        let from = shown(get(obj, &["spec", "suspend"]));
        value::remove(obj, &["metadata", "annotations", ORIGINAL_SUSPEND]);
        value::ensure_map(obj, &["spec"]).insert("suspend".into(), json!(restored));
        tidy(obj);
        return Some(Step {
            field: "suspend",
            from,
            to: restored.to_string(),
        });
    }
    let original = value::annotations(obj)
        .get(keys::ORIGINAL_REPLICAS)?
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)?;
    let from = shown(get(obj, &["spec", "replicas"]));
    value::remove(obj, &["metadata", "annotations", keys::ORIGINAL_REPLICAS]);
    value::ensure_map(obj, &["spec"]).insert("replicas".into(), json!(original));
    tidy(obj);
    Some(Step {
        field: "replicas",
        from,
        to: original.to_string(),
    })
}

/// Returns a promoted workload to the standby form (the export's scale-to-zero and
/// suspend). `None` when it is not a workload or already standing by.
pub fn demote(obj: &mut Value) -> Option<Step> {
    let rt = workload(obj)?;
    let kind = rt.kind.as_str();
    let annotations = value::annotations(obj);
    let (field, already) = if kind == "CronJob" || kind == "Job" {
        ("suspend", annotations.contains_key(ORIGINAL_SUSPEND))
    } else {
        (
            "replicas",
            annotations.contains_key(keys::ORIGINAL_REPLICAS),
        )
    };
    if already {
        return None;
    }
    let from = shown(get(obj, &["spec", field]));
    builtin::standby(obj, rt);
    Some(Step {
        field,
        from,
        to: shown(get(obj, &["spec", field])),
    })
}

fn tidy(obj: &mut Value) {
    if let Some(m) = value::get_mut(obj, &["metadata"]) {
        value::drop_empty_metadata_maps(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, original: Option<&str>) -> Value {
        let mut v = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": replicas}});
        if let Some(o) = original {
            value::set_annotation(&mut v, keys::ORIGINAL_REPLICAS, o);
        }
        v
    }

    fn cron(suspend: bool, original: Option<&str>) -> Value {
        let mut v = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"suspend": suspend}});
        if let Some(o) = original {
            value::set_annotation(&mut v, ORIGINAL_SUSPEND, o);
        }
        v
    }

    #[test]
    fn promote_table() {
        let cases = [
            (
                "standby deployment",
                deploy(0, Some("3")),
                Some(("replicas", "0", "3")),
                deploy(3, None),
            ),
            (
                "scale-override kept value",
                deploy(1, Some("3")),
                Some(("replicas", "1", "3")),
                deploy(3, None),
            ),
            ("already live", deploy(3, None), None, deploy(3, None)),
            (
                "garbage annotation left alone",
                deploy(0, Some("many")),
                None,
                deploy(0, Some("many")),
            ),
            (
                "suspended cronjob",
                cron(true, Some("false")),
                Some(("suspend", "true", "false")),
                cron(false, None),
            ),
            (
                "cronjob suspended at the source",
                cron(true, Some("true")),
                Some(("suspend", "true", "true")),
                cron(true, None),
            ),
            (
                "not a workload",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "annotations": {"dr-syncer.io/original-replicas": "2"}}}),
                None,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "annotations": {"dr-syncer.io/original-replicas": "2"}}}),
            ),
        ];
        for (case, mut obj, step, expected) in cases {
            let got = promote(&mut obj);
            assert_eq!(
                got.map(|s| (s.field, s.from, s.to)),
                step.map(|(f, a, b)| (f, a.to_string(), b.to_string())),
                "{case}"
            );
            assert_eq!(obj, expected, "{case}");
        }
    }

    #[test]
    fn demote_table() {
        let cases = [
            (
                "live deployment",
                deploy(3, None),
                Some(("replicas", "3", "0")),
                deploy(0, Some("3")),
            ),
            (
                "already standby",
                deploy(0, Some("3")),
                None,
                deploy(0, Some("3")),
            ),
            (
                "live cronjob",
                cron(false, None),
                Some(("suspend", "false", "true")),
                cron(true, Some("false")),
            ),
        ];
        for (case, mut obj, step, expected) in cases {
            let got = demote(&mut obj);
            assert_eq!(
                got.map(|s| (s.field, s.from, s.to)),
                step.map(|(f, a, b)| (f, a.to_string(), b.to_string())),
                "{case}"
            );
            assert_eq!(obj, expected, "{case}");
        }
    }

    #[test]
    fn promote_then_demote_round_trips() {
        for standby in [deploy(0, Some("4")), cron(true, Some("false"))] {
            let mut v = standby.clone();
            promote(&mut v).unwrap();
            demote(&mut v).unwrap();
            assert_eq!(v, standby);
        }
    }
}
