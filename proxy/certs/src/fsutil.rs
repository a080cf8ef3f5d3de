//! Crash-safe file and directory writes (see the crate docs, "Writing atomically").
//! Public so that the other writer of the store (`proxy/acme`, the account and its lock
//! files) writes the same way.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::StoreError;

/// Mode of private keys.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificates and metadata (public data, in a 0700 directory anyway).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of every directory the store creates.
pub const DIR_MODE: u32 = 0o700;

/// Random lower-case hex, for temporary names.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    crate::util::random_fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn create_dir(path: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|e| StoreError::io(path, e))
}

/// Creates `path` (which must not exist) with `mode`, writes `data` and fsyncs it.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write().map_err(|e| StoreError::io(path, e))
}

/// Replaces the file `path` atomically: temporary file in the same directory, write,
/// fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.tmp-{}", random_hex(8)));
    write_new(&tmp, data, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::io(path, e));
    }
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Puts the complete directory `tmp` in place as `dst` (both in the same directory) and
/// fsyncs that directory. An existing `dst` is swapped out atomically with
/// `RENAME_EXCHANGE` where the file system supports it, else moved to `old_name` first
/// (a crash between the two renames is repaired by the store's load).
pub(crate) fn replace_dir(tmp: &Path, dst: &Path, old_name: &str) -> Result<(), StoreError> {
    let dir = parent(dst);
    match fs::rename(tmp, dst) {
        Ok(()) => return sync_dir(dir),
        // Linux: ENOTEMPTY (or EEXIST) when dst is a non-empty directory.
        Err(e) if dst.exists() => tracing::debug!("rename over {}: {e}; swapping", dst.display()),
        Err(e) => return Err(StoreError::io(dst, e)),
    }
    match exchange(tmp, dst) {
        Ok(()) => {
            // `tmp` now holds the old directory.
            sync_dir(dir)?;
            remove_dir_logged(tmp);
            return Ok(());
        }
        Err(e) if is_unsupported(&e) => {
            tracing::debug!("RENAME_EXCHANGE unsupported for {}: {e}", dst.display())
        }
        Err(e) => return Err(StoreError::io(dst, e)),
    }
    let old = dir.join(old_name);
    fs::rename(dst, &old).map_err(|e| StoreError::io(dst, e))?;
    if let Err(e) = fs::rename(tmp, dst) {
        // Put the old one back; keep the new one for the next load to clean up.
        let _ = fs::rename(&old, dst);
        return Err(StoreError::io(dst, e));
    }
    sync_dir(dir)?;
    remove_dir_logged(&old);
    Ok(())
}

fn remove_dir_logged(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path) {
        tracing::warn!(
            "could not remove {}: {e} (it will be retried on load)",
            path.display()
        );
    }
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_dir_swaps_a_whole_directory() {
        let t = tempfile::tempdir().unwrap();
        let dst = t.path().join("a.test");
        create_dir(&dst).unwrap();
        write_new(&dst.join("key.pem"), b"old key", KEY_MODE).unwrap();
        write_new(&dst.join("only-old"), b"x", PUBLIC_MODE).unwrap();
        let tmp = t.path().join(".tmp-a.test-1");
        create_dir(&tmp).unwrap();
        write_new(&tmp.join("key.pem"), b"new key", KEY_MODE).unwrap();

        replace_dir(&tmp, &dst, ".old-a.test-1").unwrap();
        assert_eq!(fs::read(dst.join("key.pem")).unwrap(), b"new key");
        assert!(!dst.join("only-old").exists());
        let left: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("a.test")]);
    }

    #[test]
    fn write_atomic_replaces_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ca.key");
        write_atomic(&p, b"one", KEY_MODE).unwrap();
        write_atomic(&p, b"two", KEY_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
