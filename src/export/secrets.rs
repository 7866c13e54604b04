//! Secrets into the tree: encrypted in the SOPS format for the configured age recipients,
//! without churn. SOPS output is random (fresh data key and IVs), so whether a Secret
//! changed is decided by a keyed fingerprint — HMAC-SHA256 over its plaintext rendering and
//! the recipient set, under a key that never enters git — kept in `.dr-syncer/` beside the
//! applied directories. An unchanged Secret keeps its committed file byte for byte; a new
//! recipient set changes every fingerprint, so everything is re-encrypted at once.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::sops::{self, Recipients};

use super::layout::{self, Tree};
use super::object::ExportedObject;
use super::render;
use super::summary::Summary;

/// Where fingerprints live (outside every applied path; Flux ignores it via `.sourceignore`).
pub const STATE_FILE: &str = ".dr-syncer/fingerprints.yaml";

/// How Secrets are written.
pub struct SecretWriter<'a> {
    /// Recipients; empty means Secrets are skipped.
    pub recipients: Recipients,
    /// HMAC key of the fingerprints (32 random bytes kept outside git).
    pub fingerprint_key: &'a [u8],
    /// The previous output, whose unchanged files are reused.
    pub previous: &'a Tree,
}

fn fingerprint(key: &[u8], plaintext: &str, recipients: &[String]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(plaintext.as_bytes());
    mac.update(b"\n--recipients--\n");
    mac.update(recipients.join("\n").as_bytes());
    let bytes = mac.finalize().into_bytes();
    format!(
        "hmac-sha256:{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn previous_fingerprints(previous: &Tree) -> BTreeMap<String, String> {
    previous
        .files
        .get(STATE_FILE)
        .map(|b| parse_state(b))
        .unwrap_or_default()
}

/// Fingerprints by path from the state file's bytes (unreadable state = none: re-encrypt).
pub fn parse_state(bytes: &[u8]) -> BTreeMap<String, String> {
    serde_saphyr::from_slice::<BTreeMap<String, BTreeMap<String, String>>>(bytes)
        .ok()
        .and_then(|mut m| m.remove("secrets"))
        .unwrap_or_default()
}

/// The state file's bytes for `state` (fingerprints by path).
pub fn render_state(state: &BTreeMap<String, String>) -> Result<Vec<u8>, sops::SopsError> {
    let doc = BTreeMap::from([("secrets", state)]);
    Ok(format!(
        "# Keyed fingerprints of the plaintext Secrets (HMAC-SHA256, key outside git).\n{}",
        crate::yaml::to_string(&doc)?
    )
    .into_bytes())
}

impl SecretWriter<'_> {
    /// Adds the Secrets among `objects` to `tree` (encrypted, or skipped without recipients)
    /// plus the state file, `.sops.yaml` and `.sourceignore`.
    pub fn write(
        &self,
        objects: &[ExportedObject],
        tree: &mut Tree,
        summary: &mut Summary,
    ) -> Result<(), sops::SopsError> {
        let recipients = self.recipients.strings();
        let old = previous_fingerprints(self.previous);
        let mut state = BTreeMap::new();
        let now = jiff::Timestamp::now();
        for obj in objects.iter().filter(|o| o.is_secret()) {
            let counts = summary.kind(&obj.rt.qualified());
            if self.recipients.is_empty() {
                counts.secrets_skipped += 1;
                counts.exported -= 1;
                continue;
            }
            counts.secrets_encrypted += 1;
            let path = layout::object_path(&obj.rt, obj.namespace.as_deref(), &obj.name);
            let fp = fingerprint(
                self.fingerprint_key,
                &render::render(&obj.value)?,
                &recipients,
            );
            let reused = (old.get(&path) == Some(&fp))
                .then(|| self.previous.files.get(&path))
                .flatten();
            let content = match reused {
                Some(bytes) => bytes.clone(),
                None => sops::encrypt(&obj.value, &self.recipients, now)?.into_bytes(),
            };
            tree.insert(path.clone(), content);
            state.insert(path, fp);
        }
        if !state.is_empty() {
            tree.insert(STATE_FILE.into(), render_state(&state)?);
        }
        if !recipients.is_empty() {
            tree.insert(SOPS_CONFIG.into(), sops_config(&recipients).into_bytes());
        }
        tree.insert(
            ".sourceignore".into(),
            b"# Not manifests: exporter state and sops settings.\n.dr-syncer/\n.sops.yaml\n"
                .to_vec(),
        );
        Ok(())
    }

    /// The `.sops.yaml` this writer's recipients produce (`None` without recipients).
    pub fn sops_config(&self) -> Option<Vec<u8>> {
        let recipients = self.recipients.strings();
        (!recipients.is_empty()).then(|| sops_config(&recipients).into_bytes())
    }

    /// One Secret's fingerprint and, unless it equals `old_fp` (the committed file stays),
    /// its encrypted file.
    pub fn encrypt_one(
        &self,
        obj: &ExportedObject,
        old_fp: Option<&String>,
    ) -> Result<(String, Option<Vec<u8>>), sops::SopsError> {
        let fp = fingerprint(
            self.fingerprint_key,
            &render::render(&obj.value)?,
            &self.recipients.strings(),
        );
        if old_fp == Some(&fp) {
            return Ok((fp, None));
        }
        let content = sops::encrypt(&obj.value, &self.recipients, jiff::Timestamp::now())?;
        Ok((fp, Some(content.into_bytes())))
    }
}

/// The sops settings file at the mapping's root.
pub const SOPS_CONFIG: &str = ".sops.yaml";

/// Creation rules so people editing with the sops CLI encrypt the way dr-syncer does.
fn sops_config(recipients: &[String]) -> String {
    format!(
        "# Written by dr-syncer: `sops edit <file>.sops.yaml` encrypts like the exporter.\ncreation_rules:\n- path_regex: \\.sops\\.yaml$\n  encrypted_regex: ^(data|stringData)$\n  age: >-\n    {}\n",
        recipients.join(",\n    ")
    )
}
