//! The ACME ledger of one account: what it has ordered, which validations failed, and
//! the CA's rate-limit holds (`rateLimited` with its Retry-After). The ACME client counts
//! its budget from it (the CA's limits, kept locally) and writes an order into it
//! *before* placing it, so that neither a crash nor a restart forgets an order.
//!
//! Kept behind the [`Store`](crate::Store) (`acme/ledger/<account>.json`, one atomic
//! write per change under an `flock(2)` shared by the processes of the store) so that
//! it can move to another storage backend with the rest of the bookkeeping.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, PUBLIC_MODE};
use crate::{Store, StoreError};

/// Entries older than this are dropped on every update (the longest window of
/// Let's Encrypt's limits is 7 days).
pub const LEDGER_KEEP_SECS: i64 = 8 * 86_400;

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ledger {
    /// New orders placed, oldest first.
    pub orders: Vec<OrderRecord>,
    /// Validations the CA reported as failed, oldest first.
    pub failed_validations: Vec<FailedValidation>,
    /// The CA's `rateLimited` answers still in force.
    pub holds: Vec<Hold>,
    /// New orders ever placed with this account (kept across pruning, for metrics).
    pub orders_total: u64,
}

/// One new order, written before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// Unix seconds.
    pub at: i64,
    /// Random id, to find the record again when the order ends.
    pub id: String,
    /// Store id of the certificate.
    pub cert: String,
    /// The identifiers ordered, lower case, sorted.
    pub names: Vec<String>,
    /// An ARI renewal (`replaces` sent): exempt from the CA's limits.
    pub replaces: bool,
    pub profile: Option<String>,
    pub outcome: OrderOutcome,
}

/// How an order ended. `Placed` is what a crash leaves: counted as issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderOutcome {
    Placed,
    Issued,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedValidation {
    pub at: i64,
    /// The identifier whose validation failed.
    pub name: String,
}

/// A `rateLimited` answer of the CA: no order in `scope` before `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub scope: HoldScope,
    /// Unix seconds (from the CA's Retry-After).
    pub until: i64,
    /// The CA's problem detail.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum HoldScope {
    /// Every order of the account (e.g. too many new orders).
    Account,
    /// Orders naming a name under this registered domain.
    Domain(String),
    /// Orders of this certificate (store id).
    Cert(String),
}

impl Ledger {
    /// Drops what no limit looks at any more, and entries dated more than
    /// [`LEDGER_KEEP_SECS`] after `now` (a clock that was far ahead, or a hand edit):
    /// they would otherwise count for ever. Entries a little after `now` (the clock
    /// was set back) are kept; the budget counts them as placed now.
    pub fn prune(&mut self, now: i64) {
        let keep = now.saturating_sub(LEDGER_KEEP_SECS)..=now.saturating_add(LEDGER_KEEP_SECS);
        self.orders.retain(|o| keep.contains(&o.at));
        self.failed_validations.retain(|f| keep.contains(&f.at));
        self.holds.retain(|h| h.until > now);
    }
}

impl Store {
    fn ledger_path(&self, account: &str) -> Result<PathBuf, StoreError> {
        if account.is_empty()
            || !account
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            || account.starts_with('.')
        {
            return Err(StoreError::InvalidName {
                name: account.to_string(),
                reason: "an ACME account key is letters, digits, '.', '_' and '-'".into(),
            });
        }
        Ok(self
            .acme_dir()
            .join("ledger")
            .join(format!("{account}.json")))
    }

    /// The ledger of `account` (a file-name-safe key, e.g. the directory's slug); empty
    /// when there is none. A ledger that does not parse is an error, never silently
    /// empty: an empty ledger would let the budget be spent twice.
    pub fn read_ledger(&self, account: &str) -> Result<Ledger, StoreError> {
        let path = self.ledger_path(account)?;
        read_ledger_file(&path)
    }

