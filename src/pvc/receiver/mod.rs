//! The receiving side (the DR volume). A sync runs in stages:
//!
//! 1. [`handshake`]: protocol versions and features;
//! 2. [`intake`]: the manifest, checked to describe one tree in walk order (every parent an
//!    earlier directory entry, no duplicates, nothing under the state directory, at most
//!    [`Options::max_entries`] entries), each file planned as it arrives ([`plan`]);
//! 3. [`tree::make_dirs`], then metadata-only updates and local hard-link twins;
//! 4. the transfer: [`requests`] go out ahead of the [`answers`], which are written to
//!    temporary files within the manifest's sizes and verified with BLAKE3 (resent whole
//!    once on mismatch);
//! 5. [`publish`]: fsync, owner, mode, times, rename into place, on its own thread;
//! 6. [`tree::finish`]: hard links, symlinks, deletions, directory metadata.
//!
//! The sender is not trusted: every destination operation goes through directory
//! descriptors that never follow a symlink ([`beneath`]), so no manifest — and no symlink
//! an earlier sync or a tenant left behind — makes the receiver read, write or chmod
//! anything outside its root.

mod answers;
pub mod beneath;
mod handshake;
mod intake;
pub mod plan;
mod publish;
mod requests;
mod tree;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use plan::{DeltaBasis, Local, Plan, plan_file};

use super::manifest::STATE_DIR;
use super::wire::Kind;
use super::{PvcError, Summary};
use beneath::{DirCache, Root};

/// Progress callback: (files done, files to transfer, bytes done).
pub type ProgressFn = Box<dyn Fn(u64, u64, u64) + Send + Sync>;

/// Default bound on manifest entries: far more than a volume usually holds, and a bound on
/// what a hostile sender can make the receiver keep in memory (a few hundred bytes each).
pub const MAX_ENTRIES: u64 = 20_000_000;

/// Receiver settings.
pub struct Options {
    /// Ask the sender to stay below this many bytes per second.
    pub bwlimit: Option<u64>,
    /// Called after every file with (files done, files to transfer, bytes done).
    pub progress: Option<ProgressFn>,
    /// Refuse manifests of more entries than this.
    pub max_entries: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bwlimit: None,
            progress: None,
            max_entries: MAX_ENTRIES,
        }
    }
}

/// The receiver's state directories (`.drsync/tmp` for files being received,
/// `.drsync/partial` for interrupted ones), open.
pub struct State {
    tmp: OwnedFd,
    partial: OwnedFd,
}

impl State {
    /// Makes the state directories real directories (a symlink planted there is replaced,
    /// never written through) and opens them.
    fn open(root: &Root) -> Result<State, PvcError> {
        let io = |err| PvcError::io(&root.show(STATE_DIR.as_bytes()), err);
        beneath::ensure_dir(root.dir(b"").map_err(io)?.as_fd(), STATE_DIR.as_bytes())
            .map_err(io)?;
        let state = root.dir(STATE_DIR.as_bytes()).map_err(io)?;
        for d in ["tmp", "partial"] {
            beneath::ensure_dir(state.as_fd(), d.as_bytes()).map_err(io)?;
        }
        let sub = |d: &str| root.dir(format!("{STATE_DIR}/{d}").as_bytes()).map_err(io);
        Ok(State {
            tmp: sub("tmp")?,
            partial: sub("partial")?,
        })
    }
}

/// Runs one sync into `to` over `stream`.
pub async fn sync<S>(stream: S, to: &Path, opts: &Options) -> Result<Summary, PvcError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let (rd, wr) = tokio::io::split(stream);
    // Buffered both ways: small frames (manifest entries, requests) share SSH packets.
    let mut rd = tokio::io::BufReader::with_capacity(256 << 10, rd);
    let mut wr = tokio::io::BufWriter::with_capacity(64 << 10, wr);
    handshake::hello(&mut rd, &mut wr, opts.bwlimit).await?;
    let root = Arc::new(Root::open(to).map_err(|e| PvcError::io(to, e))?);
    let manifest = {
        let mut planner = plan::Planner::new(&root);
        intake::receive(&mut rd, &mut planner, opts.max_entries).await?
    };
    // Nothing was changed until here: the whole manifest has been checked.
    let entries = manifest.entries;
    let state = Arc::new(State::open(&root)?);
    let mut summary = Summary::default();
    tree::make_dirs(&root, &entries, &mut summary)?;
    let wants = local_work(&root, &state, &entries, manifest.plans, &mut summary)?;
    let total = wants.len() as u64;
    let budgets = requests::Budgets::new();
    let (order_tx, order_rx) = mpsc::unbounded_channel();
    let (redo_tx, redo_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(requests::send_all(
        wr,
        root.clone(),
        state.clone(),
        wants,
        budgets.clone(),
        order_tx,
        redo_rx,
    ));
    let mut publisher = publish::Publisher::start(root.clone(), state.clone());
    let mut answers = answers::Answers::new(
        &entries,
        &state,
        order_rx,
        redo_tx,
        budgets,
        &mut publisher,
        opts.progress.as_ref(),
    );
    let result = answers.run(&mut rd, total, &mut summary).await;
    if result.is_err() {
        answers.keep_partial();
    }
    drop(answers);
    // Whatever happened, files already verified are published before we go on.
    let result = result.and(publisher.finish());
    if let Err(e) = result {
        writer.abort();
        return Err(e);
    }
    writer
        .await
        .map_err(|e| PvcError::Protocol(format!("writer: {e}")))??;
    tree::finish(&root, &state, &entries, &mut summary)?;
    summary.duration = start.elapsed();
    Ok(summary)
}

/// Carries out the plans that need no transfer (metadata only; a new name of a
/// hard-linked file already here) and returns the files to request.
fn local_work(
    root: &Root,
    state: &State,
    entries: &[super::wire::Entry],
    plans: Vec<(u32, Plan)>,
    summary: &mut Summary,
) -> Result<Vec<requests::Want>, PvcError> {
    // Other names of each hard-linked file.
    let mut members: HashMap<u32, Vec<&[u8]>> = HashMap::new();
    for e in entries {
        if let Kind::HardLink { leader } = e.kind {
            members.entry(leader).or_default().push(&e.path);
        }
    }
    let mut dirs = DirCache::default();
    let mut wants = Vec::new();
    for (i, plan) in plans {
        let e = &entries[i as usize];
        match plan {
            Plan::Skip => summary.files_unchanged += 1,
            Plan::Metadata => {
                tree::file_metadata(root, &mut dirs, e)?;
                summary.files_metadata += 1;
            }
            Plan::Whole => {
                let twins = members.get(&i).map(Vec::as_slice).unwrap_or_default();
                if !twins.is_empty() && tree::link_twin(root, state, &mut dirs, (i, e), twins)? {
                    summary.files_metadata += 1;
                } else {
                    wants.push(requests::Want {
                        idx: i,
                        path: Vec::new(),
                        basis: None,
                    });
                }
            }
            Plan::Delta(basis) => wants.push(requests::Want {
                idx: i,
                path: e.path.clone(),
                basis: Some(basis),
            }),
        }
    }
    Ok(wants)
}
