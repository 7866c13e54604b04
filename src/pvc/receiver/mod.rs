//! The receiving side (the DR volume). A sync runs in stages:
//!
//! 1. an interrupted commit of an earlier sync is finished ([`commit::finish`]);
//! 2. [`handshake`]: protocol versions and features;
//! 3. [`intake`]: the manifest, checked to describe one tree in walk order (every parent an
//!    earlier directory entry, no duplicates, nothing under the state directory, at most
//!    [`Options::max_entries`] entries), each file planned as it arrives ([`plan`]), kept
//!    on disk rather than in memory ([`spill`]) so millions of files fit the Job's limit;
//! 4. [`breaker`]: what the manifest would delete is counted (the destination walked
//!    beside the manifest, both in walk order); too much holds the sync;
//!    then the owners the manifest names are tried once, so a receiver that may not chown
//!    fails before any transfer ([`Ownership`]);
//! 5. the transfer: [`requests`] go out ahead of the [`answers`], which are written to
//!    temporary files within the manifest's sizes and verified with BLAKE3 (resent whole
//!    once on mismatch), then staged — fsync, owner, mode, times — by [`publish`];
//! 6. the commit ([`tree`], [`commit`]): journaled, carried out, `syncfs`.
//!
//! Until step 6 the destination's visible tree is untouched, so a sync interrupted at any
//! point before it leaves the previous point in time; files staged so far are kept as
//! partial files for the next run to resume from.
//!
//! The sender is not trusted: every destination operation goes through directory
//! descriptors that never follow a symlink ([`beneath`]), so no manifest — and no symlink
//! an earlier sync or a tenant left behind — makes the receiver read, write or chmod
//! anything outside its root.

mod answers;
pub mod beneath;
pub mod breaker;
pub mod commit;
mod handshake;
mod intake;
pub mod plan;
mod publish;
mod requests;
mod spill;
mod tree;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use plan::{DeltaBasis, Local, Plan, plan_file};

use super::manifest::STATE_DIR;
use super::wire::{self, Kind, Message};
use super::{PvcError, Summary};
use beneath::Root;
use spill::{Spill, Tag, spill_error};

/// Progress callback: (files done, files to transfer, bytes done).
pub type ProgressFn = Box<dyn Fn(u64, u64, u64) + Send + Sync>;

/// Default bound on manifest entries: far more than a volume usually holds, and a bound on
/// what a hostile sender can make the receiver keep: 9 bytes of memory each (the entries
/// themselves go to an unnamed file on the volume: [`spill`]), plus the paths of hard-link
/// members and unreadable entries, which stay in memory.
pub const MAX_ENTRIES: u64 = 20_000_000;

/// Default share of the destination's files or bytes a sync may delete before it holds.
pub const MAX_DELETE_PERCENT: u8 = 50;

/// What a sync does about owners it cannot set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ownership {
    /// Fail the sync: PostgreSQL, MySQL or Elasticsearch refuse a data directory that lost
    /// its owners, so such a copy is not a DR copy. Checked before the transfer.
    #[default]
    Require,
    /// Let entries keep the receiver's ids, and count them in the summary.
    Ignore,
}

/// Receiver settings.
pub struct Options {
    /// Ask the sender to stay below this many bytes per second.
    pub bwlimit: Option<u64>,
    /// Called after every file with (files done, files to transfer, bytes done).
    pub progress: Option<ProgressFn>,
    /// Refuse manifests of more entries than this.
    pub max_entries: u64,
    /// Owners that cannot be set fail the sync, or are counted.
    pub ownership: Ownership,
    /// Hold a sync that would delete more than this share (percent) of the destination's
    /// files or bytes; 100 turns the breaker off.
    pub max_delete_percent: u8,
    /// A held deletion set (its batch id) the user released.
    pub allow_deletions: Option<String>,
    /// Only compare: read the manifest, count what a sync would change, change nothing
    /// (the last pass of a live copy, telling which files are still changing).
    pub check_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bwlimit: None,
            progress: None,
            max_entries: MAX_ENTRIES,
            ownership: Ownership::Require,
            max_delete_percent: MAX_DELETE_PERCENT,
            allow_deletions: None,
            check_only: false,
        }
    }
}

/// The receiver's state directory (`.drsync`, holding the commit journal), with `tmp/`
/// for files being received and staged and `partial/` for interrupted ones, open.
pub struct State {
    dir: OwnedFd,
    tmp: OwnedFd,
    partial: OwnedFd,
}

