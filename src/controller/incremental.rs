//! Continuous mode's fast path: a batch of changed objects becomes a patch on the last
//! commit (`export::patch`) — no relisting of the source, no re-reading or rewriting of the
//! other files. Whatever a patch cannot express falls back to a full sync.

use std::time::Instant;

use crate::api::NamespaceMapping;
use crate::export::patch::{self, PatchError};
use crate::export::secrets::SecretWriter;
use crate::export::{Policy, Summary};
use crate::gitops::{CommitInfo, GitError, Repo};

use super::context::Ctx;
use super::continuous::Incoming;
use super::sync::{self, Outcome, SyncError, SyncReport};

/// Why the fast path did not finish.
#[derive(Debug, thiserror::Error)]
pub enum IncrementalError {
    /// Only a full sync can do this batch justice (the reason is logged).
    #[error("full sync needed: {0}")]
    NeedsFull(String),
    /// The sync failed like a full sync would have.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

impl From<GitError> for IncrementalError {
    fn from(e: GitError) -> Self {
        IncrementalError::Sync(SyncError::Git(e))
    }
}

impl From<PatchError> for IncrementalError {
    fn from(e: PatchError) -> Self {
        match e {
            PatchError::NeedsFull(why) => IncrementalError::NeedsFull(why),
            PatchError::Sops(e) => IncrementalError::Sync(SyncError::Sops(e)),
            other => IncrementalError::Sync(SyncError::Config(other.to_string())),
        }
    }
}

/// Publishes one batch as a patch commit.
pub async fn run(
    ctx: &Ctx,
    nm: &NamespaceMapping,
    resolved: &crate::refs::Resolved,
    incoming: Incoming,
) -> Result<SyncReport, IncrementalError> {
    let start = Instant::now();
    let Incoming {
        batch,
        kubernetes_version,
    } = incoming;
    if let Some(why) = batch.full {
        return Err(IncrementalError::NeedsFull(why));
    }
    if nm
        .spec
        .destination
        .as_ref()
        .is_some_and(|d| d.cluster.is_some())
    {
        return Err(IncrementalError::NeedsFull(
            "the direct destination applies whole syncs".into(),
        ));
    }
    let policy = resolved
        .restrict(Policy::from_spec(&nm.spec))
        .map_err(|e| SyncError::Config(e.to_string()))?;
    let (target, recipients, consumer) = sync::git_setup(ctx, nm, resolved).await?;
    let source_cluster = resolved.refs(nm).source_name();
    let info = CommitInfo {
        mapping: nm.metadata.name.clone().unwrap_or_default(),
        source_cluster,
        kubernetes_version,
        replica: ctx.replica().to_string(),
    };
    let breaker = sync::breaker(nm);
    let key = ctx.fingerprint_key.clone();
    let mut summary = batch.summary;
    let secrets_kind = "secrets";
    if let Some(counts) = summary.kinds.get_mut(secrets_kind) {
        // Without recipients a changed Secret cannot be written: the full sync decides
        // whether that is allowed (it refuses when the repository holds encrypted Secrets).
        if recipients.is_empty() && counts.exported > 0 {
            return Err(IncrementalError::NeedsFull(
                "a Secret changed and no age recipients are configured".into(),
            ));
        }
        if recipients.is_empty() {
            counts.secrets_skipped = counts.exported;
            counts.exported = 0;
        } else {
            counts.secrets_encrypted = counts.exported;
        }
    }
    let changes = batch.changes;
    let hpa = batch.hpa;
    let published = tokio::task::spawn_blocking(move || -> Result<_, IncrementalError> {
        let repo = Repo::open(target)?;
        let Some(head) = repo.fetch()? else {
            return Err(IncrementalError::NeedsFull(
                "the branch has no commit yet".into(),
            ));
        };
        let empty = crate::export::Tree::default();
        let writer = SecretWriter {
            recipients,
            fingerprint_key: &key,
            previous: &empty,
        };
        let targets = |ns: &str| hpa.get(ns).cloned().unwrap_or_default();
        repo.publish_patch(head, &info, &breaker, |snapshot| {
            if snapshot
                .paths
                .contains_key(crate::export::promote::PROMOTED_FILE)
            {
                return Err(IncrementalError::Sync(SyncError::Config(
                    sync::PROMOTED_MESSAGE.into(),
                )));
            }
            // Counts of the patched objects are already in the batch's summary.
            let mut scratch = Summary::default();
            Ok::<_, IncrementalError>(patch::build(
                &changes,
                &policy,
                &targets,
                &writer,
                snapshot,
                consumer,
                &mut scratch,
            )?)
        })
    })
    .await
    .map_err(|e| SyncError::Config(format!("sync task failed: {e}")))??;
    Ok(SyncReport {
        summary,
        outcome: Outcome::Git(published),
        duration: start.elapsed(),
        patch: true,
    })
}
