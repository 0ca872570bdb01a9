//! Psi 1.5 (Debian's `psi`), a real XEP-0018 client, run headless: Xvfb for its display, a
//! D-Bus session of its own (`dbus-run-session`) to switch its status, xdotool to press the keys
//! a user would. The profile is written by the test (see `../shared/CLIENTS.md`): one account
//! whose connection host/port is given (the proxy, or a forwarder in front of it), the
//! development CA trusted, no tip of the day.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails (never skips) when a tool the real-client tests need is missing.
pub fn need(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is missing: run tests/install-deps.sh (tests/run.sh does it first)"
        );
    }
}

/// Psi's obfuscation of the stored password: each UTF-16 unit XORed with the matching unit of
/// the JID (repeated), written as 4 hex digits.
pub fn encode_password(password: &str, jid: &str) -> String {
    let key: Vec<u16> = jid.encode_utf16().collect();
    password
        .encode_utf16()
        .zip(key.iter().cycle())
        .map(|(p, k)| format!("{:04x}", p ^ k))
        .collect()
}

/// At most two Psi instances at a time in this test process (two cores, shared).
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub struct Psi {
    _slot: tokio::sync::SemaphorePermit<'static>,
    dir: tempfile::TempDir,
    xvfb: Child,
    session: Child,
    psi_pid: i32,
    display: String,
    bus: String,
    pub jid: String,
    pub resource: &'static str,
}

pub const RESOURCE: &str = "psi";

impl Psi {
    /// Starts Psi logged in as `jid` through `127.0.0.1:port` (STARTTLS required), with
    /// `--status=STATUS` (`online`, `invisible`, …).
    pub async fn start(jid: &str, password: &str, port: u16, status: &str) -> Psi {
        let slot = SLOTS.acquire().await.expect("semaphore never closed");
        need(&[
            "psi",
            "Xvfb",
            "dbus-run-session",
            "dbus-send",
            "xdotool",
            "import",
        ]);
        let dir = tempfile::Builder::new()
            .prefix("veil-psi")
            .tempdir_in(std::env::temp_dir())
            .expect("temp dir");
        let data = dir.path().join("data");
        let home = dir.path().join("home");
        let profile = data.join("profiles/default");
        std::fs::create_dir_all(&profile).expect("profile dir");
        std::fs::create_dir_all(data.join("certs")).expect("certs dir");
        std::fs::create_dir_all(&home).expect("home dir");
        std::fs::write(
            profile.join("accounts.xml"),
            accounts_xml(jid, password, port),
        )
        .expect("accounts.xml");
        std::fs::write(profile.join("options.xml"), OPTIONS_XML).expect("options.xml");
        std::fs::copy(
            crate::common::client::dev_ca_path(),
            data.join("certs/veil-dev-ca.crt"),
        )
        .expect("CA into Psi's certs/");

        // Xvfb picks a free display and tells us its number.
        let mut xvfb = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x900x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb starts");
        let mut line = String::new();
        BufReader::new(xvfb.stdout.take().expect("Xvfb stdout"))
            .read_line(&mut line)
            .expect("Xvfb display number");
        let display = format!(":{}", line.trim());
        assert!(display.len() > 1, "Xvfb gave no display");

        let log = std::fs::File::create(dir.path().join("psi.log")).expect("psi.log");
        let session = Command::new("dbus-run-session")
            .args([
                "--",
                "sh",
                "-c",
                "echo \"$DBUS_SESSION_BUS_ADDRESS\" > \"$1/bus.tmp\" && mv \"$1/bus.tmp\" \"$1/bus\"; \
                 echo $$ > \"$1/pid.tmp\" && mv \"$1/pid.tmp\" \"$1/pid\"; \
                 exec psi --status=\"$2\"",
                "sh",
            ])
            .arg(dir.path())
            .arg(status)
            .env("DISPLAY", &display)
            .env("PSIDATADIR", &data)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dbus-run-session starts");
        let bus = wait_file(&dir.path().join("bus"));
        let psi_pid: i32 = wait_file(&dir.path().join("pid")).parse().expect("psi pid");
        Psi {
            _slot: slot,
            dir,
            xvfb,
            session,
            psi_pid,
            display,
            bus,
            jid: jid.to_owned(),
            resource: RESOURCE,
        }
    }

    pub fn full_jid(&self) -> String {
        format!("{}/{}", self.jid, self.resource)
    }

