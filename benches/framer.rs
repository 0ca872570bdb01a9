//! Framer throughput on a message-heavy c2s stream, against a quick-xml reader over the same
//! bytes (the cost of a reader-only design), plus the per-stanza inspection helpers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quick_xml::Reader;
use quick_xml::events::Event;
use xmpp_veil::xml::{Element, Frame, Framer, StartTag};

const TARGET: usize = 4 << 20;
const CHUNK: usize = 16 * 1024;
const MAX_ELEMENT: usize = 256 * 1024;

/// Small deterministic PRNG so every run frames the same bytes.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo)
    }
}

const WORDS: &[&str] = &[
    "hello", "world", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "meeting",
    "tomorrow", "at", "noon", "see", "you", "there", "café", "ok", "thanks", "😀", "&amp;",
    "&lt;3", "what's", "up", "let's", "ship", "it", "release", "notes", "are", "ready",
];

fn stream() -> Vec<u8> {
    let mut rng = Lcg(42);
    let mut s = String::with_capacity(TARGET + 4096);
    s.push_str(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='example.com' \
         from='romeo@example.net' version='1.0' xml:lang='en'>",
    );
    let mut n = 0u64;
    while s.len() < TARGET {
        n += 1;
        match rng.range(0, 20) {
            0 => s.push_str(&format!(
                "<presence from='juliet{}@example.com/balcony' to='romeo@example.net'>\
                 <show>away</show><status>be right back</status><priority>5</priority>\
                 <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
                 node='https://example.org' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>",
                n % 50
            )),
            1 => s.push_str(&format!(
                "<iq type='get' id='ping{n}' to='example.com'><ping xmlns='urn:xmpp:ping'/></iq>"
            )),
            2 => s.push('\n'),
            _ => {
                let size = rng.range(200, 2000);
                let mut body = String::new();
                while body.len() + 150 < size {
                    body.push_str(WORDS[rng.range(0, WORDS.len())]);
                    body.push(' ');
                }
                s.push_str(&format!(
                    "<message to='juliet@example.com/balcony' from=\"romeo@example.net/orchard\" \
                     type='chat' id='msg-{n}'><body>{body}</body>\
                     <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
                ));
            }
        }
    }
    s.push_str("</stream:stream>");
    s.into_bytes()
}

fn run_framer(data: &[u8]) -> usize {
    let mut f = Framer::new(MAX_ELEMENT);
    let mut frames = 0;
    for chunk in data.chunks(CHUNK) {
        f.extend(chunk);
        loop {
            match f.next_frame() {
                Ok(Some(fr)) => {
                    black_box(&fr);
                    frames += 1;
                }
                Ok(None) => break,
                Err(e) => panic!("framer error: {e}"),
            }
        }
    }
    frames
}

fn run_quick_xml(data: &[u8]) -> usize {
    let mut r = Reader::from_reader(data);
    let mut events = 0;
    loop {
        match r.read_event() {
            Ok(Event::Eof) => break,
            Ok(ev) => {
                black_box(&ev);
                events += 1;
            }
            Err(e) => panic!("quick-xml error: {e}"),
        }
    }
    events
}

/// Quick standalone MB/s figure (best of a few runs), printed next to criterion's numbers.
fn mb_per_s(data: &[u8], f: impl Fn(&[u8]) -> usize) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        black_box(f(data));
        best = best.min(t.elapsed());
    }
    data.len() as f64 / best.as_secs_f64() / 1e6
}

fn framing(c: &mut Criterion) {
    let data = stream();
    let frames = run_framer(&data);
    eprintln!(
        "stream: {} bytes, {} frames; framer {:.0} MB/s, quick-xml reader {:.0} MB/s",
        data.len(),
        frames,
        mb_per_s(&data, run_framer),
        mb_per_s(&data, run_quick_xml),
    );
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("framer_16k_chunks", |b| {
        b.iter(|| run_framer(black_box(&data)))
    });
    g.bench_function("quick_xml_reader", |b| {
        b.iter(|| run_quick_xml(black_box(&data)))
    });
    g.finish();
}

/// About 200-byte chat messages, each in a read of its own (the proxy's usual case below
/// saturation): append to the buffer, frame, drop, give the empty buffer back.
fn one_stanza_per_read(c: &mut Criterion) {
    let mut rng = Lcg(7);
    let stanzas: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let mut body = String::new();
            while body.len() < 92 {
                body.push_str(WORDS[rng.range(0, WORDS.len())]);
                body.push(' ');
            }
            format!(
                "<message xmlns='jabber:client' to='user{}@example.com/res' type='chat' \
                 id='m{i}'><body>{body}</body></message>",
                i % 100
            )
            .into_bytes()
        })
        .collect();
    let header = b"<stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";
    let mut g = c.benchmark_group("per_read");
    g.throughput(Throughput::Elements(stanzas.len() as u64));
    g.bench_function("message_200_bytes", |b| {
        b.iter(|| {
            let mut f = Framer::new(MAX_ELEMENT);
            f.extend(header);
            let _ = f.next_frame();
            for s in &stanzas {
                f.extend(s);
                while let Ok(Some(fr)) = f.next_frame() {
                    black_box(&fr);
                }
                f.release_if_empty();
            }
        })
    });
    g.finish();
}

fn inspection(c: &mut Criterion) {
    let presence: &[u8] = b"<presence from='juliet@example.com/balcony' to='romeo@example.net' \
        type='unavailable' id='p1'><show>away</show><status>be right back</status>\
        <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.org' \
        ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>";
    let mut g = c.benchmark_group("presence");
    g.throughput(Throughput::Bytes(presence.len() as u64));
    g.bench_function("start_tag_parse", |b| {
        b.iter(|| StartTag::parse(black_box(presence)))
    });
    g.bench_function("element_parse", |b| {
        b.iter(|| Element::parse(black_box(presence), "jabber:client", &[]))
    });
    g.finish();
}

fn frame_kinds_sanity() {
    // Keep the import used and the fixture honest: the stream must frame without errors.
    let data = stream();
    let mut f = Framer::new(MAX_ELEMENT);
    f.extend(&data);
    let mut end = false;
    while let Ok(Some(fr)) = f.next_frame() {
        end |= matches!(fr, Frame::StreamEnd(_));
    }
    assert!(end, "fixture stream did not frame to its end");
}

fn all(c: &mut Criterion) {
    frame_kinds_sanity();
    framing(c);
    one_stanza_per_read(c);
    inspection(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