impl State {
    /// Makes the state directories real directories (a symlink planted there is replaced,
    /// never written through) and opens them.
    ///
    /// Files staged there are moved into place and a journal there is carried out with
    /// this process's capabilities, so the directory must be this process's own and
    /// writable by it only — anyone else who can write the DR volume (the application,
    /// after a failover) could plant one. Someone else's is replaced; if it holds a
    /// journal, the sync refuses instead (fail closed: remove it by hand once no sync of
    /// this volume runs).
    fn open(root: &Root) -> Result<State, PvcError> {
        let io = |err| PvcError::io(&root.show(STATE_DIR.as_bytes()), err);
        let top = root.dir(b"").map_err(io)?;
        beneath::ensure_dir(top.as_fd(), STATE_DIR.as_bytes()).map_err(io)?;
        let mut state = root.dir(STATE_DIR.as_bytes()).map_err(io)?;
        let st = rustix::fs::fstat(&state).map_err(|e| io(e.into()))?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me || st.st_mode & 0o022 != 0 {
            if beneath::stat(state.as_fd(), commit::JOURNAL.as_bytes())
                .map_err(io)?
                .is_some()
            {
                return Err(io(std::io::Error::other(format!(
                    "owned by uid {} with mode {:o}, not this receiver's (uid {me}, writable by it only), and it holds a journal: refusing to carry it out; remove {STATE_DIR} if no sync of this volume is running",
                    st.st_uid,
                    st.st_mode & 0o7777
                ))));
            }
            beneath::remove(top.as_fd(), STATE_DIR.as_bytes()).map_err(io)?;
            beneath::ensure_dir(top.as_fd(), STATE_DIR.as_bytes()).map_err(io)?;
            state = root.dir(STATE_DIR.as_bytes()).map_err(io)?;
        }
        for d in ["tmp", "partial"] {
            beneath::ensure_dir(state.as_fd(), d.as_bytes()).map_err(io)?;
        }
        let sub = |d: &str| root.dir(format!("{STATE_DIR}/{d}").as_bytes()).map_err(io);
        Ok(State {
            dir: state,
            tmp: sub("tmp")?,
            partial: sub("partial")?,
        })
    }

    /// What a run that did not commit left in `tmp/` (it was killed: no journal names
    /// these files, one that did is finished before this): files named after their path
    /// become partial files to resume from — a killed first sync of a large volume starts
    /// where it stopped, not from zero — and anything else goes.
    fn adopt_tmp(&self) {
        let Ok(names) = beneath::list(self.tmp.as_fd()) else {
            return;
        };
        for (name, _) in names {
            let is_path_hash = name.len() == 64 && name.iter().all(u8::is_ascii_hexdigit);
            let adopted = is_path_hash
                && rustix::fs::renameat(
                    &self.tmp,
                    beneath::os(&name),
                    &self.partial,
                    beneath::os(&name),
                )
                .is_ok();
            if !adopted {
                let _ = beneath::remove(self.tmp.as_fd(), &name);
            }
        }
    }

    /// After a successful commit: partial files are of no more use (a file deleted at the
    /// source would otherwise leave its partial behind for good).
    fn clear_partials(&self) {
        if let Ok(names) = beneath::list(self.partial.as_fd()) {
            for (name, _) in names {
                let _ = beneath::remove(self.partial.as_fd(), &name);
            }
        }
    }

    /// After a commit: the state directory only stays while it holds partial files to
    /// resume from.
    fn tidy(root: &Root) {
        let rm = |dir: &OwnedFd, name: &str| {
            let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::REMOVEDIR);
        };
        if let Ok(s) = root.dir(STATE_DIR.as_bytes()) {
            rm(&s, "tmp");
            rm(&s, "partial");
        }
        if let Ok(r) = root.dir(b"") {
            rm(&r, STATE_DIR);
        }
    }
}

/// Finishes an interrupted commit at `to`, if one is there (the first thing every sync
/// does; also `pvc-sync --finish-only`, which needs no source). `None` if there was none.
pub fn finish_interrupted(to: &Path) -> Result<Option<commit::Applied>, PvcError> {
    let root = Root::open(to).map_err(|e| PvcError::io(to, e))?;
    finish_on(&root)
}

