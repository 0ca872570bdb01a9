//! Drives the whole load benchmark (run it through `examples/bench.sh`, which builds everything
//! in release first): for each target, in alternating order, a fresh fast upstream
//! (`fastxmpp`), a fresh proxy, and the same `loadgen` load; then one table of ratios against
//! the raw TLS relay measured in the same run.
//!
//! Targets (client side always direct TLS, XEP-0368):
//! - `direct`: no proxy; `fastxmpp`'s own TLS listener (no proxy CPU to report);
//! - `relay`: `tls_relay`, tokio-rustls + `copy_bidirectional`, the physical limit;
//! - `haproxy`: HAProxy `mode tcp` with TLS offload, default threads (one per core);
//! - `haproxy-1t`: the same with `nbthread 1`;
//! - `veil`: xmpp-veil, nobody invisible;
//! - `veil-inv`: xmpp-veil, every session invisible by XEP-0018, shown to 50 contacts by directed
//!   `visible`, so each undirected presence it sends is fanned out 50 times by the proxy.
//!
//! Load scenarios: flat out (closed loop, `--window` messages in flight per sender) and each of
//! the fixed `--rates` (default 5 000 and 20 000 msgs/s, open loop). Each proxy's own CPU time over the measured
//! window comes from /proc/PID/stat (utime+stime), its RSS from /proc/PID/status. Idle runs
//! open `--idle` sessions and report RSS growth per session, then check every session is served.
//!
//! Loopback only. Every phase is bounded in time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "xmpp-veil load benchmark driver (use examples/bench.sh)")]
struct Args {
    /// Targets, in the order of the first round (the second round runs them reversed).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,relay,haproxy,haproxy-1t,veil,veil-inv"
    )]
    targets: Vec<String>,
    /// Rounds of every load run (alternating order).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Sessions for the load runs.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Fixed-rate scenarios, total messages/s each (one scenario per rate).
    #[arg(
        long,
        alias = "rate",
        value_delimiter = ',',
        default_value = "5000,20000"
    )]
    rates: Vec<f64>,
    /// Flat-out scenario: messages in flight per sender.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Every N-th stanza a session sends is an undirected presence update.
    #[arg(long, default_value_t = 100)]
    presence_every: u64,
    /// Contacts each invisible session is visible to (XEP-0018 fan-out).
    #[arg(long, default_value_t = 50)]
    fan_out: usize,
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Idle-session counts (capped by the file-descriptor limit: a proxy holds two per session).
    #[arg(long, value_delimiter = ',', default_value = "5000,10000")]
    idle: Vec<usize>,
    /// Load scenarios to run: `flat` (flat out) and/or `rate` (every fixed rate); none with
    /// --no-load.
    #[arg(long, value_delimiter = ',', default_value = "flat,rate")]
    scenarios: Vec<String>,
    /// Skip the load runs.
    #[arg(long)]
    no_load: bool,
    /// Skip the idle runs.
    #[arg(long)]
    no_idle: bool,
    /// Output directory for logs and the report (default target/bench/<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

const BIN: &str = "target/release";
const CERT: &str = "certs/localhost.pem";
const KEY: &str = "certs/localhost.key";

type Result<T> = std::result::Result<T, String>;
type Fields = BTreeMap<String, String>;

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process that is killed (by its own PID) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first (xmpp-veil shuts down gracefully), then SIGKILL after a bounded wait.
        // SAFETY: kill(2) on the PID of our own, not yet reaped, child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
    let file = |suffix: &str| {
        std::fs::File::create(log.join(format!("{name}.{suffix}")))
            .map_err(|e| format!("log file: {e}"))
    };
    let child = cmd
        .stdout(file("out")?)
        .stderr(file("err")?)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {name}: {e}"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
    })
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits (at most 10 s) until `port` accepts connections; fails if `proc` died.
fn wait_listening(proc: &mut Proc, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!("{} exited at start: {status}", proc.name));
        }
        if TcpStream::connect_timeout(&addr(port), Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{} does not listen on {port}", proc.name))
}

fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

// ---------------------------------------------------------------------------------------------
// Targets

struct Env {
    out: PathBuf,
    haproxy_pem: PathBuf,
    max_conn: u64,
}

/// The running pieces of one target: the upstream, the proxy (if any), and where to connect.
struct Running {
    upstream: Proc,
    proxy: Option<Proc>,
    connect: u16,
}

fn start(env: &Env, target: &str, log: &Path) -> Result<Running> {
    let (up_port, up_tls) = (free_port()?, free_port()?);
    let mut upstream = spawn(
        "fastxmpp",
        Command::new(format!("{BIN}/examples/fastxmpp"))
            .arg("--listen")
            .arg(addr(up_port).to_string())
            .arg("--tls-listen")
            .arg(addr(up_tls).to_string()),
        log,
    )?;
    wait_listening(&mut upstream, up_port)?;
    wait_listening(&mut upstream, up_tls)?;
    let port = free_port()?;
    let up = addr(up_port).to_string();
    let mut proxy = match target {
        "direct" => {
            return Ok(Running {
                upstream,
                proxy: None,
                connect: up_tls,
            });
        }
        "relay" => spawn(
            "tls_relay",
            Command::new(format!("{BIN}/examples/tls_relay")).args([
                "--listen",
                &addr(port).to_string(),
                "--upstream",
                &up,
            ]),
            log,
        )?,
        "haproxy" | "haproxy-1t" => {
            let threads = if target == "haproxy-1t" {
                "    nbthread 1\n"
            } else {
                ""
            };
            let cfg = log.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "global\n    maxconn {max}\n{threads}\
                     defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\
                     frontend xmpp\n    bind {listen} ssl crt {pem} alpn xmpp-client\n    default_backend up\n\
                     backend up\n    server up {up}\n",
                    max = env.max_conn,
                    listen = addr(port),
                    pem = env.haproxy_pem.display(),
                ),
            )
            .map_err(|e| e.to_string())?;
            spawn(
                "haproxy",
                Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
                log,
            )?
        }
        "veil" | "veil-inv" => spawn(
            "xmpp-veil",
            Command::new(format!("{BIN}/xmpp-veil"))
                .env("RUST_LOG", "warn")
                .args(["--listen", "127.0.0.1:0"])
                .args(["--listen-direct-tls", &addr(port).to_string()])
                .args(["--upstream", &up, "--upstream-tls", "plain"])
                .args(["--metrics-listen", &addr(free_port()?).to_string()])
                .args(["--cert", CERT, "--key", KEY])
                .args(["--shutdown-timeout", "2"]),
            log,
        )?,
        other => return Err(format!("unknown target {other}")),
    };
    wait_listening(&mut proxy, port)?;
    Ok(Running {
        upstream,
        proxy: Some(proxy),
        connect: port,
    })
}

/// One loadgen run against `target`; returns its RESULT fields plus a few of the driver's.
fn run_loadgen(env: &Env, target: &str, label: &str, extra: &[String]) -> Result<Fields> {
    let log = env.out.join(label);
    std::fs::create_dir_all(&log).map_err(|e| e.to_string())?;
    let running = start(env, target, &log)?;
    let mut cmd = Command::new(format!("{BIN}/examples/loadgen"));
    cmd.args(["--target", &addr(running.connect).to_string()])
        .args(["--watch", &format!("server:{}", running.upstream.pid())])
        .args(extra);
    if let Some(p) = &running.proxy {
        cmd.args(["--watch", &format!("proxy:{}", p.pid())]);
    }
    if target == "veil-inv" {
        cmd.args(["--invisible", "xep0018"]);
    }
    let stderr = std::fs::File::create(log.join("loadgen.err")).map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("loadgen: {e}"))?;
    let stdout = child.stdout.take().ok_or("loadgen stdout")?;
    let mut result = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(rest) = line.strip_prefix("RESULT ") {
            result = Some(rest.to_owned());
        }
    }
    let _ = child.wait();
    drop(running);
    let line = result.ok_or_else(|| {
        format!(
            "{label}: loadgen printed no result; see {}",
            log.join("loadgen.err").display()
        )
    })?;
    let mut fields: Fields = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    fields.insert("target".into(), target.into());
    eprintln!("bench: {label:<24} {line}");
    std::fs::write(log.join("result.txt"), format!("{line}\n")).map_err(|e| e.to_string())?;
    fields.insert("label".into(), label.into());
    Ok(fields)
}

