//! Committing a sync. Everything a reader of the destination would notice — new
//! directories, files moved into place, metadata, links, deletions — is written first as a
//! list of operations to a journal in the state directory (fsynced, then renamed into
//! place), and only then carried out; the file system is flushed with `syncfs` before the
//! journal goes. Until the journal exists the destination is at the previous point in
//! time; once it exists, every later start of the receiver finishes it before anything
//! else, so an interrupted commit ends at the new point in time. Each operation is
//! idempotent: carrying out a journal twice gives the same tree.
//!
//! The journal lives on the destination volume, which a tenant could write after a
//! failover: every path in it is checked like a manifest path and every operation goes
//! through [`super::beneath`], so a tampered journal cannot reach outside the root.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

use super::State;
use super::beneath::{self, DirCache, Root, split};
use super::plan::partial_name;
use crate::pvc::PvcError;
use crate::pvc::manifest::STATE_DIR;
use crate::pvc::wire::{self, Entry, Kind};

/// The journal's name in the state directory.
pub const JOURNAL: &str = "journal";
/// What the journal is written as until it is complete.
const JOURNAL_NEW: &str = "journal.new";
/// Test hook: the process aborts after this many operations of a commit (crash tests).
pub const CRASH_AFTER_OPS: &str = "DR_SYNCER_TEST_CRASH_AFTER_OPS";
/// First bytes of a journal.
const MAGIC: &[u8; 8] = b"DRSJRN1\n";

/// One step of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Make `path` a real directory.
    MkDir {
        /// Path beneath the root.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// Move the staged file `tmp` (in the state directory's `tmp/`) to `path`; done if
    /// `tmp` is gone.
    Place {
        /// Name in `tmp/`.
        #[serde(with = "serde_bytes")]
        tmp: Vec<u8>,
        /// Path beneath the root.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// Owner, mode and times of a file (its content is right).
    Meta(Entry),
    /// Make `entry.path` another name of the file at `leader`.
    Link {
        /// The path of the file it links to.
        #[serde(with = "serde_bytes")]
        leader: Vec<u8>,
        /// The link's entry.
        entry: Entry,
    },
    /// Make `entry.path` the symlink of `entry`.
    Symlink(Entry),
    /// Remove `path` (a directory with its contents).
    Delete {
        /// Path beneath the root.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// Owner, mode and times of a directory (last: children change its times).
    DirMeta(Entry),
    /// The end of the journal, with the number of operations before it.
    End {
        /// Operations written.
        ops: u64,
    },
    /// Owner, mode and times of the root itself (last of all).
    RootMeta(Entry),
}

/// Writes a journal.
pub struct JournalWriter<'a> {
    state: &'a State,
    out: BufWriter<File>,
    ops: u64,
}

impl<'a> JournalWriter<'a> {
    /// Starts a new journal (a half-written one from an earlier run is replaced).
    pub fn create(state: &'a State) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(
            1 << 20,
            beneath::create(state.dir.as_fd(), JOURNAL_NEW.as_bytes())?,
        );
        out.write_all(MAGIC)?;
        Ok(JournalWriter { state, out, ops: 0 })
    }

    /// Appends one operation.
    pub fn push(&mut self, op: &Op) -> io::Result<()> {
        let bytes = postcard::to_stdvec(op).map_err(io::Error::other)?;
        self.out.write_all(&(bytes.len() as u32).to_le_bytes())?;
        self.out.write_all(&bytes)?;
        self.ops += 1;
        Ok(())
    }

    /// Ends the journal, flushes it and makes it the journal — the point of commit.
    pub fn seal(mut self) -> io::Result<()> {
        let end = Op::End { ops: self.ops };
        self.push(&end)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        // The staged files' names must be durable before the journal that moves them.
        rustix::fs::fsync(&self.state.tmp)?;
        rustix::fs::renameat(&self.state.dir, JOURNAL_NEW, &self.state.dir, JOURNAL)?;
        rustix::fs::fsync(&self.state.dir)?;
        Ok(())
    }
}

