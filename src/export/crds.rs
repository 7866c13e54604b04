//! The CustomResourceDefinitions the DR cluster needs. A custom resource cannot be applied
//! where its CRD is missing, and Flux applies a Kustomization all or nothing: one Coupon
//! without its CRD keeps the whole namespace off the DR cluster. So, as Velero backs up the
//! CRDs of the custom resources it backs up, every exported custom resource brings its CRD
//! into `_cluster/` (applied before the namespaces, never pruned), cleaned of status and
//! server fields.
//!
//! A CRD that converts versions through a webhook is exported too, but the webhook's
//! Service is a workload of its own: the summary says whether this export carries it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::object::ExportedObject;
use super::policy::Policy;
use super::resource::ResourceType;
use super::summary::Summary;
use super::value::str_at;

/// API group of CustomResourceDefinitions.
pub const GROUP: &str = "apiextensions.k8s.io";

/// The CustomResourceDefinition type (cluster-scoped, `apiextensions.k8s.io/v1`).
pub fn crd_type() -> ResourceType {
    ResourceType {
        group: GROUP.into(),
        version: "v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
        singular: "customresourcedefinition".into(),
        short_names: vec!["crd".into(), "crds".into()],
        namespaced: false,
    }
}

/// `plural.group`, the qualified name of the type; the apiserver requires a CRD to be named
/// exactly this, which is also the name of its file under `_cluster/`.
pub fn crd_name(rt: &ResourceType) -> String {
    format!("{}.{}", rt.plural, rt.group)
}

/// The path of the CRD file for `rt` (relative to the mapping's root).
pub fn crd_path(rt: &ResourceType) -> String {
    super::layout::object_path(&crd_type(), None, &crd_name(rt))
}

/// Source CRDs by name (`plural.group`), as listed from the source cluster or read from
/// the input files.
pub type Available = BTreeMap<String, Value>;

/// Indexes CRD objects by `metadata.name`; objects without a name are skipped.
pub fn index(crds: impl IntoIterator<Item = Value>) -> Available {
    crds.into_iter()
        .filter_map(|c| Some((str_at(&c, &["metadata", "name"])?.to_string(), c)))
        .collect()
}

/// The CRD names (`plural.group`) that could define the types of `objects`: every type
/// in a group with a dot (the apiserver refuses a CRD whose group has none, so `apps`,
/// `batch`, `policy` and `autoscaling` are never CRDs). Which of them are CRDs only the
/// source cluster can tell.
pub fn candidates(
    objects: &[ExportedObject],
    policy: &Policy,
) -> std::collections::BTreeSet<String> {
    candidate_names(
        objects
            .iter()
            .filter(|o| o.namespace.is_some())
            .map(|o| &o.rt),
        policy,
    )
}

/// [`candidates`] from the types of the exported namespaced objects (a streamed export
/// keeps the types, not the objects).
pub fn candidate_names<'a>(
    types: impl IntoIterator<Item = &'a ResourceType>,
    policy: &Policy,
) -> std::collections::BTreeSet<String> {
    if !policy.export_crds {
        return Default::default();
    }
    types
        .into_iter()
        .filter(|rt| rt.group.contains('.'))
        .map(crd_name)
        .collect()
}

/// The CRDs `objects` need, cleaned and ready to write, sorted by name. Types without a
/// CRD in `available` (built-in or aggregated APIs) need none. Nothing when the policy
/// leaves CRDs to the DR platform. Conversion webhooks are reported in `summary`.
pub fn needed(
    objects: &[ExportedObject],
    available: &Available,
    policy: &Policy,
    summary: &mut Summary,
) -> Vec<ExportedObject> {
    needed_for(objects.iter().map(|o| &o.rt), available, policy, summary)
}

/// [`needed`] from the types of the exported objects.
pub fn needed_for<'a>(
    types: impl IntoIterator<Item = &'a ResourceType>,
    available: &Available,
    policy: &Policy,
    summary: &mut Summary,
) -> Vec<ExportedObject> {
    if !policy.export_crds {
        return Vec::new();
    }
    let mut wanted: BTreeMap<String, &Value> = BTreeMap::new();
    for rt in types.into_iter().filter(|rt| !rt.group.is_empty()) {
        let name = crd_name(rt);
        if let Some(crd) = available.get(&name) {
            wanted.insert(name, crd);
        }
    }
    let rt = crd_type();
    let mut out = Vec::new();
    for (name, crd) in wanted {
        if let Some(warning) = conversion_webhook(crd, &name, summary) {
            summary.warnings.push(warning);
        }
        let mut value = crd.clone();
        super::clean::clean(&mut value, &rt, &Policy::default());
        summary.kind(&rt.qualified()).exported += 1;
        out.push(ExportedObject {
            rt: rt.clone(),
            namespace: None,
            name,
            value,
        });
    }
    out
}

