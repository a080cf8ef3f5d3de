//! The one listener wrapper: a [`Layer`] looks at (or replaces) each new client stream
//! before the app under it serves it. The listeners are stacks of layers over the HTTP
//! proxy (server.rs): connection counting (`observe::metrics::Counted`), the per-address
//! cap (`guard::ConnCap`), the TLS handshake (`tls::TlsHandshake`), the request-head
//! guard (`guard::HeadGuard`).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// What a listener does to a new client stream before the app under it sees it.
pub trait Layer: Send + Sync + 'static {
    /// Held for as long as the app under the layer serves the stream (a slot under the
    /// per-address cap, an open-connections gauge): dropped when the connection ends.
    type Hold: Send;

    /// Returns the stream to hand on and what to hold meanwhile, or `None` to close the
    /// connection. A stream pingora hands back for reuse (HTTP/1.1 keep-alive) comes
    /// through here again.
    fn accept(&self, stream: Stream) -> impl Future<Output = Option<(Stream, Self::Hold)>> + Send;

    /// Puts this layer over `app`.
    fn over<A>(self, app: A) -> Layered<Self, A>
    where
        Self: Sized,
    {
        Layered {
            layer: self,
            app: Arc::new(app),
        }
    }
}

/// `layer` over `app`, itself a pingora [`ServerApp`].
pub struct Layered<L, A> {
    layer: L,
    app: Arc<A>,
}

#[async_trait]
impl<L: Layer, A: ServerApp + Send + Sync + 'static> ServerApp for Layered<L, A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (stream, _hold) = self.layer.accept(stream).await?;
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}
