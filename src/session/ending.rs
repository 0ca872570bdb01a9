//! How a session ends, as a pure plan: an [`End`] and the core's state in, the steps on each
//! leg out, in the order that keeps the promise. The shell carries the steps out one by one,
//! each bounded in time; the table tests below check the order, not the shell.
//!
//! The rules:
//! - while the upstream is open, the policy's `unavailable`s go to the server before the
//!   proxy's `</stream:stream>`, and the server gets time to answer the close;
//! - a client whose connection dropped, on a stream the server can resume, is detached: the
//!   entities only the proxy would tell get `unavailable`, the upstream is dropped without a
//!   close (the server keeps the session) and the state waits in the resume store;
//! - a client still there is told why (a stream error, or the close of its stream).

use bytes::Bytes;

use super::core::{Core, Event, Origin, Sm};
use crate::policy::report::Reports;
use crate::resume::Detached;
use crate::stream::errors::{Condition, stream_error};
use crate::xml::Framer;

/// Why a session ends.
#[derive(Debug)]
pub enum End {
    /// The client was refused before anything was relayed: it gets the proxy's own stream
    /// header and this error.
    Refused(Condition, String),
    /// The server could not be reached; with the stream error it sent the proxy, if any.
    Unreachable(Option<Bytes>),
    /// The client closed its stream.
    ClientClosed,
    /// The client's connection dropped without a stream close.
    ClientGone,
    /// The client sent something the proxy refuses: it gets this stream error.
    ClientError(Condition, String),
    /// The server closed its stream (after a stream error, if it sent one).
    ServerClosed,
    /// The server's connection dropped or stalled: nothing more can be said to it.
    ServerGone(String),
    /// The server sent something the proxy cannot relay, but its connection still works: the
    /// session ends, and the pending `unavailable`s still go out before the stream close.
    ServerUnreadable(String),
    /// The client stopped reading: like a drop (its stream may be resumed), but it is also
    /// sent a stream error in case it reads again.
    ClientStalled,
    /// The proxy is shutting down.
    Shutdown,
    /// The client resumed this stream on another connection, which asks for the state.
    TakenOver,
}

impl End {
    /// The upstream connection can still carry the proxy's last words.
    pub fn upstream_open(&self) -> bool {
        !matches!(
            self,
            End::ServerClosed | End::ServerGone(_) | End::Refused(..) | End::Unreachable(_)
        )
    }

    /// The client's connection is gone (or handed over): nothing is written to it, except a
    /// last stream error to a client that stopped reading.
    pub fn client_lost(&self) -> bool {
        matches!(self, End::ClientGone | End::ClientStalled | End::TakenOver)
    }

    /// The stream error the client gets, if any.
    fn client_error(&self) -> Option<(Condition, &str)> {
        match self {
            End::Refused(condition, reason) | End::ClientError(condition, reason) => {
                Some((*condition, reason))
            }
            End::ClientStalled => Some((
                Condition::ResourceConstraint,
                "the client does not read what it is sent",
            )),
            End::Shutdown => Some((Condition::SystemShutdown, "the proxy is shutting down")),
            End::ServerGone(_) | End::ServerUnreadable(_) => Some((
                Condition::RemoteConnectionFailed,
                "the connection to the server was lost",
            )),
            End::Unreachable(None) => Some((
                Condition::RemoteConnectionFailed,
                "the server cannot be reached",
            )),
            End::Unreachable(Some(_))
            | End::ClientClosed
            | End::ClientGone
            | End::TakenOver
            | End::ServerClosed => None,
        }
    }
}

/// One step of an ending, on one leg.
#[derive(Debug)]
pub enum Step {
    /// Write these bytes to the server.
    ToServer(Vec<u8>),
    /// Write these bytes to the client.
    ToClient(Vec<u8>),
    /// Close the client's connection (TLS close_notify, then FIN).
    CloseClient,
    /// Read and drop what the server still sends until it closes its stream.
    DrainServer,
    /// Close the upstream connection.
    CloseServer,
    /// Drop the upstream connection without a stream close: the server keeps the session for
    /// resumption.
    DropServer,
    /// The stream may be resumed: keep this state under its id (or hand it to the connection
    /// that took it over).
    Detach { id: String, state: Box<Detached> },
    /// Nothing to resume: the live session's registration goes.
    Forget { id: String },
}

