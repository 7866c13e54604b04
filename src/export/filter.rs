//! Object-level filtering: what is never exported even when its type is.

use kube::core::SelectorExt;
use serde_json::Value;

use crate::api::keys;

use super::object::SourceObject;
use super::policy::Policy;
use super::value::{self, get, str_at};

/// Why an object is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exclusion {
    /// Labelled `dr-syncer.io/ignore: "true"`.
    IgnoreLabel,
    /// Has a controller owner that recreates it (ReplicaSets of Deployments, their Pods,
    /// Jobs of CronJobs, ...).
    ControllerOwned,
    /// Named in `excludeNames`.
    ExcludedName,
    /// Matches `excludeSelector`.
    ExcludedSelector,
    /// Created by the cluster itself in every namespace (`kube-root-ca.crt`, the `default`
    /// ServiceAccount).
    ClusterGenerated,
    /// A ServiceAccount token Secret (the DR cluster issues its own).
    ServiceAccountToken,
    /// A Helm release Secret (policy `secrets.includeHelmReleases`).
    HelmRelease,
    /// A finished Job or Pod: re-applying it would run it again.
    Finished,
}

impl Exclusion {
    /// Short reason for summaries.
    pub fn reason(self) -> &'static str {
        match self {
            Exclusion::IgnoreLabel => "dr-syncer.io/ignore label",
            Exclusion::ControllerOwned => "owned by a controller",
            Exclusion::ExcludedName => "excludeNames",
            Exclusion::ExcludedSelector => "excludeSelector",
            Exclusion::ClusterGenerated => "created by the cluster",
            Exclusion::ServiceAccountToken => "service-account token",
            Exclusion::HelmRelease => "Helm release secret",
            Exclusion::Finished => "finished Job/Pod",
        }
    }
}

/// Whether a labels map carries `dr-syncer.io/ignore: "true"`.
pub fn has_ignore_label(obj: &Value) -> bool {
    str_at(obj, &["metadata", "labels", keys::IGNORE]) == Some("true")
}

/// The reason `obj` is not exported, or `None` to export it.
pub fn exclusion(obj: &SourceObject, policy: &Policy) -> Option<Exclusion> {
    let v = &obj.value;
    let name = obj.name();
    let (group, kind) = (obj.rt.group.as_str(), obj.rt.kind.as_str());
    if has_ignore_label(v) {
        return Some(Exclusion::IgnoreLabel);
    }
    let controller_owned = get(v, &["metadata", "ownerReferences"])
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        });
    if controller_owned {
        return Some(Exclusion::ControllerOwned);
    }
    match (group, kind) {
        ("", "ConfigMap") if name == "kube-root-ca.crt" => {
            return Some(Exclusion::ClusterGenerated);
        }
        ("", "ServiceAccount") if name == "default" => return Some(Exclusion::ClusterGenerated),
        ("", "Secret") => match str_at(v, &["type"]) {
            Some("kubernetes.io/service-account-token") => {
                return Some(Exclusion::ServiceAccountToken);
            }
            Some("helm.sh/release.v1") if !policy.include_helm_releases => {
                return Some(Exclusion::HelmRelease);
            }
            _ => {}
        },
        ("batch", "Job") if job_finished(v) => return Some(Exclusion::Finished),
        ("", "Pod")
            if matches!(
                str_at(v, &["status", "phase"]),
                Some("Succeeded" | "Failed")
            ) =>
        {
            return Some(Exclusion::Finished);
        }
        _ => {}
    }
    let name_excluded = policy.exclude_names.iter().any(|rule| {
        rule.name == name && rule.resource.as_deref().is_none_or(|r| obj.rt.matches(r))
    });
    if name_excluded {
        return Some(Exclusion::ExcludedName);
    }
    if let Some(sel) = &policy.exclude_selector
        && sel.matches(&value::labels(v))
    {
        return Some(Exclusion::ExcludedSelector);
    }
    None
}

fn job_finished(job: &Value) -> bool {
    get(job, &["status", "conditions"])
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                matches!(
                    c.get("type").and_then(Value::as_str),
                    Some("Complete" | "Failed")
                ) && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}
