//! Secrets into the tree: encrypted in the SOPS format for the configured age recipients,
//! without churn. SOPS output is random (fresh data key and IVs), so whether a Secret
//! changed is decided by a keyed fingerprint kept in [`STATE_FILE`] beside the applied
//! directories, under a key that never enters git.
//!
//! A fingerprint is HMAC-SHA256 over the Secret's file path, its plaintext rendering, the
//! recipient set and the git blob id of the file written for it. The blob id binds the
//! fingerprint to the committed bytes: an unchanged Secret keeps its committed file byte
//! for byte only while that file is still the one the fingerprint was computed with. A
//! file replaced in the repository by someone who can push but has no fingerprint key —
//! re-encrypted to another recipient, or other values encrypted to ours — no longer
//! verifies and is rewritten, and that writer cannot compute a matching fingerprint for
//! their bytes. Putting back an earlier file together with its earlier fingerprint
//! verifies only while the plaintext and recipients are still the same, i.e. while that
//! file is still correct. A new recipient set changes every fingerprint, so everything is
//! re-encrypted at once.
//!
//! The state file (format 2):
//!
//! ```yaml
//! # <comment>
//! format: 2
//! secrets:
//!   shop/core/secrets/db.sops.yaml: hmac-sha256:<64 hex digits>
//! ```
//!
//! The MAC input is the tag `dr-syncer secret fingerprint v2` followed by the path, the
//! plaintext rendering, the recipients (one per line) and the raw 20-byte blob id, each
//! preceded by its length as a big-endian u64 so no two inputs can run together. A state
//! without `format: 2` — unreadable, or written by an earlier version whose HMAC covered
//! only plaintext and recipients — counts as no state: every Secret is re-encrypted once,
//! and the state written then holds from the next export on (a Continuous patch, which
//! only sees its own Secrets, asks for that full export instead).

use std::collections::BTreeMap;

use git2::Oid;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::sops::{self, Recipients};

use super::layout::{self, Tree};
use super::object::ExportedObject;
use super::render;
use super::summary::Summary;

/// Where fingerprints live (outside every applied path; Flux ignores it via `.sourceignore`).
pub const STATE_FILE: &str = ".dr-syncer/fingerprints.yaml";

/// The state format this version writes and trusts (see the module doc); any other state
/// is ignored, which re-encrypts every Secret once.
pub const STATE_FORMAT: u32 = 2;

/// Prefix of a stored fingerprint (the hex HMAC follows).
const FINGERPRINT_PREFIX: &str = "hmac-sha256:";

/// How Secrets are written.
pub struct SecretWriter<'a> {
    /// Recipients; empty means Secrets are skipped.
    pub recipients: Recipients,
    /// HMAC key of the fingerprints (32 random bytes kept outside git).
    pub fingerprint_key: &'a [u8],
    /// The previous output, whose unchanged files are reused.
    pub previous: &'a Tree,
}

/// The git blob id of a file's bytes (what git and [`crate::gitops`] snapshots name it by;
/// for a plain directory output, just a digest of the file). A Secret's fingerprint covers
/// it, binding the fingerprint to the committed file.
pub fn blob_id(bytes: &[u8]) -> Result<Oid, sops::SopsError> {
    Oid::hash_object(git2::ObjectType::Blob, bytes)
        .map_err(|e| sops::SopsError::Crypto(format!("git blob id of a Secret file: {e}")))
}

/// The keyed MAC of one Secret file (see the module doc for the input layout), ready to be
/// finalized into a new fingerprint or to verify a stored one.
fn fingerprint_mac(
    key: &[u8],
    path: &str,
    plaintext: &str,
    recipients: &[String],
    blob: Oid,
) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"dr-syncer secret fingerprint v2");
    let recipients = recipients.join("\n");
    for field in [
        path.as_bytes(),
        plaintext.as_bytes(),
        recipients.as_bytes(),
        blob.as_bytes(),
    ] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac
}

/// A stored fingerprint for a MAC: `hmac-sha256:` and the hex digest.
fn render_fingerprint(mac: Hmac<Sha256>) -> String {
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{FINGERPRINT_PREFIX}{hex}")
}

