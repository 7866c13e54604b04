//! PVC data replication: a delta-sync engine (the rsync algorithm via `fast_rsync`, BLAKE3
//! verification) speaking a small framed protocol over one byte stream — an SSH channel
//! between `dr-syncer agent serve-volume` on the source and `dr-syncer pvc-sync` on the DR
//! side.

pub mod access;
pub mod delta;
pub mod manifest;
pub mod receiver;
mod scratch;
pub mod sender;
pub mod served;
pub mod ssh;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum PvcError {
    /// The connection or a frame failed.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// A local file operation failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer reported an error.
    #[error("remote: {0}")]
    Remote(String),
    /// A file failed BLAKE3 verification twice.
    #[error("{0}: content failed verification twice")]
    Verify(String),
    /// The deletion breaker held the sync; nothing on the destination changed.
    #[error("{0}")]
    Held(receiver::breaker::Hold),
    /// Owners could not be kept and the receiver was told to require them.
    #[error("{0}")]
    Ownership(String),
}

impl PvcError {
    /// An I/O error at `path`.
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        PvcError::Io(path.to_path_buf(), e)
    }
}

/// What one sync did.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Files whose content was transferred.
    pub files_transferred: u64,
    /// Files already up to date.
    pub files_unchanged: u64,
    /// Files whose owner, mode or times were updated only.
    pub files_metadata: u64,
    /// Files resent whole after failing verification.
    pub files_redone: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Hard links.
    pub hardlinks: u64,
    /// Entries deleted at the destination (a directory with its contents counts once).
    pub deleted: u64,
    /// Files deleted at the destination, inside deleted directories included.
    pub deleted_files: u64,
    /// Bytes of the deleted files.
    pub deleted_bytes: u64,
    /// Entries whose owner could not be set (the receiver lacks `CAP_CHOWN`); only a sync
    /// told to ignore ownership succeeds with this above zero.
    pub ownership_not_kept: u64,
    /// Source entries the sender may not read; the destination keeps its copy of them.
    pub unreadable: u64,
    /// The first of them (at most 8, each cut to 120 characters).
    pub unreadable_paths: Vec<String>,
    /// Whether an interrupted commit of an earlier sync was finished first.
    pub finished_interrupted_commit: bool,
    /// A check-only pass: files (and deletions) a sync would change now.
    pub would_change: u64,
    /// The first of them (at most 8, each cut to 120 characters).
    pub would_change_paths: Vec<String>,
    /// Bytes sent literally.
    pub bytes_literal: u64,
    /// Bytes rebuilt from the destination's own data (delta matches).
    pub bytes_matched: u64,
    /// Zero bytes kept as holes.
    pub bytes_sparse: u64,
    /// Size of the transferred files.
    pub bytes_total: u64,
    /// Wall time.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
