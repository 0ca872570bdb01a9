//! The scene most end-to-end tests play in: a real server with joe and his three contacts
//! (mutual subscriptions, made by real clients), a stranger and bob (no subscription), and the
//! proxy in front of it on a plaintext loopback upstream (the recommended setup).

use std::time::Duration;

use super::client::{Client, Opts, befriend};
use super::proxy::{self, TestProxy};
use super::servers::{Kind, Server, ServerOpts};

pub const CONTACTS: [&str; 3] = ["stpeter", "pgmillard", "rynok"];
const USERS: [&str; 6] = ["joe", "stpeter", "pgmillard", "rynok", "stranger", "bob"];

/// Every user's password.
pub fn pw(user: &str) -> String {
    format!("{user}-pw")
}

pub struct World {
    pub server: Server,
    pub proxy: TestProxy,
}

pub async fn world(kind: Kind) -> World {
    let passwords: Vec<String> = USERS.iter().map(|u| pw(u)).collect();
    let users: Vec<(&str, &str)> = USERS
        .iter()
        .copied()
        .zip(passwords.iter().map(String::as_str))
        .collect();
    let server = Server::start(ServerOpts {
        kind,
        users: vec![],
        require_tls: false,
    });
    server.register_many(&users);
    for c in CONTACTS {
        befriend(
            server.c2s_addr(),
            ("joe", "joe-pw"),
            (c, &pw(c)),
            true,
            &Opts::new("setup"),
        )
        .await;
    }
    let proxy = proxy::start(server.c2s_addr(), "plain", &[]).await;
    World { server, proxy }
}

impl World {
    /// A user logged in directly to the server (not through the proxy), available.
    pub async fn observer(&self, user: &str) -> Client {
        Client::connect(
            self.server.c2s_addr(),
            user,
            &pw(user),
            Opts::new("obs").initial_presence(true),
        )
        .await
        .unwrap_or_else(|e| panic!("observer {user}: {e}\n{}", self.server.log()))
    }

    /// The three contacts, observing.
    pub async fn observers(&self) -> Vec<Client> {
        let mut v = Vec::new();
        for c in CONTACTS {
            v.push(self.observer(c).await);
        }
        v
    }

    /// joe through the proxy's STARTTLS port, no initial presence yet.
    pub async fn joe(&self, opts: Opts) -> Client {
        let resource = opts.resource.clone();
        Client::connect(self.proxy.starttls, "joe", "joe-pw", opts)
            .await
            .unwrap_or_else(|e| panic!("joe/{resource} via proxy: {e}\n{}", self.server.log()))
    }
}

/// One test per server for each named `async fn(Kind)` of the calling file.
#[macro_export]
macro_rules! both_servers {
    ($($name:ident),* $(,)?) => {
        mod prosody {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Prosody).await;
                }
            )*
        }
        mod ejabberd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Ejabberd).await;
                }
            )*
        }
    };
}

const T: Duration = Duration::from_secs(10);

/// XEP-0186 `<invisible/>` (with `probe` if given), answered `result`.
pub async fn invisible(c: &Client, probe: Option<&str>) {
    let probe = probe.map(|p| format!(" probe='{p}'")).unwrap_or_default();
    let xml =
        format!("<iq type='set' id='inv'><invisible xmlns='urn:xmpp:invisible:1'{probe}/></iq>");
    let r = c.iq(&xml, "inv", T).await;
    assert_eq!(r.type_(), Some("result"), "{}", r.raw);
}

/// XEP-0186 `<visible/>`, answered `result`.
pub async fn visible(c: &Client) {
    let xml = "<iq type='set' id='vis'><visible xmlns='urn:xmpp:invisible:1'/></iq>";
    let r = c.iq(xml, "vis", T).await;
    assert_eq!(r.type_(), Some("result"), "{}", r.raw);
}
