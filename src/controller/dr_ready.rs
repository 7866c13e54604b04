//! `DrReady`: the `verify` check on a schedule, for every git mapping whose ClusterMapping
//! names a `targetCluster`. The tree at the branch head is checked (layout; every SOPS file
//! encrypted for exactly the configured recipients — the controller holds no DR key, so the
//! MAC is left to `dr-syncer verify --age-identity`) and dry-run applied on the DR cluster.
//! The result is the `DrReady` condition (with counts), an Event when it flips, and
//! `dr_syncer_dr_rejected_objects{mapping}`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::NamespaceMapping;
use crate::gitops::Repo;
use crate::refs;
use crate::verify::{self, Check, Report, Verdict, tree};

use super::context::Ctx;
use super::metrics::MappingLabel;
use super::{ControllerError, status, sync};

/// Condition type.
pub const CONDITION: &str = "DrReady";

/// Checks every eligible mapping every `interval`, and in between each mapping that
/// committed, soon after its commit; forever (the controller's lifetime). Runs only where
/// the controllers run (the leader).
pub async fn run(ctx: Arc<Ctx>, mappings: Api<NamespaceMapping>, interval: Duration) {
    loop {
        let shard = super::shard::shard_selector(ctx.settings.shard.as_deref());
        match mappings.list(&ListParams::default().labels(&shard)).await {
            Ok(list) => {
                for nm in list.items {
                    check_logged(&ctx, &nm.namespace().unwrap_or_default(), &nm.name_any()).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "DR readiness check: listing mappings"),
        }
        let next_pass = tokio::time::Instant::now() + interval;
        loop {
            // A commit changes what the DR cluster pulls: check that mapping again soon.
            tokio::select! {
                _ = tokio::time::sleep_until(next_pass) => break,
                keys = ctx.dr_checks.next() => {
                    for key in keys {
                        if let Some((namespace, name)) = key.split_once('/') {
                            check_logged(&ctx, namespace, name).await;
                        }
                    }
                }
            }
        }
    }
}

/// Checks mapping `namespace/name` if this replica owns it; a failure is logged.
async fn check_logged(ctx: &Ctx, namespace: &str, name: &str) {
    let key = format!("{namespace}/{name}");
    // With sharding each replica checks the mappings it owns.
    if !ctx.owns(&key) {
        return;
    }
    if let Err(e) = check_one(ctx, namespace, name).await {
        tracing::warn!(mapping = %key, error = %e, "DR readiness check");
    }
}

/// Checks one mapping (under its lock) and records the result.
async fn check_one(ctx: &Ctx, namespace: &str, name: &str) -> Result<(), ControllerError> {
    let role = ctx.settings.tenancy.role(namespace);
    if role == refs::Role::Unwatched {
        return Ok(());
    }
    let key = format!("{namespace}/{name}");
    let lock = ctx.lock_for(&key);
    let _guard = lock.lock().await;
    let api: Api<NamespaceMapping> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(nm) = api.get_opt(name).await? else {
        return Ok(());
    };
    // Tenants get no DR check: the dry-run runs with the DR cluster's (admin) credentials
    // over a tree the tenant writes, and the apiserver's answers would tell the tenant
    // about namespaces and objects it was never granted.
    if role == refs::Role::Tenant {
        return record(ctx, &nm, CheckResult::NotApplicable).await;
    }
    if nm.spec.paused {
        return record(
            ctx,
            &nm,
            CheckResult::NotRun("the mapping is paused".into()),
        )
        .await;
    }
    let resolved = match refs::resolve(&ctx.client, &ctx.settings.tenancy, &nm).await {
        Ok(r) => r,
        Err(e) => {
            return record(
                ctx,
                &nm,
                CheckResult::NotRun(format!("references do not resolve: {e}")),
            )
            .await;
        }
    };
    let refs = resolved.refs(&nm);
    let has_target = refs
        .cluster_mapping
        .is_some_and(|cm| cm.spec.target_cluster.is_some());
    let (Some(dr_ref), true, true) = (refs.dr_cluster(), has_target, refs.git().is_some()) else {
        return record(ctx, &nm, CheckResult::NotApplicable).await;
    };
    let report = match check(ctx, &nm, &resolved, &dr_ref).await {
        Ok(Some(report)) => report,
        Ok(None) => {
            return record(ctx, &nm, CheckResult::NotRun("nothing exported yet".into())).await;
        }
        // Fail closed: a check that could not run says DR is not known to come up.
        Err(e) => {
            let mut r = Report::default();
            r.problem("(check)", Check::DryRun, format!("cannot check: {e}"));
            r
        }
    };
    ctx.metrics
        .dr_rejected_objects
        .get_or_create(&MappingLabel {
            mapping: key.clone(),
        })
        .set(report.rejected() as i64);
    record(ctx, &nm, CheckResult::Checked(report)).await
}

/// What the check came to for one mapping.
enum CheckResult {
    /// It ran.
    Checked(Report),
    /// It should run but could not (the reason): never leave an old `True` standing.
    NotRun(String),
    /// The mapping has no DR cluster to check against (or is a tenant's): no condition.
    NotApplicable,
}

/// Reads the tree at the branch head and checks it; `None` before the first export.
async fn check(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    resolved: &refs::Resolved,
    dr_ref: &refs::ClusterRef,
) -> Result<Option<Report>, sync::SyncError> {
    let (target, recipients, consumer) = sync::git_setup(ctx, nm, resolved).await?;
    let files = tokio::task::spawn_blocking(move || -> Result<_, sync::SyncError> {
        let repo = Repo::open(target)?;
        let head = repo.fetch()?;
        Ok(head.map(|h| repo.files_at(Some(h))).transpose()?)
    })
    .await
    .map_err(|e| sync::SyncError::Config(format!("check task failed: {e}")))??;
    let Some(tree_files) = files else {
        return Ok(None);
    };
    let expected = recipients.strings();
    let keys = tree::SecretKeys::Recipients(&expected);
    let (mut report, candidates) = tree::check(&tree_files.files, consumer, &keys);
    let dr = refs::cluster_client(&ctx.client, dr_ref).await?;
    if let Err(e) = verify::dry_run::run(&dr, &candidates, &mut report, &|| {}).await {
        report.problem(
            "(DR cluster)",
            Check::DryRun,
            format!("cannot reach the DR cluster: {e}"),
        );
    }
    Ok(Some(report))
}

/// Writes the condition (only the condition: the rest of status belongs to the sync) and
/// an Event when it flips.
async fn record(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    result: CheckResult,
) -> Result<(), ControllerError> {
    let prev = nm.status.clone().unwrap_or_default();
    let was = prev
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION)
        .map(|c| c.status.clone());
    let mut conditions = prev.conditions.clone();
    let (ready, reason, message) = match &result {
        CheckResult::Checked(report) => (
            report.ready(),
            match report.verdict() {
                Verdict::Ready => "DrWouldComeUp",
                Verdict::NotVerified => "NotVerified",
                Verdict::NotReady => "DrWouldNotComeUp",
            },
            report.headline(),
        ),
        CheckResult::NotRun(why) => (false, "CheckNotRun", format!("not checked: {why}")),
        CheckResult::NotApplicable => {
            conditions.retain(|c| c.type_ != CONDITION);
            (false, "", String::new())
        }
    };
    if !matches!(result, CheckResult::NotApplicable) {
        status::set_condition(
            &mut conditions,
            CONDITION,
            ready,
            reason,
            &message,
            nm.metadata.generation,
            Time(jiff::Timestamp::now()),
        );
    }
    if conditions != prev.conditions {
        // A deposed leader leaves status to the new one.
        let key = format!("{}/{}", nm.namespace().unwrap_or_default(), nm.name_any());
        if ctx.may_write(&key).await.is_err() {
            return Ok(());
        }
        let api: Api<NamespaceMapping> =
            Api::namespaced(ctx.client.clone(), &nm.namespace().unwrap_or_default());
        api.patch_status(
            &nm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await?;
    }
    if matches!(result, CheckResult::NotApplicable) {
        return Ok(());
    }
    let now = if ready { "True" } else { "False" };
    if was.as_deref() != Some(now) {
        let (warning, event) = if ready {
            (false, "DrReady")
        } else {
            (true, "DrNotReady")
        };
        ctx.publish(nm, warning, event, "Verify", message).await;
    }
    Ok(())
}
