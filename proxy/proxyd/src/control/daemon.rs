//! `proxyd --daemon` returns once the daemon serves (systemd `Type=forking`).
//!
//! pingora forks, and its launching process waits for a SIGUSR1 from the daemon (exit 0),
//! or for the daemon to die or a timeout (exit 1). pingora sends that signal from its
//! bootstrap step, which proxyd runs before the fork (to take the listeners of an
//! upgrade early), so pingora never sends it and the launcher would wait out its whole
//! timeout. [`NotifyLauncher`] sends it instead, once the readiness check
//! (`readiness.rs`: every `--https`/`--http` address is a listening socket of the daemon)
//! passes.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::data::state::Shared;
use crate::observe::readiness::Listeners;

/// The process that ran `proxyd --daemon`, recorded before the fork.
#[derive(Debug, Clone, Copy)]
pub struct Launcher {
    pid: i32,
    /// Its start time (clock ticks after boot, `/proc/PID/stat`), so that a recycled PID
    /// is never signalled.
    start_time: u64,
}

impl Launcher {
    /// Call in the launching process, before pingora forks. Also keeps a SIGUSR1 that
    /// arrives before pingora's launcher listens for it from ending the launcher (the
    /// signal's default action).
    pub fn before_fork() -> anyhow::Result<Launcher> {
        let pid = std::process::id() as i32;
        let start_time = process_start(pid)
            .ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}/stat"))?
            .0;
        signal_hook::flag::register(
            signal_hook::consts::SIGUSR1,
            Arc::new(AtomicBool::new(false)),
        )
        .map_err(|e| anyhow::anyhow!("cannot handle SIGUSR1: {e}"))?;
        Ok(Launcher { pid, start_time })
    }

    /// Still the process recorded, and not yet exited.
    fn waiting(&self) -> bool {
        matches!(process_start(self.pid), Some((t, state)) if t == self.start_time && state != 'Z' && state != 'X')
    }
}

/// Start time and state of a process, from `/proc/PID/stat`.
fn process_start(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses; fields resume after
    // the last `)`. starttime is field 22, state field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

/// Background service of the daemon: SIGUSR1 to the launcher once ready.
pub struct NotifyLauncher {
    pub launcher: Launcher,
    pub shared: Arc<Shared>,
    pub listeners: Listeners,
}

#[async_trait]
impl BackgroundService for NotifyLauncher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if crate::observe::readiness::check(&self.shared, &self.listeners).ready {
                break;
            }
        }
        tracing::info!(launcher = self.launcher.pid, "ready: telling the launcher");
        // Again until it is gone: a signal that came before it listened is not seen.
        for _ in 0..50 {
            if !self.launcher.waiting() {
                return;
            }
            // SAFETY: kill(2) with a valid signal number; the target was checked above to
            // be the launcher itself (same start time), not a recycled PID.
            unsafe {
                libc::kill(self.launcher.pid, libc::SIGUSR1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_start_time_and_state() {
        let (t, state) = process_start(std::process::id() as i32).unwrap();
        assert!(t > 0);
        assert!(matches!(state, 'R' | 'S'), "{state}");
        // A process that is gone has none.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(process_start(pid).is_none());
    }
}
