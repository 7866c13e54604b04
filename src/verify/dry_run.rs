//! The server-side dry-run: every object is applied with `dryRun=All` against the DR
//! cluster, which runs the real schema validation and admission without storing anything.
//! What the tree itself supplies first (a CRD or a Namespace in `_cluster/`) but the DR
//! cluster lacks yet is deferred rather than rejected: Flux and Argo CD apply `_cluster/`
//! before the namespaces.

use std::collections::BTreeSet;

use futures::{StreamExt, stream};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};

use super::tree::Candidate;
use super::{Check, Report};
use crate::export::value::str_at;

/// Field manager of the dry-run (nothing is stored under it).
const FIELD_MANAGER: &str = "dr-syncer-verify";

/// What the tree brings along for the objects that need it.
struct Supplied {
    /// Namespaces created by `_cluster/`.
    namespaces: BTreeSet<String>,
    /// `(group, served version, kind)` defined by CRDs in `_cluster/`.
    kinds: BTreeSet<(String, String, String)>,
}

fn supplied(candidates: &[Candidate]) -> Supplied {
    let mut s = Supplied {
        namespaces: BTreeSet::new(),
        kinds: BTreeSet::new(),
    };
    for c in candidates {
        match str_at(&c.object, &["kind"]) {
            Some("Namespace") => {
                if let Some(n) = str_at(&c.object, &["metadata", "name"]) {
                    s.namespaces.insert(n.to_string());
                }
            }
            Some("CustomResourceDefinition") => {
                if let (Some(g), Some(k), Some(versions)) = (
                    str_at(&c.object, &["spec", "group"]),
                    str_at(&c.object, &["spec", "names", "kind"]),
                    c.object["spec"]["versions"].as_array(),
                ) {
                    for v in versions.iter().filter(|v| v["served"] == true) {
                        if let Some(name) = v["name"].as_str() {
                            s.kinds
                                .insert((g.to_string(), name.to_string(), k.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Dry-runs `candidates` against `client`'s cluster and records what it rejects in
/// `report`; `progress` is called once per object checked. An error reaching the
/// apiserver at all is returned (nothing could be told).
pub async fn run(
    client: &Client,
    candidates: &[Candidate],
    report: &mut Report,
    progress: &(dyn Fn() + Sync),
) -> Result<(), kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let supplied = supplied(candidates);
    // Owned items: a stream over borrowed ones is not `Send` for every lifetime, which a
    // spawned task needs.
    let (discovery, supplied) = (&discovery, &supplied);
    let results: Vec<(String, Result<(), Verdict>)> = stream::iter(candidates.to_vec())
        .map(|c| async move {
            let r = one(client, discovery, supplied, &c).await;
            progress();
            (c.path, r)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    report.dry_run = true;
    for (path, r) in results {
        match r {
            Ok(()) => report.dry_run_accepted += 1,
            Err(Verdict::Deferred(why)) => report.defer(&path, Check::DryRun, why),
            Err(Verdict::Rejected(why)) => report.problem(&path, Check::DryRun, why),
        }
    }
    report.sort();
    Ok(())
}

enum Verdict {
    Deferred(String),
    Rejected(String),
}

async fn one(
    client: &Client,
    discovery: &Discovery,
    supplied: &Supplied,
    c: &Candidate,
) -> Result<(), Verdict> {
    let api_version = str_at(&c.object, &["apiVersion"]).unwrap_or_default();
    let kind = str_at(&c.object, &["kind"]).unwrap_or_default();
    let name = str_at(&c.object, &["metadata", "name"]).unwrap_or_default();
    let namespace = str_at(&c.object, &["metadata", "namespace"]);
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let Some((ar, caps)) = discovery.resolve_gvk(&gvk) else {
        if supplied
            .kinds
            .contains(&(group.to_string(), version.to_string(), kind.to_string()))
        {
            return Err(Verdict::Deferred(format!(
                "the DR cluster does not serve {kind} yet; its CRD comes with this tree (_cluster/), so it is checked once that is applied"
            )));
        }
        let served: Vec<String> = discovery
            .groups()
            .filter(|g| g.name() == group)
            .flat_map(|g| g.versions().map(str::to_string).collect::<Vec<_>>())
            .filter(|v| {
                discovery
                    .resolve_gvk(&GroupVersionKind::gvk(group, v, kind))
                    .is_some()
            })
            .collect();
        return Err(Verdict::Rejected(if served.is_empty() {
            format!(
                "the DR cluster serves no {kind} in API group {:?} and no CRD in this tree defines it",
                group
            )
        } else {
            format!(
                "the DR cluster no longer serves {api_version} {kind}; it serves version(s) {}",
                served.join(", ")
            )
        }));
    };
    let api: Api<DynamicObject> = match (caps.scope, namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => {
            return Err(Verdict::Rejected(format!(
                "{kind} is namespaced on the DR cluster but the object has no metadata.namespace"
            )));
        }
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    };
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    match api.patch(name, &params, &Patch::Apply(&c.object)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s))
            if s.code == 404
                && namespace.is_some_and(|ns| {
                    missing_namespace(&s.message, ns) && supplied.namespaces.contains(ns)
                }) =>
        {
            Err(Verdict::Deferred(format!(
                "namespace {} does not exist on the DR cluster yet; this tree creates it (_cluster/)",
                namespace.unwrap_or_default()
            )))
        }
        Err(kube::Error::Api(s))
            if s.code == 404 && namespace.is_some_and(|ns| missing_namespace(&s.message, ns)) =>
        {
            Err(Verdict::Rejected(format!(
                "namespace {} does not exist on the DR cluster and this tree does not create it",
                namespace.unwrap_or_default()
            )))
        }
        Err(kube::Error::Api(s)) => Err(Verdict::Rejected(format!(
            "rejected by the DR apiserver ({} {}): {}",
            s.code, s.reason, s.message
        ))),
        // Fail closed: what could not be asked is not known to apply.
        Err(e) => Err(Verdict::Rejected(format!("cannot check: {e}"))),
    }
}

/// Whether the apiserver's NotFound is about the object's namespace (`namespaces "x" not
/// found`), not the object.
fn missing_namespace(message: &str, ns: &str) -> bool {
    message.contains(&format!("namespaces \"{ns}\" not found"))
}