/// What a DR operator must know about a CRD converting through a webhook: the Service
/// must run on the DR cluster before the API serves the CRD's objects in another version.
fn conversion_webhook(crd: &Value, name: &str, summary: &Summary) -> Option<String> {
    if str_at(crd, &["spec", "conversion", "strategy"]) != Some("Webhook") {
        return None;
    }
    let client = &crd["spec"]["conversion"]["webhook"]["clientConfig"];
    let (Some(ns), Some(svc)) = (
        str_at(client, &["service", "namespace"]),
        str_at(client, &["service", "name"]),
    ) else {
        let url = str_at(client, &["url"]).unwrap_or("(none)");
        return Some(format!(
            "CustomResourceDefinition {name} converts versions through the webhook at {url}: the DR cluster must reach it"
        ));
    };
    let carried = match summary.namespaces.get(ns) {
        Some(dest) if dest == ns => "this export carries that namespace".to_string(),
        Some(dest) => format!(
            "this export writes that namespace as {dest}, so the CRD's reference will not resolve on the DR cluster"
        ),
        None => "that namespace is not part of this export".to_string(),
    };
    Some(format!(
        "CustomResourceDefinition {name} converts versions through the webhook Service {ns}/{svc}: it must run on the DR cluster (with a certificate matching the CRD's caBundle) before objects of {name} are served; {carried}"
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::export::Registry;

    fn coupon_crd(conversion: Value) -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "coupons.shop.example.com", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"group": "shop.example.com", "scope": "Namespaced",
                "names": {"kind": "Coupon", "plural": "coupons"},
                "conversion": conversion,
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]},
            "status": {"storedVersions": ["v1"], "conditions": [{"type": "Established"}]}})
    }

    fn exported(rt: ResourceType, name: &str) -> ExportedObject {
        ExportedObject {
            rt,
            namespace: Some("shop".into()),
            name: name.into(),
            value: json!({}),
        }
    }

    fn coupon_type() -> ResourceType {
        let mut reg = Registry::builtin();
        reg.add_crd(&coupon_crd(json!({"strategy": "None"})))
            .unwrap()
    }

    #[test]
    fn needed_exports_the_crd_of_each_custom_type_once_cleaned() {
        let available = index([coupon_crd(json!({"strategy": "None"}))]);
        let cm = Registry::builtin()
            .lookup("v1", "ConfigMap")
            .unwrap()
            .clone();
        let objects = [
            exported(coupon_type(), "a"),
            exported(coupon_type(), "b"),
            exported(cm, "c"),
        ];
        let mut summary = Summary::default();
        let out = needed(&objects, &available, &Policy::default(), &mut summary);
        assert_eq!(out.len(), 1);
        let crd = &out[0];
        assert_eq!(
            crd_path(&coupon_type()),
            "_cluster/apiextensions.k8s.io/customresourcedefinitions/coupons.shop.example.com.yaml"
        );
        assert_eq!(
            (crd.name.as_str(), crd.namespace.as_deref()),
            ("coupons.shop.example.com", None)
        );
        for gone in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "annotations",
        ] {
            assert!(crd.value["metadata"].get(gone).is_none(), "{gone} kept");
        }
        assert!(crd.value.get("status").is_none());
        assert_eq!(crd.value["spec"]["names"]["kind"], "Coupon");
        assert_eq!(
            summary.kinds["customresourcedefinitions.apiextensions.k8s.io"].exported,
            1
        );
        assert!(summary.warnings.is_empty());
    }

    /// (case, conversion, export CRDs?, source → destination namespaces, CRDs written,
    /// the warning contains)
    type Case = (
        &'static str,
        Value,
        bool,
        &'static [(&'static str, &'static str)],
        usize,
        Option<&'static str>,
    );

    #[test]
    fn needed_table() {
        let webhook = |ns: &str| {
            json!({"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"],
                "clientConfig": {"service": {"namespace": ns, "name": "coupon-webhook"}}}})
        };
        // (case, conversion, export CRDs?, source → destination namespaces, CRDs written, warning contains)
        let cases: [Case; 5] = [
            (
                "switched off",
                json!({"strategy": "None"}),
                false,
                &[],
                0,
                None,
            ),
            (
                "no conversion",
                json!({"strategy": "None"}),
                true,
                &[],
                1,
                None,
            ),
            (
                "webhook elsewhere",
                webhook("platform"),
                true,
                &[("shop", "shop")],
                1,
                Some("platform/coupon-webhook"),
            ),
            (
                "webhook carried",
                webhook("shop"),
                true,
                &[("shop", "shop")],
                1,
                Some("this export carries that namespace"),
            ),
            (
                "webhook renamed",
                webhook("shop"),
                true,
                &[("shop", "shop-dr")],
                1,
                Some("as shop-dr"),
            ),
        ];
        for (case, conversion, export_crds, namespaces, written, warning) in cases {
            let available = index([coupon_crd(conversion)]);
            let mut summary = Summary::default();
            for (s, d) in namespaces {
                summary.namespaces.insert(s.to_string(), d.to_string());
            }
            let policy = Policy {
                export_crds,
                ..Policy::default()
            };
            let out = needed(
                &[exported(coupon_type(), "a")],
                &available,
                &policy,
                &mut summary,
            );
            assert_eq!(out.len(), written, "{case}");
            match warning {
                Some(w) => assert!(
                    summary.warnings.len() == 1 && summary.warnings[0].contains(w),
                    "{case}: {:?}",
                    summary.warnings
                ),
                None => assert!(summary.warnings.is_empty(), "{case}"),
            }
        }
    }
}
