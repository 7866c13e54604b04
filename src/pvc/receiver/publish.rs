//! Publishing verified files on their own thread — fdatasync, then owner, mode and times
//! on the open descriptor, then a rename into place relative to the parent's descriptor —
//! so the disk flush of one file overlaps receiving the next. Files are published in the
//! order they were verified; the first failure stops it and is reported.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::State;
use super::beneath::{self, DirCache, Root, split};
use super::plan::partial_name;
use crate::pvc::PvcError;
use crate::pvc::wire::Entry;

/// A received file whose content passed verification, waiting to be published.
pub struct Verified {
    /// The temporary file, written and verified.
    pub file: File,
    /// Its name in the state directory's `tmp/`.
    pub tmp: Vec<u8>,
    /// Its manifest entry.
    pub entry: Entry,
}

/// The publishing thread.
pub struct Publisher {
    tx: Option<std::sync::mpsc::SyncSender<Verified>>,
    thread: Option<std::thread::JoinHandle<Result<(), PvcError>>>,
}

impl Publisher {
    /// Starts the thread.
    pub fn start(root: Arc<Root>, state: Arc<State>) -> Self {
        // Bounded: at most this many verified files (and their descriptors) wait.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Verified>(64);
        let thread = std::thread::spawn(move || {
            let mut dirs = DirCache::default();
            for v in rx {
                let path = root.show(&v.entry.path);
                let io = |e| PvcError::io(&path, e);
                v.file.sync_data().map_err(io)?;
                beneath::set_meta(v.file.as_fd(), &v.entry).map_err(io)?;
                drop(v.file);
                let (parent, name) = split(&v.entry.path);
                let dir = dirs.get(&root, parent).map_err(io)?;
                beneath::replace(state.tmp.as_fd(), &v.tmp, dir, name).map_err(io)?;
                let _ = rustix::fs::unlinkat(
                    state.partial.as_fd(),
                    partial_name(&v.entry.path).as_str(),
                    rustix::fs::AtFlags::empty(),
                );
            }
            Ok(())
        });
        Publisher {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Hands a file over; if the thread already stopped, its error.
    pub fn submit(&mut self, v: Verified) -> Result<(), PvcError> {
        let sent = self.tx.as_ref().map(|tx| tx.send(v).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        self.finish()
            .and(Err(PvcError::Protocol("publisher stopped".into())))
    }

    /// Waits until every handed-over file is published.
    pub fn finish(&mut self) -> Result<(), PvcError> {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            None => Ok(()),
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(PvcError::Protocol("publisher thread panicked".into())),
        }
    }
}
