//! What the daemon reports: [`metrics`], the [`access_log`], [`readiness`],
//! [`logging`] and the served == stored findings ([`served`]). Never imports `control`.

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod served;