/// Reads a journal's operations, checking every path like a manifest's.
struct JournalReader {
    inp: BufReader<File>,
    seen: u64,
    ended: bool,
}

impl JournalReader {
    fn open(file: File) -> io::Result<Self> {
        let mut inp = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        inp.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(io::Error::other("not a dr-syncer journal"));
        }
        Ok(JournalReader {
            inp,
            seen: 0,
            ended: false,
        })
    }

    fn next_op(&mut self) -> io::Result<Option<Op>> {
        if self.ended {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.inp
            .read_exact(&mut len)
            .map_err(|_| io::Error::other("journal truncated (no end record)"))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > wire::MAX_FRAME {
            return Err(io::Error::other("journal record too large"));
        }
        let mut buf = vec![0u8; len];
        self.inp.read_exact(&mut buf)?;
        let op: Op = postcard::from_bytes(&buf).map_err(io::Error::other)?;
        check(&op)?;
        if let Op::End { ops } = op {
            if ops != self.seen {
                return Err(io::Error::other("journal end record does not match"));
            }
            self.ended = true;
            return Ok(None);
        }
        self.seen += 1;
        Ok(Some(op))
    }
}

/// Paths of a journal are held to the manifest's rules.
fn check(op: &Op) -> io::Result<()> {
    let bad = |e: wire::WireError| io::Error::other(e.to_string());
    let path = |p: &[u8]| wire::check_path(p).map_err(bad);
    let not_state = |p: &[u8]| {
        let first = p.split(|b| *b == b'/').next().unwrap_or_default();
        if first == STATE_DIR.as_bytes() {
            return Err(io::Error::other("journal names the state directory"));
        }
        Ok(())
    };
    match op {
        Op::MkDir { path: p } | Op::Delete { path: p } => {
            path(p)?;
            not_state(p)
        }
        Op::Place { tmp, path: p } => {
            path(tmp)?;
            if tmp.contains(&b'/') {
                return Err(io::Error::other("journal names a staged file outside tmp/"));
            }
            path(p)?;
            not_state(p)
        }
        Op::Meta(e) | Op::Symlink(e) | Op::DirMeta(e) => {
            path(&e.path)?;
            not_state(&e.path)
        }
        Op::Link { leader, entry } => {
            path(leader)?;
            path(&entry.path)?;
            not_state(&entry.path)
        }
        Op::End { .. } | Op::RootMeta(_) => Ok(()),
    }
}

/// What carrying out a journal did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Files moved into place.
    pub placed: u64,
    /// Entries deleted.
    pub deleted: u64,
    /// Entries whose owner could not be set, and the first of them.
    pub owners_not_kept: u64,
    /// The first entry whose owner could not be set (path, uid, gid).
    pub first_not_kept: Option<(Vec<u8>, u32, u32)>,
}

impl Applied {
    fn owner(&mut self, kept: bool, e: &Entry) {
        if !kept {
            self.owners_not_kept += 1;
            if self.first_not_kept.is_none() {
                self.first_not_kept = Some((e.path.clone(), e.uid, e.gid));
            }
        }
    }
}

