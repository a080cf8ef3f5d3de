//! Handing the listening sockets to a new binary *without stopping* (the first half of
//! `proxyctl upgrade`, like nginx's USR2).
//!
//! pingora's own handover happens only on SIGQUIT, and its graceful shutdown starts right
//! after, whether or not the new process ever serves. Here the running daemon sends
//! copies of its public listening sockets (the `--https`, `--http` and `--metrics` TCP
//! listeners) over `--upgrade-socket` when the admin API asks (`POST
//! /v1/upgrade/handover`), and keeps accepting on them. The new process (`proxyd
//! --upgrade`) accepts on the very same sockets; both do for a moment, which loses
//! nothing (one accept queue per socket). `proxyctl upgrade` stops the old process only
//! once the new one answers its readiness check, and stops the new one instead when it
//! does not.
//!
//! The admin socket is not handed over: two processes cannot both own its path, so the
//! new process serves its admin API on `--staging-admin-socket` until `proxyctl upgrade`
//! renames that over `--admin-socket`.
//!
//! The sockets are pingora's own table ([`ListenFds`], filled by each listening service
//! as it binds), which pingora passes to every service at start: [`WithListenFds`] wraps
//! the admin service to keep a handle on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use pingora::server::{Fds, ListenFds, RuntimeOpts, ShutdownWatch};

/// The running daemon's side of a handover.
pub struct Handover {
    upgrade_socket: PathBuf,
    fds: OnceLock<ListenFds>,
    /// One handover at a time.
    busy: Mutex<()>,
}

/// Why no socket was handed over.
#[derive(Debug)]
pub enum HandoverError {
    /// No new process waits on the upgrade socket.
    NobodyWaiting(PathBuf),
    /// Another handover is running.
    Busy,
    /// The services have not started yet (no listener table).
    NotStarted,
    /// Sending failed (the new process went away, permissions, ...).
    Send(String),
}

impl std::fmt::Display for HandoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandoverError::NobodyWaiting(p) => write!(
                f,
                "no new process waits on the upgrade socket {} (start `proxyd --upgrade` first)",
                p.display()
            ),
            HandoverError::Busy => f.write_str("another handover is in progress"),
            HandoverError::NotStarted => f.write_str("the listeners are not started yet"),
            HandoverError::Send(e) => write!(f, "sending the listening sockets failed: {e}"),
        }
    }
}

impl Handover {
    pub fn new(upgrade_socket: PathBuf) -> Arc<Handover> {
        Arc::new(Handover {
            upgrade_socket,
            fds: OnceLock::new(),
            busy: Mutex::new(()),
        })
    }

    pub fn upgrade_socket(&self) -> &Path {
        &self.upgrade_socket
    }

    /// Send copies of the TCP listening sockets to the process waiting on the upgrade
    /// socket; this process keeps them and keeps accepting. Blocking (pingora retries a
    /// refused connection for a few seconds): call it off the async workers. Returns the
    /// addresses sent.
    pub fn hand_over(&self) -> Result<Vec<String>, HandoverError> {
        let _one = self.busy.try_lock().map_err(|_| HandoverError::Busy)?;
        if !self.upgrade_socket.exists() {
            return Err(HandoverError::NobodyWaiting(self.upgrade_socket.clone()));
        }
        let table = self.fds.get().ok_or(HandoverError::NotStarted)?;
        let table = table.lock();
        let (keys, fds) = table.serialize();
        let mut sent = Fds::new();
        let mut addrs = Vec::new();
        for (key, fd) in keys.into_iter().zip(fds) {
            // Unix sockets (the admin API) stay with their process.
            if key.parse::<SocketAddr>().is_ok() {
                addrs.push(key.clone());
                sent.add(key, fd);
            }
        }
        if addrs.is_empty() {
            return Err(HandoverError::NotStarted);
        }
        let path = self.upgrade_socket.display().to_string();
        sent.send_to_sock(path.as_str())
            .map_err(|e| HandoverError::Send(format!("{e} ({path})")))?;
        addrs.sort();
        Ok(addrs)
    }
}

/// A pingora service that keeps a handle on the server's listener table when it starts,
/// then runs as `inner` would.
pub struct WithListenFds<S> {
    pub inner: S,
    pub handover: Arc<Handover>,
}

#[async_trait]
impl<S: pingora::services::Service> pingora::services::Service for WithListenFds<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(fds) = &fds {
            let _ = self.handover.fds.set(fds.clone());
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
