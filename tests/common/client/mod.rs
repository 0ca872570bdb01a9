//! A small real XMPP client for tests, independent of the proxy's code.
//!
//! It connects (plaintext, STARTTLS or XEP-0368 direct TLS), authenticates
//! (SASL PLAIN or SCRAM-SHA-1 via the `sasl` crate), binds a resource, and then
//! a reader task records every top-level element it receives into a log that
//! the test can search ([`Client::wait_for`], [`Client::expect_none`], ...).
//!
//! With [`Opts::sm`] / [`Opts::resume`] it speaks XEP-0198 Stream Management:
//! it counts stanzas both ways, answers the peer's `<r/>` by itself (a
//! separate task writes the `<a/>`, so a busy writer never stalls the reader),
//! and offers [`Client::request_ack`] and [`Client::sm_snapshot`].
//!
//! Set `XMPP_TEST_TRACE=1` to print everything sent and received.
//!
//! Where things are:
//! - this file: the [`Client`] type, connecting and sending, the ways a connection ends;
//! - [`opts`]: what a connection asks for ([`Opts`], [`Tls`], [`Mech`], resumption);
//! - [`login`]: the negotiation (STARTTLS or direct TLS, SASL, bind, SM enable/resume);
//! - [`recorder`]: what the client received, and the assertions on it ([`Client::wait_for`],
//!   [`Client::expect_none`], [`Client::dump`], ...);
//! - [`sm`]: XEP-0198 bookkeeping, the `<a/>` writer and [`Client::request_ack`];
//! - [`stanza`]: the received XML as a small tree ([`Stanza`], [`Child`]) and JID helpers;
//! - [`framer`]: the byte stream split into stream header, elements and stream end;
//! - [`transport`]: TCP from a chosen loopback address, TLS with the dev CA, tracing;
//! - [`roster`]: [`befriend`], subscriptions made with real logins.

mod framer;
mod login;
mod opts;
mod recorder;
mod roster;
mod sm;
mod stanza;
mod transport;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use framer::frame_chunks;
pub use opts::{Mech, Opts, SmResume, Tls};
pub use roster::befriend;
pub use sm::SmSnapshot;
pub use stanza::{Child, Stanza, bare, esc, jid_matches, parse_element};
pub use transport::{Io, connect_from, connect_raw, dev_ca_path, tls_client_config};

use framer::Framer;
use login::{Conn, Negotiated, negotiate};
use recorder::{Shared, State, reader_task};
use sm::acker_task;
use stanza::Scope;
use transport::{BoxIo, tls_wrap, trace_on, ts};

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// XEP-0198 Stream Management.
pub const NS_SM: &str = "urn:xmpp:sm:3";

/// Time allowed for the whole connect/login sequence.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time [`Client::close`] waits for the peer to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Client {
    /// Full JID from resource binding.
    pub jid: String,
    /// Bare JID.
    pub bare: String,
    /// Stream features before authentication (after TLS).
    pub pre_auth_features: Stanza,
    /// Stream features after authentication.
    pub features: Stanza,
    /// Attributes of the server's last stream header.
    pub stream_attrs: Vec<(String, String)>,
    label: String,
    started: Instant,
    writer: Writer,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    /// XEP-0198: writes the `<a/>` answers the reader task queues.
    acker: Option<JoinHandle<()>>,
    /// A duplicate of the TCP socket, for abrupt shutdown.
    sock: Option<std::net::TcpStream>,
}

type Writer = Arc<tokio::sync::Mutex<Option<WriteHalf<BoxIo>>>>;

