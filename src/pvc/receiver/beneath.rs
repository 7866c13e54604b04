//! Every destination-side file operation, done relative to directory descriptors: a path
//! beneath the root is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so no
//! component — whoever planted it, whenever — is ever followed, and the last component is
//! handled with `*at` calls that do not follow it either. Owner, mode and times are set on
//! descriptors opened `O_NOFOLLOW` (or with `AT_SYMLINK_NOFOLLOW` on a symlink itself).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps,
    Uid,
};
use rustix::io::Errno;

use crate::pvc::wire::Entry;

/// No symlink anywhere in the path, and nothing above the starting directory.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// Bytes as a path (the protocol carries raw bytes).
pub(super) fn os(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path))
}

/// Splits `rel` into its parent (empty for the root) and its last component.
pub(super) fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// The destination root: a directory descriptor everything else is opened beneath.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens (creating it if needed) the root directory the operator named; the only
    /// path-based operation of a sync.
    pub fn open(path: &Path) -> io::Result<Root> {
        std::fs::create_dir_all(path)?;
        let fd = rfs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The full path of `rel`, for error messages.
    pub fn show(&self, rel: &[u8]) -> PathBuf {
        self.path.join(os(rel))
    }

    /// Flushes the whole file system the root is on (`syncfs`): renames and directory
    /// entries included, which `fdatasync` of each file does not cover.
    pub fn sync_fs(&self) -> io::Result<()> {
        Ok(rfs::syncfs(&self.fd)?)
    }

    /// A file in the root's file system that has no name (`O_TMPFILE`): scratch space that
    /// nothing else can see and that goes away with the last descriptor, even if the
    /// process is killed.
    pub fn unnamed_file(&self) -> io::Result<std::fs::File> {
        let fd = rfs::openat(
            &self.fd,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// Opens directory `rel` (empty: the root) beneath the root, refusing symlinks in any
    /// component.
    pub fn dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { b"." } else { rel };
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        Ok(rfs::openat2(
            &self.fd,
            os(rel),
            flags,
            Mode::empty(),
            RESOLVE,
        )?)
    }
}

/// The last directory opened, reused while entries stay in it (the manifest is in walk
/// order, so most entries share their predecessor's parent): one `openat2` per directory,
/// not per file. Only directories that are manifest `Dir` entries are ever cached, and
/// those are never replaced during a sync, so a cached descriptor cannot go stale.
#[derive(Default)]
pub struct DirCache {
    path: Vec<u8>,
    fd: Option<OwnedFd>,
}

impl DirCache {
    /// The directory `rel` beneath `root`.
    pub fn get(&mut self, root: &Root, rel: &[u8]) -> io::Result<BorrowedFd<'_>> {
        if self.fd.is_none() || self.path != rel {
            self.fd = None;
            self.fd = Some(root.dir(rel)?);
            self.path = rel.to_vec();
        }
        match &self.fd {
            Some(fd) => Ok(fd.as_fd()),
            None => Err(io::Error::other("directory cache empty")),
        }
    }
}

/// `lstat` of `name` in `dir`; `None` if there is nothing.
pub fn stat(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Stat>> {
    match rfs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The type of what a stat describes.
pub fn kind(s: &Stat) -> FileType {
    FileType::from_raw_mode(s.st_mode)
}

/// Whether a failure to open a parent means "not a real directory here (yet)": missing,
/// a symlink, or not a directory. Planning treats such entries as new.
pub fn absent(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV)
    )
}

/// Makes `name` in `dir` a real directory: kept if it is one, otherwise whatever is there
/// (a file, a symlink) is removed and a directory created.
pub fn ensure_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match stat(dir, name)? {
        Some(s) if kind(&s) == FileType::Directory => return Ok(()),
        Some(_) => rfs::unlinkat(dir, os(name), AtFlags::empty())?,
        None => {}
    }
    Ok(rfs::mkdirat(dir, os(name), Mode::from_raw_mode(0o700))?)
}

/// Removes `name` from `dir`, a directory tree included (never following symlinks).
pub fn remove(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match stat(dir, name)? {
        Some(s) if kind(&s) == FileType::Directory => {
            let d = cap_std::fs::Dir::from(dir.try_clone_to_owned()?);
            d.remove_dir_all(os(name))
        }
        Some(_) => Ok(rfs::unlinkat(dir, os(name), AtFlags::empty())?),
        None => Ok(()),
    }
}

