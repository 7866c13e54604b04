//! The export pipeline: discover → filter → clean → transform → render → layout.
//!
//! Everything below discovery is pure: [`process`] takes objects (from files or a cluster)
//! and a [`Policy`], and returns cleaned, transformed objects; [`build_tree`] renders them
//! into the repository layout. Sources live in [`source`]; writing in [`output`].

pub mod builtin;
pub mod clean;
pub mod crds;
pub mod filter;
pub mod layout;
pub mod object;
pub mod output;
pub mod patch;
pub mod policy;
pub mod promote;
pub mod render;
pub mod resource;
pub mod secrets;
pub mod selector;
pub mod source;
pub mod summary;
pub mod transform;
pub mod value;

use serde_json::{Value, json};

pub use layout::Tree;
pub use object::{ExportedObject, Origin, SourceObject};
pub use policy::{Policy, PolicyError};
pub use resource::{Registry, ResourceType};
pub use summary::Summary;

/// One source namespace and its objects.
#[derive(Debug, Clone)]
pub struct NamespaceInput {
    /// Source namespace name.
    pub name: String,
    /// The Namespace object, when the source has it (labels and annotations are kept).
    pub object: Option<Value>,
    /// Objects in the namespace (any type; unwanted types are counted as excluded).
    pub objects: Vec<SourceObject>,
}

/// Cleans and transforms the objects of each namespace.
pub fn process(
    inputs: Vec<NamespaceInput>,
    policy: &Policy,
    registry: &Registry,
    summary: &mut Summary,
) -> Vec<ExportedObject> {
    let mut out = Vec::new();
    for input in inputs {
        let Some((mut ns, namespace)) = NamespaceExport::begin(
            &input.name,
            input.object.as_ref(),
            policy,
            registry,
            summary,
        ) else {
            continue;
        };
        out.push(namespace);
        ns.hpa = builtin::hpa_targets(input.objects.iter().map(|o| (&o.rt, &o.value)));
        for obj in input.objects {
            if let Some(e) = ns.object(obj, policy, summary) {
                out.push(e);
            }
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.rt, &a.name).cmp(&(&b.namespace, &b.rt, &b.name)));
    out
}

/// One source namespace being exported: where it lands and which workloads an HPA scales.
/// [`process`] feeds it a namespace held whole; a streamed export feeds it page by page,
/// the HPAs first.
#[derive(Debug)]
pub struct NamespaceExport {
    /// Source namespace.
    pub source: String,
    /// Destination namespace.
    pub dest: String,
    /// The namespace's HPA targets (they keep their replicas); set before the workloads.
    pub hpa: builtin::HpaTargets,
}

impl NamespaceExport {
    /// Starts namespace `name` (`object`: its Namespace object, if the source has one):
    /// returns it with the destination Namespace object, or `None` when the namespace
    /// carries the ignore label (counted in `summary`).
    pub fn begin(
        name: &str,
        object: Option<&Value>,
        policy: &Policy,
        registry: &Registry,
        summary: &mut Summary,
    ) -> Option<(Self, ExportedObject)> {
        if object.is_some_and(filter::has_ignore_label) {
            summary.exclude("namespaces", filter::Exclusion::IgnoreLabel.reason());
            return None;
        }
        let dest = policy.destination_for(name);
        summary.namespaces.insert(name.to_string(), dest.clone());
        let namespace = namespace_object(object, &dest, registry);
        summary.kind("namespaces").exported += 1;
        let ns = NamespaceExport {
            source: name.to_string(),
            dest,
            hpa: Default::default(),
        };
        Some((ns, namespace))
    }

    /// Cleans and transforms one object of this namespace ([`process_object`]).
    pub fn object(
        &self,
        obj: SourceObject,
        policy: &Policy,
        summary: &mut Summary,
    ) -> Option<ExportedObject> {
        process_object(obj, &self.source, &self.dest, policy, &self.hpa, summary)
    }
}

