//! Full duplex and bounded backpressure (issue 13), through the proxy in this process, between a
//! raw client and a scripted upstream that read and write only when the test says so.
//!
//! - Both ends write megabytes at once, and one of them does not read while it writes (it reads
//!   once it has written everything; the other reads all along): a proxy that reads neither leg
//!   while it writes one deadlocks until `--write-timeout` cuts the session; a full-duplex one
//!   delivers every byte, in order, both ways, as a bare TCP connection does (the control).
//!   (If neither end read while writing, no bounded path could carry it, not even a bare TCP
//!   connection: that is not a test of the proxy.)
//! - A peer that never reads stops the proxy reading the other side: what the proxy has read
//!   from the writer (`xmpp_veil_bytes_total`) stays within the kernel's buffers on the stalled
//!   leg plus a bounded amount, however much the writer tries to send, and the session is cut at
//!   `--write-timeout` with the documented stream error.
//!
//! The time bounds here are deadlock detectors, far above what the work takes on a loaded
//! machine; nothing here measures speed.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use common::proxy;
use common::raw::{FakeUpstream, RawClient, find};

/// One test at a time: they read the process's byte counters, and each moves megabytes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Socket buffers asked for on the test's own sockets (the kernel doubles it).
const SMALL: Option<u32> = Some(64 * 1024);
/// What the proxy may hold of one direction's bytes in its own memory.
const PROXY_ALLOWANCE: usize = 4 * MIB;
/// A session that neither completes nor is cut within this is deadlocked.
const DEADLOCK: Duration = Duration::from_secs(90);

const C2S: &str = "xmpp_veil_bytes_total{direction=\"c2s\"}";
const S2C: &str = "xmpp_veil_bytes_total{direction=\"s2c\"}";

/// Numbered messages of about 1 KiB, `bytes` in all (or a little more).
fn messages(prefix: &str, attrs: &str, bytes: usize) -> Vec<u8> {
    let mut out = String::with_capacity(bytes + 2 * KIB);
    let mut i = 0u64;
    while out.len() < bytes {
        let _ = write!(
            out,
            "<message {attrs} id='{prefix}{i}' type='chat'><body>{}</body></message>",
            format!("{prefix}{i:08} ").repeat(96)
        );
        i += 1;
    }
    out.into_bytes()
}

fn from_client(bytes: usize) -> Vec<u8> {
    messages("c", "to='peer@localhost'", bytes)
}

fn from_server(bytes: usize) -> Vec<u8> {
    messages(
        "s",
        &format!("from='peer@localhost/x' to='{}'", FakeUpstream::JID),
        bytes,
    )
}

/// The most the kernel lets a socket's buffer grow to by itself: `tcp_wmem`'s or `tcp_rmem`'s
/// maximum.
fn kernel_max(which: &str, default: usize) -> usize {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{which}"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(default)
}

fn kernel_send_max() -> usize {
    kernel_max("tcp_wmem", 4 * MIB)
}

/// More than the proxy may read (`allowed`) plus what the kernel may take in on the writer's
/// leg (the proxy's receive buffer, autotuned up to `tcp_rmem`'s maximum): a writer that gets
/// all of it out was not held back.
fn flat_out(allowed: usize) -> usize {
    allowed + kernel_max("tcp_rmem", 6 * MIB) + 8 * MIB
}

/// Writes `data` in 64 KiB pieces, counting what was written.
async fn write_counted<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    written: &AtomicUsize,
) -> std::io::Result<()> {
    for chunk in data.chunks(64 * KIB) {
        w.write_all(chunk).await?;
        w.flush().await?;
        written.fetch_add(chunk.len(), Ordering::Relaxed);
    }
    Ok(())
}

/// Reads into `into` until it holds `want` bytes (`None`: until the end); says how it stopped.
async fn read_counted<R: AsyncRead + Unpin>(
    r: &mut R,
    into: &mut Vec<u8>,
    want: Option<usize>,
    read: &AtomicUsize,
) -> String {
    let mut buf = vec![0u8; 64 * KIB];
    while want.is_none_or(|want| into.len() < want) {
        match r.read(&mut buf).await {
            Ok(0) => return "the connection was closed".into(),
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                read.store(into.len(), Ordering::Relaxed);
            }
            Err(e) => return format!("read failed: {e}"),
        }
    }
    "complete".into()
}

