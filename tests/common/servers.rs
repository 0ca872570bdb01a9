//! Real XMPP servers (Prosody, ejabberd) started per test on loopback.
//!
//! Every [`Server`] gets its own ports, temporary directory, pidfile and (for
//! ejabberd) its own Erlang node name, distribution port and cookie, so tests
//! can run in parallel in separate processes. Dropping the [`Server`] kills
//! the server's whole process group and removes the directory.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long to wait for a server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prosody,
    Ejabberd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prosody => "prosody",
            Kind::Ejabberd => "ejabberd",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub kind: Kind,
    /// `(user, password)` pairs registered before the test starts.
    pub users: Vec<(&'static str, &'static str)>,
    /// `false`: plaintext c2s is allowed, with PLAIN auth.
    pub require_tls: bool,
}

impl ServerOpts {
    /// TLS required, no users.
    pub fn new(kind: Kind) -> Self {
        ServerOpts {
            kind,
            users: Vec::new(),
            require_tls: true,
        }
    }

    pub fn user(mut self, user: &'static str, pass: &'static str) -> Self {
        self.users.push((user, pass));
        self
    }

    pub fn require_tls(mut self, require_tls: bool) -> Self {
        self.require_tls = require_tls;
        self
    }
}

/// What the server runs besides the basics: what operators run (offline storage, carbons, MAM,
/// blocking, stream management), with or without privacy lists (XEP-0016) on Prosody (ejabberd
/// always has `mod_privacy`, as in its default configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub privacy_lists: bool,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            privacy_lists: true,
        }
    }
}

pub struct Server {
    pub kind: Kind,
    /// Always `"localhost"`.
    pub domain: String,
    /// STARTTLS-capable c2s port (plaintext allowed unless `require_tls`).
    pub c2s_port: u16,
    /// XEP-0368 direct TLS c2s port.
    pub direct_tls_port: u16,
    /// c2s port that expects a PROXY protocol header ([`Server::start_proxy_protocol`], which
    /// also loads mod_admin_extra for [`Server::ctl`]`(&["connected_users_info"])`).
    pub proxy_port: Option<u16>,
    pub require_tls: bool,
    child: Option<Child>,
    config: PathBuf,
    /// ejabberdctl's extra arguments (config dir, ctl config, logs, spool).
    ctl_args: Vec<String>,
    ejabberd: Option<ErlNode>,
    dir: Option<tempfile::TempDir>,
}

/// The crate's dev certificates: `(dir, CA, leaf chain, key)`.
pub fn cert_paths() -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    (
        dir.clone(),
        dir.join("dev-ca.pem"),
        dir.join("localhost.pem"),
        dir.join("localhost.key"),
    )
}

/// Free TCP ports on 127.0.0.1 (bound at once so they differ; small race after).
/// How long the servers keep a stream-managed session after its connection dropped, in seconds:
/// short, so that tests can watch it time out.
pub const HIBERNATION_SECS: u64 = 6;

pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

fn random_token() -> String {
    let mut s = String::new();
    for i in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u32(std::process::id());
        let _ = write!(s, "{:016x}", h.finish());
    }
    s
}