    /// What Psi printed (its warnings), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("psi.log")).unwrap_or_default()
    }

    /// True once `text` is in a file Psi wrote under its data directory (its message history).
    pub fn history_contains(&self, text: &str) -> bool {
        fn scan(dir: &Path, text: &str) -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return false;
            };
            entries.flatten().any(|e| {
                let p = e.path();
                if p.is_dir() {
                    scan(&p, text)
                } else {
                    std::fs::read(&p)
                        .is_ok_and(|b| b.windows(text.len()).any(|w| w == text.as_bytes()))
                }
            })
        }
        scan(&self.dir.path().join("data"), text) || scan(&self.dir.path().join("home"), text)
    }

    /// Waits until Psi has stored `text` in its history (it received that message).
    pub async fn wait_history(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.history_contains(text) {
            assert!(
                Instant::now() < deadline,
                "Psi never stored a message with {text:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `org.psi_im.Psi.Main.setStatus` over Psi's D-Bus session (retried while Psi is not yet on
    /// the bus).
    pub fn set_status(&self, status: &str) {
        self.dbus("setStatus", &[&format!("string:{status}"), "string:"]);
    }

    /// `org.psi_im.Psi.Main.openURI`.
    pub fn open_uri(&self, uri: &str) {
        self.dbus("openURI", &[&format!("string:{uri}")]);
    }

    fn dbus(&self, method: &str, args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("dbus-send")
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.psi-im.Psi",
                    "/Main",
                    &format!("org.psi_im.Psi.Main.{method}"),
                ])
                .args(args)
                .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
                .output()
                .expect("dbus-send runs");
            if out.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot("failure-dbus");
                panic!(
                    "dbus-send {method} {args:?}: {}\nscreen: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    shot.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A chat with `to` opened from an `xmpp:` URI with `body` typed in, then Return pressed in
    /// that window, as a user would.
    pub fn send_chat(&self, to: &str, body: &str) {
        let uri = format!("xmpp:{to}?message;type=chat;body={body}");
        self.open_uri(&uri);
        // The chat window's title carries the contact's name (the user part of the JID).
        let name = to.split('@').next().unwrap_or(to);
        let deadline = Instant::now() + Duration::from_secs(20);
        let window = loop {
            let out = self.xdotool(&["search", "--onlyvisible", "--name", name]);
            if let Some(w) = out.lines().next().filter(|w| !w.is_empty()) {
                break w.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no chat window for {to}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        self.xdotool(&["windowfocus", "--sync", &window]);
        self.xdotool(&["key", "--window", &window, "Return"]);
    }

    fn xdotool(&self, args: &[&str]) -> String {
        let out = Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .expect("xdotool runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A screenshot of the whole display, kept under `target/real_clients/NAME.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real_clients");
        std::fs::create_dir_all(&dir).expect("target/real_clients");
        let path = dir.join(format!("{name}.png"));
        let status = Command::new("import")
            .args(["-window", "root"])
            .arg(&path)
            .env("DISPLAY", &self.display)
            .status()
            .expect("import runs");
        assert!(status.success(), "screenshot {name}");
        path
    }

    /// Quits Psi as a user would ("Offline", then the process ends), then its bus and display.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: kill(2) on a PID this test started.
        unsafe { libc::kill(self.psi_pid, libc::SIGTERM) };
        if !wait_exit(&mut self.session, Duration::from_secs(10)) {
            unsafe { libc::kill(self.psi_pid, libc::SIGKILL) };
            let _ = self.session.kill();
            let _ = self.session.wait();
        }
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}

impl Drop for Psi {
    fn drop(&mut self) {
        if self.xvfb.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn wait_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn accounts_xml(jid: &str, password: &str, port: u16) -> String {
    let password = encode_password(password, jid);
    format!(
        r#"<!DOCTYPE accounts>
<accounts version="1.5" xmlns="http://psi-im.org/options">
 <accounts>
  <a0>
   <enabled type="bool">true</enabled>
   <auto type="bool">false</auto>
   <enable-sm type="bool">true</enable-sm>
   <keep-alive type="bool">true</keep-alive>
   <reconn type="bool">true</reconn>
   <log type="bool">true</log>
   <id type="QString">veil-test</id>
   <name type="QString">veil</name>
   <jid type="QString">{jid}</jid>
   <password type="QString">{password}</password>
   <use-host type="bool">true</use-host>
   <host type="QString">127.0.0.1</host>
   <port type="int">{port}</port>
   <ssl type="QString">yes</ssl>
   <allow-plain type="QString">over encryped</allow-plain>
   <resource type="QString">{RESOURCE}</resource>
   <priority type="int">5</priority>
  </a0>
 </accounts>
 <order type="QStringList">
  <item>veil-test</item>
 </order>
</accounts>
"#
    )
}

/// Only what differs from Psi's defaults: no tip of the day (its dialog would cover the roster);
/// no file-transfer listener (by default Psi listens on port 8010 on every interface, and a
/// second instance shows a modal "Unable to bind to port 8010" that blocks its start-up).
const OPTIONS_XML: &str = r#"<!DOCTYPE options>
<options version="1.5" xmlns="http://psi-im.org/options">
 <options>
  <p2p>
   <bytestreams>
    <listen-port type="int">0</listen-port>
   </bytestreams>
  </p2p>
  <ui>
   <tip>
    <show type="bool">false</show>
   </tip>
  </ui>
 </options>
</options>
"#;
