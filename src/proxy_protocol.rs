//! PROXY protocol (HAProxy's v1 text and v2 binary headers) on both legs: read from a load
//! balancer in front of the proxy (`--proxy-protocol-in`), and sent to the server
//! (`--upstream-proxy-protocol`) so that the server sees the client's address.
//!
//! Parsing and building are the `ppp` crate's; this module only reads exactly one header off a
//! socket (never a byte of what follows: TLS or the XMPP stream), decides what it means for the
//! client's address, and never builds an `UNKNOWN` header (ejabberd drops such a connection).

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::{ProxyProtocolIn, ProxyProtocolOut};

/// The longest v1 header (the spec's 107 bytes, CRLF included).
const V1_MAX: usize = 107;
/// The shortest v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
/// A v2 header's fixed part: the 12-byte signature, version/command, family, length.
const V2_FIXED: usize = 16;
/// Largest v2 address-and-TLV part accepted (load balancers add a few TLVs; 64 KiB is allowed
/// by the spec but no client needs that much to tell its address).
const V2_MAX_PAYLOAD: usize = 4096;

/// Where a client connection comes from and where it arrived, as the proxy uses them for logs,
/// per-IP limits and the header sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// The client: the TCP peer, or the source a trusted PROXY header gave.
    pub client: SocketAddr,
    /// The address the client connected to (the header's destination behind a load balancer).
    pub local: SocketAddr,
    /// The load balancer that sent a PROXY header, if one did.
    pub via: Option<SocketAddr>,
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a `[::]` listener reports for IPv4
/// clients) as the IPv4 address it is; anything else unchanged.
pub fn normalise(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    normalise(SocketAddr::new(ip, 0)).ip()
}

/// Why a connection was refused before TLS (the `reason` label of the refusal metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InRefusal {
    /// The source is not in `--proxy-protocol-trusted` and either sent a header or the mode is
    /// `required`.
    Untrusted,
    /// `required`, from a trusted source, and the connection did not start with a header.
    Missing,
    /// A header that does not parse (or did not arrive in time).
    Invalid,
    /// Closed before sending a byte (a TCP health check): not counted.
    Closed,
}

impl InRefusal {
    pub fn label(self) -> &'static str {
        match self {
            InRefusal::Untrusted => "untrusted",
            InRefusal::Missing => "missing",
            InRefusal::Invalid => "invalid",
            InRefusal::Closed => "closed",
        }
    }
}

/// Reads the PROXY header the mode asks for, if any, and returns the connection's endpoints.
/// `peer` and `local` are the TCP connection's. Reads exactly the header's bytes; the caller
/// bounds the time.
pub async fn accept(
    tcp: &mut TcpStream,
    mode: ProxyProtocolIn,
    trusted: &[ipnet::IpNet],
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Endpoints, InRefusal> {
    let (peer, local) = (normalise(peer), normalise(local));
    let direct = Endpoints {
        client: peer,
        local,
        via: None,
    };
    if mode == ProxyProtocolIn::Off {
        return Ok(direct);
    }
    let is_trusted = trusted.iter().any(|net| net.contains(&peer.ip()));
    if mode == ProxyProtocolIn::Required && !is_trusted {
        return Err(InRefusal::Untrusted);
    }
    let raw = match read_header(tcp).await {
        Ok(Some(raw)) => raw,
        Ok(None) if mode == ProxyProtocolIn::Optional => return Ok(direct),
        Ok(None) => return Err(InRefusal::Missing),
        Err(e) => return Err(e),
    };
    if !is_trusted {
        // A client that sends its own header is trying to choose the address the proxy logs,
        // limits and tells the server: never from outside the trusted networks.
        return Err(InRefusal::Untrusted);
    }
    match parse(&raw) {
        Some(Some((client, dest))) => Ok(Endpoints {
            client,
            local: dest,
            via: Some(peer),
        }),
        // `LOCAL` / `UNKNOWN`: the load balancer's own connection (a health check).
        Some(None) => Ok(direct),
        None => Err(InRefusal::Invalid),
    }
}

/// Reads one header off the socket if the connection starts with one: `Ok(None)` when the first
/// byte cannot start a header (TLS starts with 0x16, XMPP with `<`), `Err` on a broken one.
async fn read_header(tcp: &mut TcpStream) -> Result<Option<Vec<u8>>, InRefusal> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) => {}
        _ => return Err(InRefusal::Closed),
    }
    read_rest(tcp, first[0])
        .await
        .map_err(|()| InRefusal::Invalid)
}

async fn read_rest(tcp: &mut TcpStream, first: u8) -> Result<Option<Vec<u8>>, ()> {
    match first {
        b'P' => {
            let mut raw = vec![0u8; V1_MIN];
            tcp.read_exact(&mut raw).await.map_err(drop)?;
            // Byte by byte up to the CRLF: never past the header (at most 92 reads, once).
            while !raw.ends_with(b"\r\n") {
                if raw.len() >= V1_MAX {
                    return Err(());
                }
                let b = tcp.read_u8().await.map_err(drop)?;
                raw.push(b);
            }
            Ok(Some(raw))
        }
        b'\r' => {
            let mut raw = vec![0u8; V2_FIXED];
            tcp.read_exact(&mut raw).await.map_err(drop)?;
            if !raw.starts_with(ppp::v2::PROTOCOL_PREFIX) {
                return Err(());
            }
            let len = usize::from(u16::from_be_bytes([raw[14], raw[15]]));
            if len > V2_MAX_PAYLOAD {
                return Err(());
            }
            raw.resize(V2_FIXED + len, 0);
            tcp.read_exact(&mut raw[V2_FIXED..]).await.map_err(drop)?;
            Ok(Some(raw))
        }
        _ => Ok(None),
    }
}

