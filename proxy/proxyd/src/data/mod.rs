//! The request path: accept -> listener layers ([`layer`]: the cap and head guards of
//! [`guard`], TLS of [`tls`]) -> route ([`proxy`], over the [`state`] snapshot) ->
//! upstream ([`upstream`]). Never imports `control`.

pub mod client_errors;
pub mod guard;
pub mod layer;
mod pages;
pub mod proxy;
pub mod state;
pub mod tls;
pub mod upstream;
