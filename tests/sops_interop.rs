//! SOPS files against the real tools: `sops` (built from its Go module) decrypts every file
//! dr-syncer writes back to the exact Secret, Debian's `age` opens our key stanzas, our
//! decryptor reads and MAC-verifies files written by `sops -e`, and tampering is caught —
//! also a Secret file replaced in the repository, which the next `dr-syncer export`
//! rewrites for our recipients.

use std::path::Path;
use std::process::Command;

use dr_syncer::sops::{self, Identities, Recipients};
use dr_syncer_testkit::git::{bare_repo, git};
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

/// `sops -e` of `secret` (as JSON) for `recipients` (comma-separated), as YAML.
fn sops_encrypt(secret: &Value, recipients: &str, dir: &Path) -> Vec<u8> {
    let plain = dir.join("plain.json");
    std::fs::write(&plain, serde_json::to_vec(secret).unwrap()).unwrap();
    let out = Command::new(tools::sops())
        .args([
            "--encrypt",
            "--encrypted-regex",
            "^(data|stringData)$",
            "--age",
        ])
        .arg(recipients)
        .args(["--input-type", "json", "--output-type", "yaml"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sops -e: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A hostile repository writer (push access, no fingerprint key) replaces a Secret's file
/// with one written by the real `sops`; the next `dr-syncer export` must rewrite it for our
/// recipient only, and the export after that must change nothing.
#[test]
fn export_rewrites_a_secret_file_replaced_in_the_repository() {
    const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/source/shop");
    const FILE: &str = "shop/core/secrets/db-credentials.sops.yaml";
    let (ours, theirs) = (keygen(), keygen());
    let tmp = tempfile::tempdir().unwrap();
    let repo = bare_repo(tmp.path(), "dr.git");
    let export = || {
        let out = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
            .args(["export", "--from", SHOP, "--to"])
            .arg(&repo)
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .arg("--fingerprint-key")
            .arg(tmp.path().join("fp.key"))
            .args(["--mapping-name", "shop", "--age-recipient", &ours.recipient])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let head = || git(&repo, &["rev-parse", "main"]).trim().to_string();
    let committed = || git(&repo, &["show", &format!("main:{FILE}")]);
    export();
    let plaintext = sops_decrypt(&write_temp(tmp.path(), &committed()), &ours);
    let mut other_values = plaintext.clone();
    other_values["data"]["password"] = json!("b3duZWQ=");
    let both = format!("{},{}", ours.recipient, theirs.recipient);
    // (case, the file the hostile writer commits)
    let cases = [
        (
            "the same Secret for another recipient",
            sops_encrypt(&plaintext, &theirs.recipient, tmp.path()),
        ),
        (
            "other values for our recipient and theirs",
            sops_encrypt(&other_values, &both, tmp.path()),
        ),
    ];
    for (i, (case, hostile)) in cases.into_iter().enumerate() {
        let work = tmp.path().join(format!("hostile-{i}"));
        git(
            tmp.path(),
            &[
                "clone",
                "--quiet",
                repo.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        std::fs::write(work.join(FILE), &hostile).unwrap();
        git(&work, &["commit", "--quiet", "-am", "replace a Secret"]);
        git(&work, &["push", "--quiet", "origin", "HEAD:main"]);
        assert_eq!(committed().as_bytes(), hostile, "{case}: pushed");

        let out = export();
        assert!(
            out.contains("0 added, 1 changed, 0 deleted"),
            "{case}: {out}"
        );
        let rewritten = committed();
        assert_ne!(rewritten.as_bytes(), hostile, "{case}: rewritten");
        assert_eq!(
            sops::recipients_of(&rewritten).unwrap(),
            vec![ours.recipient.clone()],
            "{case}"
        );
        let file = write_temp(tmp.path(), &rewritten);
        assert_eq!(
            sops_decrypt(&file, &ours),
            plaintext,
            "{case}: sops -d, our key"
        );
        let out = Command::new(tools::sops())
            .args(["--decrypt", "--output-type", "json"])
            .arg(&file)
            .env("SOPS_AGE_KEY_FILE", theirs.file.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{case}: their key must not decrypt");
        // Debian's age opens our stanza with our identity and not with theirs.
        let doc: Value = serde_saphyr::from_str(&rewritten).unwrap();
        let stanza = tmp.path().join("stanza.age");
        std::fs::write(&stanza, doc["sops"]["age"][0]["enc"].as_str().unwrap()).unwrap();
        for (key, opens) in [(&ours, true), (&theirs, false)] {
            let out = Command::new(tools::debian("age", "age"))
                .arg("-d")
                .arg("-i")
                .arg(key.file.path())
                .arg(&stanza)
                .output()
                .unwrap();
            assert_eq!(out.status.success(), opens, "{case}: age -d");
        }

        // The rewritten file and its fingerprint hold: no commit next time.
        let before = head();
        let out = export();
        assert!(out.contains("no commit"), "{case}: {out}");
        assert_eq!(head(), before, "{case}");
    }
}

fn write_temp(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("committed.sops.yaml");
    std::fs::write(&path, text).unwrap();
    path
}
