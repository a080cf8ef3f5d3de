//! The on-disk certificate store. Layout and crash safety: see the crate docs.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, KEY_MODE, PUBLIC_MODE};
use crate::parse::{self, Part};
use crate::{StoreError, ISSUER_MANUAL};

const CHAIN_FILE: &str = "fullchain.pem";
const KEY_FILE: &str = "key.pem";
const META_FILE: &str = "meta.json";
/// Temporary and swapped-out directories younger than this may belong to a save in
/// progress (possibly in another process, during a graceful upgrade): left alone.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// The on-disk certificate store (the proxy's only long-term state).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Serialises writes and load's clean-up within this process.
    lock: Mutex<()>,
}

/// A certificate with its key, ready to serve. Built only from checked files.
pub struct StoredCert {
    /// Directory name: main name, `*.x` stored as `_wildcard.x`.
    pub id: String,
    /// SAN DNS names (lower case), from the certificate itself.
    pub names: Vec<String>,
    /// e.g. "local", "manual" or the ACME directory URL; from meta.json.
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for StoredCert {
    // The key is left out: it holds private key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCert")
            .field("id", &self.id)
            .field("names", &self.names)
            .field("issuer", &self.issuer)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl StoredCert {
    /// Does this certificate name `host` (exactly, or by a one-label wildcard)? Names
    /// only: whether it is valid is [`StoredCert::valid_at`], whether it is still good
    /// enough to keep is `renewal::usable`.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| parse::name_covers(n, host))
    }

    /// Valid at `now`: not before its `not_before`, before its `not_after`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        crate::renewal::valid(self.not_before, self.not_after, now)
    }

    /// Covers `host` and is valid at `now`: a client with our clock accepts it for `host`.
    pub fn serves(&self, host: &str, now: SystemTime) -> bool {
        self.valid_at(now) && self.covers(host)
    }

    /// The leaf certificate, DER.
    pub fn leaf_der(&self) -> &[u8] {
        self.key.cert.first().map_or(&[], |c| c.as_ref())
    }
}

/// A freshly issued certificate, as PEM, before it is saved.
#[derive(Clone)]
pub struct IssuedCert {
    /// The names asked for, main name first (it becomes the store id).
    pub names: Vec<String>,
    pub chain_pem: String,
    pub key_pem: String,
    pub issuer: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("names", &self.names)
            .field("issuer", &self.issuer)
            .field(
                "chain_pem",
                &format_args!("<{} bytes>", self.chain_pem.len()),
            )
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// What `meta.json` holds. Only `issuer` and the bookkeeping fields are believed;
/// `names` and `not_after` are written for people and always re-read from the certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds of the last attempt to obtain or renew it, for the ACME issuer.
    pub last_attempt: Option<i64>,
    /// Why the last attempt failed (`None` after a success).
    pub last_error: Option<String>,
    /// Unix seconds before which no new order may be made (the ACME backoff; it is
    /// written before each order, so that a crash loop cannot order again and again).
    pub next_attempt: Option<i64>,
    /// Failed attempts in a row (0 after a success).
    pub failures: u32,
    /// The ACME profile the certificate was ordered with (kept on renewal).
    pub profile: Option<String>,
    /// Unix seconds: the CA answered `rateLimited` and asked to wait until then.
    pub rate_limited_until: Option<i64>,
    /// The challenge type the CA last failed to validate (the next attempt prefers the
    /// other one).
    pub last_failed_challenge: Option<String>,
}

/// The result of [`Store::load_all`].
#[derive(Debug, Default)]
pub struct LoadReport {
    pub certs: Vec<Arc<StoredCert>>,
    /// One line per problem, each naming the file or directory.
    pub problems: Vec<String>,
}

/// What the files of a certificate looked like (inode, size, modification and change
/// time of the chain and of the key): when the stamp of `certs/<id>` changes, its files
/// changed. Taken before the files are read, so a change made during the read shows as a
/// change on the next look. `meta.json` is left out: ACME bookkeeping rewrites it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp([FileStamp; 2]);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(path) {
            Ok(m) => FileStamp {
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            },
            Err(_) => FileStamp::default(),
        }
    }
}

/// How long archived certificates are kept (see [`Store::archive`]).
pub const ARCHIVE_KEEP: Duration = Duration::from_secs(90 * 86_400);

/// Why one entry could not be loaded.
enum EntryError {
    /// Its content is unusable: moved aside.
    Corrupt(String),
    /// It could not be read (permissions, I/O): left in place.
    Unreadable(String),
}

