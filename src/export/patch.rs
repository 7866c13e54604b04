//! Incremental export: the file changes one batch of changed objects makes to the last
//! commit, without re-reading the source or the other files. Continuous mode uses it for
//! the common case (a few objects changed); a change whose effect reaches beyond its own
//! file — a new namespace, another age recipient set — asks for a full export instead.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::builtin::HpaTargets;
use super::layout::{self, Consumer};
use super::object::{Origin, SourceObject};
use super::secrets::{self, SecretWriter};
use super::{Policy, ResourceType, Summary, render};

/// File changes relative to a mapping's path: new content, or `None` to delete.
pub type Patch = BTreeMap<String, Option<Vec<u8>>>;

/// One source object that changed since the last sync.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its type.
    pub rt: ResourceType,
    /// Source namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Its latest state, `None` once deleted.
    pub object: Option<Value>,
}

/// Why a patch could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The change reaches beyond its own file; run a full export.
    #[error("needs a full export: {0}")]
    NeedsFull(String),
    /// Reading the committed state failed.
    #[error("reading the last commit: {0}")]
    Read(String),
    /// Encryption failed.
    #[error(transparent)]
    Sops(#[from] crate::sops::SopsError),
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] crate::yaml::RenderError),
}

/// The last commit's files, as far as a patch needs them.
pub trait Committed {
    /// Every file path (relative to the mapping's path).
    fn paths(&self) -> Box<dyn Iterator<Item = &str> + '_>;
    /// Whether `path` exists.
    fn contains(&self, path: &str) -> bool;
    /// The content of `path`, if present.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, String>;
    /// The git blob id of `path`, if present. A Secret's committed file is kept only if its
    /// fingerprint verifies against this id. The default hashes what [`Committed::read`]
    /// returns; an implementation that lists blob ids may answer without reading.
    fn blob_id(&self, path: &str) -> Result<Option<git2::Oid>, String> {
        self.read(path)?
            .map(|bytes| secrets::blob_id(&bytes).map_err(|e| e.to_string()))
            .transpose()
    }
}