/// Moves `from` over `to` (atomically unless `to` is a directory, which goes first).
pub fn replace(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    if stat(to_dir, to)?.is_some_and(|s| kind(&s) == FileType::Directory) {
        remove(to_dir, to)?;
    }
    Ok(rfs::renameat(from_dir, os(from), to_dir, os(to))?)
}

/// A fresh temporary file `name` in `dir`, open for writing (a stale one is replaced).
pub fn create(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    match rfs::unlinkat(dir, os(name), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rfs::openat(dir, os(name), flags, Mode::from_raw_mode(0o600))?.into())
}

/// Opens `name` in `dir` if it is a regular file — never through a symlink, never blocking
/// on a FIFO — and checks with `fstat` that the descriptor is one.
pub fn open_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, os(name), flags, Mode::empty())?;
    if kind(&rfs::fstat(&fd)?) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(fd.into())
}

fn times(e: &Entry) -> Timestamps {
    let t = Timespec {
        tv_sec: e.mtime_s,
        tv_nsec: i64::from(e.mtime_ns.min(999_999_999)),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// `Ok(true)` if the owner was set, `Ok(false)` if it was refused (`EPERM`: this process
/// may not chown, no `CAP_CHOWN`). The caller counts refusals and decides (see
/// [`super::Ownership`]): a commit is never stopped half-way by one.
fn owner_result(r: rustix::io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(Errno::PERM) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Owner, then mode (chown clears set-id bits), then times, on an open descriptor.
/// `Ok(false)` if the owner was refused.
pub fn set_meta(fd: BorrowedFd<'_>, e: &Entry) -> io::Result<bool> {
    let kept = owner_result(rfs::fchown(
        fd,
        Some(Uid::from_raw(e.uid)),
        Some(Gid::from_raw(e.gid)),
    ))?;
    rfs::fchmod(fd, Mode::from_raw_mode(e.mode & 0o7777))?;
    rfs::futimens(fd, &times(e))?;
    Ok(kept)
}

/// Owner and times of the symlink `name` in `dir` itself (symlinks have no mode);
/// `Ok(false)` if the owner was refused.
pub fn set_symlink_meta(dir: BorrowedFd<'_>, name: &[u8], e: &Entry) -> io::Result<bool> {
    let kept = owner_result(rfs::chownat(
        dir,
        os(name),
        Some(Uid::from_raw(e.uid)),
        Some(Gid::from_raw(e.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    ))?;
    rfs::utimensat(dir, os(name), &times(e), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(kept)
}

/// Owner, mode and times of directory `rel`, opened beneath the root without symlinks;
/// `Ok(false)` if the owner was refused.
pub fn set_dir_meta(root: &Root, rel: &[u8], e: &Entry) -> io::Result<bool> {
    set_meta(root.dir(rel)?.as_fd(), e)
}

/// Hard-links `from` in `from_dir` as `to` in `to_dir` (never following a symlink).
pub fn link(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    match rfs::unlinkat(to_dir, os(to), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(rfs::linkat(
        from_dir,
        os(from),
        to_dir,
        os(to),
        AtFlags::empty(),
    )?)
}

/// Creates symlink `name` in `dir` pointing at `target` (a stale one is replaced).
pub fn symlink(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::unlinkat(dir, os(name), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(rfs::symlinkat(os(target), dir, os(name))?)
}

/// The target of symlink `name` in `dir`, if it is one.
pub fn read_link(dir: BorrowedFd<'_>, name: &[u8]) -> Option<Vec<u8>> {
    rfs::readlinkat(dir, os(name), Vec::new())
        .ok()
        .map(|c| c.into_bytes())
}

/// Names and whether each is a directory (from the listing: no stat per entry) of `dir`.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, bool)>> {
    let d = cap_std::fs::Dir::from(dir.try_clone_to_owned()?);
    let mut names = Vec::new();
    for e in d.entries()? {
        let e = e?;
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        names.push((e.file_name().as_bytes().to_vec(), is_dir));
    }
    names.sort();
    Ok(names)
}