impl Store {
    /// Opens (creating with mode 0700 if missing) the store directory and its
    /// subdirectories `local-ca/`, `certs/` and `acme/`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = dir.into();
        fsutil::create_dir(&root)?;
        for sub in ["local-ca", "certs", "acme"] {
            fsutil::create_dir(&root.join(sub))?;
        }
        Ok(Store {
            root,
            lock: Mutex::new(()),
        })
    }

    /// The store at `dir` as it is, creating nothing (for a look that must change
    /// nothing, e.g. `proxyd --check`): reads work, writes fail where directories are
    /// missing.
    pub fn existing(dir: impl Into<PathBuf>) -> Store {
        Store {
            root: dir.into(),
            lock: Mutex::new(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `certs/`, where each certificate has its directory.
    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }

    /// `local-ca/`.
    pub fn local_ca_dir(&self) -> PathBuf {
        self.root.join("local-ca")
    }

    /// `acme/`, reserved for the ACME account.
    pub fn acme_dir(&self) -> PathBuf {
        self.root.join("acme")
    }

    /// `archive/`: certificates taken out of `certs/` (see [`Store::archive`]).
    pub fn archive_dir(&self) -> PathBuf {
        self.root.join("archive")
    }

    pub(crate) fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // The lock guards no data; a panic elsewhere cannot leave anything inconsistent.
        crate::util::lock(&self.lock)
    }

    /// Loads every certificate. A corrupt, half-written or mismatched (key does not match
    /// leaf) entry is moved aside (renamed to `<dir>.corrupt-<unix-ts>`) and reported,
    /// never served. Certificates come back sorted by id.
    pub fn load_all(&self) -> LoadReport {
        let _g = self.guard();
        let mut report = LoadReport::default();
        let dir = self.certs_dir();
        let entries = match read_dir_names(&dir) {
            Ok(e) => e,
            Err(e) => {
                report.problems.push(format!("{}: {e}", dir.display()));
                return report;
            }
        };
        let entries = self.recover(&dir, entries, &mut report.problems);
        for name in entries {
            if name.starts_with('.') || is_corrupt_name(&name) {
                continue;
            }
            let path = dir.join(&name);
            if !path.is_dir() {
                report
                    .problems
                    .push(format!("{}: not a directory, ignored", path.display()));
                continue;
            }
            match load_entry(&name, &path, &mut report.problems) {
                Ok(c) => report.certs.push(Arc::new(c)),
                Err(EntryError::Unreadable(msg)) => {
                    report.problems.push(format!("{msg}; not served"))
                }
                Err(EntryError::Corrupt(msg)) => {
                    let moved = move_aside(&path);
                    report.problems.push(match moved {
                        Ok(to) => format!("{msg}; moved aside to {}", to.display()),
                        Err(e) => format!("{msg}; not served, and could not be moved aside: {e}"),
                    });
                }
            }
        }
        report
    }

    /// Repairs what an interrupted [`Store::save`] may have left: an orphaned
    /// `.old-<id>-*` is renamed back to `<id>`; stale temporaries are deleted.
    /// Returns the entries still to look at.
    fn recover(&self, dir: &Path, entries: Vec<String>, problems: &mut Vec<String>) -> Vec<String> {
        let present: BTreeSet<&str> = entries.iter().map(String::as_str).collect();
        let mut restored = Vec::new();
        for name in &entries {
            let Some(rest) = name
                .strip_prefix(".old-")
                .or_else(|| name.strip_prefix(".tmp-"))
            else {
                continue;
            };
            let path = dir.join(name);
            // `<id>-<16 hex>`
            let id = rest.rsplit_once('-').map_or(rest, |(id, _)| id);
            if name.starts_with(".old-")
                && !present.contains(id)
                && !restored.iter().any(|r| r == id)
            {
                match fs::rename(&path, dir.join(id)) {
                    Ok(()) => {
                        problems.push(format!(
                            "{}: restored to {id} (a save was interrupted)",
                            path.display()
                        ));
                        restored.push(id.to_string());
                    }
                    Err(e) => problems.push(format!(
                        "{}: could not restore to {id}: {e}",
                        path.display()
                    )),
                }
                continue;
            }
            let stale = fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER);
            if stale {
                if let Err(e) = fs::remove_dir_all(&path) {
                    problems.push(format!(
                        "{}: could not remove leftover: {e}",
                        path.display()
                    ));
                }
            }
        }
        if !restored.is_empty() {
            let _ = fsutil::sync_dir(dir);
        }
        let mut out: Vec<String> = entries
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.extend(restored);
        out.sort();
        out
    }

    /// Atomically writes a certificate under `certs/<id>`, id from its main name (see the
    /// crate docs: a whole new directory, then one rename or an atomic swap). The
    /// certificate is checked first (key matches leaf, DNS names present), so nothing
    /// unusable is ever written. Key 0600.
    pub fn save(&self, cert: &IssuedCert) -> Result<Arc<StoredCert>, StoreError> {
        let main = cert.names.first().ok_or_else(|| StoreError::BadCert {
            names: "(none)".into(),
            reason: "no names".into(),
        })?;
        let id = parse::cert_id(main)?;
        let parsed = parse::parse_pair(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes())
            .map_err(|(part, reason)| StoreError::BadCert {
                names: cert.names.join(", "),
                reason: match part {
                    Part::Chain => format!("chain: {reason}"),
                    Part::Key => format!("key: {reason}"),
                },
            })?;
        let _g = self.guard();
        // The bookkeeping is about ordering this id, not about one certificate: when the
        // local issuer stands in for an ACME certificate, the ACME backoff carries on.
        let before = fs::read(self.meta_path(&id))
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            .unwrap_or_default();
        let meta = Meta {
            names: parsed.names.clone(),
            issuer: cert.issuer.clone(),
            not_after: crate::util::unix(parsed.not_after),
            last_attempt: before.last_attempt,
            last_error: before.last_error,
            next_attempt: before.next_attempt,
            failures: before.failures,
            profile: before.profile,
            rate_limited_until: before.rate_limited_until,
            last_failed_challenge: before.last_failed_challenge,
        };
        let meta_json = serde_json::to_string_pretty(&meta).expect("Meta serialises") + "\n";

        let dir = self.certs_dir();
        let rand = fsutil::random_hex(8);
        let tmp = dir.join(format!(".tmp-{id}-{rand}"));
        let write = || -> Result<(), StoreError> {
            fsutil::create_dir(&tmp)?;
            fsutil::write_new(&tmp.join(KEY_FILE), cert.key_pem.as_bytes(), KEY_MODE)?;
            fsutil::write_new(
                &tmp.join(CHAIN_FILE),
                cert.chain_pem.as_bytes(),
                PUBLIC_MODE,
            )?;
            fsutil::write_new(&tmp.join(META_FILE), meta_json.as_bytes(), PUBLIC_MODE)?;
            fsutil::sync_dir(&tmp)?;
            fsutil::replace_dir(&tmp, &dir.join(&id), &format!(".old-{id}-{rand}"))
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let pending = self.acme_dir().join("pending").join(format!("{id}.json"));
        if pending.exists() {
            let _ = fs::remove_file(&pending);
        }
        Ok(Arc::new(StoredCert {
            id,
            names: parsed.names,
            issuer: cert.issuer.clone(),
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            key: parsed.key,
        }))
    }
}

