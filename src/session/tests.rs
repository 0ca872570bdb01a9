//! Unit tests of the session core, with no socket: a [`Pair`] feeds the core what a client and
//! a server would send and reads what it queues for each leg, the way quinn-proto's tests drive
//! a connection in memory.

use bytes::Bytes;

use super::core::{Config, Core, Event, Phase, PreTls};
use super::ending::{End, Step};
use crate::policy::Strategy;
use crate::resume::Detached;
use crate::stream::errors::Condition;
use crate::xml::Limits;

const CLIENT_HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.org' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
const SERVER_HEADER: &str = "<?xml version='1.0'?><stream:stream from='example.org' id='s1' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
const SASL_FEATURES: &str = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
    <mechanism>PLAIN</mechanism></mechanisms></stream:features>";
const BIND_FEATURES: &str = "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
    <sm xmlns='urn:xmpp:sm:3'/></stream:features>";
/// `\0alice\0secret`
const AUTH: &str = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>\
    AGFsaWNlAHNlY3JldA==</auth>";
const SUCCESS: &str = "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>";
const BIND: &str = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
    <resource>r</resource></bind></iq>";
const BOUND: &str = "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
    <jid>alice@example.org/r</jid></bind></iq>";
const INVISIBLE: &str = "<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1'/></iq>";
const TO_BOB: &str = "<presence to='bob@example.org'/>";

/// One core between an in-memory client and server.
struct Pair {
    core: Box<Core>,
    /// Every event the core asked of the shell, in order.
    events: Vec<Event>,
}

/// The proxy's defaults, on the silent strategy (no disco#info round trip after binding).
fn config() -> Config {
    Config {
        limits: Limits {
            max_element: 64 * 1024,
            max_depth: 32,
            max_attributes: 64,
        },
        strategy: Strategy::Silent,
        stream_id: "xv-test".into(),
        id_prefix: "veiltest".into(),
    }
}

impl Pair {
    fn new() -> Pair {
        Pair::with(Core::new(config()))
    }

    fn with(core: Core) -> Pair {
        Pair {
            core: Box::new(core),
            events: Vec::new(),
        }
    }

    fn client(&mut self, xml: &str) -> &mut Self {
        self.core.handle_client_bytes(xml.as_bytes());
        self.drain_events();
        self
    }

    fn server(&mut self, xml: &str) -> &mut Self {
        self.core.handle_server_bytes(xml.as_bytes());
        self.drain_events();
        self
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.core.poll_event() {
            self.events.push(e);
        }
    }

    /// What the core queued for the client since the last call (as if written).
    fn client_got(&mut self) -> String {
        let out = String::from_utf8_lossy(self.core.client_out()).into_owned();
        let n = self.core.client_out().len();
        self.core.client_written(n);
        out
    }

    /// What the core queued for the server since the last call (as if written).
    fn server_got(&mut self) -> String {
        let out = String::from_utf8_lossy(self.core.server_out()).into_owned();
        let n = self.core.server_out().len();
        self.core.server_written(n);
        out
    }

    /// The client's stream header was read and the upstream connected.
    fn connected() -> Pair {
        let mut p = Pair::new();
        p.client(CLIENT_HEADER);
        assert!(
            matches!(p.events.as_slice(), [Event::Connect { domain }] if domain == "example.org"),
            "{:?}",
            p.events
        );
        assert!(
            p.core.client_waits(),
            "nothing is read before the upstream is there"
        );
        p.events.clear();
        p.core.handle_connected();
        assert_eq!(
            p.server_got(),
            CLIENT_HEADER,
            "the client's header goes first"
        );
        p
    }