/// The patch for `changes`. `hpa` gives each source namespace's HPA targets; `secrets`
/// encrypts (without recipients Secrets are left out, as in a full export).
pub fn build(
    changes: &[Change],
    policy: &Policy,
    hpa: &dyn Fn(&str) -> HpaTargets,
    secrets: &SecretWriter<'_>,
    committed: &dyn Committed,
    consumer: Consumer,
    summary: &mut Summary,
) -> Result<Patch, PatchError> {
    let read = |p: &str| committed.read(p).map_err(PatchError::Read);
    if read(secrets::SOPS_CONFIG)? != secrets.sops_config() {
        return Err(PatchError::NeedsFull("the age recipients changed".into()));
    }
    // A state this version cannot trust (an earlier format) re-encrypts every Secret once;
    // only a full export does that for the Secrets outside this batch.
    let old_state = match read(secrets::STATE_FILE)? {
        Some(bytes) => Some(secrets::parse_state(&bytes).ok_or_else(|| {
            PatchError::NeedsFull("the Secret fingerprints are in another format".into())
        })?),
        None => None,
    };
    let mut state = old_state.clone().unwrap_or_default();
    let mut patch = Patch::new();
    let namespaces = super::Registry::builtin_shared()
        .lookup("v1", "Namespace")
        .expect("built-in Namespace type");
    for change in changes {
        let dest = policy.destination_for(&change.namespace);
        let ns_file = layout::object_path(namespaces, None, &dest);
        if !committed.contains(&ns_file) {
            return Err(PatchError::NeedsFull(format!(
                "namespace {dest} is not exported yet"
            )));
        }
        let path = layout::object_path(&change.rt, Some(&dest), &change.name);
        let exported = change.object.clone().and_then(|value| {
            let obj = SourceObject {
                rt: change.rt.clone(),
                value,
                origin: Origin::Live,
            };
            let targets = hpa(&change.namespace);
            super::process_object(obj, &change.namespace, &dest, policy, &targets, summary)
        });
        let Some(obj) = exported else {
            state.remove(&path);
            patch.insert(path, None);
            continue;
        };
        // A custom resource needs its CRD on the DR cluster; only a full export reads it.
        // (A type outside the built-in table without a CRD — an aggregated API — takes the
        // full export each time: slower, never wrong.)
        if policy.export_crds
            && !change.rt.group.is_empty()
            && super::Registry::builtin_shared()
                .lookup(&change.rt.api_version(), &change.rt.kind)
                .is_none()
            && !committed.contains(&super::crds::crd_path(&change.rt))
        {
            return Err(PatchError::NeedsFull(format!(
                "the CustomResourceDefinition of {} is not exported yet",
                change.rt.qualified()
            )));
        }
        if !obj.is_secret() {
            patch.insert(path, Some(render::render(&obj.value)?.into_bytes()));
        } else if secrets.recipients.is_empty() {
            patch.insert(path, None);
        } else {
            // The committed file stays only if the stored fingerprint was computed with
            // its very bytes (a file replaced in the repository is rewritten).
            let blob = committed.blob_id(&path).map_err(PatchError::Read)?;
            let stored = state.get(&path).map(String::as_str);
            let (fp, content) = secrets.encrypt_one(&obj, &path, stored, blob)?;
            if let Some(c) = content {
                patch.insert(path.clone(), Some(c));
            }
            state.insert(path, fp);
        }
    }
    if old_state.unwrap_or_default() != state {
        let bytes = (!state.is_empty())
            .then(|| secrets::render_state(&state))
            .transpose()?;
        patch.insert(secrets::STATE_FILE.into(), bytes);
    }
    add_kustomizations(&mut patch, committed, consumer);
    Ok(patch)
}

