//! The trainer process, as the checker sees it: is it alive, is it still the process that
//! started the run, and stopping it (SIGTERM, then SIGKILL after a grace period).
//!
//! Behind a trait so `zolog run` (which owns the child) or a test can supply its own.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::event::Timestamp;

/// A signal the checker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
}

impl Sig {
    pub fn name(self) -> &'static str {
        match self {
            Sig::Term => "SIGTERM",
            Sig::Kill => "SIGKILL",
        }
    }
}

/// How the checker observes and signals processes.
pub trait ProcessControl: Debug + Send + Sync {
    /// Is `pid` a live process (a zombie is not)?
    fn alive(&self, pid: u32) -> bool;
    /// When `pid` started, if the system says.
    fn started_at(&self, pid: u32) -> Option<Timestamp>;
    fn signal(&self, pid: u32, sig: Sig) -> std::io::Result<()>;
}

/// The operating system's processes (Linux `/proc` for zombies and start times, `kill(2)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsProcesses;

/// A pid the checker may signal: not 0 or 1 (which `kill` treats as "all" or init), not negative
/// once converted, and not this process.
pub fn signallable(pid: u32) -> bool {
    pid > 1 && i32::try_from(pid).is_ok() && pid != std::process::id()
}

fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of the whole line (starttime) is the 20th after the name.
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn boot_time_secs() -> Option<i64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl ProcessControl for OsProcesses {
    fn alive(&self, pid: u32) -> bool {
        use nix::errno::Errno;
        use nix::sys::signal::kill;
        use nix::unistd::Pid;
        if !signallable(pid) {
            return pid == std::process::id();
        }
        match kill(Pid::from_raw(pid as i32), None) {
            Ok(()) => !matches!(proc_stat(pid), Some(('Z' | 'X', _))),
            Err(Errno::EPERM) => true,
            Err(_) => false,
        }
    }

    fn started_at(&self, pid: u32) -> Option<Timestamp> {
        let (_, ticks) = proc_stat(pid)?;
        // /proc reports start times in USER_HZ ticks, which Linux fixes at 100 per second.
        let hz = 100i64;
        let boot = boot_time_secs()?;
        let ns = boot
            .checked_mul(1_000_000_000)?
            .checked_add((ticks as i64).checked_mul(1_000_000_000)? / hz)?;
        Some(Timestamp(ns))
    }

    fn signal(&self, pid: u32, sig: Sig) -> std::io::Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if !signallable(pid) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("refusing to signal pid {pid}"),
            ));
        }
        let s = match sig {
            Sig::Term => Signal::SIGTERM,
            Sig::Kill => Signal::SIGKILL,
        };
        kill(Pid::from_raw(pid as i32), s).map_err(std::io::Error::from)
    }
}

/// Could `pid` be the process that appended TrainingStarted at `started`? A process that the
/// system says started more than 2 s after that (boot time has 1 s resolution) is a later process
/// that reused the pid.
pub fn same_process(ctl: &dyn ProcessControl, pid: u32, started: Option<Timestamp>) -> bool {
    match (ctl.started_at(pid), started) {
        (Some(p), Some(s)) => p.nanos() <= s.nanos().saturating_add(2_000_000_000),
        _ => true,
    }
}

/// What [`terminate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminated {
    /// The last signal sent.
    pub signal: Sig,
    /// The process was seen gone afterwards.
    pub exited: bool,
}

/// SIGTERM, wait up to `grace` for the process to go, then SIGKILL (and wait up to 5 s more).
pub async fn terminate(
    ctl: &dyn ProcessControl,
    pid: u32,
    grace: Duration,
) -> std::io::Result<Terminated> {
    ctl.signal(pid, Sig::Term)?;
    if wait_gone(ctl, pid, grace).await {
        return Ok(Terminated {
            signal: Sig::Term,
            exited: true,
        });
    }
    match ctl.signal(pid, Sig::Kill) {
        Ok(()) => {}
        // Went away between the check and the signal.
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32) => {
            return Ok(Terminated {
                signal: Sig::Term,
                exited: true,
            });
        }
        Err(e) => return Err(e),
    }
    let exited = wait_gone(ctl, pid, Duration::from_secs(5)).await;
    Ok(Terminated {
        signal: Sig::Kill,
        exited,
    })
}

async fn wait_gone(ctl: &dyn ProcessControl, pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !ctl.alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_signals_init_the_group_or_itself() {
        for pid in [0, 1, std::process::id(), u32::MAX] {
            assert!(!signallable(pid), "{pid}");
            assert!(OsProcesses.signal(pid, Sig::Term).is_err());
        }
    }

    #[test]
    fn this_process_is_alive_and_started_before_now() {
        let me = std::process::id();
        assert!(OsProcesses.alive(me));
        let t = OsProcesses.started_at(me).expect("/proc on Linux");
        assert!(t <= Timestamp::now());
        assert!(same_process(&OsProcesses, me, Some(Timestamp::now())));
        assert!(!same_process(
            &OsProcesses,
            me,
            Some(Timestamp(t.nanos() - 60_000_000_000))
        ));
    }
}
