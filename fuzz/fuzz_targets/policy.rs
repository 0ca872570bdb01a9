//! The invisibility policy on arbitrary event sequences, checked against the reference model of
//! the property test (`tests/policy_model/model.rs`, the same file) with every strict check on.
//!
//! Input layout: four bytes for the roster (contact `i` gets `Sub` number `b % 5`: absent, none,
//! to, from, both), then two bytes per event (see [`event`]); an odd last byte is ignored.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/policy_model/model.rs"]
mod model;

use model::{CONTACTS, Contact, Event, Strict, Sub, TARGETS, Target};

const SUBS: [Sub; 5] = [Sub::Absent, Sub::None, Sub::To, Sub::From, Sub::Both];
const SHOWS: [Option<&str>; 5] = [None, Some("away"), Some("chat"), Some("dnd"), Some("xa")];

/// Event from `(tag, arg)`: `tag % 13` picks the kind, `arg` its parameters.
fn event(tag: u8, arg: u8) -> Event {
    let a = usize::from(arg);
    let target = Target(a % TARGETS.len());
    match tag % 13 {
        0 => Event::Available(SHOWS[a % SHOWS.len()]),
        1 => Event::Unavailable,
        2 => Event::DirectedAvailable(target),
        3 => Event::DirectedUnavailable(target),
        4 => Event::Invisible18,
        5 => Event::Visible18,
        6 => Event::InvisibleTo18(target),
        7 => Event::VisibleTo18(target),
        8 => Event::Invisible186 {
            probe: arg & 1 != 0,
            v0: arg & 2 != 0,
        },
        9 => Event::Visible186,
        10 => Event::RosterArrives,
        11 => Event::RosterFails,
        _ => Event::RosterPush(
            Contact(a % CONTACTS.len()),
            SUBS[(a / CONTACTS.len()) % SUBS.len()],
        ),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((roster, rest)) = input.split_first_chunk::<4>() else {
        return;
    };
    let roster = roster.map(|b| SUBS[usize::from(b) % SUBS.len()]);
    let events: Vec<Event> = rest
        .chunks_exact(2)
        .map(|pair| event(pair[0], pair[1]))
        .collect();
    if let Err(failure) = model::run(roster, &events, Strict::ALL) {
        panic!("roster {roster:?}, events {events:?}:\n{failure}");
    }
});
