//! A full sync into git, streamed: namespace after namespace, each type page by page as the
//! apiserver returns it. Every object is cleaned, rendered (a Secret encrypted) and written
//! into the cache repository's object database at once; only its path and blob id stay.
//! Memory follows a few pages plus one path per file, not the size of the export: a
//! full sync of 100 000 objects no longer holds 100 000 parsed objects, their rendered
//! files and the previous commit's files all at once.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use git2::Oid;
use kube::Client;
use tokio::task::JoinHandle;

use crate::export::promote::PROMOTED_FILE;
use crate::export::secrets::{self, SecretWriter};
use crate::export::source::live::{self, Plan};
use crate::export::{
    ExportedObject, NamespaceExport, Policy, ResourceType, SourceObject, Summary, Tree, builtin,
    crds, layout, output, render,
};
use crate::gitops::{Breaker, CommitInfo, Published, Repo, Target};
use crate::sops::Recipients;

use super::sync::{PROMOTED_MESSAGE, SyncError, is_encrypted_secret};

/// Objects handed to the object database together: large enough that a blocking task per
/// chunk costs nothing, small enough that a chunk is a few hundred KiB.
const CHUNK: usize = 256;

/// Where a streamed export goes.
pub struct Destination {
    /// The repository, branch and path.
    pub target: Target,
    /// Age recipients of the Secrets (none: Secrets are skipped).
    pub recipients: Recipients,
    /// Which GitOps tool reads the tree.
    pub consumer: layout::Consumer,
    /// HMAC key of the Secret fingerprints.
    pub fingerprint_key: Vec<u8>,
    /// Commit message parts.
    pub info: CommitInfo,
    /// The mass-deletion breaker.
    pub breaker: Breaker,
}

/// Exports what `plan` covers from `client` into `out`, listing `concurrency` types at a
/// time; returns what was published and the export's counts.
///
/// `known_empty(type, source namespace)` tells a type a shared watch has seen no object of
/// in that namespace (`Hubs::known_empty`). Such a type is not listed where the head
/// holds no file of it: nothing of it can be deleted, and an object the watch has not
/// reported yet is exported by the change that reports it. Where files of it are
/// committed it is always listed, so a lagging watch never deletes them.
pub async fn export(
    client: &Client,
    plan: Plan,
    policy: &Policy,
    concurrency: usize,
    known_empty: &(dyn Fn(&ResourceType, &str) -> bool + Sync),
    out: Destination,
) -> Result<(Published, Summary), SyncError> {
    let Destination {
        target,
        recipients,
        consumer,
        fingerprint_key,
        info,
        breaker,
    } = out;
    let encrypting = !recipients.is_empty();
    let staging =
        blocking(move || Staging::begin(target, recipients, fingerprint_key, consumer)).await?;
    let committed = committed_dirs(staging.previous.keys());
    let mut sink = Sink {
        idle: Some(staging),
        buffer: Vec::with_capacity(CHUNK),
        writing: None,
    };
    let mut summary = Summary {
        failures: plan.failures,
        ..Summary::default()
    };
    // Namespaced types outside the core group that were exported: their CRDs come along.
    let mut crd_types: BTreeSet<ResourceType> = BTreeSet::new();
    let (hpa_types, types): (Vec<_>, Vec<_>) = plan.types.into_iter().partition(builtin::is_hpa);
    for (name, object) in plan.namespaces {
        let Some((mut ns, namespace)) =
            NamespaceExport::begin(&name, Some(&object), policy, &plan.registry, &mut summary)
        else {
            continue;
        };
        sink.push(namespace).await?;
        // HPAs first (few and small): the workloads they scale keep their replicas.
        let mut hpas: Vec<SourceObject> = Vec::new();
        let listed = to_list(&hpa_types, &name, &ns.dest, &committed, known_empty);
        let mut pages = live::pages(client.clone(), name.clone(), listed, 1);
        while let Some(page) = pages.next().await {
            match page {
                Ok(mut objects) => hpas.append(&mut objects),
                Err(failure) => summary.failures.push(failure),
            }
        }
        ns.hpa = builtin::hpa_targets(hpas.iter().map(|o| (&o.rt, &o.value)));
        let listed = to_list(&types, &name, &ns.dest, &committed, known_empty);
        let mut pages = live::pages(client.clone(), name.clone(), listed, concurrency);
        let mut page = Ok(hpas);
        loop {
            match page {
                Ok(objects) => {
                    for obj in objects {
                        let Some(exported) = ns.object(obj, policy, &mut summary) else {
                            continue;
                        };
                        if !exported.rt.group.is_empty() {
                            crd_types.insert(exported.rt.clone());
                        }
                        if exported.is_secret() {
                            let counts = summary.kind(&exported.rt.qualified());
                            if !encrypting {
                                counts.secrets_skipped += 1;
                                counts.exported -= 1;
                                continue;
                            }
                            counts.secrets_encrypted += 1;
                        }
                        sink.push(exported).await?;
                    }
                }
                Err(failure) => summary.failures.push(failure),
            }
            match pages.next().await {
                Some(next) => page = next,
                None => break,
            }
        }
    }
    let (available, failures) =
        live::get_crds(client, crds::candidate_names(&crd_types, policy)).await;
    summary.failures.extend(failures);
    for crd in crds::needed_for(&crd_types, &available, policy, &mut summary) {
        sink.push(crd).await?;
    }
    let staging = sink.finish().await?;
    blocking(move || {
        let published = staging.publish(&summary, &info, &breaker)?;
        Ok((published, summary))
    })
    .await
}