/// Regenerated kustomizations for the tree after `patch` (removed where a directory went).
fn add_kustomizations(patch: &mut Patch, committed: &dyn Committed, consumer: Consumer) {
    let after: BTreeSet<&str> = committed
        .paths()
        .filter(|p| !matches!(patch.get(*p), Some(None)))
        .chain(
            patch
                .iter()
                .filter(|(_, c)| c.is_some())
                .map(|(p, _)| p.as_str()),
        )
        .collect();
    let generated = layout::kustomizations(after.iter().copied(), consumer);
    let stale: Vec<String> = after
        .iter()
        .filter(|p| layout::is_generated(p) && !generated.contains_key(**p))
        .map(|p| p.to_string())
        .collect();
    for p in stale {
        patch.insert(p, None);
    }
    for (p, c) in generated {
        patch.insert(p, Some(c));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::export::{self, NamespaceInput, Registry, Tree};
    use crate::sops::Recipients;

    impl Committed for Tree {
        fn paths(&self) -> Box<dyn Iterator<Item = &str> + '_> {
            Box::new(self.files.keys().map(String::as_str))
        }
        fn contains(&self, path: &str) -> bool {
            self.files.contains_key(path)
        }
        fn read(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.files.get(path).cloned())
        }
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn object(v: serde_json::Value) -> SourceObject {
        let rt = Registry::builtin()
            .lookup(
                v["apiVersion"].as_str().unwrap(),
                v["kind"].as_str().unwrap(),
            )
            .unwrap()
            .clone();
        SourceObject {
            rt,
            value: v,
            origin: Origin::Live,
        }
    }

    fn cm(name: &str, data: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "shop", "uid": "u"}, "data": {"k": data}})
    }

    fn secret(name: &str, data: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"}, "type": "Opaque", "data": {"k": data}})
    }

    fn deployment(name: &str, replicas: u32) -> serde_json::Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    }

    fn full(
        objects: &[serde_json::Value],
        previous: &Tree,
        recipients: &Recipients,
        consumer: Consumer,
    ) -> Tree {
        let input = NamespaceInput {
            name: "shop".into(),
            object: Some(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            ),
            objects: objects.iter().cloned().map(object).collect(),
        };
        let mut summary = Summary::default();
        let exported = export::process(
            vec![input],
            &Policy::default(),
            &Registry::builtin(),
            &mut summary,
        );
        let writer = SecretWriter {
            recipients: recipients.clone(),
            fingerprint_key: KEY,
            previous,
        };
        export::build_tree(&exported, Some(&writer), consumer, &mut summary).unwrap()
    }

    fn apply(tree: &Tree, patch: &Patch) -> Tree {
        let mut out = tree.clone();
        for (p, c) in patch {
            match c {
                Some(c) => out.files.insert(p.clone(), c.clone()),
                None => out.files.remove(p),
            };
        }
        out
    }

    /// The patched tree must be what a full export of the new state writes; Secrets'
    /// ciphertext is random, and so are their fingerprints (they cover the file's blob id),
    /// so those files are compared by presence only and the state file by its paths.
    fn comparable(tree: &Tree) -> BTreeMap<String, Option<Vec<u8>>> {
        tree.files
            .iter()
            .map(|(p, c)| {
                if p == secrets::STATE_FILE {
                    let paths: Vec<String> = secrets::parse_state(c)
                        .expect("current state format")
                        .into_keys()
                        .collect();
                    return (p.clone(), Some(paths.join("\n").into_bytes()));
                }
                let keep = !p.ends_with(".sops.yaml") || p == secrets::SOPS_CONFIG;
                (p.clone(), keep.then(|| c.clone()))
            })
            .collect()
    }

    /// (case, objects after, changes as (object, deleted?))
    type Case = (
        &'static str,
        Vec<serde_json::Value>,
        Vec<(serde_json::Value, bool)>,
    );

    #[test]
    fn patch_equals_full_export_table() {
        let recipients =
            Recipients::from_list(&[age::x25519::Identity::generate().to_public().to_string()])
                .unwrap();
        let before = vec![
            cm("a", "1"),
            cm("b", "1"),
            secret("s", "MQ=="),
            deployment("web", 3),
        ];
        // (case, objects after, changes as (object, deleted))
        let cases: Vec<Case> = vec![
            (
                "update",
                vec![
                    cm("a", "2"),
                    cm("b", "1"),
                    secret("s", "MQ=="),
                    deployment("web", 3),
                ],
                vec![(cm("a", "2"), false)],
            ),
            (
                "create",
                vec![
                    cm("a", "1"),
                    cm("b", "1"),
                    cm("c", "1"),
                    secret("s", "MQ=="),
                    deployment("web", 3),
                ],
                vec![(cm("c", "1"), false)],
            ),
            (
                "delete",
                vec![cm("a", "1"), secret("s", "MQ=="), deployment("web", 3)],
                vec![(cm("b", "1"), true)],
            ),
            (
                "delete the last of a kind",
                vec![cm("a", "1"), cm("b", "1"), secret("s", "MQ==")],
                vec![(deployment("web", 3), true)],
            ),
            (
                "secret changed",
                vec![
                    cm("a", "1"),
                    cm("b", "1"),
                    secret("s", "Mg=="),
                    deployment("web", 3),
                ],
                vec![(secret("s", "Mg=="), false)],
            ),
            (
                "secret created and deleted",
                vec![
                    cm("a", "1"),
                    cm("b", "1"),
                    secret("t", "Mw=="),
                    deployment("web", 3),
                ],
                vec![(secret("s", "MQ=="), true), (secret("t", "Mw=="), false)],
            ),
            (
                "replicas changed",
                vec![
                    cm("a", "1"),
                    cm("b", "1"),
                    secret("s", "MQ=="),
                    deployment("web", 5),
                ],
                vec![(deployment("web", 5), false)],
            ),
            (
                "ignore label added",
                vec![cm("b", "1"), secret("s", "MQ=="), deployment("web", 3)],
                vec![(
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "shop", "labels": {"dr-syncer.io/ignore": "true"}}, "data": {"k": "1"}}),
                    false,
                )],
            ),
            (
                "object named kustomization",
                vec![
                    cm("a", "1"),
                    cm("b", "1"),
                    cm("kustomization", "x"),
                    secret("s", "MQ=="),
                    deployment("web", 3),
                ],
                vec![(cm("kustomization", "x"), false)],
            ),
        ];
        for consumer in [Consumer::Flux, Consumer::ArgoCd] {
            let base = full(&before, &Tree::default(), &recipients, consumer);
            for (case, after, changes) in cases.clone() {
                let changes: Vec<Change> = changes
                    .into_iter()
                    .map(|(v, deleted)| {
                        let o = object(v);
                        Change {
                            rt: o.rt.clone(),
                            namespace: "shop".into(),
                            name: o.name().to_string(),
                            object: (!deleted).then_some(o.value),
                        }
                    })
                    .collect();
                let writer = SecretWriter {
                    recipients: recipients.clone(),
                    fingerprint_key: KEY,
                    previous: &Tree::default(),
                };
                let patch = build(
                    &changes,
                    &Policy::default(),
                    &|_| HpaTargets::default(),
                    &writer,
                    &base,
                    consumer,
                    &mut Summary::default(),
                )
                .unwrap_or_else(|e| panic!("{case}: {e}"));
                let patched = apply(&base, &patch);
                let expected = full(&after, &base, &recipients, consumer);
                assert_eq!(
                    comparable(&patched),
                    comparable(&expected),
                    "{case} ({consumer:?})"
                );
                // And the patch's fingerprints hold: a full export over the patched tree
                // keeps every file byte for byte.
                assert_eq!(
                    full(&after, &patched, &recipients, consumer).files,
                    patched.files,
                    "{case} ({consumer:?}): a full export afterwards changes nothing"
                );
            }
        }
    }

    #[test]
    fn patch_asks_for_a_full_export_table() {
        let recipients =
            Recipients::from_list(&[age::x25519::Identity::generate().to_public().to_string()])
                .unwrap();
        let base = full(
            &[cm("a", "1")],
            &Tree::default(),
            &recipients,
            Consumer::Flux,
        );
        let other =
            Recipients::from_list(&[age::x25519::Identity::generate().to_public().to_string()])
                .unwrap();
        let elsewhere = Change {
            namespace: "billing".into(),
            ..change_of(cm("x", "1"))
        };
        // A Coupon (custom resource) whose CRD file is not in the last commit.
        let mut coupon = Registry::builtin();
        let coupon = coupon
            .add_crd(
                &json!({"spec": {"group": "shop.example.com", "scope": "Namespaced",
                "names": {"kind": "Coupon", "plural": "coupons"}, "versions": [{"name": "v1"}]}}),
            )
            .unwrap();
        let new_custom = Change {
            rt: coupon,
            namespace: "shop".into(),
            name: "black-friday".into(),
            object: Some(
                json!({"apiVersion": "shop.example.com/v1", "kind": "Coupon",
                "metadata": {"name": "black-friday", "namespace": "shop"}}),
            ),
        };
        let cases = [
            (
                "custom resource without its CRD",
                recipients.clone(),
                new_custom,
                "CustomResourceDefinition of coupons.shop.example.com",
            ),
            (
                "recipients changed",
                other,
                change_of(cm("a", "2")),
                "age recipients",
            ),
            (
                "new namespace",
                recipients.clone(),
                elsewhere,
                "namespace billing",
            ),
        ];
        for (case, recipients, change, expected) in cases {
            let writer = SecretWriter {
                recipients,
                fingerprint_key: KEY,
                previous: &Tree::default(),
            };
            let err = build(
                &[change],
                &Policy::default(),
                &|_| HpaTargets::default(),
                &writer,
                &base,
                Consumer::Flux,
                &mut Summary::default(),
            )
            .unwrap_err();
            assert!(
                matches!(&err, PatchError::NeedsFull(why) if why.contains(expected)),
                "{case}: {err}"
            );
        }
    }

    #[test]
    fn build_secret_committed_file_table() {
        let identity = age::x25519::Identity::generate();
        let recipients = Recipients::from_list(&[identity.to_public().to_string()]).unwrap();
        let ours = crate::sops::Identities::from_identity(identity);
        let theirs =
            Recipients::from_list(&[age::x25519::Identity::generate().to_public().to_string()])
                .unwrap();
        let objects = [cm("a", "1"), secret("s", "MQ==")];
        let base = full(&objects, &Tree::default(), &recipients, Consumer::Flux);
        let path = "shop/core/secrets/s.sops.yaml";
        let encrypted = |r: &Recipients| {
            crate::sops::encrypt(&secret("s", "MQ=="), r, jiff::Timestamp::now())
                .unwrap()
                .into_bytes()
        };
        let writer = SecretWriter {
            recipients: recipients.clone(),
            fingerprint_key: KEY,
            previous: &Tree::default(),
        };
        // The Secret comes by unchanged (a resync, or a change the cleaning drops); the
        // repository's file is (case) left alone or replaced by a hostile writer.
        let cases = [
            ("untouched", None, false),
            (
                "replaced for another recipient",
                Some(encrypted(&theirs)),
                true,
            ),
            (
                "replaced by another encryption for us",
                Some(encrypted(&recipients)),
                true,
            ),
        ];
        for (case, replacement, rewritten) in cases {
            let mut committed = base.clone();
            if let Some(bytes) = replacement {
                committed.insert(path.into(), bytes);
            }
            let patch = build(
                &[change_of(secret("s", "MQ=="))],
                &Policy::default(),
                &|_| HpaTargets::default(),
                &writer,
                &committed,
                Consumer::Flux,
                &mut Summary::default(),
            )
            .unwrap_or_else(|e| panic!("{case}: {e}"));
            if !rewritten {
                assert!(!patch.contains_key(path), "{case}: the file stays");
                assert!(!patch.contains_key(secrets::STATE_FILE), "{case}");
                continue;
            }
            let file = patch[path].clone().expect("rewritten");
            assert_ne!(Some(&file), committed.files.get(path), "{case}");
            let text = String::from_utf8(file).unwrap();
            assert_eq!(
                crate::sops::recipients_of(&text).unwrap(),
                recipients.strings(),
                "{case}"
            );
            let plain = crate::sops::decrypt(&text, &ours).unwrap();
            assert_eq!(plain["data"], json!({"k": "MQ=="}), "{case}");
            // A full export over the patched tree keeps what the patch wrote, byte for byte.
            let patched = apply(&committed, &patch);
            let expected = full(&objects, &patched, &recipients, Consumer::Flux);
            assert_eq!(patched.files, expected.files, "{case}");
        }

        // Fingerprints from an earlier version cannot be trusted: a full export re-encrypts.
        let mut committed = base.clone();
        committed.insert(
            secrets::STATE_FILE.into(),
            format!("secrets:\n  {path}: hmac-sha256:00\n").into_bytes(),
        );
        let err = build(
            &[change_of(secret("s", "MQ=="))],
            &Policy::default(),
            &|_| HpaTargets::default(),
            &writer,
            &committed,
            Consumer::Flux,
            &mut Summary::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, PatchError::NeedsFull(why) if why.contains("fingerprints")),
            "{err}"
        );
    }

    fn change_of(v: serde_json::Value) -> Change {
        let o = object(v);
        Change {
            rt: o.rt.clone(),
            namespace: "shop".into(),
            name: o.name().to_string(),
            object: Some(o.value),
        }
    }
}
