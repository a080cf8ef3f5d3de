//! Request and response bodies for the harness: empty, in memory, or generated on the fly.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

/// The one body type the harness sends and serves.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `n` zero bytes in 64 KiB chunks, generated as they are sent (nothing is buffered).
/// The exact length is known, so HTTP/1.1 sends it with `Content-Length`.
pub fn zeros(n: u64) -> Body {
    Zeros {
        remaining: n,
        exact: true,
    }
    .boxed()
}

/// Like [`zeros`] but with an unknown length: HTTP/1.1 sends it chunked, HTTP/2 without
/// `content-length`.
pub fn zeros_chunked(n: u64) -> Body {
    Zeros {
        remaining: n,
        exact: false,
    }
    .boxed()
}

struct Zeros {
    remaining: u64,
    exact: bool,
}

impl http_body::Body for Zeros {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}
