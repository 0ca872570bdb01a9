//! Command-line flags (a contract: scripts and docs use these names). Every flag can also be
//! given as an environment variable `XMPP_VEIL_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpstreamTls {
    /// Plaintext: only on loopback or a private network (see the README).
    Plain,
    /// STARTTLS negotiated by the proxy before the client's stream is relayed.
    Starttls,
    /// TLS from the first byte (XEP-0368).
    Direct,
}

/// PROXY protocol header the proxy sends to the upstream before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyProtocolOut {
    Off,
    /// Text header (`PROXY TCP4 …`).
    V1,
    /// Binary header.
    V2,
}

/// PROXY protocol header expected from the peer on the client listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyProtocolIn {
    /// No header is read; the TCP peer is the client.
    Off,
    /// A trusted source may send a header (v1 or v2); without one, it is the client itself.
    /// Others connect as clients, and are refused if they send a header.
    Optional,
    /// Only trusted sources may connect, and each connection starts with a header.
    Required,
}

/// An IP network `ADDR/PREFIX`, or one address.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not an address or a network (ADDR/PREFIX)"))
}

/// How an invisible session is hidden (see the README, "Two strategies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InvisibilityStrategy {
    /// A privacy list where the server advertises `jabber:iq:privacy`, the silent session otherwise.
    Auto,
    /// A privacy list of the session's own (XEP-0016); silent if the server refuses it.
    PrivacyList,
    /// The silent session: the server never gets undirected presence while anyone is hidden.
    Silent,
}

impl From<InvisibilityStrategy> for crate::policy::Strategy {
    fn from(s: InvisibilityStrategy) -> Self {
        match s {
            InvisibilityStrategy::Auto => crate::policy::Strategy::Auto,
            InvisibilityStrategy::PrivacyList => crate::policy::Strategy::PrivacyList,
            InvisibilityStrategy::Silent => crate::policy::Strategy::Silent,
        }
    }
}

