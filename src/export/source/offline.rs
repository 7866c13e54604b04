//! Offline source: a directory of YAML/JSON files as `kubectl get -o yaml` writes them —
//! multi-document streams, `List` objects, single objects. Errors name the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use kube::core::{Selector, SelectorExt};

use crate::export::NamespaceInput;
use crate::export::object::{Origin, SourceObject};
use crate::export::resource::{Registry, ResourceType};
use crate::export::value::{self, str_at};

/// Errors reading the input; each names where.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// A document is not valid YAML/JSON.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Line (1-based).
        line: usize,
        /// Parser message.
        message: String,
    },
    /// A document is not a Kubernetes object.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A selector matched no Namespace object in the input.
    #[error("no Namespace object in the input matches the selector {0}")]
    NoNamespaceMatches(String),
}

/// What a directory holds.
#[derive(Debug, Default)]
pub struct OfflineInput {
    /// Built-in types plus the CRDs found.
    pub registry: Registry,
    /// Namespace objects by name.
    pub namespaces: BTreeMap<String, Value>,
    /// Namespaced objects.
    pub objects: Vec<SourceObject>,
    /// Cluster-scoped objects other than Namespaces and CRDs (not exported; counted).
    pub cluster_scoped: usize,
    /// The CustomResourceDefinitions in the input (exported with the custom resources that
    /// need them).
    pub crds: Vec<Value>,
    /// Things the user should know but that do not stop the export, one line each: objects
    /// whose type was guessed because neither the built-in table nor a CRD in the input
    /// knows their kind. The CLI prints them on stderr.
    pub warnings: Vec<String>,
}

/// Reads every `.yaml`, `.yml` and `.json` file below `dir` (sorted, recursively).
pub fn read_dir(dir: &Path) -> Result<OfflineInput, OfflineError> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let mut docs = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| OfflineError::Io {
            path: file.clone(),
            source,
        })?;
        parse_file(file, &text, &mut docs)?;
    }
    let mut input = OfflineInput {
        registry: Registry::builtin(),
        ..Default::default()
    };
    // CRDs first, so custom resources anywhere in the input resolve.
    for (value, _) in &docs {
        if str_at(value, &["kind"]) == Some("CustomResourceDefinition") {
            input.registry.add_crd(value);
        }
    }
    for (value, origin) in docs {
        let (Some(api_version), Some(kind)) =
            (str_at(&value, &["apiVersion"]), str_at(&value, &["kind"]))
        else {
            return Err(OfflineError::Invalid {
                origin,
                message: "not a Kubernetes object: apiVersion and kind are required".into(),
            });
        };
        let Some(name) = str_at(&value, &["metadata", "name"]).map(str::to_string) else {
            return Err(OfflineError::Invalid {
                origin,
                message: format!("{kind} without metadata.name"),
            });
        };
        let rt = match input.registry.lookup(api_version, kind) {
            Some(rt) => rt.clone(),
            None => {
                // A dump often holds custom resources without their CRDs (`kubectl get all,x
                // -n ns` never lists CRDs). Failing the whole export for one of them would
                // lose everything else; guess the type the way kubectl would and say so.
                let namespace = str_at(&value, &["metadata", "namespace"]);
                let rt = guessed_type(api_version, kind, namespace.is_some());
                input.warnings.push(match namespace {
                    Some(ns) => format!(
                        "{origin}: {kind} ({api_version}) is neither built in nor defined by a \
                         CustomResourceDefinition in the input; exporting {ns}/{name} as the \
                         guessed namespaced resource {} (add the CRD to the input to be exact)",
                        rt.qualified()
                    ),
                    None => format!(
                        "{origin}: {kind} ({api_version}) is neither built in nor defined by a \
                         CustomResourceDefinition in the input; {name} has no metadata.namespace, \
                         so it is taken as the cluster-scoped resource {} and not exported",
                        rt.qualified()
                    ),
                });
                rt
            }
        };
        if !rt.namespaced {
            match kind {
                "Namespace" => {
                    input.namespaces.insert(name, value);
                }
                "CustomResourceDefinition" => input.crds.push(value.clone()),
                _ => input.cluster_scoped += 1,
            }
            continue;
        }
        if str_at(&value, &["metadata", "namespace"]).is_none() {
            return Err(OfflineError::Invalid {
                origin,
                message: format!("{kind} {name} without metadata.namespace"),
            });
        }
        input.objects.push(SourceObject { rt, value, origin });
    }
    Ok(input)
}

