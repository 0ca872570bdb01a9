//! Metric names (a contract: dashboards and scripts use them exactly) and the Prometheus endpoint.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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

/// Label: `strategy` = `privacy_list` | `silent`.
pub const INVISIBLE_SESSIONS_BY_STRATEGY: &str = "xmpp_veil_invisible_sessions_by_strategy";
/// A privacy-list IQ of the proxy's that the server refused (the session falls back to silent).
pub const PRIVACY_LIST_FAILURES: &str = "xmpp_veil_privacy_list_failures_total";

pub const SESSION_PANICS: &str = "xmpp_veil_session_panics_total";
pub const CONNECTIONS_REFUSED: &str = "xmpp_veil_connections_refused_total";
/// Label: `result` = `ok` | `failed`.
pub const SM_RESUMPTIONS: &str = "xmpp_veil_sm_resumptions_total";
pub const SM_SESSIONS: &str = "xmpp_veil_sm_sessions";
/// Label: `limit` = `concurrent` | `rate`.
pub const PER_IP_REFUSED: &str = "xmpp_veil_per_ip_refused_total";
/// Label: `reason` = `untrusted` | `missing` | `invalid`.
pub const PROXY_PROTOCOL_REFUSED: &str = "xmpp_veil_proxy_protocol_refused_total";

/// Certificate expiry, Unix time in seconds. Label: `domain` (one series per configured name).
pub const CERTIFICATE_EXPIRY_SECONDS: &str = "xmpp_veil_certificate_expiry_seconds";
/// Certificate (re)loads. Label: `result` = `ok` | `failed` (a failed reload keeps the old one).
pub const CERTIFICATE_RELOADS: &str = "xmpp_veil_certificate_reloads_total";

/// Counts one of the policy's reports `n` times, under its metric: the policy reports, the shell
/// counts (after applying the actions of the event that made the reports).
pub fn count_policy_report(report: crate::policy::Report, n: u64) {
    use crate::policy::Report;
    match report {
        Report::InvisibilityCommand { protocol, command } => metrics::counter!(
            INVISIBILITY_COMMANDS,
            "protocol" => protocol.label(),
            "command" => command.label()
        )
        .increment(n),
        Report::PresenceSuppressed => metrics::counter!(PRESENCE_SUPPRESSED).increment(n),
        Report::PrivacyListFailed => metrics::counter!(PRIVACY_LIST_FAILURES).increment(n),
    }
}

/// Installs the global recorder, registers every documented series at zero, and returns the
/// handle that renders the Prometheus text (served by [`crate::health`]).
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(UPSTREAM_CONNECT_SECONDS.to_owned()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    describe();
    register_all();
    Ok(handle)
}

/// Every documented series with its known label values, at zero, so that a fresh or quiet proxy
/// exports them all (dashboards and alerts see 0, not "no data").
pub fn register_all() {
    use metrics::{counter, gauge, histogram};
    for name in [
        CONNECTIONS_TOTAL,
        TLS_HANDSHAKE_FAILURES_TOTAL,
        PRESENCE_SUPPRESSED,
        SESSION_PANICS,
        CONNECTIONS_REFUSED,
        PRIVACY_LIST_FAILURES,
    ] {
        counter!(name).absolute(0);
    }
    for limit in ["concurrent", "rate"] {
        counter!(PER_IP_REFUSED, "limit" => limit).absolute(0);
    }
    for reason in ["untrusted", "missing", "invalid"] {
        counter!(PROXY_PROTOCOL_REFUSED, "reason" => reason).absolute(0);
    }
    for strategy in ["privacy_list", "silent"] {
        gauge!(INVISIBLE_SESSIONS_BY_STRATEGY, "strategy" => strategy).increment(0.0);
    }
    for name in [CONNECTIONS_ACTIVE, INVISIBLE_SESSIONS, SM_SESSIONS] {
        gauge!(name).increment(0.0);
    }
    for direction in ["c2s", "s2c"] {
        counter!(BYTES_TOTAL, "direction" => direction).absolute(0);
        for kind in ["message", "presence", "iq", "other"] {
            counter!(STANZAS_TOTAL, "direction" => direction, "kind" => kind).absolute(0);
        }
    }
    // Every RFC 6120 §4.9.3 condition's series exists from the start.
    for condition in crate::stream::errors::Condition::ALL {
        counter!(STREAM_ERRORS_TOTAL, "condition" => condition.as_str()).absolute(0);
    }
    for protocol in ["xep0186", "xep0018"] {
        for command in ["invisible", "visible"] {
            counter!(INVISIBILITY_COMMANDS, "protocol" => protocol, "command" => command)
                .absolute(0);
        }
    }
    for result in ["ok", "failed"] {
        counter!(SM_RESUMPTIONS, "result" => result).absolute(0);
        counter!(CERTIFICATE_RELOADS, "result" => result).absolute(0);
    }
    // A histogram is rendered once it has a handle; its buckets start at zero.
    let _ = histogram!(UPSTREAM_CONNECT_SECONDS);
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
    describe_gauge!(
        SM_SESSIONS,
        "Stream-managed sessions held, live and awaiting resumption"
    );
    describe_counter!(
        SESSION_PANICS,
        "Session tasks that panicked (the session ended)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused at --max-connections"
    );
    describe_counter!(SM_RESUMPTIONS, "Stream-management resumptions, by result");
    describe_gauge!(
        INVISIBLE_SESSIONS_BY_STRATEGY,
        "Sessions hidden from at least one contact, by how they are hidden"
    );
    describe_counter!(
        PRIVACY_LIST_FAILURES,
        "Privacy-list IQs of the proxy's refused by the server (the session falls back to silent)"
    );
    describe_gauge!(
        CERTIFICATE_EXPIRY_SECONDS,
        "Expiry (notAfter) of the certificate served for each domain, Unix time"
    );
    describe_counter!(
        CERTIFICATE_RELOADS,
        "Certificate loads and reloads, by result (a failed reload keeps the old certificate)"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Report;

    /// Each report lands in its contract series, counted as often as it was made.
    #[test]
    fn policy_reports_count_under_their_contract_names() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for (i, report) in Report::ALL.into_iter().enumerate() {
                count_policy_report(report, i as u64 + 1);
            }
        });
        let text = handle.render();
        for (series, n) in [
            (
                "xmpp_veil_invisibility_commands_total{protocol=\"xep0186\",command=\"invisible\"}",
                1,
            ),
            (
                "xmpp_veil_invisibility_commands_total{protocol=\"xep0186\",command=\"visible\"}",
                2,
            ),
            (
                "xmpp_veil_invisibility_commands_total{protocol=\"xep0018\",command=\"invisible\"}",
                3,
            ),
            (
                "xmpp_veil_invisibility_commands_total{protocol=\"xep0018\",command=\"visible\"}",
                4,
            ),
            ("xmpp_veil_presence_suppressed_total", 5),
            ("xmpp_veil_privacy_list_failures_total", 6),
        ] {
            let line = format!("{series} {n}");
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