/// Subcommands; without one, the proxy runs.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Check the configuration, the certificates and the upstream, then exit 0 (fine) or 1.
    Check,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "xmpp-veil",
    version,
    about = "Transparent XMPP proxy that adds invisible mode (XEP-0186, XEP-0018) to a server that lacks it"
)]
pub struct Config {
    /// TOML configuration file: every flag's long name is a key (`upstream-tls = "plain"`);
    /// flags and environment variables override it.
    #[arg(long, env = "XMPP_VEIL_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Client port with STARTTLS (repeatable).
    #[arg(
        long = "listen",
        env = "XMPP_VEIL_LISTEN",
        value_delimiter = ',',
        default_value = "[::]:5222"
    )]
    pub listen: Vec<SocketAddr>,

    /// Client port with direct TLS, XEP-0368 (repeatable).
    #[arg(
        long = "listen-direct-tls",
        env = "XMPP_VEIL_LISTEN_DIRECT_TLS",
        value_delimiter = ',',
        default_value = "[::]:5223"
    )]
    pub listen_direct_tls: Vec<SocketAddr>,

    /// The XMPP server, HOST:PORT.
    #[arg(long, env = "XMPP_VEIL_UPSTREAM")]
    pub upstream: String,

    /// How to reach the upstream server.
    #[arg(
        long,
        env = "XMPP_VEIL_UPSTREAM_TLS",
        value_enum,
        default_value = "starttls"
    )]
    pub upstream_tls: UpstreamTls,

    /// PEM file of CA certificates trusted for the upstream (default: the system roots).
    #[arg(long, env = "XMPP_VEIL_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// Do not verify the upstream certificate (dangerous; logged loudly).
    #[arg(long, env = "XMPP_VEIL_UPSTREAM_INSECURE")]
    pub upstream_insecure: bool,

    /// The proxy's PEM certificate chain (default: the development pair in certs/, with a
    /// warning). Repeatable, one per domain, each with its --key in the same order; chosen by
    /// SNI (or the stream's `to`), the first one for other names.
    #[arg(long, env = "XMPP_VEIL_CERT", value_delimiter = ',', requires = "key")]
    pub cert: Vec<PathBuf>,

    /// The proxy's PEM private key (repeatable, one per --cert).
    #[arg(long, env = "XMPP_VEIL_KEY", value_delimiter = ',', requires = "cert")]
    pub key: Vec<PathBuf>,

    /// Prometheus endpoint (GET /metrics).
    #[arg(
        long,
        env = "XMPP_VEIL_METRICS_LISTEN",
        default_value = "127.0.0.1:9477"
    )]
    pub metrics_listen: SocketAddr,

    /// Largest top-level element accepted from either side, in bytes.
    #[arg(long, env = "XMPP_VEIL_MAX_STANZA_SIZE", default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1024..=(64 << 20)))]
    pub max_stanza_size: u64,

    /// Largest nesting depth of elements inside one top-level element.
    #[arg(long, env = "XMPP_VEIL_MAX_DEPTH", default_value_t = 64, value_parser = clap::value_parser!(u16).range(2..=256))]
    pub max_depth: u16,

    /// Most attributes on one element.
    #[arg(long, env = "XMPP_VEIL_MAX_ATTRIBUTES", default_value_t = 64, value_parser = clap::value_parser!(u16).range(4..))]
    pub max_attributes: u16,

    /// Most client connections open at once; more are refused with `resource-constraint`.
    #[arg(long, env = "XMPP_VEIL_MAX_CONNECTIONS", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Time a client gets from its TCP connection to successful authentication (TLS included),
    /// in seconds: slowloris protection.
    #[arg(long, env = "XMPP_VEIL_AUTH_TIMEOUT", default_value_t = 30.0)]
    pub auth_timeout: f64,

    /// Time a write to a peer may go without progress before the proxy gives up on a peer that
    /// does not read, in seconds.
    #[arg(long, env = "XMPP_VEIL_WRITE_TIMEOUT", default_value_t = 30.0)]
    pub write_timeout: f64,

    /// Time allowed to connect to the upstream (TCP, TLS and its stream opening), in seconds.
    #[arg(
        long,
        env = "XMPP_VEIL_UPSTREAM_CONNECT_TIMEOUT",
        default_value_t = 10.0
    )]
    pub upstream_connect_timeout: f64,

    /// How invisibility is enforced: a per-session privacy list where the server has them, or
    /// the silent session.
    #[arg(
        long,
        env = "XMPP_VEIL_INVISIBILITY_STRATEGY",
        value_enum,
        default_value = "auto"
    )]
    pub invisibility_strategy: InvisibilityStrategy,

    /// Time allowed for graceful shutdown before remaining sessions are cut, in seconds.
    #[arg(long, env = "XMPP_VEIL_SHUTDOWN_TIMEOUT", default_value_t = 5.0)]
    pub shutdown_timeout: f64,

    // Network edge: PROXY protocol, client addresses, per-IP limits (see proxy_protocol.rs,
    // limits.rs).
    /// PROXY protocol header sent to the upstream, so that the server sees the client's address.
    #[arg(
        long,
        env = "XMPP_VEIL_UPSTREAM_PROXY_PROTOCOL",
        value_enum,
        default_value = "off"
    )]
    pub upstream_proxy_protocol: ProxyProtocolOut,

    /// PROXY protocol header from a load balancer in front of the client listeners.
    #[arg(
        long,
        env = "XMPP_VEIL_PROXY_PROTOCOL_IN",
        value_enum,
        default_value = "off"
    )]
    pub proxy_protocol_in: ProxyProtocolIn,

    /// Networks allowed to send a PROXY protocol header, ADDR/PREFIX or ADDR (repeatable).
    #[arg(long, env = "XMPP_VEIL_PROXY_PROTOCOL_TRUSTED", value_delimiter = ',', value_parser = parse_net)]
    pub proxy_protocol_trusted: Vec<ipnet::IpNet>,

    /// Keep client addresses out of the logs.
    #[arg(long, env = "XMPP_VEIL_HIDE_CLIENT_ADDRESSES")]
    pub hide_client_addresses: bool,

    /// Most connections open at once from one client IP (IPv6: one /64); 0: no limit.
    #[arg(long, env = "XMPP_VEIL_MAX_CONNECTIONS_PER_IP", default_value_t = 100)]
    pub max_connections_per_ip: u32,

    /// Most new connections per minute from one client IP (IPv6: one /64), as a burst that
    /// refills evenly over the minute; 0: no limit.
    #[arg(
        long,
        env = "XMPP_VEIL_MAX_CONNECTION_RATE_PER_IP",
        default_value_t = 60
    )]
    pub max_connection_rate_per_ip: u32,

    /// Client networks not subject to the per-IP limits (repeatable).
    #[arg(
        long,
        env = "XMPP_VEIL_PER_IP_EXEMPT",
        value_delimiter = ',',
        value_parser = parse_net,
        default_value = "127.0.0.1,::1"
    )]
    pub per_ip_exempt: Vec<ipnet::IpNet>,
}

