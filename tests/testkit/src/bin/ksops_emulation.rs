//! A test-only EMULATION of KSOPS (`viaduct.ai/v1`, `kind: ksops`), the exec KRM generator
//! Argo CD's repo server runs during `kustomize build --enable-alpha-plugins --enable-exec`.
//! It is not KSOPS: KSOPS's Go module is not reachable from the test machines, so this
//! program implements only the documented interface our exported trees use, and it
//! decrypts with the real `sops` binary (which verifies each file's MAC).
//!
//! The interface: kustomize runs the function with the kustomization's directory as working
//! directory and writes a `ResourceList` on stdin whose `functionConfig` is the generator
//! file (`files:` lists SOPS-encrypted manifests relative to that directory). The function
//! answers with a `ResourceList` whose `items` are the decrypted manifests. Any failure
//! (missing file, wrong key, MAC mismatch) is reported on stderr with a non-zero exit,
//! which makes `kustomize build` fail.
//!
//! `sops` is taken from `$KSOPS_EMULATION_SOPS` if set, else from `PATH`; the age identity
//! comes from the environment as for `sops` itself (`SOPS_AGE_KEY_FILE`, ...).

use std::io::{Read, Write};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use serde_json::{Value, json};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ksops (emulation): {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the ResourceList from stdin")?;
    let list: Value = serde_saphyr::from_str(&input).context("parsing the ResourceList")?;
    if list["kind"] != "ResourceList" {
        bail!("stdin is not a ResourceList (kind {})", list["kind"]);
    }
    let config = &list["functionConfig"];
    if config["apiVersion"] != "viaduct.ai/v1" || config["kind"] != "ksops" {
        bail!(
            "functionConfig is {}/{}, want viaduct.ai/v1/ksops",
            config["apiVersion"],
            config["kind"]
        );
    }
    let files = config["files"]
        .as_array()
        .context("functionConfig has no files: list")?;
    // A generator adds to whatever it was given (kustomize hands generators no items).
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    for file in files {
        let file = file.as_str().context("files: entries must be strings")?;
        items.push(decrypt(file)?);
    }
    let out = json!({
        "apiVersion": "config.kubernetes.io/v1",
        "kind": "ResourceList",
        "items": items,
    });
    // JSON is YAML: kustomize reads it as the function's output.
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &out)?;
    stdout.write_all(b"\n")?;
    Ok(())
}

/// `sops --decrypt` of one file (relative to the working directory, which kustomize sets to
/// the kustomization's directory): the decrypted manifest, MAC verified by sops.
fn decrypt(file: &str) -> anyhow::Result<Value> {
    let sops = std::env::var_os("KSOPS_EMULATION_SOPS").unwrap_or_else(|| "sops".into());
    let out = Command::new(&sops)
        .args(["--decrypt", "--output-type", "json"])
        .arg(file)
        .output()
        .with_context(|| format!("running {}", sops.to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "sops --decrypt {file} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let doc: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("sops --decrypt {file} printed no JSON document"))?;
    if doc.get("sops").is_some() {
        bail!("{file}: sops metadata left after decryption");
    }
    Ok(doc)
}
