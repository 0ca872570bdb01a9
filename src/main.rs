use clap::Parser;
use tracing_subscriber::EnvFilter;

use xmpp_veil::config::Config;
use xmpp_veil::health::Health;
use xmpp_veil::server::Proxy;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let health = Health::new(&config.upstream);
    let served = match xmpp_veil::metrics::install() {
        Ok(handle) => xmpp_veil::health::serve(config.metrics_listen, handle, health.clone()).await,
        Err(e) => Err(e),
    };
    if let Err(e) = served {
        tracing::error!("{e}");
        return std::process::ExitCode::FAILURE;
    }
    let proxy = match Proxy::start(&config).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    health.set_listening();
    tracing::info!(upstream = %config.upstream, mode = ?config.upstream_tls, "xmpp-veil running");
    wait_for_signal().await;
    health.set_draining();
    proxy.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
