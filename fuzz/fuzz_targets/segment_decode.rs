//! The segment and record decoder on arbitrary bytes.
//!
//! Oracles: it never panics; it never allocates more than a small multiple of the input
//! (docs/format.md: lengths are checked before they are trusted; the event decoder's claims are
//! capped in proportion to the payload); and whatever it accepts re-encodes to the same bytes —
//! the segment header, every frame of every complete batch, and every payload that decodes as an
//! event.
#![no_main]

mod alloc_meter;

use libfuzzer_sys::fuzz_target;
use zolog::event::codec;
use zolog::log::frame::{self, FLAG_BATCH_END, SegmentHeader};
use zolog::log::scan;

#[global_allocator]
static METER: alloc_meter::Meter = alloc_meter::Meter;

const MAX_RECORD: u32 = 1 << 20;

/// Scan `records` (bytes after a header) and check the re-encoding oracle.
fn check_records(records: &[u8], base: usize, whole: &[u8], first_seq: u64) {
    let mut reencoded = Vec::new();
    let s = scan::scan::<()>(records, base as u64, first_seq, MAX_RECORD, |r| {
        let flags = whole[r.offset as usize + 4];
        frame::encode_frame(&mut reencoded, r.seq, flags & FLAG_BATCH_END != 0, r.payload);
        if let Ok(ev) = codec::decode(r.seq, r.payload) {
            assert_eq!(codec::encode_event(&ev), r.payload, "event {} re-encodes differently", r.seq);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(&reencoded[..], &records[..s.clean_end], "accepted frames re-encode differently");
    assert!(s.clean_end <= records.len());
}

fuzz_target!(|data: &[u8]| {
    let baseline = alloc_meter::start();
    // As a whole segment file.
    if let Ok((h, hlen)) = SegmentHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..hlen]);
        check_records(&data[hlen..], hlen, data, h.first_seq);
    }
    // As bare records starting at seq = the first frame's seq (so the fuzzer reaches payloads).
    if let Ok(h) = frame::parse_header(data, MAX_RECORD) {
        check_records(data, 0, data, h.seq);
    }
    // As an event payload on its own.
    if let Ok(ev) = codec::decode(1, data) {
        assert_eq!(codec::encode_event(&ev), data);
    }
    let peak = alloc_meter::peak_since(baseline);
    let bound = 64 * 1024 + 128 * data.len().next_power_of_two();
    assert!(peak <= bound, "allocated {peak} bytes for {} input bytes (bound {bound})", data.len());
});
