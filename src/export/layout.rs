//! Repository layout: one file per object at `<namespace>/<group|core>/<plural>/<name>.yaml`,
//! cluster-scoped objects (the Namespace itself) under `_cluster/` (`_` can never start a
//! namespace name), and a generated, sorted `kustomization.yaml` per top-level directory plus
//! one at the root, so `kubectl apply -k`, Flux and Argo CD all read the tree as it is.

use std::collections::BTreeMap;

use serde_json::json;

use super::resource::ResourceType;

/// Directory of cluster-scoped objects.
pub const CLUSTER_DIR: &str = "_cluster";
/// Name of generated kustomization files.
pub const KUSTOMIZATION: &str = "kustomization.yaml";

/// Name of the KSOPS generator written per namespace for Argo CD.
pub const KSOPS_GENERATOR: &str = "secret-generator.yaml";

/// Which GitOps tool reads the tree; it decides how encrypted Secrets are referenced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consumer {
    /// Flux: encrypted files are plain `resources`; kustomize-controller decrypts them after
    /// the build.
    #[default]
    Flux,
    /// Argo CD with KSOPS: encrypted files go through a `secret-generator.yaml` generator
    /// (Argo CD would apply them as ciphertext if they were `resources`).
    ArgoCd,
}

/// Rendered files by relative path (`/`-separated), the whole output of one export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Path → content.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The GitOps tool the generated kustomizations are written for.
    pub consumer: Consumer,
}

/// The file path of an object. Secrets get `.sops.yaml` so tools recognise them.
pub fn object_path(rt: &ResourceType, namespace: Option<&str>, name: &str) -> String {
    let dir = namespace.unwrap_or(CLUSTER_DIR);
    let ext = if rt.group.is_empty() && rt.kind == "Secret" {
        "sops.yaml"
    } else {
        "yaml"
    };
    format!("{dir}/{}/{}/{name}.{ext}", rt.group_dir(), rt.plural)
}

/// Whether `path` is a generated kustomization (root or top-level directory) rather than
/// an object file — an object may well be named `kustomization`.
pub fn is_kustomization(path: &str) -> bool {
    path == KUSTOMIZATION
        || path
            .split_once('/')
            .is_some_and(|(_, rest)| rest == KUSTOMIZATION)
}

/// Whether `path` is generated from the other files (a kustomization or a KSOPS
/// generator) rather than an object file.
pub fn is_generated(path: &str) -> bool {
    is_kustomization(path)
        || path
            .split_once('/')
            .is_some_and(|(_, rest)| rest == KSOPS_GENERATOR)
}

/// `(top-level directory, group dir, plural)` of a path made by [`object_path`].
pub fn path_kind(path: &str) -> Option<(&str, &str, &str)> {
    let mut parts = path.split('/');
    let (top, group, plural) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    Some((top, group, plural))
}

impl Tree {
    /// Adds an object file.
    pub fn insert(&mut self, path: String, content: Vec<u8>) {
        self.files.insert(path, content);
    }

    /// Regenerates every `kustomization.yaml` from the object files present.
    pub fn write_kustomizations(&mut self) {
        self.files.retain(|p, _| !is_generated(p));
        let generated = kustomizations(self.files.keys().map(String::as_str), self.consumer);
        self.files.extend(generated);
    }
}