    /// Authenticated as alice, the stream restarted on both legs.
    fn authenticated() -> Pair {
        let mut p = Pair::connected();
        p.server(SERVER_HEADER).server(SASL_FEATURES);
        assert_eq!(p.client_got(), format!("{SERVER_HEADER}{SASL_FEATURES}"));
        p.client(AUTH);
        assert_eq!(p.server_got(), AUTH);
        assert!(matches!(p.core.phase(), Phase::Negotiating { .. }));
        assert!(p.core.authenticating());
        p.server(SUCCESS);
        assert_eq!(p.client_got(), SUCCESS);
        assert!(matches!(p.core.phase(), Phase::Authenticated { .. }));
        assert!(!p.core.authenticating());
        // Both streams restart: the framers read new headers.
        p.client(CLIENT_HEADER);
        assert_eq!(p.server_got(), CLIENT_HEADER);
        p.server(SERVER_HEADER).server(BIND_FEATURES);
        assert_eq!(p.client_got(), format!("{SERVER_HEADER}{BIND_FEATURES}"));
        p
    }

    /// Bound as alice@example.org/r, roster view empty.
    fn bound() -> Pair {
        let mut p = Pair::authenticated();
        p.client(BIND);
        assert_eq!(p.server_got(), BIND);
        p.server(BOUND);
        let roster_query = p.server_got();
        assert!(roster_query.contains("jabber:iq:roster"), "{roster_query}");
        assert_eq!(p.client_got(), BOUND);
        assert!(matches!(p.core.phase(), Phase::Bound));
        assert!(
            p.events
                .iter()
                .any(|e| matches!(e, Event::Bound(j) if j == "alice@example.org/r"))
        );
        let id = attr(&roster_query, "id");
        p.server(&format!(
            "<iq type='result' id='{id}'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@example.org' subscription='both'/></query></iq>"
        ));
        assert_eq!(
            p.client_got(),
            "",
            "the proxy's own roster answer is consumed"
        );
        p
    }