/// Whether `stored` is the fingerprint `mac` computes. The tag is compared in constant time
/// (`verify_slice`): stored fingerprints come from the repository, which others can write.
fn verifies(mac: Hmac<Sha256>, stored: &str) -> bool {
    let Some(hex) = stored.strip_prefix(FINGERPRINT_PREFIX) else {
        return false;
    };
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return false;
    }
    let tag: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    tag.is_some_and(|tag| mac.verify_slice(&tag).is_ok())
}

/// The state file's document (see the module doc).
#[derive(serde::Serialize, serde::Deserialize)]
struct StateDoc<S> {
    /// [`STATE_FORMAT`] when written by this version.
    format: u32,
    /// Fingerprint by Secret file path.
    secrets: S,
}

fn previous_fingerprints(previous: &Tree) -> BTreeMap<String, String> {
    previous
        .files
        .get(STATE_FILE)
        .and_then(|b| parse_state(b))
        .unwrap_or_default()
}

/// Fingerprints by path from the state file's bytes; `None` when the state is unreadable or
/// in another format (an earlier version's): no fingerprint of it can be trusted, so every
/// Secret is re-encrypted.
pub fn parse_state(bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    serde_saphyr::from_slice::<StateDoc<BTreeMap<String, String>>>(bytes)
        .ok()
        .filter(|doc| doc.format == STATE_FORMAT)
        .map(|doc| doc.secrets)
}

/// The state file's bytes for `state` (fingerprints by path), in [`STATE_FORMAT`].
pub fn render_state(state: &BTreeMap<String, String>) -> Result<Vec<u8>, sops::SopsError> {
    let doc = StateDoc {
        format: STATE_FORMAT,
        secrets: state,
    };
    Ok(format!(
        "# Keyed fingerprints of the Secrets (HMAC-SHA256 over path, plaintext, age recipients\n# and the committed file's git blob id; the key stays outside git).\n{}",
        crate::yaml::to_string(&doc)?
    )
    .into_bytes())
}

