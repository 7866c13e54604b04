//! The mass-deletion breaker. A dying source cluster (API down, RBAC revoked, namespace
//! wiped) looks exactly like "everything was deleted", and the DR side's GitOps with
//! `prune: true` would faithfully delete the DR copy. A batch deleting more than a share
//! or a count of a mapping's objects is held until someone releases it explicitly.

use sha2::{Digest, Sha256};

/// Thresholds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breaker {
    /// Largest share of the previous objects one batch may delete, in percent.
    pub max_percent: u8,
    /// Largest number of objects one batch may delete.
    pub max_count: Option<u64>,
    /// Release every batch (the CLI's `--allow-mass-deletion`).
    pub allow: bool,
    /// Release exactly the batch with this id (the annotation's value); a release cannot
    /// stay on by accident and let a later, different mass deletion through.
    pub release: Option<String>,
}

impl Breaker {
    /// The default limit: half of the objects.
    pub fn with_defaults() -> Self {
        Breaker {
            max_percent: 50,
            ..Breaker::default()
        }
    }
}

/// The id of a batch: a short hash of the sorted objects it deletes.
pub fn batch_id(deleted: &[String]) -> String {
    let mut sorted: Vec<&String> = deleted.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for d in sorted {
        h.update(d.as_bytes());
        h.update(b"\n");
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A held batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "mass-deletion breaker: this sync would delete {deleted} of {total} objects ({percent}%), above the limit of {limit}; nothing was written. Check the source cluster; if the deletions are intended, release batch {batch} with the annotation dr-syncer.io/allow-mass-deletion={batch} (CLI: --allow-mass-deletion)"
)]
pub struct Held {
    /// Id of the held batch (what the release annotation must say).
    pub batch: String,
    /// Objects the batch deletes.
    pub deleted: u64,
    /// Objects before the batch.
    pub total: u64,
    /// `deleted / total` in percent.
    pub percent: u64,
    /// The limit that tripped, for the message.
    pub limit: String,
}

impl Breaker {
    /// Checks a batch deleting `deleted_objects` (paths or keys) of `total` objects.
    pub fn check(&self, deleted_objects: &[String], total: u64) -> Result<(), Held> {
        let deleted = deleted_objects.len() as u64;
        if self.allow || deleted == 0 || total == 0 {
            return Ok(());
        }
        let batch = batch_id(deleted_objects);
        if self.release.as_deref() == Some(batch.as_str()) {
            return Ok(());
        }
        let percent = deleted * 100 / total;
        let over_share = deleted * 100 > u64::from(self.max_percent) * total;
        let over_count = self.max_count.is_some_and(|c| deleted > c);
        if !over_share && !over_count {
            return Ok(());
        }
        let limit = if over_count {
            format!("{} objects", self.max_count.unwrap_or(0))
        } else {
            format!("{}%", self.max_percent)
        };
        Err(Held {
            batch,
            deleted,
            total,
            percent,
            limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_check_table() {
        let b = |p, c, allow| Breaker {
            max_percent: p,
            max_count: c,
            allow,
            release: None,
        };
        let cases = [
            ("nothing deleted", b(50, None, false), 0, 10, true),
            ("half is allowed", b(50, None, false), 5, 10, true),
            ("over half held", b(50, None, false), 6, 10, false),
            ("everything held", b(50, None, false), 10, 10, false),
            ("count limit", b(100, Some(3), false), 4, 100, false),
            ("under count", b(100, Some(3), false), 3, 100, true),
            ("released", b(50, None, true), 10, 10, true),
            ("first export", b(50, None, false), 0, 0, true),
            ("zero percent", b(0, None, false), 1, 1000, false),
        ];
        for (name, breaker, deleted, total, ok) in cases {
            let objects: Vec<String> = (0..deleted)
                .map(|i| format!("ns/core/configmaps/c{i}.yaml"))
                .collect();
            assert_eq!(breaker.check(&objects, total).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn breaker_release_names_one_batch() {
        let objects: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
        let held = Breaker::with_defaults().check(&objects, 10).unwrap_err();
        let released = Breaker {
            release: Some(held.batch.clone()),
            ..Breaker::with_defaults()
        };
        assert!(
            released.check(&objects, 10).is_ok(),
            "the named batch goes through"
        );
        let other: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
        assert!(
            released.check(&other, 10).is_err(),
            "a different batch is still held"
        );
    }
}
