//! Soak: 1 000 sessions through the proxy binary toggle invisibility at random through both
//! protocols against Prosody, with observers watching for leaks, while the proxy's memory and
//! file descriptors are sampled.
//!
//! `soak_two_minutes` runs in CI. The full soak is ignored by default; run it by hand:
//! `cargo test --release --test soak -- --ignored --nocapture` (30 minutes; `XMPP_VEIL_SOAK_SECS`
//! overrides the duration of either).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::binary::{Binary, raise_fd_limit};
use common::client::{Client, Mech, Opts, Tls, befriend};
use common::servers::{Kind, Server, ServerOpts};

const USERS: usize = 20;
const RESOURCES: usize = 50;
const OBSERVERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_minutes() {
    soak(secs_from_env(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 minutes: run by hand"]
async fn soak_thirty_minutes() {
    soak(secs_from_env(1800)).await;
}

fn secs_from_env(default: u64) -> Duration {
    let secs = std::env::var("XMPP_VEIL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// A tiny deterministic generator (xorshift), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn soak(duration: Duration) {
    raise_fd_limit();
    let observers: Vec<String> = (0..OBSERVERS).map(|i| format!("obs{i}")).collect();
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let mut all: Vec<(&str, &str)> = users.iter().map(|u| (u.as_str(), u.as_str())).collect();
    all.extend(observers.iter().map(|o| (o.as_str(), o.as_str())));
    let server = Server::start(ServerOpts {
        kind: Kind::Prosody,
        users: vec![],
        require_tls: false,
    });
    server.register_many(&all);
    let setup = Opts::new("setup").mech(Mech::Plain);
    for u in &users {
        for o in &observers {
            befriend(server.c2s_addr(), (u, u), (o, o), true, &setup).await;
        }
    }

    let upstream = server.c2s_addr().to_string();
    let mut proxy = Binary::start(&["--upstream", &upstream, "--upstream-tls", "plain"], &[]).await;
    let pid = proxy.pid();
    let addr = proxy.direct_tls;

    let mut watchers = Vec::new();
    for o in &observers {
        let c = Client::connect(
            server.c2s_addr(),
            o,
            o,
            Opts::new("watch").mech(Mech::Plain).initial_presence(true),
        )
        .await
        .expect("observer");
        watchers.push(c);
    }

    // Sessions with resource names starting "hidden" never become visible to anyone: an
    // available presence from one of them at any observer is a leak, whatever the timing.
    let toggles = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + duration;
    let warm_up = Instant::now() + duration / 5;
    let mut tasks = Vec::new();
    for n in 0..USERS * RESOURCES {
        let user = users[n % USERS].clone();
        let hidden = n % 4 == 0;
        let resource = if hidden {
            format!("hidden{n}")
        } else {
            format!("free{n}")
        };
        let observers = observers.clone();
        let toggles = toggles.clone();
        let reconnects = reconnects.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1));
            tokio::time::sleep(Duration::from_millis(rng.below(10_000))).await;
            while Instant::now() < stop {
                let opts = Opts::new(&resource).tls(Tls::Direct).mech(Mech::Plain);
                let Ok(c) = Client::connect(addr, &user, &user, opts).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                if hidden {
                    c.send("<presence type='invisible'/>").await;
                }
                // Act every 1–3 s; reconnect now and then.
                for _ in 0..(5 + rng.below(30)) {
                    if Instant::now() >= stop || c.closed() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
                    let obs = &observers[rng.below(observers.len() as u64) as usize];
                    let action = if hidden { rng.below(5) } else { rng.below(9) };
                    let xml = match action {
                        0 => format!(
                            "<iq type='set' id='i'><invisible xmlns='urn:xmpp:invisible:{}' probe='{}'/></iq>",
                            rng.below(2),
                            rng.below(2) == 0
                        ),
                        1 => "<presence type='invisible'/>".to_owned(),
                        2 => "<presence><show>away</show></presence>".to_owned(),
                        3 => "<presence><show>chat</show><status>soak</status></presence>".to_owned(),
                        4 => "<presence type='unavailable'/>".to_owned(),
                        5 => "<iq type='set' id='v'><visible xmlns='urn:xmpp:invisible:1'/></iq>".to_owned(),
                        6 => "<presence type='visible'/>".to_owned(),
                        7 => format!("<presence to='{obs}@localhost' type='visible'/>"),
                        _ => format!("<presence to='{obs}@localhost' type='invisible'/>"),
                    };
                    c.send(&xml).await;
                    toggles.fetch_add(1, Ordering::Relaxed);
                }
                if rng.below(2) == 0 {
                    c.close().await;
                } else {
                    c.drop_tcp();
                }
                reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Sample the proxy while the load runs.
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let started = Instant::now();
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((started.elapsed(), proc_status(pid, "VmRSS:"), open_fds(pid)));
    }
    for t in tasks {
        t.await.expect("session task");
    }
    // Every session has ended: give the proxy and the server time to say the last unavailables.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = (started.elapsed(), proc_status(pid, "VmRSS:"), open_fds(pid));

    // 1. No leak: no presence at all from a hidden session ever reached an observer (not even
    //    an `unavailable`: it would tell that the resource had been online).
    let mut leaks = Vec::new();
    for w in &watchers {
        for s in w.received() {
            if s.name == "presence" && s.from().is_some_and(|f| f.contains("/hidden")) {
                leaks.push(s.raw.clone());
            }
        }
    }
    // 2. Everyone who saw a resource was told it left: the last presence from each is unavailable.
    let mut ghosts = Vec::new();
    for w in &watchers {
        let mut last: HashMap<String, bool> = HashMap::new();
        for s in w.received().iter().filter(|s| s.name == "presence") {
            if let Some(from) = s
                .from()
                .filter(|f| f.contains("/hidden") || f.contains("/free"))
            {
                last.insert(from.to_owned(), s.presence_type().is_none());
            }
        }
        ghosts.extend(
            last.into_iter()
                .filter(|(_, available)| *available)
                .map(|(f, _)| f),
        );
    }
    let warm = samples
        .iter()
        .find(|(t, _, _)| started + *t >= warm_up)
        .copied()
        .unwrap_or(end);
    eprintln!(
        "soak: {:?}, {} sessions, {} toggles, {} reconnects, {} leaks, {} ghosts; \
         RSS after warm-up {} KiB, at the end of the load {} KiB; fds after warm-up {}, at the end {}",
        duration,
        USERS * RESOURCES,
        toggles.load(Ordering::Relaxed),
        reconnects.load(Ordering::Relaxed),
        leaks.len(),
        ghosts.len(),
        warm.1,
        samples.last().map(|s| s.1).unwrap_or(0),
        warm.2,
        end.2
    );
    assert!(
        leaks.is_empty(),
        "presence of hidden sessions leaked: {:?}",
        &leaks[..leaks.len().min(5)]
    );
    assert!(
        ghosts.is_empty(),
        "observers still see resources that left: {:?}",
        &ghosts[..ghosts.len().min(5)]
    );
    // Memory: no growth beyond 10% after warm-up. Sessions come and go all the time, so single
    // samples swing with the number connected; compare the peaks of the two halves of the
    // measured part of the run (a leak makes the second one grow with the load served).
    let measured: Vec<u64> = samples
        .iter()
        .filter(|(t, _, _)| started + *t >= warm_up)
        .map(|s| s.1)
        .collect();
    let (first, second) = measured.split_at(measured.len() / 2);
    let first_peak = first.iter().copied().max().unwrap_or(warm.1);
    let second_peak = second.iter().copied().max().unwrap_or(end.1);
    eprintln!(
        "soak: RSS peak after warm-up {first_peak} KiB, in the second half {second_peak} KiB"
    );
    assert!(
        (second_peak as f64) <= first_peak as f64 * 1.10 + 2048.0,
        "RSS grew from a peak of {first_peak} KiB to {second_peak} KiB"
    );
    // File descriptors: every session has ended, so only the listeners remain.
    assert!(
        end.2 <= 16,
        "{} file descriptors still open after every session ended",
        end.2
    );
    proxy.terminate(Duration::from_secs(10)).await;
}
