//! Sharding across replicas. Every replica holds a membership Lease in the controller's
//! namespace and renews it; the live members (leases renewed within their duration) split
//! the mappings by rendezvous (highest-random-weight) hashing, so a replica that joins or
//! leaves moves only its own share and every member computes the same owner without
//! talking to the others.
//!
//! Writes are fenced: before each, a replica checks that its own lease is fresh, by its
//! monotonic clock and on the apiserver, and that a fresh listing of the members still
//! assigns the mapping to it; an error while checking means "not mine" (fail closed). A
//! replica that let its lease run out (paused past it, cut off from the apiserver) does
//! not renew it again: its in-flight work is stale, so it exits and a restart rejoins.
//!
//! Static shards follow Flux's convention: a replica started with `--shard NAME` takes
//! only mappings labelled `dr-syncer.io/shard: NAME`, the others only unlabelled ones, and
//! each group hashes among its own members.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::gitops::Fence;

/// Label of membership Leases (value [`MEMBER_VALUE`]).
pub const MEMBER_LABEL: &str = "dr-syncer.io/member";
/// Value of [`MEMBER_LABEL`].
pub const MEMBER_VALUE: &str = "controller";
/// Label pinning a NamespaceMapping (and a member's Lease) to a static shard, as Flux's
/// `sharding.fluxcd.io/key`.
pub const SHARD_LABEL: &str = "dr-syncer.io/shard";

/// Members whose leases ran out this long ago are deleted by whoever sees them: pod names
/// change with every rollout, and dead members' leases would pile up.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The label selector of the objects a replica of `shard` takes (`None`: the default
/// group, which takes only unlabelled objects).
pub fn shard_selector(shard: Option<&str>) -> String {
    match shard {
        Some(s) => format!("{SHARD_LABEL}={s}"),
        None => format!("!{SHARD_LABEL}"),
    }
}

/// The live member that owns `key`: the one with the highest weight for it. Ties (which
/// need equal 64-bit hashes) go to the smaller name, so every member agrees.
pub fn owner<'a>(members: &'a [String], key: &str) -> Option<&'a str> {
    members
        .iter()
        .max_by(|a, b| weight(a, key).cmp(&weight(b, key)).then_with(|| b.cmp(a)))
        .map(String::as_str)
}

/// The weight of `member` for `key`: a keyed hash, stable across versions and platforms
/// (every replica of a rolling update must agree).
fn weight(member: &str, key: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(member.as_bytes());
    h.update(&[0]);
    h.update(key.as_bytes());
    let bytes: [u8; 8] = h.finalize().as_bytes()[..8].try_into().expect("8 bytes");
    u64::from_be_bytes(bytes)
}

/// When a member's lease runs out (`None`: it has no renewal or duration, never live).
pub fn expiry(spec: &LeaseSpec) -> Option<jiff::Timestamp> {
    let renewed = spec.renew_time.as_ref()?.0;
    let seconds = spec.lease_duration_seconds.filter(|s| *s > 0)?;
    Some(renewed + jiff::SignedDuration::from_secs(i64::from(seconds)))
}

