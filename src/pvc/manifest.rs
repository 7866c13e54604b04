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
use rustix::fs::{Access, AtFlags};

use super::wire::{Entry, Kind};

/// Directory at the volume root that holds the receiver's temporary and partial files;
/// never part of a manifest.
pub const STATE_DIR: &str = ".drsync";

/// What the walk saw but cannot replicate (sockets, devices, FIFOs) or may not read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Special files left out.
    pub paths: Vec<Vec<u8>>,
    /// Files and directories the reader may not read (reported to the receiver, which
    /// keeps its copy of them).
    pub unreadable: Vec<Vec<u8>>,
}

/// The directory ext4 (and others) keep at the root of a file system for `fsck`: owned by
/// root, mode 0700, never application data. Left out of the manifest and never deleted on
/// the destination (whose own file system has one).
pub const LOST_AND_FOUND: &str = "lost+found";

/// One step of the walk, in walk order.
#[derive(Debug)]
pub enum Walked {
    /// An entry and the inode it was.
    Entry(Entry, FileId),
    /// A file or directory the reader may not read.
    Unreadable(Vec<u8>),
}

/// Opens the volume root for reading beneath it.
pub fn open_root(root: &Path) -> io::Result<Dir> {
    Dir::open_ambient_dir(root, cap_std::ambient_authority())
}

/// Owner, mode and times of the root directory itself, as a [`Message::Root`].
///
/// [`Message::Root`]: super::wire::Message::Root
pub fn root_meta(root: &Dir) -> io::Result<super::wire::Message> {
    let meta = root.dir_metadata()?;
    Ok(super::wire::Message::Root {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_s: meta.mtime(),
        mtime_ns: meta.mtime_nsec() as u32,
    })
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
/// Anything unreadable is an error here.
pub fn walk(root: &Dir) -> io::Result<(Vec<Entry>, Skipped)> {
    let mut out = Vec::new();
    let skipped = walk_each(root, false, &mut |w| {
        if let Walked::Entry(e, _) = w {
            out.push(e);
        }
        true
    })?;
    Ok((out, skipped))
}

/// Streams the manifest of `root` step by step into `sink` (in [`walk`]'s order, hard
/// links referring to the index of their first name), so the sender can send while it
/// walks. With `report_unreadable`, a file or directory this process may not read is a
/// [`Walked::Unreadable`] step (a directory's contents are then not walked) instead of an
/// error. `sink` returning `false` stops the walk.
pub fn walk_each(
    root: &Dir,
    report_unreadable: bool,
    sink: &mut dyn FnMut(Walked) -> bool,
) -> io::Result<Skipped> {
    let mut walk = Walk {
        sink,
        count: 0,
        links: HashMap::new(),
        skipped: Skipped::default(),
        stopped: false,
        report_unreadable,
    };
    walk.dir(root, &[])?;
    Ok(walk.skipped)
}

struct Walk<'a> {
    sink: &'a mut dyn FnMut(Walked) -> bool,
    count: u32,
    links: HashMap<FileId, u32>,
    skipped: Skipped,
    stopped: bool,
    report_unreadable: bool,
}

/// Whether this process may read `name` in `dir` (and, for a directory, list and enter
/// it), asked the kernel with the effective ids and capabilities (`DAC_READ_SEARCH`
/// included). When every read bit is set the answer is yes whoever we are, without a
/// system call.
fn readable(dir: &Dir, name: &OsStr, mode: u32, is_dir: bool) -> io::Result<bool> {
    let (bits, access) = if is_dir {
        (0o555, Access::READ_OK | Access::EXEC_OK)
    } else {
        (0o444, Access::READ_OK)
    };
    if mode & bits == bits {
        return Ok(true);
    }
    match rustix::fs::accessat(
        dir,
        name,
        access,
        AtFlags::EACCESS | AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::ACCESS) => Ok(false),
        // `faccessat2` refused by an older seccomp profile (EPERM, ENOSYS): ask by
        // opening instead — never guess "unreadable", which would keep a stale DR copy.
        Err(rustix::io::Errno::PERM | rustix::io::Errno::NOSYS) => opens(dir, name, is_dir),
        Err(e) => Err(e.into()),
    }
}

/// Whether `name` opens for reading (a directory: and can be searched).
fn opens(dir: &Dir, name: &OsStr, is_dir: bool) -> io::Result<bool> {
    use rustix::fs::{Mode, OFlags};
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let flags = if is_dir {
        flags | OFlags::DIRECTORY
    } else {
        flags
    };
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::ACCESS) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if is_dir {
        // Looking anything up inside needs search permission.
        match rustix::fs::statat(&fd, ".", AtFlags::empty()) {
            Ok(_) => {}
            Err(rustix::io::Errno::ACCESS) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

impl Walk<'_> {
    fn emit(&mut self, e: Entry, id: FileId) {
        if !self.stopped {
            self.stopped = !(self.sink)(Walked::Entry(e, id));
            self.count += 1;
        }
    }

    /// Reports `path` unreadable, or fails when the receiver cannot be told.
    fn unreadable(&mut self, path: Vec<u8>) -> io::Result<()> {
        if !self.report_unreadable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: permission denied", String::from_utf8_lossy(&path)),
            ));
        }
        self.skipped.unreadable.push(path.clone());
        if !self.stopped {
            self.stopped = !(self.sink)(Walked::Unreadable(path));
        }
        Ok(())
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
            if prefix.is_empty()
                && (name == STATE_DIR.as_bytes() || name == LOST_AND_FOUND.as_bytes())
            {
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
            let special = !(ft.is_dir() || ft.is_file() || ft.is_symlink());
            if !special && !ft.is_symlink() && !readable(dir, os, entry.mode, ft.is_dir())? {
                self.unreadable(path)?;
                continue;
            }
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
