//! Incremental export: the file changes one batch of changed objects makes to the last
//! commit, without re-reading the source or the other files. Continuous mode uses it for
//! the common case (a few objects changed); a change whose effect reaches beyond its own
//! file — a new namespace, another age recipient set — asks for a full export instead.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::builtin::HpaTargets;
use super::layout;
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
}

/// The patch for `changes`. `hpa` gives each source namespace's HPA targets; `secrets`
/// encrypts (without recipients Secrets are left out, as in a full export).
pub fn build(
    changes: &[Change],
    policy: &Policy,
    hpa: &dyn Fn(&str) -> HpaTargets,
    secrets: &SecretWriter<'_>,
    committed: &dyn Committed,
    summary: &mut Summary,
) -> Result<Patch, PatchError> {
    let read = |p: &str| committed.read(p).map_err(PatchError::Read);
    if read(secrets::SOPS_CONFIG)? != secrets.sops_config() {
        return Err(PatchError::NeedsFull("the age recipients changed".into()));
    }
    let old_state = read(secrets::STATE_FILE)?.map(|b| secrets::parse_state(&b));
    let mut state = old_state.clone().unwrap_or_default();
    let mut patch = Patch::new();
    for change in changes {
        let dest = policy.destination_for(&change.namespace);
        let ns_file = layout::object_path(&namespace_type(), None, &dest);
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
        if !obj.is_secret() {
            patch.insert(path, Some(render::render(&obj.value)?.into_bytes()));
        } else if secrets.recipients.is_empty() {
            patch.insert(path, None);
        } else {
            let (fp, content) = secrets.encrypt_one(&obj, state.get(&path))?;
            // An unchanged fingerprint keeps the committed file only if it is still there.
            let content = match content {
                Some(c) => Some(c),
                None if committed.contains(&path) => None,
                None => secrets.encrypt_one(&obj, None)?.1,
            };
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
    add_kustomizations(&mut patch, committed);
    Ok(patch)
}

/// Regenerated kustomizations for the tree after `patch` (removed where a directory went).
fn add_kustomizations(patch: &mut Patch, committed: &dyn Committed) {
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
    let generated = layout::kustomizations(after.iter().copied());
    let stale: Vec<String> = after
        .iter()
        .filter(|p| layout::is_kustomization(p) && !generated.contains_key(**p))
        .map(|p| p.to_string())
        .collect();
    for p in stale {
        patch.insert(p, None);
    }
    for (p, c) in generated {
        patch.insert(p, Some(c));
    }
}

fn namespace_type() -> ResourceType {
    super::Registry::builtin()
        .lookup("v1", "Namespace")
        .expect("built-in Namespace type")
        .clone()
}
