//! The DR transforms every export gets: namespace remap (including references), scale to
//! zero with the original recorded, suspended CronJobs and Jobs, PVC storage-class and
//! access-mode mappings, image-registry and Ingress-host mappings. Each returns whether it
//! changed the object.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::api::{StringMapping, keys};

use super::policy::Policy;
use super::resource::ResourceType;
use super::value::{self, get, get_mut, str_at};

/// Annotation recording a CronJob's or Job's `suspend` before the export suspended it.
pub const ORIGINAL_SUSPEND: &str = "dr-syncer.io/original-suspend";

/// Workloads an HPA scales, as `(group, kind, name)`.
pub type HpaTargets = BTreeSet<(String, String, String)>;

/// Collects the targets of every HorizontalPodAutoscaler among `objects`.
pub fn hpa_targets<'a>(objects: impl Iterator<Item = (&'a ResourceType, &'a Value)>) -> HpaTargets {
    objects
        .filter(|(rt, _)| is_hpa(rt))
        .filter_map(|(_, hpa)| hpa_target(hpa))
        .collect()
}

/// Whether `rt` is the HorizontalPodAutoscaler type (its targets keep their replicas).
pub fn is_hpa(rt: &ResourceType) -> bool {
    rt.group == "autoscaling" && rt.kind == "HorizontalPodAutoscaler"
}

/// The workload one HorizontalPodAutoscaler scales, as `(group, kind, name)`.
pub fn hpa_target(hpa: &Value) -> Option<(String, String, String)> {
    let target = get(hpa, &["spec", "scaleTargetRef"])?;
    let api_version = target
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("apps/v1");
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    Some((
        group.to_string(),
        target.get("kind")?.as_str()?.to_string(),
        target.get("name")?.as_str()?.to_string(),
    ))
}

/// Runs every built-in transform.
pub fn apply(
    obj: &mut Value,
    rt: &ResourceType,
    source_ns: &str,
    dest_ns: &str,
    policy: &Policy,
    hpa: &HpaTargets,
) -> bool {
    let mut changed = remap_namespace(obj, rt, source_ns, dest_ns);
    changed |= scale(obj, rt, policy.scale_to_zero, hpa);
    changed |= pvc_mappings(obj, rt, policy);
    changed |= map_images(obj, &policy.image_mappings);
    if rt.group == "networking.k8s.io" && rt.kind == "Ingress" {
        changed |= map_ingress_hosts(obj, &policy.ingress_host_mappings);
    }
    changed
}