/// The `(namespace directory, group directory, plural)` of every object file in `paths`.
fn committed_dirs<'a>(
    paths: impl Iterator<Item = &'a String>,
) -> BTreeSet<(String, String, String)> {
    paths
        .filter(|p| !layout::is_generated(p))
        .filter_map(|p| layout::path_kind(p))
        .map(|(top, group, plural)| (top.to_string(), group.to_string(), plural.to_string()))
        .collect()
}

/// The types of `types` to list in source namespace `source` (exported as `dest`): all
/// but those `known_empty` there with no file committed under `dest`.
fn to_list(
    types: &[ResourceType],
    source: &str,
    dest: &str,
    committed: &BTreeSet<(String, String, String)>,
    known_empty: &(dyn Fn(&ResourceType, &str) -> bool + Sync),
) -> Vec<ResourceType> {
    types
        .iter()
        .filter(|rt| {
            let dir = (
                dest.to_string(),
                rt.group_dir().to_string(),
                rt.plural.clone(),
            );
            committed.contains(&dir) || !known_empty(rt, source)
        })
        .cloned()
        .collect()
}

/// Runs `f` on the blocking pool (git2 blocks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Config(format!("sync task failed: {e}")))?
}

/// Collects exported objects into chunks and writes each on the blocking pool while the
/// next one is read: at most one chunk is being written and one filled. The staging area
/// moves into the write and comes back with its result.
struct Sink {
    /// The staging area while no chunk is being written.
    idle: Option<Staging>,
    buffer: Vec<ExportedObject>,
    writing: Option<JoinHandle<Result<Staging, SyncError>>>,
}

