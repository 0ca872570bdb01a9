//! xmpp-veil: a transparent XMPP c2s filtering proxy that gives "invisible mode"
//! (XEP-0186, XEP-0018) to users of a server that does not support it.
//!
//! Layout:
//! - [`xml`]: sans-IO framer (bytes → top-level elements) and a small parsed element;
//! - [`policy`]: sans-IO invisibility rules, one state machine per session;
//! - [`stream`]: stream negotiation on each leg and feature rewrites;
//! - [`session`]: the pump that joins the two legs through the policy;
//! - [`server`], [`tls`], [`config`], [`metrics`]: the IO shell;
//! - [`proxy_protocol`], [`limits`]: the network edge (PROXY protocol, per-IP limits).

#![forbid(unsafe_code)]

pub mod certs;
pub mod check;
pub mod config;
pub mod config_file;
pub mod edge;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod ns;
pub mod policy;
pub mod proxy_protocol;
pub mod resume;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;
pub mod xml;
