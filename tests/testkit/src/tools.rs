//! Go-built test peers (`tests/tools/build.sh`, cached by its go.sum) and Debian tools.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The `sops` binary built from `github.com/getsops/sops/v3/cmd/sops` (pinned in go.mod).
pub fn sops() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("tests/tools/build.sh"))
        .join("sops")
}

/// The `kustomize` binary built from `sigs.k8s.io/kustomize/kustomize/v5` (pinned in
/// go.mod, built by the same cached script as [`sops`]).
pub fn kustomize() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("tests/tools/build.sh"))
        .join("kustomize")
}

/// The KSOPS emulation (`src/bin/ksops_emulation.rs`, a test-only stand-in for KSOPS that
/// decrypts with the real [`sops`]), built into the target directory's `debug/`.
///
/// Cargo builds a package's binaries for its own integration tests only, so this runs
/// `cargo build` for it. Both workspace packages are selected so that dependency features
/// unify exactly as in `cargo test` of dr-syncer: the build reuses the test build's
/// dependencies and compiles only the binary (alone, `-p dr-syncer-testkit` would compile
/// the testkit's dependency tree a second time, 5 minutes on 2 cores).
pub fn ksops_emulation() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        // Without the variables `cargo test` sets for the running test: build scripts that
        // watch them (ring's watches CARGO_MANIFEST_DIR) would see a change and rebuild,
        // here and again in the next `cargo test`.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&key.as_ref())
            {
                cmd.env_remove(key.as_ref());
            }
        }
        let status = cmd
            .current_dir(crate::workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "dr-syncer",
                "-p",
                "dr-syncer-testkit",
                "--bin",
                "ksops_emulation",
            ])
            .env("CARGO_TARGET_DIR", crate::target_dir())
            .status()
            .expect("running cargo build for ksops_emulation");
        assert!(status.success(), "cargo build --bin ksops_emulation failed");
        crate::target_dir().join("debug/ksops_emulation")
    })
    .clone()
}

/// Runs a cached build script (relative to the workspace) and returns the directory it
/// prints.
fn build(script: &str) -> PathBuf {
    let script = crate::workspace_root().join(script);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The directory `tests/helm/build.sh` prepares: `bin/helm` (helm built from its pinned Go
/// module), `crds/flux/*.yaml` and `crds/argocd/*.yaml` (from the consumers' modules).
pub fn helm_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("tests/helm/build.sh")).clone()
}

/// The `helm` binary (see [`helm_dir`]).
pub fn helm() -> PathBuf {
    helm_dir().join("bin/helm")
}

/// `promtool` built from Prometheus's Go module (`tests/promtool/build.sh`, cached by its
/// go.sum): checks the chart's alerting rules and the dashboard's PromQL.
pub fn promtool() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("tests/promtool/build.sh"))
        .join("promtool")
}

/// A Debian-packaged command (`age`, `sshd`, ...), with a hint when it is missing.
pub fn debian(cmd: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = PathBuf::from(dir).join(cmd);
        if p.exists() {
            return p;
        }
    }
    panic!("{cmd} not found: install the Debian package {package} (make deps does)");
}
