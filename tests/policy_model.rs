//! Model test of the invisibility policy, through its public API only.
//!
//! A random roster and a random sequence of events are run through the reference model in
//! `policy_model/model.rs` (which lists the checks, (1) to (7)); the fuzz target `policy` runs the
//! same model on fuzzer-made sequences.
//!
//! Two stricter checks ([`Strict`]) run in tests of their own, with more cases.
//! `PROPTEST_CASES` sets the number of cases (default 256).

#[path = "policy_model/model.rs"]
mod model;

use model::{CONTACTS, Contact, Event, Strict, Sub, TARGETS, Target};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn sub() -> impl Strategy<Value = Sub> {
    prop_oneof![
        Just(Sub::Absent),
        Just(Sub::None),
        Just(Sub::To),
        Just(Sub::From),
        Just(Sub::Both),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    (0..TARGETS.len()).prop_map(Target)
}

fn event() -> impl Strategy<Value = Event> {
    let show = prop_oneof![
        Just(None),
        Just(Some("away")),
        Just(Some("chat")),
        Just(Some("dnd")),
        Just(Some("xa")),
    ];
    prop_oneof![
        4 => show.prop_map(Event::Available),
        2 => Just(Event::Unavailable),
        3 => target().prop_map(Event::DirectedAvailable),
        2 => target().prop_map(Event::DirectedUnavailable),
        2 => Just(Event::Invisible18),
        2 => Just(Event::Visible18),
        3 => target().prop_map(Event::InvisibleTo18),
        3 => target().prop_map(Event::VisibleTo18),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(probe, v0)| Event::Invisible186 { probe, v0 }),
        2 => Just(Event::Visible186),
        2 => Just(Event::RosterArrives),
        1 => Just(Event::RosterFails),
        2 => ((0..CONTACTS.len()).prop_map(Contact), sub()).prop_map(|(c, s)| Event::RosterPush(c, s)),
    ]
}

fn run(roster: [Sub; 4], events: &[Event], strict: Strict) -> Result<(), TestCaseError> {
    model::run(roster, events, strict).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Failures are shrunk and reported; no regression files are written next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn nobody_sees_what_they_may_not(
        roster in proptest::array::uniform4(sub()),
        events in proptest::collection::vec(event(), 0..40),
    ) {
        run(roster, &events, Strict::default())?;
    }
}

proptest! {
    // The bugs need a particular few events in a row: more cases, so one run finds them.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        cases: ProptestConfig::default().cases.max(5_000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn former_subscribers_stop_seeing(
        roster in proptest::array::uniform4(sub()),
        events in proptest::collection::vec(event(), 0..40),
    ) {
        run(roster, &events, Strict { former_subscribers: true, ..Strict::default() })?;
    }

    #[test]
    fn probe_false_cancels_probes(
        roster in proptest::array::uniform4(sub()),
        events in proptest::collection::vec(event(), 0..40),
    ) {
        run(roster, &events, Strict { probe_false_cancels: true, ..Strict::default() })?;
    }
}

/// A few hand-written sequences through the same model, as readable examples.
#[test]
fn examples() {
    use Event::*;
    let cases: Vec<([Sub; 4], Vec<Event>)> = vec![
        // XEP-0018 §4.1 in the model's names.
        (
            [Sub::Both, Sub::Both, Sub::Both, Sub::None],
            vec![
                RosterArrives,
                Invisible18,
                VisibleTo18(Target(2)),
                Available(Some("xa")),
                Visible18,
                InvisibleTo18(Target(1)),
                Available(Some("chat")),
            ],
        ),
        // Invisible before the roster view arrives, probes and presence deferred.
        (
            [Sub::To, Sub::From, Sub::Both, Sub::Absent],
            vec![
                InvisibleTo18(Target(0)),
                Available(None),
                Invisible186 {
                    probe: true,
                    v0: false,
                },
                DirectedAvailable(Target(4)),
                DirectedAvailable(Target(5)),
                RosterArrives,
                Visible186,
                Available(Some("away")),
                RosterPush(Contact(3), Sub::From),
            ],
        ),
    ];
    for (roster, events) in cases {
        if let Err(e) = run(roster, &events, Strict::ALL) {
            panic!("{events:?}: {e}");
        }
    }
}
