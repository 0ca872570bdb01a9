//! mcabber 1.1.2 (Debian's `mcabber`), a real console client, scripted: it runs in a tmux
//! session of its own, reads commands from its FIFO (`module load fifo`), sends any stanza with
//! `/rawxml send`, and writes every stanza both ways to its trace log (`tracelog_level = 3`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::psi::need;

pub const RESOURCE: &str = "mcabber";

pub struct Mcabber {
    dir: tempfile::TempDir,
    socket: String,
    fifo: PathBuf,
    trace: PathBuf,
}

impl Mcabber {
    /// Starts mcabber logged in as `jid` through `127.0.0.1:port` (STARTTLS required).
    pub fn start(jid: &str, password: &str, port: u16) -> Mcabber {
        need(&["mcabber", "tmux"]);
        let dir = tempfile::Builder::new()
            .prefix("veil-mcabber")
            .tempdir_in(std::env::temp_dir())
            .expect("temp dir");
        let fifo = dir.path().join("mcabber.fifo");
        let trace = dir.path().join("trace.log");
        let rc = dir.path().join("mcabberrc");
        // The test's own proxy on loopback with the development certificate (its CA is not in
        // mcabber's trust store, and the connection host is an address): checks off.
        std::fs::write(
            &rc,
            format!(
                "set jid = {jid}\n\
                 set password = {password}\n\
                 set server = 127.0.0.1\n\
                 set port = {port}\n\
                 set resource = {RESOURCE}\n\
                 set disable_random_resource = 1\n\
                 set tls = 1\n\
                 set ssl_ignore_checks = 1\n\
                 set priority = 3\n\
                 set tracelog_level = 3\n\
                 set tracelog_file = {trace}\n\
                 set fifo_name = {fifo}\n\
                 set fifo_hide_commands = 0\n\
                 module load fifo\n",
                trace = trace.display(),
                fifo = fifo.display(),
            ),
        )
        .expect("mcabberrc");
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let socket = format!(
            "veil-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
        );
        let status = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "160", "-y", "48"])
            .arg(format!("mcabber -f {}", rc.display()))
            .env("HOME", dir.path())
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .status()
            .expect("tmux runs");
        assert!(status.success(), "tmux new-session for mcabber");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fifo.exists() {
            assert!(
                Instant::now() < deadline,
                "mcabber made no FIFO; screen:\n{}",
                capture(&socket)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Mcabber {
            dir,
            socket,
            fifo,
            trace,
        }
    }

    /// A command as if typed (e.g. `/rawxml send <presence/>`).
    pub fn command(&self, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.fifo)
            .expect("mcabber's FIFO");
        f.write_all(format!("{line}\n").as_bytes())
            .expect("write to the FIFO");
    }

    /// `/rawxml send STANZA`.
    pub fn send(&self, stanza: &str) {
        self.command(&format!("/rawxml send {stanza}"));
    }

    /// mcabber's trace log so far (every stanza sent and received).
    pub fn trace(&self) -> String {
        std::fs::read_to_string(&self.trace).unwrap_or_default()
    }

    /// Waits until the trace log has a line containing every one of `parts`; returns the line.
    pub async fn wait_trace(&self, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .trace()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "mcabber's trace never had {parts:?}:\n{}\nscreen:\n{}",
                self.trace(),
                capture(&self.socket)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `/quit`, as a user would; the tmux server goes at drop.
    pub fn stop(self) {
        self.command("/quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !capture(&self.socket).is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Mcabber {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
        let _ = &self.dir;
    }
}

fn capture(socket: &str) -> String {
    Command::new("tmux")
        .args(["-L", socket, "capture-pane", "-p"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
