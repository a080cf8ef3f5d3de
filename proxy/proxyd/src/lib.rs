//! proxyd: the daemon as a library, so tests and tools can embed its parts.
//!
//! Data plane: accept -> TLS ([`tls`]) -> route ([`proxy`], over the [`state`] snapshot)
//! -> upstream ([`upstream`]). Control plane: routes file -> validated table -> new
//! snapshot -> one atomic swap.

pub mod acme_service;
pub mod admin;
pub mod cli;
pub mod control;
pub mod logging;
mod pages;
pub mod proxy;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
