//! Unit and property tests of the framer.

#[allow(unused_imports)]
use super::chars::*;
#[allow(unused_imports)]
use super::error::*;
use super::*;
use crate::stream::errors::Condition;

mod framing {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 64 * 1024;

    const STREAM: &[u8] = b"<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version=\"1.0\">\
<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
</stream:features>\
<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>\n\
<message to='juliet@example.com/balcony' from=\"romeo@example.net/orchard\" type='chat' \
id='m1' x-note='a > b / c \"q\"'><body>Wherefore &amp; why? 1 &lt; 2 &#x263A; &#9731; &gt; \
&quot;&apos;</body><x xmlns='urn:x'><![CDATA[<not> a & tag ]] ]>]]></x>\
<active xmlns='http://jabber.org/protocol/chatstates'/></message> \
<presence><show>away</show><status xml:lang='en'>caf\xc3\xa9</status></presence>\
<x:presence xmlns:x='jabber:client' type='unavailable'/>\n \t\r\n\
<iq type = 'result' id = \"r2\" ></iq ></stream:stream>";

    /// Drain all frames; panics (tests only) on an error.
    fn drain(f: &mut Framer, out: &mut Vec<Frame>) {
        while let Some(fr) = f.next_frame().expect("frame error") {
            out.push(fr);
        }
    }

    /// Merge adjacent whitespace frames (their split depends on read boundaries by design).
    fn normalize(frames: Vec<Frame>) -> Vec<Frame> {
        let mut out: Vec<Frame> = Vec::new();
        for f in frames {
            if let (Some(Frame::Whitespace(prev)), Frame::Whitespace(cur)) = (out.last_mut(), &f) {
                let mut v = prev.to_vec();
                v.extend_from_slice(cur);
                *prev = Bytes::from(v);
                continue;
            }
            out.push(f);
        }
        out
    }

    fn frames_chunked(input: &[u8], cuts: &[usize]) -> Vec<Frame> {
        let mut f = Framer::new(LIMIT);
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts {
            f.extend(&input[last..c]);
            drain(&mut f, &mut out);
            last = c;
        }
        f.extend(&input[last..]);
        drain(&mut f, &mut out);
        assert_eq!(f.buffered(), 0);
        normalize(out)
    }

    fn one_shot() -> Vec<Frame> {
        frames_chunked(STREAM, &[])
    }

