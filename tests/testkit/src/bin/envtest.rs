//! `envtest up NAME` / `envtest down NAME`: a control plane for working by hand
//! (`make envtest-up NAME=src` writes `target/envtest/src/kubeconfig`).

use anyhow::{Context, bail};
use dr_syncer_testkit::envtest::{ControlPlane, stop_detached};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (verb, name) = match args.as_slice() {
        [verb, name] => (verb.as_str(), name.as_str()),
        _ => bail!("usage: envtest up|down NAME"),
    };
    if name.is_empty()
        || ["bin", "run"].contains(&name)
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!("NAME must be letters, digits or '-' and not 'bin' or 'run' (got {name:?})");
    }
    let dir = dr_syncer_testkit::target_dir().join("envtest").join(name);
    match verb {
        "up" => {
            let plane = ControlPlane::start_detached(&dir)
                .await
                .context("starting the control plane")?;
            println!("envtest {name} is up at {}", plane.server());
            println!("export KUBECONFIG={}", plane.kubeconfig_path().display());
            // Detached: dropping `plane` leaves the servers running.
        }
        "down" => {
            stop_detached(&dir)?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            println!("envtest {name} is down");
        }
        other => bail!("unknown command {other:?}: use up or down"),
    }
    Ok(())
}