fn finish_on(root: &Root) -> Result<Option<commit::Applied>, PvcError> {
    let has_state = root
        .dir(b"")
        .ok()
        .and_then(|r| {
            beneath::stat(r.as_fd(), STATE_DIR.as_bytes())
                .ok()
                .flatten()
        })
        .is_some();
    if !has_state {
        return Ok(None);
    }
    let state = State::open(root)?;
    let applied = commit::finish(root, &state)?;
    if applied.is_some() {
        State::tidy(root);
    } else {
        // Before planning, which looks for partial files to resume from.
        state.adopt_tmp();
    }
    Ok(applied)
}

/// Runs one sync into `to` over `stream`.
pub async fn sync<S>(stream: S, to: &Path, opts: &Options) -> Result<Summary, PvcError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let root = Arc::new(Root::open(to).map_err(|e| PvcError::io(to, e))?);
    let mut summary = Summary::default();
    let mut owners = Owners::default();
    if let Some(applied) = finish_on(&root)? {
        summary.finished_interrupted_commit = true;
        owners.add(applied.owners_not_kept, applied.first_not_kept);
    }
    let (rd, wr) = tokio::io::split(stream);
    // Buffered both ways: small frames (manifest entries, requests) share SSH packets.
    let mut rd = tokio::io::BufReader::with_capacity(256 << 10, rd);
    let mut wr = tokio::io::BufWriter::with_capacity(64 << 10, wr);
    handshake::hello(&mut rd, &mut wr, opts.bwlimit).await?;
    let spill = Spill::create(&root).map_err(spill_error)?;
    let manifest = {
        let mut planner = plan::Planner::new(&root);
        intake::receive(&mut rd, &mut planner, spill, opts.max_entries).await?
    };
    // Nothing was changed until here: the whole manifest has been checked.
    let intake::Manifest {
        entries,
        plans,
        unchanged,
        unreadable,
        root: root_entry,
    } = manifest;
    let entries = Arc::new(entries);
    summary.unreadable = unreadable.len() as u64;
    summary.unreadable_paths = report_paths(unreadable.iter().map(Vec::as_slice));
    let census = {
        let kept: HashSet<&[u8]> = unreadable.iter().map(Vec::as_slice).collect();
        let paths = entries
            .iter()
            .map(|r| r.map(|(_, e)| e.path).map_err(spill_error));
        breaker::census(&root, &mut breaker::Cursor::new(paths), &kept)?
    };
    let hold = breaker::decide(
        &census,
        opts.max_delete_percent,
        opts.allow_deletions.as_deref(),
    );
    if opts.check_only {
        let first: Vec<Vec<u8>> = plans
            .iter()
            .take(REPORT_PATHS)
            .map(|(i, _)| entries.get(*i).map(|e| e.path))
            .collect::<Result<_, _>>()
            .map_err(spill_error)?;
        summary.would_change = plans.len() as u64 + census.files_deleted;
        summary.would_change_paths = report_paths(
            first
                .iter()
                .map(Vec::as_slice)
                .chain(census.stale.iter().map(Vec::as_slice)),
        );
        let _ = wire::write(&mut wr, &Message::Done).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut wr).await;
        summary.duration = start.elapsed();
        return Ok(summary);
    }
    let state = Arc::new(State::open(&root)?);
    let refused = match hold {
        Some(h) => Some(PvcError::Held(h)),
        None if opts.ownership == Ownership::Require => {
            probe_owners(&root, &state, root_entry.as_ref(), &entries).err()
        }
        None => None,
    };
    if let Some(e) = refused {
        drop(state);
        State::tidy(&root);
        // Tell the sender we are done (nothing will be requested), then stop.
        let _ = wire::write(&mut wr, &Message::Done).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut wr).await;
        return Err(e);
    }
    summary.files_unchanged += unchanged;
    let mut local = local_work(&root, &state, &entries, plans, &mut summary)?;
    let total = local.wants.len() as u64;
    let budgets = requests::Budgets::new();
    let (order_tx, order_rx) = mpsc::unbounded_channel();
    let (redo_tx, redo_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(requests::send_all(
        wr,
        root.clone(),
        state.clone(),
        entries.clone(),
        std::mem::take(&mut local.wants),
        budgets.clone(),
        order_tx,
        redo_rx,
    ));
    let mut publisher = publish::Publisher::start(root.clone());
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
    let (mut staged, staging) = publisher.finish();
    // The staging thread's own error says more than "it stopped".
    let result = staging.and(result);
    let result = match result {
        Ok(()) => writer
            .await
            .map_err(|e| PvcError::Protocol(format!("writer: {e}")))
            .and_then(|r| r),
        Err(e) => {
            writer.abort();
            Err(e)
        }
    };
    if let Err(e) = result {
        // Nothing was committed: what arrived is kept to resume from.
        state.adopt_tmp();
        return Err(e);
    }
    owners.add(staged.owners_not_kept, staged.first_not_kept);
    // Owners the probe did not cover: found before the commit, not after it.
    if opts.ownership == Ownership::Require
        && let Some(first) = &owners.first
    {
        state.adopt_tmp();
        return Err(PvcError::Ownership(format!(
            "{} entries could not be given their owner (first: {first}): the DR job lacks CAP_CHOWN; nothing was changed",
            owners.count
        )));
    }
    let journal_path = root.show(format!("{STATE_DIR}/{}", commit::JOURNAL).as_bytes());
    let sealed = commit::JournalWriter::create(&state).and_then(|mut journal| {
        tree::write_ops(
            &mut journal,
            &entries,
            &mut staged.files,
            &local.twins,
            &mut local.meta_only,
            &census.stale,
            root_entry.as_ref(),
        )?;
        journal.seal()
    });
    if let Err(e) = sealed {
        // Not committed (a full volume, typically): keep what arrived to resume from.
        state.adopt_tmp();
        return Err(PvcError::io(&journal_path, e));
    }
    let applied = commit::finish(&root, &state)?.unwrap_or_default();
    state.clear_partials();
    State::tidy(&root);
    owners.add(applied.owners_not_kept, applied.first_not_kept);
    summary.deleted = applied.deleted;
    summary.deleted_files = census.files_deleted;
    summary.deleted_bytes = census.bytes_deleted;
    summary.dirs = entries.count(Tag::Dir);
    summary.symlinks = entries.count(Tag::Symlink);
    summary.hardlinks = entries.count(Tag::HardLink);
    summary.ownership_not_kept = owners.count;
    summary.duration = start.elapsed();
    if opts.ownership == Ownership::Require
        && let Some(first) = &owners.first
    {
        return Err(PvcError::Ownership(format!(
            "the copy is complete but {} entries could not be given their owner (first: {}): the DR job lacks CAP_CHOWN",
            owners.count, first
        )));
    }
    Ok(summary)
}

