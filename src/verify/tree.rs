//! The checks that need no cluster: objects, layout, SOPS files. Pure, so they are tested
//! from trees built in memory.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Check, Report};
use crate::export::layout::{self, CLUSTER_DIR, Consumer, KSOPS_GENERATOR};
use crate::export::value::str_at;
use crate::sops::{self, Identities};

/// What the SOPS files are checked with.
pub enum SecretKeys<'a> {
    /// The DR cluster's identity: every file must decrypt and its MAC verify. `recipients`
    /// are the identity's public keys, named when a file is not encrypted for them.
    Identity {
        /// The identity.
        identities: &'a Identities,
        /// Its public keys (`age1…`).
        recipients: &'a [String],
    },
    /// No key at hand (the controller holds none of the DR side): every file must be
    /// encrypted for exactly these recipients; the MAC cannot be checked.
    Recipients(&'a [String]),
    /// Nothing to check with: an encrypted file is a problem (cannot tell it decrypts).
    Nothing,
}

/// An object to send to the DR apiserver's dry-run.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The file.
    pub path: String,
    /// The object (for Secrets: the encrypted document with every value replaced by a
    /// placeholder, so no plaintext — not even ciphertext — leaves for the apiserver).
    pub object: Value,
}

/// The consumer the tree was written for: Argo CD when it holds KSOPS generators.
pub fn detect_consumer(files: &BTreeMap<String, Vec<u8>>) -> Consumer {
    let argo = files.keys().any(|p| {
        p.split_once('/')
            .is_some_and(|(_, rest)| rest == KSOPS_GENERATOR)
    });
    if argo {
        Consumer::ArgoCd
    } else {
        Consumer::Flux
    }
}

/// Whether `path` is an object file (not state, not generated).
fn is_object_file(path: &str) -> bool {
    !path.starts_with('.')
        && !layout::is_generated(path)
        && (path.ends_with(".yaml") || path.ends_with(".yml"))
        && path.contains('/')
}

/// Runs the checks on `files` (relative to the mapping's path) and returns the report and
/// the objects to dry-run.
pub fn check(
    files: &BTreeMap<String, Vec<u8>>,
    consumer: Consumer,
    keys: &SecretKeys<'_>,
) -> (Report, Vec<Candidate>) {
    let mut report = Report::default();
    let mut candidates = Vec::new();
    check_layout(files, consumer, &mut report);
    for (path, bytes) in files.iter().filter(|(p, _)| is_object_file(p)) {
        report.objects += 1;
        let Ok(text) = std::str::from_utf8(bytes) else {
            report.problem(path, Check::Object, "not UTF-8 text");
            continue;
        };
        let value: Value = match serde_saphyr::from_str(text) {
            Ok(v) => v,
            // The parser's message quotes the lines around the error: never for a file
            // that may hold a Secret.
            Err(_) if may_hold_secret(path, text) => {
                report.problem(
                    path,
                    Check::Object,
                    "not YAML (details withheld: the file may hold a Secret)",
                );
                continue;
            }
            Err(e) => {
                report.problem(path, Check::Object, format!("not YAML: {e}"));
                continue;
            }
        };
        if !check_object(path, &value, &mut report) {
            continue;
        }
        let object = if value.get("sops").is_some() {
            if let Some(why) = not_encrypted(path, &value) {
                report.problem(path, Check::Secret, why);
            } else if check_secret(path, text, keys, &mut report) {
                report.secrets_verified += 1;
            }
            placeholder(&value)
        } else if str_at(&value, &["kind"]) == Some("Secret") {
            report.problem(
                path,
                Check::Secret,
                "a Secret in plaintext (no sops metadata): it must never be in git",
            );
            continue;
        } else {
            value
        };
        candidates.push(Candidate {
            path: path.clone(),
            object,
        });
    }
    report.sort();
    (report, candidates)
}

/// Whether a file could hold Secret material (its parse errors are not quoted).
fn may_hold_secret(path: &str, text: &str) -> bool {
    path.ends_with(".sops.yaml") || path.contains("/core/secrets/") || text.contains("Secret")
}

/// Why a file with sops metadata is not what Flux can decrypt: a Secret in a namespace
/// directory (the `_cluster/` Kustomization decrypts nothing) whose every value under
/// `data`/`stringData` is ciphertext (a plaintext value with copied sops metadata would
/// pass a recipients check and reach git in the clear).
fn not_encrypted(path: &str, v: &Value) -> Option<String> {
    if str_at(v, &["kind"]) != Some("Secret") || path.starts_with(CLUSTER_DIR) {
        return Some("sops metadata on something other than a Secret in a namespace directory: it is never decrypted".into());
    }
    for field in ["data", "stringData"] {
        if let Some(m) = v.get(field).and_then(Value::as_object) {
            for (key, val) in m {
                if !val
                    .as_str()
                    .is_some_and(|s| s.starts_with("ENC[AES256_GCM,"))
                {
                    return Some(format!(
                        "{field}.{key} is not encrypted (no ENC[AES256_GCM,…] value)"
                    ));
                }
            }
        }
    }
    None
}

