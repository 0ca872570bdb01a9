//! Subscriptions between test accounts, made with real logins.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Client, NS_ROSTER, Opts};

/// Makes `a` subscribe to `b` with `b` approving (`a` gets subscription `to`,
/// `b` gets `from`); with `mutual` also the reverse (both get `both`). Uses
/// real logins (resource `befriend`, `opts` otherwise), then closes them.
pub async fn befriend(
    addr: SocketAddr,
    a: (&str, &str),
    b: (&str, &str),
    mutual: bool,
    opts: &Opts,
) {
    const T: Duration = Duration::from_secs(10);
    let o = |r: &str| Opts {
        resource: r.to_string(),
        send_initial_presence: false,
        sm: false,
        resume: None,
        ..opts.clone()
    };
    let (ca, cb) = tokio::join!(
        Client::connect(addr, a.0, a.1, o("befriend-a")),
        Client::connect(addr, b.0, b.1, o("befriend-b")),
    );
    let ca = ca.unwrap_or_else(|e| panic!("befriend: login {}: {e}", a.0));
    let cb = cb.unwrap_or_else(|e| panic!("befriend: login {}: {e}", b.0));
    let (ja, jb) = (ca.bare.clone(), cb.bare.clone());
    // Fetch the roster (to get roster pushes) and become available (to get
    // subscription requests).
    for c in [&ca, &cb] {
        c.iq(
            &format!("<iq type='get' id='roster_1'><query xmlns='{NS_ROSTER}'/></iq>"),
            "roster_1",
            T,
        )
        .await;
        c.send("<presence/>").await;
    }
    subscribe(&ca, &cb, &ja, &jb, Some("to")).await;
    if mutual {
        subscribe(&cb, &ca, &jb, &ja, Some("both")).await;
        ca.wait_for("roster push: b is 'both'", T, |s| {
            s.is_roster_push(&jb, Some("both"))
        })
        .await;
    } else {
        cb.wait_for("roster push: a is 'from'", T, |s| {
            s.is_roster_push(&ja, Some("from"))
        })
        .await;
    }
    tokio::join!(ca.close(), cb.close());

    async fn subscribe(from: &Client, to: &Client, jf: &str, jt: &str, sub: Option<&str>) {
        let m_to = to.mark();
        let m_from = from.mark();
        from.send(&format!("<presence to='{jt}' type='subscribe'/>"))
            .await;
        to.wait_for_since(m_to, &format!("subscribe from {jf}"), T, |s| {
            s.is_presence_from(jf) && s.presence_type() == Some("subscribe")
        })
        .await;
        to.send(&format!("<presence to='{jf}' type='subscribed'/>"))
            .await;
        from.wait_for_since(m_from, &format!("roster push: {jt} is {sub:?}"), T, |s| {
            s.is_roster_push(jt, sub)
        })
        .await;
    }
}