/// At most this many paths in a summary, each cut to [`REPORT_PATH_CHARS`]: a Job's
/// report travels in its termination message, which Kubernetes cuts at 4 KiB, and a cut
/// report cannot be read at all.
const REPORT_PATHS: usize = 8;
/// See [`REPORT_PATHS`].
const REPORT_PATH_CHARS: usize = 120;

/// The first paths for a summary, within [`REPORT_PATHS`] and [`REPORT_PATH_CHARS`].
fn report_paths<'p>(paths: impl Iterator<Item = &'p [u8]>) -> Vec<String> {
    paths
        .take(REPORT_PATHS)
        .map(|p| {
            let s = String::from_utf8_lossy(p);
            if s.chars().count() > REPORT_PATH_CHARS {
                format!("{}…", s.chars().take(REPORT_PATH_CHARS).collect::<String>())
            } else {
                s.into_owned()
            }
        })
        .collect()
}

/// Entries whose owner could not be set, with the first of them for the message.
#[derive(Default)]
struct Owners {
    count: u64,
    first: Option<String>,
}

impl Owners {
    fn add(&mut self, count: u64, first: Option<(Vec<u8>, u32, u32)>) {
        self.count += count;
        if self.first.is_none()
            && let Some((path, uid, gid)) = first
        {
            self.first = Some(format!("{} {uid}:{gid}", String::from_utf8_lossy(&path)));
        }
    }
}

/// A numeric owner and group.
type OwnerIds = (u32, u32);

/// Most distinct owners a manifest's probe tries (a hostile manifest could name millions;
/// owners beyond these are still checked, and counted, when they are set).
const PROBE_OWNERS: usize = 256;

