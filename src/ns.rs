//! Every XML namespace the proxy reads or writes, in one place.

/// RFC 6120 client stream content.
pub const CLIENT: &str = "jabber:client";
/// RFC 6120 stream elements (`<stream:stream>`, `<stream:features>`, `<stream:error>`).
pub const STREAMS: &str = "http://etherx.jabber.org/streams";
/// RFC 6120 stream error conditions.
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// RFC 6120 stanza error conditions.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// RFC 6120 STARTTLS.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// RFC 6120 SASL.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// RFC 6120 resource binding.
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// XEP-0138 stream compression.
pub const COMPRESS: &str = "http://jabber.org/protocol/compress";
/// XEP-0198 stream management, version 3 and the older version 2.
pub const SM3: &str = "urn:xmpp:sm:3";
pub const SM2: &str = "urn:xmpp:sm:2";
/// RFC 6121 roster.
pub const ROSTER: &str = "jabber:iq:roster";
/// XEP-0030 service discovery.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0016 privacy lists.
pub const PRIVACY: &str = "jabber:iq:privacy";
/// XEP-0191 blocking command.
pub const BLOCKING: &str = "urn:xmpp:blocking";
/// XEP-0186 invisible command, and its experimental predecessor.
pub const INVISIBLE_1: &str = "urn:xmpp:invisible:1";
pub const INVISIBLE_0: &str = "urn:xmpp:invisible:0";
/// What slixmpp sends to end invisibility (not in any XEP).
pub const SLIXMPP_VISIBLE: &str = "urn:xmpp:visible:0";
/// XEP-0138 stream compression feature.
pub const COMPRESS_FEATURE: &str = "http://jabber.org/features/compress";
/// XEP-0388 SASL2 and XEP-0386 Bind 2 (hidden from clients: the proxy needs RFC 6120 binding to
/// see the JID).
pub const SASL2: &str = "urn:xmpp:sasl:2";
pub const BIND2: &str = "urn:xmpp:bind:0";
/// XEP-0440 SASL channel-binding type capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0115 entity capabilities.
pub const CAPS: &str = "http://jabber.org/protocol/caps";
