//! Inter-process locks on files of the store: `flock(2)`, released by the kernel when
//! the holder closes the file or dies, so a lock is never stale and needs no takeover.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An exclusive lock, held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock on `path` (created 0600 if missing) without waiting: `Ok(None)`
    /// when another open file (this process or another) holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(FileLock {
                _file: file,
                path: path.to_path_buf(),
            }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// Waits (polling, async) up to `within` for the lock.
    pub async fn acquire(path: &Path, within: Duration) -> io::Result<FileLock> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = FileLock::try_acquire(path)? {
                return Ok(l);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{}: held by another process", path.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_lets_go() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("locks").join("a.test.lock");
        let first = FileLock::try_acquire(&p).unwrap().expect("free lock");
        assert!(FileLock::try_acquire(&p).unwrap().is_none());
        drop(first);
        assert!(FileLock::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn a_dead_holder_leaves_no_stale_lock() {
        // A child process takes the lock and is killed: the kernel releases it.
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.lock");
        // sh opens the file as fd 9, flock(1) locks it (the lock belongs to the open
        // file, shared with sh), then sh becomes `sleep` under the same pid.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 9>\"$0\" && flock 9 && exec sleep 30")
            .arg(&p)
            .spawn();
        let Ok(child) = child.as_mut() else {
            return;
        };
        let held = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            FileLock::try_acquire(&p).unwrap().is_none()
        });
        assert!(held, "the child never took the lock");
        child.kill().unwrap();
        child.wait().unwrap();
        let freed = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            FileLock::try_acquire(&p).unwrap().is_some()
        });
        assert!(freed, "lock not released after its holder died");
    }
}