/// apiVersion, kind, name present; the namespace matches the directory.
fn check_object(path: &str, v: &Value, report: &mut Report) -> bool {
    let (Some(_), Some(kind), Some(_)) = (
        str_at(v, &["apiVersion"]),
        str_at(v, &["kind"]),
        str_at(v, &["metadata", "name"]),
    ) else {
        report.problem(
            path,
            Check::Object,
            "not a Kubernetes object: apiVersion, kind and metadata.name are required",
        );
        return false;
    };
    let top = path.split('/').next().unwrap_or_default();
    let ns = str_at(v, &["metadata", "namespace"]);
    match (top == CLUSTER_DIR, ns) {
        (true, None) => true,
        (true, Some(ns)) => {
            report.problem(
                path,
                Check::Object,
                format!("{kind} in {CLUSTER_DIR}/ has metadata.namespace {ns}"),
            );
            false
        }
        (false, Some(ns)) if ns == top => true,
        (false, other) => {
            report.problem(
                path,
                Check::Object,
                format!(
                    "{kind} in directory {top}/ has metadata.namespace {}: it would land elsewhere",
                    other.unwrap_or("(none)")
                ),
            );
            false
        }
    }
}

/// Checks one SOPS file; `true` when it is right.
fn check_secret(path: &str, text: &str, keys: &SecretKeys<'_>, report: &mut Report) -> bool {
    let recipients = match sops::recipients_of(text) {
        Ok(r) => r,
        Err(e) => {
            report.problem(
                path,
                Check::Secret,
                format!("unreadable sops metadata: {e}"),
            );
            return false;
        }
    };
    match keys {
        SecretKeys::Identity {
            identities,
            recipients: own,
        } => {
            if !own.is_empty() && !own.iter().any(|o| recipients.contains(o)) {
                report.problem(
                    path,
                    Check::Secret,
                    format!(
                        "not encrypted for the DR identity ({}); its recipients are {}",
                        own.join(", "),
                        recipients.join(", ")
                    ),
                );
                return false;
            }
            match sops::decrypt(text, identities) {
                Ok(_) => true,
                Err(e) => {
                    report.problem(path, Check::Secret, format!("does not decrypt: {e}"));
                    false
                }
            }
        }
        SecretKeys::Recipients(expected) => {
            let have: BTreeSet<&String> = recipients.iter().collect();
            let want: BTreeSet<&String> = expected.iter().collect();
            if have == want {
                true
            } else {
                report.problem(
                    path,
                    Check::Secret,
                    format!(
                        "encrypted for {} instead of the configured recipients {}",
                        recipients.join(", "),
                        expected.join(", ")
                    ),
                );
                false
            }
        }
        SecretKeys::Nothing => {
            report.problem(
                path,
                Check::Secret,
                "cannot tell whether it decrypts: pass --age-identity (the DR cluster's key)",
            );
            false
        }
    }
}

/// The Secret as the apiserver would see it, with every value a placeholder (`{}`, which
/// also satisfies the JSON the docker-config types require).
fn placeholder(encrypted: &Value) -> Value {
    let mut v = encrypted.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("sops");
        for field in ["data", "stringData"] {
            if let Some(Value::Object(m)) = o.get_mut(field) {
                for val in m.values_mut() {
                    *val = Value::String(if field == "data" { "e30=" } else { "{}" }.into());
                }
            }
        }
    }
    v
}

