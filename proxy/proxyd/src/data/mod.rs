//! The request path: accept -> TLS ([`tls`]) -> guards ([`guard`]) -> route ([`proxy`],
//! over the [`state`] snapshot) -> upstream ([`upstream`]). Never imports `control`.

pub mod client_errors;
pub mod guard;
pub mod layer;
mod pages;
pub mod proxy;
pub mod state;
pub mod tls;
pub mod upstream;