/// The holders of the unexpired leases at `now`, sorted and without repeats.
pub fn live_members(leases: &[Lease], now: jiff::Timestamp) -> Vec<String> {
    leases
        .iter()
        .filter_map(|l| {
            let spec = l.spec.as_ref()?;
            let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
            (expiry(spec)? > now).then_some(holder)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// This replica's membership: its Lease, the live members it last saw, and whether it has
/// lost its place.
pub struct Membership {
    api: Api<Lease>,
    identity: String,
    lease: String,
    shard: Option<String>,
    duration: Duration,
    /// Monotonic start of the last successful renewal; `None` before the first.
    renewed: Mutex<Option<Instant>>,
    /// When the earliest lease of another live member runs out (from the last listing).
    next_expiry: Mutex<Option<Instant>>,
    live: watch::Sender<Arc<Vec<String>>>,
    lost: watch::Sender<Option<String>>,
}

impl Membership {
    /// A membership of `identity` in the group of `shard`, with leases of `duration`.
    pub fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        shard: Option<String>,
        duration: Duration,
    ) -> Arc<Self> {
        // One lease per replica, named after it (pod names are unique and fit a Lease name).
        let lease = format!("dr-syncer-member-{identity}");
        Arc::new(Membership {
            api: Api::namespaced(client, namespace),
            identity: identity.to_string(),
            lease,
            shard,
            duration: duration.max(Duration::from_secs(3)),
            renewed: Mutex::new(None),
            next_expiry: Mutex::new(None),
            live: watch::Sender::new(Arc::new(Vec::new())),
            lost: watch::Sender::new(None),
        })
    }

    /// This replica's identity (what the mappings' `status.owner` shows).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Takes the lease and reads the members once, so the first reconciles already see
    /// every live member (a replica that assumed it was alone would take every mapping
    /// and drop them again a moment later).
    pub async fn join(&self) -> Result<(), String> {
        self.renew().await?;
        self.refresh().await?;
        Ok(())
    }

    /// Renews the lease and follows the members until the lease is lost; wakes at the
    /// renewal period or when another member's lease runs out, whichever comes first, so
    /// a dead member's mappings move as soon as its lease expires.
    pub async fn run(self: Arc<Self>) {
        let period = self.duration / 3;
        let mut next_renewal = Instant::now() + period;
        loop {
            let wake = self
                .next_expiry()
                .map(|e| e.min(next_renewal))
                .unwrap_or(next_renewal);
            tokio::time::sleep_until(wake.into()).await;
            if Instant::now() >= next_renewal {
                next_renewal = Instant::now() + period;
                if let Err(e) = self.renew().await {
                    tracing::warn!(lease = %self.lease, error = %e, "renewing the membership lease");
                }
                if self.lost.borrow().is_some() {
                    self.live.send_replace(Arc::new(Vec::new()));
                    return;
                }
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "listing the controller members");
            }
        }
    }

    /// When the earliest lease of another live member runs out, as last listed (a
    /// moment later, so the listing then sees it expired).
    fn next_expiry(&self) -> Option<Instant> {
        *self.next_expiry.lock().expect("not poisoned")
    }

    /// Renews (or creates) this replica's lease. Refuses, and marks the membership lost,
    /// when the previous renewal is older than the lease: the lease ran out, others may
    /// have taken this replica's mappings, and what it holds in flight is stale.
    async fn renew(&self) -> Result<(), String> {
        let started = Instant::now();
        let now = jiff::Timestamp::now();
        if let Some(prev) = *self.renewed.lock().expect("not poisoned")
            && started.duration_since(prev) >= self.duration
        {
            let why = format!(
                "the membership lease {} was not renewed for {:.1} s (lease {} s): another replica may own this replica's mappings",
                self.lease,
                started.duration_since(prev).as_secs_f64(),
                self.duration.as_secs()
            );
            self.lost.send_replace(Some(why.clone()));
            return Err(why);
        }
        let mut labels = std::collections::BTreeMap::from([
            (MEMBER_LABEL.to_string(), MEMBER_VALUE.to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "dr-syncer".to_string(),
            ),
        ]);
        if let Some(s) = &self.shard {
            labels.insert(SHARD_LABEL.to_string(), s.clone());
        }
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.lease.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(seconds),
                renew_time: Some(MicroTime(now)),
                acquire_time: Some(MicroTime(now)),
                ..Default::default()
            }),
        };
        let timeout = self.duration / 3;
        let write = async {
            match self.api.get_opt(&self.lease).await? {
                None => self.api.create(&PostParams::default(), &lease).await,
                Some(old) => {
                    let spec = old.spec.clone().unwrap_or_default();
                    if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                        return Err(kube::Error::Service(
                            format!("the membership lease is held by {:?}", spec.holder_identity)
                                .into(),
                        ));
                    }
                    lease.metadata.resource_version = old.resource_version();
                    if let Some(s) = lease.spec.as_mut() {
                        s.acquire_time = spec.acquire_time;
                    }
                    self.api
                        .replace(&self.lease, &PostParams::default(), &lease)
                        .await
                }
            }
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| format!("renewing {} timed out", self.lease))?
            .map_err(|e| format!("renewing {}: {e}", self.lease))?;
        *self.renewed.lock().expect("not poisoned") = Some(started);
        Ok(())
    }

    /// Lists the group's leases: the live members, published when they changed; members
    /// dead for [`FORGET_AFTER`] are deleted.
    async fn refresh(&self) -> Result<(), String> {
        let leases = self.list().await?;
        let now = jiff::Timestamp::now();
        let mut live = live_members(&leases, now);
        // This replica counts only while its own lease is fresh by its own clock.
        if !self.fresh() {
            live.retain(|m| m != &self.identity);
        }
        let earliest = leases
            .iter()
            .filter(|l| l.name_any() != self.lease)
            .filter_map(|l| l.spec.as_ref().and_then(expiry))
            .filter(|e| *e > now)
            .min();
        *self.next_expiry.lock().expect("not poisoned") = earliest.map(|e| {
            let left = Duration::try_from(e.duration_since(now)).unwrap_or_default();
            Instant::now() + left + Duration::from_millis(100)
        });
        self.live.send_if_modified(|old| {
            if **old == live {
                return false;
            }
            tracing::info!(members = ?live, "controller members changed");
            *old = Arc::new(live);
            true
        });
        for l in &leases {
            let dead_since = l.spec.as_ref().and_then(expiry);
            let forget = dead_since.is_none_or(|e| {
                now.duration_since(e) > jiff::SignedDuration::try_from(FORGET_AFTER).unwrap()
            });
            if forget && l.name_any() != self.lease {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: l.resource_version(),
                        uid: None,
                    }),
                    ..Default::default()
                };
                let _ = self.api.delete(&l.name_any(), &dp).await;
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Lease>, String> {
        let mut selector = format!("{MEMBER_LABEL}={MEMBER_VALUE}");
        selector.push(',');
        selector.push_str(&shard_selector(self.shard.as_deref()));
        let list = tokio::time::timeout(
            Duration::from_secs(10),
            self.api.list(&ListParams::default().labels(&selector)),
        )
        .await
        .map_err(|_| "listing the membership leases timed out".to_string())?
        .map_err(|e| format!("listing the membership leases: {e}"))?;
        Ok(list.items)
    }

    /// Whether the last renewal is younger than the lease, by the monotonic clock (a
    /// paused process sees its pause here before anything else).
    fn fresh(&self) -> bool {
        self.lost.borrow().is_none()
            && self
                .renewed
                .lock()
                .expect("not poisoned")
                .is_some_and(|at| at.elapsed() < self.duration)
    }

    /// Whether this replica owns `key` by the members it last saw (deciding what to work
    /// on; writes are checked again by [`Membership::check`]).
    pub fn owns(&self, key: &str) -> bool {
        self.fresh() && owner(&self.live.borrow(), key) == Some(self.identity.as_str())
    }

    /// The members this replica last saw.
    pub fn members(&self) -> Arc<Vec<String>> {
        self.live.borrow().clone()
    }

    /// `Ok` when this replica may write for `key` now: its lease is fresh (monotonic
    /// clock, then the apiserver's copy) and a fresh listing of the members assigns `key`
    /// to it. Any error refuses.
    pub async fn check(&self, key: &str) -> Result<(), String> {
        if !self.fresh() {
            return Err(format!(
                "this replica ({}) let its membership lease run out",
                self.identity
            ));
        }
        let leases = self.list().await?;
        let now = jiff::Timestamp::now();
        let own = leases
            .iter()
            .find(|l| l.name_any() == self.lease)
            .ok_or_else(|| format!("the membership lease {} is gone", self.lease))?;
        super::leader::lease_verdict(&own.spec.clone().unwrap_or_default(), &self.identity, now)?;
        let live = live_members(&leases, now);
        match owner(&live, key) {
            Some(o) if o == self.identity => Ok(()),
            o => Err(format!(
                "mapping {key} now belongs to replica {:?}, not {}",
                o.unwrap_or("none"),
                self.identity
            )),
        }
    }

    /// The blocking form of [`Membership::check`] for the git pushes (call it from
    /// `spawn_blocking` threads only).
    pub fn fence(self: &Arc<Self>, key: &str) -> Fence {
        let handle = tokio::runtime::Handle::current();
        let me = self.clone();
        let key = key.to_string();
        Fence::new(move || handle.block_on(me.check(&key)))
    }

    /// Fires (with the members) whenever the live members change.
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.live.subscribe(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    /// Resolves with the reason once the lease is lost.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the membership task ended".into(),
        }
    }

    /// Gives the lease up (graceful shutdown): the others take this replica's mappings at
    /// their next listing instead of after the lease runs out.
    pub async fn leave(&self) {
        self.lost.send_replace(Some("leaving (shutdown)".into()));
        if let Err(e) = self.api.delete(&self.lease, &DeleteParams::default()).await {
            tracing::warn!(lease = %self.lease, error = %e, "giving up the membership lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("dr-syncer/mapping-{i}")).collect()
    }

    #[test]
    fn owner_cases() {
        let three = members(&["dr-syncer-a", "dr-syncer-b", "dr-syncer-c"]);
        let cases: [(&str, &[String], Option<&str>); 2] = [
            ("no members", &[], None),
            ("one member owns all", &three[..1], Some("dr-syncer-a")),
        ];
        for (what, members, want) in cases {
            assert_eq!(owner(members, "dr-syncer/x"), want, "{what}");
        }
        // The order members are listed in does not matter.
        let mut reversed = three.clone();
        reversed.reverse();
        for k in keys(200) {
            assert_eq!(owner(&three, &k), owner(&reversed, &k), "{k}");
        }
    }

    #[test]
    fn owner_spreads_keys_evenly() {
        let three = members(&["dr-syncer-a", "dr-syncer-b", "dr-syncer-c"]);
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for k in keys(3000) {
            *counts.entry(owner(&three, &k).unwrap()).or_default() += 1;
        }
        // 1000 expected each; a fair hash stays well within ±15 %.
        for (m, c) in &counts {
            assert!((850..=1150).contains(c), "{m}: {c} of 3000 ({counts:?})");
        }
        assert_eq!(counts.len(), 3);
    }

    #[test]
    fn owner_moves_only_the_leavers_keys() {
        let three = members(&["dr-syncer-a", "dr-syncer-b", "dr-syncer-c"]);
        let two = members(&["dr-syncer-a", "dr-syncer-c"]);
        let mut moved = 0;
        for k in keys(1000) {
            let before = owner(&three, &k).unwrap();
            let after = owner(&two, &k).unwrap();
            if before == "dr-syncer-b" {
                moved += 1;
                assert_ne!(after, "dr-syncer-b");
            } else {
                assert_eq!(before, after, "{k} moved though its owner stayed");
            }
        }
        assert!(moved > 250, "b owned {moved} of 1000");
    }

    fn lease(holder: Option<&str>, renewed: &str, seconds: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_duration_seconds: seconds,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn live_members_cases() {
        let now: jiff::Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let cases = [
            (
                "fresh",
                lease(Some("a"), "2026-12-03T09:59:55Z", Some(15)),
                true,
            ),
            (
                "expired",
                lease(Some("a"), "2026-12-03T09:59:40Z", Some(15)),
                false,
            ),
            (
                "expires now",
                lease(Some("a"), "2026-12-03T09:59:45Z", Some(15)),
                false,
            ),
            (
                "no holder",
                lease(None, "2026-12-03T09:59:55Z", Some(15)),
                false,
            ),
            (
                "empty holder",
                lease(Some(""), "2026-12-03T09:59:55Z", Some(15)),
                false,
            ),
            (
                "no duration",
                lease(Some("a"), "2026-12-03T09:59:55Z", None),
                false,
            ),
            (
                "zero duration",
                lease(Some("a"), "2026-12-03T09:59:55Z", Some(0)),
                false,
            ),
        ];
        for (what, l, live) in cases {
            let want = if live { vec!["a".to_string()] } else { vec![] };
            assert_eq!(live_members(&[l], now), want, "{what}");
        }
        let both = [
            lease(Some("b"), "2026-12-03T09:59:55Z", Some(15)),
            lease(Some("a"), "2026-12-03T09:59:55Z", Some(15)),
            lease(Some("a"), "2026-12-03T09:59:56Z", Some(15)),
        ];
        assert_eq!(live_members(&both, now), members(&["a", "b"]));
    }

    #[test]
    fn shard_selector_cases() {
        assert_eq!(shard_selector(None), "!dr-syncer.io/shard");
        assert_eq!(shard_selector(Some("eu")), "dr-syncer.io/shard=eu");
    }
}