/// Finishes the journal in `state`, if there is one: carries out every operation, flushes
/// the file system, removes the journal. `None` when there was none.
pub fn finish(root: &Root, state: &State) -> Result<Option<Applied>, PvcError> {
    let shown = root.show(format!("{STATE_DIR}/{JOURNAL}").as_bytes());
    let io = |e| PvcError::io(&shown, e);
    let file = match beneath::open_file(state.dir.as_fd(), JOURNAL.as_bytes()) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    trusted(&file, &state.dir).map_err(io)?;
    let mut reader = JournalReader::open(file).map_err(io)?;
    let mut applied = Applied::default();
    let mut dirs = DirCache::default();
    // Crash tests stop the process in the middle of a commit with this; unset, it costs
    // one environment lookup per commit.
    let crash_after: Option<u64> = std::env::var(CRASH_AFTER_OPS)
        .ok()
        .and_then(|v| v.parse().ok());
    let mut done = 0u64;
    while let Some(op) = reader.next_op().map_err(io)? {
        if crash_after == Some(done) {
            std::process::abort();
        }
        apply(root, state, &mut dirs, &op, &mut applied)?;
        done += 1;
    }
    root.sync_fs()
        .map_err(|e| PvcError::io(&root.show(b""), e))?;
    rustix::fs::unlinkat(&state.dir, JOURNAL, rustix::fs::AtFlags::empty())
        .map_err(|e| io(e.into()))?;
    rustix::fs::fsync(&state.dir).map_err(|e| io(e.into()))?;
    Ok(Some(applied))
}

