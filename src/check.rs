//! `xmpp-veil check`: the configuration, the certificates and the upstream, as an operator
//! checks them before a (re)start. Prints one line per finding; exit status 1 on any error.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::{Config, UpstreamTls};
use crate::ns;
use crate::stream::errors::Condition;
use crate::stream::upstream::{self, Upstream, UpstreamConfig};
use crate::stream::{StreamHeader, read_element};
use crate::xml::{Element, Frame, Framer};

/// A certificate closer to expiry than this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The server answered `host-unknown` for the domain.
const HOST_UNKNOWN: &str = Condition::HostUnknown.as_str();

#[derive(Default)]
struct Report {
    errors: usize,
}

impl Report {
    fn ok(&mut self, msg: impl AsRef<str>) {
        println!("ok:      {}", msg.as_ref());
    }
    fn warn(&mut self, msg: impl AsRef<str>) {
        println!("warning: {}", msg.as_ref());
    }
    fn error(&mut self, msg: impl AsRef<str>) {
        self.errors += 1;
        println!("error:   {}", msg.as_ref());
    }
}

pub async fn run(config: &Config) -> ExitCode {
    let mut r = Report::default();
    match &config.config {
        Some(path) => r.ok(format!("configuration file {} read", path.display())),
        None => r.ok("no configuration file: flags and environment only"),
    }
    let domains = certificates(config, &mut r);
    upstream_features(config, &domains, &mut r).await;
    if r.errors == 0 {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        println!(
            "{} error(s): fix them before (re)starting xmpp-veil",
            r.errors
        );
        ExitCode::FAILURE
    }
}