fn find_binary(name: &str, candidates: &[&str]) -> PathBuf {
    for c in candidates {
        let p = Path::new(c);
        if p.is_file() {
            return p.to_path_buf();
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            let p = d.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` not found (looked in {candidates:?} and $PATH): install the Debian package \
         (apt-get install prosody ejabberd) to run the server integration tests"
    );
}

fn lua_str(s: &str) -> String {
    format!("{s:?}")
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The ejabberd node's Erlang distribution settings.
struct ErlNode {
    node: String,
    cookie: String,
    dist_port: u16,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Server {
    /// Writes the config, registers `opts.users`, starts the server in the
    /// foreground and waits until both c2s ports accept connections.
    pub fn start(opts: ServerOpts) -> Server {
        Server::start_with(opts, Profile::default())
    }

    pub fn start_with(opts: ServerOpts, profile: Profile) -> Server {
        Self::start_inner(opts, profile, false)
    }

    /// Like [`Server::start`], with one more c2s port ([`Server::proxy_port`], STARTTLS
    /// optional) that takes a PROXY protocol header (v1 or v2) before the stream. ejabberd only:
    /// Debian's prosody-modules does not ship mod_net_proxy.
    pub fn start_proxy_protocol(opts: ServerOpts) -> Server {
        assert_eq!(
            opts.kind,
            Kind::Ejabberd,
            "PROXY protocol: ejabberd only (Debian's prosody-modules has no mod_net_proxy)"
        );
        Self::start_inner(opts, Profile::default(), true)
    }

    fn start_inner(opts: ServerOpts, profile: Profile, proxy_protocol: bool) -> Server {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix(&format!("veil-{}-", opts.kind.name()))
            .tempdir_in(std::env::temp_dir())
            .expect("create temp dir");
        let ports = free_ports(4);
        let mut server = Server {
            kind: opts.kind,
            domain: "localhost".to_string(),
            c2s_port: ports[0],
            direct_tls_port: ports[1],
            proxy_port: proxy_protocol.then_some(ports[3]),
            require_tls: opts.require_tls,
            child: None,
            config: PathBuf::new(),
            ctl_args: Vec::new(),
            ejabberd: None,
            dir: Some(dir),
        };
        match opts.kind {
            Kind::Prosody => {
                server.write_prosody_config(profile);
                for (u, p) in &opts.users {
                    server.register(u, p);
                }
                server.spawn_prosody();
                server.wait_ready();
            }
            Kind::Ejabberd => {
                server.write_ejabberd_config(ports[2]);
                server.spawn_ejabberd();
                server.wait_ready();
                if trace() {
                    eprintln!("[servers] ejabberd ready after {:?}", started.elapsed());
                }
                server.register_many(&opts.users);
            }
        }
        if trace() {
            eprintln!(
                "[servers] {} up on c2s {} / direct TLS {} in {:?} (dir {})",
                server.kind.name(),
                server.c2s_port,
                server.direct_tls_port,
                started.elapsed(),
                server.dir().display()
            );
        }
        server
    }

    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.c2s_port))
    }

    pub fn direct_tls_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.direct_tls_port))
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            self.proxy_port.expect("started with start_proxy_protocol"),
        ))
    }

    /// `ejabberdctl ARGS` against this server; its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        assert_eq!(self.kind, Kind::Ejabberd, "ejabberdctl: ejabberd only");
        let out = self
            .ejabberdctl()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ejabberdctl");
        assert!(
            out.status.success(),
            "ejabberdctl {args:?}: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The bare JID of `user` on this server.
    pub fn jid(&self, user: &str) -> String {
        format!("{user}@{}", self.domain)
    }

    /// The server's temporary directory (config, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// Registers a user; works before start (Prosody) and while running.
    pub fn register(&self, user: &str, pass: &str) {
        match self.kind {
            Kind::Prosody => {
                let out = Command::new(find_binary("prosodyctl", &["/usr/bin/prosodyctl"]))
                    .arg("--config")
                    .arg(&self.config)
                    .args(["register", user, &self.domain, pass])
                    .stdin(Stdio::null())
                    .output()
                    .expect("run prosodyctl");
                let account = self
                    .dir()
                    .join("data")
                    .join(&self.domain)
                    .join("accounts")
                    .join(format!("{user}.dat"));
                assert!(
                    out.status.success() && account.is_file(),
                    "prosodyctl register {user} failed: {:?}\nstdout: {}\nstderr: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Kind::Ejabberd => self.register_many(&[(user, pass)]),
        }
    }

    /// Registers several users. ejabberd: one short-lived hidden Erlang node
    /// calls `ejabberd_auth:try_register/3` on the server's node for all of
    /// them (what `ejabberdctl register` does, but one VM start instead of one
    /// per user).
    pub fn register_many(&self, users: &[(&str, &str)]) {
        if users.is_empty() {
            return;
        }
        match self.kind {
            Kind::Prosody => {
                for (u, p) in users {
                    self.register(u, p);
                }
            }
            Kind::Ejabberd => {
                let e = self.ejabberd.as_ref().expect("ejabberd node settings");
                let bin = |s: &str| {
                    format!(
                        "<<\"{}\"/utf8>>",
                        s.replace('\\', "\\\\").replace('"', "\\\"")
                    )
                };
                let list: Vec<String> = users
                    .iter()
                    .map(|(u, p)| format!("{{{}, {}}}", bin(u), bin(p)))
                    .collect();
                let expr = format!(
                    "Rs = [{{U, rpc:call('{node}', ejabberd_auth, try_register, [U, {host}, P])}} \
                       || {{U, P}} <- [{list}]], \
                     io:format(\"~p~n\", [Rs]), \
                     halt(case lists:all(fun({{_, R}}) -> R =:= ok end, Rs) of true -> 0; false -> 1 end).",
                    node = e.node,
                    host = bin(&self.domain),
                    list = list.join(", "),
                );
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let out = Command::new(find_binary("erl", &["/usr/bin/erl"]))
                    .arg("-sname")
                    .arg(format!("veilctl{}n{n}@localhost", std::process::id()))
                    .args(["-setcookie", &e.cookie, "-hidden", "-noshell", "-noinput"])
                    .args(["-start_epmd", "false", "-dist_listen", "false"])
                    .args(["-erl_epmd_port", &e.dist_port.to_string()])
                    .args(["-eval", &expr])
                    .env("HOME", self.dir().join("home"))
                    .env("ERL_INETRC", self.dir().join("inetrc"))
                    .current_dir(self.dir())
                    .stdin(Stdio::null())
                    .output()
                    .expect("run erl");
                assert!(
                    out.status.success(),
                    "registering {:?} on ejabberd failed: {:?}\nstdout: {}\nstderr: {}\nlog:\n{}",
                    users.iter().map(|u| u.0).collect::<Vec<_>>(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
        }
    }

    /// The server's log so far (its own log files and its stdout/stderr).
    pub fn log(&self) -> String {
        let d = self.dir();
        let mut s = String::new();
        let files: Vec<PathBuf> = match self.kind {
            Kind::Prosody => vec![d.join("prosody.log"), d.join("stdout.log")],
            Kind::Ejabberd => vec![
                d.join("logs").join("ejabberd.log"),
                d.join("logs").join("error.log"),
                d.join("stdout.log"),
            ],
        };
        for f in files {
            let text = read_lossy(&f);
            if !text.is_empty() {
                let _ = writeln!(s, "==== {} ====\n{}", f.display(), text);
            }
        }
        s
    }

    /// Is the server process still running?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn write_prosody_config(&mut self, profile: Profile) {
        let d = self.dir().to_path_buf();
        let (_, _, cert, key) = cert_paths();
        std::fs::create_dir_all(d.join("data")).expect("mkdir data");
        std::fs::create_dir_all(d.join("certs")).expect("mkdir certs");
        let p = |p: &Path| lua_str(&p.display().to_string());
        let ssl = format!("{{ certificate = {}; key = {}; }}", p(&cert), p(&key));
        let cfg = format!(
            r#"-- generated by tests/common/servers.rs
daemonize = false
run_as_root = true
pidfile = {pidfile}
data_path = {data}
certificates = {certs}
plugin_paths = {{ }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ {direct} }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
component_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "lastactivity"; "smacks"; "posix";
    "offline"; "carbons"; "mam"; "blocklist";{privacy} }}
-- mod_privacy_lists comes from prosody-modules (Debian: /usr/lib/prosody/modules).
-- Short, so that tests can watch a hibernated session time out (the default is 600 s).
smacks_hibernation_time = {hibernation}
modules_disabled = {{ "s2s" }}
authentication = "internal_plain"
c2s_require_encryption = {req}
allow_unencrypted_plain_auth = {plain}
ssl = {ssl}
c2s_direct_tls_ssl = {ssl}
log = {{ debug = {log} }}

VirtualHost "localhost"
    ssl = {ssl}
"#,
            pidfile = p(&d.join("prosody.pid")),
            data = p(&d.join("data")),
            certs = p(&d.join("certs")),
            c2s = self.c2s_port,
            direct = self.direct_tls_port,
            hibernation = HIBERNATION_SECS,
            privacy = if profile.privacy_lists {
                r#" "privacy_lists";"#
            } else {
                ""
            },
            req = self.require_tls,
            plain = !self.require_tls,
            log = p(&d.join("prosody.log")),
        );
        self.config = d.join("prosody.cfg.lua");
        std::fs::write(&self.config, cfg).expect("write prosody config");
    }

    fn spawn_prosody(&mut self) {
        let bin = find_binary("prosody", &["/usr/bin/prosody"]);
        let out = std::fs::File::create(self.dir().join("stdout.log")).expect("stdout.log");
        let err = out.try_clone().expect("dup stdout.log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&self.config)
            .arg("-F")
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("spawn prosody");
        self.child = Some(child);
    }

    fn write_ejabberd_config(&mut self, dist_port: u16) {
        let d = self.dir().to_path_buf();
        let (_, _, cert, key) = cert_paths();
        for sub in ["logs", "db", "home"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        // Same lookup rules as the packaged inetrc: no DNS for "localhost".
        std::fs::write(
            d.join("inetrc"),
            "{lookup,[\"file\",\"native\"]}.\n{host,{127,0,0,1}, [\"localhost\",\"hostalias\"]}.\n{file, resolv, \"/etc/resolv.conf\"}.\n",
        )
        .expect("write inetrc");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let node = format!("veil{}n{}p{}@localhost", std::process::id(), n, dist_port);
        let cookie = random_token();
        self.ejabberd = Some(ErlNode {
            node: node.clone(),
            cookie: cookie.clone(),
            dist_port,
        });
        let ctl = format!(
            r#"# generated by tests/common/servers.rs
ERLANG_NODE={node}
ERL_DIST_PORT={dist_port}
ERL_OPTIONS="-setcookie {cookie} -kernel inet_dist_use_interface {{127,0,0,1}} -env ERL_CRASH_DUMP_BYTES 0"
EXEC_CMD=as_current_user
EJABBERD_PID_PATH={pid}
CONTRIB_MODULES_PATH={contrib}
CONTRIB_MODULES_CONF_DIR={contrib}/conf
HOME={home}
EJABBERD_BYPASS_WARNINGS=true
"#,
            pid = d.join("ejabberd.pid").display(),
            contrib = d.join("contrib").display(),
            home = d.join("home").display(),
        );
        std::fs::write(d.join("ejabberdctl.cfg"), ctl).expect("write ejabberdctl.cfg");
        let yml = format!(
            r#"# generated by tests/common/servers.rs
hosts:
  - localhost
loglevel: info
log_rotate_count: 0
certfiles:
  - "{cert}"
  - "{key}"
listen:
  -
    port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: true
    starttls_required: {req}
    max_stanza_size: 262144
    access: c2s
  -
    port: {direct}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    tls: true
    max_stanza_size: 262144
    access: c2s
{proxy_listener}auth_method: internal
auth_password_format: plain
disable_sasl_mechanisms:
  - "digest-md5"
  - "X-OAUTH2"
s2s_access: none
acme:
  auto: false
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
shaper_rules:
  max_user_sessions: 100
  max_user_offline_messages: 1000
modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_last: {{}}
  mod_stream_mgmt:
    resume_timeout: {hibernation}
  mod_offline: {{}}
  mod_privacy: {{}}
  mod_blocking: {{}}
  mod_carboncopy: {{}}
  mod_mam: {{}}
  mod_caps: {{}}
  mod_ping: {{}}
{admin_extra}"#,
            cert = cert.display(),
            key = key.display(),
            c2s = self.c2s_port,
            direct = self.direct_tls_port,
            hibernation = HIBERNATION_SECS,
            req = self.require_tls,
            proxy_listener = self
                .proxy_port
                .map(|port| format!(
                    "  -\n    port: {port}\n    ip: \"127.0.0.1\"\n    module: ejabberd_c2s\n    \
                     use_proxy_protocol: true\n    starttls: true\n    max_stanza_size: 262144\n    \
                     access: c2s\n"
                ))
                .unwrap_or_default(),
            // `connected_users_info`, to read the address ejabberd records for each session.
            admin_extra = if self.proxy_port.is_some() {
                "  mod_admin_extra: {}\n"
            } else {
                ""
            },
        );
        self.config = d.join("ejabberd.yml");
        std::fs::write(&self.config, yml).expect("write ejabberd.yml");
        self.ctl_args = vec![
            "--config-dir".into(),
            d.display().to_string(),
            "--config".into(),
            self.config.display().to_string(),
            "--ctl-config".into(),
            d.join("ejabberdctl.cfg").display().to_string(),
            "--logs".into(),
            d.join("logs").display().to_string(),
            "--spool".into(),
            d.join("db").display().to_string(),
        ];
    }

    fn ejabberdctl(&self) -> Command {
        let mut c = Command::new(find_binary("ejabberdctl", &["/usr/sbin/ejabberdctl"]));
        c.args(&self.ctl_args)
            .env("HOME", self.dir().join("home"))
            .current_dir(self.dir());
        c
    }

    fn spawn_ejabberd(&mut self) {
        let out = std::fs::File::create(self.dir().join("stdout.log")).expect("stdout.log");
        let err = out.try_clone().expect("dup stdout.log");
        let child = self
            .ejabberdctl()
            .arg("foreground")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("spawn ejabberdctl foreground");
        self.child = Some(child);
    }

    /// Waits until the c2s port answers a stream header with stream features
    /// (a listening socket alone is not enough: ejabberd listens before it has
    /// finished starting) and the direct TLS port accepts connections.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let c2s = self.c2s_addr();
        let direct = self.direct_tls_addr();
        while let Err(e) = probe_features(c2s, &self.domain) {
            self.check_alive(
                deadline,
                &format!("{c2s} answered with stream features ({e})"),
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        while TcpStream::connect_timeout(&direct, Duration::from_millis(200)).is_err() {
            self.check_alive(deadline, &format!("{direct} accepted connections"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self, deadline: Instant, waiting_for: &str) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "{} exited during startup ({status}) before {waiting_for}\n{}",
                self.kind.name(),
                self.log()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{} not ready within {START_TIMEOUT:?}: waited until {waiting_for}\n{}",
                self.kind.name(),
                self.log()
            );
        }
    }
}

/// Sends a stream header to a plaintext c2s port and waits for `<stream:features`.
fn probe_features(addr: SocketAddr, domain: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&got).contains("features") {
                    let _ = s.write_all(b"</stream:stream>");
                    return Ok(());
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Err(format!(
        "no stream features; got {:?}",
        String::from_utf8_lossy(&got)
    ))
}

fn trace() -> bool {
    std::env::var_os("XMPP_TEST_TRACE").is_some_and(|v| v == "1")
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child leads its own process group: kill it all (for ejabberd,
            // the ejabberdctl shell and the beam.smp of the node).
            let pgid = child.id() as libc::pid_t;
            // SAFETY: plain syscall on a process group we created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("XMPP_TEST_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("[servers] keeping {}", dir.keep().display());
        }
        // TempDir's own Drop removes the directory.
    }
}
