//! The controller: NamespaceMappings replicated continuously, on a schedule or on demand,
//! into git. `run` wires the pieces; each reconcile is a pipeline whose decision and status
//! stages are pure (`schedule`, `status`).

pub mod context;
pub mod continuous;
pub mod mapping;
pub mod refs;
pub mod schedule;
pub mod status;
pub mod sync;

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

use crate::api::NamespaceMapping;

pub use context::{Ctx, Settings};

/// Errors a reconcile cannot turn into status.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// API error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The CRDs are not installed.
    #[error(
        "the dr-syncer.io/v1alpha1 CRDs are not installed in this cluster; install them with `dr-syncer crds | kubectl apply --server-side -f -` (or the Helm chart)"
    )]
    CrdsMissing,
    /// API error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Checks that the CRDs are served (no RBAC on CRDs needed: this is discovery).
pub async fn check_crds(client: &Client) -> Result<(), RunError> {
    match client
        .list_api_group_resources("dr-syncer.io/v1alpha1")
        .await
    {
        Ok(list) if list.resources.iter().any(|r| r.name == "namespacemappings") => Ok(()),
        Ok(_) => Err(RunError::CrdsMissing),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(RunError::CrdsMissing),
        Err(e) => Err(e.into()),
    }
}

/// Runs the controllers until a shutdown signal.
pub async fn run(client: Client, settings: Settings, instance: String) -> Result<(), RunError> {
    check_crds(&client).await?;
    let ctx = Arc::new(Ctx::new(client.clone(), settings, instance).await?);
    let mappings: Api<NamespaceMapping> = Api::all(client);
    Controller::new(mappings, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(4))
        .shutdown_on_signal()
        .run(mapping::reconcile, mapping::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    Ok(())
}