/// Tries every distinct owner the manifest names on a scratch file, so a receiver that may
/// not chown (no `CAP_CHOWN`) fails before any transfer with a message naming what it
/// could not keep, instead of after copying a volume it cannot make usable.
fn probe_owners(
    root: &Root,
    state: &State,
    root_entry: Option<&wire::Entry>,
    entries: &Spill,
) -> Result<(), PvcError> {
    let mut owners: HashMap<(u32, u32), (u64, Vec<u8>)> = HashMap::new();
    let mut note = |e: &wire::Entry| {
        if let Some(o) = owners.get_mut(&(e.uid, e.gid)) {
            o.0 += 1;
        } else if owners.len() < PROBE_OWNERS {
            owners.insert((e.uid, e.gid), (1, e.path.clone()));
        }
    };
    if let Some(r) = root_entry {
        note(r);
    }
    for r in entries.iter() {
        note(&r.map_err(spill_error)?.1);
    }
    let name = b"owner-probe".as_slice();
    let shown = root.show(format!("{STATE_DIR}/tmp/owner-probe").as_bytes());
    let probe = beneath::create(state.tmp.as_fd(), name).map_err(|e| PvcError::io(&shown, e))?;
    let mut refused: Vec<(OwnerIds, (u64, &[u8]))> = Vec::new();
    for (&(uid, gid), (n, first)) in &owners {
        let n = (*n, first.as_slice());
        let r = rustix::fs::fchown(
            &probe,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        );
        match r {
            Ok(()) => {}
            Err(rustix::io::Errno::PERM) => refused.push(((uid, gid), n)),
            Err(e) => return Err(PvcError::io(&shown, e.into())),
        }
    }
    drop(probe);
    let _ = rustix::fs::unlinkat(&state.tmp, "owner-probe", rustix::fs::AtFlags::empty());
    if refused.is_empty() {
        return Ok(());
    }
    refused.sort_by_key(|(_, (_, first))| *first);
    let count: u64 = refused.iter().map(|(_, (n, _))| n).sum();
    let ((uid, gid), (_, first)) = refused[0];
    let first = if first.is_empty() {
        b"(the volume root)".as_slice()
    } else {
        first
    };
    Err(PvcError::Ownership(format!(
        "{count} entries would lose their owner (first: {} {uid}:{gid}; {} distinct owners refused): this receiver (uid {}) may not chown (no CAP_CHOWN). Nothing was changed. Run the DR job with the capabilities it needs (RemoteCluster pvcSync.runAsRoot), or accept files owned by the job's user (dataSyncConfig.ownership: Ignore)",
        String::from_utf8_lossy(first),
        refused.len(),
        rustix::process::geteuid().as_raw()
    )))
}

/// What needs no transfer, sorted out before it.
struct LocalWork {
    /// Files to request.
    wants: Vec<requests::Want>,
    /// Files whose content is right but whose owner, mode or times are not.
    meta_only: Vec<u32>,
    /// New names of hard-linked files already here, staged as links.
    twins: Vec<tree::Staged>,
}

/// Sorts the plans: metadata only (done at commit), a new name of a hard-linked file
/// already here (staged as a link instead of resent), and the files to request.
fn local_work(
    root: &Root,
    state: &State,
    entries: &Spill,
    plans: Vec<(u32, Plan)>,
    summary: &mut Summary,
) -> Result<LocalWork, PvcError> {
    // Other names of each hard-linked file.
    let mut members: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    if entries.count(Tag::HardLink) > 0 {
        for r in entries.iter() {
            let (_, e) = r.map_err(spill_error)?;
            if let Kind::HardLink { leader } = e.kind {
                members.entry(leader).or_default().push(e.path);
            }
        }
    }
    let mut work = LocalWork {
        wants: Vec::new(),
        meta_only: Vec::new(),
        twins: Vec::new(),
    };
    for (i, plan) in plans {
        match plan {
            Plan::Skip => summary.files_unchanged += 1,
            Plan::Metadata => {
                work.meta_only.push(i);
                summary.files_metadata += 1;
            }
            Plan::Whole => {
                let twin = match members.get(&i) {
                    Some(names) => {
                        let e = entries.get(i).map_err(spill_error)?;
                        let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
                        tree::stage_twin(root, state, (i, &e), &names)
                            .map_err(|err| PvcError::io(&root.show(&e.path), err))?
                    }
                    None => None,
                };
                match twin {
                    Some(t) => {
                        work.twins.push(t);
                        summary.files_metadata += 1;
                    }
                    None => work.wants.push(requests::Want {
                        idx: i,
                        basis: None,
                    }),
                }
            }
            Plan::Delta(basis) => work.wants.push(requests::Want {
                idx: i,
                basis: Some(basis),
            }),
        }
    }
    Ok(work)
}
