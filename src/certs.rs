//! The proxy's certificates: one per domain (`--cert`/`--key` pairs), chosen by SNI, or by the
//! stream's `to` on a STARTTLS port when the client sends no SNI; the first one otherwise.
//! Reloaded on SIGHUP and when the files change; a reload that fails keeps what is served.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, crypto::CryptoProvider};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Config;
use crate::metrics as m;

/// How often the files' modification times are compared; a change is loaded once it has been
/// stable for one interval (Let's Encrypt clients replace the chain and the key one by one).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What was read from one certificate file.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub cert: PathBuf,
    /// DNS names (subjectAltName, else the subject's CN), lower case.
    pub names: Vec<String>,
    /// notBefore / notAfter, Unix time.
    pub not_before: i64,
    pub not_after: i64,
}

/// One certificate with its key, checked to match.
struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// Reads and checks one pair: PEM readable, the key matches the certificate, names and dates.
pub fn load_pair(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Arc<CertifiedKey>, CertInfo), String> {
    let chain = crate::tls::read_certs(cert)?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let (ck, info) = certified(chain, key_der, cert.to_path_buf())
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
    Ok((ck, info))
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    path: PathBuf,
) -> Result<(Arc<CertifiedKey>, CertInfo), String> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    let info = cert_info(&chain[0], path)?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| format!("the private key does not belong to the certificate ({e})"))?;
    Ok((Arc::new(ck), info))
}

/// Names and validity of a DER certificate.
pub fn cert_info(der: &CertificateDer<'_>, path: PathBuf) -> Result<CertInfo, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(CertInfo {
        cert: path,
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Whether `name` (lower case) is covered by the certificate name `pattern` (`*.` = one label).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Chooses by SNI among the loaded certificates; `default` when no name matches.
#[derive(Debug)]
struct Resolver {
    all: Arc<Vec<(Vec<String>, Arc<CertifiedKey>)>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            self.all
                .iter()
                .find(|(names, _)| names.iter().any(|p| name_matches(p, &sni)))
                .map(|(_, k)| k.clone())
        });
        Some(chosen.unwrap_or_else(|| self.default.clone()))
    }
}

/// One generation of certificates: a TLS configuration per certificate (each choosing by SNI,
/// with its own certificate as the fallback); the first is the proxy's default.
pub struct Generation {
    configs: Vec<Arc<ServerConfig>>,
    names: Vec<Vec<String>>,
    pub infos: Vec<CertInfo>,
}

impl Generation {
    fn build(loaded: Vec<Loaded>) -> Result<Generation, String> {
        let all: Arc<Vec<_>> = Arc::new(
            loaded
                .iter()
                .map(|l| (l.info.names.clone(), l.key.clone()))
                .collect(),
        );
        let mut configs = Vec::new();
        for l in &loaded {
            let mut tls = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Resolver {
                    all: all.clone(),
                    default: l.key.clone(),
                }));
            tls.alpn_protocols = vec![crate::tls::ALPN_XMPP_CLIENT.to_vec()];
            configs.push(Arc::new(tls));
        }
        Ok(Generation {
            names: loaded.iter().map(|l| l.info.names.clone()).collect(),
            infos: loaded.into_iter().map(|l| l.info).collect(),
            configs,
        })
    }

    /// The configuration for a client that may send SNI.
    pub fn default_config(&self) -> Arc<ServerConfig> {
        self.configs[0].clone()
    }

    /// The configuration for a stream addressed to `domain` (STARTTLS port): SNI still wins.
    pub fn config_for(&self, domain: &str) -> Arc<ServerConfig> {
        let domain = domain.to_ascii_lowercase();
        let domain = domain.trim_end_matches('.');
        self.names
            .iter()
            .position(|names| names.iter().any(|p| name_matches(p, domain)))
            .map_or_else(|| self.default_config(), |i| self.configs[i].clone())
    }
}

/// File identity for change detection: modification time and length of each file.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// The certificates in service, replaced as a whole by a successful reload.
pub struct CertStore {
    pairs: Vec<(PathBuf, PathBuf)>,
    current: RwLock<Arc<Generation>>,
    /// Stamps of the files last loaded, and of a change waiting to settle.
    stamps: Mutex<(Stamps, Option<Stamps>)>,
}