impl Store {
    /// Where the bookkeeping of certificate `id` lives: `certs/<id>/meta.json` when the
    /// certificate exists, else `acme/pending/<id>.json` (a name still waiting for its
    /// first ACME certificate).
    fn meta_path(&self, id: &str) -> PathBuf {
        let dir = self.certs_dir().join(id);
        if dir.is_dir() {
            dir.join(META_FILE)
        } else {
            self.acme_dir().join("pending").join(format!("{id}.json"))
        }
    }

    /// The bookkeeping of certificate `id` (see [`Store::write_meta`]); `None` when there
    /// is none or it does not parse (reported at debug level: the certificate itself is
    /// what matters).
    pub fn read_meta(&self, id: &str) -> Option<Meta> {
        let _g = self.guard();
        let path = self.meta_path(id);
        let bytes = fs::read(&path).ok()?;
        serde_json::from_slice(&bytes)
            .map_err(|e| tracing::debug!("{}: {e}", path.display()))
            .ok()
    }

    /// Writes the bookkeeping of certificate `id` atomically, into `certs/<id>/meta.json`
    /// when the certificate exists, else into `acme/pending/<id>.json`. A pending file is
    /// removed when the certificate directory exists.
    pub fn write_meta(&self, id: &str, meta: &Meta) -> Result<(), StoreError> {
        parse::cert_id(id)?;
        let json = serde_json::to_string_pretty(meta).expect("Meta serialises") + "\n";
        let _g = self.guard();
        let path = self.meta_path(id);
        if let Some(dir) = path.parent() {
            fsutil::create_dir(dir)?;
        }
        fsutil::write_atomic(&path, json.as_bytes(), PUBLIC_MODE)?;
        let pending = self.acme_dir().join("pending").join(format!("{id}.json"));
        if path != pending && pending.exists() {
            let _ = fs::remove_file(&pending);
        }
        Ok(())
    }

