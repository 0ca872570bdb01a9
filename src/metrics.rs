//! Metric names (a contract: dashboards and scripts use them exactly) and the Prometheus endpoint.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

pub const CONNECTIONS_TOTAL: &str = "xmpp_veil_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "xmpp_veil_connections_active";
/// Labels: `direction` = `c2s` | `s2c`, `kind` = `message` | `presence` | `iq` | `other`.
pub const STANZAS_TOTAL: &str = "xmpp_veil_stanzas_total";
/// Label: `direction`.
pub const BYTES_TOTAL: &str = "xmpp_veil_bytes_total";
/// Label: `condition` (RFC 6120 stream error condition).
pub const STREAM_ERRORS_TOTAL: &str = "xmpp_veil_stream_errors_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "xmpp_veil_tls_handshake_failures_total";
pub const UPSTREAM_CONNECT_SECONDS: &str = "xmpp_veil_upstream_connect_seconds";
pub const INVISIBLE_SESSIONS: &str = "xmpp_veil_invisible_sessions";
pub const PRESENCE_SUPPRESSED: &str = "xmpp_veil_presence_suppressed_total";
/// Labels: `protocol` = `xep0186` | `xep0018`, `command` = `invisible` | `visible`.
pub const INVISIBILITY_COMMANDS: &str = "xmpp_veil_invisibility_commands_total";

pub const SESSION_PANICS: &str = "xmpp_veil_session_panics_total";
pub const CONNECTIONS_REFUSED: &str = "xmpp_veil_connections_refused_total";
/// Label: `result` = `ok` | `failed`.
pub const SM_RESUMPTIONS: &str = "xmpp_veil_sm_resumptions_total";
pub const SM_SESSIONS: &str = "xmpp_veil_sm_sessions";
/// Label: `limit` = `concurrent` | `rate`.
pub const PER_IP_REFUSED: &str = "xmpp_veil_per_ip_refused_total";
/// Label: `reason` = `untrusted` | `missing` | `invalid`.
pub const PROXY_PROTOCOL_REFUSED: &str = "xmpp_veil_proxy_protocol_refused_total";

/// Installs the global recorder and serves `GET /metrics` on `addr` (needs a Tokio runtime).
pub fn install(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(UPSTREAM_CONNECT_SECONDS.to_owned()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?;
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CONNECTIONS_TOTAL, "Client connections accepted");
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections open now");
    describe_counter!(
        STANZAS_TOTAL,
        "Top-level elements relayed, by direction and kind"
    );
    describe_counter!(BYTES_TOTAL, "Bytes read, by direction");
    describe_counter!(
        STREAM_ERRORS_TOTAL,
        "Stream errors sent or relayed, by condition"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "Failed TLS handshakes on either leg"
    );
    describe_histogram!(
        UPSTREAM_CONNECT_SECONDS,
        "Time to connect (TCP and TLS) to the upstream server"
    );
    describe_gauge!(
        INVISIBLE_SESSIONS,
        "Sessions hidden from at least one contact"
    );
    describe_counter!(
        PRESENCE_SUPPRESSED,
        "Presence stanzas withheld or refused by the invisibility policy"
    );
    describe_counter!(
        INVISIBILITY_COMMANDS,
        "Invisibility commands received, by protocol and command"
    );
    describe_counter!(
        PER_IP_REFUSED,
        "Client connections refused by a per-IP limit, by limit"
    );
    describe_counter!(
        PROXY_PROTOCOL_REFUSED,
        "Connections refused for their PROXY protocol header (or its absence), by reason"
    );
}
