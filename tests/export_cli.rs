//! `dr-syncer export` offline, as a user runs it: the README command on the shop example,
//! idempotence, dry-run, JSON summary, and bad input that must leave the previous output
//! untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/source/shop");

fn export(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dr-syncer"))
        .arg("export")
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Every file below `dir` (relative path → bytes), dot-files included.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn export_readme_command_on_shop() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("dr-export");
    let stdout = ok(&export(&["--from", SHOP, "--to", to.to_str().unwrap()]));
    assert!(stdout.contains("TOTAL"), "{stdout}");
    let files = snapshot(&to);
    for expected in [
        "_cluster/core/namespaces/shop.yaml",
        "shop/apps/deployments/web.yaml",
        "shop/apps/statefulsets/db.yaml",
        "shop/batch/cronjobs/nightly-report.yaml",
        "shop/core/services/db-headless.yaml",
        "shop/shop.example.com/coupons/black-friday.yaml",
        // The custom resource brings its CRD, so the DR cluster can apply it.
        "_cluster/apiextensions.k8s.io/customresourcedefinitions/coupons.shop.example.com.yaml",
        "shop/kustomization.yaml",
        "kustomization.yaml",
    ] {
        assert!(
            files.contains_key(Path::new(expected)),
            "missing {expected}: {:?}",
            files.keys()
        );
    }
    // CRDs legitimately name `status` (a schema property, a subresource); checked apart.
    let all: String = files
        .iter()
        .filter(|(p, _)| !p.starts_with("_cluster/apiextensions.k8s.io"))
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    let crd = String::from_utf8_lossy(
        &files[Path::new(
            "_cluster/apiextensions.k8s.io/customresourcedefinitions/coupons.shop.example.com.yaml",
        )],
    )
    .into_owned();
    assert!(
        crd.contains("kind: Coupon") && !crd.contains("storedVersions") && !crd.contains("uid:"),
        "{crd}"
    );
    for forbidden in [
        "replicasets",
        "/pods/",
        "controllerrevisions",
        "kube-root-ca.crt",
        "local-cache-warmup",
    ] {
        assert!(
            !files
                .keys()
                .any(|k| k.to_string_lossy().contains(forbidden)),
            "{forbidden} exported"
        );
    }
    // Secrets are never written in plaintext, not even base64.
    for secret in [
        "czNjcjN0LWRiLXBhc3N3b3Jk",
        "s3cr3t-db-password",
        "ZXlKaGJHY2lPaUpTVXpJMU5pSXNJbXRwWkNJNklpSjku",
    ] {
        assert!(!all.contains(secret), "secret value {secret} leaked");
    }
    for stripped in [
        "uid:",
        "resourceVersion",
        "managedFields",
        "ownerReferences",
        "last-applied-configuration",
        "kustomize.toolkit.fluxcd.io",
        "status:",
    ] {
        assert!(!all.contains(stripped), "{stripped} left in output");
    }
}

#[test]
fn export_second_run_is_byte_identical_and_removes_stale_files() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("out");
    let to_s = to.to_str().unwrap();
    ok(&export(&["--from", SHOP, "--to", to_s]));
    let first = snapshot(&to);
    let stdout = ok(&export(&["--from", SHOP, "--to", to_s]));
    assert!(stdout.contains("0 added, 0 changed, 0 deleted"), "{stdout}");
    assert_eq!(snapshot(&to), first, "second export changed bytes");
    // Dropping a type from the mapping removes its files and its kustomization entries.
    let mapping = tmp.path().join("mapping.yaml");
    std::fs::write(&mapping, "apiVersion: dr-syncer.io/v1alpha1\nkind: NamespaceMapping\nmetadata: {name: shop}\nspec:\n  sourceNamespace: shop\n  excludeResourceTypes: [configmaps]\n").unwrap();
    let stdout = ok(&export(&[
        "--from",
        SHOP,
        "--to",
        to_s,
        "--mapping",
        mapping.to_str().unwrap(),
    ]));
    assert!(stdout.contains("1 deleted"), "{stdout}");
    let after = snapshot(&to);
    assert!(
        !after
            .keys()
            .any(|k| k.to_string_lossy().contains("configmaps"))
    );
    let kustomization =
        String::from_utf8(after[Path::new("shop/kustomization.yaml")].clone()).unwrap();
    assert!(!kustomization.contains("configmaps"), "{kustomization}");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp dirs left: {leftovers:?}");
}