    /// Reads one certificate, `certs/<id>`, as [`Store::load_all`] would, but moves
    /// nothing aside: `Ok(None)` when it does not exist, `Err` when it is unusable.
    /// For a process that must see what another process may have just saved.
    pub fn load_one(&self, id: &str) -> Result<Option<Arc<StoredCert>>, String> {
        let _g = self.guard();
        let path = self.certs_dir().join(id);
        if !path.is_dir() {
            return Ok(None);
        }
        let mut problems = Vec::new();
        match load_entry(id, &path, &mut problems) {
            Ok(c) => Ok(Some(Arc::new(c))),
            Err(EntryError::Corrupt(m) | EntryError::Unreadable(m)) => Err(m),
        }
    }
}

impl Store {
    /// The stamp of `certs/<id>`'s files now (see [`Stamp`]).
    pub fn stamp(&self, id: &str) -> Stamp {
        let dir = self.certs_dir().join(id);
        Stamp([
            FileStamp::of(&dir.join(CHAIN_FILE)),
            FileStamp::of(&dir.join(KEY_FILE)),
        ])
    }

    /// The ids of the certificate directories in `certs/` (no temporaries, nothing moved
    /// aside), sorted. Reads the directory only, not the certificates.
    pub fn list_ids(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.certs_dir();
        let names = read_dir_names(&dir).map_err(|e| StoreError::io(&dir, e))?;
        Ok(names
            .into_iter()
            .filter(|n| !n.starts_with('.') && !is_corrupt_name(n) && dir.join(n).is_dir())
            .collect())
    }

    /// Takes `certs/<id>` out of service: moves it, with one `rename(2)`, to
    /// `archive/<id>.<reason>-<unix time>` (`-2`, `-3`, ... when taken), then fsyncs both
    /// directories. A crash leaves it in one place or the other, whole. `at` is the time
    /// in the name: the certificate's expiry for `expired`, now for `replaced`. Returns
    /// where it went.
    pub fn archive(&self, id: &str, reason: &str, at: SystemTime) -> Result<PathBuf, StoreError> {
        if id.is_empty() || id.starts_with('.') || id.contains('/') {
            return Err(StoreError::InvalidName {
                name: id.into(),
                reason: "not a certificate directory".into(),
            });
        }
        let _g = self.guard();
        let from = self.certs_dir().join(id);
        let archive = self.archive_dir();
        fsutil::create_dir(&archive)?;
        let base = format!("{id}.{reason}-{}", crate::util::unix(at));
        let mut to = archive.join(&base);
        let mut n = 1;
        while to.exists() {
            n += 1;
            to = archive.join(format!("{base}-{n}"));
        }
        fs::rename(&from, &to).map_err(|e| StoreError::io(&from, e))?;
        fsutil::sync_dir(&archive)?;
        fsutil::sync_dir(&self.certs_dir())?;
        Ok(to)
    }

    /// Puts an archived certificate back as `certs/<id>` (when replacing it failed).
    pub fn unarchive(&self, archived: &Path, id: &str) -> Result<(), StoreError> {
        let _g = self.guard();
        let to = self.certs_dir().join(id);
        fs::rename(archived, &to).map_err(|e| StoreError::io(archived, e))?;
        fsutil::sync_dir(&self.certs_dir())
    }

    /// Deletes what was archived more than [`ARCHIVE_KEEP`] before `now` (by the time in
    /// its name). Returns how many entries went, and the problems.
    pub fn prune_archive(&self, now: SystemTime) -> (usize, Vec<String>) {
        let dir = self.archive_dir();
        let names = match read_dir_names(&dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (0, Vec::new()),
            Err(e) => return (0, vec![format!("{}: {e}", dir.display())]),
        };
        let horizon = crate::util::unix(now) - ARCHIVE_KEEP.as_secs() as i64;
        let (mut removed, mut problems) = (0, Vec::new());
        for name in names {
            let Some(at) = archived_at(&name) else {
                continue;
            };
            if at >= horizon {
                continue;
            }
            let path = dir.join(&name);
            match fs::remove_dir_all(&path) {
                Ok(()) => removed += 1,
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        (removed, problems)
    }
}

/// The unix time in an archive entry's name: `<id>.<reason>-<unix>` or
/// `<id>.<reason>-<unix>-<n>`.
fn archived_at(name: &str) -> Option<i64> {
    let (_, tail) = name.rsplit_once('.')?;
    let mut parts = tail.split('-');
    let reason = parts.next()?;
    if reason.is_empty() || !reason.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let at = parts.next()?.parse().ok()?;
    match parts.next() {
        None => Some(at),
        Some(n) if n.parse::<u32>().is_ok() && parts.next().is_none() => Some(at),
        Some(_) => None,
    }
}

fn read_dir_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        match e.file_name().into_string() {
            Ok(n) => names.push(n),
            Err(raw) => tracing::warn!("{}: skipping non-UTF-8 name {raw:?}", dir.display()),
        }
    }
    names.sort();
    Ok(names)
}

