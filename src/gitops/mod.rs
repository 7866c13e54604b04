//! The git destination: one repository per mapping (or several mappings under their own
//! paths of one repository). Commits are built straight in the object database from the
//! rendered export — no work tree, no `git add -A` — and only when the tree changed. A
//! rejected push (another writer moved the branch) is answered by fetching, rebuilding our
//! path on the new remote head (other paths untouched) and pushing again with backoff.

pub mod breaker;
pub mod known_hosts;
mod snapshot;
mod transport;
mod treeio;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Oid, Repository, Signature};
use sha2::{Digest, Sha256};

use crate::export::Tree;
use crate::export::output::Diff;

pub use breaker::{Breaker, Held};
pub use known_hosts::KnownHosts;
pub use snapshot::{Patch, Snapshot};
pub use transport::Auth;

/// Push attempts before a persistent non-fast-forward is reported. Mappings sharing one
/// branch (a ClusterMapping's default repository, per-mapping paths) race each other across
/// replicas; each lost race costs a fetch and a retry.
const PUSH_ATTEMPTS: u32 = 10;

/// One writer per remote branch in this process: mappings sharing a branch would otherwise
/// reject each other's pushes (a non-fast-forward each) and retry in lockstep.
fn branch_lock(url: &str, branch: &str) -> std::sync::Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<std::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(format!("{url}\0{branch}"))
        .or_default()
        .clone()
}

/// A random share of `backoff` between a half and all of it: writers in other replicas
/// that lost the same race must not retry in step.
fn jittered(backoff: Duration) -> Duration {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        return backoff;
    }
    let share = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
    backoff.mul_f64(share)
}

/// Errors of the git destination.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A libgit2 operation failed.
    #[error("git {what}: {source}")]
    Git {
        /// What was being done.
        what: String,
        /// The error.
        source: git2::Error,
    },
    /// The remote could not be reached or refused the push; any commit stays in the local
    /// cache and the next sync rebuilds it on the remote head.
    #[error("remote {url}: {message}")]
    Remote {
        /// Remote URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// The breaker held the batch.
    #[error(transparent)]
    Held(#[from] Held),
    /// The fence refused the push (this process is no longer the leader); nothing was
    /// pushed, the commit stays local and is dropped by the next rebuild.
    #[error("not pushed: {0}")]
    Fenced(String),
    /// Filesystem error.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn git(what: &str) -> impl FnOnce(git2::Error) -> GitError + '_ {
    move |source| GitError::Git {
        what: what.to_string(),
        source,
    }
}

/// Where and as whom to commit.
#[derive(Debug, Clone)]
pub struct Target {
    /// Remote URL (`ssh://`, scp-style, `https://`, `git://`, `file://` or a local path).
    pub url: String,
    /// Branch.
    pub branch: String,
    /// Directory for this mapping's files (`""` = repository root).
    pub path: String,
    /// Credentials and host-key pins.
    pub auth: Auth,
    /// Commit author name and email.
    pub author: (String, String),
    /// Where local clones are cached.
    pub cache_dir: PathBuf,
    /// Asked right before every push; see [`Fence`].
    pub fence: Fence,
}

/// The check a push must pass, asked right before every push attempt: a controller replica
/// that lost its leader lease (e.g. it was paused past the lease) must not push an older
/// snapshot over the new leader's commits. `Err` names why; an error while checking must
/// be returned as `Err` (fail closed). The default lets every push through (CLI use).
#[derive(Clone, Default)]
pub struct Fence(Option<std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>>);

impl Fence {
    /// A fence asking `check` before each push.
    pub fn new(check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        Fence(Some(std::sync::Arc::new(check)))
    }

    /// `Ok` when a push may go ahead.
    pub fn check(&self) -> Result<(), String> {
        match &self.0 {
            Some(f) => f(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Fence(checked)"
        } else {
            "Fence(none)"
        })
    }
}

/// What a sync contributes to the commit message.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    /// Mapping name (`[dr-syncer] <mapping>: …`).
    pub mapping: String,
    /// Source cluster name, for the trailer.
    pub source_cluster: String,
    /// Kubernetes version of the source, for the trailer.
    pub kubernetes_version: String,
    /// The controller replica that wrote the commit (`Replica:` trailer; empty for the
    /// CLI): with sharding, who owned the mapping at the time.
    pub replica: String,
}