/// The generated files (path → content) for a tree holding `paths`: a
/// `kustomization.yaml` per top-level directory listing its files and one at the root
/// listing the directories; for Argo CD, encrypted files are listed by a KSOPS
/// `secret-generator.yaml` per directory instead.
pub fn kustomizations<'a>(
    paths: impl Iterator<Item = &'a str>,
    consumer: Consumer,
) -> BTreeMap<String, Vec<u8>> {
    let mut per_dir: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for path in paths {
        // Dot-directories (exporter state) are never applied.
        if path.starts_with('.') || is_generated(path) {
            continue;
        }
        if let Some((top, rest)) = path.split_once('/') {
            let (resources, encrypted) = per_dir.entry(top).or_default();
            if consumer == Consumer::ArgoCd && rest.ends_with(".sops.yaml") {
                encrypted.push(format!("./{rest}"));
            } else {
                resources.push(rest.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    let top_dirs: Vec<String> = per_dir.keys().map(|d| d.to_string()).collect();
    for (dir, (resources, encrypted)) in per_dir {
        let generators = if encrypted.is_empty() {
            Vec::new()
        } else {
            out.insert(
                format!("{dir}/{KSOPS_GENERATOR}"),
                ksops_generator(&encrypted),
            );
            vec![KSOPS_GENERATOR.to_string()]
        };
        out.insert(
            format!("{dir}/{KUSTOMIZATION}"),
            kustomization_with(&resources, &generators),
        );
    }
    if !top_dirs.is_empty() {
        out.insert(KUSTOMIZATION.to_string(), kustomization(&top_dirs));
    }
    out
}

fn kustomization(resources: &[String]) -> Vec<u8> {
    kustomization_with(resources, &[])
}

fn kustomization_with(resources: &[String], generators: &[String]) -> Vec<u8> {
    let mut sorted = resources.to_vec();
    sorted.sort();
    let mut doc = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted,
    });
    if !generators.is_empty() {
        doc["generators"] = json!(generators);
    }
    crate::yaml::to_string(&doc)
        .expect("kustomization renders")
        .into_bytes()
}

/// KSOPS's exec KRM generator: Argo CD's repo server runs `ksops`, which decrypts (MAC
/// verified) the listed files during `kustomize build`.
fn ksops_generator(files: &[String]) -> Vec<u8> {
    let mut sorted = files.to_vec();
    sorted.sort();
    let doc = json!({
        "apiVersion": "viaduct.ai/v1",
        "kind": "ksops",
        "metadata": {
            "name": "secret-generator",
            "annotations": {"config.kubernetes.io/function": "exec:\n  path: ksops\n"},
        },
        "files": sorted,
    });
    crate::yaml::to_string(&doc)
        .expect("generator renders")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::resource::Registry;

    #[test]
    fn object_path_table() {
        let reg = Registry::builtin();
        let cases = [
            (
                reg.lookup("apps/v1", "Deployment").unwrap(),
                Some("shop"),
                "web",
                "shop/apps/deployments/web.yaml",
            ),
            (
                reg.lookup("v1", "Service").unwrap(),
                Some("shop"),
                "web",
                "shop/core/services/web.yaml",
            ),
            (
                reg.lookup("v1", "Secret").unwrap(),
                Some("shop"),
                "db",
                "shop/core/secrets/db.sops.yaml",
            ),
            (
                reg.lookup("v1", "Namespace").unwrap(),
                None,
                "shop",
                "_cluster/core/namespaces/shop.yaml",
            ),
        ];
        for (rt, ns, name, expected) in cases {
            assert_eq!(object_path(rt, ns, name), expected);
            let (top, group, plural) = path_kind(expected).unwrap();
            assert_eq!((group, plural), (rt.group_dir(), rt.plural.as_str()));
            assert_eq!(top, ns.unwrap_or(CLUSTER_DIR));
        }
    }

    #[test]
    fn kustomizations_are_sorted_and_per_directory() {
        let mut tree = Tree::default();
        for p in [
            "shop/core/services/web.yaml",
            "shop/apps/deployments/web.yaml",
            "_cluster/core/namespaces/shop.yaml",
        ] {
            tree.insert(p.into(), b"x".to_vec());
        }
        tree.write_kustomizations();
        let shop = String::from_utf8(tree.files["shop/kustomization.yaml"].clone()).unwrap();
        assert!(
            shop.contains("resources:\n- apps/deployments/web.yaml\n- core/services/web.yaml\n"),
            "{shop}"
        );
        let root = String::from_utf8(tree.files["kustomization.yaml"].clone()).unwrap();
        assert!(root.contains("- _cluster\n- shop\n"), "{root}");
    }
}