/// Moves the object to `dest` and rewrites references to the source namespace: RoleBinding
/// subjects and NetworkPolicy peers selecting the namespace by its name label.
fn remap_namespace(obj: &mut Value, rt: &ResourceType, source: &str, dest: &str) -> bool {
    if rt.namespaced {
        value::ensure_map(obj, &["metadata"]).insert("namespace".into(), json!(dest));
    }
    if source == dest {
        return false;
    }
    let mut changed = false;
    let mut swap = |v: Option<&mut Value>| {
        if let Some(v) = v
            && v.as_str() == Some(source)
        {
            *v = json!(dest);
            changed = true;
        }
    };
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            for s in get_mut(obj, &["subjects"])
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                swap(s.get_mut("namespace"));
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
                for rule in get_mut(obj, &["spec", rules])
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    for peer in rule
                        .get_mut(peers)
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        swap(get_mut(
                            peer,
                            &[
                                "namespaceSelector",
                                "matchLabels",
                                "kubernetes.io/metadata.name",
                            ],
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    changed || rt.namespaced
}

/// Scale-to-zero: records the replica count, then sets the DR count (0, or the
/// `dr-syncer.io/scale-override` label/annotation when it is a number; any other value
/// keeps the source's count). With an HPA the workload still goes to 0, which also
/// disables the HPA until failover restores the count; without scale-to-zero the HPA owns
/// `replicas` and the field is dropped.
/// The standby form of a workload (what an export with `scaleToZero` writes): replicas
/// at zero (or the scale override) with the original recorded, CronJobs/Jobs suspended.
pub fn standby(obj: &mut Value, rt: &ResourceType) -> bool {
    scale(obj, rt, true, &HpaTargets::new())
}

fn scale(obj: &mut Value, rt: &ResourceType, scale_to_zero: bool, hpa: &HpaTargets) -> bool {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment" | "StatefulSet" | "ReplicaSet") => {}
        ("batch", "CronJob" | "Job") => return scale_to_zero && suspend(obj),
        _ => return false,
    }
    let name = str_at(obj, &["metadata", "name"]).unwrap_or("").to_string();
    let targeted = hpa.contains(&(rt.group.clone(), rt.kind.clone(), name));
    if !scale_to_zero {
        return targeted && value::remove(obj, &["spec", "replicas"]).is_some();
    }
    let original = get(obj, &["spec", "replicas"])
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let over = str_at(obj, &["metadata", "labels", keys::SCALE_OVERRIDE])
        .or_else(|| str_at(obj, &["metadata", "annotations", keys::SCALE_OVERRIDE]))
        .map(|s| s.trim().parse::<i64>().ok());
    let replicas = match over {
        Some(Some(n)) if n >= 0 => n,
        Some(_) => original,
        None => 0,
    };
    value::set_annotation(obj, keys::ORIGINAL_REPLICAS, original.to_string());
    value::ensure_map(obj, &["spec"]).insert("replicas".into(), json!(replicas));
    true
}

fn suspend(obj: &mut Value) -> bool {
    let original = get(obj, &["spec", "suspend"])
        .and_then(Value::as_bool)
        .unwrap_or(false);
    value::set_annotation(obj, ORIGINAL_SUSPEND, original.to_string());
    value::ensure_map(obj, &["spec"]).insert("suspend".into(), json!(true));
    true
}

fn pvc_mappings(obj: &mut Value, rt: &ResourceType, policy: &Policy) -> bool {
    let mut changed = false;
    let mut map_claim_spec = |spec: &mut Value| {
        if let Some(sc) = spec.get_mut("storageClassName")
            && let Some(m) = policy
                .pvc
                .storage_class_mappings
                .iter()
                .find(|m| sc.as_str() == Some(m.from.as_str()))
        {
            *sc = json!(m.to);
            changed = true;
        }
        for mode in spec
            .get_mut("accessModes")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let from = serde_json::from_value(mode.clone()).ok();
            if let Some(m) = policy
                .pvc
                .access_mode_mappings
                .iter()
                .find(|m| Some(m.from) == from)
            {
                *mode = serde_json::to_value(m.to).expect("enum serializes");
                changed = true;
            }
        }
    };
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = get_mut(obj, &["spec"]) {
                map_claim_spec(spec);
            }
        }
        ("apps", "StatefulSet") => {
            for t in get_mut(obj, &["spec", "volumeClaimTemplates"])
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(spec) = t.get_mut("spec") {
                    map_claim_spec(spec);
                }
            }
        }
        _ => {}
    }
    changed
}

fn map_images(obj: &mut Value, mappings: &[StringMapping]) -> bool {
    if mappings.is_empty() {
        return false;
    }
    let mut changed = false;
    value::for_each_pod_spec(obj, |spec| {
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let Some(image) = c.get("image").and_then(Value::as_str) else {
                    continue;
                };
                if let Some(m) = mappings.iter().find(|m| image.starts_with(&m.from)) {
                    let mapped = format!("{}{}", m.to, &image[m.from.len()..]);
                    c["image"] = json!(mapped);
                    changed = true;
                }
            }
        }
    });
    changed
}

/// Maps one host: exact match, or `*.suffix` → `*.other` keeping the label in front.
fn map_host(host: &str, mappings: &[StringMapping]) -> Option<String> {
    mappings.iter().find_map(|m| {
        if m.from == host {
            return Some(m.to.clone());
        }
        let from_suffix = m.from.strip_prefix('*')?;
        let to_suffix = m.to.strip_prefix('*')?;
        let label = host.strip_suffix(from_suffix)?;
        (!label.is_empty()).then(|| format!("{label}{to_suffix}"))
    })
}

fn map_ingress_hosts(obj: &mut Value, mappings: &[StringMapping]) -> bool {
    if mappings.is_empty() {
        return false;
    }
    let mut changed = false;
    let mut swap = |h: &mut Value| {
        if let Some(new) = h.as_str().and_then(|s| map_host(s, mappings)) {
            *h = json!(new);
            changed = true;
        }
    };
    for rule in get_mut(obj, &["spec", "rules"])
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(h) = rule.get_mut("host") {
            swap(h);
        }
    }
    for tls in get_mut(obj, &["spec", "tls"])
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for h in tls
            .get_mut("hosts")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            swap(h);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_host_table() {
        let m = vec![
            StringMapping {
                from: "shop.example.com".into(),
                to: "shop.dr.example.com".into(),
            },
            StringMapping {
                from: "*.apps.example.com".into(),
                to: "*.apps.dr.example.com".into(),
            },
        ];
        let cases = [
            ("shop.example.com", Some("shop.dr.example.com")),
            ("api.apps.example.com", Some("api.apps.dr.example.com")),
            (".apps.example.com", None),
            ("other.example.com", None),
        ];
        for (host, expected) in cases {
            assert_eq!(map_host(host, &m).as_deref(), expected, "{host}");
        }
    }
}
