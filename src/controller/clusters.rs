//! RemoteCluster health (version + a namespace list, TLS verified, re-checked when its
//! kubeconfig Secret changes) and ClusterMapping status (both clusters known and healthy).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::{
    ClusterMapping, ClusterMappingPhase, ClusterMappingStatus, Health, RemoteCluster,
    RemoteClusterStatus,
};

use super::ControllerError;
use super::context::Ctx;
use super::schedule::parse_duration;
use super::status::set_condition;
use crate::refs;

/// A status write within this window came from us: do not check again yet.
const MIN_RECHECK: Duration = Duration::from_secs(10);

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The RemoteClusters whose kubeconfig is `secret` (for re-checks on Secret changes).
pub fn clusters_using(
    secret: &Secret,
    clusters: &[Arc<RemoteCluster>],
) -> Vec<ObjectRef<RemoteCluster>> {
    let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
    clusters
        .iter()
        .filter(|rc| {
            let r = &rc.spec.kubeconfig_secret_ref;
            r.name == name
                && r.namespace.clone().or_else(|| rc.namespace()).as_deref() == Some(ns.as_str())
        })
        .map(|rc| ObjectRef::from_obj(rc.as_ref()))
        .collect()
}

/// Checks one RemoteCluster.
pub async fn reconcile_cluster(
    rc: Arc<RemoteCluster>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let ns = rc.namespace().unwrap_or_default();
    if !ctx.owns_shared(&format!("RemoteCluster/{ns}/{}", rc.name_any())) {
        return Ok(Action::await_change());
    }
    let interval =
        parse_duration(&rc.spec.health_check_interval).unwrap_or(Duration::from_secs(300));
    let prev = rc.status.clone().unwrap_or_default();
    let generation = rc.metadata.generation;
    // What the last check saw: the spec generation and the kubeconfig Secret's version. A
    // recent check of the same inputs is our own status write coming back: skip it.
    let r = &rc.spec.kubeconfig_secret_ref;
    let secret_ns = r.namespace.clone().unwrap_or_else(|| ns.clone());
    let secret_version = Api::<Secret>::namespaced(ctx.client.clone(), &secret_ns)
        .get_metadata_opt(&r.name)
        .await?
        .and_then(|m| m.metadata.resource_version)
        .unwrap_or_default();
    let rotate = rc
        .annotations()
        .get(crate::api::keys::ROTATE_KEYS)
        .cloned()
        .unwrap_or_default();
    let inputs = format!("{generation:?}/{secret_version}/{rotate}");
    let key = format!("{ns}/{}", rc.name_any());
    let unchanged = ctx.last_inputs(&key).as_deref() == Some(inputs.as_str());
    if let Some(t) = &prev.last_check_time {
        let age = Duration::try_from(jiff::Timestamp::now() - t.0).unwrap_or_default();
        if age < MIN_RECHECK && unchanged && prev.observed_generation == generation {
            return Ok(Action::requeue(interval.saturating_sub(age)));
        }
    }
    ctx.set_last_inputs(&key, inputs);
    let t = now();
    let mut s = RemoteClusterStatus {
        conditions: prev.conditions.clone(),
        ..Default::default()
    };
    let own = refs::ClusterRef {
        namespace: ns.clone(),
        name: rc.name_any(),
        field: "RemoteCluster".into(),
        cross_namespace_refs: ctx.settings.tenancy.cross_namespace_refs,
    };
    match refs::cluster_client(&ctx.client, &own).await {
        Err(e) => {
            s.health = Some(Health::Unhealthy);
            s.message = Some(e.to_string());
            set_condition(
                &mut s.conditions,
                "KubeconfigValid",
                false,
                "KubeconfigInvalid",
                &e.to_string(),
                generation,
                t.clone(),
            );
            set_condition(
                &mut s.conditions,
                "Ready",
                false,
                "KubeconfigInvalid",
                &e.to_string(),
                generation,
                t.clone(),
            );
        }
        Ok(client) => {
            set_condition(
                &mut s.conditions,
                "KubeconfigValid",
                true,
                "KubeconfigValid",
                "kubeconfig parsed; no TLS or file exceptions",
                generation,
                t.clone(),
            );
            let agent_client = client.clone();
            let version = client.apiserver_version().await;
            let listed = Api::<Namespace>::all(client)
                .list(&ListParams::default().limit(1))
                .await;
            match (version, listed) {
                (Ok(v), Ok(_)) => {
                    s.health = Some(Health::Healthy);
                    s.version = Some(v.git_version);
                    set_condition(
                        &mut s.conditions,
                        "Ready",
                        true,
                        "Reachable",
                        "TLS verified; version and namespace list answered",
                        generation,
                        t.clone(),
                    );
                }
                (v, l) => {
                    let msg = v
                        .err()
                        .map(|e| format!("version: {e}"))
                        .or(l.err().map(|e| format!("list namespaces: {e}")))
                        .unwrap_or_default();
                    s.health = Some(Health::Unhealthy);
                    s.message = Some(msg.clone());
                    set_condition(
                        &mut s.conditions,
                        "Ready",
                        false,
                        "Unreachable",
                        &msg,
                        generation,
                        t.clone(),
                    );
                }
            }
            if let Some(spec) = rc.spec.pvc_sync.as_ref().filter(|p| p.enabled) {
                let (ready, reason, msg) = match deploy_agent(&ctx, &rc, spec, &agent_client).await
                {
                    Ok(a) => {
                        let ok = a.ready > 0 && a.ready >= a.desired;
                        let msg = format!("{}/{} agent pods ready", a.ready, a.desired);
                        s.agent = Some(a);
                        (ok, if ok { "AgentReady" } else { "AgentNotReady" }, msg)
                    }
                    Err(e) => (false, "AgentDeployFailed", e),
                };
                set_condition(
                    &mut s.conditions,
                    "PvcAgentReady",
                    ready,
                    reason,
                    &msg,
                    generation,
                    t.clone(),
                );
            }
        }
    }
    s.last_check_time = Some(t);
    s.observed_generation = generation;
    Api::<RemoteCluster>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &rc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": s})),
        )
        .await?;
    Ok(Action::requeue(interval))
}

