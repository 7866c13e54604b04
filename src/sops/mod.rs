//! Secrets in the SOPS format, encrypted for age X25519 recipients, readable by the `sops`
//! CLI, Flux's kustomize-controller and KSOPS.
//!
//! The format (getsops/sops): a fresh 32-byte data key per file; every leaf whose path has a
//! component matching `encrypted_regex` (`^(data|stringData)$`) is AES-256-GCM encrypted
//! with a 32-byte IV and the path (`data:password:`) as AAD; a SHA-512 MAC over *all* leaves
//! in document order (list indices are not part of paths) is encrypted with `lastmodified`
//! as AAD; the data key is wrapped for each recipient as an armored age file of the raw 32
//! bytes. We write the format ourselves; the `sops` binary is only a test peer.

mod cipher;
pub mod keys;

use std::io::{Read, Write};

use zeroize::Zeroizing;

use sha2::{Digest, Sha512};

use crate::export::render::Node;

pub use keys::{Identities, Recipients};

/// The `encrypted_regex` we write (Flux's documented choice).
pub const ENCRYPTED_REGEX: &str = "^(data|stringData)$";
/// The sops format version we write (the version our interop tests run against).
pub const SOPS_VERSION: &str = "3.13.3";

/// Errors of encryption and decryption.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    /// The OS random generator failed.
    #[error("random generator: {0}")]
    Random(String),
    /// An encryption primitive failed.
    #[error("{0}")]
    Crypto(String),
    /// The document is not in the expected shape.
    #[error("not a SOPS document: {0}")]
    Format(String),
    /// The MAC or a value does not verify.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// No identity opens the data key.
    #[error("none of the given age identities can decrypt this file (recipients: {0})")]
    NoIdentity(String),
    /// The document uses a feature we do not read.
    #[error("unsupported SOPS feature: {0}")]
    Unsupported(String),
    /// Rendering the YAML failed.
    #[error(transparent)]
    Render(#[from] crate::yaml::RenderError),
}

/// Whether a path (map keys from the root) is encrypted: some component matches
/// `^(data|stringData)$`, as sops tests every component.
fn path_encrypted(path: &[String]) -> bool {
    path.iter().any(|k| k == "data" || k == "stringData")
}

/// sops's `ToBytes`: the bytes a leaf contributes to the MAC and encrypts.
fn leaf_bytes(node: &Node) -> Option<(Vec<u8>, cipher::ValueType)> {
    use cipher::ValueType as T;
    Some(match node {
        Node::Str(s) => (s.as_bytes().to_vec(), T::Str),
        Node::Bool(b) => (
            (if *b { "True" } else { "False" }).as_bytes().to_vec(),
            T::Bool,
        ),
        Node::Num(n) if n.is_i64() || n.is_u64() => (n.to_string().into_bytes(), T::Int),
        Node::Num(n) => (
            format_float(n.as_f64().unwrap_or(0.0)).into_bytes(),
            T::Float,
        ),
        _ => return None,
    })
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: shortest round-tripping decimal, no exponent.
fn format_float(f: f64) -> String {
    format!("{f}")
}

fn aad(path: &[String]) -> Vec<u8> {
    let mut s = path.join(":");
    s.push(':');
    s.into_bytes()
}

/// A visitor of leaves: gets the path (map keys from the root) and the leaf.
type LeafFn<'a> = dyn FnMut(&[String], &mut Node) -> Result<(), SopsError> + 'a;

/// Walks leaves in document order; `f` gets the path and the leaf and may replace it.
fn walk(node: &mut Node, path: &mut Vec<String>, f: &mut LeafFn<'_>) -> Result<(), SopsError> {
    match node {
        Node::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                path.push(k.clone());
                walk(v, path, f)?;
                path.pop();
            }
            Ok(())
        }
        // List indices are not part of sops paths.
        Node::Seq(items) => items.iter_mut().try_for_each(|v| walk(v, path, f)),
        leaf => f(path, leaf),
    }
}

/// Drops nulls: sops has no encoding for them in a MAC, and Secrets never need them.
fn drop_nulls(node: &mut Node) {
    match node {
        Node::Map(m) => {
            m.retain(|(_, v)| !matches!(v, Node::Null));
            m.iter_mut().for_each(|(_, v)| drop_nulls(v));
        }
        Node::Seq(s) => {
            s.retain(|v| !matches!(v, Node::Null));
            s.iter_mut().for_each(drop_nulls);
        }
        _ => {}
    }
}

