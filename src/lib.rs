//! xmpp-veil: a transparent XMPP c2s filtering proxy that gives "invisible mode"
//! (XEP-0186, XEP-0018) to users of a server that does not support it.
//!
//! Layout:
//! - [`xml`]: sans-IO framer (bytes → top-level elements) and a small parsed element;
//! - [`policy`]: sans-IO invisibility rules, one state machine per session;
//! - `session`: one session as a sans-IO core (the stream's phases, stream management,
//!   resumption, the ending as a plan) under a full-duplex IO shell;
//! - `stream`: the stream-level pieces the core uses (headers, feature rewrites, SASL, SM counts)
//!   and the upstream connection;
//! - [`server`], [`tls`], `certs`, [`config`], [`config_file`], [`health`], [`metrics`]: the
//!   process around the sessions;
//! - [`proxy_protocol`], `edge`, `limits`: the network edge (PROXY protocol, per-IP limits).
//!
//! The public API is what the binary, the tests and the benchmarks use; the rest is private.

#![forbid(unsafe_code)]

mod certs;
pub mod check;
pub mod config;
pub mod config_file;
mod edge;
pub mod health;
mod limits;
pub mod metrics;
mod ns;
pub mod policy;
pub mod proxy_protocol;
mod resume;
pub mod server;
mod session;
mod stream;
pub mod tls;
pub mod xml;