/// Cleans and transforms one object of `source_ns` exported into `dest_ns`; `None` when
/// the policy leaves it out (counted in `summary`). `hpa` are the namespace's HPA targets.
pub fn process_object(
    obj: SourceObject,
    source_ns: &str,
    dest_ns: &str,
    policy: &Policy,
    hpa: &builtin::HpaTargets,
    summary: &mut Summary,
) -> Option<ExportedObject> {
    let kind = obj.rt.qualified();
    if let Err(why) = policy.wants_type(&obj.rt) {
        summary.exclude(&kind, why.reason());
        return None;
    }
    if let Some(e) = filter::exclusion(&obj, policy) {
        summary.exclude(&kind, e.reason());
        return None;
    }
    let name = obj.name().to_string();
    let SourceObject { rt, mut value, .. } = obj;
    clean::clean(&mut value, &rt, policy);
    let mut transformed = builtin::apply(&mut value, &rt, source_ns, dest_ns, policy, hpa);
    for t in &policy.transforms {
        let counts = summary.transforms.entry(t.name.clone()).or_default();
        if !policy.transforms_on_rbac && rt.group == RBAC_GROUP {
            counts.skipped += 1;
            counts.last_skip_reason =
                Some("a tenant mapping's transforms do not apply to RBAC objects".into());
            continue;
        }
        let before = value.clone();
        match t.apply(&rt, source_ns, &mut value) {
            // What an object is and where it lands are decided by the mapping (for tenants,
            // checked against their policy): a transform that changes them is undone, or it
            // could turn a ConfigMap into a ClusterRoleBinding applied on the DR side.
            transform::Outcome::Applied if identity_changed(&before, &value) => {
                value = before;
                counts.skipped += 1;
                counts.last_skip_reason = Some(
                    "a transform may not change apiVersion, kind, metadata.name or metadata.namespace"
                        .into(),
                );
            }
            transform::Outcome::Applied => {
                counts.applied += 1;
                transformed = true;
            }
            transform::Outcome::Skipped(reason) => {
                counts.skipped += 1;
                counts.last_skip_reason = Some(reason);
            }
            transform::Outcome::NotMatched => {}
        }
    }
    let counts = summary.kind(&kind);
    counts.exported += 1;
    counts.transformed += u64::from(transformed);
    Some(ExportedObject {
        rt,
        namespace: Some(dest_ns.to_string()),
        name,
        value,
    })
}

/// API group of the RBAC types (Roles, RoleBindings).
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Whether a transform changed what the object is or where it lands. Moving to another
/// version of the same group (`autoscaling/v2beta2` → `autoscaling/v2`) is allowed.
fn identity_changed(before: &Value, after: &Value) -> bool {
    let group = |v: &Value| {
        v["apiVersion"]
            .as_str()
            .map(|a| a.rsplit_once('/').map_or("", |(g, _)| g).to_string())
    };
    group(before) != group(after)
        || before["kind"] != after["kind"]
        || before["metadata"]["name"] != after["metadata"]["name"]
        || before["metadata"]["namespace"] != after["metadata"]["namespace"]
}

/// The destination Namespace: the source's (labels and annotations kept, cleaned) or a
/// bare one when the source did not provide it.
fn namespace_object(source: Option<&Value>, dest: &str, registry: &Registry) -> ExportedObject {
    let rt = registry
        .lookup("v1", "Namespace")
        .expect("built-in Namespace type")
        .clone();
    let mut value = source
        .cloned()
        .unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}}));
    clean::clean(&mut value, &rt, &Policy::default());
    value::ensure_map(&mut value, &["metadata"]).insert("name".into(), json!(dest));
    value::ensure_map(&mut value, &[]).insert("apiVersion".into(), json!("v1"));
    value::ensure_map(&mut value, &[]).insert("kind".into(), json!("Namespace"));
    ExportedObject {
        rt,
        namespace: None,
        name: dest.to_string(),
        value,
    }
}