    /// Reads, changes with `f` and writes back the ledger of `account`, pruned, under a
    /// lock that other processes of the store respect too. The write is atomic: a
    /// crash leaves the old ledger or the new one.
    pub fn update_ledger<R>(
        &self,
        account: &str,
        now: i64,
        f: impl FnOnce(&mut Ledger) -> R,
    ) -> Result<R, StoreError> {
        let path = self.ledger_path(account)?;
        let dir = path.parent().expect("ledger has a directory");
        fsutil::create_dir(dir)?;
        let _g = self.guard();
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        // SAFETY: flock on a file descriptor we own; blocks until the other process
        // (which holds it only for a read and a write) lets go.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(StoreError::io(&lock_path, std::io::Error::last_os_error()));
        }
        let mut ledger = read_ledger_file(&path)?;
        let r = f(&mut ledger);
        ledger.prune(now);
        let json = serde_json::to_string_pretty(&ledger).expect("Ledger serialises") + "\n";
        fsutil::write_atomic(&path, json.as_bytes(), PUBLIC_MODE)?;
        drop(lock);
        Ok(r)
    }
}

/// Larger than any ledger this client writes (8 days of Let's Encrypt's limits are some
/// 20 000 orders, a few MB): refused unread.
pub const LEDGER_MAX_BYTES: u64 = 64 << 20;

fn read_ledger_file(path: &std::path::Path) -> Result<Ledger, StoreError> {
    use std::io::Read;
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::default()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let bad = |reason: String| StoreError::BadFile {
        path: path.to_path_buf(),
        reason: format!("{reason} (the ACME budget cannot be counted; fix or delete it)"),
    };
    let too_large = || bad(format!("too large (over {LEDGER_MAX_BYTES} bytes)"));
    let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    if len > LEDGER_MAX_BYTES {
        return Err(too_large());
    }
    // Bounded too while reading (the file may grow meanwhile): one byte more than
    // allowed tells a file at the limit from a larger one.
    let mut bytes = Vec::new();
    file.take(LEDGER_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::io(path, e))?;
    if bytes.len() as u64 > LEDGER_MAX_BYTES {
        return Err(too_large());
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(at: i64, outcome: OrderOutcome) -> OrderRecord {
        OrderRecord {
            at,
            id: format!("o{at}"),
            cert: "a.test".into(),
            names: vec!["a.test".into()],
            replaces: false,
            profile: None,
            outcome,
        }
    }

    #[test]
    fn updates_persist_and_prune_old_entries() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let now = 1_800_000_000;
        assert_eq!(store.read_ledger("acct").unwrap(), Ledger::default());
        store
            .update_ledger("acct", now, |l| {
                l.orders
                    .push(order(now - LEDGER_KEEP_SECS - 1, OrderOutcome::Issued));
                l.orders.push(order(now - 10, OrderOutcome::Placed));
                // Far in the future (a clock that was years ahead): dropped.
                l.orders
                    .push(order(now + LEDGER_KEEP_SECS + 1, OrderOutcome::Issued));
                l.holds.push(Hold {
                    scope: HoldScope::Account,
                    until: now - 1,
                    detail: "past".into(),
                });
                l.holds.push(Hold {
                    scope: HoldScope::Domain("a.test".into()),
                    until: now + 60,
                    detail: "later".into(),
                });
                l.orders_total += 2;
            })
            .unwrap();
        let l = store.read_ledger("acct").unwrap();
        assert_eq!(l.orders, vec![order(now - 10, OrderOutcome::Placed)]);
        assert_eq!(l.holds.len(), 1);
        assert_eq!(l.orders_total, 2);
        // Another store handle (another process) sees it.
        let again = Store::open(t.path()).unwrap();
        assert_eq!(again.read_ledger("acct").unwrap(), l);
    }

    #[test]
    fn a_damaged_ledger_is_an_error_not_an_empty_budget() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        std::fs::create_dir_all(t.path().join("acme/ledger")).unwrap();
        std::fs::write(t.path().join("acme/ledger/acct.json"), "{not json").unwrap();
        assert!(store.read_ledger("acct").is_err());
        assert!(store.update_ledger("acct", 0, |_| ()).is_err());
        assert!(store.read_ledger("../x").is_err());
    }

    /// Review: a ledger grown huge (by hand, a runaway writer, a disk error) is read
    /// whole on every look, every metrics scrape and every `proxyctl certs`: it must
    /// be refused by its size, with a clear error, before it is read into memory.
    #[test]
    fn a_huge_ledger_is_refused_by_its_size_before_it_is_read() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        std::fs::create_dir_all(t.path().join("acme/ledger")).unwrap();
        let f = std::fs::File::create(t.path().join("acme/ledger/acct.json")).unwrap();
        // Sparse: no disk used.
        f.set_len(4 << 30).unwrap();
        let e = store.read_ledger("acct").unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        assert!(store.update_ledger("acct", 0, |_| ()).is_err());
    }
}