impl Config {
    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.upstream_connect_timeout.clamp(0.1, 600.0))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_timeout.clamp(0.1, 600.0))
    }

    pub fn max_stanza_size(&self) -> usize {
        usize::try_from(self.max_stanza_size).unwrap_or(usize::MAX)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.auth_timeout.clamp(0.1, 3600.0))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.write_timeout.clamp(0.1, 3600.0))
    }

    /// The framer's limits for either leg.
    pub fn limits(&self) -> crate::xml::Limits {
        crate::xml::Limits {
            max_element: self.max_stanza_size(),
            max_depth: usize::from(self.max_depth),
            max_attributes: usize::from(self.max_attributes),
        }
    }

    /// The upstream's host part (for SNI and certificate checks when no stream `to` is known).
    pub fn upstream_host(&self) -> &str {
        let s = self.upstream.as_str();
        match s.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_contract() {
        let c =
            Config::try_parse_from(["xmpp-veil", "--upstream", "xmpp.example.org:5222"]).unwrap();
        assert_eq!(c.listen, vec!["[::]:5222".parse::<SocketAddr>().unwrap()]);
        assert_eq!(
            c.listen_direct_tls,
            vec!["[::]:5223".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.upstream_tls, UpstreamTls::Starttls);
        assert_eq!(
            c.metrics_listen,
            "127.0.0.1:9477".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.max_stanza_size, 262_144);
        assert_eq!(c.upstream_host(), "xmpp.example.org");
        assert!(c.cert.is_empty() && !c.upstream_insecure);
        assert_eq!(c.invisibility_strategy, InvisibilityStrategy::Auto);
    }

    #[test]
    fn listen_flags_repeat() {
        let c = Config::try_parse_from([
            "xmpp-veil",
            "--upstream",
            "[::1]:5222",
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--upstream-tls",
            "plain",
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.upstream_host(), "::1");
        assert_eq!(c.upstream_tls, UpstreamTls::Plain);
    }

    #[test]
    fn edge_flags() {
        let c = Config::try_parse_from(["xmpp-veil", "--upstream", "h:1"]).unwrap();
        assert_eq!(c.upstream_proxy_protocol, ProxyProtocolOut::Off);
        assert_eq!(c.proxy_protocol_in, ProxyProtocolIn::Off);
        assert!(c.proxy_protocol_trusted.is_empty() && !c.hide_client_addresses);
        assert_eq!(
            (c.max_connections_per_ip, c.max_connection_rate_per_ip),
            (100, 60)
        );
        assert_eq!(
            c.per_ip_exempt,
            vec![
                "127.0.0.1/32".parse::<ipnet::IpNet>().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
        let c = Config::try_parse_from([
            "xmpp-veil",
            "--upstream",
            "h:1",
            "--upstream-proxy-protocol",
            "v2",
            "--proxy-protocol-in",
            "required",
            "--proxy-protocol-trusted",
            "10.1.2.3/8,2001:db8::1",
            "--proxy-protocol-trusted",
            "192.0.2.10",
        ])
        .unwrap();
        assert_eq!(c.upstream_proxy_protocol, ProxyProtocolOut::V2);
        assert_eq!(
            c.proxy_protocol_trusted,
            ["10.0.0.0/8", "2001:db8::1/128", "192.0.2.10/32"]
                .map(|n| n.parse::<ipnet::IpNet>().unwrap())
        );
        assert!(
            Config::try_parse_from([
                "xmpp-veil",
                "--upstream",
                "h:1",
                "--proxy-protocol-trusted",
                "example.org"
            ])
            .is_err()
        );
        assert!(
            Config::try_parse_from([
                "xmpp-veil",
                "--upstream",
                "h:1",
                "--upstream-proxy-protocol",
                "v3"
            ])
            .is_err()
        );
    }

    #[test]
    fn proxy_protocol_in_needs_trusted_networks() {
        let c = Config::try_parse_from([
            "xmpp-veil",
            "--upstream",
            "h:1",
            "--proxy-protocol-in",
            "optional",
        ])
        .unwrap();
        assert!(crate::edge::Edge::new(&c).is_err());
    }

    #[test]
    fn cert_needs_key() {
        assert!(
            Config::try_parse_from(["xmpp-veil", "--upstream", "h:1", "--cert", "c.pem"]).is_err()
        );
    }
}
