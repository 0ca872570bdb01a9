//! What a test client's connection asks for: TLS, SASL mechanism, resource, stream management.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `Tls::StartTls` is the brief's name
pub enum Tls {
    /// Plaintext connection, then `<starttls/>` (required to be offered).
    StartTls,
    /// XEP-0368: TLS from the first byte, ALPN `xmpp-client`.
    Direct,
    /// Plaintext stream throughout.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    Plain,
    ScramSha1,
}

impl Mech {
    pub fn name(self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::ScramSha1 => "SCRAM-SHA-1",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub tls: Tls,
    pub mech: Mech,
    pub resource: String,
    /// Stream `to=`, TLS SNI and the name the certificate is verified against.
    pub domain: String,
    /// Send `<presence/>` right after binding.
    pub send_initial_presence: bool,
    /// XEP-0198: after binding, `<enable resume='true'/>` and count/ack stanzas.
    pub sm: bool,
    /// XEP-0198: resume this session instead of binding (implies `sm`).
    pub resume: Option<SmResume>,
    /// Loopback address to connect from (default: the system's choice, 127.0.0.1).
    pub source: Option<std::net::IpAddr>,
    /// Bytes written right after the TCP connect, before anything else (a PROXY protocol
    /// header, as a load balancer in front of the proxy sends).
    pub preamble: Vec<u8>,
}

/// What [`Opts::resume`] resumes.
#[derive(Debug, Clone)]
pub struct SmResume {
    /// `<enabled id=…>` of the session to resume.
    pub previd: String,
    /// Stanzas received from the server in that session (the `h` to send).
    pub h: u32,
    /// The session's full JID (the server does not say it on resumption).
    pub jid: String,
}

impl Opts {
    /// STARTTLS, SCRAM-SHA-1, domain `localhost`, no initial presence.
    pub fn new(resource: &str) -> Self {
        Opts {
            tls: Tls::StartTls,
            mech: Mech::ScramSha1,
            resource: resource.to_string(),
            domain: "localhost".to_string(),
            send_initial_presence: false,
            sm: false,
            resume: None,
            source: None,
            preamble: Vec::new(),
        }
    }

    /// Connects from this (loopback) address.
    pub fn source(mut self, ip: &str) -> Self {
        self.source = Some(ip.parse().expect("source address"));
        self
    }

    /// Sends these bytes first (e.g. a PROXY protocol header).
    pub fn preamble(mut self, bytes: &[u8]) -> Self {
        self.preamble = bytes.to_vec();
        self
    }

    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    pub fn mech(mut self, mech: Mech) -> Self {
        self.mech = mech;
        self
    }

    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_string();
        self
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = resource.to_string();
        self
    }

    pub fn initial_presence(mut self, send: bool) -> Self {
        self.send_initial_presence = send;
        self
    }

    /// XEP-0198: after binding, send `<enable xmlns='urn:xmpp:sm:3'
    /// resume='true'/>` and wait for `<enabled/>` (`<failed/>` makes
    /// [`Client::connect`] fail). The client then counts the stanzas it
    /// receives and sends, answers the server's `<r/>` by itself, and records
    /// the server's `<a/>`.
    pub fn sm(mut self, enable: bool) -> Self {
        self.sm = enable;
        self
    }

    /// XEP-0198: after authentication, instead of binding, send `<resume
    /// previd=… h=…/>`. `<resumed/>` gives a client in SM mode whose inbound
    /// count continues from `h` and whose outbound count starts at the
    /// `<resumed h=…/>`; `<failed/>` makes [`Client::connect`] fail with the
    /// element's raw XML in the error. `full_jid` becomes [`Client::jid`].
    pub fn resume(mut self, previd: &str, h: u32, full_jid: &str) -> Self {
        self.sm = true;
        self.resume = Some(SmResume {
            previd: previd.to_string(),
            h,
            jid: full_jid.to_string(),
        });
        self
    }
}
