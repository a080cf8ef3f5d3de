//! What changes what the request path sees: reload ([`reload`]), the admin API
//! ([`admin`]), DNS ([`dns`]), the certificate store ([`store_watch`], [`renewal`],
//! [`served`]: served == stored), ACME ([`acme_service`], [`preflight`]) and the process's
//! life ([`handover`], [`daemon`]).

pub mod acme_service;
pub mod admin;
pub mod daemon;
pub mod dns;
pub mod handover;
pub mod preflight;
pub mod reload;
pub mod renewal;
pub mod served;
pub mod store_watch;
