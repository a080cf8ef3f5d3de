//! What the daemon reports: [`metrics`], the [`access_log`], [`readiness`] and
//! [`logging`]. Never imports `control`.

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod readiness;