/// Reads to the end of the connection; returns how it ended and what the other end had written
/// (`progress.written`) when `cut` first arrived (the proxy's sign that it cut the session).
async fn read_past_cut<R: AsyncRead + Unpin>(
    r: &mut R,
    into: &mut Vec<u8>,
    cut: &[u8],
    progress: &Progress,
) -> (String, Option<usize>) {
    let mut buf = vec![0u8; 64 * KIB];
    let mut written_at_cut = None;
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return ("the connection was closed".into(), written_at_cut),
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                progress.read.store(into.len(), Ordering::Relaxed);
                if written_at_cut.is_none() {
                    let from = into.len().saturating_sub(n + cut.len());
                    if find(&into[from..], cut).is_some() {
                        written_at_cut = Some(progress.written.load(Ordering::Relaxed));
                    }
                }
            }
            Err(e) => return (format!("read failed: {e}"), written_at_cut),
        }
    }
}

/// Where `got` stops being `want`, if it does.
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    let common = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    (common < got.len().max(want.len())).then_some(common)
}

/// Bytes around `at`, for a failure message.
fn around(bytes: &[u8], at: usize) -> String {
    let from = at.saturating_sub(120);
    let to = (at + 240).min(bytes.len());
    String::from_utf8_lossy(&bytes[from.min(to)..to]).into_owned()
}

/// The proxy's stream error in `bytes`, if there is one.
fn stream_error(bytes: &[u8]) -> Option<String> {
    let at = find(bytes, b"<stream:error")?;
    let end = find(&bytes[at..], b"</stream:error>").map_or(bytes.len(), |e| at + e + 15);
    Some(String::from_utf8_lossy(&bytes[at..end]).into_owned())
}

#[derive(Default)]
struct Progress {
    written: AtomicUsize,
    read: AtomicUsize,
}

/// How an end of the exchange uses its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Reads nothing while it writes: writes everything, then reads.
    WriteThenRead,
    /// Reads all along while it writes.
    Duplex,
}

/// What one end of the exchange did.
struct End {
    write: std::io::Result<()>,
    /// When it stopped writing (from the start of the exchange).
    wrote_at: Duration,
    received: Vec<u8>,
    read_end: String,
}

/// Writes all of `out` and reads `expect` bytes, in `style`.
async fn exchange_end<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    mut received: Vec<u8>,
    out: Arc<Vec<u8>>,
    expect: usize,
    style: Style,
    progress: Arc<Progress>,
    started: Instant,
) -> (End, S) {
    let (mut r, mut w) = tokio::io::split(s);
    let write = async {
        let result = write_counted(&mut w, &out, &progress.written).await;
        (result, started.elapsed())
    };
    let ((write, wrote_at), read_end) = match style {
        Style::WriteThenRead => {
            let wrote = write.await;
            let read_end = read_counted(&mut r, &mut received, Some(expect), &progress.read).await;
            (wrote, read_end)
        }
        Style::Duplex => {
            tokio::join!(
                write,
                read_counted(&mut r, &mut received, Some(expect), &progress.read)
            )
        }
    };
    let end = End {
        write,
        wrote_at,
        received,
        read_end,
    };
    (end, r.unsplit(w))
}

fn check_delivered(who: &str, end: &End, want: &[u8]) {
    if let Some(at) = first_difference(&end.received, want) {
        panic!(
            "{who} received {} of {} bytes ({}); they differ from what was sent at byte {at}; \
             the proxy's stream error: {:?}; received there: {:?}",
            end.received.len(),
            want.len(),
            end.read_end,
            stream_error(&end.received),
            around(&end.received, at)
        );
    }
}

/// Far more each way than the kernel's buffers and the proxy's hold.
const EACH_WAY: usize = 16 * MIB;