/// Renders objects into the layout. Secrets are never written in plaintext: they are
/// encrypted by `secrets`, or skipped and counted when it is `None` or has no recipient.
pub fn build_tree(
    objects: &[ExportedObject],
    secrets: Option<&secrets::SecretWriter<'_>>,
    consumer: layout::Consumer,
    summary: &mut Summary,
) -> Result<Tree, crate::sops::SopsError> {
    let mut tree = Tree {
        consumer,
        ..Tree::default()
    };
    for obj in objects.iter().filter(|o| !o.is_secret()) {
        let path = layout::object_path(&obj.rt, obj.namespace.as_deref(), &obj.name);
        tree.insert(path, render::render(&obj.value)?.into_bytes());
    }
    match secrets {
        Some(w) => w.write(objects, &mut tree, summary)?,
        None => {
            for obj in objects.iter().filter(|o| o.is_secret()) {
                let counts = summary.kind(&obj.rt.qualified());
                counts.secrets_skipped += 1;
                counts.exported -= 1;
            }
        }
    }
    tree.write_kustomizations();
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(transform: &str, api_version: &str, kind: &str, tenant: bool) -> (Value, (u64, u64)) {
        let spec: crate::api::NamespaceMappingSpec = serde_saphyr::from_str(&format!(
            "sourceNamespace: team-a\ntransforms:\n  - name: t\n    mergePatch: {transform}\n"
        ))
        .unwrap();
        let mut policy = Policy::from_spec(&spec).unwrap();
        if tenant {
            policy = policy.for_tenant();
        }
        let registry = Registry::builtin();
        let rt = registry.lookup(api_version, kind).unwrap().clone();
        let obj = SourceObject {
            rt,
            value: json!({"apiVersion": api_version, "kind": kind,
                "metadata": {"name": "c", "namespace": "team-a"}, "data": {"k": "v"},
                "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "team-a"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "view"}}),
            origin: object::Origin::Live,
        };
        let mut summary = Summary::default();
        let out = process_object(
            obj,
            "team-a",
            "team-a",
            &policy,
            &Default::default(),
            &mut summary,
        )
        .unwrap();
        let c = &summary.transforms["t"];
        (out.value, (c.applied, c.skipped))
    }

    /// A transform that changes what an object is or where it lands (a ConfigMap turned
    /// into a ClusterRoleBinding, moved to kube-system or renamed) is undone and counted as
    /// skipped: the mapping, not a transform, decides that.
    #[test]
    fn process_object_transform_identity_table() {
        let cases = [
            (
                "{metadata: {namespace: kube-system}, data: {k: moved}}",
                false,
            ),
            (
                "{apiVersion: rbac.authorization.k8s.io/v1, kind: ClusterRoleBinding, data: {k: moved}}",
                false,
            ),
            ("{metadata: {name: other}, data: {k: moved}}", false),
            ("{data: {k: moved}}", true),
        ];
        for (transform, applies) in cases {
            let (value, counts) = run(transform, "v1", "ConfigMap", false);
            assert_eq!(value["kind"], "ConfigMap", "{transform}");
            assert_eq!(value["metadata"]["namespace"], "team-a", "{transform}");
            let want = if applies {
                ("moved", (1, 0))
            } else {
                ("v", (0, 1))
            };
            assert_eq!(
                (value["data"]["k"].as_str().unwrap(), counts),
                want,
                "{transform}"
            );
        }
    }

    #[test]
    fn identity_changed_table() {
        let base = json!({"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "a", "namespace": "n"}});
        let cases = [
            ("/apiVersion", json!("autoscaling/v2"), false),
            ("/apiVersion", json!("rbac.authorization.k8s.io/v1"), true),
            ("/apiVersion", json!("v1"), true),
            ("/kind", json!("ClusterRoleBinding"), true),
            ("/metadata/name", json!("b"), true),
            ("/metadata/namespace", json!("kube-system"), true),
        ];
        for (path, value, changed) in cases {
            let mut after = base.clone();
            *after.pointer_mut(path).unwrap() = value.clone();
            assert_eq!(identity_changed(&base, &after), changed, "{path} = {value}");
        }
    }

    /// A tenant's transform does not touch RBAC objects (applied with the admin's
    /// credentials on the DR side); an admin's still does.
    #[test]
    fn process_object_tenant_transform_skips_rbac() {
        let escalate = "{roleRef: {kind: ClusterRole, name: cluster-admin}}";
        let (v, counts) = run(
            escalate,
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            true,
        );
        assert_eq!(
            (v["roleRef"]["name"].as_str().unwrap(), counts),
            ("view", (0, 1))
        );
        let (v, counts) = run(
            escalate,
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            false,
        );
        assert_eq!(
            (v["roleRef"]["name"].as_str().unwrap(), counts),
            ("cluster-admin", (1, 0))
        );
    }
}
