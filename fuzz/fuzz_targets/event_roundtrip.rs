//! Event JSON → event → bincode → event → JSON round trip, NaN and infinities included.
//!
//! Oracle: any line zolog accepts encodes, decodes to the same bytes, prints as JSON, and that JSON
//! parses back to the identical event (compared through the binary encoding, so NaN bits count).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zolog::event::json::{parse_input_line, to_line};
use zolog::event::{NewEvent, Source, SourceKind, Timestamp, codec};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    if line.contains('\n') {
        return;
    }
    let Ok(input) = parse_input_line(line) else { return };
    let source = Source { kind: SourceKind::Cli, pid: None, host: None };
    let ev = NewEvent {
        time: input.time.unwrap_or(Timestamp(1)),
        appended: None,
        source: input.source.clone().unwrap_or(source),
        payload: input.payload,
    };
    let bytes = codec::encode(&ev);
    let back = codec::decode(7, &bytes).expect("what zolog encodes, it decodes");
    assert_eq!(codec::encode_event(&back), bytes, "binary round trip changed the event");
    let json = to_line(&back);
    let again = parse_input_line(&json).unwrap_or_else(|e| panic!("own output rejected: {e}: {json}"));
    assert_eq!(again.time, Some(back.time));
    assert_eq!(again.source.as_ref(), Some(&back.source));
    let rebuilt = NewEvent {
        time: back.time,
        appended: back.appended,
        source: back.source.clone(),
        payload: again.payload,
    };
    assert_eq!(codec::encode(&rebuilt), bytes, "JSON round trip changed the event: {json}");
});