/// Client and server each write `EACH_WAY` bytes of messages at once, in their styles, and
/// read everything the other sent; each gets exactly what the other sent. `what`: the path, for
/// the failure messages.
async fn exchange<C, S>(
    what: &str,
    (client, client_rest, client_style): (C, Vec<u8>, Style),
    (server, server_rest, server_style): (S, Vec<u8>, Style),
) -> (C, S)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let c2s = Arc::new(from_client(EACH_WAY));
    let s2c = Arc::new(from_server(EACH_WAY));
    let (cp, sp) = (Arc::new(Progress::default()), Arc::new(Progress::default()));
    let started = Instant::now();
    let client_end = tokio::spawn(exchange_end(
        client,
        client_rest,
        c2s.clone(),
        s2c.len(),
        client_style,
        cp.clone(),
        started,
    ));
    let server_end = tokio::spawn(exchange_end(
        server,
        server_rest,
        s2c.clone(),
        c2s.len(),
        server_style,
        sp.clone(),
        started,
    ));
    let both = tokio::time::timeout(DEADLOCK, async { tokio::join!(client_end, server_end) })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: deadlocked: after {DEADLOCK:?} the client has written {} and read {} of \
                 {} bytes, the server written {} and read {} of {}",
                cp.written.load(Ordering::Relaxed),
                cp.read.load(Ordering::Relaxed),
                s2c.len(),
                sp.written.load(Ordering::Relaxed),
                sp.read.load(Ordering::Relaxed),
                c2s.len(),
            )
        });
    let took = started.elapsed();
    let (client_end, client) = both.0.expect("client task");
    let (server_end, server) = both.1.expect("server task");
    eprintln!(
        "{what}: client {client_style:?}, server {server_style:?}, {} KiB each way, {took:?}: \
         the client stopped writing after {:?} ({:?}), the server after {:?} ({:?})",
        EACH_WAY / KIB,
        client_end.wrote_at,
        client_end.write,
        server_end.wrote_at,
        server_end.write,
    );
    for (who, end, progress, out) in [
        ("the client", &client_end, &cp, &c2s),
        ("the server", &server_end, &sp, &s2c),
    ] {
        if let Err(e) = &end.write {
            panic!(
                "{what}: {who} could not write everything: {e} after {:?}, {} of {} bytes \
                 written (the session was cut); the client read {} bytes ({}), with the stream \
                 error {:?}; the server read {} bytes ({})",
                end.wrote_at,
                progress.written.load(Ordering::Relaxed),
                out.len(),
                client_end.received.len(),
                client_end.read_end,
                stream_error(&client_end.received),
                server_end.received.len(),
                server_end.read_end,
            );
        }
    }
    check_delivered("the client", &client_end, &s2c);
    check_delivered("the server", &server_end, &c2s);
    (client, server)
}

/// Through the proxy (`--write-timeout 20`), then a close from the client, relayed and answered:
/// the session was not cut.
async fn exchange_through_the_proxy(client_style: Style, server_style: Style) {
    let _serial = SERIAL.lock().await;
    let (_fake, _proxy, client, upstream) = logged_in("20").await;
    let (mut client, mut server) = exchange(
        "through the proxy",
        (client.stream, client.rest, client_style),
        (upstream.stream, upstream.rest, server_style),
    )
    .await;

    client
        .write_all(b"</stream:stream>")
        .await
        .expect("client close");
    let mut seen = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        read_counted(&mut server, &mut seen, None, &AtomicUsize::new(0)).await
    })
    .await;
    assert!(
        find(&seen, b"</stream:stream>").is_some(),
        "the server got no close after the exchange ({end:?}): {}",
        String::from_utf8_lossy(&seen)
    );
    let _ = server.write_all(b"</stream:stream>").await;
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        read_counted(&mut client, &mut seen, None, &AtomicUsize::new(0)).await
    })
    .await;
    assert!(
        find(&seen, b"</stream:stream>").is_some() && stream_error(&seen).is_none(),
        "the client got no clean close after the exchange: {}",
        String::from_utf8_lossy(&seen)
    );
}

/// The server does not read while it writes; the client reads all along. A half-duplex pump
/// deadlocks: blocked writing to the server, it does not read the server, whose writes block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_read_while_it_writes() {
    exchange_through_the_proxy(Style::Duplex, Style::WriteThenRead).await;
}

/// The mirror: the client does not read while it writes; the server reads all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_while_it_writes() {
    exchange_through_the_proxy(Style::WriteThenRead, Style::Duplex).await;
}

/// The control: both exchanges over a bare loopback TCP connection (the same small buffers on
/// both ends) complete, so the tests above ask of the proxy nothing a socket pair can't do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_exchanges_complete_over_a_bare_connection() {
    let _serial = SERIAL.lock().await;
    for (client_style, server_style) in [
        (Style::Duplex, Style::WriteThenRead),
        (Style::WriteThenRead, Style::Duplex),
    ] {
        let fake = FakeUpstream::start(SMALL).await;
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        let size = SMALL.unwrap();
        sock.set_recv_buffer_size(size).unwrap();
        sock.set_send_buffer_size(size).unwrap();
        let (client, server) = tokio::join!(sock.connect(fake.addr), fake.accept());
        exchange(
            "bare TCP",
            (client.expect("connect"), Vec::new(), client_style),
            (server.expect("accept"), Vec::new(), server_style),
        )
        .await;
    }
}