impl Client {
    /// Connects, secures, authenticates, binds, and starts recording.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        pass: &str,
        opts: Opts,
    ) -> Result<Client, String> {
        let label = format!("{user}/{}", opts.resource);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut tcp = tokio::time::timeout_at(deadline, connect_from(opts.source, addr))
            .await
            .map_err(|_| format!("[{label}] TCP connect to {addr} timed out"))?
            .map_err(|e| format!("[{label}] TCP connect to {addr}: {e}"))?;
        if !opts.preamble.is_empty() {
            tcp.write_all(&opts.preamble)
                .await
                .map_err(|e| format!("[{label}] write preamble: {e}"))?;
        }
        let _ = tcp.set_nodelay(true);
        let std_sock = tcp.into_std().map_err(|e| e.to_string())?;
        let sock = std_sock.try_clone().map_err(|e| e.to_string())?;
        let tcp = TcpStream::from_std(std_sock).map_err(|e| e.to_string())?;
        let mut io: BoxIo = Box::new(tcp);
        if opts.tls == Tls::Direct {
            io = tls_wrap(io, &opts.domain, true)
                .await
                .map_err(|e| format!("[{label}] {e}"))?;
        }
        let mut conn = Conn {
            io,
            framer: Framer::default(),
            label: label.clone(),
            scope: Scope::new(),
            deadline,
        };
        let r = negotiate(&mut conn, user, pass, &opts).await;
        let Negotiated {
            pre_auth_features,
            features,
            stream_attrs,
            jid,
            early,
            sm,
        } = r.map_err(|e| format!("[{label}] {e}"))?;

        let Conn {
            io, framer, scope, ..
        } = conn;
        let (rd, wr) = tokio::io::split(io);
        let (changed, _) = watch::channel(0u64);
        let sm_active = sm.active;
        let mut state = State {
            sm,
            ..State::default()
        };
        for (i, raw) in early.iter().enumerate() {
            state.log.push(Stanza::parse(raw, &scope, i));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed,
        });
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(Some(wr)));
        let task_label = format!("{label}→{jid}");
        let (acks, acker) = if sm_active {
            let (tx, rx) = mpsc::unbounded_channel();
            let acker = tokio::spawn(acker_task(
                rx,
                writer.clone(),
                shared.clone(),
                task_label.clone(),
            ));
            (Some(tx), Some(acker))
        } else {
            (None, None)
        };
        let reader = tokio::spawn(reader_task(
            rd,
            framer,
            scope,
            shared.clone(),
            task_label,
            acks,
        ));
        let client = Client {
            bare: bare(&jid).to_string(),
            jid,
            pre_auth_features,
            features,
            stream_attrs,
            label,
            started,
            writer,
            shared,
            reader: Some(reader),
            acker,
            sock: Some(sock),
        };
        if opts.send_initial_presence {
            client.send("<presence/>").await;
        }
        Ok(client)
    }

    /// Writes raw XML; panics if the connection is gone.
    pub async fn send(&self, xml: &str) {
        if let Err(e) = self.try_send(xml).await {
            panic!("[{}] send failed: {e}\n{}", self.label, self.dump());
        }
    }

    /// Writes raw XML.
    pub async fn try_send(&self, xml: &str) -> Result<(), String> {
        if trace_on() {
            eprintln!("{:8.3} [{}] >> {xml}", ts(), self.label);
        }
        let mut w = self.writer.lock().await;
        let w = w.as_mut().ok_or("writer already shut down")?;
        {
            // Counted before writing, so that an `<a/>` the peer sends for it
            // can never be ahead of the count.
            let mut st = self.shared.state.lock().unwrap();
            if st.sm.active {
                st.sm.count_outbound(xml);
            }
        }
        w.write_all(xml.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        w.flush().await.map_err(|e| e.to_string())
    }

    /// Sends an IQ and waits for the `result`/`error` with this id.
    pub async fn iq(&self, xml_with_id: &str, id: &str, timeout: Duration) -> Stanza {
        let mark = self.mark();
        self.send(xml_with_id).await;
        self.wait_for_since(mark, &format!("IQ reply id={id}"), timeout, |s| {
            s.is_iq_reply(id)
        })
        .await
    }

    /// Sends `</stream:stream>`, waits (bounded) for the peer's close, then
    /// shuts down TLS (close_notify) and TCP.
    pub async fn close(mut self) {
        if self.try_send("</stream:stream>").await.is_ok() && !self.wait_closed(CLOSE_TIMEOUT).await
        {
            eprintln!(
                "[{}] peer did not close within {CLOSE_TIMEOUT:?} after </stream:stream>",
                self.label
            );
        }
        if let Some(mut w) = self.writer.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
        }
        self.teardown();
    }

    /// Abrupt loss: shuts the TCP socket down (FIN) without `</stream:stream>`
    /// and without TLS close_notify.
    pub fn drop_tcp(mut self) {
        if trace_on() {
            eprintln!("{:8.3} [{}] -- dropping TCP", ts(), self.label);
        }
        self.teardown();
    }

    /// Abrupt loss with a TCP RST (SO_LINGER 0) instead of a FIN.
    pub fn reset_tcp(mut self) {
        if trace_on() {
            eprintln!("{:8.3} [{}] -- resetting TCP", ts(), self.label);
        }
        if let Some(sock) = &self.sock {
            use std::os::fd::AsRawFd;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on a socket we own, with a correctly sized value.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            // Dropping every descriptor of the socket now sends the RST.
            self.sock = None;
        }
        self.teardown();
    }

    fn teardown(&mut self) {
        if let Some(sock) = self.sock.take() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        if let Some(a) = self.acker.take() {
            a.abort();
        }
        if let Ok(mut w) = self.writer.try_lock() {
            w.take();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.teardown();
    }
}
