//! Failures caused by clients: counted, never logged above debug.
//!
//! A client that sends half a request head and closes, trips the head timeout or size
//! limit, fails a TLS or HTTP/2 handshake, or goes away mid-request costs the proxy
//! nothing it cannot afford, and nothing the admin can act on: anyone on the Internet
//! can make millions of them. So each is counted here under a fixed [`ClientError`]
//! reason (`proxyd_client_errors_total{reason}`, bounded labels), logged at debug, and
//! summed up in at most one info line per `--log-summary-interval`
//! (`logging::Summaries`). What the admin can act on (a backend refusing or timing
//! out) is logged, rate-limited, by `proxy.rs`.
//!
//! Counting is a relaxed atomic add; the counters are read when metrics are scraped
//! and when the summary is written.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a client's connection or request failed: a fixed set (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// HTTP/1.x: the connection ended (closed, reset, or idle past pingora's read
    /// timeout) in the middle of a request head.
    PartialHead,
    /// HTTP/1.x: no complete request head within `--client-header-timeout` (408).
    HeaderTimeout,
    /// HTTP/1.x: a request head over `--client-max-header-size` (431).
    HeaderTooLarge,
    /// A head or request the proxy refused as malformed (400, or 405 for CONNECT):
    /// unparseable head, both Transfer-Encoding and Content-Length, bad host or path.
    BadRequest,
    /// The request body stalled over `--client-body-timeout` (408).
    BodyTimeout,
    /// The request body is over the route's `max_body` (413).
    BodyTooLarge,
    /// The client went away before its response was complete.
    Disconnect,
    /// A failed TLS handshake (reasons in `proxyd_tls_handshake_failures_total`).
    TlsHandshake,
    /// ALPN chose HTTP/2, then no valid HTTP/2 connection preface came.
    H2Handshake,
}

impl ClientError {
    pub const ALL: [ClientError; 9] = [
        ClientError::PartialHead,
        ClientError::HeaderTimeout,
        ClientError::HeaderTooLarge,
        ClientError::BadRequest,
        ClientError::BodyTimeout,
        ClientError::BodyTooLarge,
        ClientError::Disconnect,
        ClientError::TlsHandshake,
        ClientError::H2Handshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientError::PartialHead => "partial_head",
            ClientError::HeaderTimeout => "header_timeout",
            ClientError::HeaderTooLarge => "header_too_large",
            ClientError::BadRequest => "bad_request",
            ClientError::BodyTimeout => "body_timeout",
            ClientError::BodyTooLarge => "body_too_large",
            ClientError::Disconnect => "disconnect",
            ClientError::TlsHandshake => "tls_handshake",
            ClientError::H2Handshake => "h2_handshake",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Totals per [`ClientError`] since start.
#[derive(Debug, Default)]
pub struct ClientErrors {
    counts: [AtomicU64; ClientError::ALL.len()],
}

impl ClientErrors {
    /// Counts one failure (the caller logs it at debug, with what it knows).
    pub fn record(&self, why: ClientError) {
        self.counts[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The total of one reason since start.
    pub fn get(&self, why: ClientError) -> u64 {
        self.counts[why.index()].load(Ordering::Relaxed)
    }

    /// Every reason's total, indexed like [`ClientError::ALL`].
    pub fn totals(&self) -> [u64; ClientError::ALL.len()] {
        ClientError::ALL.map(|e| self.get(e))
    }
}

/// `70000 partial_head, 12 tls_handshake` for the reasons whose count grew from
/// `before` to `now` (largest first); `None` when none did.
pub fn summary(
    before: &[u64; ClientError::ALL.len()],
    now: &[u64; ClientError::ALL.len()],
) -> Option<(u64, String)> {
    let mut grew: Vec<(u64, &str)> = ClientError::ALL
        .iter()
        .map(|e| (now[e.index()].saturating_sub(before[e.index()]), e.as_str()))
        .filter(|(n, _)| *n > 0)
        .collect();
    if grew.is_empty() {
        return None;
    }
    grew.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let total = grew.iter().map(|(n, _)| n).sum();
    let text = grew
        .iter()
        .map(|(n, why)| format!("{n} {why}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some((total, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order_and_named_once() {
        for (i, e) in ClientError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
        let mut names: Vec<_> = ClientError::ALL.iter().map(|e| e.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ClientError::ALL.len());
    }

    #[test]
    fn summary_lists_what_grew_largest_first() {
        let e = ClientErrors::default();
        let before = e.totals();
        assert_eq!(summary(&before, &e.totals()), None);
        for _ in 0..3 {
            e.record(ClientError::TlsHandshake);
        }
        for _ in 0..5 {
            e.record(ClientError::PartialHead);
        }
        e.record(ClientError::H2Handshake);
        let now = e.totals();
        assert_eq!(
            summary(&before, &now),
            Some((9, "5 partial_head, 3 tls_handshake, 1 h2_handshake".into()))
        );
        e.record(ClientError::Disconnect);
        assert_eq!(summary(&now, &e.totals()), Some((1, "1 disconnect".into())));
    }
}