impl SecretWriter<'_> {
    /// Adds the Secrets among `objects` to `tree` (encrypted, or skipped without recipients)
    /// plus the state file, `.sops.yaml` and `.sourceignore`. A Secret's file in the previous
    /// output is kept only if its stored fingerprint verifies against those very bytes.
    pub fn write(
        &self,
        objects: &[ExportedObject],
        tree: &mut Tree,
        summary: &mut Summary,
    ) -> Result<(), sops::SopsError> {
        let old = previous_fingerprints(self.previous);
        let mut state = BTreeMap::new();
        for obj in objects.iter().filter(|o| o.is_secret()) {
            let counts = summary.kind(&obj.rt.qualified());
            if self.recipients.is_empty() {
                counts.secrets_skipped += 1;
                counts.exported -= 1;
                continue;
            }
            counts.secrets_encrypted += 1;
            let path = layout::object_path(&obj.rt, obj.namespace.as_deref(), &obj.name);
            let plaintext = render::render(&obj.value)?;
            let kept = match (self.previous.files.get(&path), old.get(&path)) {
                (Some(bytes), Some(stored))
                    if self.verifies(&path, &plaintext, blob_id(bytes)?, stored) =>
                {
                    Some((stored.clone(), bytes.clone()))
                }
                _ => None,
            };
            let (fp, content) = match kept {
                Some(kept) => kept,
                None => self.encrypt_new(obj, &path, &plaintext)?,
            };
            tree.insert(path.clone(), content);
            state.insert(path, fp);
        }
        for (path, content) in self.settings_files(&state)? {
            tree.insert(path, content);
        }
        Ok(())
    }

    /// The files a full export writes beside the Secrets: the state file (fingerprints
    /// `state` by path; none when empty), `.sops.yaml` for our recipients and the
    /// `.sourceignore` that keeps both away from Flux.
    pub fn settings_files(
        &self,
        state: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, Vec<u8>)>, sops::SopsError> {
        let mut files = Vec::new();
        if !state.is_empty() {
            files.push((STATE_FILE.into(), render_state(state)?));
        }
        if let Some(config) = self.sops_config() {
            files.push((SOPS_CONFIG.into(), config));
        }
        files.push((
            ".sourceignore".into(),
            b"# Not manifests: exporter state and sops settings.\n.dr-syncer/\n.sops.yaml\n"
                .to_vec(),
        ));
        Ok(files)
    }

    /// The `.sops.yaml` this writer's recipients produce (`None` without recipients).
    pub fn sops_config(&self) -> Option<Vec<u8>> {
        let recipients = self.recipients.strings();
        (!recipients.is_empty()).then(|| sops_config(&recipients).into_bytes())
    }

    /// One Secret at `path` for a patch: its fingerprint and, unless the committed file
    /// stays, its encrypted file. The committed file (blob id `committed`, `None` when
    /// absent) stays only if `old_fp`, the fingerprint stored for `path`, verifies against
    /// it; a patch knows blob ids without reading the files.
    pub fn encrypt_one(
        &self,
        obj: &ExportedObject,
        path: &str,
        old_fp: Option<&str>,
        committed: Option<Oid>,
    ) -> Result<(String, Option<Vec<u8>>), sops::SopsError> {
        let plaintext = render::render(&obj.value)?;
        if let (Some(stored), Some(blob)) = (old_fp, committed)
            && self.verifies(path, &plaintext, blob, stored)
        {
            return Ok((stored.to_string(), None));
        }
        let (fp, content) = self.encrypt_new(obj, path, &plaintext)?;
        Ok((fp, Some(content)))
    }

    /// Whether `stored` is the fingerprint of `path` holding `plaintext` for our
    /// recipients in the file with blob id `blob`.
    fn verifies(&self, path: &str, plaintext: &str, blob: Oid, stored: &str) -> bool {
        let recipients = self.recipients.strings();
        verifies(
            fingerprint_mac(self.fingerprint_key, path, plaintext, &recipients, blob),
            stored,
        )
    }

    /// A fresh encryption of `obj` and its fingerprint, computed over the new file's bytes
    /// so that the next export can tell whether the committed file is still this one.
    fn encrypt_new(
        &self,
        obj: &ExportedObject,
        path: &str,
        plaintext: &str,
    ) -> Result<(String, Vec<u8>), sops::SopsError> {
        let content =
            sops::encrypt(&obj.value, &self.recipients, jiff::Timestamp::now())?.into_bytes();
        let mac = fingerprint_mac(
            self.fingerprint_key,
            path,
            plaintext,
            &self.recipients.strings(),
            blob_id(&content)?,
        );
        Ok((render_fingerprint(mac), content))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::export::Registry;
    use crate::sops::Identities;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const DB: &str = "shop/core/secrets/db.sops.yaml";
    const API: &str = "shop/core/secrets/api.sops.yaml";

    fn secret(name: &str, password: &str) -> ExportedObject {
        ExportedObject {
            rt: Registry::builtin().lookup("v1", "Secret").unwrap().clone(),
            namespace: Some("shop".into()),
            name: name.into(),
            value: json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": name, "namespace": "shop"},
                          "data": {"password": password}}),
        }
    }

    /// An age key pair: the identity that decrypts and the recipient set to encrypt for.
    fn keys() -> (Identities, Recipients) {
        let identity = age::x25519::Identity::generate();
        let recipients = Recipients::from_list(&[identity.to_public().to_string()]).unwrap();
        (Identities::from_identity(identity), recipients)
    }

    /// One export of `objects` over `previous`, as `build_tree` runs it.
    fn export(objects: &[ExportedObject], previous: &Tree, recipients: &Recipients) -> Tree {
        let writer = SecretWriter {
            recipients: recipients.clone(),
            fingerprint_key: KEY,
            previous,
        };
        let mut tree = Tree::default();
        writer
            .write(objects, &mut tree, &mut Summary::default())
            .unwrap();
        tree
    }

    /// The fingerprint the previous version stored: HMAC over plaintext and recipients only.
    fn v1_fingerprint(plaintext: &str, recipients: &Recipients) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).unwrap();
        mac.update(plaintext.as_bytes());
        mac.update(b"\n--recipients--\n");
        mac.update(recipients.strings().join("\n").as_bytes());
        render_fingerprint(mac)
    }

    /// Asserts `file` is a fresh encryption of `obj` for exactly `recipients`.
    fn assert_ours(file: &[u8], obj: &ExportedObject, ours: &Identities, recipients: &Recipients) {
        let text = std::str::from_utf8(file).unwrap();
        assert_eq!(sops::decrypt(text, ours).unwrap(), obj.value);
        assert_eq!(sops::recipients_of(text).unwrap(), recipients.strings());
    }

    /// A change to the committed tree (the repository) between two exports.
    type Tamper<'a> = Box<dyn Fn(&mut Tree) + 'a>;

    #[test]
    fn write_committed_file_table() {
        let (ours, recipients) = keys();
        let (_, theirs) = keys();
        let objects = [secret("db", "czNjcjN0"), secret("api", "dG9rZW4=")];
        let base = export(&objects, &Tree::default(), &recipients);
        // The same Secrets exported once more from scratch: other ciphertext, other
        // fingerprints, all of them ours.
        let again = export(&objects, &Tree::default(), &recipients);
        let set_fp = |tree: &mut Tree, path: &str, fp: &str| {
            let mut state = parse_state(&tree.files[STATE_FILE]).unwrap();
            state.insert(path.into(), fp.into());
            tree.insert(STATE_FILE.into(), render_state(&state).unwrap());
        };
        let fp_in =
            |tree: &Tree, path: &str| parse_state(&tree.files[STATE_FILE]).unwrap()[path].clone();
        let encrypted = |obj: &ExportedObject, r: &Recipients| {
            sops::encrypt(&obj.value, r, jiff::Timestamp::now())
                .unwrap()
                .into_bytes()
        };
        let both =
            Recipients::from_list(&[recipients.strings(), theirs.strings()].concat()).unwrap();
        // (case, change to the repository, whether db's committed file must be kept)
        let cases: Vec<(&str, Tamper<'_>, bool)> = vec![
            ("untouched", Box::new(|_| {}), true),
            (
                "our earlier file put back with its fingerprint",
                Box::new(|t| {
                    t.insert(DB.into(), again.files[DB].clone());
                    set_fp(t, DB, &fp_in(&again, DB));
                }),
                true,
            ),
            (
                "replaced by the same Secret for another recipient",
                Box::new(|t| t.insert(DB.into(), encrypted(&objects[0], &theirs))),
                false,
            ),
            (
                "replaced by the same Secret for us and another recipient",
                Box::new(|t| t.insert(DB.into(), encrypted(&objects[0], &both))),
                false,
            ),
            (
                "replaced by other values for our recipient",
                Box::new(|t| {
                    t.insert(DB.into(), encrypted(&secret("db", "b3duZWQ="), &recipients))
                }),
                false,
            ),
            (
                "replaced by another encryption of ours",
                Box::new(|t| t.insert(DB.into(), again.files[DB].clone())),
                false,
            ),
            (
                "edited by one byte",
                Box::new(|t| {
                    let mut bytes = t.files[DB].clone();
                    bytes.push(b'\n');
                    t.insert(DB.into(), bytes);
                }),
                false,
            ),
            (
                "another Secret's file and fingerprint moved here",
                Box::new(|t| {
                    t.insert(DB.into(), t.files[API].clone());
                    set_fp(t, DB, &fp_in(t, API));
                }),
                false,
            ),
            (
                "fingerprint replaced",
                Box::new(|t| set_fp(t, DB, &format!("{FINGERPRINT_PREFIX}{}", "00".repeat(32)))),
                false,
            ),
            (
                "deleted",
                Box::new(|t| {
                    t.files.remove(DB);
                }),
                false,
            ),
        ];
        for (case, tamper, kept) in cases {
            let mut committed = base.clone();
            tamper(&mut committed);
            let out = export(&objects, &committed, &recipients);
            if kept {
                assert_eq!(
                    out.files[DB], committed.files[DB],
                    "{case}: kept byte for byte"
                );
                assert_eq!(out.files[STATE_FILE], committed.files[STATE_FILE], "{case}");
            } else {
                assert_ne!(
                    committed.files.get(DB),
                    Some(&out.files[DB]),
                    "{case}: rewritten"
                );
                assert_ours(&out.files[DB], &objects[0], &ours, &recipients);
            }
            // The untouched Secret stays as it was in every case.
            assert_eq!(out.files[API], base.files[API], "{case}: api");
            // The rewritten state holds: the next export changes nothing.
            let next = export(&objects, &out, &recipients);
            assert_eq!(next.files, out.files, "{case}: stable afterwards");
        }
    }

    #[test]
    fn write_old_format_state_reencrypts_once_then_stable() {
        let (ours, recipients) = keys();
        let objects = [secret("db", "czNjcjN0")];
        // What the previous version committed: the file and its plaintext-only fingerprint.
        let file = sops::encrypt(&objects[0].value, &recipients, jiff::Timestamp::now())
            .unwrap()
            .into_bytes();
        let fp = v1_fingerprint(&render::render(&objects[0].value).unwrap(), &recipients);
        let mut committed = Tree::default();
        committed.insert(DB.into(), file.clone());
        committed.insert(
            STATE_FILE.into(),
            format!("# Keyed fingerprints of the plaintext Secrets (HMAC-SHA256, key outside git).\nsecrets:\n  {DB}: {fp}\n").into_bytes(),
        );
        assert_eq!(
            parse_state(&committed.files[STATE_FILE]),
            None,
            "not trusted"
        );
        let first = export(&objects, &committed, &recipients);
        assert_ne!(first.files[DB], file, "re-encrypted once");
        assert_ours(&first.files[DB], &objects[0], &ours, &recipients);
        let state = parse_state(&first.files[STATE_FILE]).expect("the current format");
        assert_ne!(state[DB], fp);
        let second = export(&objects, &first, &recipients);
        assert_eq!(second.files, first.files, "then stable");
    }

    #[test]
    fn encrypt_one_committed_blob_table() {
        let (ours, recipients) = keys();
        let obj = secret("db", "czNjcjN0");
        let writer = SecretWriter {
            recipients: recipients.clone(),
            fingerprint_key: KEY,
            previous: &Tree::default(),
        };
        let (fp, file) = writer.encrypt_one(&obj, DB, None, None).unwrap();
        let file = file.expect("nothing committed: encrypted");
        let blob = blob_id(&file).unwrap();
        let other_blob = blob_id(b"other bytes").unwrap();
        // (case, stored fingerprint, committed blob id, whether the committed file stays)
        let cases = [
            (
                "fingerprint of the committed blob",
                Some(fp.as_str()),
                Some(blob),
                true,
            ),
            (
                "committed blob replaced",
                Some(fp.as_str()),
                Some(other_blob),
                false,
            ),
            ("committed file gone", Some(fp.as_str()), None, false),
            ("no fingerprint", None, Some(blob), false),
            (
                "fingerprint not ours",
                Some("hmac-sha256:00"),
                Some(blob),
                false,
            ),
        ];
        for (case, stored, committed, kept) in cases {
            let (new_fp, content) = writer.encrypt_one(&obj, DB, stored, committed).unwrap();
            match content {
                None => {
                    assert!(kept, "{case}: must be rewritten");
                    assert_eq!(new_fp, fp, "{case}");
                }
                Some(content) => {
                    assert!(!kept, "{case}: must be kept");
                    assert_ours(&content, &obj, &ours, &recipients);
                    // The new fingerprint verifies against the new file only.
                    let again = writer
                        .encrypt_one(&obj, DB, Some(&new_fp), Some(blob_id(&content).unwrap()))
                        .unwrap();
                    assert_eq!(again, (new_fp.clone(), None), "{case}");
                    let elsewhere = writer
                        .encrypt_one(&obj, DB, Some(&new_fp), Some(blob))
                        .unwrap();
                    assert!(elsewhere.1.is_some(), "{case}");
                }
            }
        }
    }

    #[test]
    fn parse_state_formats_table() {
        let state = BTreeMap::from([(DB.to_string(), format!("{FINGERPRINT_PREFIX}ab"))]);
        // (case, state file bytes, whether its fingerprints are trusted)
        let cases = [
            ("current", render_state(&state).unwrap(), true),
            (
                "format 1 (no format key)",
                format!("secrets:\n  {DB}: hmac-sha256:ab\n").into_bytes(),
                false,
            ),
            (
                "a later format",
                format!("format: 3\nsecrets:\n  {DB}: hmac-sha256:ab\n").into_bytes(),
                false,
            ),
            ("not YAML", b"\x00{[".to_vec(), false),
            ("empty", Vec::new(), false),
        ];
        for (case, bytes, trusted) in cases {
            let expected = trusted.then(|| state.clone());
            assert_eq!(parse_state(&bytes), expected, "{case}");
        }
    }
}