/// Entries (`resources`, `generators`, KSOPS `files`) of a kustomization-like document.
fn entries(doc: &Value, field: &str) -> Vec<String> {
    doc.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str())
                .map(|e| e.trim_start_matches("./").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Compares each committed kustomization (and KSOPS generator) with what the files
/// present need: a missing entry means an object never applied, an entry without a file
/// fails the whole build, an encrypted file in the wrong list is applied as ciphertext
/// (Argo CD) or never decrypted (Flux without decryption).
fn check_layout(files: &BTreeMap<String, Vec<u8>>, consumer: Consumer, report: &mut Report) {
    let objects: Vec<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|p| is_object_file(p))
        .collect();
    let expected = layout::kustomizations(objects.iter().copied(), consumer);
    let dirs: BTreeSet<&str> = files
        .keys()
        .filter_map(|p| p.split_once('/').map(|(d, _)| d))
        .filter(|d| !d.starts_with('.'))
        .collect();
    let exists = |dir: &str, entry: &str| {
        let full = if dir.is_empty() {
            entry.to_string()
        } else {
            format!("{dir}/{entry}")
        };
        files.contains_key(&full) || (dir.is_empty() && dirs.contains(entry))
    };
    for (path, want) in &expected {
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        let Some(have) = files.get(path) else {
            report.problem(
                path,
                Check::Layout,
                "missing: the files of this directory are never applied",
            );
            continue;
        };
        let parse = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|t| serde_saphyr::from_str::<Value>(t).ok())
        };
        let (Some(have), Some(want)) = (parse(have), parse(want)) else {
            report.problem(path, Check::Layout, "not a readable YAML document");
            continue;
        };
        for field in ["resources", "generators", "files"] {
            let have_set: BTreeSet<String> = entries(&have, field).into_iter().collect();
            let want_set: BTreeSet<String> = entries(&want, field).into_iter().collect();
            for missing in want_set.difference(&have_set) {
                report.problem(
                    path,
                    Check::Layout,
                    format!("does not list {missing} under {field}: it would never be applied"),
                );
            }
            for extra in have_set.difference(&want_set) {
                let encrypted = extra.ends_with(".sops.yaml");
                let why = if !exists(dir, extra) {
                    format!("lists {extra} under {field}, which does not exist: the build fails")
                } else if encrypted && field == "resources" && consumer == Consumer::ArgoCd {
                    format!(
                        "lists the encrypted {extra} as a resource: Argo CD would apply the ciphertext (it belongs in {KSOPS_GENERATOR})"
                    )
                } else if encrypted && field == "files" && consumer == Consumer::Flux {
                    format!("a KSOPS generator in a Flux tree: {extra} is never applied")
                } else {
                    // Whatever the export did not write is not checked here: what it
                    // builds to is unknown, so it cannot count as fine.
                    format!(
                        "lists {extra} under {field}, which the export does not write: verify cannot tell what it applies"
                    )
                };
                report.problem(path, Check::Layout, why);
            }
        }
        // Any other key (patches, namePrefix, secretGenerator, helmCharts, …) changes what
        // is built from the files checked here.
        if let Some(doc) = have.as_object() {
            for key in doc.keys() {
                let known = [
                    "apiVersion",
                    "kind",
                    "metadata",
                    "resources",
                    "generators",
                    "files",
                ];
                if !known.contains(&key.as_str()) {
                    report.problem(
                        path,
                        Check::Layout,
                        format!("has `{key}`, which the export never writes: what it builds differs from the files checked"),
                    );
                }
            }
        }
        if have.get("metadata").and_then(|m| m.get("annotations"))
            != want.get("metadata").and_then(|m| m.get("annotations"))
        {
            report.problem(path, Check::Layout, "the KSOPS generator's annotations (its exec function) differ from what the export writes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Tree;

    fn tree(files: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        let mut t = Tree::default();
        for (p, c) in files {
            t.insert(p.to_string(), c.as_bytes().to_vec());
        }
        t.write_kustomizations();
        t.files
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: shop\n";

    #[test]
    fn check_clean_tree_has_no_finding() {
        let files = tree(&[
            ("_cluster/core/namespaces/shop.yaml", NS),
            ("shop/core/configmaps/a.yaml", CM),
        ]);
        let (report, candidates) = check(&files, Consumer::Flux, &SecretKeys::Nothing);
        assert!(!report.has_problems(), "{}", report.table());
        assert_eq!((report.objects, candidates.len()), (2, 2));
    }

    #[test]
    fn check_problem_table() {
        let other_ns = CM.replace("namespace: shop", "namespace: kube-system");
        // (case, mutation of the clean tree, expected reason fragment)
        type Mutation = Box<dyn Fn(&mut BTreeMap<String, Vec<u8>>)>;
        let cases: Vec<(&str, Mutation, &str)> = vec![
            (
                "unlisted file",
                Box::new(|f| {
                    f.insert(
                        "shop/core/configmaps/b.yaml".into(),
                        CM.replace("name: a", "name: b").into_bytes(),
                    );
                }),
                "does not list core/configmaps/b.yaml",
            ),
            (
                "listed file missing",
                Box::new(|f| {
                    f.remove("shop/core/configmaps/a.yaml");
                    f.insert(
                        "shop/core/configmaps/c.yaml".into(),
                        CM.replace("name: a", "name: c").into_bytes(),
                    );
                }),
                "lists core/configmaps/a.yaml under resources, which does not exist",
            ),
            (
                "kustomization missing",
                Box::new(|f| {
                    f.remove("shop/kustomization.yaml");
                }),
                "never applied",
            ),
            (
                "namespace mismatch",
                Box::new(move |f| {
                    f.insert(
                        "shop/core/configmaps/a.yaml".into(),
                        other_ns.clone().into_bytes(),
                    );
                }),
                "would land elsewhere",
            ),
            (
                "plaintext secret",
                Box::new(|f| {
                    f.insert(
                        "shop/core/secrets/s.yaml".into(),
                        b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: shop\n"
                            .to_vec(),
                    );
                }),
                "plaintext",
            ),
            (
                "kustomization builds something else",
                Box::new(|f| {
                    let k = String::from_utf8(f["shop/kustomization.yaml"].clone()).unwrap();
                    f.insert(
                        "shop/kustomization.yaml".into(),
                        format!("{k}namePrefix: x-\n").into_bytes(),
                    );
                }),
                "namePrefix",
            ),
            (
                "extra entry the export does not write",
                Box::new(|f| {
                    let k = String::from_utf8(f["shop/kustomization.yaml"].clone()).unwrap();
                    f.insert(
                        "shop/kustomization.yaml".into(),
                        k.replace("resources:\n", "resources:\n- extra.json\n")
                            .into_bytes(),
                    );
                    f.insert("shop/extra.json".into(), b"{}".to_vec());
                }),
                "which the export does not write",
            ),
            (
                "sops metadata on a plaintext value",
                Box::new(|f| {
                    f.insert(
                        "shop/core/secrets/s.sops.yaml".into(),
                        b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: shop\ndata:\n  password: czNjcjN0\nsops:\n  mac: x\n".to_vec(),
                    );
                }),
                "data.password is not encrypted",
            ),
            (
                "not yaml",
                Box::new(|f| {
                    f.insert("shop/core/configmaps/a.yaml".into(), b"a: [".to_vec());
                }),
                "not YAML",
            ),
        ];
        for (case, mutate, reason) in cases {
            let mut files = tree(&[
                ("_cluster/core/namespaces/shop.yaml", NS),
                ("shop/core/configmaps/a.yaml", CM),
            ]);
            mutate(&mut files);
            let (report, _) = check(&files, Consumer::Flux, &SecretKeys::Nothing);
            assert!(report.has_problems(), "{case}");
            assert!(
                report.findings.iter().any(|f| f.reason.contains(reason)),
                "{case}: {:?}",
                report.findings
            );
        }
    }

    #[test]
    fn check_secret_table() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let recipients =
            crate::sops::Recipients::from_list(std::slice::from_ref(&recipient)).unwrap();
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "shop"}, "type": "Opaque",
            "data": {"password": "czNjcjN0", "user": "YWRtaW4="}});
        let encrypted = crate::sops::encrypt(&secret, &recipients, jiff::Timestamp::now()).unwrap();
        // Drop one value: every other value still decrypts (Flux applies such a file), but
        // the MAC, computed over all values, no longer matches.
        let tampered: String = encrypted
            .lines()
            .filter(|l| !l.trim_start().starts_with("user:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(tampered, encrypted);
        let ids = Identities::from_identity(id.clone());
        let other_ids = Identities::from_identity(other.clone());
        let own = [recipient.clone()];
        let other_own = [other.to_public().to_string()];
        // (case, file, keys, verified)
        let cases: Vec<(&str, &str, SecretKeys<'_>, bool)> = vec![
            (
                "right identity",
                &encrypted,
                SecretKeys::Identity {
                    identities: &ids,
                    recipients: &own,
                },
                true,
            ),
            (
                "wrong identity",
                &encrypted,
                SecretKeys::Identity {
                    identities: &other_ids,
                    recipients: &other_own,
                },
                false,
            ),
            (
                "tampered",
                &tampered,
                SecretKeys::Identity {
                    identities: &ids,
                    recipients: &own,
                },
                false,
            ),
            (
                "recipients match",
                &encrypted,
                SecretKeys::Recipients(&own),
                true,
            ),
            (
                "recipients differ",
                &encrypted,
                SecretKeys::Recipients(&other_own),
                false,
            ),
            ("no key", &encrypted, SecretKeys::Nothing, false),
        ];
        for (case, file, keys, verified) in cases {
            let files = tree(&[
                ("_cluster/core/namespaces/shop.yaml", NS),
                ("shop/core/secrets/s.sops.yaml", file),
            ]);
            let (report, candidates) = check(&files, Consumer::Flux, &keys);
            assert_eq!(
                (!report.has_problems(), report.secrets_verified),
                (verified, usize::from(verified)),
                "{case}: {:?}",
                report.findings
            );
            let sent = candidates
                .iter()
                .find(|c| c.path.ends_with("s.sops.yaml"))
                .unwrap();
            assert_eq!(sent.object["data"]["password"], "e30=", "{case}");
            assert!(sent.object.get("sops").is_none(), "{case}");
        }
    }
}
