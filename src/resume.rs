//! What the proxy keeps of a stream-managed session so that a client can resume it
//! (XEP-0198) through any listener with the same invisibility state and counter offsets.
//!
//! A session is registered under its stream-management id while it runs ("live") and, after
//! its client's connection dropped, while the server may still resume it ("detached", for the
//! `max` the server announced). A resume for an id the proxy does not hold is refused by the
//! proxy itself: a session whose invisibility it no longer knows is never resumed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::policy::Policy;
use crate::stream::sm::Counter;

/// Sessions held at most (live and detached); beyond it the oldest detached one is dropped.
pub const MAX_SESSIONS: usize = 100_000;
/// Longest time a detached session is kept, whatever the server announced.
pub const MAX_KEEP: Duration = Duration::from_secs(3600);
/// Kept when the server announced no `max`.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(300);
/// Time a live session gets to hand over its state to a resuming connection.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// The state a resumed stream continues with.
#[derive(Debug)]
pub struct Detached {
    pub policy: Policy,
    pub c2s: Counter,
    pub s2c: Counter,
    pub ns: &'static str,
    pub keep: Duration,
}

/// A live session's answer channel: send it a oneshot, get its state back once it has detached.
pub type Takeover = mpsc::Sender<oneshot::Sender<Detached>>;

enum Entry {
    Live(Takeover),
    Detached {
        expires: Instant,
        state: Box<Detached>,
    },
}

#[derive(Default)]
pub struct ResumeStore {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ResumeStore {
    /// A live session announces itself; it answers takeover requests on the paired receiver.
    pub fn register_live(&self, id: &str) -> mpsc::Receiver<oneshot::Sender<Detached>> {
        let (tx, rx) = mpsc::channel(1);
        let mut entries = self.lock();
        entries.insert(id.to_owned(), Entry::Live(tx));
        publish(&entries);
        rx
    }

    /// A live session ended without leaving anything to resume.
    pub fn forget(&self, id: &str) {
        let mut entries = self.lock();
        if matches!(entries.get(id), Some(Entry::Live(_))) {
            entries.remove(id);
        }
        publish(&entries);
    }

    /// Keeps a detached session for `state.keep` (bounded by [`MAX_KEEP`]).
    pub fn put(&self, id: &str, state: Detached) {
        let now = Instant::now();
        let expires = now + state.keep.min(MAX_KEEP);
        let mut entries = self.lock();
        entries.retain(|_, e| !matches!(e, Entry::Detached { expires, .. } if *expires <= now));
        if entries.len() >= MAX_SESSIONS {
            let oldest = entries
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Detached { expires, .. } => Some((*expires, k.clone())),
                    Entry::Live(_) => None,
                })
                .min();
            if let Some((_, k)) = oldest {
                tracing::warn!(
                    limit = MAX_SESSIONS,
                    "resumable sessions full: dropping the oldest"
                );
                entries.remove(&k);
            }
        }
        entries.insert(
            id.to_owned(),
            Entry::Detached {
                expires,
                state: Box::new(state),
            },
        );
        publish(&entries);
    }

    /// Takes the state for a resumption: a detached session's, or a live one's after it has
    /// detached (the client resumed before the proxy saw its old connection die).
    pub async fn take(&self, id: &str) -> Option<Detached> {
        let entry = {
            let mut entries = self.lock();
            let entry = entries.remove(id);
            publish(&entries);
            entry?
        };
        match entry {
            Entry::Detached { expires, state } => (expires > Instant::now()).then_some(*state),
            Entry::Live(takeover) => {
                let (tx, rx) = oneshot::channel();
                takeover.send(tx).await.ok()?;
                tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await.ok()?.ok()
            }
        }
    }

    /// Sessions held now (live and detached).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a consistent map (every operation is one call).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn publish(entries: &HashMap<String, Entry>) {
    metrics::gauge!(crate::metrics::SM_SESSIONS).set(entries.len() as f64);
}