/// The proxy (silent strategy, `--write-timeout` as given) between a raw client and the scripted
/// upstream, both logged in; the proxy runs as long as its handle is kept.
async fn logged_in(
    write_timeout: &str,
) -> (
    FakeUpstream,
    proxy::TestProxy,
    RawClient,
    common::raw::Upstream,
) {
    let fake = FakeUpstream::start(SMALL).await;
    let proxy = proxy::start(
        fake.addr,
        "plain",
        &[
            "--invisibility-strategy",
            "silent",
            "--write-timeout",
            write_timeout,
        ],
    )
    .await;
    let (client, upstream) =
        tokio::join!(RawClient::login(proxy.direct_tls, SMALL), fake.session());
    (
        fake,
        proxy,
        client.expect("client login"),
        upstream.expect("upstream login"),
    )
}

/// Waits until the proxy holds no client connection (the session has ended and counted).
async fn wait_no_connection() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy::metric("xmpp_veil_connections_active") > 0.0 {
        assert!(Instant::now() < deadline, "the session did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const STALL_TIMEOUT: &str = "3";

/// The server reads nothing while the client writes flat out: the proxy stops reading the
/// client, and cuts the session at `--write-timeout` with `remote-connection-failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_read_stops_the_proxy_reading_the_client() {
    let _serial = SERIAL.lock().await;
    let (fake, _proxy, client, upstream) = logged_in(STALL_TIMEOUT).await;
    // In the kernel on the stalled leg: the proxy's send buffer and the server's receive buffer.
    let allowed = kernel_send_max() + fake.buffers.recv as usize + PROXY_ALLOWANCE;
    let data = from_client(flat_out(allowed));
    let before = proxy::metric(C2S);

    let progress = Arc::new(Progress::default());
    let (mut r, mut w) = tokio::io::split(client.stream);
    let writer = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let r = write_counted(&mut w, &data, &progress.written).await;
            (r, data.len())
        })
    };
    let mut received = client.rest;
    let (end, at_cut) = tokio::time::timeout(
        DEADLOCK,
        read_past_cut(&mut r, &mut received, b"<stream:error", &progress),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the session was not cut within {DEADLOCK:?} (write timeout {STALL_TIMEOUT} s); \
             the client has written {} bytes",
            progress.written.load(Ordering::Relaxed)
        )
    });
    let (write, attempted) = tokio::time::timeout(DEADLOCK, writer)
        .await
        .expect("the client's writes neither finished nor failed after the cut")
        .expect("writer");
    wait_no_connection().await;
    let read = (proxy::metric(C2S) - before) as usize;
    let written = progress.written.load(Ordering::Relaxed);
    eprintln!(
        "client wrote {at_cut:?} bytes before the cut, {written} of {attempted} in all \
         ({write:?}); the proxy read {read}, {allowed} allowed; the client's read ended: {end}"
    );
    let error = stream_error(&received);
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("<remote-connection-failed")),
        "the client got no remote-connection-failed: {error:?}"
    );
    // (After the cut the writes fail; a proxy that drained the client would let them finish.)
    let at_cut = at_cut.expect("no stream error");
    assert!(
        at_cut < attempted,
        "the client had written all {attempted} bytes when the session was cut: nothing held \
         it back"
    );
    assert!(
        read <= allowed,
        "the proxy read {read} bytes from the client while the server read none: more than the \
         kernel's buffers on the server's leg and {PROXY_ALLOWANCE} bytes of its own ({allowed})"
    );
    drop(upstream);
}

