//! Raw streams for tests that decide every read and every write themselves (the backpressure
//! and full-duplex tests): a scripted upstream that logs one client in and hands its socket
//! over, and a client login over direct TLS that hands its TLS stream over. Neither reads
//! anything the test did not ask for, unlike [`super::client::Client`], whose reader task
//! always reads.
//!
//! Both ends take small socket buffers when asked, so that what the kernel holds on the test's
//! side of each leg is known and small.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::client::tls_client_config;

/// Time allowed for one login, on either side.
const LOGIN: Duration = Duration::from_secs(15);

const STREAM_NS: &str =
    "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'";

/// Reads into `seen` until it contains `what`; returns what follows the first `what` (which is
/// taken out of `seen`).
async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    seen: &mut Vec<u8>,
    what: &str,
    who: &str,
) -> Result<Vec<u8>, String> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(at) = find(seen, what.as_bytes()) {
            let rest = seen.split_off(at + what.len());
            return Ok(rest);
        }
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("{who}: read while waiting for {what}: {e}"))?;
        if n == 0 {
            return Err(format!(
                "{who}: closed before {what}; got: {}",
                String::from_utf8_lossy(seen)
            ));
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of the first `id` attribute in `xml`.
fn first_id(xml: &str) -> Option<&str> {
    let at = xml.find(" id=")? + 4;
    let quote = xml[at..].chars().next()?;
    let rest = &xml[at + 1..];
    Some(&rest[..rest.find(quote)?])
}

/// `SO_RCVBUF`/`SO_SNDBUF` as the kernel reports them (Linux doubles what is asked).
pub struct Buffers {
    pub recv: u32,
    pub send: u32,
}

fn small_buffers(sock: &TcpSocket, size: Option<u32>) -> std::io::Result<Buffers> {
    if let Some(size) = size {
        sock.set_recv_buffer_size(size)?;
        sock.set_send_buffer_size(size)?;
    }
    Ok(Buffers {
        recv: sock.recv_buffer_size()?,
        send: sock.send_buffer_size()?,
    })
}

/// A scripted XMPP server on a free loopback port: PLAIN for anyone, `success`, the restart,
/// bind (to `JID`) and an empty roster for the proxy's roster query; nothing else is offered,
/// nothing else is answered.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    /// The buffers of every socket it accepts (set on the listener, which they inherit).
    pub buffers: Buffers,
    listener: tokio::net::TcpListener,
}

/// A logged-in session on the fake upstream's side.
pub struct Upstream {
    pub stream: TcpStream,
    /// What the proxy sent after the bind request (the start of the session's traffic).
    pub rest: Vec<u8>,
}

impl FakeUpstream {
    pub const JID: &'static str = "joe@localhost/raw";

    /// `buffer`: socket buffer size to ask for (`None`: the system's default, autotuned).
    pub async fn start(buffer: Option<u32>) -> FakeUpstream {
        let sock = TcpSocket::new_v4().expect("socket");
        let buffers = small_buffers(&sock, buffer).expect("socket buffers");
        sock.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let listener = sock.listen(16).expect("listen");
        FakeUpstream {
            addr: listener.local_addr().expect("local addr"),
            buffers,
            listener,
        }
    }

    /// Accepts a connection and does nothing else: a bare socket with the same buffers.
    pub async fn accept(&self) -> std::io::Result<TcpStream> {
        Ok(self.listener.accept().await?.0)
    }

    /// Accepts the proxy's connection and logs the client in.
    pub async fn session(&self) -> Result<Upstream, String> {
        tokio::time::timeout(LOGIN, self.login())
            .await
            .map_err(|_| "fake upstream: login timed out".to_string())?
    }

