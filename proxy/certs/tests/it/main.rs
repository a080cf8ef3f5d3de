//! Integration tests of the `certs` crate: a real store in a temporary directory, real
//! certificates, and real TLS handshakes on 127.0.0.1:0. One test binary (see STYLE.md).

mod ageing;
mod handshake;
mod manager;
mod resolver;
mod store;
mod util;
