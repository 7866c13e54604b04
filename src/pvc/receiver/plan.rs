//! Planning: what each file entry needs, decided from what is at its destination (a stat
//! through the parent's descriptor, never through a symlink) and from an interrupted
//! transfer's partial file. Nothing is written here.

use std::collections::HashMap;
use std::os::fd::AsFd;

use rustix::fs::{FileType, Stat};

use super::beneath::{self, DirCache, Root, split};
use crate::pvc::PvcError;
use crate::pvc::manifest::STATE_DIR;
use crate::pvc::wire::Entry;

/// Files smaller than this are sent whole: a delta would not pay for its round trip.
const DELTA_MIN: u64 = 64 << 10;

/// What is at a file entry's destination, as far as planning cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// A regular file (anything else is replaced, never compared with).
    pub is_file: bool,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_s: i64,
    /// Nanoseconds of the modification time.
    pub mtime_ns: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl From<&Stat> for Local {
    // `struct stat` field types differ between architectures: the casts are needed on some.
    #[allow(clippy::unnecessary_cast)]
    fn from(s: &Stat) -> Local {
        Local {
            is_file: beneath::kind(s) == FileType::RegularFile,
            size: s.st_size as u64,
            mtime_s: s.st_mtime as i64,
            mtime_ns: s.st_mtime_nsec as u32,
            mode: s.st_mode & 0o7777,
            uid: s.st_uid,
            gid: s.st_gid,
        }
    }
}

/// Which file a delta is computed against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaBasis {
    /// The destination's current file.
    Current,
    /// What arrived of an interrupted transfer (in the state directory).
    Partial,
}

/// What to do with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Content and metadata already match.
    Skip,
    /// Content matches; owner, mode or times differ.
    Metadata,
    /// Send it whole.
    Whole,
    /// Send a delta against this basis.
    Delta(DeltaBasis),
}

/// Plans a file entry against the local file (if any) and the length of an interrupted
/// transfer's partial file (if any). Pure.
pub fn plan_file(entry: &Entry, local: Option<&Local>, partial: Option<u64>) -> Plan {
    let local = local.filter(|m| m.is_file);
    let same_content = |m: &Local| {
        m.size == entry.size && m.mtime_s == entry.mtime_s && m.mtime_ns == entry.mtime_ns
    };
    if let Some(m) = local.filter(|m| same_content(m)) {
        let same_meta = m.mode == entry.mode && m.uid == entry.uid && m.gid == entry.gid;
        return if same_meta {
            Plan::Skip
        } else {
            Plan::Metadata
        };
    }
    // An interrupted transfer of this file resumes from what arrived.
    if partial.is_some_and(|len| len > 0) {
        return Plan::Delta(DeltaBasis::Partial);
    }
    match local {
        Some(m) if m.size >= DELTA_MIN && entry.size >= DELTA_MIN => {
            Plan::Delta(DeltaBasis::Current)
        }
        _ => Plan::Whole,
    }
}

/// Name of the partial file of `path` in the state directory's `partial/`.
pub fn partial_name(path: &[u8]) -> String {
    blake3::hash(path).to_hex().to_string()
}

/// Plans file entries against the destination as their entries arrive.
pub struct Planner<'a> {
    root: &'a Root,
    dirs: DirCache,
    /// Partial files by name and length (read once, before the manifest).
    partials: HashMap<Vec<u8>, u64>,
}

impl<'a> Planner<'a> {
    /// A planner for `root`; lists the partial files of interrupted transfers.
    pub fn new(root: &'a Root) -> Planner<'a> {
        let partials = root
            .dir(format!("{STATE_DIR}/partial").as_bytes())
            .and_then(|d| {
                let mut out = HashMap::new();
                for (name, _) in beneath::list(d.as_fd())? {
                    if let Ok(Some(s)) = beneath::stat(d.as_fd(), &name) {
                        out.insert(name, s.st_size as u64);
                    }
                }
                Ok(out)
            })
            .unwrap_or_default();
        Planner {
            root,
            dirs: DirCache::default(),
            partials,
        }
    }

    /// The plan of file entry `e` (read-only).
    pub fn plan(&mut self, e: &Entry) -> Result<Plan, PvcError> {
        let (parent, name) = split(&e.path);
        // A parent that is not a real directory here (missing, or a symlink to be replaced
        // by one) has nothing beneath it to compare with.
        let local = match self.dirs.get(self.root, parent) {
            Ok(dir) => beneath::stat(dir, name),
            Err(err) if beneath::absent(&err) => Ok(None),
            Err(err) => Err(err),
        };
        let local = local.map_err(|err| PvcError::io(&self.root.show(&e.path), err))?;
        // Partial files are rare: hash the path to look one up only when there are any.
        let partial = (!self.partials.is_empty())
            .then(|| self.partials.get(partial_name(&e.path).as_bytes()).copied())
            .flatten();
        Ok(plan_file(
            e,
            local.map(|s| Local::from(&s)).as_ref(),
            partial,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pvc::wire::Kind;

    #[test]
    fn plan_file_table() {
        let entry = Entry {
            path: b"f".to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: 100 << 10,
            mtime_s: 10,
            mtime_ns: 5,
        };
        let same = Local {
            is_file: true,
            size: 100 << 10,
            mtime_s: 10,
            mtime_ns: 5,
            mode: 0o644,
            uid: 1,
            gid: 2,
        };
        let other_mode = Local {
            mode: 0o600,
            ..same
        };
        let older = Local { mtime_s: 9, ..same };
        let small = Local {
            size: 10,
            mtime_s: 9,
            ..same
        };
        // Same size and times, but not a regular file (a FIFO, a symlink): never a basis.
        let special = Local {
            is_file: false,
            ..same
        };
        let cases: [(&str, Option<Local>, Option<u64>, Plan); 8] = [
            ("nothing there", None, None, Plan::Whole),
            ("identical", Some(same), None, Plan::Skip),
            ("mode differs", Some(other_mode), None, Plan::Metadata),
            (
                "changed, large",
                Some(older),
                None,
                Plan::Delta(DeltaBasis::Current),
            ),
            ("changed, small basis", Some(small), None, Plan::Whole),
            ("not a regular file", Some(special), None, Plan::Whole),
            (
                "partial file",
                None,
                Some(5),
                Plan::Delta(DeltaBasis::Partial),
            ),
            ("empty partial file", None, Some(0), Plan::Whole),
        ];
        for (case, local, partial, want) in cases {
            assert_eq!(plan_file(&entry, local.as_ref(), partial), want, "{case}");
        }
    }
}
