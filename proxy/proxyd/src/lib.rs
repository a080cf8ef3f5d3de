//! proxyd: the daemon as a library, so tests and tools can embed its parts.
//!
//! Three folders (see ARCHITECTURE.md): [`data`] is the request path (accept -> TLS ->
//! guards -> route over the snapshot -> upstream), [`control`] changes what the request
//! path sees (reload, admin API, DNS, certificates, ACME, handover), [`observe`] reports
//! (metrics, access log, readiness, logging). [`server`] wires them; [`cli`] holds the flags, [`config`] the validated `Config` built
//! from them once.

pub mod cli;
pub mod config;
pub mod control;
pub mod data;
pub mod observe;
pub mod server;
