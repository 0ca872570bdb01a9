//! One client session: a sans-IO [`core`] under a thin full-duplex [`shell`].
//!
//! - [`core`]: the stream's protocol state machine (its phase, the framers, the policy, stream
//!   management and resumption): bytes and events in, bytes per leg and events out;
//! - [`ending`]: how a session ends, as a pure plan of steps on each leg;
//! - [`shell`]: sockets, TLS streams, timers and the resume store's tasks; it moves bytes
//!   between the legs and the core and carries out the core's events and the ending's plan.
//!
//! The invisibility rules themselves are in [`crate::policy`], which the core drives.

pub mod core;
pub mod ending;
mod shell;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::resume::ResumeStore;
use crate::stream::upstream::UpstreamConfig;
use crate::xml::Limits;

pub use shell::{new_core, pre_tls, serve};

/// What every session shares.
pub struct Shared {
    pub upstream: UpstreamConfig,
    pub connect_timeout: Duration,
    pub limits: Limits,
    pub auth_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown: CancellationToken,
    pub resume: ResumeStore,
    /// How invisible sessions are hidden (`--invisibility-strategy`).
    pub strategy: crate::policy::Strategy,
}