    async fn login(&self) -> Result<Upstream, String> {
        let mut s = self.accept().await.map_err(|e| format!("accept: {e}"))?;
        let who = "fake upstream";
        let header =
            format!("<?xml version='1.0'?><stream:stream {STREAM_NS} from='localhost' id='raw1'>");
        let mut seen = Vec::new();
        seen = read_until(&mut s, &mut seen, "<stream:stream", who).await?;
        seen = read_until(&mut s, &mut seen, ">", who).await?;
        reply(
            &mut s,
            format!(
                "{header}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                 <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
            ),
        )
        .await?;
        seen = read_until(&mut s, &mut seen, "</auth>", who).await?;
        reply(
            &mut s,
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into(),
        )
        .await?;
        seen = read_until(&mut s, &mut seen, "<stream:stream", who).await?;
        seen = read_until(&mut s, &mut seen, ">", who).await?;
        reply(
            &mut s,
            format!(
                "{header}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
                 </stream:features>"
            ),
        )
        .await?;
        let mut bind = seen;
        let rest = read_until(&mut s, &mut bind, "</iq>", who).await?;
        let bind = String::from_utf8_lossy(&bind).into_owned();
        let id = first_id(&bind).ok_or_else(|| format!("{who}: no id in {bind}"))?;
        reply(
            &mut s,
            format!(
                "<iq type='result' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <jid>{}</jid></bind></iq>",
                Self::JID
            ),
        )
        .await?;
        // The proxy asks for the roster (the view its rules need): an empty one.
        let mut query = rest;
        let rest = read_until(&mut s, &mut query, "</iq>", who).await?;
        let query = String::from_utf8_lossy(&query).into_owned();
        if !query.contains("jabber:iq:roster") {
            return Err(format!("{who}: expected the roster query, got {query}"));
        }
        let id = first_id(&query).ok_or_else(|| format!("{who}: no id in {query}"))?;
        reply(
            &mut s,
            format!("<iq type='result' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"),
        )
        .await?;
        Ok(Upstream { stream: s, rest })
    }
}

/// A client logged in through the proxy's direct-TLS port, as joe, with nothing read beyond the
/// bind result.
pub struct RawClient {
    pub stream: TlsStream<TcpStream>,
    /// What the proxy sent after the bind result.
    pub rest: Vec<u8>,
    pub buffers: Buffers,
}

impl RawClient {
    /// `buffer`: socket buffer size to ask for (`None`: the system's default, autotuned).
    pub async fn login(proxy: SocketAddr, buffer: Option<u32>) -> Result<RawClient, String> {
        tokio::time::timeout(LOGIN, Self::login_inner(proxy, buffer))
            .await
            .map_err(|_| "raw client: login timed out".to_string())?
    }

    async fn login_inner(proxy: SocketAddr, buffer: Option<u32>) -> Result<RawClient, String> {
        let who = "raw client";
        let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        let buffers = small_buffers(&sock, buffer).map_err(|e| e.to_string())?;
        let tcp = sock
            .connect(proxy)
            .await
            .map_err(|e| format!("{who}: connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut s = tokio_rustls::TlsConnector::from(tls_client_config(true))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("{who}: TLS: {e}"))?;
        let header = format!("<?xml version='1.0'?><stream:stream to='localhost' {STREAM_NS}>");
        send(&mut s, &header).await?;
        let mut seen = Vec::new();
        seen = read_until(&mut s, &mut seen, "</stream:features>", who).await?;
        // PLAIN: \0joe\0pw
        send(
            &mut s,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGpvZQBwdw==</auth>",
        )
        .await?;
        seen = read_until(&mut s, &mut seen, "<success", who).await?;
        send(&mut s, &header).await?;
        seen = read_until(&mut s, &mut seen, "</stream:features>", who).await?;
        send(
            &mut s,
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>raw</resource></bind></iq>",
        )
        .await?;
        let rest = read_until(&mut s, &mut seen, "</iq>", who).await?;
        Ok(RawClient {
            stream: s,
            rest,
            buffers,
        })
    }
}

async fn reply(s: &mut TcpStream, text: String) -> Result<(), String> {
    s.write_all(text.as_bytes())
        .await
        .map_err(|e| format!("fake upstream: write: {e}"))
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, text: &str) -> Result<(), String> {
    s.write_all(text.as_bytes())
        .await
        .map_err(|e| format!("raw client: write: {e}"))?;
    s.flush()
        .await
        .map_err(|e| format!("raw client: flush: {e}"))
}
