//! Operating the binary: every documented metric from the start, /healthz and /readyz,
//! draining after SIGTERM.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::binary::Binary;
use common::servers::{Kind, Server, ServerOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    common::binary::http_get(addr, path).await
}

/// The metric names of the README's Metrics table (the documented contract).
fn documented_metrics() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README has a Metrics section")
        .split("\n## ")
        .next()
        .unwrap();
    let names: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() >= 14,
        "README metrics table not found: {names:?}"
    );
    names
}

/// The names exported in a Prometheus text body (from the sample lines, not the comments).
fn exported_names(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn exported(names: &[String], metric: &str) -> bool {
    names.iter().any(|n| {
        n == metric
            || n.strip_prefix(metric)
                .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_before_any_client() {
    // The upstream is a closed port: nothing can have connected anywhere.
    let upstream = SocketAddr::from(([127, 0, 0, 1], common::servers::free_port()));
    let proxy = Binary::start(
        &[],
        &[
            ("XMPP_VEIL_UPSTREAM", upstream.to_string()),
            ("XMPP_VEIL_UPSTREAM_TLS", "plain".to_owned()),
        ],
    )
    .await;
    let (status, body) = get(proxy.metrics, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let names = exported_names(&body);
    let missing: Vec<_> = documented_metrics()
        .into_iter()
        .filter(|m| !exported(&names, m))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exported on a fresh proxy: {missing:?}\n{body}"
    );
    // Zero-valued, with their label sets (the harness's own probe of the client port counts as
    // a connection, so the connection counters are left out here).
    for series in [
        "xmpp_veil_invisible_sessions 0",
        "xmpp_veil_stanzas_total{direction=\"c2s\",kind=\"message\"} 0",
        "xmpp_veil_stream_errors_total{condition=\"policy-violation\"} 0",
        "xmpp_veil_sm_resumptions_total{result=\"failed\"} 0",
        "xmpp_veil_upstream_connect_seconds_count 0",
    ] {
        assert!(
            body.lines().any(|l| l == series),
            "no line {series:?} in\n{body}"
        );
    }
    // Upstream unreachable: alive but not ready, and the reason says which.
    assert_eq!(get(proxy.metrics, "/healthz").await.0, 200);
    let (status, why) = get(proxy.metrics, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("unreachable") && why.contains(&upstream.to_string()),
        "{why}"
    );
    assert_eq!(get(proxy.metrics, "/nothing").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_with_upstream_and_after_sigterm_never_ready() {
    let server = Server::start(
        ServerOpts::new(Kind::Prosody)
            .user("joe", "joe-pw")
            .require_tls(false),
    );
    let mut proxy = Binary::start(
        &[],
        &[
            ("XMPP_VEIL_UPSTREAM", server.c2s_addr().to_string()),
            ("XMPP_VEIL_UPSTREAM_TLS", "plain".to_owned()),
        ],
    )
    .await;
    let (status, body) = get(proxy.metrics, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("reachable"), "{body}");
    assert_eq!(get(proxy.metrics, "/healthz").await.0, 200);
    let joe = common::client::Client::connect(
        proxy.starttls,
        "joe",
        "joe-pw",
        common::client::Opts::new("p"),
    )
    .await
    .expect("joe through the binary");
    let (_, ok) = proxy.terminate(T).await;
    assert!(ok);
    joe.expect_stream_error("system-shutdown", T).await;
}

/// The drain itself is usually too short to observe from outside the process: the endpoint is
/// driven here in-process through the same lifecycle calls main() makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_lifecycle() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let health = xmpp_veil::health::Health::new(&upstream_addr.to_string());
    let addr = xmpp_veil::health::serve("127.0.0.1:0".parse().unwrap(), handle, health.clone())
        .await
        .expect("serve");
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not listening yet\n"));
    health.set_listening();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    health.set_draining();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "draining: shutting down\n"));
    assert_eq!(get(addr, "/healthz").await.0, 200, "alive while draining");
    drop(upstream);
}

// ---- certificates -------------------------------------------------------------------------

/// A throw-away CA made in the test, and leaves it signs.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// (certificate PEM, key PEM) for `names`, valid until `not_after` (year).
    fn leaf(&self, names: &[&str], not_after_year: i32) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn client(&self, sni: bool) -> std::sync::Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.enable_sni = sni;
        std::sync::Arc::new(cfg)
    }
}

/// Unix time of 1 January `year`, as the expiry gauge reports it.
fn jan1(year: i32) -> f64 {
    rcgen::date_time_ymd(year, 1, 1).unix_timestamp() as f64
}

/// A TLS handshake with the proxy, verified for `name` against the test CA: on the direct-TLS
/// port with SNI `name`, or (`starttls_to`) on the STARTTLS port with `to=name` and no SNI.
/// Returns the leaf certificate presented.
async fn presented(
    proxy: &Binary,
    ca: &TestCa,
    name: &str,
    starttls_to: bool,
) -> Result<Vec<u8>, String> {
    let addr = if starttls_to {
        proxy.starttls
    } else {
        proxy.direct_tls
    };
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    if starttls_to {
        tcp.write_all(
            format!(
                "<?xml version='1.0'?><stream:stream to='{name}' version='1.0' xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams'>"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent_starttls = false;
        while !String::from_utf8_lossy(&seen).contains("<proceed") {
            let n = tokio::time::timeout(T, tcp.read(&mut buf))
                .await
                .expect("STARTTLS in time")
                .unwrap();
            assert!(
                n > 0,
                "closed during STARTTLS: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
            if !sent_starttls && String::from_utf8_lossy(&seen).contains("</stream:features>") {
                tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                    .await
                    .unwrap();
                sent_starttls = true;
            }
        }
    }
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(ca.client(!starttls_to))
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok(leaf)
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

/// Polls /metrics until `series` has `want` (the file watcher works in the background).
async fn wait_metric(proxy: &Binary, series: &str, want: f64, within: Duration) {
    wait_metric_where(proxy, series, |v| v == want, within).await
}

/// Polls /metrics until `series` has a value that satisfies `ok`.
async fn wait_metric_where(
    proxy: &Binary,
    series: &str,
    ok: impl Fn(f64) -> bool,
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (_, body) = get(proxy.metrics, "/metrics").await;
        let v = metric_value(&body, series);
        if v.is_some_and(&ok) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {v:?} after {within:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_and_stream_to_reloaded_without_dropping_sessions() {
    let server = Server::start(
        ServerOpts::new(Kind::Prosody)
            .user("joe", "joe-pw")
            .require_tls(false),
    );
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = ca.leaf(&["a.test", "*.a.test"], 2031);
    let (b_cert, b_key) = ca.leaf(&["b.test"], 2032);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ap, ak, bp, bk) = (
        write("a.pem", &a_cert),
        write("a.key", &a_key),
        write("b.pem", &b_cert),
        write("b.key", &b_key),
    );
    let dev = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/localhost");
    // The session domain of the test server is localhost: its (dev) certificate comes first.
    let config = write(
        "xmpp-veil.toml",
        &format!(
            "upstream = '{}'\nupstream-tls = 'plain'\ncert = ['{dev}.pem', '{ap}', '{bp}']\n\
             key = ['{dev}.key', '{ak}', '{bk}']\n",
            server.c2s_addr()
        ),
    );
    let mut proxy = Binary::start(&["--config", &config], &[]).await;

    // Chosen by SNI on the direct-TLS port, and by the stream's `to` without SNI on STARTTLS.
    for starttls in [false, true] {
        assert_eq!(
            presented(&proxy, &ca, "a.test", starttls).await,
            Ok(der_of(&a_cert))
        );
        assert_eq!(
            presented(&proxy, &ca, "b.test", starttls).await,
            Ok(der_of(&b_cert))
        );
        assert_eq!(
            presented(&proxy, &ca, "chat.a.test", starttls).await,
            Ok(der_of(&a_cert))
        );
        // Another name gets the first certificate, which the test CA does not vouch for.
        let other = presented(&proxy, &ca, "c.test", starttls).await;
        assert!(other.is_err(), "c.test: {other:?}");
    }
    let (_, body) = get(proxy.metrics, "/metrics").await;
    for (domain, year) in [("a.test", 2031), ("*.a.test", 2031), ("b.test", 2032)] {
        let series = format!("xmpp_veil_certificate_expiry_seconds{{domain=\"{domain}\"}}");
        assert_eq!(
            metric_value(&body, &series),
            Some(jan1(year)),
            "{series}\n{body}"
        );
    }
    assert!(
        metric_value(
            &body,
            "xmpp_veil_certificate_expiry_seconds{domain=\"localhost\"}"
        )
        .is_some()
    );
    let b_expiry = "xmpp_veil_certificate_expiry_seconds{domain=\"b.test\"}";

    // A session that lives through every reload below.
    let joe = common::client::Client::connect(
        proxy.starttls,
        "joe",
        "joe-pw",
        common::client::Opts::new("p"),
    )
    .await
    .expect("joe");
    let ping = |n: u32| {
        let joe = &joe;
        async move {
            let id = format!("ping{n}");
            joe.send(&format!(
                "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
            joe.wait_for("ping answered", T, |s| s.is_iq_reply(&id))
                .await;
        }
    };
    ping(1).await;

    // The files change: picked up without a signal.
    let (b2_cert, b2_key) = ca.leaf(&["b.test"], 2033);
    write("b.key", &b2_key);
    write("b.pem", &b2_cert);
    wait_metric(&proxy, b_expiry, jan1(2033), Duration::from_secs(30)).await;
    assert_eq!(
        presented(&proxy, &ca, "b.test", false).await,
        Ok(der_of(&b2_cert))
    );
    ping(2).await;

    // A bad file: the old certificate stays, the failure is counted (on SIGHUP here).
    write(
        "b.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let failed = "xmpp_veil_certificate_reloads_total{result=\"failed\"}";
    let (_, body) = get(proxy.metrics, "/metrics").await;
    let failures = metric_value(&body, failed).unwrap_or(0.0);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) }, 0);
    // (The file watcher may count the same bad file too: at least one more failure.)
    wait_metric_where(&proxy, failed, |v| v >= failures + 1.0, T).await;
    assert_eq!(
        presented(&proxy, &ca, "b.test", false).await,
        Ok(der_of(&b2_cert))
    );
    let (_, body) = get(proxy.metrics, "/metrics").await;
    assert_eq!(metric_value(&body, b_expiry), Some(jan1(2033)));

    // A key that does not match its certificate: refused as well.
    let (_, body) = get(proxy.metrics, "/metrics").await;
    let failures = metric_value(&body, failed).unwrap_or(0.0);
    write("b.pem", &b_cert);
    assert_eq!(unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) }, 0);
    wait_metric_where(&proxy, failed, |v| v >= failures + 1.0, T).await;
    assert_eq!(
        presented(&proxy, &ca, "b.test", false).await,
        Ok(der_of(&b2_cert))
    );

    // Fixed, on SIGHUP: served at once; the session is still there.
    write("b.key", &b_key);
    assert_eq!(unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) }, 0);
    wait_metric(&proxy, b_expiry, jan1(2032), T).await;
    assert_eq!(
        presented(&proxy, &ca, "b.test", false).await,
        Ok(der_of(&b_cert))
    );
    ping(3).await;
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "the proxy exited"
    );
    let (_, ok) = proxy.terminate(T).await;
    assert!(ok);
}

// ---- xmpp-veil check ------------------------------------------------------------------------

/// Runs `xmpp-veil check --config FILE`: (exit success, stdout).
fn check(config: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-veil"))
        .args(["check", "--config"])
        .arg(config)
        .env("RUST_LOG", "off")
        .env_remove("XMPP_VEIL_UPSTREAM")
        .output()
        .expect("run xmpp-veil check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_certificates_and_the_upstream_features() {
    let server = Server::start(ServerOpts::new(Kind::Prosody).require_tls(false));
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let dev = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/localhost");
    let (b_cert, b_key) = ca.leaf(&["b.test"], 2099);
    let (old_cert, old_key) = ca.leaf(&["old.test"], 2021);
    write("b.pem", &b_cert);
    write("b.key", &b_key);
    write("old.pem", &old_cert);
    write("old.key", &old_key);
    let d = dir.path().display();
    let upstream = server.c2s_addr();

    // Good: plaintext upstream on loopback, the dev pair for localhost and b.test.
    let good = write(
        "good.toml",
        &format!(
            "upstream = '{upstream}'\nupstream-tls = 'plain'\n\
             cert = ['{dev}.pem', '{d}/b.pem']\nkey = ['{dev}.key', '{d}/b.key']\n"
        ),
    );
    let (ok, out) = check(&good);
    assert!(ok, "{out}");
    assert!(
        out.contains("configuration file") && out.contains("good.toml"),
        "{out}"
    );
    assert!(
        out.contains("for localhost") && out.contains("key matches"),
        "{out}"
    );
    assert!(out.contains("for b.test: key matches"), "{out}");
    assert!(out.contains("reachable; plaintext"), "{out}");
    assert!(
        out.contains("SASL ") && out.contains("SCRAM-SHA-1"),
        "{out}"
    );
    assert!(
        out.contains("for b.test: the server does not serve this domain"),
        "{out}"
    );
    assert!(out.contains("configuration OK"), "{out}");
    assert!(!out.contains("error:"), "{out}");

    // The file named by the environment instead of the flag; a flag (before `check`: only
    // --config may follow it) overrides a key of it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-veil"))
        .env("XMPP_VEIL_CONFIG", &good)
        .env("RUST_LOG", "off")
        .args([
            "--upstream",
            &format!("127.0.0.1:{}", common::servers::free_port()),
            "check",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("good.toml read"), "{text}");
    assert!(
        text.contains("connect 127.0.0.1:"),
        "the flag's upstream is used: {text}"
    );

    // STARTTLS to the same server, its certificate checked against the dev CA.
    let tls = write(
        "tls.toml",
        &format!(
            "upstream = '{upstream}'\nupstream-tls = 'starttls'\nupstream-ca = '{}'\n\
             cert = '{dev}.pem'\nkey = '{dev}.key'\n",
            common::client::dev_ca_path().display()
        ),
    );
    let (ok, out) = check(&tls);
    assert!(ok, "{out}");
    assert!(
        out.contains("STARTTLS, server certificate verified"),
        "{out}"
    );

    // Each problem is an error an operator can act on, and the exit status is 1.
    let closed = common::servers::free_port();
    for (name, text, expect) in [
        (
            "mismatch.toml",
            format!(
                "upstream = '{upstream}'\nupstream-tls = 'plain'\ncert = '{d}/b.pem'\nkey = '{dev}.key'\n"
            ),
            "the private key does not belong to the certificate",
        ),
        (
            "expired.toml",
            format!(
                "upstream = '{upstream}'\nupstream-tls = 'plain'\ncert = '{d}/old.pem'\nkey = '{d}/old.key'\n"
            ),
            "for old.test: EXPIRED",
        ),
        (
            "missing.toml",
            format!(
                "upstream = '{upstream}'\nupstream-tls = 'plain'\ncert = '{d}/none.pem'\nkey = '{d}/b.key'\n"
            ),
            "none.pem",
        ),
        (
            "closed.toml",
            format!(
                "upstream = '127.0.0.1:{closed}'\nupstream-tls = 'plain'\ncert = '{dev}.pem'\nkey = '{dev}.key'\n"
            ),
            "connect 127.0.0.1:",
        ),
        (
            "no-upstream.toml",
            "upstream-tls = 'plain'\n".to_owned(),
            "--upstream <UPSTREAM>",
        ),
        (
            "typo.toml",
            format!("upstream = '{upstream}'\nupstream-tsl = 'plain'\n"),
            "unknown key \"upstream-tsl\"",
        ),
        (
            "no-starttls.toml",
            format!(
                "upstream = '{upstream}'\nupstream-tls = 'direct'\nupstream-ca = '{}'\nupstream-connect-timeout = 3\n\
                 cert = '{dev}.pem'\nkey = '{dev}.key'\n",
                common::client::dev_ca_path().display()
            ),
            "upstream",
        ),
    ] {
        let path = write(name, &text);
        let (ok, out) = check(&path);
        assert!(!ok, "{name} passed:\n{out}");
        assert!(out.contains(expect), "{name}: no {expect:?} in\n{out}");
        if name != "typo.toml" && name != "no-upstream.toml" {
            assert!(out.contains("error(s): fix them"), "{name}\n{out}");
        }
    }
}

// ---- Grafana dashboard ----------------------------------------------------------------------

#[test]
fn the_dashboard_queries_only_documented_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana-dashboard.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    exprs.push(
        dash["templating"]["list"][1]["query"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let documented = documented_metrics();
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        // Every identifier that starts with the prefix is a metric name.
        for (i, _) in expr.match_indices("xmpp_veil_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| documented.iter().any(|d| d == b))
                .unwrap_or(&name)
                .to_owned();
            assert!(
                documented.contains(&base),
                "{name} in the dashboard is not in the README's metrics table ({expr})"
            );
            used.insert(base);
        }
    }
    let unused: Vec<_> = documented.iter().filter(|d| !used.contains(*d)).collect();
    assert!(
        unused.is_empty(),
        "documented metrics without a panel: {unused:?}"
    );
}
