//! The proxy's own short answers: error pages and redirects.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

pub struct Page {
    pub title: &'static str,
    pub text: &'static str,
}

pub const BAD_REQUEST: Page = Page {
    title: "400 Bad Request",
    text: "The request could not be understood.",
};
pub const FORBIDDEN: Page = Page {
    title: "403 Forbidden",
    text: "This site is not available from your network.",
};
pub const NOT_FOUND: Page = Page {
    title: "404 Not Found",
    text: "No site is configured for this name.",
};
pub const MISDIRECTED: Page = Page {
    title: "421 Misdirected Request",
    text: "No site is configured for this name on this server.",
};
pub const REQUEST_TIMEOUT: Page = Page {
    title: "408 Request Timeout",
    text: "The request was not sent in time.",
};
pub const TOO_LARGE: Page = Page {
    title: "413 Content Too Large",
    text: "The request body is larger than this site accepts.",
};
pub const INTERNAL: Page = Page {
    title: "500 Internal Server Error",
    text: "The proxy failed to handle the request.",
};
pub const BAD_GATEWAY: Page = Page {
    title: "502 Bad Gateway",
    text: "The site's server did not answer properly.",
};
pub const GATEWAY_TIMEOUT: Page = Page {
    title: "504 Gateway Timeout",
    text: "The site's server took too long to answer.",
};
pub const REDIRECT: Page = Page {
    title: "Moved",
    text: "This page has moved.",
};

fn html(page: &Page) -> Bytes {
    Bytes::from(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title></head>\
         <body><h1>{0}</h1><p>{1}</p></body></html>\n",
        page.title, page.text
    ))
}

/// Send a complete small HTML response.
pub async fn send(
    session: &mut Session,
    status: u16,
    page: Page,
    headers: &[(&'static str, String)],
) -> Result<()> {
    let body = html(&page);
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header("content-type", "text/html; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in headers {
        resp.insert_header(*name, value.as_str())?;
    }
    write(session, resp, body).await
}

/// Send a complete plain response (ACME HTTP-01 answers).
pub async fn send_plain(
    session: &mut Session,
    status: u16,
    body: Bytes,
    content_type: &'static str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    write(session, resp, body).await
}

/// A write that fails here fails on the client's connection (it reset or went away):
/// the error is marked as the downstream's, so `fail_to_proxy` counts a disconnect
/// rather than logging a 500 "upstream failure".
async fn write(session: &mut Session, resp: ResponseHeader, body: Bytes) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await
        .map_err(|e| e.into_down())?;
    if !head_only {
        session
            .write_response_body(Some(body), true)
            .await
            .map_err(|e| e.into_down())?;
    }
    Ok(())
}
