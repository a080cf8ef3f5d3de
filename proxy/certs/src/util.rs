//! The workspace's one copy of three small things every crate needs: "now" as Unix
//! seconds, random bytes, and a mutex lock that survives a poisoned mutex. `certs` is
//! the lowest crate that `acme` and `proxyd` share, so they live here.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds of `t` (negative before 1970).
pub fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Unix seconds of `t`, 0 before 1970 (the admin API's and the metadata's unsigned times).
pub fn unix_u64(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    unix(SystemTime::now())
}

/// The latest time X.509 can state (9999-12-31T23:59:59Z), and its mirror before 1970:
/// [`from_unix`] clamps to these, so a corrupt time read from disk cannot overflow.
const UNIX_LIMIT: i64 = 253_402_300_799;

/// The time of `secs` Unix seconds (negative before 1970), clamped to years -7960..=9999
/// (times come from files on disk: `i64::MIN` there must not panic).
pub fn from_unix(secs: i64) -> SystemTime {
    let secs = secs.clamp(-UNIX_LIMIT, UNIX_LIMIT);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Fills `buf` from rustls' *ring* random source, the one source of randomness of the
/// workspace (serial numbers, temporary names, ACME jitter). Should the system's source
/// fail, the clock and the PID stand in: every use here needs uniqueness or spread, and
/// none a secret (keys are made by rcgen and ring themselves).
pub fn random_fill(buf: &mut [u8]) {
    if crate::crypto_provider().secure_random.fill(buf).is_ok() {
        return;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = nanos ^ (u128::from(std::process::id()) << 64);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (mixed >> ((i % 16) * 8)) as u8;
    }
}

/// A random `u64` (seeds, e.g. the load balancer's random sequence in proxyd).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    random_fill(&mut b);
    u64::from_le_bytes(b)
}

/// A random number in `[0, 1)`.
pub fn random01() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Locks `m`, also when a thread panicked while holding it: every mutex of the workspace
/// guards data that stays consistent between statements (counters, maps replaced whole),
/// so a panic elsewhere must not take the daemon's bookkeeping down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_round_trips_both_sides_of_1970() {
        for secs in [-86_400, 0, 1_700_000_000] {
            assert_eq!(unix(from_unix(secs)), secs);
        }
    }

    #[test]
    fn times_beyond_x509_are_clamped_not_a_panic() {
        assert_eq!(unix(from_unix(i64::MAX)), UNIX_LIMIT);
        assert_eq!(unix(from_unix(i64::MIN)), -UNIX_LIMIT);
        assert!(from_unix(i64::MIN) < from_unix(0));
        assert_eq!(unix(from_unix(UNIX_LIMIT)), UNIX_LIMIT);
    }

    #[test]
    fn random_is_in_range_and_varies() {
        let xs: Vec<f64> = (0..1000).map(|_| random01()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