/// Checks every pair; returns the domains they cover (for the upstream check).
fn certificates(config: &Config, r: &mut Report) -> Vec<String> {
    if config.cert.len() != config.key.len() {
        r.error(format!(
            "{} cert but {} key: give one key per certificate, in the same order",
            config.cert.len(),
            config.key.len()
        ));
        return Vec::new();
    }
    if config.cert.is_empty() {
        r.warn("no cert/key: the built-in DEVELOPMENT certificate for localhost would be used (its key is public)");
        return vec!["localhost".into()];
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut domains: Vec<String> = Vec::new();
    for (cert, key) in config.cert.iter().zip(&config.key) {
        let info = match crate::certs::load_pair(cert, key) {
            Ok((_, info)) => info,
            Err(e) => {
                r.error(format!("certificate: {e}"));
                continue;
            }
        };
        let what = format!(
            "certificate {} for {}",
            cert.display(),
            info.names.join(", ")
        );
        let days = (info.not_after - now) / 86_400;
        if info.names.is_empty() {
            r.error(format!("{what}: no DNS name in it"));
        } else if info.not_after <= now {
            r.error(format!("{what}: EXPIRED {} days ago", -days));
        } else if info.not_before > now {
            r.error(format!("{what}: not valid yet"));
        } else if info.not_after - now < EXPIRY_WARNING.as_secs() as i64 {
            r.warn(format!("{what}: expires in {days} days; key matches"));
        } else {
            r.ok(format!("{what}: key matches, valid for {days} more days"));
        }
        for name in &info.names {
            if domains.contains(name) {
                r.warn(format!(
                    "{name} is in more than one certificate: the first one is served"
                ));
            } else {
                domains.push(name.clone());
            }
        }
    }
    domains
}

/// Connects as the proxy would for each domain's first session and reports what the server
/// offers before authentication.
async fn upstream_features(config: &Config, domains: &[String], r: &mut Report) {
    let tls = match crate::tls::client_config(config) {
        Ok(tls) => tls,
        Err(e) => {
            r.error(format!("upstream TLS settings: {e}"));
            return;
        }
    };
    let cfg = UpstreamConfig {
        addr: config.upstream.clone(),
        mode: config.upstream_tls,
        tls,
        max_stanza_size: config.max_stanza_size(),
        // With PROXY protocol out, the header names the check's own connection.
        proxy_protocol: config.upstream_proxy_protocol,
    };
    let mut domains: Vec<&str> = domains
        .iter()
        .map(String::as_str)
        .filter(|d| !d.starts_with("*."))
        .collect();
    if domains.is_empty() {
        domains.push(config.upstream_host());
    }
    for domain in domains {
        let what = format!(
            "upstream {} ({:?}) for {domain}",
            config.upstream, config.upstream_tls
        );
        let attempt = async {
            let up = upstream::connect(&cfg, domain, None)
                .await
                .map_err(|e| e.reason)?;
            match up {
                Upstream::Plain(mut s) => features(&mut s, domain, cfg.max_stanza_size).await,
                Upstream::Tls(mut s) => features(&mut *s, domain, cfg.max_stanza_size).await,
            }
        };
        match tokio::time::timeout(config.upstream_connect_timeout(), attempt).await {
            Err(_) => r.error(format!(
                "{what}: no answer within {:?}",
                config.upstream_connect_timeout()
            )),
            Ok(Err(e)) if e.starts_with(HOST_UNKNOWN) => r.warn(format!(
                "{what}: the server does not serve this domain (fine for a component's name; \
                 clients of this domain cannot log in through the proxy)"
            )),
            Ok(Err(e)) => r.error(format!("{what}: {e}")),
            Ok(Ok(f)) => report_features(config, &what, &f, r),
        }
    }
}

fn report_features(config: &Config, what: &str, f: &Element, r: &mut Report) {
    let tls = match config.upstream_tls {
        UpstreamTls::Plain if f.child("starttls", ns::TLS).is_some() => {
            "plaintext (the server also offers STARTTLS)".to_owned()
        }
        UpstreamTls::Plain => "plaintext: keep it on loopback or a private network".to_owned(),
        UpstreamTls::Starttls => "STARTTLS, server certificate verified".to_owned(),
        UpstreamTls::Direct => "direct TLS, server certificate verified".to_owned(),
    };
    r.ok(format!("{what}: reachable; {tls}"));
    if config.upstream_insecure && config.upstream_tls != UpstreamTls::Plain {
        r.warn("upstream-insecure: the server certificate is NOT verified");
    }
    let mechanisms: Vec<String> = f
        .child("mechanisms", ns::SASL)
        .map(|m| m.elements().map(Element::text).collect())
        .unwrap_or_default();
    if mechanisms.is_empty() {
        r.error(format!(
            "{what}: no SASL mechanism offered (does the server allow authentication on this connection? Prosody: c2s_require_encryption / allow_unencrypted_plain_auth)"
        ));
    } else {
        r.ok(format!("{what}: SASL {}", mechanisms.join(" ")));
        if mechanisms.iter().any(|m| m.ends_with("-PLUS")) {
            r.ok("SCRAM -PLUS mechanisms will be removed from the clients' offer (channel binding cannot cross the proxy)");
        }
    }
    let sm = [ns::SM3, ns::SM2]
        .into_iter()
        .find(|ns| f.child("sm", ns).is_some());
    match sm {
        Some(ns) => r.ok(format!("{what}: stream management ({ns}) offered")),
        None => r.ok(format!(
            "{what}: stream management and privacy lists are offered after authentication; not visible to check"
        )),
    }
}

/// Opens a stream for `domain` and returns the server's features, then closes the stream.
async fn features<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    domain: &str,
    max: usize,
) -> Result<Element, String> {
    io.write_all(&crate::stream::errors::server_stream_header(domain))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut framer = Framer::new(max);
    let bad = |e: crate::stream::ReadError| format!("reading the server's stream: {e:?}");
    let header = match read_element(io, &mut framer).await.map_err(bad)? {
        Frame::StreamHeader(raw) => StreamHeader::parse(&raw).map_err(|e| e.to_string())?,
        _ => return Err("the server did not open a stream".into()),
    };
    let prefixes = header.prefix_refs();
    let raw = match read_element(io, &mut framer).await.map_err(bad)? {
        Frame::Element { raw, .. } => raw,
        _ => return Err("the server closed its stream".into()),
    };
    let f = Element::parse(&raw, ns::CLIENT, &prefixes).map_err(|e| e.to_string())?;
    if f.name == "error" {
        let condition = f
            .elements()
            .next()
            .map_or("unknown".to_owned(), |c| c.name.clone());
        if Condition::from_name(&condition) == Condition::HostUnknown {
            return Err(HOST_UNKNOWN.into());
        }
        return Err(format!(
            "the server answered with the stream error {condition}"
        ));
    }
    let _ = io.write_all(b"</stream:stream>").await;
    Ok(f)
}