impl Sink {
    async fn push(&mut self, obj: ExportedObject) -> Result<(), SyncError> {
        self.buffer.push(obj);
        if self.buffer.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SyncError> {
        let mut staging = self.wait().await?;
        if self.buffer.is_empty() {
            self.idle = Some(staging);
            return Ok(());
        }
        let objects = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.writing = Some(tokio::task::spawn_blocking(move || {
            staging.add(objects)?;
            Ok(staging)
        }));
        Ok(())
    }

    /// Waits for the chunk being written, if any, and takes the staging area.
    async fn wait(&mut self) -> Result<Staging, SyncError> {
        if let Some(task) = self.writing.take() {
            let staging = task
                .await
                .map_err(|e| SyncError::Config(format!("sync task failed: {e}")))??;
            return Ok(staging);
        }
        self.idle
            .take()
            .ok_or_else(|| SyncError::Config("an earlier chunk's write failed".into()))
    }

    /// Writes what is left and hands back the staging area.
    async fn finish(mut self) -> Result<Staging, SyncError> {
        self.flush().await?;
        self.wait().await
    }
}

/// The repository side of a streamed export: the files written so far, by blob id.
struct Staging {
    repo: Repo,
    /// The remote head the export was started on.
    head: Option<Oid>,
    /// The files at our path in `head`, by blob id.
    previous: BTreeMap<String, Oid>,
    /// The Secret fingerprints stored in `head` (none when unreadable or of another format).
    old_fingerprints: BTreeMap<String, String>,
    recipients: Recipients,
    fingerprint_key: Vec<u8>,
    consumer: layout::Consumer,
    /// Written so far: path → blob id.
    files: BTreeMap<String, Oid>,
    /// Fingerprints of the Secrets written so far, by path.
    fingerprints: BTreeMap<String, String>,
}

impl Staging {
    /// Fetches the branch and checks that an export may replace what it holds.
    fn begin(
        target: Target,
        recipients: Recipients,
        fingerprint_key: Vec<u8>,
        consumer: layout::Consumer,
    ) -> Result<Self, SyncError> {
        let repo = Repo::open(target)?;
        let head = repo.fetch()?;
        let previous = repo.ids_at(head)?;
        if previous.contains_key(PROMOTED_FILE) {
            return Err(SyncError::Config(PROMOTED_MESSAGE.into()));
        }
        if recipients.is_empty()
            && let Some(path) = previous.keys().find(|p| is_encrypted_secret(p))
        {
            return Err(SyncError::Config(format!(
                "no age recipients are configured, but the repository holds encrypted Secrets (e.g. {path}); refusing to sync, which would delete them: set spec.secrets (or the ClusterMapping's defaults.secrets)"
            )));
        }
        let old_fingerprints = match previous.get(secrets::STATE_FILE) {
            Some(id) => secrets::parse_state(&repo.read_blob(*id)?).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        Ok(Staging {
            repo,
            head,
            previous,
            old_fingerprints,
            recipients,
            fingerprint_key,
            consumer,
            files: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        })
    }

    /// Renders (a Secret: encrypts, unless its committed file still verifies) and writes
    /// `objects`.
    fn add(&mut self, objects: Vec<ExportedObject>) -> Result<(), SyncError> {
        let no_previous = Tree::default();
        let writer = SecretWriter {
            recipients: self.recipients.clone(),
            fingerprint_key: &self.fingerprint_key,
            previous: &no_previous,
        };
        for obj in objects {
            let path = layout::object_path(&obj.rt, obj.namespace.as_deref(), &obj.name);
            let id = if obj.is_secret() {
                let committed = self.previous.get(&path).copied();
                let stored = self.old_fingerprints.get(&path).map(String::as_str);
                let (fingerprint, content) = writer.encrypt_one(&obj, &path, stored, committed)?;
                self.fingerprints.insert(path.clone(), fingerprint);
                match (content, committed) {
                    (Some(bytes), _) => self.repo.write_blob(&bytes)?,
                    (None, Some(kept)) => kept,
                    (None, None) => {
                        return Err(SyncError::Config(format!(
                            "{path}: a Secret was kept that was never committed"
                        )));
                    }
                }
            } else {
                let rendered = render::render(&obj.value).map_err(crate::sops::SopsError::from)?;
                self.repo.write_blob(rendered.as_bytes())?
            };
            self.files.insert(path, id);
        }
        Ok(())
    }

    /// Adds the settings files, the files of types whose listing failed (kept from the
    /// head: a failed listing never deletes) and the kustomizations, then commits and
    /// pushes.
    fn publish(
        mut self,
        summary: &Summary,
        info: &CommitInfo,
        breaker: &Breaker,
    ) -> Result<Published, SyncError> {
        let no_previous = Tree::default();
        let writer = SecretWriter {
            recipients: self.recipients.clone(),
            fingerprint_key: &self.fingerprint_key,
            previous: &no_previous,
        };
        if !summary.failures.is_empty() {
            for (path, id) in &self.previous {
                let failed = layout::path_kind(path).is_some_and(|(top, group, plural)| {
                    output::of_failed_type(top, group, plural, summary)
                });
                if failed && !layout::is_generated(path) && !self.files.contains_key(path) {
                    self.files.insert(path.clone(), *id);
                    // A kept Secret keeps its fingerprint: the next complete sync can then
                    // reuse the file instead of re-encrypting it.
                    if let Some(fingerprint) = self.old_fingerprints.get(path) {
                        self.fingerprints.insert(path.clone(), fingerprint.clone());
                    }
                }
            }
        }
        for (path, content) in writer.settings_files(&self.fingerprints)? {
            let id = self.repo.write_blob(&content)?;
            self.files.insert(path, id);
        }
        let generated =
            layout::kustomizations(self.files.keys().map(String::as_str), self.consumer);
        for (path, content) in generated {
            let id = self.repo.write_blob(&content)?;
            self.files.insert(path, id);
        }
        Ok(self
            .repo
            .publish_ids(self.head, &self.files, info, breaker)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(group: &str, kind: &str, plural: &str) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            short_names: Vec::new(),
            namespaced: true,
        }
    }

    #[test]
    fn to_list_skips_only_types_known_empty_with_nothing_committed() {
        let types = [
            rt("", "ConfigMap", "configmaps"),
            rt("apps", "Deployment", "deployments"),
            rt("batch", "CronJob", "cronjobs"),
            rt("", "Secret", "secrets"),
        ];
        let committed = committed_dirs(
            [
                "shop-dr/apps/deployments/web.yaml".to_string(),
                "shop-dr/core/secrets/db.sops.yaml".to_string(),
                // Another namespace's cron jobs say nothing about this one.
                "other/batch/cronjobs/nightly.yaml".to_string(),
                "shop-dr/kustomization.yaml".to_string(),
            ]
            .iter(),
        );
        // (watch knows these empty in "shop", listed types)
        let cases: [(&[&str], &[&str]); 3] = [
            (&[], &["configmaps", "deployments", "cronjobs", "secrets"]),
            (
                &["configmaps", "deployments", "cronjobs", "secrets"],
                // Committed files are listed however empty the watch believes the type.
                &["deployments", "secrets"],
            ),
            (&["cronjobs"], &["configmaps", "deployments", "secrets"]),
        ];
        for (empty, want) in cases {
            let known_empty =
                |rt: &ResourceType, ns: &str| ns == "shop" && empty.contains(&rt.plural.as_str());
            let listed: Vec<String> = to_list(&types, "shop", "shop-dr", &committed, &known_empty)
                .into_iter()
                .map(|rt| rt.plural)
                .collect();
            assert_eq!(listed, want, "known empty: {empty:?}");
        }
    }
}