/// An ending: the events still owed to the shell (metrics, gauges), then the steps in order.
#[derive(Debug)]
pub struct Plan {
    pub end: End,
    pub events: Vec<Event>,
    pub steps: Vec<Step>,
    /// How many stanzas the proxy itself sent at the end (`unavailable`s, list changes).
    pub told: usize,
    /// Entities shown this resource by directed presence that nobody can tell `unavailable`
    /// (the upstream is gone).
    pub untold: usize,
    /// The server's framer, at its place in the stream, to read the server's last words.
    pub server_framer: Framer,
    /// What the policy reported during the ending.
    pub reports: Reports,
}

/// The plan for `end`, from the core's state.
pub fn plan(mut core: Core, end: End) -> Plan {
    let mut steps = Vec::new();
    let resumable = core.sm.as_ref().is_some_and(|sm| sm.id.is_some());
    // Before the relay there is no upstream to tell anything.
    let upstream_open = end.upstream_open() && !core.before_relay();
    if upstream_open && resumable && end.client_lost() {
        return detach(core, end);
    }
    if let Some(id) = core.sm.as_ref().and_then(|sm| sm.id.clone()) {
        steps.push(Step::Forget { id });
    }
    let mut told = 0;
    let mut untold = 0;
    if upstream_open {
        core.policy.session_end(&mut core.actions);
        told = core.actions.len();
        let _ = core.apply_actions(Origin::Proxy);
    } else {
        untold = core.policy.shown().count();
    }
    let (mut to_client, mut to_server) = core.take_queues();
    if core.owes_header() {
        // The client has no stream header to read an error in: the proxy's own comes first.
        to_client = core.own_header().to_vec();
    }
    match (&end, end.client_error()) {
        (End::Unreachable(Some(server_error)), _) => {
            core.events
                .push(Event::StreamError(server_condition(server_error)));
            to_client.extend_from_slice(server_error);
            to_client.extend_from_slice(b"</stream:stream>");
        }
        (_, Some((condition, reason))) => {
            core.events.push(Event::StreamError(condition));
            to_client.extend_from_slice(&stream_error(condition, reason));
        }
        (End::ClientClosed, None) => to_client.extend_from_slice(b"</stream:stream>"),
        // On ServerClosed the server's own close was relayed already.
        _ => {}
    }
    core.set_hidden(None);
    if upstream_open {
        to_server.extend_from_slice(b"</stream:stream>");
        steps.push(Step::ToServer(to_server));
    }
    if !end.client_lost() || matches!(end, End::ClientStalled) {
        steps.push(Step::ToClient(to_client));
        steps.push(Step::CloseClient);
    }
    if upstream_open {
        // Gives the server time to process the unavailables and answer the close.
        steps.push(Step::DrainServer);
        steps.push(Step::CloseServer);
    }
    Plan {
        end,
        events: std::mem::take(&mut core.events),
        steps,
        told,
        untold,
        server_framer: core.take_server_framer(),
        reports: core.take_reports(),
    }
}

/// The client is gone but its stream may be resumed (see the module's rules).
fn detach(mut core: Core, end: End) -> Plan {
    core.policy.detach(&mut core.actions);
    let told = core.actions.len();
    let _ = core.apply_actions(Origin::Proxy);
    core.set_hidden(None);
    let (_, to_server) = core.take_queues();
    let mut steps = vec![Step::ToServer(to_server), Step::DropServer];
    let events = std::mem::take(&mut core.events);
    let server_framer = core.take_server_framer();
    let reports = core.take_reports();
    if let Some(Sm {
        ns,
        id: Some(id),
        keep,
        enable_pending: _,
        c2s,
        s2c,
    }) = core.sm
    {
        let state = Detached {
            policy: core.policy,
            c2s,
            s2c,
            ns,
            keep,
        };
        steps.push(Step::Detach {
            id,
            state: Box::new(state),
        });
    }
    Plan {
        end,
        events,
        steps,
        told,
        untold: 0,
        server_framer,
        reports,
    }
}

/// The condition of a stream error the server sent (unknown: `undefined-condition`).
fn server_condition(raw: &[u8]) -> Condition {
    crate::xml::Element::parse(raw, crate::ns::CLIENT, &[("stream", crate::ns::STREAMS)])
        .map(|e| super::core::stream_error_condition(&e))
        .unwrap_or(Condition::UndefinedCondition)
}
