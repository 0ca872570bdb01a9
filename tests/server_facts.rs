//! Facts about the servers behind the proxy that its design relies on, measured directly (no
//! proxy). If a server changes one of these, the proxy's assumptions need a look.

mod common;

use std::time::Duration;

use common::client::{Client, Opts, befriend};
use common::servers::{Kind, Server, ServerOpts};

const T: Duration = Duration::from_secs(10);

/// A session that never sent undirected presence (what the server sees of an invisible
/// client) sends directed presence to a roster contact and to a non-contact, then its TCP
/// connection drops: the server tells the non-contact `unavailable`, but not the contact
/// (the "ghost online" the proxy must clear itself).
async fn silent_session_directed_presence_at_disconnect(kind: Kind) {
    let server = Server::start(ServerOpts {
        kind,
        users: vec![
            ("joe", "joe-pw"),
            ("friend", "friend-pw"),
            ("stranger", "stranger-pw"),
        ],
        require_tls: false,
    });
    befriend(
        server.c2s_addr(),
        ("joe", "joe-pw"),
        ("friend", "friend-pw"),
        true,
        &Opts::new("setup"),
    )
    .await;
    let obs = |u: &'static str| {
        Client::connect(
            server.c2s_addr(),
            u,
            if u == "friend" {
                "friend-pw"
            } else {
                "stranger-pw"
            },
            Opts::new("o").initial_presence(true),
        )
    };
    let friend = obs("friend").await.expect("friend");
    let stranger = obs("stranger").await.expect("stranger");
    let joe = Client::connect(server.c2s_addr(), "joe", "joe-pw", Opts::new("silent"))
        .await
        .expect("joe");
    joe.send("<presence to='friend@localhost'/>").await;
    joe.send("<presence to='stranger@localhost'/>").await;
    friend
        .wait_for("directed presence", T, |s| s.is_available_from(&joe.jid))
        .await;
    stranger
        .wait_for("directed presence", T, |s| s.is_available_from(&joe.jid))
        .await;
    let jid = joe.jid.clone();
    joe.drop_tcp();
    stranger
        .wait_for("unavailable to the non-contact", T, |s| {
            s.is_unavailable_from(&jid)
        })
        .await;
    friend
        .expect_none(
            "unavailable to the roster contact",
            Duration::from_millis(1500),
            |s| s.is_unavailable_from(&jid),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_silent_session_directed_presence_at_disconnect() {
    silent_session_directed_presence_at_disconnect(Kind::Prosody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_silent_session_directed_presence_at_disconnect() {
    silent_session_directed_presence_at_disconnect(Kind::Ejabberd).await;
}
