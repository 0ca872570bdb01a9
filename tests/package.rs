//! The systemd unit run as systemd would run it (there is no systemd in CI or in the tests): its
//! `ExecStart` line with `%d` (the credentials directory) substituted, the key handed over as
//! its `LoadCredential` would, its `Environment=`, and `NOTIFY_SOCKET` to receive readiness.
//!
//! `unit_from_the_repository` runs the unit in examples/systemd with the binary built by cargo.
//! `installed_package` runs the unit and the binary installed by the .deb (`dpkg -i`); CI runs it
//! after building and installing the package: `cargo test --test package -- --ignored`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::http_get;
use common::client::{Client, Opts};
use common::servers::{Kind, Server, ServerOpts, free_ports};

const T: Duration = Duration::from_secs(10);

/// The values of `key=` lines in the unit's [Service] section.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

/// Starts `unit` as systemd would, with `binary` as the program of its ExecStart line, the
/// listeners on loopback and the upstream and certificate overridden by environment variables
/// (as a drop-in would), then waits for READY=1, checks /readyz and proxies one login.
async fn run_unit(unit: &str, binary: Option<&str>) {
    let server = Server::start(
        ServerOpts::new(Kind::Prosody)
            .user("joe", "joe-pw")
            .require_tls(false),
    );
    let dir = tempfile::tempdir().unwrap();
    // LoadCredential=NAME:SOURCE: systemd copies SOURCE to $CREDENTIALS_DIRECTORY/NAME. The
    // unit's source is the operator's Let's Encrypt key; here it is the development key.
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let loads = unit_values(unit, "LoadCredential");
    assert_eq!(loads.len(), 1, "one LoadCredential in the unit: {loads:?}");
    let (name, _source) = loads[0].split_once(':').expect("NAME:SOURCE");
    std::fs::copy(dev.join("localhost.key"), creds.join(name)).unwrap();

    let exec = unit_values(unit, "ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    let exec = exec[0].replace("%d", creds.to_str().unwrap());
    let mut words = exec.split_whitespace();
    let program = words.next().unwrap();
    // The unit's config file is the installed /etc/xmpp-veil/xmpp-veil.toml; for the
    // repository's unit, the example it is installed from.
    let installed_config = "/etc/xmpp-veil/xmpp-veil.toml";
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/xmpp-veil.toml");
    let args: Vec<&str> = words
        .map(|w| match (binary, w) {
            (Some(_), w) if w == installed_config => example,
            (_, w) => w,
        })
        .collect();
    let mut cmd = Command::new(binary.unwrap_or(program));
    cmd.args(&args);
    cmd.env_clear().env("CREDENTIALS_DIRECTORY", &creds);
    for e in unit_values(unit, "Environment") {
        let (k, v) = e.split_once('=').unwrap();
        cmd.env(k, v);
    }
    // Readiness: a datagram socket like systemd's.
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(T)).unwrap();
    cmd.env("NOTIFY_SOCKET", &notify_path);
    // Loopback listeners, the test's server and a certificate that exists, as a drop-in's
    // Environment= lines would give them (the installed file names /etc/letsencrypt/...).
    let ports = free_ports(3);
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (starttls, direct, metrics) = (addr(ports[0]), addr(ports[1]), addr(ports[2]));
    cmd.env("XMPP_VEIL_LISTEN", starttls.to_string())
        .env("XMPP_VEIL_LISTEN_DIRECT_TLS", direct.to_string())
        .env("XMPP_VEIL_METRICS_LISTEN", metrics.to_string())
        .env("XMPP_VEIL_UPSTREAM", server.c2s_addr().to_string())
        .env("XMPP_VEIL_UPSTREAM_TLS", "plain")
        .env("XMPP_VEIL_CERT", dev.join("localhost.pem"));
    let child = cmd.spawn().expect("start the ExecStart line");
    let mut child = Kill(child);
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    eprintln!("ready after {:?}", started.elapsed());
    // Ready means listening: no retry needed.
    let (status, body) = http_get(metrics, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let joe = Client::connect(starttls, "joe", "joe-pw", Opts::new("unit"))
        .await
        .expect("a login through the unit's proxy");
    assert!(joe.jid.starts_with("joe@localhost/"), "{}", joe.jid);

    // SIGTERM as `systemctl stop`: STOPPING=1, then a clean exit.
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    joe.expect_stream_error("system-shutdown", T).await;
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Kills the process if the test fails half-way.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_from_the_repository() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/systemd/xmpp-veil.service"
    ))
    .unwrap();
    run_unit(&unit, Some(env!("CARGO_BIN_EXE_xmpp-veil"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the .deb installed (CI: .ci/run)"]
async fn installed_package() {
    let unit = std::fs::read_to_string("/lib/systemd/system/xmpp-veil.service")
        .expect("the package's unit in /lib/systemd/system");
    assert!(Path::new("/etc/xmpp-veil/xmpp-veil.toml").exists());
    run_unit(&unit, None).await;
}
