//! RFC 6120 stream errors as the proxy writes them.

use bytes::Bytes;

use crate::ns;
use crate::xml::element::escape;

/// `<stream:error>` followed by the stream close. The prefix is declared on the element itself,
/// so it is valid whatever prefix the peer's stream header used.
pub fn stream_error(condition: Condition, text: &str) -> Bytes {
    let text = if text.is_empty() {
        String::new()
    } else {
        format!(
            "<text xmlns='{}' xml:lang='en'>{}</text>",
            ns::STREAM_ERRORS,
            escape(text)
        )
    };
    Bytes::from(format!(
        "<stream:error xmlns:stream='{}'><{condition} xmlns='{}'/>{text}</stream:error></stream:stream>",
        ns::STREAMS,
        ns::STREAM_ERRORS,
    ))
}

/// The proxy's own stream header toward a client (used before the upstream answers).
pub fn client_stream_header(id: &str, domain: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' \
         id='{}' from='{}' version='1.0' xml:lang='en'>",
        ns::CLIENT,
        ns::STREAMS,
        escape(id),
        escape(domain)
    ))
}

/// The proxy's own stream header toward the server (only to negotiate upstream STARTTLS).
pub fn server_stream_header(domain: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' \
         to='{}' version='1.0'>",
        ns::CLIENT,
        ns::STREAMS,
        escape(domain)
    ))
}

/// The RFC 6120 (section 4.9.3) stream error conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
// The names are the RFC's (`undefined-condition`).
#[allow(clippy::enum_variant_names)]
pub enum Condition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl Condition {
    pub const ALL: [Condition; 25] = [
        Condition::BadFormat,
        Condition::BadNamespacePrefix,
        Condition::Conflict,
        Condition::ConnectionTimeout,
        Condition::HostGone,
        Condition::HostUnknown,
        Condition::ImproperAddressing,
        Condition::InternalServerError,
        Condition::InvalidFrom,
        Condition::InvalidNamespace,
        Condition::InvalidXml,
        Condition::NotAuthorized,
        Condition::NotWellFormed,
        Condition::PolicyViolation,
        Condition::RemoteConnectionFailed,
        Condition::Reset,
        Condition::ResourceConstraint,
        Condition::RestrictedXml,
        Condition::SeeOtherHost,
        Condition::SystemShutdown,
        Condition::UndefinedCondition,
        Condition::UnsupportedEncoding,
        Condition::UnsupportedFeature,
        Condition::UnsupportedStanzaType,
        Condition::UnsupportedVersion,
    ];

    /// The element name, as on the wire and in the `condition` label of the metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Condition::BadFormat => "bad-format",
            Condition::BadNamespacePrefix => "bad-namespace-prefix",
            Condition::Conflict => "conflict",
            Condition::ConnectionTimeout => "connection-timeout",
            Condition::HostGone => "host-gone",
            Condition::HostUnknown => "host-unknown",
            Condition::ImproperAddressing => "improper-addressing",
            Condition::InternalServerError => "internal-server-error",
            Condition::InvalidFrom => "invalid-from",
            Condition::InvalidNamespace => "invalid-namespace",
            Condition::InvalidXml => "invalid-xml",
            Condition::NotAuthorized => "not-authorized",
            Condition::NotWellFormed => "not-well-formed",
            Condition::PolicyViolation => "policy-violation",
            Condition::RemoteConnectionFailed => "remote-connection-failed",
            Condition::Reset => "reset",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::RestrictedXml => "restricted-xml",
            Condition::SeeOtherHost => "see-other-host",
            Condition::SystemShutdown => "system-shutdown",
            Condition::UndefinedCondition => "undefined-condition",
            Condition::UnsupportedEncoding => "unsupported-encoding",
            Condition::UnsupportedFeature => "unsupported-feature",
            Condition::UnsupportedStanzaType => "unsupported-stanza-type",
            Condition::UnsupportedVersion => "unsupported-version",
        }
    }

    /// The condition an element name stands for; an unknown name counts as
    /// `undefined-condition`, as RFC 6120 asks of unknown conditions.
    pub fn from_name(name: &str) -> Condition {
        Condition::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .unwrap_or(Condition::UndefinedCondition)
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod condition_tests {
    use super::Condition;

    #[test]
    fn every_condition_reads_back_from_its_name() {
        for c in Condition::ALL {
            assert_eq!(Condition::from_name(c.as_str()), c);
        }
        assert_eq!(
            Condition::from_name("made-up"),
            Condition::UndefinedCondition
        );
    }
}
