//! Status of a NamespaceMapping, built purely from the previous status and what happened,
//! and written only when it changed (so our own writes never start another sync).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    CommitRef, MappingPhase, NamespaceMappingStatus, SyncError as StatusError, SyncStats,
};
use crate::gitops::Published;

use super::sync::{Outcome, SyncReport};

/// Sets condition `type_`, keeping `lastTransitionTime` when the status did not flip.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) {
    let status = if ok { "True" } else { "False" };
    let transition = conds
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    conds.retain(|c| c.type_ != type_);
    conds.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: transition,
    });
    conds.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Status after a successful sync.
pub fn synced(
    prev: &NamespaceMappingStatus,
    report: &SyncReport,
    generation: Option<i64>,
    trigger: Option<String>,
    now: Time,
) -> NamespaceMappingStatus {
    let mut s = prev.clone();
    let totals = report.summary.totals();
    let (mut added, mut changed, mut deleted) = (0, 0, 0);
    if let Outcome::Git(Published::Committed {
        sha, subject, diff, ..
    }) = &report.outcome
    {
        s.last_commit = Some(CommitRef {
            sha: sha.clone(),
            time: now.clone(),
            message: subject.clone(),
        });
        (added, changed, deleted) = (
            diff.added.len() as i64,
            diff.changed.len() as i64,
            diff.deleted.len() as i64,
        );
    }
    if let Outcome::Direct(a) = &report.outcome {
        (changed, deleted) = (a.applied as i64, a.pruned as i64);
    }
    s.sync_stats = Some(SyncStats {
        objects: totals.exported as i64,
        added,
        changed,
        deleted,
        excluded: totals.excluded as i64,
        secrets_encrypted: totals.secrets_encrypted as i64,
        secrets_skipped: totals.secrets_skipped as i64,
        duration_millis: report.duration.as_millis() as i64,
    });
    let partial = !report.summary.failures.is_empty();
    // A partial sync leaves the unlisted types as they were: the recovery point only moves
    // with a complete sync.
    s.phase = Some(if partial {
        MappingPhase::Degraded
    } else {
        MappingPhase::Synced
    });
    s.last_sync_time = Some(now.clone());
    if !partial {
        s.last_complete_sync_time = Some(now.clone());
    }
    s.last_error = None;
    s.observed_generation = generation;
    if trigger.is_some() {
        s.last_sync_now = trigger;
    }
    let message = match degraded_types(report) {
        Some(types) => format!("synced; could not list {types} (their files were kept)"),
        None => "synced".to_string(),
    };
    let (reason, degraded_message) = match degraded_types(report) {
        Some(types) => (
            "TypesNotListed",
            format!("could not list {types}: their files were kept and may be stale"),
        ),
        None => ("AllTypesListed", "every type was listed".to_string()),
    };
    set_condition(
        &mut s.conditions,
        "Degraded",
        partial,
        reason,
        &degraded_message,
        generation,
        now.clone(),
    );
    set_condition(
        &mut s.conditions,
        "Ready",
        true,
        "Configured",
        "configuration valid, destination reachable",
        generation,
        now.clone(),
    );
    set_condition(
        &mut s.conditions,
        "Synced",
        true,
        if partial {
            "PartialSync"
        } else {
            "SyncSucceeded"
        },
        &message,
        generation,
        now,
    );
    s
}

/// The types a sync could not list, as `a, b (ns)`; `None` for a complete sync.
pub fn degraded_types(report: &SyncReport) -> Option<String> {
    let failed: Vec<String> = report
        .summary
        .failures
        .iter()
        .map(|f| match &f.namespace {
            Some(ns) => format!("{} in {ns}", f.what),
            None => f.what.clone(),
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join(", "))
}

/// Status after a failed sync. `held`: the breaker stopped it.
pub fn failed(
    prev: &NamespaceMappingStatus,
    message: &str,
    held: bool,
    generation: Option<i64>,
    now: Time,
) -> NamespaceMappingStatus {
    let mut s = prev.clone();
    s.phase = Some(if held {
        MappingPhase::Held
    } else {
        MappingPhase::Failed
    });
    s.last_error = Some(StatusError {
        message: message.to_string(),
        time: now.clone(),
        object: None,
    });
    s.observed_generation = generation;
    set_condition(
        &mut s.conditions,
        "Synced",
        false,
        if held {
            "MassDeletionHeld"
        } else {
            "SyncFailed"
        },
        message,
        generation,
        now,
    );
    s
}
