use clap::Parser;
use tracing_subscriber::EnvFilter;

use xmpp_veil::config::Config;
use xmpp_veil::server::Proxy;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // To stderr (as documented); colours only on a terminal: a log file or the journal gets
    // plain `key=value` fields.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    if let Err(e) = xmpp_veil::metrics::install(config.metrics_listen) {
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
    tracing::info!(upstream = %config.upstream, mode = ?config.upstream_tls, "xmpp-veil running");
    wait_for_signal().await;
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