/// What [`Repo::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The tree is unchanged; no commit. `head` is the remote head, if any.
    Unchanged {
        /// Current remote head.
        head: Option<String>,
    },
    /// A commit was pushed.
    Committed {
        /// Commit id.
        sha: String,
        /// First line of the message.
        subject: String,
        /// Object changes.
        diff: Diff,
        /// Push attempts it took (more than one after concurrent writers).
        attempts: u32,
    },
}

/// What one commit-and-push attempt ended in.
enum Pushed {
    Done(Published),
    Retry,
}

/// A mapping's local clone.
pub struct Repo {
    repo: Repository,
    target: Target,
}

impl Repo {
    /// Opens (or creates) the bare cache clone for `target`.
    pub fn open(target: Target) -> Result<Self, GitError> {
        let key = Sha256::digest(
            format!("{}\0{}\0{}", target.url, target.branch, target.path).as_bytes(),
        );
        let dir = target.cache_dir.join(
            key.iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        std::fs::create_dir_all(&dir).map_err(|e| GitError::Io(dir.clone(), e))?;
        let repo = match Repository::open_bare(&dir) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(&dir).map_err(git("init cache repository"))?,
        };
        Ok(Repo { repo, target })
    }

    /// Fetches the branch; returns the remote head (`None` for an empty remote/new branch).
    pub fn fetch(&self) -> Result<Option<Oid>, GitError> {
        transport::fetch(&self.repo, &self.target)
    }

    /// The export files currently at our path in `head`.
    pub fn files_at(&self, head: Option<Oid>) -> Result<Tree, GitError> {
        let Some(head) = head else {
            return Ok(Tree::default());
        };
        let tree = self
            .repo
            .find_commit(head)
            .and_then(|c| c.tree())
            .map_err(git("reading head"))?;
        treeio::read_path(&self.repo, &tree, &self.target.path)
    }

    /// The blob ids of the export files at our path in `head`, by path (nothing is read).
    pub fn ids_at(&self, head: Option<Oid>) -> Result<BTreeMap<String, Oid>, GitError> {
        let Some(head) = head else {
            return Ok(BTreeMap::new());
        };
        let tree = self
            .repo
            .find_commit(head)
            .and_then(|c| c.tree())
            .map_err(git("reading head"))?;
        treeio::list_path(&self.repo, &tree, &self.target.path)
    }