// ---------------------------------------------------------------------------------------------
// Report

fn num(f: &Fields, k: &str) -> Option<f64> {
    f.get(k).and_then(|v| v.parse().ok())
}

fn mean(runs: &[&Fields], k: &str) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(|f| num(f, k)).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "–".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn errors(runs: &[&Fields]) -> u64 {
    runs.iter()
        .map(|f| num(f, "errors").unwrap_or(1.0) as u64)
        .sum()
}

struct Check {
    figure: String,
    target: &'static str,
    value: Option<f64>,
    shown: String,
    ok: Option<bool>,
}

fn run(args: Args) -> Result<()> {
    for t in &args.targets {
        if !matches!(
            t.as_str(),
            "direct" | "relay" | "haproxy" | "haproxy-1t" | "veil" | "veil-inv"
        ) {
            return Err(format!("unknown target {t}"));
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/bench/{stamp}")));
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let out = out.canonicalize().map_err(|e| e.to_string())?;
    let limit = fd_limit();
    let max_sessions = (limit.saturating_sub(128) / 2) as usize;
    let haproxy_pem = out.join("haproxy.pem");
    let mut pem = std::fs::read(CERT).map_err(|e| format!("{CERT}: {e}"))?;
    pem.extend(std::fs::read(KEY).map_err(|e| format!("{KEY}: {e}"))?);
    std::fs::write(&haproxy_pem, pem).map_err(|e| e.to_string())?;
    let have_haproxy = Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    let targets: Vec<String> = args
        .targets
        .iter()
        .filter(|t| {
            let skip = t.starts_with("haproxy") && !have_haproxy;
            if skip {
                eprintln!("bench: haproxy not installed; skipping {t}");
            }
            !skip
        })
        .cloned()
        .collect();
    let env = Env {
        out: out.clone(),
        haproxy_pem,
        max_conn: max_sessions as u64 + 16,
    };
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "bench: output in {}; fd limit {limit} (a proxy can hold {max_sessions} sessions); load average {}",
        out.display(),
        load_before.trim()
    );
    let started = Instant::now();

    // Load runs: two scenarios, `rounds` rounds, alternating order.
    let common = |v: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--sessions".to_string(),
            args.sessions.to_string(),
            "--presence-every".into(),
            args.presence_every.to_string(),
            "--visible-to".into(),
            args.fan_out.to_string(),
            "--warmup".into(),
            args.warmup.to_string(),
            "--duration".into(),
            args.duration.to_string(),
        ]);
        a
    };
    // (kind for --scenarios, name in the labels and the report, loadgen's flags)
    let mut scenarios: Vec<(&str, String, Vec<String>)> = vec![(
        "flat",
        "flat".into(),
        common(&["--rate", "0", "--window", &args.window.to_string()]),
    )];
    for rate in &args.rates {
        scenarios.push((
            "rate",
            rate_scenario(*rate),
            common(&["--rate", &rate.to_string()]),
        ));
    }
    let mut load: Vec<Fields> = Vec::new();
    if !args.no_load {
        for round in 0..args.rounds {
            let mut order = targets.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for (kind, scenario, extra) in &scenarios {
                if !args.scenarios.iter().any(|s| s == kind) {
                    continue;
                }
                for t in &order {
                    let label = format!("{scenario}-{t}-r{}", round + 1);
                    match run_loadgen(&env, t, &label, extra) {
                        Ok(mut f) => {
                            f.insert("scenario".into(), scenario.clone());
                            f.insert("round".into(), (round + 1).to_string());
                            load.push(f);
                        }
                        Err(e) => eprintln!("bench: {label}: {e}"),
                    }
                }
            }
        }
    }

    // Idle runs.
    let mut idle: Vec<Fields> = Vec::new();
    let idle_counts: &[usize] = if args.no_idle { &[] } else { &args.idle };
    for &n in idle_counts {
        let n_eff = n.min(max_sessions);
        for t in &targets {
            let label = format!("idle{n}-{t}");
            let mut extra = vec![
                "--mode".to_string(),
                "idle".into(),
                "--sessions".into(),
                n_eff.to_string(),
                "--visible-to".into(),
                args.fan_out.to_string(),
                "--connect-concurrency".into(),
                "100".into(),
            ];
            extra.extend(["--settle".into(), "3".into()]);
            match run_loadgen(&env, t, &label, &extra) {
                Ok(mut f) => {
                    f.insert("asked".into(), n.to_string());
                    idle.push(f);
                }
                Err(e) => eprintln!("bench: {label}: {e}"),
            }
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let report = report(
        &args,
        &targets,
        &load,
        &idle,
        limit,
        max_sessions,
        &load_before,
        &load_after,
        started.elapsed(),
    );
    println!("{report}");
    std::fs::write(out.join("report.md"), &report).map_err(|e| e.to_string())?;
    eprintln!("bench: report in {}", out.join("report.md").display());
    Ok(())
}

/// The name of the fixed-rate scenario at `rate` msgs/s, in run labels and in the report.
fn rate_scenario(rate: f64) -> String {
    format!("rate{rate}")
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    targets: &[String],
    load: &[Fields],
    idle: &[Fields],
    limit: u64,
    max_sessions: usize,
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let runs = |scenario: &str, t: &str| -> Vec<&Fields> {
        load.iter()
            .filter(|f| {
                f.get("scenario").map(String::as_str) == Some(scenario)
                    && f.get("target").map(String::as_str) == Some(t)
            })
            .collect()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut r = String::new();
    let _ = writeln!(
        r,
        "## Benchmark report\n\n\
         Machine: {cores} cores, {cpu}, Linux {}. Load average before: {}; after: {}. Took {:.0} s.\n\
         Load: {} sessions in pairs over direct TLS, messages of about 200 bytes ({}-byte body filler), one undirected presence every {} stanzas; \
         `veil-inv`: every session invisible (XEP-0018) and shown to {} contacts, so each presence is fanned out {}×. \
         Warm-up {} s, measured window {} s, {} round(s) in alternating order (figures are the mean).\n",
        kernel.trim(),
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        took.as_secs_f64(),
        args.sessions,
        100,
        args.presence_every,
        args.fan_out,
        args.fan_out,
        args.warmup,
        args.duration,
        args.rounds,
    );

    let relay_flat = runs("flat", "relay");
    let haproxy_flat = runs("flat", "haproxy");
    let mut sections = vec![("flat".to_string(), "Flat out".to_string())];
    for rate in &args.rates {
        sections.push((rate_scenario(*rate), format!("Fixed rate {rate} msgs/s")));
    }
    for (scenario, title) in &sections {
        let scenario = scenario.as_str();
        let relay = runs(scenario, "relay");
        let _ = writeln!(
            r,
            "### {title}\n\n\
             | target | msgs/s | ÷ relay | proxy CPU µs/msg | ÷ relay | p50 µs | p50 − relay µs | p99 µs | p99.9 µs | proxy RSS MiB | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for t in targets {
            let rs = runs(scenario, t);
            if rs.is_empty() {
                continue;
            }
            let m = |k: &str| mean(&rs, k);
            let rel = |k: &str| mean(&relay, k);
            let _ = writeln!(
                r,
                "| {t} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(m("msgs_per_s"), 0),
                fmt(ratio(m("msgs_per_s"), rel("msgs_per_s")), 3),
                fmt(m("proxy_cpu_us_per_msg"), 2),
                fmt(
                    ratio(m("proxy_cpu_us_per_msg"), rel("proxy_cpu_us_per_msg")),
                    3
                ),
                fmt(m("p50_us"), 0),
                fmt(m("p50_us").zip(rel("p50_us")).map(|(a, b)| a - b), 0),
                fmt(m("p99_us"), 0),
                fmt(m("p999_us"), 0),
                fmt(m("proxy_rss_kb").map(|k| k / 1024.0), 1),
                errors(&rs),
            );
        }
        // Slow drift of the machine cancels out in pairs run next to each other (same round).
        if relay.len() >= 2 {
            for t in targets.iter().filter(|t| t.as_str() != "relay") {
                let rs = runs(scenario, t);
                // Paired on the round number: a failed run leaves its round unpaired.
                let mut q: Vec<f64> = rs
                    .iter()
                    .filter_map(|a| {
                        let b = relay.iter().find(|b| b.get("round") == a.get("round"))?;
                        ratio(
                            num(a, "proxy_cpu_us_per_msg"),
                            num(b, "proxy_cpu_us_per_msg"),
                        )
                    })
                    .collect();
                if q.is_empty() {
                    continue;
                }
                q.sort_by(f64::total_cmp);
                let median = if q.len() % 2 == 1 {
                    q[q.len() / 2]
                } else {
                    (q[q.len() / 2 - 1] + q[q.len() / 2]) / 2.0
                };
                let _ = writeln!(
                    r,
                    "| *{t}: CPU ÷ relay of the same round, median of {}* | | | | {median:.3} | | | | | | |",
                    q.len()
                );
            }
        }
        // Noise: the relay against itself, run 1 ÷ run 2.
        if relay.len() >= 2 {
            let (a, b) = (relay[0], relay[1]);
            let q = |k: &str| fmt(ratio(num(a, k), num(b, k)), 3);
            let _ = writeln!(
                r,
                "| *noise: relay r1 ÷ r2* | | {} | | {} | {} | | {} | {} | | |",
                q("msgs_per_s"),
                q("proxy_cpu_us_per_msg"),
                q("p50_us"),
                q("p99_us"),
                q("p999_us"),
            );
        }
        let _ = writeln!(r);
    }

    let _ = writeln!(
        r,
        "### Idle sessions (RSS growth of the proxy process ÷ sessions; fd limit {limit}: at most {max_sessions} sessions through a proxy)\n\n\
         | target | sessions | KiB/session | ÷ relay | proxy RSS MiB | login s | served | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for n in &args.idle {
        let relay = idle.iter().find(|f| {
            f.get("target").map(String::as_str) == Some("relay")
                && f.get("asked") == Some(&n.to_string())
        });
        for t in targets {
            let Some(f) = idle.iter().find(|f| {
                f.get("target").map(String::as_str) == Some(t.as_str())
                    && f.get("asked") == Some(&n.to_string())
            }) else {
                continue;
            };
            let who = if t == "direct" { "server" } else { "proxy" };
            let per = num(f, &format!("{who}_kib_per_session"));
            let _ = writeln!(
                r,
                "| {t}{} | {} | {} | {} | {} | {} | {} | {} |",
                if t == "direct" { " (server)" } else { "" },
                f.get("sessions").cloned().unwrap_or_default(),
                fmt(per, 2),
                fmt(
                    ratio(per, relay.and_then(|r| num(r, "proxy_kib_per_session"))),
                    3
                ),
                fmt(num(f, &format!("{who}_rss_kb")).map(|k| k / 1024.0), 1),
                fmt(num(f, "login_secs"), 1),
                f.get("served").cloned().unwrap_or_default(),
                f.get("errors").cloned().unwrap_or_default(),
            );
        }
    }
    let _ = writeln!(r);

    // Targets of the issue.
    let veil_flat = runs("flat", "veil");
    let mut checks = vec![Check {
        figure: "proxy CPU per message, xmpp-veil ÷ raw relay (flat out)".into(),
        target: "≤ 1.10",
        value: ratio(
            mean(&veil_flat, "proxy_cpu_us_per_msg"),
            mean(&relay_flat, "proxy_cpu_us_per_msg"),
        ),
        shown: String::new(),
        ok: None,
    }];
    for rate in &args.rates {
        let veil_rate = runs(&rate_scenario(*rate), "veil");
        let relay_rate = runs(&rate_scenario(*rate), "relay");
        checks.push(Check {
            figure: format!("proxy CPU per message, xmpp-veil ÷ raw relay ({rate} msgs/s)"),
            target: "≤ 1.05",
            value: ratio(
                mean(&veil_rate, "proxy_cpu_us_per_msg"),
                mean(&relay_rate, "proxy_cpu_us_per_msg"),
            ),
            shown: String::new(),
            ok: None,
        });
        checks.push(Check {
            figure: format!("added p50 latency over the raw relay at {rate} msgs/s, µs"),
            target: "≤ 50",
            value: mean(&veil_rate, "p50_us")
                .zip(mean(&relay_rate, "p50_us"))
                .map(|(a, b)| a - b),
            shown: String::new(),
            ok: None,
        });
    }
    checks.extend([Check {
        figure: "throughput, xmpp-veil ÷ HAProxy (flat out)".into(),
        target: "≥ 1.00",
        value: ratio(
            mean(&veil_flat, "msgs_per_s"),
            mean(&haproxy_flat, "msgs_per_s"),
        ),
        shown: String::new(),
        ok: None,
    }]);
    for n in &args.idle {
        let f = idle.iter().find(|f| {
            f.get("target").map(String::as_str) == Some("veil")
                && f.get("asked") == Some(&n.to_string())
        });
        let sessions = f
            .and_then(|f| f.get("sessions").cloned())
            .unwrap_or_default();
        checks.push(Check {
            figure: if *n == args.idle[0] {
                "memory per idle TLS session (smaller run), KiB".into()
            } else {
                "memory per idle TLS session (larger run), KiB".into()
            },
            target: "≤ 16",
            value: f.and_then(|f| num(f, "proxy_kib_per_session")),
            shown: format!(" ({sessions} sessions)"),
            ok: None,
        });
    }
    if let Some(&n) = args.idle.iter().max() {
        let f = idle.iter().find(|f| {
            f.get("target").map(String::as_str) == Some("veil")
                && f.get("asked") == Some(&n.to_string())
        });
        let sessions = f.and_then(|f| num(f, "sessions"));
        let served = f.and_then(|f| num(f, "served"));
        let errs = f.and_then(|f| num(f, "errors"));
        checks.push(Check {
            figure: "concurrent sessions through xmpp-veil, all served, no error".into(),
            target: "10 000",
            value: served,
            shown: format!(" of {} opened, {} errors", fmt(sessions, 0), fmt(errs, 0)),
            ok: Some(served.is_some_and(|s| s >= 10_000.0) && errs == Some(0.0)),
        });
    }
    let _ = writeln!(
        r,
        "### Targets\n\n| figure | target | measured | met |\n|---|---|---:|---|"
    );
    for c in &mut checks {
        let ok = c.ok.or_else(|| {
            let v = c.value?;
            Some(match c.target {
                "≤ 1.05" => v <= 1.05,
                "≤ 1.10" => v <= 1.10,
                "≥ 1.00" => v >= 1.0,
                "≤ 50" => v <= 50.0,
                "≤ 16" => v <= 16.0,
                _ => return None,
            })
        });
        let _ = writeln!(
            r,
            "| {} | {} | {}{} | {} |",
            c.figure,
            c.target,
            fmt(c.value, if c.target == "10 000" { 0 } else { 3 }),
            c.shown,
            match ok {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    r
}