/// The type of an object whose kind no built-in entry or CRD in the input defines: the
/// scope from whether the object has `metadata.namespace` (the only hint a dump carries)
/// and the plural from [`guess_plural`].
fn guessed_type(api_version: &str, kind: &str, namespaced: bool) -> ResourceType {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ResourceType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: guess_plural(kind),
        singular: kind.to_lowercase(),
        short_names: Vec::new(),
        namespaced,
    }
}

/// The resource (plural) name kubectl guesses for a kind: apimachinery's
/// `meta.UnsafeGuessKindToResource`, rule for rule, so a guessed path matches what
/// `kubectl` and client-go's fakes would use. Lowercase the kind; a kind ending in
/// `endpoints` stays as is; `s`, `z`, `ch`, `sh`, `x` take `es`; a vowel before a final
/// `y` takes `s`; another final `y` becomes `ies`; everything else takes `s`.
fn guess_plural(kind: &str) -> String {
    let singular = kind.to_lowercase();
    if singular.is_empty() || singular.ends_with("endpoints") {
        return singular;
    }
    if ["s", "z", "ch", "sh", "x"]
        .iter()
        .any(|end| singular.ends_with(end))
    {
        return singular + "es";
    }
    if ["ay", "ey", "iy", "oy", "uy"]
        .iter()
        .any(|end| singular.ends_with(end))
    {
        return singular + "s";
    }
    match singular.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => singular + "s",
    }
}