/// Encrypts an object (a Secret) for `recipients` and renders the SOPS YAML document.
pub fn encrypt(
    obj: &serde_json::Value,
    recipients: &Recipients,
    now: jiff::Timestamp,
) -> Result<String, SopsError> {
    let mut doc = Node::canonical(obj);
    drop_nulls(&mut doc);
    if doc.get("sops").is_some() {
        return Err(SopsError::Format(
            "the object already has a top-level `sops` key".into(),
        ));
    }
    // The data key is wiped from memory when it goes out of scope.
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *key).map_err(|e| SopsError::Random(e.to_string()))?;
    let mut mac = Sha512::new();
    walk(&mut doc, &mut Vec::new(), &mut |path, leaf| {
        let Some((bytes, kind)) = leaf_bytes(leaf) else {
            return Ok(());
        };
        mac.update(&bytes);
        if path_encrypted(path) && !bytes.is_empty() {
            *leaf = Node::Str(cipher::encrypt(&key, &bytes, &aad(path), kind)?);
        }
        Ok(())
    })?;
    let lastmodified = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mac_hex: String = mac.finalize().iter().map(|b| format!("{b:02X}")).collect();
    let mac_enc = cipher::encrypt(
        &key,
        mac_hex.as_bytes(),
        lastmodified.as_bytes(),
        cipher::ValueType::Str,
    )?;
    let mut age_entries = Vec::new();
    for r in recipients.iter() {
        age_entries.push(Node::Map(vec![
            ("recipient".into(), Node::Str(r.to_string())),
            ("enc".into(), Node::Str(wrap_key(&key, r)?)),
        ]));
    }
    // Keys sorted by name, as sops 3.13 writes them.
    let metadata = Node::Map(vec![
        ("age".into(), Node::Seq(age_entries)),
        ("encrypted_regex".into(), Node::Str(ENCRYPTED_REGEX.into())),
        ("lastmodified".into(), Node::Str(lastmodified)),
        ("mac".into(), Node::Str(mac_enc)),
        ("version".into(), Node::Str(SOPS_VERSION.into())),
    ]);
    if let Node::Map(entries) = &mut doc {
        entries.push(("sops".into(), metadata));
    }
    Ok(crate::yaml::to_string(&doc)?)
}

fn wrap_key(key: &[u8; 32], recipient: &age::x25519::Recipient) -> Result<String, SopsError> {
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|e| SopsError::Crypto(format!("age: {e}")))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| SopsError::Crypto(format!("age armor: {e}")))?;
    let mut w = encryptor
        .wrap_output(armor)
        .map_err(|e| SopsError::Crypto(format!("age: {e}")))?;
    w.write_all(key)
        .map_err(|e| SopsError::Crypto(format!("age: {e}")))?;
    w.finish()
        .and_then(|a| a.finish())
        .map_err(|e| SopsError::Crypto(format!("age: {e}")))?;
    String::from_utf8(out).map_err(|_| SopsError::Crypto("age armor is not UTF-8".into()))
}

fn unwrap_key(enc: &str, identities: &Identities) -> Option<Zeroizing<[u8; 32]>> {
    let reader = age::armor::ArmoredReader::new(enc.as_bytes());
    let decryptor = age::Decryptor::new(reader).ok()?;
    let mut r = decryptor.decrypt(identities.iter()).ok()?;
    let mut key = Zeroizing::new(Vec::new());
    r.read_to_end(&mut key).ok()?;
    let mut out = Zeroizing::new([0u8; 32]);
    if key.len() != out.len() {
        return None;
    }
    out.copy_from_slice(&key);
    Some(out)
}