/// Generates (or rotates) the agent host key and deploys the agent into the cluster.
async fn deploy_agent(
    ctx: &Ctx,
    rc: &RemoteCluster,
    spec: &crate::api::PvcSyncSpec,
    client: &kube::Client,
) -> Result<crate::api::AgentStatus, String> {
    use crate::datasync::{agent, rings};
    let manager = &ctx.settings.field_manager;
    let secret = agent::host_ring_secret(&rc.name_any());
    let checked = rings::ensure(&ctx.client, rc, &secret, spec.host_keys.as_ref(), manager)
        .await
        .map_err(|e| format!("agent host key Secret {secret}: {e}"))?;
    let image = agent::image(spec, &ctx.settings.image);
    agent::deploy(client, rc, spec, &image, &checked.ring, manager)
        .await
        .map_err(|e| format!("deploying the agent into namespace {}: {e}", spec.namespace))
}

/// The ClusterMappings that reference a RemoteCluster.
pub fn mappings_using(
    rc: &RemoteCluster,
    mappings: &[Arc<ClusterMapping>],
) -> Vec<ObjectRef<ClusterMapping>> {
    let name = rc.name_any();
    mappings
        .iter()
        .filter(|cm| cm.namespace() == rc.namespace())
        .filter(|cm| {
            cm.spec.source_cluster.as_deref() == Some(name.as_str())
                || cm.spec.target_cluster.as_deref() == Some(name.as_str())
        })
        .map(|cm| ObjectRef::from_obj(cm.as_ref()))
        .collect()
}

/// Status of a ClusterMapping from its RemoteClusters' health (pure).
pub fn mapping_status(
    cm: &ClusterMapping,
    clusters: &[(String, Option<RemoteCluster>)],
    t: Time,
) -> ClusterMappingStatus {
    let prev = cm.status.clone().unwrap_or_default();
    let generation = cm.metadata.generation;
    let mut s = ClusterMappingStatus {
        conditions: prev.conditions.clone(),
        observed_generation: generation,
        ..Default::default()
    };
    let missing: Vec<&str> = clusters
        .iter()
        .filter(|(_, rc)| rc.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    let unhealthy: Vec<&str> = clusters
        .iter()
        .filter(|(_, rc)| {
            rc.as_ref().is_some_and(|rc| {
                rc.status.as_ref().and_then(|s| s.health) != Some(Health::Healthy)
            })
        })
        .map(|(n, _)| n.as_str())
        .collect();
    let (phase, message) = if cm.spec.paused {
        (ClusterMappingPhase::Paused, "paused".to_string())
    } else if !missing.is_empty() {
        (
            ClusterMappingPhase::Failed,
            format!("RemoteCluster not found: {}", missing.join(", ")),
        )
    } else if !unhealthy.is_empty() {
        (
            ClusterMappingPhase::Degraded,
            format!("RemoteCluster not healthy: {}", unhealthy.join(", ")),
        )
    } else {
        (
            ClusterMappingPhase::Ready,
            "all clusters healthy".to_string(),
        )
    };
    let ok = phase == ClusterMappingPhase::Ready;
    set_condition(
        &mut s.conditions,
        "Ready",
        ok,
        &format!("{phase:?}"),
        &message,
        generation,
        t.clone(),
    );
    // Agent connectivity of the source cluster, as its RemoteCluster last saw it.
    if let Some((name, Some(rc))) = clusters
        .iter()
        .find(|(n, _)| cm.spec.source_cluster.as_deref() == Some(n.as_str()))
        && rc.spec.pvc_sync.as_ref().is_some_and(|p| p.enabled)
    {
        let seen = rc
            .status
            .as_ref()
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == "PvcAgentReady"));
        let (ready, reason, msg) = match seen {
            Some(c) => (c.status == "True", c.reason.clone(), c.message.clone()),
            None => (false, "Unknown".into(), "not checked yet".into()),
        };
        set_condition(
            &mut s.conditions,
            "PvcAgentReady",
            ready,
            &reason,
            &format!("source {name}: {msg}"),
            generation,
            t.clone(),
        );
    }
    s.phase = Some(phase);
    s.message = Some(message);
    // Only a changed verdict moves the timestamp: a steady state writes nothing.
    s.last_check_time = if prev.phase == s.phase && prev.message == s.message {
        prev.last_check_time.clone().or(Some(t))
    } else {
        Some(t)
    };
    s
}

/// Reconciles one ClusterMapping.
pub async fn reconcile_mapping(
    cm: Arc<ClusterMapping>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let ns = cm.namespace().unwrap_or_default();
    if !ctx.owns_shared(&format!("ClusterMapping/{ns}/{}", cm.name_any())) {
        return Ok(Action::await_change());
    }
    let api: Api<RemoteCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let mut clusters = Vec::new();
    for name in [&cm.spec.source_cluster, &cm.spec.target_cluster]
        .into_iter()
        .flatten()
    {
        clusters.push((name.clone(), api.get_opt(name).await?));
    }
    let s = mapping_status(&cm, &clusters, now());
    if cm.status.as_ref() != Some(&s) {
        Api::<ClusterMapping>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &cm.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": s})),
            )
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Requeue policy of both reconcilers.
pub fn error_policy<K>(_obj: Arc<K>, err: &ControllerError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %err, "cluster reconcile failed");
    Action::requeue(Duration::from_secs(30))
}
