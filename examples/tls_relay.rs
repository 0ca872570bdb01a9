//! The benchmark's physical limit for a TLS-terminating proxy: accept direct TLS (tokio-rustls,
//! ALPN `xmpp-client`, the same certificate and ring provider as xmpp-veil), connect to the
//! upstream in plaintext, and copy bytes both ways with `tokio::io::copy_bidirectional`. No XML
//! is looked at.
//!
//! ```sh
//! cargo run --release --example tls_relay -- --listen 127.0.0.1:5297 --upstream 127.0.0.1:5299
//! ```
//!
//! Loopback addresses only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Parser)]
#[command(about = "Raw TLS-terminating byte relay (benchmark baseline, loopback only)")]
struct Args {
    /// Direct-TLS listener.
    #[arg(long)]
    listen: SocketAddr,
    /// Plaintext upstream.
    #[arg(long)]
    upstream: SocketAddr,
    #[arg(long, default_value = "certs/localhost.pem")]
    cert: PathBuf,
    #[arg(long, default_value = "certs/localhost.key")]
    key: PathBuf,
    /// Tokio worker threads (default: one per core, as xmpp-veil).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() || !args.upstream.ip().is_loopback() {
        return Err("loopback addresses only".into());
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let acceptor = TlsAcceptor::from(xmpp_veil::tls::server_config_from_files(
        &args.cert, &args.key,
    )?);
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("{}: {e}", args.listen))?;
    println!(
        "tls_relay listen={} upstream={}",
        listener.local_addr().map_err(|e| e.to_string())?,
        args.upstream
    );
    let upstream = args.upstream;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(mut tls)) =
                tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp)).await
            else {
                return;
            };
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
        });
    }
}
