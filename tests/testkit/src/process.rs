//! Long-running child processes that take their descendants with them when they stop.
//!
//! Killing the process a test started is not always enough to stop a server: `git daemon`
//! runs the `git-daemon` executable as a child and waits for it, so a SIGKILL to `git`
//! leaves `git-daemon` listening, reparented to init, after the test is over. So every
//! long-running child of the testkit is started as the leader of its own process group
//! ([`ProcessGroup::spawn`]) and stopping it signals the whole group.
//!
//! Limits: a descendant that starts its own session (`sshd`'s per-connection processes call
//! `setsid`) leaves the group; those end with their client's connection. A child in its own
//! group no longer gets the terminal's Ctrl-C, and a test process killed by a signal runs
//! no destructor: such an interrupted run can leave servers behind (envtest's lifeline
//! does not have this limit).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How long a group gets to exit after SIGTERM before the rest is killed with SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);

/// How often the group is checked while waiting for it to exit.
const POLL: Duration = Duration::from_millis(20);

/// How to stop a process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL at once: a crash, which is what tests that kill a controller mean.
    Kill,
    /// SIGTERM, then SIGKILL whatever still runs after the grace period.
    Terminate(Duration),
    /// No signal at first, because the group was asked to stop some other way (envtest's
    /// lifeline); SIGTERM when it still runs after this long, then SIGKILL after [`GRACE`].
    Await(Duration),
}

/// A child process leading its own process group; dropping it stops the whole group
/// ([`Stop::Terminate`] with [`GRACE`]) and reaps the child.
#[derive(Debug)]
pub struct ProcessGroup {
    child: Child,
    stopped: bool,
}

impl ProcessGroup {
    /// Spawns `cmd` as the leader of a new process group (whose id is the child's pid).
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        cmd.process_group(0);
        Ok(ProcessGroup {
            child: cmd.spawn()?,
            stopped: false,
        })
    }

    /// The leader's pid, which is also the group's id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The leader, e.g. for its stdin. Do not wait for it here: once the leader is reaped
    /// while the group is empty, the kernel may hand its id to an unrelated new group, and
    /// stopping would signal that one.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether the leader has exited (a zombie, or gone), without reaping it.
    pub fn leader_exited(&self) -> bool {
        !matches!(proc_stat(self.id()), Some(s) if s.state != 'Z' && s.state != 'X')
    }

    /// Stops every process of the group as `how` says, waits until none runs, then reaps
    /// the leader. Idempotent; errors (a group already gone) are ignored.
    pub fn stop(&mut self, how: Stop) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        stop_group(&mut self.child, how);
    }

    /// Leaves the group running: neither [`stop`](Self::stop) nor dropping touches it any
    /// more (a detached envtest instance outlives the test process on purpose).
    pub fn detach(&mut self) {
        self.stopped = true;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop(Stop::Terminate(GRACE));
    }
}

/// Stops `child` and, when it leads its own process group (spawned with
/// `process_group(0)`), every process of that group as `how` says; then reaps `child`. A
/// child that leads no group is killed alone with SIGKILL, as `Child::kill` always did.
/// For owners that hold a plain [`Child`] (such as the integration tests' `Running`).
pub fn stop(child: &mut Child, how: Stop) {
    use rustix::process::{WaitId, WaitIdOptions, getpgid, waitid};
    let pid = Pid::from_child(child);
    // Only while `child` is not reaped (running, or a zombie: peeked at with NOWAIT) is its
    // pid surely still its own; after that, the id may name an unrelated process.
    let ours = waitid(
        WaitId::Pid(pid),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    )
    .is_ok();
    let leads_group = ours && getpgid(Some(pid)).is_ok_and(|g| g == pid);
    if leads_group {
        stop_group(child, how);
    } else {
        // Not a group leader: signalling its pid as a group would miss it (and could hit
        // an unrelated group); only the process itself can be stopped.
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The ids of the processes in group `pgid` that have not exited (zombies left out: they
/// run nothing and only wait for their parent to reap them).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X')
        })
        .collect()
}

/// Signals the group, waits, escalates to SIGKILL, then reaps the leader. The leader is
/// reaped last on purpose: until then its id cannot be reused, so every signal sent to the
/// group's id reaches this group and no other.
fn stop_group(child: &mut Child, how: Stop) {
    let pgid = child.id();
    let first_wait = match how {
        Stop::Kill => None,
        Stop::Terminate(grace) => {
            signal_group(pgid, Signal::TERM);
            Some(grace)
        }
        Stop::Await(wait) => {
            if !wait_until_empty(pgid, wait) {
                signal_group(pgid, Signal::TERM);
            }
            Some(GRACE)
        }
    };
    if first_wait.is_none_or(|grace| !wait_until_empty(pgid, grace)) {
        signal_group(pgid, Signal::KILL);
        // SIGKILL cannot be refused; the bound only guards against a stuck kernel state.
        wait_until_empty(pgid, Duration::from_secs(10));
    }
    let _ = child.wait();
}

fn signal_group(pgid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        // ESRCH (nothing left) is the expected outcome of a clean exit.
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Whether group `pgid` emptied within `timeout`.
fn wait_until_empty(pgid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if group_members(pgid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// The fields of `/proc/<pid>/stat` used here.
struct ProcStat {
    state: char,
    pgrp: u32,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses, so parse
    // from the last `)`.
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, pgrp })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that waits for a `sleep` it started: the shape of `git daemon`.
    fn shell_with_grandchild() -> Command {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", "sleep 600 & wait"]);
        cmd
    }

    fn wait_for_members(pgid: u32, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_members(pgid).len() < n {
            assert!(Instant::now() < deadline, "{:?}", group_members(pgid));
            std::thread::sleep(POLL);
        }
    }

    /// `stop` on a plain `Child` that leads its group (how the integration tests' `Running`
    /// holds a controller) kills the grandchild too, with SIGKILL and no grace.
    #[test]
    fn stop_kills_the_group_of_a_group_leader() {
        let mut child = shell_with_grandchild().process_group(0).spawn().unwrap();
        let pgid = child.id();
        wait_for_members(pgid, 2);
        let started = Instant::now();
        stop(&mut child, Stop::Kill);
        assert!(started.elapsed() < GRACE, "waited {:?}", started.elapsed());
        assert_eq!(group_members(pgid), Vec::<u32>::new(), "left running");
    }

    /// A `ProcessGroup` dropped stops its grandchildren (SIGTERM is enough for `sleep`).
    #[test]
    fn dropping_a_process_group_stops_its_grandchildren() {
        let group = ProcessGroup::spawn(&mut shell_with_grandchild()).unwrap();
        let pgid = group.id();
        wait_for_members(pgid, 2);
        drop(group);
        assert_eq!(group_members(pgid), Vec::<u32>::new(), "left running");
    }
}