/// `Some(Some((source, destination)))` for a TCP header, `Some(None)` for one that carries no
/// address (v1 `UNKNOWN`, v2 `LOCAL`, or a family other than TCP over IP), `None` if invalid.
pub fn parse(raw: &[u8]) -> Option<Option<(SocketAddr, SocketAddr)>> {
    use ppp::v2::{Addresses, Command, Protocol};
    match ppp::HeaderResult::parse(raw) {
        ppp::HeaderResult::V1(Ok(h)) => Some(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            )),
            ppp::v1::Addresses::Unknown => None,
        }),
        ppp::HeaderResult::V2(Ok(h)) => Some(
            match (h.command, h.protocol, h.addresses) {
                (Command::Proxy, Protocol::Stream, Addresses::IPv4(a)) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                (Command::Proxy, Protocol::Stream, Addresses::IPv6(a)) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                _ => None,
            }
            .map(|(s, d)| (normalise(s), normalise(d))),
        ),
        _ => None,
    }
}

/// The header that tells the server `client` connected to `local`. Both are normalised first;
/// if their families still differ (an IPv6 client behind an IPv4 listener or the reverse), the
/// destination is written in the client's family, so the header always carries the client's
/// address: never `UNKNOWN`.
pub fn header(version: ProxyProtocolOut, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let client = normalise(client);
    let local = match (client, normalise(local)) {
        (SocketAddr::V6(_), SocketAddr::V4(l)) => {
            SocketAddr::V6(SocketAddrV6::new(l.ip().to_ipv6_mapped(), l.port(), 0, 0))
        }
        (SocketAddr::V4(_), SocketAddr::V6(l)) => {
            SocketAddr::V4(SocketAddrV4::new([0, 0, 0, 0].into(), l.port()))
        }
        (_, l) => l,
    };
    match version {
        ProxyProtocolOut::Off => Vec::new(),
        ProxyProtocolOut::V1 => ppp::v1::Addresses::from((client, local))
            .to_string()
            .into_bytes(),
        ProxyProtocolOut::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build()
        // Writing into a Vec cannot fail; an empty header would fail closed at the server.
        .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_addresses_are_normalised() {
        assert_eq!(
            normalise(sa("[::ffff:192.0.2.7]:5222")),
            sa("192.0.2.7:5222")
        );
        assert_eq!(normalise(sa("[2001:db8::1]:1")), sa("[2001:db8::1]:1"));
        assert_eq!(normalise(sa("[::1]:1")), sa("[::1]:1"));
    }

    #[test]
    fn v1_header_carries_the_client_never_unknown() {
        let h = header(
            ProxyProtocolOut::V1,
            sa("[::ffff:127.0.0.2]:40000"),
            sa("[::ffff:127.0.0.1]:5222"),
        );
        assert_eq!(h, b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 5222\r\n");
        // Mixed families: the destination follows the client's family.
        let h = header(
            ProxyProtocolOut::V1,
            sa("[2001:db8::9]:1"),
            sa("127.0.0.1:5222"),
        );
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "PROXY TCP6 2001:db8::9 ::ffff:127.0.0.1 1 5222\r\n"
        );
        let h = header(
            ProxyProtocolOut::V1,
            sa("192.0.2.1:1"),
            sa("[2001:db8::1]:5222"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 0.0.0.0 1 5222\r\n");
    }

    #[test]
    fn v2_header_round_trips() {
        let h = header(
            ProxyProtocolOut::V2,
            sa("[::ffff:127.0.0.3]:40001"),
            sa("127.0.0.1:5223"),
        );
        assert!(h.starts_with(ppp::v2::PROTOCOL_PREFIX));
        assert_eq!(h[12], 0x21, "version 2, PROXY command");
        assert_eq!(h[13], 0x11, "TCP over IPv4");
        assert_eq!(
            parse(&h),
            Some(Some((sa("127.0.0.3:40001"), sa("127.0.0.1:5223"))))
        );
        let h = header(
            ProxyProtocolOut::V2,
            sa("[2001:db8::1]:7"),
            sa("[::1]:5222"),
        );
        assert_eq!(h[13], 0x21, "TCP over IPv6");
        assert_eq!(
            parse(&h),
            Some(Some((sa("[2001:db8::1]:7"), sa("[::1]:5222"))))
        );
    }

    #[test]
    fn headers_without_addresses_and_broken_ones() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Some(None));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4\r\n"), None);
        assert_eq!(parse(b"PROXY TCP4 999.2.3.4 1.2.3.4 1 2\r\n"), None);
        let mut local = ppp::v2::PROTOCOL_PREFIX.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Some(None));
    }
}
