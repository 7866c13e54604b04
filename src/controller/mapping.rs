//! The NamespaceMapping reconciler: fetch → decide (pure) → sync → status, plus an Event
//! for every sync outcome.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::{MappingPhase, NamespaceMapping, NamespaceMappingStatus, ReplicationMode, keys};
use crate::gitops::Published;

use super::context::Ctx;
use super::schedule::{self, Clock, Decision};
use super::{ControllerError, status, sync};

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

async fn write_status(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    new: NamespaceMappingStatus,
) -> Result<(), ControllerError> {
    // `pvcData` belongs to the data-sync task: never compare or write it here (a merge
    // patch leaves an omitted field alone).
    let mut new = new;
    new.pvc_data = None;
    new.owner = Some(ctx.replica().to_string());
    let mut current = nm.status.clone();
    if let Some(c) = current.as_mut() {
        c.pvc_data = None;
    }
    if current.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<NamespaceMapping> =
        Api::namespaced(ctx.client.clone(), &nm.namespace().unwrap_or_default());
    api.patch_status(
        &nm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status_patch(current.as_ref(), &new)})),
    )
    .await?;
    Ok(())
}

/// The merge patch turning `current` into `new`: a field `new` no longer has (e.g. a
/// cleared `lastError`) is sent as null, since a merge patch leaves omitted fields alone.
fn status_patch(
    current: Option<&NamespaceMappingStatus>,
    new: &NamespaceMappingStatus,
) -> serde_json::Value {
    let mut patch = serde_json::to_value(new).unwrap_or_default();
    let old = current
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or_default();
    if let (Some(patch), Some(old)) = (patch.as_object_mut(), old.as_object()) {
        for key in old.keys() {
            if key != "pvcData" && !patch.contains_key(key) {
                patch.insert(key.clone(), serde_json::Value::Null);
            }
        }
    }
    patch
}

async fn event(ctx: &Ctx, nm: &NamespaceMapping, warning: bool, reason: &str, note: String) {
    ctx.publish(nm, warning, reason, "Sync", note).await;
}

