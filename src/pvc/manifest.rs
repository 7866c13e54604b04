//! The sender's view of the volume: every directory, file, symlink and hard link beneath
//! the root, read through `cap-std` handles so no path — however a tenant arranges
//! symlinks — resolves outside the root, and symlinks are recorded, never followed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use cap_fs_ext::DirExt;
use cap_std::fs::{Dir, MetadataExt};

use super::wire::{Entry, Kind};

/// Directory at the volume root that holds the receiver's temporary and partial files;
/// never part of a manifest.
pub const STATE_DIR: &str = ".drsync";

/// What the walk saw but cannot replicate (sockets, devices, FIFOs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Paths left out.
    pub paths: Vec<Vec<u8>>,
}

/// Opens the volume root for reading beneath it.
pub fn open_root(root: &Path) -> io::Result<Dir> {
    Dir::open_ambient_dir(root, cap_std::ambient_authority())
}

/// Which inode the walk saw at a path (`st_dev`, `st_ino`): the sender checks that the file
/// it opens to send is still that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// The manifest of `root`: parents before children, names sorted bytewise per directory.
pub fn walk(root: &Dir) -> io::Result<(Vec<Entry>, Skipped)> {
    let mut out = Vec::new();
    let skipped = walk_each(root, &mut |e, _| {
        out.push(e);
        true
    })?;
    Ok((out, skipped))
}

/// Streams the manifest of `root` entry by entry into `sink` with the inode each entry was
/// (in [`walk`]'s order, hard links referring to the index of their first name), so the
/// sender can send while it walks. `sink` returning `false` stops the walk.
pub fn walk_each(root: &Dir, sink: &mut dyn FnMut(Entry, FileId) -> bool) -> io::Result<Skipped> {
    let mut walk = Walk {
        sink,
        count: 0,
        links: HashMap::new(),
        skipped: Skipped::default(),
        stopped: false,
    };
    walk.dir(root, &[])?;
    Ok(walk.skipped)
}

struct Walk<'a> {
    sink: &'a mut dyn FnMut(Entry, FileId) -> bool,
    count: u32,
    links: HashMap<FileId, u32>,
    skipped: Skipped,
    stopped: bool,
}

impl Walk<'_> {
    fn emit(&mut self, e: Entry, id: FileId) {
        if !self.stopped {
            self.stopped = !(self.sink)(e, id);
            self.count += 1;
        }
    }

    fn dir(&mut self, dir: &Dir, prefix: &[u8]) -> io::Result<()> {
        let mut names: Vec<Vec<u8>> = dir
            .entries()?
            .map(|e| e.map(|e| e.file_name().into_vec()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            if self.stopped {
                return Ok(());
            }
            if prefix.is_empty() && name == STATE_DIR.as_bytes() {
                continue;
            }
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                [prefix, b"/", &name].concat()
            };
            let os = OsStr::from_bytes(&name);
            let meta = dir.symlink_metadata(os)?;
            let ft = meta.file_type();
            let mut entry = Entry {
                path: path.clone(),
                kind: Kind::File,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: 0,
                mtime_s: meta.mtime(),
                mtime_ns: meta.mtime_nsec() as u32,
            };
            let id = FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            if ft.is_dir() {
                entry.kind = Kind::Dir;
                self.emit(entry, id);
                let sub = dir.open_dir_nofollow(os)?;
                self.dir(&sub, &path)?;
            } else if ft.is_symlink() {
                let target = dir.read_link_contents(os)?.into_os_string().into_vec();
                entry.kind = Kind::Symlink { target };
                self.emit(entry, id);
            } else if ft.is_file() {
                entry.size = meta.len();
                if meta.nlink() > 1 {
                    match self.links.get(&id) {
                        Some(first) => {
                            entry.kind = Kind::HardLink { leader: *first };
                            entry.size = 0;
                        }
                        None => {
                            self.links.insert(id, self.count);
                        }
                    }
                }
                self.emit(entry, id);
            } else {
                self.skipped.paths.push(path);
            }
        }
        Ok(())
    }
}