    /// Writes one file's bytes into the object database; returns its blob id. A streamed
    /// export writes each file as it is rendered and keeps only the id.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Oid, GitError> {
        self.repo.blob(bytes).map_err(git("writing a blob"))
    }

    /// The bytes of blob `id`.
    pub fn read_blob(&self, id: Oid) -> Result<Vec<u8>, GitError> {
        self.repo
            .find_blob(id)
            .map(|b| b.content().to_vec())
            .map_err(git("reading a blob"))
    }

    /// Commits `tree` at our path on top of the remote head (only if it changed) and pushes,
    /// rebuilding on the new head when another writer got there first. `breaker` is checked
    /// against the deletions relative to `base`'s files before anything is written.
    pub fn publish(
        &self,
        head: Option<Oid>,
        tree: &Tree,
        info: &CommitInfo,
        breaker: &Breaker,
    ) -> Result<Published, GitError> {
        let mut ids = BTreeMap::new();
        for (path, content) in &tree.files {
            ids.insert(path.clone(), self.write_blob(content)?);
        }
        self.publish_ids(head, &ids, info, breaker)
    }

    /// [`Repo::publish`] for files already in the object database (path → blob id, see
    /// [`Repo::write_blob`]): what changed is decided by blob ids, no file is read.
    pub fn publish_ids(
        &self,
        mut head: Option<Oid>,
        files: &BTreeMap<String, Oid>,
        info: &CommitInfo,
        breaker: &Breaker,
    ) -> Result<Published, GitError> {
        let lock = branch_lock(&self.target.url, &self.target.branch);
        let _writing = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=PUSH_ATTEMPTS {
            let previous = self.ids_at(head)?;
            let diff = object_diff(&previous, files);
            let total = previous.keys().filter(|p| is_object(p)).count() as u64;
            breaker.check(&diff.deleted, total)?;
            let base_tree = head
                .map(|h| self.repo.find_commit(h).and_then(|c| c.tree()))
                .transpose()
                .map_err(git("reading head"))?;
            let subtree = treeio::write_ids(&self.repo, files)?;
            let root =
                treeio::replace_path(&self.repo, base_tree.as_ref(), &self.target.path, subtree)?;
            if base_tree.as_ref().map(|t| t.id()) == Some(root) {
                return Ok(Published::Unchanged {
                    head: head.map(|h| h.to_string()),
                });
            }
            match self.commit_and_push(head, root, info, diff, attempt)? {
                Pushed::Done(p) => return Ok(p),
                Pushed::Retry => {
                    std::thread::sleep(jittered(backoff));
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    head = self.fetch()?;
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Commits `root` on top of `head`, moves the local branch and pushes. `Retry` when
    /// another writer moved the remote branch and attempts remain.
    fn commit_and_push(
        &self,
        head: Option<Oid>,
        root: Oid,
        info: &CommitInfo,
        diff: Diff,
        attempt: u32,
    ) -> Result<Pushed, GitError> {
        let (subject, message) = commit_message(info, &diff);
        let sig =
            Signature::now(&self.target.author.0, &self.target.author.1).map_err(git("author"))?;
        let root_tree = self.repo.find_tree(root).map_err(git("reading tree"))?;
        let parents: Vec<git2::Commit> = head
            .map(|h| self.repo.find_commit(h))
            .transpose()
            .map_err(git("reading head"))?
            .into_iter()
            .collect();
        let parent_refs: Vec<&git2::Commit> = parents.iter().collect();
        let commit = self
            .repo
            .commit(None, &sig, &sig, &message, &root_tree, &parent_refs)
            .map_err(git("commit"))?;
        // The local branch moves in one atomic ref update; a crash leaves either ref.
        self.repo
            .reference(
                &format!("refs/heads/{}", self.target.branch),
                commit,
                true,
                "dr-syncer sync",
            )
            .map_err(git("updating the local branch"))?;
        // Checked after the commit is built and before anything leaves this process: the
        // window between the check and the push is one local call.
        self.target.fence.check().map_err(GitError::Fenced)?;
        match transport::push(&self.repo, &self.target) {
            Ok(()) => Ok(Pushed::Done(Published::Committed {
                sha: commit.to_string(),
                subject,
                diff,
                attempts: attempt,
            })),
            Err(transport::PushError::NonFastForward) if attempt < PUSH_ATTEMPTS => {
                Ok(Pushed::Retry)
            }
            Err(transport::PushError::NonFastForward) => Err(GitError::Remote {
                url: self.target.url.clone(),
                message: format!(
                    "branch {} kept moving; gave up after {attempt} attempts",
                    self.target.branch
                ),
            }),
            Err(transport::PushError::Failed(message)) => Err(GitError::Remote {
                url: self.target.url.clone(),
                message: format!(
                    "{message} (commit {commit} is kept locally and rebuilt on the next sync)"
                ),
            }),
        }
    }

    /// Applies file-level `changes` (built by `build` from each head it tries) at our path
    /// on top of the remote head, without reading or rewriting the other files: the
    /// incremental path of Continuous mode. Only existing heads can be patched.
    pub fn publish_patch<F, E>(
        &self,
        mut head: Oid,
        info: &CommitInfo,
        breaker: &Breaker,
        mut build: F,
    ) -> Result<Published, E>
    where
        F: FnMut(&Snapshot<'_>) -> Result<Patch, E>,
        E: From<GitError>,
    {
        let lock = branch_lock(&self.target.url, &self.target.branch);
        let _writing = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=PUSH_ATTEMPTS {
            let base = self
                .repo
                .find_commit(head)
                .and_then(|c| c.tree())
                .map_err(git("reading head"))?;
            let snapshot = Snapshot::read(&self.repo, &base, &self.target.path)?;
            let patch = build(&snapshot)?;
            let diff = snapshot.diff(&patch);
            let total = snapshot.paths.keys().filter(|p| is_object(p)).count() as u64;
            breaker
                .check(&diff.deleted, total)
                .map_err(GitError::from)?;
            let mut update = git2::build::TreeUpdateBuilder::new();
            let prefix = self.target.path.trim_matches('/');
            let full = |p: &str| {
                if prefix.is_empty() {
                    p.to_string()
                } else {
                    format!("{prefix}/{p}")
                }
            };
            for (path, content) in &patch {
                match content {
                    Some(bytes) => {
                        let blob = self.repo.blob(bytes).map_err(git("writing a blob"))?;
                        update.upsert(full(path), blob, git2::FileMode::Blob);
                    }
                    None if snapshot.paths.contains_key(path) => {
                        update.remove(full(path));
                    }
                    None => {}
                }
            }
            let root = update
                .create_updated(&self.repo, &base)
                .map_err(git("updating the tree"))?;
            if root == base.id() {
                return Ok(Published::Unchanged {
                    head: Some(head.to_string()),
                });
            }
            match self.commit_and_push(Some(head), root, info, diff, attempt)? {
                Pushed::Done(p) => return Ok(p),
                Pushed::Retry => {
                    std::thread::sleep(jittered(backoff));
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    match self.fetch()? {
                        Some(h) => head = h,
                        None => {
                            return Err(GitError::Remote {
                                url: self.target.url.clone(),
                                message: format!("branch {} vanished", self.target.branch),
                            }
                            .into());
                        }
                    }
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// The cache directory.
    pub fn cache_path(&self) -> &Path {
        self.repo.path()
    }
}

/// Object files: not kustomizations, not dot-files (state, sops config).
fn is_object(path: &str) -> bool {
    !path.starts_with('.') && path.contains('/') && !crate::export::layout::is_generated(path)
}

/// Object files added, changed (other blob id) and deleted from `old` to `new`.
fn object_diff(old: &BTreeMap<String, Oid>, new: &BTreeMap<String, Oid>) -> Diff {
    let mut d = Diff::default();
    for (p, id) in new.iter().filter(|(p, _)| is_object(p)) {
        match old.get(p) {
            None => d.added.push(p.clone()),
            Some(o) if o != id => d.changed.push(p.clone()),
            _ => {}
        }
    }
    d.deleted = old
        .keys()
        .filter(|p| is_object(p) && !new.contains_key(*p))
        .cloned()
        .collect();
    d
}

/// `[dr-syncer] <mapping>: N added, M changed, K deleted`, one line per object, trailers.
fn commit_message(info: &CommitInfo, diff: &Diff) -> (String, String) {
    let subject = format!(
        "[dr-syncer] {}: {} added, {} changed, {} deleted",
        info.mapping,
        diff.added.len(),
        diff.changed.len(),
        diff.deleted.len()
    );
    let mut body = String::new();
    for (mark, list) in [
        ("A", &diff.added),
        ("M", &diff.changed),
        ("D", &diff.deleted),
    ] {
        for p in list {
            body.push_str(&format!("{mark} {p}\n"));
        }
    }
    let replica = if info.replica.is_empty() {
        String::new()
    } else {
        format!("Replica: {}\n", info.replica)
    };
    let message = format!(
        "{subject}\n\n{body}{}Source-Cluster: {}\nKubernetes-Version: {}\nExported-By: dr-syncer {}\n{replica}",
        if body.is_empty() { "" } else { "\n" },
        info.source_cluster,
        info.kubernetes_version,
        env!("CARGO_PKG_VERSION")
    );
    (subject, message)
}