/// The recipients a SOPS document is encrypted for (from `sops.age[].recipient`).
pub fn recipients_of(yaml: &str) -> Result<Vec<String>, SopsError> {
    let doc: Node = serde_saphyr::from_str(yaml).map_err(|e| SopsError::Format(e.to_string()))?;
    let sops = doc
        .get("sops")
        .ok_or_else(|| SopsError::Format("no `sops` metadata".into()))?;
    Ok(match sops.get("age") {
        Some(Node::Seq(entries)) => entries
            .iter()
            .filter_map(|e| match e.get("recipient") {
                Some(Node::Str(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// Decrypts a SOPS YAML document, verifying the MAC; returns the plaintext object.
pub fn decrypt(yaml: &str, identities: &Identities) -> Result<serde_json::Value, SopsError> {
    let mut doc: Node =
        serde_saphyr::from_str(yaml).map_err(|e| SopsError::Format(e.to_string()))?;
    let Node::Map(entries) = &mut doc else {
        return Err(SopsError::Format("top level is not a map".into()));
    };
    let pos = entries
        .iter()
        .position(|(k, _)| k == "sops")
        .ok_or_else(|| SopsError::Format("no `sops` metadata".into()))?;
    let (_, sops) = entries.remove(pos);
    let str_of = |k: &str| match sops.get(k) {
        Some(Node::Str(s)) => Some(s.clone()),
        _ => None,
    };
    if matches!(sops.get("mac_only_encrypted"), Some(Node::Bool(true))) {
        return Err(SopsError::Unsupported("mac_only_encrypted".into()));
    }
    let lastmodified =
        str_of("lastmodified").ok_or_else(|| SopsError::Format("no sops.lastmodified".into()))?;
    let mac = str_of("mac").ok_or_else(|| SopsError::Format("no sops.mac".into()))?;
    let ages = match sops.get("age") {
        Some(Node::Seq(a)) => a.clone(),
        _ => Vec::new(),
    };
    let key = ages
        .iter()
        .find_map(|e| match e.get("enc") {
            Some(Node::Str(enc)) => unwrap_key(enc, identities),
            _ => None,
        })
        .ok_or_else(|| {
            let rs: Vec<String> = ages
                .iter()
                .filter_map(|e| e.get("recipient"))
                .filter_map(|r| {
                    if let Node::Str(s) = r {
                        Some(s.clone())
                    } else {
                        None
                    }
                })
                .collect();
            SopsError::NoIdentity(rs.join(", "))
        })?;
    let mut hash = Sha512::new();
    walk(&mut doc, &mut Vec::new(), &mut |path, leaf| {
        if let Node::Str(s) = leaf
            && cipher::is_encrypted(s)
        {
            let (plain, kind) = cipher::decrypt(&key, s, &aad(path))?;
            // Errors name the value's path, never the decrypted text.
            let at = path.join(".");
            let text = String::from_utf8(plain)
                .map_err(|_| SopsError::Format(format!("{at}: decrypted value is not UTF-8")))?;
            *leaf = match kind.as_str() {
                "str" => Node::Str(text),
                "int" => Node::Num(
                    text.parse::<i64>()
                        .map_err(|_| {
                            SopsError::Format(format!("{at}: decrypted value is not an int"))
                        })?
                        .into(),
                ),
                "float" => Node::Num(
                    text.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .ok_or_else(|| {
                            SopsError::Format(format!("{at}: decrypted value is not a float"))
                        })?,
                ),
                "bool" => Node::Bool(text == "True"),
                other => return Err(SopsError::Unsupported(format!("value type {other}"))),
            };
        }
        if let Some((bytes, _)) = leaf_bytes(leaf) {
            hash.update(&bytes);
        }
        Ok(())
    })?;
    let computed: String = hash.finalize().iter().map(|b| format!("{b:02X}")).collect();
    let (stored, _) = cipher::decrypt(&key, &mac, lastmodified.as_bytes())?;
    if stored != computed.as_bytes() {
        return Err(SopsError::Integrity(
            "the MAC does not match the document".into(),
        ));
    }
    Ok(doc.to_value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret() -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "db", "namespace": "shop", "labels": {"enabled": "true", "n": "1234"}},
               "data": {"password": "czNjcjN0", "empty": ""}, "stringData": {"token": "abc"}})
    }

    #[test]
    fn sops_round_trip_and_tamper_table() {
        let identity = age::x25519::Identity::generate();
        let recipients = Recipients::from_list(&[identity.to_public().to_string()]).unwrap();
        let identities = Identities::from_identity(identity);
        let yaml = encrypt(
            &secret(),
            &recipients,
            jiff::Timestamp::from_second(1_790_000_000).unwrap(),
        )
        .unwrap();
        assert!(
            !yaml.contains("czNjcjN0") && !yaml.contains("abc"),
            "{yaml}"
        );
        assert!(
            yaml.contains("encrypted_regex: ^(data|stringData)$")
                && yaml.contains("version: \"3.13.3\""),
            "{yaml}"
        );
        assert!(
            yaml.contains("empty: \"\""),
            "empty strings stay unencrypted: {yaml}"
        );
        assert_eq!(decrypt(&yaml, &identities).unwrap(), secret());
        let cases = [
            (
                "label changed",
                yaml.replace("\"n\": \"1234\"", "\"n\": \"1235\""),
            ),
            ("name changed", yaml.replace("name: db", "name: dc")),
            ("value swapped", {
                let enc = |k: &str| {
                    yaml.lines()
                        .find(|l| l.trim_start().starts_with(k))
                        .unwrap()
                        .split_once(": ")
                        .unwrap()
                        .1
                        .to_string()
                };
                yaml.replace(&enc("password:"), "@@SWAP@@")
                    .replace(&enc("token:"), &enc("password:"))
                    .replace("@@SWAP@@", &enc("token:"))
            }),
        ];
        for (name, tampered) in cases {
            assert!(
                matches!(
                    decrypt(&tampered, &identities),
                    Err(SopsError::Integrity(_))
                ),
                "{name} must fail verification"
            );
        }
        let other = Identities::from_identity(age::x25519::Identity::generate());
        assert!(matches!(
            decrypt(&yaml, &other),
            Err(SopsError::NoIdentity(_))
        ));
    }
}
