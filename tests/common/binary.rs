//! The xmpp-veil binary run as an operator runs it, on free loopback ports.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::servers::free_ports;

pub struct Binary {
    pub child: Child,
    pub starttls: SocketAddr,
    pub direct_tls: SocketAddr,
    pub metrics: SocketAddr,
}

impl Binary {
    /// Starts the binary with the three listeners on free ports, `args` and `envs` added, and
    /// waits until it accepts connections.
    pub async fn start(args: &[&str], envs: &[(&str, String)]) -> Binary {
        Self::start_with_log(args, envs, None).await
    }

    /// Like [`Binary::start`], its standard error (the logs) written to `log` when given.
    pub async fn start_with_log(
        args: &[&str],
        envs: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> Binary {
        let ports = free_ports(3);
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let (starttls, direct_tls, metrics) = (addr(ports[0]), addr(ports[1]), addr(ports[2]));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xmpp-veil"));
        cmd.env("XMPP_VEIL_LISTEN", starttls.to_string())
            .env("XMPP_VEIL_LISTEN_DIRECT_TLS", direct_tls.to_string())
            .env("XMPP_VEIL_METRICS_LISTEN", metrics.to_string())
            .env("RUST_LOG", "warn")
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(log) = log {
            cmd.stderr(std::fs::File::create(log).expect("create log file"));
        }
        let child = cmd.spawn().expect("spawn xmpp-veil");
        let binary = Binary {
            child,
            starttls,
            direct_tls,
            metrics,
        };
        for a in [starttls, metrics] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while tokio::net::TcpStream::connect(a).await.is_err() {
                assert!(Instant::now() < deadline, "xmpp-veil did not listen on {a}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        binary
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (at most `limit`) for the exit; returns the time it took and whether
    /// the exit status was success.
    pub async fn terminate(&mut self, limit: Duration) -> (Duration, bool) {
        let started = Instant::now();
        // SAFETY: kill(2) on our own child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (started.elapsed(), status.success());
            }
            assert!(
                started.elapsed() < limit,
                "xmpp-veil still running {limit:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Many sessions need many descriptors: raise this process's soft limit (children inherit it).
pub fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 16_384 {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// One HTTP/1.1 GET on the metrics listener: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics port");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
