//! What the proxy keeps of a stream-managed session so that a client can resume it
//! (XEP-0198) through any listener with the same invisibility state and counter offsets.
//!
//! A session is registered under its stream-management id while it runs ("live") and, after
//! its client's connection dropped, while the server may still resume it ("detached", for the
//! `max` the server announced). A resume for an id the proxy does not hold is refused by the
//! proxy itself: a session whose invisibility it no longer knows is never resumed.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jid::BareJid;
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
    Live {
        owner: BareJid,
        takeover: Takeover,
    },
    Detached {
        expires: Instant,
        state: Box<Detached>,
    },
}

impl Entry {
    fn owner(&self) -> Option<BareJid> {
        match self {
            Entry::Live { owner, .. } => Some(owner.clone()),
            Entry::Detached { state, .. } => state.policy.jid().map(|j| j.to_bare()),
        }
    }
}

#[derive(Default)]
pub struct ResumeStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Detached entries by expiry, oldest first (an entry taken or replaced since stays here
    /// until its time comes and is then skipped): pruning costs O(expired), not O(n).
    expiries: VecDeque<(Instant, String)>,
}

impl Inner {
    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiries.front() {
            if *at > now && self.entries.len() < MAX_SESSIONS {
                break;
            }
            let Some((at, id)) = self.expiries.pop_front() else {
                break;
            };
            if matches!(self.entries.get(&id), Some(Entry::Detached { expires, .. }) if *expires == at)
            {
                self.entries.remove(&id);
                if at > now {
                    tracing::warn!(
                        limit = MAX_SESSIONS,
                        "resumable sessions full: dropping the oldest"
                    );
                }
            }
        }
    }
}

impl ResumeStore {
    /// A live session announces itself; it answers takeover requests on the paired receiver.
    pub fn register_live(
        &self,
        id: &str,
        owner: BareJid,
    ) -> mpsc::Receiver<oneshot::Sender<Detached>> {
        let (tx, rx) = mpsc::channel(1);
        let mut inner = self.lock();
        inner.prune(Instant::now());
        inner.entries.insert(
            id.to_owned(),
            Entry::Live {
                owner,
                takeover: tx,
            },
        );
        publish(&inner.entries);
        rx
    }

    /// A live session ended without leaving anything to resume.
    pub fn forget(&self, id: &str) {
        let mut inner = self.lock();
        if matches!(inner.entries.get(id), Some(Entry::Live { .. })) {
            inner.entries.remove(id);
        }
        publish(&inner.entries);
    }

    /// Keeps a detached session for `state.keep` (bounded by [`MAX_KEEP`]).
    pub fn put(&self, id: &str, state: Detached) {
        let now = Instant::now();
        let expires = now + state.keep.min(MAX_KEEP);
        let mut inner = self.lock();
        inner.prune(now);
        inner.expiries.push_back((expires, id.to_owned()));
        // Keep the queue ordered when servers announce different keeps (rare): a late short
        // keep is moved to its place.
        let mut i = inner.expiries.len() - 1;
        while i > 0 && inner.expiries[i - 1].0 > expires {
            inner.expiries.swap(i - 1, i);
            i -= 1;
        }
        inner.entries.insert(
            id.to_owned(),
            Entry::Detached {
                expires,
                state: Box::new(state),
            },
        );
        publish(&inner.entries);
    }

    /// Takes the state for a resumption by `requester` (the user who authenticated on the
    /// resuming connection): a detached session's, or a live one's after it has detached (the
    /// client resumed before the proxy saw its old connection die). Another user's session is
    /// not touched.
    pub async fn take(&self, id: &str, requester: &BareJid) -> Option<Detached> {
        let entry = {
            let mut inner = self.lock();
            inner.prune(Instant::now());
            if inner.entries.get(id)?.owner().as_ref() != Some(requester) {
                return None;
            }
            let entry = inner.entries.remove(id);
            publish(&inner.entries);
            entry?
        };
        match entry {
            Entry::Detached { expires, state } => (expires > Instant::now()).then_some(*state),
            Entry::Live { takeover, .. } => {
                let (tx, rx) = oneshot::channel();
                takeover.send(tx).await.ok()?;
                tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await.ok()?.ok()
            }
        }
    }

    /// Sessions held now (live and detached).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every operation is one call).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn publish(entries: &HashMap<String, Entry>) {
    metrics::gauge!(crate::metrics::SM_SESSIONS).set(entries.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joe() -> BareJid {
        BareJid::new("joe@example.org").unwrap()
    }

    fn state(keep: Duration) -> Detached {
        let mut policy = Policy::new("example.org", "t");
        let mut out = Vec::new();
        let bind = bytes::Bytes::from_static(
            b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
        );
        let bound = bytes::Bytes::from_static(
            b"<iq type='result' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>joe@example.org/r</jid></bind></iq>",
        );
        let _ = policy.from_client(&bind, crate::xml::ElementKind::Iq, 0, &mut out);
        let _ = policy.from_server(&bound, crate::xml::ElementKind::Iq, &mut out);
        Detached {
            policy,
            c2s: Counter::default(),
            s2c: Counter::default(),
            ns: crate::ns::SM3,
            keep,
        }
    }

    #[tokio::test]
    async fn detached_state_is_taken_once_and_expires() {
        let store = ResumeStore::default();
        store.put("a", state(Duration::from_secs(60)));
        store.put("b", state(Duration::from_millis(1)));
        assert_eq!(store.len(), 2);
        assert!(store.take("a", &joe()).await.is_some());
        assert!(store.take("a", &joe()).await.is_none(), "taken once");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(store.take("b", &joe()).await.is_none(), "expired");
        assert!(store.take("unknown", &joe()).await.is_none());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn a_live_session_hands_its_state_over() {
        let store = std::sync::Arc::new(ResumeStore::default());
        let mut requests = store.register_live("live", joe());
        // Another user cannot take it over.
        assert!(
            store
                .take("live", &BareJid::new("mallory@example.org").unwrap())
                .await
                .is_none()
        );
        let live = tokio::spawn(async move {
            let reply = requests.recv().await.expect("takeover request");
            let _ = reply.send(state(Duration::from_secs(60)));
        });
        let taken = store.take("live", &joe()).await;
        assert!(taken.is_some());
        live.await.unwrap();
        // A live session that ended cleanly leaves nothing behind.
        let _rx = store.register_live("gone", joe());
        store.forget("gone");
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn replacing_an_entry_keeps_the_newest() {
        let store = ResumeStore::default();
        store.put("a", state(Duration::from_millis(1)));
        store.put("a", state(Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The stale expiry of the first put must not remove the second.
        store.put("other", state(Duration::from_secs(60)));
        assert!(store.take("a", &joe()).await.is_some());
    }
}
