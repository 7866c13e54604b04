//! The export pipeline: discover → filter → clean → transform → render → layout.
//!
//! Everything below discovery is pure: [`process`] takes objects (from files or a cluster)
//! and a [`Policy`], and returns cleaned, transformed objects; [`build_tree`] renders them
//! into the repository layout. Sources live in [`source`]; writing in [`output`].

pub mod builtin;
pub mod clean;
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
        if input.object.as_ref().is_some_and(filter::has_ignore_label) {
            summary.exclude("namespaces", filter::Exclusion::IgnoreLabel.reason());
            continue;
        }
        let dest = policy.destination_for(&input.name);
        summary.namespaces.insert(input.name.clone(), dest.clone());
        out.push(namespace_object(input.object.as_ref(), &dest, registry));
        summary.kind("namespaces").exported += 1;
        let hpa = builtin::hpa_targets(input.objects.iter().map(|o| (&o.rt, &o.value)));
        for obj in input.objects {
            if let Some(e) = process_object(obj, &input.name, &dest, policy, &hpa, summary) {
                out.push(e);
            }
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.rt, &a.name).cmp(&(&b.namespace, &b.rt, &b.name)));
    out
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
        let before = value.clone();
        match t.apply(&rt, source_ns, &mut value) {
            // The DR namespace is decided by the mapping (and, for tenants, checked against
            // their policy): a transform may not move an object elsewhere.
            transform::Outcome::Applied
                if value["metadata"]["namespace"] != before["metadata"]["namespace"] =>
            {
                value = before;
                counts.skipped += 1;
                counts.last_skip_reason =
                    Some("a transform may not change metadata.namespace".into());
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

    /// A transform that would move an object into another DR namespace (kube-system) is
    /// undone and reported: the mapping, not a transform, decides where objects land.
    #[test]
    fn process_object_transform_cannot_move_namespace() {
        let spec: crate::api::NamespaceMappingSpec = serde_saphyr::from_str(
            "sourceNamespace: team-a\ntransforms:\n  - name: escape\n    mergePatch: {metadata: {namespace: kube-system}, data: {k: moved}}\n",
        )
        .unwrap();
        let policy = Policy::from_spec(&spec).unwrap();
        let registry = Registry::builtin();
        let rt = registry.lookup("v1", "ConfigMap").unwrap().clone();
        let obj = SourceObject {
            rt,
            value: json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "team-a"}, "data": {"k": "v"}}),
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
        assert_eq!(out.value["metadata"]["namespace"], "team-a");
        assert_eq!(out.value["data"]["k"], "v", "the whole transform is undone");
        let counts = &summary.transforms["escape"];
        assert_eq!((counts.applied, counts.skipped), (0, 1));
    }
}
