//! SOPS files against the real tools: `sops` (built from its Go module) decrypts every file
//! dr-syncer writes back to the exact Secret, Debian's `age` opens our key stanzas, our
//! decryptor reads and MAC-verifies files written by `sops -e`, and tampering is caught.

use std::path::Path;
use std::process::Command;

use dr_syncer::sops::{self, Identities, Recipients};
use dr_syncer_testkit::tools;
use serde_json::{Value, json};

struct Key {
    file: tempfile::NamedTempFile,
    recipient: String,
}

fn keygen() -> Key {
    let file = tempfile::NamedTempFile::new().unwrap();
    // age-keygen refuses to overwrite: hand it a free path.
    std::fs::remove_file(file.path()).unwrap();
    let out = Command::new(tools::debian("age-keygen", "age"))
        .arg("-o")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(file.path()).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    Key { file, recipient }
}

fn sops_decrypt(file: &Path, key: &Key) -> Value {
    let out = Command::new(tools::sops())
        .args(["--decrypt", "--output-type", "json"])
        .arg(file)
        .env("SOPS_AGE_KEY_FILE", key.file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sops -d {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn secrets() -> Vec<(&'static str, Value)> {
    vec![
        (
            "opaque",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "db", "namespace": "shop"},
            "data": {"password": "czNjcjN0LWRiLXBhc3N3b3Jk", "username": "c2hvcA=="}}),
        ),
        (
            "ambiguous-scalars",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "tricky", "namespace": "shop", "labels": {"enabled": "true", "n": "1234", "octal": "0755", "y": "yes", "empty": ""},
                         "annotations": {"when": "2026-11-26T10:00:00Z", "float": "1.50", "null-ish": "null", "tilde": "~"}},
            "data": {"digits": "MTIzNDU2", "k": "dHJ1ZQ=="}, "immutable": true}),
        ),
        (
            "string-data",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "sd", "namespace": "shop"},
            "stringData": {"config.yaml": "user: admin\npassword: \"p@ss: word\"\n", "pin": "0042", "on": "off", "unicode": "päss→wörd"}}),
        ),
        (
            "tls",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "tls", "namespace": "shop"},
            "data": {"tls.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJkekNDQVIyZ0F3SUJBZ0lCQURBS0JnZ3Foa2pPUFFRREFqQWpNU0V3SHdZRFZRUUREQmhyTTNNdGMyVnkKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=", "tls.key": ""}}),
        ),
    ]
}

#[test]
fn sops_cli_decrypts_every_file_we_write() {
    let (a, b) = (keygen(), keygen());
    let recipients = Recipients::from_list(&[a.recipient.clone(), b.recipient.clone()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, secret) in secrets() {
        let yaml = sops::encrypt(&secret, &recipients, jiff::Timestamp::now()).unwrap();
        let path = dir.path().join(format!("{name}.sops.yaml"));
        std::fs::write(&path, &yaml).unwrap();
        for key in [&a, &b] {
            assert_eq!(
                sops_decrypt(&path, key),
                secret,
                "{name}: sops -d with either recipient gives back the Secret"
            );
        }
        // Debian's age opens each stanza: the data key is 32 raw bytes.
        let doc: Value = serde_saphyr::from_str(&yaml).unwrap();
        for entry in doc["sops"]["age"].as_array().unwrap() {
            let stanza = dir.path().join("stanza.age");
            std::fs::write(&stanza, entry["enc"].as_str().unwrap()).unwrap();
            let key = if entry["recipient"] == a.recipient {
                &a
            } else {
                &b
            };
            let out = Command::new(tools::debian("age", "age"))
                .arg("-d")
                .arg("-i")
                .arg(key.file.path())
                .arg(&stanza)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "age -d: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                out.stdout.len(),
                32,
                "{name}: the stanza wraps a 32-byte data key"
            );
        }
    }
}

#[test]
fn we_read_and_verify_files_written_by_sops() {
    let key = keygen();
    let identities =
        Identities::from_file_contents(&std::fs::read_to_string(key.file.path()).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, secret) in secrets() {
        let plain = dir.path().join(format!("{name}.json"));
        std::fs::write(&plain, serde_json::to_vec(&secret).unwrap()).unwrap();
        let out = Command::new(tools::sops())
            .args([
                "--encrypt",
                "--encrypted-regex",
                "^(data|stringData)$",
                "--age",
                &key.recipient,
                "--input-type",
                "json",
                "--output-type",
                "yaml",
            ])
            .arg(&plain)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sops -e: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = String::from_utf8(out.stdout).unwrap();
        assert_eq!(sops::decrypt(&yaml, &identities).unwrap(), secret, "{name}");
        // A changed plaintext field breaks the MAC; a changed ciphertext breaks GCM.
        let tampered = yaml.replacen("namespace: shop", "namespace: prod", 1);
        let err = sops::decrypt(&tampered, &identities).unwrap_err();
        assert!(
            matches!(err, sops::SopsError::Integrity(_)),
            "{name}: {err}"
        );
    }
}

#[test]
fn decrypt_command_prints_the_secret_and_refuses_tampered_files() {
    let key = keygen();
    let secret = &secrets()[0].1;
    let recipients = Recipients::from_list(std::slice::from_ref(&key.recipient)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sops.yaml");
    let yaml = sops::encrypt(secret, &recipients, jiff::Timestamp::now()).unwrap();
    std::fs::write(&path, &yaml).unwrap();
    let run = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
            .arg("decrypt")
            .arg(file)
            .arg("--identity")
            .arg(key.file.path())
            .output()
            .unwrap()
    };
    let out = run(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_saphyr::from_slice(&out.stdout).unwrap();
    assert_eq!(&printed, secret);
    std::fs::write(&path, yaml.replace("name: db", "name: other")).unwrap();
    let out = run(&path);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("integrity check failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