/// The client reads nothing while the server writes flat out: the proxy stops reading the
/// server, and at `--write-timeout` ends the upstream stream (`</stream:stream>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_stops_the_proxy_reading_the_server() {
    let _serial = SERIAL.lock().await;
    let (_fake, _proxy, client, upstream) = logged_in(STALL_TIMEOUT).await;
    // In the kernel on the stalled leg: the proxy's send buffer and the client's receive buffer
    // (which hold TLS records, larger than the bytes they carry).
    let allowed = kernel_send_max() + client.buffers.recv as usize + PROXY_ALLOWANCE;
    let data = from_server(flat_out(allowed));
    let before = proxy::metric(S2C);

    let progress = Arc::new(Progress::default());
    let (mut r, mut w) = tokio::io::split(upstream.stream);
    let data = Arc::new(data);
    let writer = {
        let (progress, data) = (progress.clone(), data.clone());
        tokio::spawn(async move { write_counted(&mut w, &data, &progress.written).await })
    };
    let mut to_server = upstream.rest;
    let (end, at_cut) = tokio::time::timeout(
        DEADLOCK,
        read_past_cut(&mut r, &mut to_server, b"</stream:stream>", &progress),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the session was not cut within {DEADLOCK:?} (write timeout {STALL_TIMEOUT} s); \
             the server has written {} bytes",
            progress.written.load(Ordering::Relaxed)
        )
    });
    let write = tokio::time::timeout(DEADLOCK, writer)
        .await
        .expect("the server's writes neither finished nor failed after the cut")
        .expect("writer");
    wait_no_connection().await;
    let read = (proxy::metric(S2C) - before) as usize;
    let written = progress.written.load(Ordering::Relaxed);
    eprintln!(
        "server wrote {at_cut:?} bytes before the cut, {written} of {} in all ({write:?}); the \
         proxy read {read}, {allowed} allowed; the server's read ended: {end}",
        data.len()
    );
    assert!(
        find(&to_server, b"</stream:stream>").is_some(),
        "the proxy did not end the upstream stream: {}",
        String::from_utf8_lossy(&to_server)
    );
    // (Its writes may finish after the cut: the proxy reads what the server still sends while
    // it waits for the server's close.)
    let at_cut = at_cut.expect("no close");
    assert!(
        at_cut < data.len(),
        "the server had written all {} bytes when the proxy closed the stream: nothing held it \
         back",
        data.len()
    );
    assert!(
        read <= allowed,
        "the proxy read {read} bytes from the server while the client read none: more than the \
         kernel's buffers on the client's leg and {PROXY_ALLOWANCE} bytes of its own ({allowed})"
    );

    // What the client got is what the server sent, in order, up to where it stopped (then at
    // most the start of a stream error).
    let mut stream = client.stream;
    let mut received = client.rest;
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        read_counted(&mut stream, &mut received, None, &AtomicUsize::new(0)),
    )
    .await;
    let common = first_difference(&received, &data).unwrap_or(received.len());
    let tail = &received[common..];
    assert!(
        tail.is_empty() || tail.starts_with(b"<stream:error") || b"<stream:error".starts_with(tail),
        "the client's {} bytes differ from the server's at byte {common}: {:?}",
        received.len(),
        around(&received, common)
    );
    assert!(common > 0, "the client received none of the server's bytes");
}

/// A client that never reads while it floods requests the proxy answers itself (`<compress/>`:
/// the proxy refuses compression) must not make the answers pile up in the proxy: it stops
/// reading that client, whose session is cut at `--write-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answers_stops_the_proxy_reading_it() {
    let _serial = SERIAL.lock().await;
    let (_fake, _proxy, client, upstream) = logged_in(STALL_TIMEOUT).await;
    // The answers wait in the kernel on the client's leg, plus what the proxy may hold.
    let allowed = kernel_send_max() + client.buffers.recv as usize + PROXY_ALLOWANCE;
    let request =
        b"<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>";
    let data: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(flat_out(allowed) / request.len() * request.len())
        .collect();
    let before = proxy::metric(C2S);
    let progress = Arc::new(Progress::default());
    let (_r, mut w) = tokio::io::split(client.stream);
    let attempted = data.len();
    let write = tokio::time::timeout(DEADLOCK, write_counted(&mut w, &data, &progress.written))
        .await
        .expect("the client's writes neither finished nor failed: the session was not cut");
    wait_no_connection().await;
    let read = (proxy::metric(C2S) - before) as usize;
    let written = progress.written.load(Ordering::Relaxed);
    eprintln!(
        "client wrote {written} of {attempted} ({write:?}); the proxy read {read}, {allowed} allowed"
    );
    assert!(
        write.is_err() && written < attempted,
        "the client wrote all {attempted} bytes of requests without reading an answer: nothing \
         held it back"
    );
    assert!(
        read <= allowed,
        "the proxy read {read} bytes of requests from a client that reads none of the answers: \
         more than the kernel's buffers on its leg and {PROXY_ALLOWANCE} bytes of its own \
         ({allowed})"
    );
    drop(upstream);
}