impl OfflineInput {
    /// Groups the objects by source namespace: the `names` given, plus those whose Namespace
    /// object matches `selector`; with neither, every namespace in the input.
    pub fn into_namespaces(
        self,
        names: &[String],
        selector: Option<&Selector>,
    ) -> Result<(Vec<NamespaceInput>, Registry), OfflineError> {
        let mut wanted: std::collections::BTreeSet<String> = names.iter().cloned().collect();
        if let Some(sel) = selector {
            let before = wanted.len();
            wanted.extend(
                self.namespaces
                    .iter()
                    .filter(|(_, ns)| sel.matches(&value::labels(ns)))
                    .map(|(n, _)| n.clone()),
            );
            if wanted.len() == before && names.is_empty() {
                return Err(OfflineError::NoNamespaceMatches(sel.to_string()));
            }
        } else if wanted.is_empty() {
            wanted.extend(self.namespaces.keys().cloned());
            wanted.extend(
                self.objects
                    .iter()
                    .filter_map(|o| o.namespace().map(str::to_string)),
            );
        }
        let mut inputs: Vec<NamespaceInput> = wanted
            .into_iter()
            .map(|name| NamespaceInput {
                object: self.namespaces.get(&name).cloned(),
                name,
                objects: Vec::new(),
            })
            .collect();
        for obj in self.objects {
            if let Some(i) = inputs
                .iter_mut()
                .find(|i| Some(i.name.as_str()) == obj.namespace())
            {
                i.objects.push(obj);
            }
        }
        Ok((inputs, self.registry))
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), OfflineError> {
    let entries = std::fs::read_dir(dir).map_err(|source| OfflineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| OfflineError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits a file into documents, flattens `List`s and records each object's origin.
fn parse_file(path: &Path, text: &str, out: &mut Vec<(Value, Origin)>) -> Result<(), OfflineError> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    let docs: Vec<(usize, Value)> = if is_json {
        let v = serde_json::from_str(text).map_err(|e| OfflineError::Parse {
            path: path.into(),
            line: e.line(),
            message: e.to_string(),
        })?;
        vec![(1, v)]
    } else {
        split_documents(text)
            .into_iter()
            .filter(|(_, doc)| {
                doc.lines()
                    .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            })
            .map(|(line, doc)| {
                serde_saphyr::from_str::<Value>(doc)
                    .map(|v| (line, v))
                    .map_err(|e| {
                        let (rel, message) = yaml_error_line(&e.to_string());
                        OfflineError::Parse {
                            path: path.into(),
                            line: line + rel.saturating_sub(1),
                            message,
                        }
                    })
            })
            .collect::<Result<_, _>>()?
    };
    for (line, value) in docs {
        let origin = Origin::File {
            path: path.to_path_buf(),
            line,
        };
        if value.is_null() {
            continue;
        }
        let kind = str_at(&value, &["kind"]).unwrap_or("");
        match value.get("items").and_then(Value::as_array) {
            Some(items) if kind.ends_with("List") => {
                // Items of typed lists may omit apiVersion/kind; take them from the list.
                let item_kind = kind.strip_suffix("List").unwrap_or("");
                for item in items {
                    let mut item = item.clone();
                    if let Some(o) = item.as_object_mut() {
                        if !o.contains_key("kind") && !item_kind.is_empty() {
                            o.insert("kind".into(), Value::String(item_kind.into()));
                        }
                        if !o.contains_key("apiVersion")
                            && let Some(av) = value.get("apiVersion")
                        {
                            o.insert("apiVersion".into(), av.clone());
                        }
                    }
                    out.push((item, origin.clone()));
                }
            }
            _ => out.push((value, origin)),
        }
    }
    Ok(())
}

/// `(first line, text)` of each `---`-separated document.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

/// Splits serde-saphyr's `line N column M: message` into the document-relative line and
/// a message without the (document-relative, hence misleading) position.
fn yaml_error_line(message: &str) -> (usize, String) {
    let first = message
        .lines()
        .next()
        .unwrap_or(message)
        .trim_start_matches("error: ");
    let re = regex::Regex::new(r"line (\d+) column (\d+):?\s*").expect("valid regex");
    match re.captures(first) {
        Some(c) => {
            let line = c[1].parse().unwrap_or(1);
            let rest = re.replace(first, "").trim().to_string();
            (line, format!("{rest} (column {})", &c[2]))
        }
        None => (1, first.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kubectl's own cases (apimachinery `TestKindToResource`) plus one per branch of the
    /// rule, including the built-in kinds whose real plural the rule must reproduce.
    #[test]
    fn guess_plural_follows_kubectl() {
        let cases = [
            ("Pod", "pods"),
            ("ReplicationController", "replicationcontrollers"),
            ("ImageRepository", "imagerepositories"),
            ("Policy", "policies"),
            ("NetworkPolicy", "networkpolicies"),
            ("Gateway", "gateways"),
            ("Key", "keys"),
            ("Ingress", "ingresses"),
            ("IngressClass", "ingressclasses"),
            ("Status", "statuses"),
            ("miss", "misses"),
            ("lowercase", "lowercases"),
            ("Endpoints", "endpoints"),
            ("MyEndpoints", "myendpoints"),
            ("Mesh", "meshes"),
            ("Match", "matches"),
            ("Box", "boxes"),
            ("Quiz", "quizes"),
            ("", ""),
        ];
        for (kind, plural) in cases {
            assert_eq!(guess_plural(kind), plural, "{kind}");
        }
    }

    /// The rule agrees with every built-in type, so a guess is right whenever the CRD's
    /// author followed the usual English plural.
    #[test]
    fn guess_plural_matches_builtin_types() {
        for rt in Registry::builtin().types() {
            assert_eq!(guess_plural(&rt.kind), rt.plural, "{}", rt.kind);
        }
    }

    /// A custom resource without its CRD is read, not refused: namespaced when it has a
    /// namespace, cluster-scoped (counted, not exported) otherwise, with one warning each.
    #[test]
    fn read_dir_guesses_a_custom_resource_without_crd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dump.yaml"),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: edge, namespace: shop}\n---\n\
             apiVersion: example.com/v1alpha1\nkind: ClusterPolicy\nmetadata: {name: strict}\n",
        )
        .unwrap();
        let input = read_dir(dir.path()).unwrap();
        assert_eq!(input.objects.len(), 1);
        let rt = &input.objects[0].rt;
        assert_eq!(
            (rt.qualified(), rt.version.as_str(), rt.namespaced),
            ("gateways.gateway.networking.k8s.io".to_string(), "v1", true)
        );
        assert_eq!(input.cluster_scoped, 1);
        assert_eq!(input.warnings.len(), 2, "{:?}", input.warnings);
        assert!(
            input.warnings[0].contains("dump.yaml:1:")
                && input.warnings[0].contains("shop/edge")
                && input.warnings[0].contains("gateways.gateway.networking.k8s.io"),
            "{}",
            input.warnings[0]
        );
        assert!(
            input.warnings[1].contains("strict")
                && input.warnings[1].contains("clusterpolicies.example.com")
                && input.warnings[1].contains("not exported"),
            "{}",
            input.warnings[1]
        );
    }

    #[test]
    fn split_documents_tracks_lines() {
        let text = "a: 1\n---\nb: 2\nc: 3\n--- # comment\nd: 4\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            vec![(1, "a: 1\n"), (3, "b: 2\nc: 3\n"), (6, "d: 4\n")]
        );
    }
}
