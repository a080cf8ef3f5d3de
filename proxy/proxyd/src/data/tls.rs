//! TLS termination on the :443 listeners.
//!
//! pingora's own TLS listener builds its rustls config itself and fixes the ALPN list to
//! h2/http1.1. We accept plain TCP and run the handshake here instead, with our own
//! `ServerConfig` (policy, session resumption, SNI resolver, and with ACME the ALPN
//! `acme-tls/1`: such a connection is closed right after its handshake, which was the
//! TLS-ALPN-01 answer), then hand the TLS stream to the HTTP proxy app.
//! See ../shared/notes/pingora-rustls.md.

use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Ssl, Stream, ALPN};
use tokio::io::AsyncWriteExt;

use crate::data::layer::Layer;

/// How long a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener layer: the rustls handshake of each new TCP connection.
pub struct TlsHandshake {
    acceptor: Acceptor,
    /// Handshakes and failures by reason, with `--metrics`.
    metrics: Option<Arc<crate::observe::metrics::Metrics>>,
    /// Failed handshakes are the client's business: counted, logged at debug.
    errors: Arc<crate::data::client_errors::ClientErrors>,
}

impl TlsHandshake {
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        errors: Arc<crate::data::client_errors::ClientErrors>,
    ) -> Self {
        TlsHandshake {
            acceptor: Acceptor::from_server_config(config),
            metrics: None,
            errors,
        }
    }

    pub fn with_metrics(mut self, metrics: Option<Arc<crate::observe::metrics::Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }
}

impl TlsHandshake {
    /// The rustls handshake of a new connection: the TLS stream to serve, or `None`
    /// when the handshake failed, timed out, or was a TLS-ALPN-01 validation (answered
    /// by the handshake itself, then closed).
    async fn handshake(&self, stream: Stream) -> Option<Stream> {
        let l4 = *stream.into_any().downcast::<L4Stream>().ok()?;
        let peer = l4.get_socket_digest();
        let peer = move || {
            peer.as_ref()
                .and_then(|d| d.peer_addr().map(|a| a.to_string()))
                .unwrap_or_default()
        };
        let handshake =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.tls_handshake(l4)).await;
        if let Some(m) = &self.metrics {
            m.tls_handshake_done(&handshake);
        }
        if !matches!(handshake, Ok(Ok(_))) {
            self.errors
                .record(crate::data::client_errors::ClientError::TlsHandshake);
        }
        let mut tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(client = %peer(), error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(client = %peer(), "TLS handshake timed out");
                return None;
            }
        };
        if tls
            .selected_alpn_proto()
            .is_some_and(|p| matches!(&p, ALPN::Custom(c) if c.protocol() == certs::ACME_TLS_ALPN))
        {
            // A TLS-ALPN-01 validation: the handshake was the whole answer (RFC 8737).
            tracing::debug!(client = %peer(), "answered an ACME TLS-ALPN-01 validation");
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.shutdown()).await;
            return None;
        }
        Some(Box::new(tls))
    }
}

impl Layer for TlsHandshake {
    type Hold = ();

    async fn accept(&self, stream: Stream) -> Option<(Stream, ())> {
        if !stream.as_any().is::<L4Stream>() {
            // A reused stream coming back is already TLS: hand it on as it is.
            return Some((stream, ()));
        }
        // Boxed: the handshake's state (the rustls connection while it is built, the
        // timeout, the result) lives on the heap only until the handshake is done, not
        // in the connection's future for as long as the connection lives.
        let tls = Box::pin(self.handshake(stream)).await?;
        Some((tls, ()))
    }
}
