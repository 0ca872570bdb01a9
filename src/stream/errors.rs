//! RFC 6120 stream errors as the proxy writes them.

use bytes::Bytes;

use crate::xml::element::escape;

pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// `<stream:error>` followed by the stream close. The prefix is declared on the element itself,
/// so it is valid whatever prefix the peer's stream header used.
pub fn stream_error(condition: &str, text: &str) -> Bytes {
    let text = if text.is_empty() {
        String::new()
    } else {
        format!(
            "<text xmlns='{NS_STREAM_ERRORS}' xml:lang='en'>{}</text>",
            escape(text)
        )
    };
    Bytes::from(format!(
        "<stream:error xmlns:stream='{NS_STREAMS}'><{condition} xmlns='{NS_STREAM_ERRORS}'/>{text}</stream:error></stream:stream>"
    ))
}

/// The proxy's own stream header toward a client (used before the upstream answers).
pub fn client_stream_header(id: &str, domain: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' \
         id='{}' from='{}' version='1.0' xml:lang='en'>",
        escape(id),
        escape(domain)
    ))
}

/// The proxy's own stream header toward the server (only to negotiate upstream STARTTLS).
pub fn server_stream_header(domain: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' \
         to='{}' version='1.0'>",
        escape(domain)
    ))
}