/// `<id>.corrupt-<unix-ts>` or `<id>.corrupt-<unix-ts>-<n>`.
fn is_corrupt_name(name: &str) -> bool {
    name.rsplit_once(".corrupt-").is_some_and(|(_, ts)| {
        !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit() || b == b'-')
    })
}

fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let ts = crate::util::unix_now();
    let base = format!("{}.corrupt-{ts}", path.display());
    let mut to = PathBuf::from(&base);
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = PathBuf::from(format!("{base}-{n}"));
    }
    fs::rename(path, &to)?;
    if let Some(parent) = path.parent() {
        let _ = fsutil::sync_dir(parent);
    }
    Ok(to)
}

fn read_file(path: &Path) -> Result<Vec<u8>, EntryError> {
    fs::read(path).map_err(|e| {
        let msg = format!("{}: {e}", path.display());
        if e.kind() == io::ErrorKind::NotFound {
            EntryError::Corrupt(msg)
        } else {
            EntryError::Unreadable(msg)
        }
    })
}

/// Loads `certs/<id>`. Non-fatal findings (bad meta.json, a key readable by others) go
/// to `problems`; the certificate is still served.
fn load_entry(id: &str, dir: &Path, problems: &mut Vec<String>) -> Result<StoredCert, EntryError> {
    let chain_path = dir.join(CHAIN_FILE);
    let key_path = dir.join(KEY_FILE);
    let meta_path = dir.join(META_FILE);
    let chain = read_file(&chain_path)?;
    let key = read_file(&key_path)?;
    let parsed = parse::parse_pair(&chain, &key).map_err(|(part, reason)| {
        let p = match part {
            Part::Chain => &chain_path,
            Part::Key => &key_path,
        };
        EntryError::Corrupt(format!("{}: {reason}", p.display()))
    })?;

    if let Ok(m) = fs::metadata(&key_path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            problems.push(format!(
                "{}: private key is readable by others (mode {mode:04o}); run chmod 600",
                key_path.display()
            ));
        }
    }

    let issuer = match fs::read(&meta_path) {
        Ok(bytes) => match serde_json::from_slice::<Meta>(&bytes) {
            Ok(m) if !m.issuer.is_empty() => m.issuer,
            Ok(_) => ISSUER_MANUAL.to_string(),
            Err(e) => {
                problems.push(format!(
                    "{}: {e}; certificate served with issuer \"{ISSUER_MANUAL}\"",
                    meta_path.display()
                ));
                ISSUER_MANUAL.to_string()
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => ISSUER_MANUAL.to_string(),
        Err(e) => {
            problems.push(format!(
                "{}: {e}; certificate served with issuer \"{ISSUER_MANUAL}\"",
                meta_path.display()
            ));
            ISSUER_MANUAL.to_string()
        }
    };

    Ok(StoredCert {
        id: id.to_string(),
        names: parsed.names,
        issuer,
        not_before: parsed.not_before,
        not_after: parsed.not_after,
        key: parsed.key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_carry_their_time() {
        assert_eq!(
            archived_at("a.test.expired-1700000000"),
            Some(1_700_000_000)
        );
        assert_eq!(
            archived_at("a.test.replaced-1700000000-3"),
            Some(1_700_000_000)
        );
        assert_eq!(archived_at("a.test"), None);
        assert_eq!(archived_at("a.test.expired-x"), None);
        assert_eq!(archived_at("a.test.expired-1-2-3"), None);
    }

    #[test]
    fn corrupt_names_are_recognised() {
        assert!(is_corrupt_name("a.test.corrupt-1700000000"));
        assert!(is_corrupt_name("a.test.corrupt-1700000000-2"));
        assert!(!is_corrupt_name("a.test"));
        assert!(!is_corrupt_name("corrupt-x.test"));
        assert!(!is_corrupt_name("a.corrupt-b.test"));
    }
}
