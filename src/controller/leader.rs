//! Fencing by the leader lease. Leader election alone does not stop a replica that was
//! paused (SIGSTOP, a frozen VM, a long GC) past its lease: when it resumes, its in-flight
//! work would push an older snapshot over the new leader's commits or apply it to the DR
//! cluster. Every write therefore first reads the Lease and goes ahead only if this
//! replica still holds it and the lease has not run out; an error while reading means
//! "not the leader" (fail closed).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::{Api, Client};

/// Name of the leader-election Lease in the controller's namespace.
pub const LEASE_NAME: &str = "dr-syncer-controller";

/// This replica's claim to the leader lease, checked before each write.
#[derive(Clone)]
pub struct Leadership {
    /// Client for the controller's own cluster.
    pub client: Client,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (the Lease's `holderIdentity` while it leads).
    pub identity: String,
    /// The Lease's name ([`lease_name`]).
    pub lease: String,
}

/// The leader Lease of a group of replicas: [`LEASE_NAME`], or one per static shard so
/// each shard elects its own writer.
pub fn lease_name(shard: Option<&str>) -> String {
    match shard {
        Some(s) => format!("{LEASE_NAME}-{s}"),
        None => LEASE_NAME.to_string(),
    }
}

impl Leadership {
    /// `Ok` while this replica holds an unexpired lease.
    pub async fn check(&self) -> Result<(), String> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        // Bounded: a half-open connection must not hold a push (and its mapping) forever.
        let name = &self.lease;
        let lease = tokio::time::timeout(std::time::Duration::from_secs(10), api.get(name))
            .await
            .map_err(|_| format!("reading the leader lease {name} timed out"))?
            .map_err(|e| format!("cannot read the leader lease {name}: {e}"))?;
        lease_verdict(
            &lease.spec.unwrap_or_default(),
            &self.identity,
            jiff::Timestamp::now(),
        )
    }
}

/// Whether `identity` holds the lease `spec` at `now` (pure; membership leases too).
pub fn lease_verdict(spec: &LeaseSpec, identity: &str, now: jiff::Timestamp) -> Result<(), String> {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder != identity {
        return Err(format!(
            "this replica ({identity}) lost the leader lease to {:?}",
            holder
        ));
    }
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return Err("the leader lease has no renewTime or leaseDurationSeconds".into());
    };
    let expires = renewed.0 + jiff::SignedDuration::from_secs(i64::from(seconds));
    if now >= expires {
        return Err(format!(
            "the leader lease of {identity} expired at {expires} (not renewed in time)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    #[test]
    fn lease_verdict_table() {
        let now: jiff::Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let at = |s: &str| Some(MicroTime(s.parse().unwrap()));
        let spec =
            |holder: Option<&str>, renewed: Option<MicroTime>, secs: Option<i32>| LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renewed,
                lease_duration_seconds: secs,
                ..Default::default()
            };
        let cases = [
            (
                "held and fresh",
                spec(Some("a"), at("2026-12-02T09:59:58Z"), Some(15)),
                None,
            ),
            (
                "held by another",
                spec(Some("b"), at("2026-12-02T09:59:58Z"), Some(15)),
                Some("lost the leader lease"),
            ),
            (
                "nobody holds it",
                spec(None, None, None),
                Some("lost the leader lease"),
            ),
            (
                "held but expired",
                spec(Some("a"), at("2026-12-02T09:59:40Z"), Some(15)),
                Some("expired"),
            ),
            (
                "held without times",
                spec(Some("a"), None, Some(15)),
                Some("no renewTime"),
            ),
        ];
        for (what, spec, refused) in cases {
            let got = lease_verdict(&spec, "a", now);
            match refused {
                None => assert_eq!(got, Ok(()), "{what}"),
                Some(needle) => assert!(
                    got.as_ref().is_err_and(|m| m.contains(needle)),
                    "{what}: {got:?}"
                ),
            }
        }
    }
}
