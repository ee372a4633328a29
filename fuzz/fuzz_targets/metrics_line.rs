//! The metrics.jsonl line parser (what `zolog ingest` reads from trainers).
//!
//! Oracles: it never panics on any bytes; an accepted line yields an event of the line's
//! experiment whose binary encoding decodes back to the same bytes; and the event survives the
//! JSON edge: printed as zolog prints events, it parses back to the identical encoding (NaN bits
//! included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zolog::event::json::{parse_input_line, to_line};
use zolog::event::{Event, NewEvent, Source, SourceKind, codec};
use zolog::ingest::line::parse_line;

fuzz_target!(|data: &[u8]| {
    if data.contains(&b'\n') {
        return;
    }
    let Ok((exp, ev)) = parse_line(data, None) else { return };
    assert_eq!(ev.payload.experiment_id(), Some(&exp), "event filed under another experiment");
    let new = NewEvent {
        time: ev.time,
        appended: None,
        source: Source { kind: SourceKind::Trainer, pid: None, host: None },
        payload: ev.payload,
    };
    let bytes = codec::encode(&new);
    let back: Event = codec::decode(1, &bytes).expect("what zolog encodes, it decodes");
    let json = to_line(&back);
    let again = parse_input_line(&json).unwrap_or_else(|e| panic!("own output rejected: {e}: {json}"));
    let rebuilt = NewEvent { time: back.time, appended: None, source: back.source.clone(), payload: again.payload };
    assert_eq!(codec::encode(&rebuilt), bytes, "JSON round trip changed the event: {json}");
});
