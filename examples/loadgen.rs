//! XMPP load generator for the benchmark (run by hand; loopback targets only).
//!
//! Opens `--sessions` client sessions over DIRECT TLS (XEP-0368: SNI `localhost`, ALPN
//! `xmpp-client`, trusting `certs/dev-ca.pem`), logs each in as `u<i>@localhost/lg` (SASL PLAIN,
//! bind), sets up its presence (`--invisible none|xep0186|xep0018`; with `xep0018` also directed
//! `type='visible'` to `--visible-to` contacts, so that every undirected presence is fanned out by
//! the proxy), then:
//!
//! - `--mode load`: sessions `2k` and `2k+1` chat with each other, at `--rate` messages/s in
//!   total or, with `--rate 0`, flat out with at most `--window` messages in flight per sender.
//!   Every message carries its send time (`t=` nanoseconds since the generator started) and a
//!   sequence number in its body; the receiver finds them with `memchr` (no XML parser) and
//!   records the end-to-end latency in an HDR histogram. After `--warmup` seconds a window of
//!   `--duration` seconds is measured: throughput, latency p50/p99/p99.9, and for each
//!   `--watch NAME:PID` that process's CPU time (utime+stime from /proc/PID/stat) over exactly
//!   that window and its RSS. Every `--presence-every`-th stanza a session sends is an
//!   undirected presence update instead of a message.
//! - `--mode idle`: opens the sessions, waits `--settle` seconds, reports each watched process's
//!   RSS growth per session, holds them `--hold` seconds, then checks they are all still served
//!   (one message per session, all must arrive).
//!
//! Errors (failed logins, stream errors, error stanzas, lost messages, dropped connections)
//! are counted and reported; the exit status is 1 if there were any. The last line on stdout
//! is `RESULT key=value …` for scripts.
//!
//! ```sh
//! cargo run --release --example loadgen -- --target 127.0.0.1:5223 --sessions 200 --rate 5000
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::BytesMut;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use memchr::memmem;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use xmpp_veil::xml::{Frame, Framer};

type Tls = TlsStream<TcpStream>;

const DOMAIN: &str = "localhost";
const RESOURCE: &str = "lg";
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest run accepted, to keep every loop bounded in time.
const MAX_SECONDS: f64 = 3600.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Load,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Invisible {
    /// Ordinary initial presence.
    None,
    /// XEP-0186 `<invisible/>` IQ, then an initial presence (withheld by the proxy).
    Xep0186,
    /// XEP-0018 `<presence type='invisible'/>`, directed `visible` to `--visible-to` contacts,
    /// then an initial presence (fanned out to them by the proxy).
    Xep0018,
}

#[derive(Debug, Parser)]
#[command(about = "XMPP load generator for the xmpp-veil benchmark (loopback targets only)")]
struct Args {
    /// Direct-TLS address of the proxy (or server) under test.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "load")]
    mode: Mode,
    /// Number of sessions (rounded up to an even number: they chat in pairs).
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Total messages per second over all sessions; 0 = flat out (see --window).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Flat out: most messages a sender has in flight (sent, not yet received by its peer).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, value_enum, default_value = "none")]
    invisible: Invisible,
    /// XEP-0018: number of contacts (`c<k>@localhost`) each session makes itself visible to.
    #[arg(long, default_value_t = 50)]
    visible_to: usize,
    /// Every N-th stanza a session sends is an undirected presence update (0: never).
    #[arg(long, default_value_t = 0)]
    presence_every: u64,
    /// Bytes of filler in each message body (besides the timestamp and sequence number).
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Logins in progress at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Idle mode: seconds between the last login and the RSS sample.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Idle mode: seconds to hold the sessions after the sample.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Processes to measure, as NAME:PID (repeatable).
    #[arg(long)]
    watch: Vec<String>,
    /// CA certificate that signs the target's certificate.
    #[arg(long, default_value = "certs/dev-ca.pem")]
    ca: PathBuf,
    /// User names are PREFIX<i>.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Counters shared by every task.
