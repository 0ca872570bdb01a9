use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use xmpp_veil::config::Command;
use xmpp_veil::config_file::{self, Error};
use xmpp_veil::health::Health;
use xmpp_veil::server::Proxy;

#[tokio::main]
async fn main() -> ExitCode {
    // To stderr (as documented); colours only on a terminal: a log file or the journal gets
    // plain `key=value` fields.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match config_file::parse() {
        Ok(c) => c,
        Err(Error::Clap(e)) if !e.use_stderr() => e.exit(), // --help, --version
        Err(Error::Clap(e)) => {
            // Exit status 1 (not clap's 2), as `check` promises: 0 fine, 1 anything wrong.
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        Err(Error::File(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Check) = config.command {
        return xmpp_veil::check::run(&config).await;
    }
    let health = Health::new(&config.upstream);
    let served = match xmpp_veil::metrics::install() {
        Ok(handle) => xmpp_veil::health::serve(config.metrics_listen, handle, health.clone()).await,
        Err(e) => Err(e),
    };
    if let Err(e) = served {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    let proxy = match Proxy::start(&config).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    proxy.certs.clone().watch();
    health.set_listening();
    // systemd (Type=notify): ready once every listener is bound. Outside systemd: nothing.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(upstream = %config.upstream, mode = ?config.upstream_tls, "xmpp-veil running");
    wait_for_signal(&proxy).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    health.set_draining();
    proxy.shutdown().await;
    ExitCode::SUCCESS
}

/// Until SIGINT or SIGTERM; SIGHUP reloads the certificates (sessions are kept).
async fn wait_for_signal(proxy: &Proxy) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                tracing::info!("SIGHUP: reloading the certificates");
                let _ = proxy.certs.reload();
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
        }
    }
}
