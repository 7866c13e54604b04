//! The Argo CD tree (`export --consumer argocd`) rendered as Argo CD's repo server renders
//! it: the real `kustomize build --enable-alpha-plugins --enable-exec` (kustomize v5.8.2,
//! built from its Go module) running the KSOPS generator of every namespace. KSOPS itself
//! is not available to the tests (its Go module is not served by our module proxy), so the
//! generator runs `ksops_emulation` from the testkit — an emulation of KSOPS's documented
//! exec KRM interface that decrypts with the real `sops`, which verifies every file's MAC.
//! Checked: every exported object renders, the Secrets come out with the source's values
//! and no SOPS residue, what kustomize does without `--enable-exec`, and that a tampered
//! encrypted file fails the render.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dr_syncer_testkit::tools;
use serde_json::Value;

const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/source/shop");
const SECRET: &str = "shop/core/secrets/db-credentials.sops.yaml";

/// An exported shop tree with its age identity and a `PATH` holding `ksops` (the
/// emulation), `sops` and `kustomize`.
struct Fixture {
    tmp: tempfile::TempDir,
    out: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        {
            use age::secrecy::ExposeSecret;
            let text = format!("{}\n", identity.to_string().expose_secret());
            std::fs::write(tmp.path().join("age.key"), text).unwrap();
        }
        let out = tmp.path().join("out");
        let export = Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
            .arg("export")
            .args(["--from", SHOP, "--consumer", "argocd"])
            .args(["--age-recipient", &recipient])
            .arg("--to")
            .arg(&out)
            .arg("--fingerprint-key")
            .arg(tmp.path().join("fingerprint.key"))
            .output()
            .unwrap();
        assert!(export.status.success(), "export: {}", text(&export.stderr));
        // KSOPS is installed as `ksops` on the repo server's PATH; so is the emulation here.
        let plugins = tmp.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        std::os::unix::fs::symlink(tools::ksops_emulation(), plugins.join("ksops")).unwrap();
        std::fs::create_dir(tmp.path().join("xdg")).unwrap();
        Fixture { tmp, out }
    }

    /// `kustomize build FLAGS DIR` (DIR relative to the export; "" is the root).
    fn kustomize(&self, flags: &[&str], dir: &str) -> Output {
        let tools_dir = tools::sops().parent().unwrap().to_path_buf();
        let path = std::env::join_paths(
            [self.tmp.path().join("plugins"), tools_dir]
                .into_iter()
                .chain(std::env::split_paths(
                    &std::env::var_os("PATH").unwrap_or_default(),
                )),
        )
        .unwrap();
        Command::new(tools::kustomize())
            .arg("build")
            .args(flags)
            .arg(self.out.join(dir))
            .env("PATH", path)
            .env("SOPS_AGE_KEY_FILE", self.tmp.path().join("age.key"))
            // No legacy plugins or user config from the machine running the tests.
            .env("XDG_CONFIG_HOME", self.tmp.path().join("xdg"))
            .env("HOME", self.tmp.path())
            .output()
            .unwrap()
    }
}

const FULL: &[&str] = &["--enable-alpha-plugins", "--enable-exec"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `(kind, namespace, name)` of an object.
fn id(doc: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&doc["kind"]),
        s(&doc["metadata"]["namespace"]),
        s(&doc["metadata"]["name"]),
    )
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The exported object files below `dir` (relative paths; "" is the root), without the
/// generated kustomizations, KSOPS generators and dot-files.
fn object_files(out: &Path, dir: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(out).unwrap().to_str().unwrap().to_string();
            if rel.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if (dir.is_empty() || rel.starts_with(&format!("{dir}/")))
                && !rel.ends_with("kustomization.yaml")
                && !rel.ends_with("secret-generator.yaml")
            {
                files.push(rel);
            }
        }
    }
    files.sort();
    files
}

