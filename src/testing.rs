//! Helpers shared by the unit tests.

/// xorshift64 (Marsaglia 2003): a tiny deterministic generator, so that a random test replays
/// exactly from its seed (which must not be 0). Returns the new state.
pub(crate) fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}