#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    presences: AtomicU64,
    received: AtomicU64,
    received_in_window: AtomicU64,
    errors: AtomicU64,
    measuring: AtomicBool,
    stopping: AtomicBool,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static LATENCY: LazyLock<Mutex<Histogram<u64>>> = LazyLock::new(|| {
    Mutex::new(Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds"))
});
static FIRST_ERROR: Mutex<Option<String>> = Mutex::new(None);

fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

fn error(stats: &Stats, what: impl FnOnce() -> String) {
    let n = stats.errors.fetch_add(1, Ordering::Relaxed);
    if n < 5 && std::env::var_os("LOADGEN_DEBUG").is_some() {
        eprintln!("loadgen: error: {}", what());
        return;
    }
    let mut first = FIRST_ERROR.lock().unwrap_or_else(|e| e.into_inner());
    if first.is_none() {
        *first = Some(what());
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.target.ip().is_loopback() {
        eprintln!("loadgen: {}: loopback targets only", args.target);
        return std::process::ExitCode::from(2);
    }
    LazyLock::force(&EPOCH);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

#[derive(Debug, Clone)]
struct Watched {
    name: String,
    pid: u32,
}

fn parse_watch(specs: &[String]) -> Result<Vec<Watched>, String> {
    specs
        .iter()
        .map(|s| {
            let (name, pid) = s
                .split_once(':')
                .ok_or_else(|| format!("--watch {s}: expected NAME:PID"))?;
            let pid = pid.parse().map_err(|_| format!("--watch {s}: bad PID"))?;
            Ok(Watched {
                name: name.to_owned(),
                pid,
            })
        })
        .collect()
}

/// utime + stime of a process (every thread, live or exited), in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn rss_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Login

fn connector(ca: &PathBuf) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots
            .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    // Every handshake is a full one, for every target alike.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

fn stream_header() -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{DOMAIN}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>"
    )
}

async fn next_element(tls: &mut Tls, fr: &mut Framer) -> Result<Frame, String> {
    loop {
        match fr.next_frame() {
            Ok(Some(Frame::Whitespace(_))) => continue,
            Ok(Some(Frame::StreamEnd(_))) => return Err("stream closed during login".into()),
            Ok(Some(f)) => {
                if let Frame::Element { raw, .. } = &f
                    && memmem::find(raw, b"stream:error").is_some()
                {
                    return Err(format!(
                        "stream error during login: {}",
                        String::from_utf8_lossy(raw)
                    ));
                }
                return Ok(f);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("bad XML during login: {e}")),
        }
        let buf = fr.buffer_mut();
        buf.reserve(4096);
        match tls.read_buf(buf).await {
            Ok(0) => return Err("connection closed during login".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read during login: {e}")),
        }
    }
}

/// Reads elements until one whose raw bytes contain `marker`; anything with an error in between
/// fails the login.
async fn expect(tls: &mut Tls, fr: &mut Framer, marker: &[u8]) -> Result<(), String> {
    loop {
        if let Frame::Element { raw, .. } = next_element(tls, fr).await? {
            if memmem::find(&raw, marker).is_some() {
                return Ok(());
            }
            if memmem::find(&raw, b"error").is_some() || memmem::find(&raw, b"<failure").is_some() {
                return Err(format!(
                    "error during login: {}",
                    String::from_utf8_lossy(&raw)
                ));
            }
        }
    }
}

async fn login(
    args: &Args,
    connector: &TlsConnector,
    i: usize,
) -> Result<(Tls, BytesMut, Option<String>), String> {
    let tcp = TcpStream::connect(args.target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(DOMAIN).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let suite = (i == 0)
        .then(|| {
            tls.get_ref()
                .1
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
        })
        .flatten();
    let mut fr = Framer::new(1 << 20);
    let user = format!("{}{i}", args.user_prefix);

    w(&mut tls, stream_header()).await?;
    expect_header(&mut tls, &mut fr).await?;
    expect(&mut tls, &mut fr, b"PLAIN").await?;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{user}"));
    w(
        &mut tls,
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"),
    )
    .await?;
    expect(&mut tls, &mut fr, b"<success").await?;
    fr.reset();
    w(&mut tls, stream_header()).await?;
    expect_header(&mut tls, &mut fr).await?;
    expect(&mut tls, &mut fr, b"urn:ietf:params:xml:ns:xmpp-bind").await?;
    w(
        &mut tls,
        format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{RESOURCE}</resource></bind></iq>"
        ),
    )
    .await?;
    expect(&mut tls, &mut fr, b"bind1").await?;

    let mut setup = String::new();
    match args.invisible {
        Invisible::None => setup.push_str("<presence/>"),
        Invisible::Xep0186 => {
            w(
                &mut tls,
                "<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1'/></iq>".into(),
            )
            .await?;
            expect(&mut tls, &mut fr, b"inv1").await?;
            setup.push_str("<presence/>");
        }
        Invisible::Xep0018 => {
            setup.push_str("<presence type='invisible'/>");
            for k in 0..args.visible_to {
                let _ = write!(setup, "<presence to='c{k}@{DOMAIN}' type='visible'/>");
            }
            setup.push_str("<presence><show>chat</show></presence>");
        }
    }
    // A round trip to the server after the setup: once it is answered, the proxy has handled
    // everything before it.
    setup.push_str("<iq type='get' id='sync1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    w(&mut tls, setup).await?;
    expect(&mut tls, &mut fr, b"sync1").await?;
    Ok((tls, fr.take_buffered(), suite))
}

async fn w(tls: &mut Tls, s: String) -> Result<(), String> {
    tls.write_all(s.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.flush().await.map_err(|e| format!("write: {e}"))
}

async fn expect_header(tls: &mut Tls, fr: &mut Framer) -> Result<(), String> {
    match next_element(tls, fr).await? {
        Frame::StreamHeader(_) => Ok(()),
        _ => Err("expected a stream header".into()),
    }
}

/// Logs every session in, `connect_concurrency` at a time. Index order is kept.
async fn login_all(
    args: &Arc<Args>,
    n: usize,
    stats: &Arc<Stats>,
) -> Result<Vec<Option<(Tls, BytesMut)>>, String> {
    let connector = connector(&args.ca)?;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (args, connector, gate) = (args.clone(), connector.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let r = tokio::time::timeout(LOGIN_TIMEOUT, login(&args, &connector, i)).await;
            (i, r.unwrap_or_else(|_| Err("login timed out".into())))
        });
    }
    let mut out: Vec<Option<(Tls, BytesMut)>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| e.to_string())?;
        match r {
            Ok((tls, rest, suite)) => {
                if let Some(suite) = suite {
                    eprintln!("loadgen: TLS cipher suite {suite}");
                }
                out[i] = Some((tls, rest));
            }
            Err(e) => error(stats, || format!("login u{i}: {e}")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// Receives messages: finds `</message>`, then the `t=`/`s=` marker in the body, with memchr.
async fn reader(
    mut rd: ReadHalf<Tls>,
    mut buf: BytesMut,
    stats: Arc<Stats>,
    credit: Option<Arc<Semaphore>>,
) {
    let end = memmem::Finder::new(b"</message>");
    let start_tag = memmem::Finder::new(b"<message");
    let marker = memmem::Finder::new(b"<body>t=");
    let mut samples: Vec<u64> = Vec::with_capacity(256);
    let mut clean_close = false;
    'read: loop {
        let mut pos = 0;
        while let Some(e) = end.find(&buf[pos..]) {
            let seg = &buf[pos..pos + e + 10];
            pos += e + 10;
            let m = start_tag.find(seg).unwrap_or(0);
            if memmem::find(&seg[..m], b"error").is_some() {
                error(&stats, || {
                    format!("error stanza: {}", String::from_utf8_lossy(&seg[..m]))
                });
            }
            let msg = &seg[m..];
            let t = marker.find(msg).and_then(|b| parse_digits(&msg[b + 8..]));
            match t {
                Some(t) => {
                    let now = now_ns();
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    if stats.measuring.load(Ordering::Relaxed) {
                        stats.received_in_window.fetch_add(1, Ordering::Relaxed);
                        samples.push(now.saturating_sub(t));
                        if samples.len() >= 256 {
                            flush(&mut samples);
                        }
                    }
                    if let Some(c) = &credit {
                        c.add_permits(1);
                    }
                }
                None => error(&stats, || {
                    format!("unexpected message: {}", String::from_utf8_lossy(msg))
                }),
            }
        }
        let _ = buf.split_to(pos);
        if memmem::find(&buf, b"</stream:stream>").is_some() {
            clean_close = true;
            if memmem::find(&buf, b"error").is_some() {
                error(&stats, || {
                    format!("stream ended: {}", String::from_utf8_lossy(&buf))
                });
            }
            break 'read;
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(16 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    flush(&mut samples);
    if !(clean_close || stats.stopping.load(Ordering::Relaxed)) {
        error(&stats, || {
            format!(
                "connection dropped; last bytes: {}",
                String::from_utf8_lossy(&buf[buf.len().saturating_sub(300)..])
            )
        });
    }
}

fn flush(samples: &mut Vec<u64>) {
    if samples.is_empty() {
        return;
    }
    let mut h = LATENCY.lock().unwrap_or_else(|e| e.into_inner());
    for &s in samples.iter() {
        h.saturating_record(s);
    }
    samples.clear();
}

fn parse_digits(b: &[u8]) -> Option<u64> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    std::str::from_utf8(&b[..n]).ok()?.parse().ok()
}

struct Sender {
    wr: WriteHalf<Tls>,
    /// The peer's full JID.
    peer: String,
    buf: Vec<u8>,
    seq: u64,
    filler: Arc<String>,
    presence_every: u64,
}

impl Sender {
    /// One stanza (one write): a message, or every `presence_every`-th time a presence update.
    async fn send(&mut self, stats: &Stats) -> std::io::Result<bool> {
        self.seq += 1;
        self.buf.clear();
        let presence = self.presence_every > 0 && self.seq.is_multiple_of(self.presence_every);
        if presence {
            let show = if (self.seq / self.presence_every).is_multiple_of(2) {
                "away"
            } else {
                "chat"
            };
            let _ = write!(
                VecWriter(&mut self.buf),
                "<presence><show>{show}</show></presence>"
            );
        } else {
            let _ = write!(
                VecWriter(&mut self.buf),
                "<message to='{}' type='chat' id='m{}'><body>t={} s={} {}</body></message>",
                self.peer,
                self.seq,
                now_ns(),
                self.seq,
                self.filler
            );
        }
        self.wr.write_all(&self.buf).await?;
        // tokio-rustls may keep records it could not write yet (socket full, or the task's
        // cooperative budget spent) until the next write or flush: flush, or they may stall.
        self.wr.flush().await?;
        if presence {
            stats.presences.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(!presence)
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = self.wr.write_all(b"</stream:stream>").await;
            let _ = self.wr.flush().await;
        })
        .await;
    }
}

/// `fmt::Write` into a byte vector.
struct VecWriter<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Flat out: send whenever the window has room.
async fn flat_out(
    mut s: Sender,
    window: Arc<Semaphore>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Sender {
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = window.acquire() => p,
        };
        let Ok(permit) = permit else { break };
        match s.send(&stats).await {
            Ok(true) => permit.forget(),
            Ok(false) => drop(permit),
            Err(e) => {
                error(&stats, || format!("write: {e}"));
                break;
            }
        }
    }
    s
}

/// Open loop at a fixed rate per sender; ticks are spread over the period across senders.
async fn paced(
    mut s: Sender,
    period: Duration,
    phase: Duration,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Sender {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = s.send(&stats).await {
            error(&stats, || format!("write: {e}"));
            break;
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------

fn split_all(
    conns: Vec<Option<(Tls, BytesMut)>>,
    stats: &Arc<Stats>,
    credits: &[Arc<Semaphore>],
    readers: &mut JoinSet<()>,
) -> Vec<Option<WriteHalf<Tls>>> {
    let mut writers = Vec::with_capacity(conns.len());
    for (i, conn) in conns.into_iter().enumerate() {
        match conn {
            Some((tls, rest)) => {
                let (rd, wr) = tokio::io::split(tls);
                // Messages arriving at i come from its peer: they free room in the peer's window.
                let credit = credits.get(i ^ 1).cloned();
                readers.spawn(reader(rd, rest, stats.clone(), credit));
                writers.push(Some(wr));
            }
            None => writers.push(None),
        }
    }
    writers
}

async fn run(args: Args) -> Result<bool, String> {
    let args = Arc::new(args);
    let watched = parse_watch(&args.watch)?;
    let n = (args.sessions.max(2) + 1) & !1;
    let duration = args.duration.clamp(0.1, MAX_SECONDS);
    let warmup = args.warmup.clamp(0.0, MAX_SECONDS);
    let stats = Arc::new(Stats::default());
    let tck = ticks_per_sec();
    let mut result = String::from("RESULT");
    let _ = write!(result, " mode={:?} sessions={n}", args.mode);

    let rss_before: Vec<Option<u64>> = watched.iter().map(|w| rss_kb(&w.pid.to_string())).collect();
    let t_login = Instant::now();
    let conns = login_all(&args, n, &stats).await?;
    let login_secs = t_login.elapsed().as_secs_f64();
    let logged_in = conns.iter().filter(|c| c.is_some()).count();
    eprintln!(
        "loadgen: {logged_in}/{n} sessions logged in to {} in {login_secs:.1} s",
        args.target
    );
    let _ = write!(result, " logged_in={logged_in} login_secs={login_secs:.2}");

    let credits: Vec<Arc<Semaphore>> = (0..n)
        .map(|_| Arc::new(Semaphore::new(args.window.max(1))))
        .collect();
    let mut readers = JoinSet::new();
    let writers = split_all(conns, &stats, &credits, &mut readers);
    let filler = Arc::new("x".repeat(args.body));
    let mk_sender = |i: usize, wr: WriteHalf<Tls>| Sender {
        wr,
        peer: format!("{}{}@{DOMAIN}/{RESOURCE}", args.user_prefix, i ^ 1),
        buf: Vec::with_capacity(256 + args.body),
        seq: 0,
        filler: filler.clone(),
        presence_every: args.presence_every,
    };

    let mut ok = true;
    match args.mode {
        Mode::Idle => {
            tokio::time::sleep(Duration::from_secs_f64(args.settle.clamp(0.0, 600.0))).await;
            for (w, before) in watched.iter().zip(&rss_before) {
                let after = rss_kb(&w.pid.to_string());
                if let (Some(b), Some(a)) = (before, after) {
                    let per = (a as f64 - *b as f64) / n as f64;
                    eprintln!(
                        "loadgen: {}: RSS {b} kB → {a} kB, {per:.2} KiB per session",
                        w.name
                    );
                    let _ = write!(
                        result,
                        " {0}_rss_before_kb={b} {0}_rss_kb={a} {0}_kib_per_session={per:.3}",
                        w.name
                    );
                }
            }
            tokio::time::sleep(Duration::from_secs_f64(args.hold.clamp(0.0, MAX_SECONDS))).await;
            // Still served: one message from every session, each must arrive.
            let mut senders: Vec<Sender> = writers
                .into_iter()
                .enumerate()
                .filter_map(|(i, w)| w.map(|w| mk_sender(i, w)))
                .collect();
            let mut failed = 0u64;
            for s in &mut senders {
                if s.send(&stats).await.is_err() {
                    failed += 1;
                }
            }
            let expected = senders.len() as u64 - failed;
            let deadline = Instant::now() + Duration::from_secs(30);
            while stats.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let got = stats.received.load(Ordering::Relaxed);
            if got < expected || failed > 0 {
                error(&stats, || {
                    format!("served check: {got}/{expected} delivered, {failed} writes failed")
                });
            }
            let _ = write!(result, " served={got}");
            close(senders, &stats, readers).await;
        }
        Mode::Load => {
            let stop = CancellationToken::new();
            let mut tasks = JoinSet::new();
            let senders_n = writers.iter().filter(|w| w.is_some()).count().max(1);
            for (i, w) in writers.into_iter().enumerate() {
                let Some(w) = w else { continue };
                let s = mk_sender(i, w);
                let (stats, stop) = (stats.clone(), stop.clone());
                if args.rate > 0.0 {
                    let period = Duration::from_secs_f64(senders_n as f64 / args.rate);
                    let phase = period.mul_f64(i as f64 / n as f64);
                    tasks.spawn(paced(s, period, phase, stats, stop));
                } else {
                    tasks.spawn(flat_out(s, credits[i].clone(), stats, stop));
                }
            }
            tokio::time::sleep(Duration::from_secs_f64(warmup)).await;

            let cpu0: Vec<Option<u64>> = watched
                .iter()
                .map(|w| cpu_ticks(&w.pid.to_string()))
                .collect();
            let self0 = cpu_ticks("self");
            let t0 = Instant::now();
            stats.measuring.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs_f64(duration)).await;
            stats.measuring.store(false, Ordering::Relaxed);
            let secs = t0.elapsed().as_secs_f64();
            let cpu1: Vec<Option<u64>> = watched
                .iter()
                .map(|w| cpu_ticks(&w.pid.to_string()))
                .collect();
            let self1 = cpu_ticks("self");
            let rss: Vec<Option<u64>> =
                watched.iter().map(|w| rss_kb(&w.pid.to_string())).collect();

            stop.cancel();
            let mut senders = Vec::new();
            while let Some(s) = tasks.join_next().await {
                senders.push(s.map_err(|e| e.to_string())?);
            }
            // Every message sent must arrive.
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            while stats.received.load(Ordering::Relaxed) < stats.sent.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (sent, received) = (
                stats.sent.load(Ordering::Relaxed),
                stats.received.load(Ordering::Relaxed),
            );
            if received < sent {
                error(&stats, || format!("{} messages lost", sent - received));
            }
            let in_window = stats.received_in_window.load(Ordering::Relaxed);
            let rate = in_window as f64 / secs;
            let _ = write!(
                result,
                " secs={secs:.3} sent={sent} received={received} presences={} msgs_per_s={rate:.1}",
                stats.presences.load(Ordering::Relaxed)
            );
            eprintln!(
                "loadgen: {in_window} messages in {secs:.2} s = {rate:.0} msgs/s; sent {sent}, received {received}"
            );
            close(senders, &stats, readers).await;
            {
                let h = LATENCY.lock().unwrap_or_else(|e| e.into_inner());
                let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
                let (p50, p99, p999, max) = (q(0.5), q(0.99), q(0.999), h.max() as f64 / 1000.0);
                eprintln!(
                    "loadgen: latency µs p50 {p50:.0}  p99 {p99:.0}  p99.9 {p999:.0}  max {max:.0}  ({} samples)",
                    h.len()
                );
                let _ = write!(
                    result,
                    " p50_us={p50:.1} p99_us={p99:.1} p999_us={p999:.1} max_us={max:.1}"
                );
            }
            let per_msg = |d: u64| d as f64 / tck * 1e6 / in_window.max(1) as f64;
            for ((w, c0), (c1, rss)) in watched.iter().zip(&cpu0).zip(cpu1.iter().zip(&rss)) {
                if let (Some(a), Some(b)) = (c0, c1) {
                    let d = b.saturating_sub(*a);
                    eprintln!(
                        "loadgen: {}: CPU {:.0} ms ({:.0}% of one core), {:.2} µs per message, RSS {} kB",
                        w.name,
                        d as f64 / tck * 1e3,
                        d as f64 / tck / secs * 100.0,
                        per_msg(d),
                        rss.unwrap_or(0)
                    );
                    let _ = write!(
                        result,
                        " {0}_cpu_ms={1:.0} {0}_cpu_us_per_msg={2:.3} {0}_rss_kb={3}",
                        w.name,
                        d as f64 / tck * 1e3,
                        per_msg(d),
                        rss.unwrap_or(0)
                    );
                }
            }
            if let (Some(a), Some(b)) = (self0, self1) {
                let _ = write!(
                    result,
                    " loadgen_cpu_us_per_msg={:.3}",
                    per_msg(b.saturating_sub(a))
                );
            }
        }
    }
    let errors = stats.errors.load(Ordering::Relaxed);
    if errors > 0 {
        ok = false;
        let first = FIRST_ERROR
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        eprintln!("loadgen: {errors} errors; first: {first}");
    }
    let _ = write!(result, " errors={errors}");
    println!("{result}");
    Ok(ok)
}

/// Closes every stream and waits (bounded) for the readers to see the other side close.
async fn close(senders: Vec<Sender>, stats: &Stats, mut readers: JoinSet<()>) {
    stats.stopping.store(true, Ordering::Relaxed);
    let mut closing = JoinSet::new();
    for s in senders {
        closing.spawn(s.close());
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while closing.join_next().await.is_some() {}
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
}