impl CertStore {
    /// Loads every pair of the configuration (the development pair when none is given).
    pub fn load(config: &Config) -> Result<Arc<CertStore>, String> {
        if config.cert.len() != config.key.len() {
            return Err(format!(
                "{} --cert but {} --key: give one key per certificate, in the same order",
                config.cert.len(),
                config.key.len()
            ));
        }
        let pairs: Vec<_> = config
            .cert
            .iter()
            .cloned()
            .zip(config.key.iter().cloned())
            .collect();
        let stamps = stamps(&pairs);
        let generation = if pairs.is_empty() {
            tracing::warn!(
                "no --cert/--key given: using the DEVELOPMENT certificate for localhost from certs/; \
                 its private key is public, never use it in production"
            );
            let chain = CertificateDer::pem_slice_iter(crate::tls::DEV_CERT)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("built-in dev certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(crate::tls::DEV_KEY)
                .map_err(|e| format!("built-in dev key: {e}"))?;
            let (key, info) = certified(chain, key, "(built-in development pair)".into())?;
            Generation::build(vec![Loaded { key, info }])?
        } else {
            load_all(&pairs)?
        };
        publish(&generation, "ok");
        Ok(Arc::new(CertStore {
            pairs,
            current: RwLock::new(Arc::new(generation)),
            stamps: Mutex::new((stamps, None)),
        }))
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads every file again; on any error the certificates in service stay, and the error is
    /// logged and counted. Sessions are never touched: new handshakes use the new generation.
    pub fn reload(&self) -> Result<(), String> {
        if self.pairs.is_empty() {
            return Ok(());
        }
        let stamps = stamps(&self.pairs);
        let result = load_all(&self.pairs);
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = (stamps, None);
        match result {
            Ok(generation) => {
                publish(&generation, "ok");
                for info in &generation.infos {
                    tracing::info!(cert = %info.cert.display(), names = ?info.names, not_after = info.not_after, "certificate loaded");
                }
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(generation);
                Ok(())
            }
            Err(e) => {
                metrics::counter!(m::CERTIFICATE_RELOADS, "result" => "failed").increment(1);
                tracing::error!(error = %e, "certificate reload failed; still serving the previous certificates");
                Err(e)
            }
        }
    }

    /// Polls the files and reloads once a change has settled, until the process ends.
    pub fn watch(self: Arc<Self>) {
        if self.pairs.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                tick.tick().await;
                let now = stamps(&self.pairs);
                let settled = {
                    let mut s = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
                    if now == s.0 {
                        s.1 = None;
                        false
                    } else if s.1.as_ref() == Some(&now) {
                        true
                    } else {
                        s.1 = Some(now);
                        false
                    }
                };
                if settled {
                    tracing::info!("certificate files changed: reloading");
                    let _ = self.reload();
                }
            }
        });
    }
}

/// The client leg's TLS acceptor: the certificate generation current at each handshake.
#[derive(Clone)]
pub struct Acceptor(pub Arc<CertStore>);

impl Acceptor {
    /// TLS handshake; the certificate is chosen by SNI, else by `domain` (the stream's `to` on a
    /// STARTTLS port), else the first one.
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        domain: Option<&str>,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<IO>> {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let generation = self.0.current();
        let config = match (start.client_hello().server_name(), domain) {
            (None, Some(domain)) => generation.config_for(domain),
            _ => generation.default_config(),
        };
        start.into_stream(config).await
    }
}

fn stamps(pairs: &[(PathBuf, PathBuf)]) -> Stamps {
    pairs
        .iter()
        .flat_map(|(c, k)| [c, k])
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn load_all(pairs: &[(PathBuf, PathBuf)]) -> Result<Generation, String> {
    let mut loaded = Vec::new();
    for (cert, key) in pairs {
        let (key, info) = load_pair(cert, key)?;
        if info.names.is_empty() {
            return Err(format!(
                "{}: no DNS name in the certificate",
                cert.display()
            ));
        }
        loaded.push(Loaded { key, info });
    }
    Generation::build(loaded)
}

/// Expiry gauges and the load counter.
fn publish(generation: &Generation, result: &'static str) {
    metrics::counter!(m::CERTIFICATE_RELOADS, "result" => result).increment(1);
    for info in &generation.infos {
        for name in &info.names {
            metrics::gauge!(m::CERTIFICATE_EXPIRY_SECONDS, "domain" => name.clone())
                .set(info.not_after as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("example.org", "example.org"));
        assert!(name_matches("*.example.org", "chat.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", "a.b.example.org"));
        assert!(!name_matches("example.org", "evil-example.org"));
    }
}
