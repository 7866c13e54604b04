//! The mass-deletion breaker. A dying source cluster (API down, RBAC revoked, namespace
//! wiped) looks exactly like "everything was deleted", and the DR side's GitOps with
//! `prune: true` would faithfully delete the DR copy. A batch deleting more than a share
//! or a count of a mapping's objects is held until someone releases it explicitly.

/// Thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Largest share of the previous objects one batch may delete, in percent.
    pub max_percent: u8,
    /// Largest number of objects one batch may delete.
    pub max_count: Option<u64>,
    /// Release: let this batch through whatever it deletes.
    pub allow: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            max_percent: 50,
            max_count: None,
            allow: false,
        }
    }
}

/// A held batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "mass-deletion breaker: this sync would delete {deleted} of {total} objects ({percent}%), above the limit of {limit}; nothing was committed. Check the source cluster; if the deletions are intended, release with --allow-mass-deletion (or the dr-syncer.io/allow-mass-deletion annotation)"
)]
pub struct Held {
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
    /// Checks a batch deleting `deleted` of `total` objects.
    pub fn check(&self, deleted: u64, total: u64) -> Result<(), Held> {
        if self.allow || deleted == 0 || total == 0 {
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
            assert_eq!(breaker.check(deleted, total).is_ok(), ok, "{name}");
        }
    }
}