#[test]
fn export_dry_run_reports_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("out");
    let stdout = ok(&export(&[
        "--from",
        SHOP,
        "--to",
        to.to_str().unwrap(),
        "--dry-run",
    ]));
    assert!(!to.exists(), "dry run wrote {}", to.display());
    assert!(
        stdout.contains("+ shop/apps/deployments/web.yaml"),
        "{stdout}"
    );
    assert!(stdout.contains("would change"), "{stdout}");
}

#[test]
fn export_json_summary_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("out");
    let stdout = ok(&export(&[
        "--from",
        SHOP,
        "--to",
        to.to_str().unwrap(),
        "-o",
        "json",
    ]));
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kinds = &doc["summary"]["kinds"];
    assert_eq!(kinds["deployments.apps"]["exported"], 2);
    assert_eq!(kinds["deployments.apps"]["transformed"], 2);
    assert_eq!(kinds["secrets"]["secretsSkipped"], 1);
    assert_eq!(kinds["pods"]["excluded"], 2);
    assert_eq!(kinds["services"]["exported"], 4);
    assert_eq!(doc["summary"]["namespaces"]["shop"], "shop");
    assert!(doc["diff"]["added"].as_array().unwrap().len() > 15);
}

#[test]
fn export_bad_input_names_file_and_line_and_keeps_previous_output() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("out");
    ok(&export(&["--from", SHOP, "--to", to.to_str().unwrap()]));
    let before = snapshot(&to);
    let cases: &[(&str, &str, &str)] = &[
        (
            "malformed-yaml",
            "a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: shop\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [b\n  namespace: shop\n",
        ),
        (
            "no-name",
            "b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: shop}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {namespace: shop}\n",
        ),
        (
            "bad-json",
            "c.json",
            "{\"apiVersion\": \"v1\",\n \"kind\": \"ConfigMap\",\n \"metadata\": {\"name\": \"a\" \"namespace\": \"shop\"}}\n",
        ),
        ("no-kind", "d.yaml", "# a comment\nmetadata: {name: a}\n"),
        (
            "no-namespace",
            "e.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
        ),
    ];
    let expected_lines = [
        "a.yaml:11:",
        "b.yaml:5:",
        "c.json:3:",
        "d.yaml:1:",
        "e.yaml:1:",
    ];
    for ((case, file, content), line) in cases.iter().zip(expected_lines) {
        let input = tmp.path().join(case);
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join(file), content).unwrap();
        let out = export(&[
            "--from",
            input.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: accepted");
        assert!(
            stderr.contains(line),
            "{case}: {stderr:?} does not name {line}"
        );
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
        assert_eq!(snapshot(&to), before, "{case}: previous output changed");
    }
}

/// A dump of a custom resource whose CRD is not in the input (the usual
/// `kubectl get all,gateways -n shop -o yaml`): the export succeeds, the object lands where
/// kubectl's plural guess puts it, and stderr says what was guessed — stdout stays clean
/// enough for `-o json` to parse.
#[test]
fn export_custom_resource_without_crd_is_guessed_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("dump");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("shop.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: shop}\n\
         data: {a: b}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {name: edge, namespace: shop}\nspec: {gatewayClassName: public}\n---\n\
         apiVersion: example.com/v1\nkind: RetryPolicy\n\
         metadata: {name: patient, namespace: shop}\nspec: {attempts: 3}\n---\n\
         apiVersion: example.com/v1\nkind: ClusterRetryPolicy\nmetadata: {name: global}\n",
    )
    .unwrap();
    let to = tmp.path().join("out");
    let out = export(&[
        "--from",
        input.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        doc["summary"]["kinds"]["gateways.gateway.networking.k8s.io"]["exported"], 1,
        "{stdout}"
    );
    let files = snapshot(&to);
    for expected in [
        "shop/gateway.networking.k8s.io/gateways/edge.yaml",
        "shop/example.com/retrypolicies/patient.yaml",
        "shop/core/configmaps/settings.yaml",
    ] {
        assert!(
            files.contains_key(Path::new(expected)),
            "missing {expected}: {:?}",
            files.keys()
        );
    }
    // Cluster-scoped objects other than Namespaces are not exported, guessed or not.
    assert!(
        !files
            .keys()
            .any(|k| k.to_string_lossy().contains("clusterretrypolicies")),
        "{:?}",
        files.keys()
    );
    let gateway = String::from_utf8_lossy(
        &files[Path::new("shop/gateway.networking.k8s.io/gateways/edge.yaml")],
    )
    .into_owned();
    assert!(gateway.contains("gatewayClassName: public"), "{gateway}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    for (object, resource) in [
        ("shop/edge", "gateways.gateway.networking.k8s.io"),
        ("shop/patient", "retrypolicies.example.com"),
        ("global", "clusterretrypolicies.example.com"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("shop.yaml:") && w.contains(object) && w.contains(resource)),
            "no warning names {object} as {resource}: {stderr}"
        );
    }
}

