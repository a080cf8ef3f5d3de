//! proxyd: the daemon as a library, so tests and tools can embed its parts.
//!
//! Data plane: accept -> TLS ([`tls`]) -> route ([`proxy`], over the [`state`] snapshot)
//! -> upstream ([`upstream`]). Control plane: routes file -> validated table -> new
//! snapshot -> one atomic swap.

pub mod access_log;
pub mod acme_service;
pub mod admin;
pub mod cli;
pub mod client_errors;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod guard;
pub mod handover;
pub mod logging;
pub mod metrics;
mod pages;
pub mod proxy;
pub mod readiness;
pub mod renewal;
pub mod server;
pub mod state;
pub mod store_watch;
pub mod tls;
pub mod upstream;
