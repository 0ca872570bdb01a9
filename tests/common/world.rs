//! The scene most end-to-end tests play in: a real server with joe and his three contacts
//! (mutual subscriptions, made by real clients), a stranger and bob (no subscription), and the
//! proxy in front of it on a plaintext loopback upstream (the recommended setup).

use std::time::Duration;

use super::client::{Client, Opts, befriend};
use super::proxy::{self, TestProxy};
use super::servers::{Kind, Profile, Server, ServerOpts};

pub const CONTACTS: [&str; 3] = ["stpeter", "pgmillard", "rynok"];
const USERS: [&str; 6] = ["joe", "stpeter", "pgmillard", "rynok", "stranger", "bob"];

/// Every user's password.
pub fn pw(user: &str) -> String {
    format!("{user}-pw")
}

pub struct World {
    pub server: Server,
    pub proxy: TestProxy,
    pub setup: Setup,
}

/// A server and the proxy's invisibility strategy on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub kind: Kind,
    /// The proxy hides through a privacy list (else: the silent session).
    pub list: bool,
}

impl Setup {
    /// Prosody without mod_privacy_lists: `auto` finds no privacy lists and stays silent.
    pub const PROSODY_SILENT: Setup = Setup {
        kind: Kind::Prosody,
        list: false,
    };
    /// Prosody with mod_privacy_lists: `auto` uses a privacy list.
    pub const PROSODY_LIST: Setup = Setup {
        kind: Kind::Prosody,
        list: true,
    };
    /// ejabberd's defaults (mod_privacy): `auto` uses a privacy list.
    pub const EJABBERD_LIST: Setup = Setup {
        kind: Kind::Ejabberd,
        list: true,
    };
    /// ejabberd with `--invisibility-strategy silent`.
    pub const EJABBERD_SILENT: Setup = Setup {
        kind: Kind::Ejabberd,
        list: false,
    };
}

/// The scene on `kind` with its privacy lists, and the proxy's default strategy (`auto`).
pub async fn world(kind: Kind) -> World {
    world_with(Setup { kind, list: true }).await
}

pub async fn world_with(setup: Setup) -> World {
    let kind = setup.kind;
    let passwords: Vec<String> = USERS.iter().map(|u| pw(u)).collect();
    let users: Vec<(&str, &str)> = USERS
        .iter()
        .copied()
        .zip(passwords.iter().map(String::as_str))
        .collect();
    let server = Server::start_with(
        ServerOpts {
            kind,
            users: vec![],
            require_tls: false,
        },
        Profile {
            privacy_lists: setup.list,
        },
    );
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
    // Prosody without privacy lists gets there through `auto`; ejabberd always has them.
    let extra: &[&str] = if !setup.list && kind == Kind::Ejabberd {
        &["--invisibility-strategy", "silent"]
    } else {
        &[]
    };
    let proxy = proxy::start(server.c2s_addr(), "plain", extra).await;
    World {
        server,
        proxy,
        setup,
    }
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

/// One test per server and strategy for each named `async fn(Setup)` of the calling file.
#[macro_export]
macro_rules! every_setup {
    ($($name:ident),* $(,)?) => {
        $crate::every_setup!(@one prosody_silent, PROSODY_SILENT, $($name),*);
        $crate::every_setup!(@one prosody_list, PROSODY_LIST, $($name),*);
        $crate::every_setup!(@one ejabberd_list, EJABBERD_LIST, $($name),*);
        $crate::every_setup!(@one ejabberd_silent, EJABBERD_SILENT, $($name),*);
    };
    (@one $module:ident, $setup:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::world::Setup::$setup).await;
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