    /// Bound, with stream management enabled and resumable as `sm-1`.
    fn resumable() -> Pair {
        let mut p = Pair::bound();
        p.client("<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
        assert_eq!(
            p.server_got(),
            "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
        );
        p.server("<enabled xmlns='urn:xmpp:sm:3' id='sm-1' resume='true' max='60' location='10.0.0.1:5222'/>");
        assert_eq!(
            p.client_got(),
            "<enabled xmlns='urn:xmpp:sm:3' id='sm-1' resume='true' max='60'/>",
            "location would take a resuming client around the proxy"
        );
        assert!(p.events.iter().any(
            |e| matches!(e, Event::RegisterLive { id, owner } if id == "sm-1" && owner.to_string() == "alice@example.org")
        ));
        p
    }

    /// Bound, invisible (XEP-0186), shown to bob by directed presence.
    fn invisible_shown_to_bob() -> Pair {
        let mut p = Pair::bound();
        p.client(INVISIBLE);
        assert!(p.client_got().contains("type='result'"));
        p.server_got();
        p.client(TO_BOB);
        assert!(p.server_got().contains("bob@example.org"));
        assert!(p.core.policy.is_hidden());
        p
    }
}

fn attr(xml: &str, name: &str) -> String {
    crate::xml::StartTag::parse(xml.as_bytes())
        .expect("test xml")
        .attr(name)
        .expect("attribute")
        .to_owned()
}

#[test]
fn a_stream_header_without_to_is_refused_with_the_proxys_own_header() {
    let mut p = Pair::new();
    p.client(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    assert!(p.events.is_empty(), "nothing is connected");
    let plan = p.core.finish(None);
    assert!(matches!(plan.end, End::Refused(Condition::HostUnknown, _)));
    let [Step::ToClient(out), Step::CloseClient] = plan.steps.as_slice() else {
        panic!("{:?}", plan.steps);
    };
    let out = String::from_utf8_lossy(out);
    assert!(
        out.starts_with("<?xml version='1.0'?><stream:stream"),
        "{out}"
    );
    assert!(out.contains("<host-unknown "), "{out}");
}

#[test]
fn bytes_after_the_header_wait_for_the_upstream() {
    let mut p = Pair::new();
    p.client(&format!("{CLIENT_HEADER}{AUTH}"));
    assert_eq!(
        p.core.server_out(),
        b"",
        "nothing goes anywhere before the connection"
    );
    p.core.handle_connected();
    assert_eq!(p.server_got(), format!("{CLIENT_HEADER}{AUTH}"));
}

#[test]
fn an_unreachable_server_relays_its_own_stream_error() {
    let mut p = Pair::new();
    p.client(CLIENT_HEADER);
    p.core.handle_connect_failed(Some(Bytes::from_static(
        b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    )));
    let plan = p.core.finish(None);
    assert!(
        plan.events
            .iter()
            .any(|e| matches!(e, Event::StreamError(Condition::HostUnknown)))
    );
    let [Step::ToClient(out), Step::CloseClient] = plan.steps.as_slice() else {
        panic!("{:?}", plan.steps);
    };
    let out = String::from_utf8_lossy(out);
    assert!(out.contains("from='example.org'") && out.ends_with("</stream:error></stream:stream>"));
}

#[test]
fn negotiation_binding_and_the_phases() {
    let p = Pair::bound();
    assert!(!p.core.client_waits());
}

#[test]
fn starttls_inside_the_relay_is_a_policy_violation() {
    let mut p = Pair::authenticated();
    p.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert!(matches!(
        p.core.end(),
        Some(End::ClientError(Condition::PolicyViolation, _))
    ));
}

#[test]
fn compression_is_answered_by_the_proxy() {
    let mut p = Pair::authenticated();
    p.client(
        "<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>",
    );
    assert_eq!(p.server_got(), "");
    assert!(p.client_got().contains("<setup-failed/>"));
}

#[test]
fn sm_counts_map_what_the_proxy_consumed_and_added() {
    let mut p = Pair::resumable();
    // Two client stanzas: one passes, one (an XEP-0186 command) is answered by the proxy.
    p.client("<message to='bob@example.org'><body>hi</body></message>");
    p.client(INVISIBLE);
    assert!(
        p.client_got().contains("type='result'"),
        "answered by the proxy"
    );
    let upstream = p.server_got();
    assert!(upstream.contains("<message"));
    // The server acknowledges what it got: one message (the command never reached it).
    p.server("<a xmlns='urn:xmpp:sm:3' h='1'/>");
    assert_eq!(
        p.client_got(),
        "<a xmlns='urn:xmpp:sm:3' h='2'/>",
        "the client sent two stanzas"
    );
    // The client acknowledges the proxy's own answer too; the server never sent it.
    p.server("<message from='bob@example.org' to='alice@example.org/r'><body>yo</body></message>");
    p.client_got();
    p.client("<a xmlns='urn:xmpp:sm:3' h='2'/>");
    assert_eq!(p.server_got(), "<a xmlns='urn:xmpp:sm:3' h='1'/>");
}

#[test]
fn a_bad_client_ack_is_the_clients_error_and_the_ending_still_tells_unavailable() {
    let mut p = Pair::invisible_shown_to_bob();
    p.client("<enable xmlns='urn:xmpp:sm:3'/>");
    p.server("<enabled xmlns='urn:xmpp:sm:3'/>");
    p.client("<a xmlns='urn:xmpp:sm:3' h='many'/>");
    assert!(matches!(
        p.core.end(),
        Some(End::ClientError(Condition::UndefinedCondition, _))
    ));
    let plan = p.core.finish(None);
    let to_server = server_bytes(&plan.steps);
    assert!(
        to_server.contains("<presence to='bob@example.org' type='unavailable'")
            || to_server.contains("type='unavailable' to='bob@example.org'"),
        "{to_server}"
    );
}

#[test]
fn a_second_enable_is_refused_by_the_proxy() {
    let mut p = Pair::resumable();
    p.client("<enable xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(p.server_got(), "");
    assert!(p.client_got().contains("<unexpected-request "));
}

/// Detaches a resumable session whose client sent and received stanzas, and returns its state.
fn detached_state() -> (String, Box<Detached>) {
    let mut p = Pair::resumable();
    p.client(INVISIBLE);
    p.client_got();
    p.server("<message from='bob@example.org' to='alice@example.org/r'><body>1</body></message>");
    p.client_got();
    let plan = p.core.finish(Some(End::ClientGone));
    let mut steps = plan.steps.into_iter();
    assert!(matches!(steps.next(), Some(Step::ToServer(_))));
    assert!(matches!(steps.next(), Some(Step::DropServer)));
    match steps.next() {
        Some(Step::Detach { id, state }) => (id, state),
        other => panic!("expected Detach, got {other:?}"),
    }
}

#[test]
fn resumption_continues_the_detached_session_with_its_counts_and_invisibility() {
    let (id, state) = detached_state();
    assert_eq!(id, "sm-1");
    let mut p = Pair::authenticated();
    p.client(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ));
    let Some(Event::LookupResume { previd, requester }) = p.events.pop() else {
        panic!("{:?}", p.events);
    };
    assert_eq!(
        (previd.as_str(), requester.to_string().as_str()),
        ("sm-1", "alice@example.org")
    );
    assert!(
        p.core.client_waits(),
        "the client's next stanzas wait for the outcome"
    );
    p.client("<presence/>");
    assert_eq!(p.server_got(), "", "held while the resumption is open");
    p.core.handle_resume_state(Some(*state));
    // The client says it received nothing: neither the proxy's IQ result nor the server's message.
    let resume = p.server_got();
    assert_eq!(
        resume,
        "<resume xmlns='urn:xmpp:sm:3' previd='sm-1' h='0'/>"
    );
    p.server("<resumed xmlns='urn:xmpp:sm:3' previd='sm-1' h='0'/>");
    let to_client = p.client_got();
    assert!(
        to_client.starts_with("<resumed xmlns='urn:xmpp:sm:3' previd='sm-1' h='1'/>"),
        "the client sent one stanza (the command) that the server never saw: {to_client}"
    );
    // The proxy's result the client had not acknowledged comes again.
    assert!(to_client.contains("type='result'"), "{to_client}");
    assert!(matches!(p.core.phase(), Phase::Bound));
    assert!(p.core.policy.is_hidden(), "still invisible");
    assert!(
        p.events
            .iter()
            .any(|e| matches!(e, Event::Resumption { ok: true }))
    );
    assert!(
        p.events
            .iter()
            .any(|e| matches!(e, Event::RegisterLive { id, .. } if id == "sm-1"))
    );
    // The held presence goes on now, under the resumed invisibility: withheld.
    assert_eq!(p.server_got(), "");
}

#[test]
fn a_resumption_the_proxy_does_not_hold_is_refused() {
    let mut p = Pair::authenticated();
    p.client("<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>");
    p.core.handle_resume_state(None);
    assert!(p.client_got().contains("<item-not-found "));
    assert_eq!(p.server_got(), "");
    assert!(matches!(p.core.phase(), Phase::Authenticated { .. }));
}

#[test]
fn a_resumption_the_server_refuses_gives_the_state_back() {
    let (_, state) = detached_state();
    let mut p = Pair::authenticated();
    p.client("<resume xmlns='urn:xmpp:sm:3' previd='sm-1' h='0'/>");
    p.core.handle_resume_state(Some(*state));
    p.server_got();
    p.server("<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>");
    assert!(p.client_got().contains("<failed"));
    assert!(
        p.events
            .iter()
            .any(|e| matches!(e, Event::PutBack { id, .. } if id == "sm-1"))
    );
    assert!(matches!(p.core.phase(), Phase::Authenticated { .. }));
}

#[test]
fn resume_is_refused_before_authentication_and_after_binding() {
    let mut p = Pair::connected();
    p.server(SERVER_HEADER).server(SASL_FEATURES);
    p.client_got();
    p.client("<resume xmlns='urn:xmpp:sm:3' previd='sm-1' h='0'/>");
    assert!(p.client_got().contains("<unexpected-request "));
    let mut p = Pair::bound();
    p.client("<resume xmlns='urn:xmpp:sm:3' previd='sm-1' h='0'/>");
    assert!(p.client_got().contains("<unexpected-request "));
    assert!(
        !p.events
            .iter()
            .any(|e| matches!(e, Event::LookupResume { .. }))
    );
}

#[test]
fn see_other_host_never_reaches_the_client() {
    let mut p = Pair::bound();
    p.server(
        "<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>\
         10.0.0.2</see-other-host></stream:error>",
    );
    let out = p.client_got();
    assert!(
        !out.contains("10.0.0.2") && out.contains("<system-shutdown "),
        "{out}"
    );
    assert!(matches!(p.core.end(), Some(End::ServerClosed)));
}

/// What the ending sends the server, all steps together.
fn server_bytes(steps: &[Step]) -> String {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::ToServer(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

fn client_bytes(steps: &[Step]) -> String {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::ToClient(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

/// A step's name, for the table.
fn name(step: &Step) -> &'static str {
    match step {
        Step::ToServer(_) => "to-server",
        Step::ToClient(_) => "to-client",
        Step::CloseClient => "close-client",
        Step::DrainServer => "drain-server",
        Step::CloseServer => "close-server",
        Step::DropServer => "drop-server",
        Step::Detach { .. } => "detach",
        Step::Forget { .. } => "forget",
    }
}

fn every_end() -> Vec<End> {
    vec![
        End::ClientClosed,
        End::ClientGone,
        End::ClientError(Condition::NotWellFormed, "bad".into()),
        End::ServerClosed,
        End::ServerGone("gone".into()),
        End::ServerUnreadable("bad".into()),
        End::ClientStalled,
        End::Shutdown,
        End::TakenOver,
    ]
}

/// The ending table: for each way a bound session can end, resumable or not, the steps in
/// order and the stream error the client is told.
#[test]
fn the_ending_table() {
    use Condition::*;
    #[rustfmt::skip]
    let table: &[(&str, bool, &[&str], Option<Condition>)] = &[
        ("ClientClosed", false, &["to-server", "to-client", "close-client", "drain-server", "close-server"], None),
        ("ClientGone", false, &["to-server", "drain-server", "close-server"], None),
        ("ClientError", false, &["to-server", "to-client", "close-client", "drain-server", "close-server"], Some(NotWellFormed)),
        ("ServerClosed", false, &["to-client", "close-client"], None),
        ("ServerGone", false, &["to-client", "close-client"], Some(RemoteConnectionFailed)),
        ("ServerUnreadable", false, &["to-server", "to-client", "close-client", "drain-server", "close-server"], Some(RemoteConnectionFailed)),
        ("ClientStalled", false, &["to-server", "to-client", "close-client", "drain-server", "close-server"], Some(ResourceConstraint)),
        ("Shutdown", false, &["to-server", "to-client", "close-client", "drain-server", "close-server"], Some(SystemShutdown)),
        ("TakenOver", false, &["to-server", "drain-server", "close-server"], None),
        // Resumable: a lost client detaches; every other end forgets the registration first.
        ("ClientClosed", true, &["forget", "to-server", "to-client", "close-client", "drain-server", "close-server"], None),
        ("ClientGone", true, &["to-server", "drop-server", "detach"], None),
        ("ClientError", true, &["forget", "to-server", "to-client", "close-client", "drain-server", "close-server"], Some(NotWellFormed)),
        ("ServerClosed", true, &["forget", "to-client", "close-client"], None),
        ("ServerGone", true, &["forget", "to-client", "close-client"], Some(RemoteConnectionFailed)),
        ("ServerUnreadable", true, &["forget", "to-server", "to-client", "close-client", "drain-server", "close-server"], Some(RemoteConnectionFailed)),
        ("ClientStalled", true, &["to-server", "drop-server", "detach"], None),
        ("Shutdown", true, &["forget", "to-server", "to-client", "close-client", "drain-server", "close-server"], Some(SystemShutdown)),
        ("TakenOver", true, &["to-server", "drop-server", "detach"], None),
    ];
    assert_eq!(table.len(), 2 * every_end().len(), "every end, both ways");
    for &(which, resumable, expected, condition) in table {
        let end = every_end()
            .into_iter()
            .find(|e| format!("{e:?}").starts_with(which))
            .expect("an end of the table");
        let p = if resumable {
            Pair::resumable()
        } else {
            Pair::bound()
        };
        let plan = p.core.finish(Some(end));
        let names: Vec<_> = plan.steps.iter().map(name).collect();
        assert_eq!(names, expected, "{which}, resumable: {resumable}");
        let told = plan.events.iter().find_map(|e| match e {
            Event::StreamError(c) => Some(*c),
            _ => None,
        });
        assert_eq!(told, condition, "{which}, resumable: {resumable}");
        if let Some(condition) = condition {
            let to_client = client_bytes(&plan.steps);
            assert!(
                to_client.contains(&format!("<{condition} ")),
                "{which}: {to_client}"
            );
        }
    }
}

/// "The `unavailable`s go out before the close", as a property of every plan: an invisible
/// session shown to bob by directed presence, whatever ends it, tells bob `unavailable` before
/// `</stream:stream>` whenever the upstream can still carry it, and the server leg is written
/// before it is drained and closed.
#[test]
fn the_unavailables_go_out_before_the_close() {
    for resumable in [false, true] {
        for end in every_end() {
            let mut p = Pair::invisible_shown_to_bob();
            if resumable {
                p.client("<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
                p.server("<enabled xmlns='urn:xmpp:sm:3' id='sm-2' resume='true'/>");
                p.server_got();
                p.client_got();
            }
            let label = format!("{end:?}, resumable: {resumable}");
            let upstream_open = end.upstream_open();
            let plan = p.core.finish(Some(end));
            let to_server = server_bytes(&plan.steps);
            if !upstream_open {
                assert_eq!(to_server, "", "{label}");
                assert_eq!(
                    plan.untold, 1,
                    "{label}: bob cannot be told, and the log says so"
                );
                continue;
            }
            let unavailable = to_server
                .find("<presence to='bob@example.org' type='unavailable'/>")
                .unwrap_or_else(|| panic!("{label}: bob is told: {to_server}"));
            let names: Vec<_> = plan.steps.iter().map(name).collect();
            let first_write = names.iter().position(|n| *n == "to-server");
            match to_server.find("</stream:stream>") {
                Some(close) => assert!(unavailable < close, "{label}: {to_server}"),
                None => assert!(names.contains(&"drop-server"), "{label}: {names:?}"),
            }
            for later in ["drain-server", "close-server", "drop-server"] {
                if let Some(i) = names.iter().position(|n| *n == later) {
                    assert!(first_write < Some(i), "{label}: {names:?}");
                }
            }
        }
    }
}

#[test]
fn the_queued_output_goes_first_in_the_ending() {
    let mut p = Pair::bound();
    p.client("<message to='bob@example.org'><body>last words</body></message></stream:stream>");
    assert!(matches!(p.core.end(), Some(End::ClientClosed)));
    let plan = p.core.finish(None);
    let to_server = server_bytes(&plan.steps);
    assert!(
        to_server.starts_with("<message to='bob@example.org'><body>last words</body></message>"),
        "{to_server}"
    );
    assert!(to_server.ends_with("</stream:stream>"));
    assert_eq!(client_bytes(&plan.steps), "</stream:stream>");
}

#[test]
fn a_partly_written_queue_goes_on_where_it_stopped() {
    let mut p = Pair::bound();
    p.server("<message from='bob@example.org'><body>0123456789</body></message>");
    p.core.client_written(10);
    let plan = p.core.finish(Some(End::Shutdown));
    let to_client = client_bytes(&plan.steps);
    assert!(
        to_client
            .starts_with("rom='bob@example.org'><body>0123456789</body></message><stream:error"),
        "{to_client}"
    );
}

fn starttls_core() -> Pair {
    Pair::with(Core::new_starttls(config()))
}

#[test]
fn before_tls_the_proxy_answers_and_takes_only_starttls() {
    let mut p = starttls_core();
    assert!(matches!(p.core.phase(), Phase::PreTls(PreTls::Header)));
    p.client(CLIENT_HEADER);
    let answer = p.client_got();
    assert!(
        answer.starts_with("<?xml version='1.0'?><stream:stream"),
        "{answer}"
    );
    assert!(
        answer.ends_with(
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>\
             </starttls></stream:features>"
        ),
        "{answer}"
    );
    p.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(
        p.client_got(),
        "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    );
    assert!(matches!(p.events.as_slice(), [Event::StartTls { domain }] if domain == "example.org"));
    assert!(
        p.core.client_waits(),
        "the next bytes are the TLS handshake"
    );
    assert_eq!(p.core.server_out(), b"", "nothing before TLS goes upstream");
    p.events.clear();
    p.core.handle_tls_established();
    assert!(matches!(p.core.phase(), Phase::Opening));
    p.client(CLIENT_HEADER);
    assert!(matches!(p.events.as_slice(), [Event::Connect { .. }]));
}

#[test]
fn before_tls_starttls_may_use_a_prefix_of_the_stream_header() {
    let mut p = starttls_core();
    p.client(
        "<stream:stream to='example.org' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:tls='urn:ietf:params:xml:ns:xmpp-tls' version='1.0'>",
    );
    p.client_got();
    p.client("<tls:starttls/>");
    assert_eq!(
        p.client_got(),
        "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    );
}

#[test]
fn before_tls_anything_but_starttls_is_a_policy_violation_in_the_answered_stream() {
    for (what, sent) in [
        (
            "a stanza",
            "<message to='bob@example.org'><body>in clear</body></message>",
        ),
        ("SASL", AUTH),
        (
            "data before <proceed/>",
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x01",
        ),
    ] {
        let mut p = starttls_core();
        p.client(CLIENT_HEADER);
        p.client_got();
        p.client(sent);
        assert!(
            matches!(
                p.core.end(),
                Some(End::ClientError(Condition::PolicyViolation, _))
            ),
            "{what}: {:?}",
            p.core.end()
        );
        let plan = p.core.finish(None);
        let names: Vec<_> = plan.steps.iter().map(name).collect();
        assert_eq!(names, ["to-client", "close-client"], "{what}: no upstream");
        let to_client = client_bytes(&plan.steps);
        assert!(
            to_client.starts_with("<stream:error") && !to_client.contains("<proceed"),
            "{what}: the header was sent already: {to_client}"
        );
    }
}

/// Random sessions through the core: stanzas from both sides (split at random points, as reads
/// split them), stream-management counts, visibility changes, then any ending. Whatever the
/// sequence: no panic; no XEP-0018 presence and, while the session hides, no undirected
/// available presence reaches the server; every ending that can still talk to the server puts
/// its last words before `</stream:stream>`, and writes them before it drains or closes.
mod property {
    use proptest::prelude::{ProptestConfig, any, prop_assert, prop_oneof, proptest};
    use proptest::strategy::{Just, Strategy as _};

    use super::*;

    const CLIENT: &[&str] = &[
        "<message to='bob@example.org'><body>hi</body></message>",
        "<presence/>",
        "<presence><show>away</show></presence>",
        "<presence to='bob@example.org'/>",
        "<presence to='carol@example.org' type='unavailable'/>",
        "<presence type='invisible'/>",
        "<presence type='visible'/>",
        "<presence type='visible' to='bob@example.org'/>",
        "<presence type='invisible' to='carol@example.org'/>",
        INVISIBLE,
        "<iq type='set' id='vis1'><visible xmlns='urn:xmpp:invisible:1'/></iq>",
        "<iq type='get' id='p1' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<r xmlns='urn:xmpp:sm:3'/>",
        "<a xmlns='urn:xmpp:sm:3' h='1'/>",
    ];
    const SERVER: &[&str] = &[
        "<message from='bob@example.org/x' to='alice@example.org/r'><body>yo</body></message>",
        "<presence from='bob@example.org/x' to='alice@example.org/r'/>",
        "<presence from='carol@example.org/y' to='alice@example.org' type='probe'/>",
        "<iq type='result' id='p1' from='example.org' to='alice@example.org/r'/>",
        "<r xmlns='urn:xmpp:sm:3'/>",
        "<a xmlns='urn:xmpp:sm:3' h='0'/>",
    ];

    #[derive(Debug, Clone)]
    enum Ev {
        Client(usize, usize),
        Server(usize, usize),
    }

    fn ev() -> impl proptest::strategy::Strategy<Value = Ev> {
        prop_oneof![
            (0..CLIENT.len(), any::<usize>()).prop_map(|(i, s)| Ev::Client(i, s)),
            (0..SERVER.len(), any::<usize>()).prop_map(|(i, s)| Ev::Server(i, s)),
        ]
    }

    fn end() -> impl proptest::strategy::Strategy<Value = usize> {
        (0..every_end().len()).prop_flat_map(Just)
    }

    /// An undirected available presence (no `to`, no `type`).
    fn reveals(out: &str) -> bool {
        out.split("<presence").skip(1).any(|p| {
            let tag = p.split('>').next().unwrap_or_default();
            !tag.contains(" to=") && !tag.contains(" type=")
        })
    }

    fn run(
        events: &[Ev],
        end_index: usize,
        resumable: bool,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut p = if resumable {
            Pair::resumable()
        } else {
            Pair::bound()
        };
        for ev in events {
            if p.core.end().is_some() {
                break;
            }
            let hidden = p.core.policy.is_hidden();
            let (xml, split, from_client) = match *ev {
                Ev::Client(i, s) => (CLIENT[i], s, true),
                Ev::Server(i, s) => (SERVER[i], s, false),
            };
            let cut = split % (xml.len() + 1);
            for part in [&xml[..cut], &xml[cut..]] {
                if from_client {
                    p.client(part);
                } else {
                    p.server(part);
                }
            }
            let to_server = p.server_got();
            p.client_got();
            prop_assert!(
                !to_server.contains("type='invisible'") && !to_server.contains("type='visible'"),
                "XEP-0018 presence reached the server: {to_server}"
            );
            if hidden && p.core.policy.is_hidden() {
                prop_assert!(!reveals(&to_server), "hidden, yet: {to_server}");
            }
        }
        let end = every_end().swap_remove(end_index);
        let plan = p.core.finish(Some(end));
        let names: Vec<_> = plan.steps.iter().map(name).collect();
        let to_server = server_bytes(&plan.steps);
        let detached = names.contains(&"detach");
        if names.contains(&"close-server") {
            prop_assert!(to_server.ends_with("</stream:stream>"), "{to_server}");
            let last = to_server.len() - "</stream:stream>".len();
            prop_assert!(!to_server[..last].contains("</stream:stream>"));
            let write = names.iter().position(|n| *n == "to-server");
            let close = names.iter().position(|n| *n == "drain-server");
            prop_assert!(write < close, "{names:?}");
        } else if detached {
            prop_assert!(
                !to_server.contains("</stream:stream>"),
                "a detached stream stays open upstream"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
        ))]

        #[test]
        fn random_sessions_through_the_core(
            events in proptest::collection::vec(ev(), 0..32),
            end_index in end(),
            resumable in any::<bool>(),
        ) {
            run(&events, end_index, resumable)?;
        }
    }
}
