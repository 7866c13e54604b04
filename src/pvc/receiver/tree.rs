//! The stages around the transfer that change the tree itself: directories first (so every
//! file has a real directory to land in), then — after the files — hard links, symlinks,
//! deletions, and directory metadata last (children change directory times, so deepest
//! first). All of it relative to directory descriptors, through [`super::beneath`].

use std::collections::HashSet;
use std::os::fd::AsFd;

use super::State;
use super::beneath::{self, DirCache, Root, split};
use crate::pvc::manifest::STATE_DIR;
use crate::pvc::wire::{Entry, Kind};
use crate::pvc::{PvcError, Summary};

/// Makes every `Dir` entry a real directory (replacing a file or symlink in its place).
/// Each parent is an earlier `Dir` entry (checked with the manifest), so it exists by the
/// time its children are made.
pub fn make_dirs(root: &Root, entries: &[Entry], summary: &mut Summary) -> Result<(), PvcError> {
    let mut dirs = DirCache::default();
    for e in entries.iter().filter(|e| e.kind == Kind::Dir) {
        let (parent, name) = split(&e.path);
        let io = |err| PvcError::io(&root.show(&e.path), err);
        beneath::ensure_dir(dirs.get(root, parent).map_err(io)?, name).map_err(io)?;
        summary.dirs += 1;
    }
    Ok(())
}

/// Owner, mode and times of a file whose content is already right.
pub fn file_metadata(root: &Root, dirs: &mut DirCache, e: &Entry) -> Result<(), PvcError> {
    let io = |err| PvcError::io(&root.show(&e.path), err);
    let (parent, name) = split(&e.path);
    let file = beneath::open_file(dirs.get(root, parent).map_err(io)?, name).map_err(io)?;
    beneath::set_meta(file.as_fd(), e).map_err(io)
}

/// A new name of a hard-linked file whose other name `member` is already here with the
/// right content (a link was added on the source): links it locally instead of resending.
/// `false` if there is no such name.
pub fn link_twin(
    root: &Root,
    state: &State,
    dirs: &mut DirCache,
    (idx, e): (u32, &Entry),
    members: &[&[u8]],
) -> Result<bool, PvcError> {
    let io = |err| PvcError::io(&root.show(&e.path), err);
    for m in members {
        let (parent, name) = split(m);
        let Ok(dir) = root.dir(parent) else { continue };
        let same = beneath::stat(dir.as_fd(), name)
            .ok()
            .flatten()
            .is_some_and(|s| {
                let l = super::plan::Local::from(&s);
                l.is_file && l.size == e.size && l.mtime_s == e.mtime_s && l.mtime_ns == e.mtime_ns
            });
        if !same {
            continue;
        }
        let tmp = format!("twin-{idx}").into_bytes();
        beneath::link(dir.as_fd(), name, state.tmp.as_fd(), &tmp).map_err(io)?;
        let file = beneath::open_file(state.tmp.as_fd(), &tmp).map_err(io)?;
        beneath::set_meta(file.as_fd(), e).map_err(io)?;
        let (parent, name) = split(&e.path);
        let dest = dirs.get(root, parent).map_err(io)?;
        beneath::replace(state.tmp.as_fd(), &tmp, dest, name).map_err(io)?;
        return Ok(true);
    }
    Ok(false)
}

/// Hard links, symlinks, deletions, then directory metadata.
pub fn finish(
    root: &Root,
    state: &State,
    entries: &[Entry],
    summary: &mut Summary,
) -> Result<(), PvcError> {
    let mut dirs = DirCache::default();
    for (i, e) in entries.iter().enumerate() {
        let io = |err| PvcError::io(&root.show(&e.path), err);
        let (parent, name) = split(&e.path);
        match &e.kind {
            Kind::HardLink { leader } => {
                // Checked with the manifest: an earlier file entry.
                let Some(l) = entries.get(*leader as usize) else {
                    return Err(super::intake::refuse(&e.path, "hard link without its file"));
                };
                let (lparent, lname) = split(&l.path);
                let ldir = root.dir(lparent).map_err(io)?;
                let dir = dirs.get(root, parent).map_err(io)?;
                let id = |s: &rustix::fs::Stat| (s.st_dev, s.st_ino);
                let here = beneath::stat(dir, name).map_err(io)?.as_ref().map(id);
                let there = beneath::stat(ldir.as_fd(), lname).map_err(io)?;
                if there
                    .as_ref()
                    .is_none_or(|s| beneath::kind(s) != rustix::fs::FileType::RegularFile)
                {
                    return Err(io(std::io::Error::other(
                        "the file it links to is missing or not a regular file",
                    )));
                }
                if here != there.as_ref().map(id) {
                    let tmp = format!("link-{i}").into_bytes();
                    beneath::link(ldir.as_fd(), lname, state.tmp.as_fd(), &tmp).map_err(io)?;
                    beneath::replace(state.tmp.as_fd(), &tmp, dir, name).map_err(io)?;
                }
                summary.hardlinks += 1;
            }
            Kind::Symlink { target } => {
                let dir = dirs.get(root, parent).map_err(io)?;
                if beneath::read_link(dir, name).as_deref() != Some(target.as_slice()) {
                    let tmp = format!("symlink-{i}").into_bytes();
                    beneath::symlink(target, state.tmp.as_fd(), &tmp).map_err(io)?;
                    beneath::set_symlink_meta(state.tmp.as_fd(), &tmp, e).map_err(io)?;
                    beneath::replace(state.tmp.as_fd(), &tmp, dir, name).map_err(io)?;
                } else {
                    beneath::set_symlink_meta(dir, name, e).map_err(io)?;
                }
                summary.symlinks += 1;
            }
            Kind::Dir | Kind::File => {}
        }
    }
    // Deletions: anything not in the manifest (the state directory aside).
    let wanted: HashSet<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
    let mut stale = Vec::new();
    collect_stale(root, &[], &wanted, &mut stale)?;
    for p in stale.iter().rev() {
        let io = |err| PvcError::io(&root.show(p), err);
        let (parent, name) = split(p);
        beneath::remove(dirs.get(root, parent).map_err(io)?, name).map_err(io)?;
        summary.deleted += 1;
    }
    // The state directory only stays while it holds partial files to resume from.
    let rm = |dir: &rustix::fd::OwnedFd, name: &str| {
        let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::REMOVEDIR);
    };
    if let Ok(s) = root.dir(STATE_DIR.as_bytes()) {
        rm(&s, "tmp");
        rm(&s, "partial");
    }
    if let Ok(r) = root.dir(b"") {
        rm(&r, STATE_DIR);
    }
    for e in entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        beneath::set_dir_meta(root, &e.path, e)
            .map_err(|err| PvcError::io(&root.show(&e.path), err))?;
    }
    Ok(())
}

/// Paths beneath `prefix` that are not `wanted`, parents before children; directories
/// that are wanted are descended into.
fn collect_stale(
    root: &Root,
    prefix: &[u8],
    wanted: &HashSet<&[u8]>,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), PvcError> {
    let io = |err| PvcError::io(&root.show(prefix), err);
    let names = beneath::list(root.dir(prefix).map_err(io)?.as_fd()).map_err(io)?;
    for (name, is_dir) in names {
        if prefix.is_empty() && name == STATE_DIR.as_bytes() {
            continue;
        }
        let path = if prefix.is_empty() {
            name
        } else {
            [prefix, b"/", &name].concat()
        };
        if !wanted.contains(path.as_slice()) {
            out.push(path);
            continue;
        }
        if is_dir {
            collect_stale(root, &path, wanted, out)?;
        }
    }
    Ok(())
}