    fn err_of(input: &[u8]) -> FrameError {
        let mut f = Framer::new(LIMIT);
        f.extend(input);
        loop {
            match f.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error for {:?}", String::from_utf8_lossy(input)),
                Err(e) => {
                    assert_eq!(f.next_frame(), Err(e.clone()), "poisoned");
                    return e;
                }
            }
        }
    }

    const HDR: &str = "<stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams'>";

    fn body_err(body: &str) -> FrameError {
        err_of(format!("{HDR}{body}").as_bytes())
    }

    #[test]
    fn realistic_stream_frames() {
        let frames = one_shot();
        let kinds: Vec<String> = frames
            .iter()
            .map(|f| match f {
                Frame::StreamHeader(_) => "H".into(),
                Frame::Element { kind, .. } => format!("{kind:?}"),
                Frame::Whitespace(_) => "W".into(),
                Frame::StreamEnd(_) => "E".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "H", "Other", "Iq", "W", "Message", "W", "Presence", "Presence", "W", "Iq", "E"
            ]
        );
        let joined: Vec<u8> = frames
            .iter()
            .flat_map(|f| match f {
                Frame::StreamHeader(b)
                | Frame::Whitespace(b)
                | Frame::StreamEnd(b)
                | Frame::Element { raw: b, .. } => b.to_vec(),
            })
            .collect();
        assert_eq!(joined, STREAM);
        assert!(matches!(&frames[0], Frame::StreamHeader(b) if b.starts_with(b"<?xml")));
        assert_eq!(
            frames[10],
            Frame::StreamEnd(Bytes::from_static(b"</stream:stream>"))
        );
    }

    #[test]
    fn split_at_every_offset() {
        let expected = one_shot();
        for cut in 0..=STREAM.len() {
            assert_eq!(frames_chunked(STREAM, &[cut]), expected, "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_chunks() {
        let cuts: Vec<usize> = (1..STREAM.len()).collect();
        assert_eq!(frames_chunked(STREAM, &cuts), one_shot());
    }

    proptest! {
        #[test]
        fn random_rechunking(mut cuts in proptest::collection::vec(0..STREAM.len(), 0..40)) {
            cuts.sort_unstable();
            prop_assert_eq!(frames_chunked(STREAM, &cuts), one_shot());
        }

        #[test]
        fn check_chars_matches_reference(
            data in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'a'), 0x80u8..0xC0, Just(0xEF), Just(0xBF)],
                0..200,
            ),
            prefix in 0usize..70,
        ) {
            // Prefix of ASCII so the odd bytes land at every offset of the block scan.
            let mut input = vec![b'x'; prefix];
            input.extend_from_slice(&data);
            let reference = std::str::from_utf8(&input)
                .map(|s| s.chars().all(|c| is_xml_char(c as u32)))
                .unwrap_or(false);
            prop_assert_eq!(check_chars(&input).is_ok(), reference);
        }

        /// The fuzz target's core property on stable: for arbitrary input (mostly XML-ish
        /// bytes after a valid header), how it is cut into reads changes nothing — the same
        /// frames (whitespace merged) and the same first error, which then stays.
        #[test]
        fn arbitrary_input_is_independent_of_chunking(
            data in proptest::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'<'), Just(b'>'), Just(b'/'), Just(b'\''), Just(b'='), Just(b' '),
                    Just(b'a'), Just(b'&'), Just(b';'), Just(b'!'), Just(b'?'), Just(b'['),
                ],
                0..400,
            ),
            mut cuts in proptest::collection::vec(0usize..600, 0..12),
        ) {
            let mut input = HDR.as_bytes().to_vec();
            input.extend_from_slice(&data);
            for c in cuts.iter_mut() {
                *c = (*c).min(input.len());
            }
            cuts.sort_unstable();
            let run = |cuts: &[usize]| {
                let mut f = Framer::new(128);
                let mut frames = Vec::new();
                let mut error = None;
                let mut last = 0;
                for &c in cuts.iter().chain(std::iter::once(&input.len())) {
                    f.extend(&input[last..c]);
                    last = c;
                    loop {
                        match f.next_frame() {
                            Ok(Some(fr)) => frames.push(fr),
                            Ok(None) => break,
                            Err(e) => {
                                error.get_or_insert(e);
                                break;
                            }
                        }
                    }
                    if error.is_some() {
                        break;
                    }
                }
                if let Some(e) = &error {
                    assert_eq!(f.next_frame().as_ref().err(), Some(e), "errors stay");
                }
                (normalize(frames), error)
            };
            let (whole_frames, whole_error) = run(&[]);
            let (cut_frames, cut_error) = run(&cuts);
            // An oversize element may be reported before or after a later syntax error
            // depending on when the bytes arrive; both must fail, and frames before agree.
            let common = whole_frames.len().min(cut_frames.len());
            prop_assert_eq!(&whole_frames[..common], &cut_frames[..common]);
            prop_assert_eq!(whole_error.is_some(), cut_error.is_some());
            let too_large = |e: &Option<FrameError>| matches!(e, Some(FrameError::TooLarge { .. }));
            if !too_large(&whole_error) && !too_large(&cut_error) {
                prop_assert_eq!(whole_frames, cut_frames);
                prop_assert_eq!(whole_error, cut_error);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300),
                                       split in 0usize..300) {
            let mut input = HDR.as_bytes().to_vec();
            input.extend_from_slice(&data);
            let mut f = Framer::new(256);
            let split = split.min(input.len());
            f.extend(&input[..split]);
            while let Ok(Some(_)) = f.next_frame() {}
            f.extend(&input[split..]);
            while let Ok(Some(_)) = f.next_frame() {}
        }
    }

    #[test]
    fn restricted_constructs() {
        assert_eq!(body_err("<!-- hi -->"), restricted("comment"));
        assert_eq!(
            body_err("<message><!-- hi --></message>"),
            restricted("comment")
        );
        assert_eq!(
            body_err("<message><?php x ?></message>"),
            restricted("processing instruction")
        );
        assert_eq!(body_err("<?foo?>"), restricted("processing instruction"));
        assert_eq!(
            err_of(b"<!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream>"),
            restricted("doctype")
        );
        assert_eq!(
            body_err("<message><!ENTITY x 'y'></message>"),
            restricted("markup declaration")
        );
        assert_eq!(
            body_err("<message><body>&lol;</body></message>"),
            restricted("entity reference")
        );
        assert_eq!(
            body_err("<message a='&xxe;'/>"),
            restricted("entity reference")
        );
        // A second declaration is a processing instruction.
        assert_eq!(
            err_of(b"<?xml version='1.0'?><?xml version='1.0'?>"),
            restricted("processing instruction")
        );
        assert_eq!(
            err_of(b"<?xml-stylesheet href='x'?>"),
            restricted("processing instruction")
        );
    }

    #[test]
    fn not_well_formed() {
        let cases = [
            "<message><body></message>",
            "<message></body>",
            "<message><a></A></message>",
            "<message to='a<b'/>",
            "hello",
            "</foo>",
            "</stream:streamx>",
            "<message>a & b</message>",
            "<message>&#0;</message>",
            "<message>&#xD800;</message>",
            "<message>&;</message>",
            "< message/>",
            "<message a='1'b='2'/>",
            "<message a=1/>",
            "<message a/>",
            "<message/ >",
            "<1message/>",
            "<a:b:c/>",
            "<:a/>",
            "<a: b='1'/>",
            "<![CDATA[x]]>",
            "<message><![CDATX[x]]></message>",
            "<message>\u{1}</message>",
            "<message>\u{FFFE}</message>",
            "<message a='\0'/>",
        ];
        for c in cases {
            assert!(
                matches!(body_err(c), FrameError::NotWellFormed(_)),
                "{c}: {:?}",
                body_err(c)
            );
        }
        assert!(matches!(
            body_err("<message>\u{1}</message>"),
            FrameError::NotWellFormed(_)
        ));
        let mut bad_utf8 = format!("{HDR}<message><body>").into_bytes();
        bad_utf8.extend_from_slice(b"\xff\xfe</body></message>");
        assert_eq!(err_of(&bad_utf8), nwf("invalid UTF-8"));
        assert_eq!(
            err_of(b"hi<stream:stream>"),
            nwf("text before stream header")
        );
        assert_eq!(
            err_of(format!("{HDR}</stream:stream><iq/>").as_bytes()),
            nwf("data after stream end")
        );
    }

    #[test]
    fn specific_errors() {
        assert_eq!(body_err("hello"), nwf("text at stream level"));
        assert_eq!(body_err(" \n x"), nwf("text at stream level"));
        assert_eq!(body_err("&amp;"), nwf("text at stream level"));
        assert_eq!(body_err("<a><b></a></b>"), nwf("mismatched close tag"));
        assert_eq!(body_err("<a></b>"), nwf("mismatched close tag"));
        assert_eq!(body_err("<a x='1<2'/>"), nwf("'<' in attribute value"));
        assert_eq!(body_err("<a x=\"<\"/>"), nwf("'<' in attribute value"));
        assert_eq!(
            body_err("</iq>"),
            nwf("unexpected close tag at stream level")
        );
        assert_eq!(body_err("<a>x & y</a>"), nwf("bare '&'"));
        assert_eq!(body_err("<a x='&'/>"), nwf("bare '&'"));
        assert_eq!(
            body_err("<a>&#x1;</a>"),
            nwf("character reference to an illegal character")
        );
        assert_eq!(
            body_err(&format!("<a>&#{};</a>", "0".repeat(40))),
            nwf("reference too long")
        );
        assert_eq!(body_err("<a\0/>"), nwf("invalid character in tag"));
    }

    #[test]
    fn deep_nesting_rejected() {
        let body = "<a>".repeat(MAX_DEPTH + 1);
        assert_eq!(
            body_err(&body),
            FrameError::Limit("elements nested too deeply")
        );
        let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        let mut f = Framer::new(LIMIT);
        f.extend(format!("{HDR}{ok}").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
    }

    #[test]
    fn stream_namespace_checks() {
        let ns = |s: &str| err_of(s.as_bytes());
        assert_eq!(
            ns("<stream:stream xmlns:stream='jabber:client'>"),
            FrameError::InvalidNamespace("stream namespace")
        );
        assert_eq!(
            ns("<stream:stream xmlns='http://etherx.jabber.org/streams'>"),
            FrameError::InvalidNamespace("stream namespace")
        );
        assert_eq!(
            ns("<s:stream xmlns:stream='http://etherx.jabber.org/streams'>"),
            FrameError::InvalidNamespace("stream namespace")
        );
        assert_eq!(
            ns("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"),
            FrameError::InvalidNamespace("stream element name")
        );
        assert_eq!(
            ns("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>"),
            nwf("self-closing stream header")
        );
        for cond in [
            "<stream:stream xmlns:stream='jabber:client'>",
            "<stream xmlns='jabber:client'>",
        ] {
            assert_eq!(ns(cond).condition(), Condition::InvalidNamespace);
        }
    }

    fn header_then_end(input: &str, end: &str) {
        let mut f = Framer::new(LIMIT);
        f.extend(input.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(
            f.next_frame(),
            Ok(Some(Frame::Element {
                kind: ElementKind::Presence,
                ..
            }))
        ));
        assert_eq!(
            f.next_frame(),
            Ok(Some(Frame::StreamEnd(Bytes::copy_from_slice(
                end.as_bytes()
            ))))
        );
    }

    #[test]
    fn other_stream_prefixes() {
        header_then_end(
            "<s:stream xmlns:s='http://etherx.jabber.org/streams'><presence/></s:stream>",
            "</s:stream>",
        );
        header_then_end(
            "<stream xmlns='http://etherx.jabber.org/streams'><presence/></stream >",
            "</stream >",
        );
        header_then_end(
            "<stream:stream xmlns:stream=\"http&#x3a;//etherx.jabber.org/streams\">\
<presence/></stream:stream>",
            "</stream:stream>",
        );
    }

    #[test]
    fn kinds_by_local_name() {
        let mut f = Framer::new(LIMIT);
        f.extend(
            format!(
                "{HDR}<x:presence xmlns:x='jabber:client'/><y:message xmlns:y='urn:evil'></y:message>\
<iq/><stream:error/><iqx/>"
            )
            .as_bytes(),
        );
        let mut out = Vec::new();
        drain(&mut f, &mut out);
        let kinds: Vec<ElementKind> = out
            .iter()
            .filter_map(|f| match f {
                Frame::Element { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect();
        use ElementKind::*;
        assert_eq!(kinds, [Presence, Message, Iq, Other, Other]);
    }

    #[test]
    fn oversize_element_in_one_byte_chunks() {
        let limit = 1024;
        let mut f = Framer::new(limit);
        f.extend(HDR.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        let big = format!("<message><body>{}</body></message>", "x".repeat(4000));
        let mut err = None;
        for b in big.as_bytes() {
            f.extend(std::slice::from_ref(b));
            match f.next_frame() {
                Ok(None) => {}
                Ok(Some(fr)) => panic!("unexpected frame {fr:?}"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
            assert!(f.buffered() <= limit + 1);
        }
        assert_eq!(err, Some(FrameError::TooLarge { limit }));
        assert_eq!(err.map(|e| e.condition()), Some(Condition::PolicyViolation));
    }

    #[test]
    fn oversize_in_one_read_and_exact_fit() {
        let limit = 100;
        let elem = format!("<message>{}</message>", "y".repeat(limit - 19));
        assert_eq!(elem.len(), limit);
        // The header counts too.
        let mut f = Framer::new(HDR.len() - 1);
        f.extend(HDR.as_bytes());
        assert_eq!(
            f.next_frame(),
            Err(FrameError::TooLarge {
                limit: HDR.len() - 1
            })
        );

        let mut f = Framer::new(limit);
        f.extend(b"<stream xmlns='http://etherx.jabber.org/streams'>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        f.extend(elem.as_bytes());
        f.extend(b"<a>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
        assert_eq!(f.next_frame(), Ok(None));
        f.extend(format!("{}</a>", "z".repeat(200)).as_bytes());
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit }));
    }

    #[test]
    fn whitespace_bounded() {
        let limit = 64;
        let mut f = Framer::new(limit);
        f.extend(b"<stream xmlns='http://etherx.jabber.org/streams'>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        f.extend(&[b' '; 200]);
        let mut total = 0;
        while let Ok(Some(Frame::Whitespace(w))) = f.next_frame() {
            assert!(w.len() <= limit);
            total += w.len();
        }
        assert_eq!(total, 200);
    }

    #[test]
    fn reset_then_second_header() {
        let mut f = Framer::new(LIMIT);
        f.extend(
            format!(
                "<?xml version='1.0'?>{HDR}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><presence/>"
            )
            .as_bytes(),
        );
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
        f.reset();
        match f.next_frame() {
            Ok(Some(Frame::StreamHeader(h))) => assert!(h.starts_with(b"<?xml")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            f.next_frame(),
            Ok(Some(Frame::Element {
                kind: ElementKind::Presence,
                ..
            }))
        ));
        assert_eq!(f.next_frame(), Ok(None));
        // Without a reset, a second header is just an element named stream:stream … that
        // never closes; with a reset mid-buffer the partial element is rescanned as a header.
        f.extend(b"<stream:str");
        assert_eq!(f.next_frame(), Ok(None));
        f.reset();
        f.extend(b"eam xmlns:stream='http://etherx.jabber.org/streams'>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
    }

    #[test]
    fn take_buffered_returns_rest() {
        let mut f = Framer::new(LIMIT);
        f.extend(format!("{HDR}<proceed/>\x16\x03\x01binary").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
        assert_eq!(&f.take_buffered()[..], b"\x16\x03\x01binary");
        assert_eq!(f.buffered(), 0);
        f.reset();
        f.extend(HDR.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
    }

    #[test]
    fn whitespace_after_end_and_errors_display() {
        let mut f = Framer::new(LIMIT);
        f.extend(format!("{HDR}</stream:stream>\n").as_bytes());
        let mut out = Vec::new();
        drain(&mut f, &mut out);
        assert!(matches!(out.last(), Some(Frame::Whitespace(_))));
        assert_eq!(nwf("x").to_string(), "not-well-formed: x",);
        assert_eq!(
            FrameError::TooLarge { limit: 5 }.to_string(),
            "policy-violation: element larger than 5 bytes"
        );
    }

    #[test]
    fn large_stanza_one_byte_chunks_is_linear() {
        // 200 KiB attribute value + 200 KiB text, fed byte by byte.
        let big = format!(
            "<message a='{}'><body>{}</body></message>",
            "v".repeat(200 * 1024),
            "t&amp;".repeat(40 * 1024)
        );
        let mut f = Framer::new(1 << 20);
        f.extend(HDR.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        let start = std::time::Instant::now();
        let mut got = None;
        for b in big.as_bytes() {
            f.extend(std::slice::from_ref(b));
            if let Some(fr) = f.next_frame().expect("ok") {
                got = Some(fr);
            }
        }
        assert!(matches!(got, Some(Frame::Element { raw, .. }) if raw.len() == big.len()));
        // Quadratic rescanning would take minutes here.
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn check_chars_cases() {
        let long = "a".repeat(100);
        for ok in [
            "",
            "abc\t\r\n",
            "café 😀 \u{FFFD} \u{10FFFF} \u{E000}",
            &long,
        ] {
            assert_eq!(check_chars(ok.as_bytes()), Ok(()), "{ok:?}");
            assert_eq!(check_chars(format!("{long}{ok}{long}").as_bytes()), Ok(()));
        }
        let bad: [&[u8]; 10] = [
            b"\0",
            b"\x1f",
            b"\xef\xbf\xbe",
            b"\xef\xbf\xbf",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xf4\x90\x80\x80",
            b"\xe2\x82",
            b"\xff",
            b"\x80",
        ];
        for b in bad {
            assert!(check_chars(b).is_err(), "{b:?}");
            let mut padded = long.as_bytes().to_vec();
            padded.extend_from_slice(b);
            padded.extend_from_slice(long.as_bytes());
            assert!(check_chars(&padded).is_err(), "{b:?}");
        }
    }

    #[test]
    fn decode_refs() {
        assert_eq!(decode_ref(b"#x41"), Ok('A'));
        assert_eq!(decode_ref(b"#65"), Ok('A'));
        assert_eq!(
            decode_ref(b"#x110000"),
            Err(nwf("character reference to an illegal character"))
        );
        assert_eq!(
            decode_ref(b"#99999999999999999999"),
            Err(nwf("character reference to an illegal character"))
        );
        assert_eq!(decode_ref(b"#xZ"), Err(nwf("invalid character reference")));
        assert_eq!(decode_ref(b"nbsp"), Err(restricted("entity reference")));
        assert_eq!(unescape_attr(b"a&amp;b\r\nc\td").as_deref(), Ok("a&b c d"));
    }
}

mod limit_tests {
    use super::*;

    const HEADER: &str =
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    fn first_error(limits: Limits, body: &str) -> Option<FrameError> {
        let mut f = Framer::with_limits(limits);
        f.extend(format!("{HEADER}{body}").as_bytes());
        loop {
            match f.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    }

    const LIMITS: Limits = Limits {
        max_element: 4096,
        max_depth: 4,
        max_attributes: 3,
    };

    #[test]
    fn depth_limit_is_a_policy_violation() {
        assert_eq!(first_error(LIMITS, "<a><b><c><d/></c></b></a>"), None);
        let e = first_error(LIMITS, "<a><b><c><d><e/></d></c></b></a>").unwrap();
        assert_eq!(e, FrameError::Limit("elements nested too deeply"));
        assert_eq!(e.condition(), Condition::PolicyViolation);
    }

    #[test]
    fn attribute_limit_is_per_element() {
        assert_eq!(
            first_error(LIMITS, "<a x='1' y='2' z='3'><b x='1' y='2' z='3'/></a>"),
            None
        );
        let e = first_error(LIMITS, "<a><b w='0' x='1' y='2' z='3'/></a>").unwrap();
        assert_eq!(e, FrameError::Limit("too many attributes in one element"));
    }

    #[test]
    fn limits_survive_a_stream_restart() {
        let mut f = Framer::with_limits(LIMITS);
        f.extend(format!("{HEADER}<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
        f.reset();
        f.extend(format!("{HEADER}<a><b><c><d><e/></d></c></b></a>").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert_eq!(
            f.next_frame(),
            Err(FrameError::Limit("elements nested too deeply"))
        );
    }
}