/// Reconciles one NamespaceMapping.
pub async fn reconcile(
    nm: Arc<NamespaceMapping>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let key = format!("{}/{}", nm.namespace().unwrap_or_default(), nm.name_any());
    // With tenants the watch spans every namespace: a mapping outside the controller's and
    // the tenant namespaces is not ours to touch, not even its status.
    let role = ctx
        .settings
        .tenancy
        .role(&nm.namespace().unwrap_or_default());
    if role == crate::refs::Role::Unwatched {
        return Ok(Action::await_change());
    }
    // With sharding another replica may own it: drop its watch and data syncs here and
    // write nothing (a change of members reconciles every mapping again).
    if !ctx.owns(&key) {
        ctx.watches.remove(&key);
        ctx.data_syncs.remove(&key);
        ctx.forget_synced(&key);
        return Ok(Action::await_change());
    }
    let lock = ctx.lock_for(&key);
    let _guard = lock.lock().await;
    // Decide on the newest object: a sync that ran while we waited for the lock may have
    // handled this trigger already.
    let api: Api<NamespaceMapping> =
        Api::namespaced(ctx.client.clone(), &nm.namespace().unwrap_or_default());
    let Some(nm) = api.get_opt(&nm.name_any()).await? else {
        ctx.watches.remove(&key);
        ctx.data_syncs.remove(&key);
        return Ok(Action::await_change());
    };
    let prev = nm.status.clone().unwrap_or_default();
    let target = nm
        .spec
        .rpo_target
        .as_deref()
        .and_then(crate::schedule::parse_duration)
        .unwrap_or(ctx.settings.default_rpo_target);
    let label = super::metrics::MappingLabel {
        mapping: key.clone(),
    };
    let m = &ctx.metrics;
    m.rpo_target
        .get_or_create(&label)
        .set(i64::try_from(target.as_secs()).unwrap_or(i64::MAX));
    // Every series an alert reads exists from the mapping's first reconcile on: a counter
    // that appears only at its first failure would hide that failure from `increase()`.
    let _ = m.sync_failures.get_or_create(&label);
    let _ = m.push_failures.get_or_create(&label);
    let _ = m.breaker_held.get_or_create(&label);
    let _ = m.dr_rejected_objects.get_or_create(&label);
    let _ = m.pending_changes.get_or_create(&label);
    // The watch follows the same source as the full sync. When the ClusterMapping cannot be
    // read the source is unknown: no watch is started (never the local cluster by default).
    // A mapping the tenancy rules refuse gets neither a watch nor data syncs, only status.
    let listed = match crate::refs::resolve(&ctx.client, &ctx.settings.tenancy, &nm).await {
        Ok(resolved) => {
            let source = resolved.refs(&nm).source();
            ctx.watches.ensure(&ctx, &nm, source)
        }
        Err(e @ crate::refs::RefError::Forbidden(_)) => {
            ctx.watches.remove(&key);
            ctx.data_syncs.remove(&key);
            let e = sync::SyncError::Ref(e);
            finish_failed(&ctx, &nm, &prev, &e).await?;
            // A TenantPolicy change re-triggers this mapping; the requeue is a backstop.
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
        Err(e) => {
            tracing::warn!(mapping = %key, error = %e, "continuous watch: source unknown");
            None
        }
    };
    ctx.data_syncs.ensure(&nm);
    if let Some(listed) = listed {
        super::continuous::Watches::wait_listed(listed).await;
    }
    let resync = nm
        .spec
        .continuous
        .as_ref()
        .and_then(|c| schedule::parse_duration(&c.resync_interval))
        .unwrap_or(Duration::from_secs(3600));
    // A Continuous mapping syncs once after start: changes made while no watch ran (restart,
    // leader change) are otherwise invisible.
    let clock = Clock {
        now: jiff::Timestamp::now(),
        changed: !ctx.synced_since_start(&key),
        resync,
    };
    let decision = match schedule::decide(&nm, clock) {
        Ok(d) => d,
        Err(e) => {
            write_status(
                &ctx,
                &nm,
                status::failed(&prev, &e.to_string(), false, nm.metadata.generation, now()),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    match decision {
        Decision::Paused => {
            let mut s = prev.clone();
            s.phase = Some(MappingPhase::Paused);
            s.next_sync_time = None;
            write_status(&ctx, &nm, s).await?;
            Ok(Action::await_change())
        }
        Decision::Wait(until) => {
            let mut s = prev.clone();
            if nm.spec.replication_mode == ReplicationMode::Scheduled && prev.last_error.is_none() {
                s.next_sync_time = until.map(Time);
            }
            if s.phase.is_none() {
                s.phase = Some(MappingPhase::Pending);
            }
            write_status(&ctx, &nm, s).await?;
            Ok(match until {
                Some(t) => Action::requeue(
                    Duration::try_from(t - jiff::Timestamp::now())
                        .unwrap_or(Duration::ZERO)
                        .max(Duration::from_millis(200)),
                ),
                None => Action::await_change(),
            })
        }
        Decision::Sync(reason) => sync_and_record(&ctx, &nm, &prev, reason, None).await,
    }
}

/// Runs one sync of `nm` and records the outcome in status and an Event. The caller holds
/// the mapping's lock.
async fn sync_and_record(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    prev: &NamespaceMappingStatus,
    reason: &str,
    incoming: Option<super::continuous::Incoming>,
) -> Result<Action, ControllerError> {
    let key = format!("{}/{}", nm.namespace().unwrap_or_default(), nm.name_any());
    tracing::info!(mapping = %key, reason, "sync started");
    let resolved = match crate::refs::resolve(&ctx.client, &ctx.settings.tenancy, nm).await {
        Ok(resolved) => resolved,
        Err(e) => {
            let e = sync::SyncError::Ref(e);
            return finish_failed(ctx, nm, prev, &e).await;
        }
    };
    let trigger = nm.annotations().get(keys::SYNC_NOW).cloned();
    // A watched batch is published as a patch when it can be; otherwise (or when the patch
    // path says so) the whole mapping is exported.
    // A Degraded mapping has types that could not be listed: a patch cannot tell whether
    // they are readable again, so only a full sync may clear Degraded and move the RPO.
    let degraded = prev.phase == Some(crate::api::MappingPhase::Degraded);
    let result = match incoming {
        Some(_) if degraded => {
            tracing::info!(mapping = %key, "full sync instead of a patch: the mapping is Degraded");
            sync::run(ctx, nm, &resolved).await
        }
        Some(incoming) => match super::incremental::run(ctx, nm, &resolved, incoming).await {
            Ok(report) => Ok(report),
            Err(super::incremental::IncrementalError::Sync(e)) => Err(e),
            Err(super::incremental::IncrementalError::NeedsFull(why)) => {
                tracing::info!(mapping = %key, why, "full sync instead of a patch");
                sync::run(ctx, nm, &resolved).await
            }
        },
        None => sync::run(ctx, nm, &resolved).await,
    };
    match result {
        Ok(report) => {
            let mut s = status::synced(prev, &report, nm.metadata.generation, trigger, now());
            s.next_sync_time = match (&nm.spec.replication_mode, &nm.spec.schedule) {
                (ReplicationMode::Scheduled, Some(cron)) => {
                    schedule::next_run(cron, jiff::Timestamp::now())
                        .ok()
                        .map(Time)
                }
                _ => None,
            };
            let note = match &report.outcome {
                sync::Outcome::Git(Published::Committed { sha, subject, .. }) => {
                    format!("{subject} ({})", &sha[..12.min(sha.len())])
                }
                sync::Outcome::Git(Published::Unchanged { .. }) => "no change".to_string(),
                sync::Outcome::Direct(a) => format!(
                    "applied {} objects to the DR cluster, pruned {}",
                    a.applied, a.pruned
                ),
            };
            tracing::info!(mapping = %key, %note, ms = report.duration.as_millis() as u64, "sync finished");
            record_success(ctx, &key, &report);
            ctx.mark_synced(&key);
            if matches!(
                report.outcome,
                sync::Outcome::Git(Published::Committed { .. })
            ) {
                ctx.dr_checks.request(&key);
            }
            write_status(ctx, nm, s).await?;
            match status::degraded_types(&report) {
                Some(types) => {
                    let note = format!(
                        "{note}; could not list {types}: their files were kept and may be stale"
                    );
                    event(ctx, nm, true, "SyncDegraded", note).await;
                }
                None => event(ctx, nm, false, "Synced", note).await,
            }
            Ok(match nm.spec.replication_mode {
                ReplicationMode::Manual => Action::await_change(),
                _ => Action::requeue(Duration::from_secs(1)),
            })
        }
        // A deposed leader leaves status and Events to the new leader.
        Err(e) if e.is_fenced() => {
            tracing::warn!(mapping = %key, error = %e, "not written: no longer the leader");
            Ok(Action::await_change())
        }
        Err(e) => finish_failed(ctx, nm, prev, &e).await,
    }
}

/// A sync started by something other than the mapping itself (a watched source object
/// changed): takes the lock, re-reads the mapping and syncs unless it is paused.
pub async fn sync_triggered(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
    reason: &str,
    incoming: Option<super::continuous::Incoming>,
) -> Result<(), ControllerError> {
    let lock = ctx.lock_for(&format!("{namespace}/{name}"));
    let _guard = lock.lock().await;
    let api: Api<NamespaceMapping> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(nm) = api.get_opt(name).await? else {
        // Deleted: the reconciler never sees a deleted object (it is gone from the store),
        // so the watch that called us stops its own task here.
        ctx.watches.remove(&format!("{namespace}/{name}"));
        return Ok(());
    };
    if nm.spec.paused {
        return Ok(());
    }
    let prev = nm.status.clone().unwrap_or_default();
    sync_and_record(ctx, &nm, &prev, reason, incoming)
        .await
        .map(|_| ())
}

fn record_success(ctx: &Ctx, key: &str, report: &sync::SyncReport) {
    use super::metrics::{KindLabel, MappingLabel};
    let m = &ctx.metrics;
    let label = MappingLabel {
        mapping: key.to_string(),
    };
    m.sync_duration
        .get_or_create(&label)
        .observe(report.duration.as_secs_f64());
    if matches!(
        report.outcome,
        sync::Outcome::Git(Published::Committed { .. })
    ) {
        m.commits.get_or_create(&label).inc();
    }
    m.syncs
        .get_or_create(&super::metrics::PathLabel {
            mapping: key.to_string(),
            path: if report.patch { "patch" } else { "full" }.into(),
        })
        .inc();
    m.breaker_held.get_or_create(&label).set(0);
    // RPO: only a complete sync is a recovery point (a partial one left types stale).
    if report.summary.failures.is_empty() {
        m.last_success
            .get_or_create(&label)
            .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
    }
    for (kind, counts) in &report.summary.kinds {
        let exported = counts.exported.saturating_sub(counts.secrets_skipped);
        m.objects_exported
            .get_or_create(&KindLabel {
                mapping: key.to_string(),
                kind: kind.clone(),
            })
            .set(exported as i64);
    }
}

async fn finish_failed(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    prev: &NamespaceMappingStatus,
    error: &sync::SyncError,
) -> Result<Action, ControllerError> {
    let (message, held) = (&error.to_string(), error.held());
    tracing::warn!(mapping = %nm.name_any(), held, error = message, "sync failed");
    let label = super::metrics::MappingLabel {
        mapping: format!("{}/{}", nm.namespace().unwrap_or_default(), nm.name_any()),
    };
    ctx.metrics.sync_failures.get_or_create(&label).inc();
    ctx.metrics
        .breaker_held
        .get_or_create(&label)
        .set(i64::from(held));
    if error.is_push_failure() {
        ctx.metrics.push_failures.get_or_create(&label).inc();
    }
    write_status(
        ctx,
        nm,
        status::failed(prev, message, held, nm.metadata.generation, now()),
    )
    .await?;
    event(
        ctx,
        nm,
        true,
        if held {
            "MassDeletionHeld"
        } else {
            "SyncFailed"
        },
        message.to_string(),
    )
    .await;
    Ok(Action::requeue(schedule::RETRY_AFTER_FAILURE))
}

/// Requeues after an error the reconciler could not record in status (API errors).
pub fn error_policy(nm: Arc<NamespaceMapping>, err: &ControllerError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(mapping = %nm.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patch_clears_what_the_new_status_dropped() {
        let current: NamespaceMappingStatus = serde_json::from_value(json!({
            "phase": "Failed",
            "lastError": {"message": "boom", "time": "2026-12-02T07:00:00Z"},
            "nextSyncTime": "2026-12-02T08:00:00Z",
            "pvcData": {"volumes": []}
        }))
        .unwrap();
        let new: NamespaceMappingStatus =
            serde_json::from_value(json!({"phase": "Synced"})).unwrap();
        let patch = status_patch(Some(&current), &new);
        assert_eq!(
            patch,
            json!({"phase": "Synced", "lastError": null, "nextSyncTime": null}),
            "pvcData belongs to the data-sync task and is never touched"
        );
        assert_eq!(status_patch(None, &new), json!({"phase": "Synced"}));
    }
}
