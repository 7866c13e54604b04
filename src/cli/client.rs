//! Kubernetes clients for the command line: kubeconfig file and context, or the usual
//! defaults. TLS is always verified.

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client from `kubeconfig` (or the default chain) and `context`.
pub async fn build(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .context("kubeconfig")?,
        None => Config::infer()
            .await
            .context("no kubeconfig found (set --kubeconfig or KUBECONFIG)")?,
    };
    // kube's default retry waits up to ~15 minutes on a 503 (an aggregated API whose
    // backend is down answers discovery with 503 for ever). A one-shot command reports the
    // failing group and keeps its files instead; the controller retries on its own schedule.
    config.default_retry = false;
    Client::try_from(config).context("building the Kubernetes client")
}