/// Every directory with a kustomization, relative to the export ("" is the root).
fn kustomization_dirs(out: &Path) -> Vec<String> {
    let mut dirs = vec![String::new()];
    for e in std::fs::read_dir(out).unwrap() {
        let p = e.unwrap().path();
        if p.join("kustomization.yaml").exists() {
            dirs.push(p.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    dirs.sort();
    dirs
}

/// The source's Secret `shop/db-credentials` (the example's files hold `List`s).
fn source_secret() -> Value {
    let yaml = std::fs::read_to_string(Path::new(SHOP).join("40-storage-config.yaml")).unwrap();
    docs(&yaml)
        .into_iter()
        .flat_map(|d| match d["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![d],
        })
        .find(|d| id(d) == ("Secret".into(), "shop".into(), "db-credentials".into()))
        .expect("the example has the Secret shop/db-credentials")
}

#[test]
fn argocd_tree_renders_with_kustomize_and_decrypts_secrets() {
    let f = Fixture::new();
    let started = std::time::Instant::now();
    let dirs = kustomization_dirs(&f.out);
    assert_eq!(dirs, ["", "_cluster", "shop"]);
    let generator = std::fs::read_to_string(f.out.join("shop/secret-generator.yaml")).unwrap();
    assert!(generator.contains("path: ksops\n"), "{generator}");
    let source = source_secret();
    for dir in &dirs {
        // What the export wrote below `dir`: the objects kustomize must render.
        let mut expected = BTreeSet::new();
        let mut encrypted = 0;
        for file in object_files(&f.out, dir) {
            let doc = docs(&std::fs::read_to_string(f.out.join(&file)).unwrap()).remove(0);
            if file.ends_with(".sops.yaml") {
                assert!(doc.get("sops").is_some(), "{file} is not encrypted");
                encrypted += 1;
            }
            expected.insert(id(&doc));
        }
        assert!(!expected.is_empty(), "nothing exported below {dir:?}");
        let rendered = ok(&f.kustomize(FULL, dir), &format!("kustomize build {dir:?}"));
        assert!(!rendered.contains("ENC["), "ciphertext rendered in {dir:?}");
        let docs = docs(&rendered);
        let got: BTreeSet<_> = docs.iter().map(id).collect();
        assert_eq!(got, expected, "objects rendered from {dir:?}");
        assert_eq!(docs.len(), expected.len(), "duplicates in {dir:?}");
        let mut secrets = 0;
        for doc in &docs {
            assert!(doc.get("sops").is_none(), "sops metadata in {:?}", id(doc));
            if doc["kind"] == "Secret" {
                secrets += 1;
                assert_eq!(id(doc), id(&source));
                assert_eq!(doc["data"], source["data"], "decrypted values");
                assert_eq!(doc["type"], source["type"]);
            }
        }
        assert_eq!(secrets, encrypted, "Secrets rendered from {dir:?}");
    }
    // The root renders the Secret too (through the shop directory's generator).
    assert!(object_files(&f.out, "").contains(&SECRET.to_string()));
    eprintln!(
        "rendered {} directories in {:?}",
        dirs.len(),
        started.elapsed()
    );
}

/// What kustomize 5.8.2 does when Argo CD is not configured with both flags (the
/// `kustomize.buildOptions` our bootstrap output asks for).
#[test]
fn without_enable_exec_the_secret_is_lost() {
    let f = Fixture::new();
    let full = docs(&ok(&f.kustomize(FULL, "shop"), "full build"));
    // --enable-alpha-plugins alone: exit 0, no message, and the Secret silently missing.
    let out = f.kustomize(&["--enable-alpha-plugins"], "shop");
    let rendered = docs(&ok(&out, "build without --enable-exec"));
    let without: Vec<_> = full.iter().filter(|d| d["kind"] != "Secret").collect();
    assert_eq!(rendered.len(), full.len() - 1, "{}", text(&out.stderr));
    assert!(rendered.iter().all(|d| d["kind"] != "Secret"));
    assert_eq!(rendered.iter().collect::<Vec<_>>(), without);
    // No plugin flags at all: the build fails on the generator.
    let out = f.kustomize(&[], "shop");
    assert!(!out.status.success(), "built without plugin flags");
    let err = text(&out.stderr);
    assert!(err.contains("external plugins disabled"), "{err}");
}

/// A tampered encrypted file fails the render: sops refuses it, so no Secret (and no
/// partial output) reaches the cluster.
#[test]
fn tampered_secret_fails_the_render() {
    let f = Fixture::new();
    let path = f.out.join(SECRET);
    let original = std::fs::read_to_string(&path).unwrap();
    // One ciphertext character of `data.password` changed: AES-GCM authentication fails.
    let start = original.find("password: ENC[AES256_GCM,data:").unwrap() + 30;
    let mut bytes = original.clone().into_bytes();
    bytes[start] = if bytes[start] == b'A' { b'B' } else { b'A' };
    let ciphertext = String::from_utf8(bytes).unwrap();
    // A cleartext value changed (the namespace): only the MAC can notice.
    let moved = original.replacen("namespace: shop", "namespace: elsewhere", 1);
    assert_ne!(moved, original);
    for (what, content) in [("ciphertext", ciphertext), ("cleartext", moved)] {
        std::fs::write(&path, &content).unwrap();
        for dir in ["shop", ""] {
            let out = f.kustomize(FULL, dir);
            let err = text(&out.stderr);
            assert!(
                !out.status.success(),
                "{what} tampering rendered {dir:?}:\n{}",
                text(&out.stdout)
            );
            assert!(out.stdout.is_empty(), "partial output for {what}");
            assert!(
                err.contains("ksops (emulation): sops --decrypt ./core/secrets/db-credentials.sops.yaml failed"),
                "{what}: {err}"
            );
            if what == "cleartext" {
                assert!(err.contains("MAC mismatch"), "{err}");
            }
        }
    }
    // And the untouched file renders again.
    std::fs::write(&path, &original).unwrap();
    ok(&f.kustomize(FULL, "shop"), "restored");
}