#[test]
fn export_refuses_to_replace_a_foreign_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("precious");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::write(to.join("notes.txt"), "mine").unwrap();
    let out = export(&["--from", SHOP, "--to", to.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not written by dr-syncer"));
    assert_eq!(
        std::fs::read_to_string(to.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn export_secrets_are_encrypted_without_churn() {
    let tmp = tempfile::tempdir().unwrap();
    let key = |name: &str| {
        let id = dr_syncer_age_identity();
        let path = tmp.path().join(name);
        std::fs::write(&path, &id.0).unwrap();
        (path, id.1)
    };
    let ((_id_a, rec_a), (_id_b, rec_b)) = (key("a.key"), key("b.key"));
    let fp = tmp.path().join("fp.key");
    let to = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--from",
            SHOP,
            "--to",
            to.to_str().unwrap(),
            "--fingerprint-key",
            fp.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&export(&args))
    };
    run(&["--age-recipient", &rec_a]);
    let secret = Path::new("shop/core/secrets/db-credentials.sops.yaml");
    let first = snapshot(&to);
    let text = String::from_utf8(first[secret].clone()).unwrap();
    assert!(
        text.contains("ENC[AES256_GCM,") && text.contains(&rec_a),
        "{text}"
    );
    for plain in ["czNjcjN0LWRiLXBhc3N3b3Jk", "c2hvcA==", "s3cr3t"] {
        assert!(
            !first
                .values()
                .any(|b| String::from_utf8_lossy(b).contains(plain)),
            "{plain} leaked"
        );
    }
    let stdout = run(&["--age-recipient", &rec_a]);
    assert!(
        stdout.contains("0 added, 0 changed, 0 deleted"),
        "unchanged Secret rewritten:\n{stdout}"
    );
    assert_eq!(snapshot(&to), first);
    // A new recipient set re-encrypts every Secret in the same export.
    let stdout = run(&["--age-recipient", &rec_a, "--age-recipient", &rec_b]);
    let after = snapshot(&to);
    assert_ne!(after[secret], first[secret], "{stdout}");
    assert!(String::from_utf8_lossy(&after[secret]).contains(&rec_b));
    let sops_yaml = String::from_utf8(after[Path::new(".sops.yaml")].clone()).unwrap();
    assert!(
        sops_yaml.contains(&rec_a) && sops_yaml.contains(&rec_b),
        "{sops_yaml}"
    );
    // Forgetting the recipients must not delete the encrypted Secrets: refused, unchanged.
    let out = export(&[
        "--from",
        SHOP,
        "--to",
        to.to_str().unwrap(),
        "--fingerprint-key",
        fp.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "an export without recipients was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no age recipients given, but the destination holds encrypted Secrets"),
        "{err}"
    );
    assert_eq!(snapshot(&to), after, "nothing written");
}

/// A fresh age identity: (file contents, recipient).
fn dr_syncer_age_identity() -> (String, String) {
    let id = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    (
        format!("{}\n", id.to_string().expose_secret()),
        id.to_public().to_string(),
    )
}