/// A journal is carried out with the receiver's capabilities, so it must be the
/// receiver's own: the journal and the state directory owned by this process's user and
/// writable by no one else. Anyone else who can write the DR volume (the application,
/// after a failover) could otherwise chmod or chown anything on it through a journal.
fn trusted(journal: &File, state_dir: &rustix::fd::OwnedFd) -> io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    for (what, st) in [
        ("the journal", rustix::fs::fstat(journal)?),
        ("the state directory", rustix::fs::fstat(state_dir)?),
    ] {
        if st.st_uid != me || st.st_mode & 0o022 != 0 {
            return Err(io::Error::other(format!(
                "{what} is owned by uid {} with mode {:o}, not this receiver's (uid {me}, writable by it only): refusing to carry it out; remove {STATE_DIR} if no sync of this volume is running",
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// Carries out one operation (idempotently).
fn apply(
    root: &Root,
    state: &State,
    dirs: &mut DirCache,
    op: &Op,
    applied: &mut Applied,
) -> Result<(), PvcError> {
    let shown = |p: &[u8]| root.show(p);
    match op {
        Op::MkDir { path } => {
            let (parent, name) = split(path);
            let io = |e| PvcError::io(&shown(path), e);
            beneath::ensure_dir(dirs.get(root, parent).map_err(io)?, name).map_err(io)?;
        }
        Op::Place { tmp, path } => {
            let io = |e| PvcError::io(&shown(path), e);
            if beneath::stat(state.tmp.as_fd(), tmp).map_err(io)?.is_none() {
                return Ok(());
            }
            let (parent, name) = split(path);
            let dir = dirs.get(root, parent).map_err(io)?;
            beneath::replace(state.tmp.as_fd(), tmp, dir, name).map_err(io)?;
            let _ = rustix::fs::unlinkat(
                &state.partial,
                partial_name(path).as_str(),
                rustix::fs::AtFlags::empty(),
            );
            applied.placed += 1;
        }
        Op::Meta(e) => {
            let io = |err| PvcError::io(&shown(&e.path), err);
            let (parent, name) = split(&e.path);
            let file = beneath::open_file(dirs.get(root, parent).map_err(io)?, name).map_err(io)?;
            let kept = beneath::set_meta(file.as_fd(), e).map_err(io)?;
            applied.owner(kept, e);
        }
        Op::Link { leader, entry } => {
            let io = |err| PvcError::io(&shown(&entry.path), err);
            let (lparent, lname) = split(leader);
            let ldir = root.dir(lparent).map_err(io)?;
            let (parent, name) = split(&entry.path);
            let dir = dirs.get(root, parent).map_err(io)?;
            let id = |s: &rustix::fs::Stat| (s.st_dev, s.st_ino);
            let here = beneath::stat(dir, name).map_err(io)?.as_ref().map(id);
            let there = beneath::stat(ldir.as_fd(), lname).map_err(io)?;
            if there
                .as_ref()
                .is_none_or(|s| beneath::kind(s) != rustix::fs::FileType::RegularFile)
            {
                return Err(io(io::Error::other(
                    "the file it links to is missing or not a regular file",
                )));
            }
            if here != there.as_ref().map(id) {
                let tmp = b"link".as_slice();
                beneath::link(ldir.as_fd(), lname, state.tmp.as_fd(), tmp).map_err(io)?;
                beneath::replace(state.tmp.as_fd(), tmp, dir, name).map_err(io)?;
            }
        }
        Op::Symlink(e) => {
            let io = |err| PvcError::io(&shown(&e.path), err);
            let Kind::Symlink { target } = &e.kind else {
                return Err(io(io::Error::other("journal: symlink without a target")));
            };
            let (parent, name) = split(&e.path);
            let dir = dirs.get(root, parent).map_err(io)?;
            let kept = if beneath::read_link(dir, name).as_deref() != Some(target.as_slice()) {
                let tmp = b"symlink".as_slice();
                beneath::symlink(target, state.tmp.as_fd(), tmp).map_err(io)?;
                let kept = beneath::set_symlink_meta(state.tmp.as_fd(), tmp, e).map_err(io)?;
                beneath::replace(state.tmp.as_fd(), tmp, dir, name).map_err(io)?;
                kept
            } else {
                beneath::set_symlink_meta(dir, name, e).map_err(io)?
            };
            applied.owner(kept, e);
        }
        Op::Delete { path } => {
            let io = |e| PvcError::io(&shown(path), e);
            let (parent, name) = split(path);
            match root.dir(parent) {
                Ok(dir) => {
                    if beneath::stat(dir.as_fd(), name).map_err(io)?.is_some() {
                        beneath::remove(dir.as_fd(), name).map_err(io)?;
                        applied.deleted += 1;
                    }
                }
                Err(e) if beneath::absent(&e) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Op::DirMeta(e) => {
            let kept = beneath::set_dir_meta(root, &e.path, e)
                .map_err(|err| PvcError::io(&shown(&e.path), err))?;
            applied.owner(kept, e);
        }
        Op::RootMeta(e) => {
            let kept = beneath::set_dir_meta(root, b"", e)
                .map_err(|err| PvcError::io(&shown(b""), err))?;
            applied.owner(kept, e);
        }
        Op::End { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_table() {
        let e = |p: &str| Entry {
            path: p.as_bytes().to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_s: 0,
            mtime_ns: 0,
        };
        let b = |s: &str| s.as_bytes().to_vec();
        let cases: Vec<(&str, Op, bool)> = vec![
            ("mkdir", Op::MkDir { path: b("a/b") }, true),
            ("mkdir escaping", Op::MkDir { path: b("../a") }, false),
            ("delete absolute", Op::Delete { path: b("/etc") }, false),
            (
                "delete the state dir",
                Op::Delete { path: b(STATE_DIR) },
                false,
            ),
            (
                "delete inside the state dir",
                Op::Delete {
                    path: b(".drsync/tmp/x"),
                },
                false,
            ),
            (
                "place",
                Op::Place {
                    tmp: b("12"),
                    path: b("a"),
                },
                true,
            ),
            (
                "place from outside tmp",
                Op::Place {
                    tmp: b("../x"),
                    path: b("a"),
                },
                false,
            ),
            (
                "place from a subdir",
                Op::Place {
                    tmp: b("x/y"),
                    path: b("a"),
                },
                false,
            ),
            ("meta", Op::Meta(e("a")), true),
            ("meta with dot-dot", Op::Meta(e("a/../../b")), false),
            (
                "link",
                Op::Link {
                    leader: b("a"),
                    entry: e("b"),
                },
                true,
            ),
            (
                "link to outside",
                Op::Link {
                    leader: b("../a"),
                    entry: e("b"),
                },
                false,
            ),
        ];
        for (case, op, ok) in cases {
            assert_eq!(check(&op).is_ok(), ok, "{case}");
        }
    }
}
