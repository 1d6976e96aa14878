//! Envelope ids: 26-character ULID-style strings, time-ordered and unique without coordination.
//!
//! 48 bits of milliseconds since the epoch then 80 random bits, in Crockford base32 (the ULID
//! text form). Sorting ids sorts them by time to the millisecond, which keeps logs readable;
//! 80 random bits make a collision between any two ids of the same millisecond a 2^-80 event,
//! so appenders on different hosts need no coordination. 26 bytes is far below
//! `wire::limits::MAX_ID_BYTES` (64).

use crate::journal::store::StoreError;

/// Length of an id in bytes.
pub const ID_LEN: usize = 26;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const RANDOM_BYTES: usize = 10;

/// `n` fresh ids for envelopes accepted at `ts_ms`. One call to the OS for the whole batch.
pub fn generate(ts_ms: u64, n: usize) -> Result<Vec<String>, StoreError> {
    let mut random = vec![0u8; n * RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|e| StoreError::Unavailable(format!("no randomness from the OS: {e}")))?;
    Ok(random.chunks_exact(RANDOM_BYTES).map(|r| encode(ts_ms, r.try_into().unwrap_or([0; RANDOM_BYTES]))).collect())
}

/// The text form of one id.
pub fn encode(ts_ms: u64, random: [u8; RANDOM_BYTES]) -> String {
    let mut value: u128 = u128::from(ts_ms & ((1 << 48) - 1)) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (8 * (RANDOM_BYTES - 1 - i));
    }
    // 26 base32 digits hold 130 bits; the top two are always zero.
    let mut out = [0u8; ID_LEN];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 5 * (ID_LEN - 1 - i);
        *slot = ALPHABET[((value >> shift) & 31) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_sortable_and_short() {
        assert_eq!(encode(0, [0; 10]), "00000000000000000000000000");
        assert_eq!(encode(1, [0; 10]), "00000000010000000000000000");
        assert_eq!(encode(0, [0xff; 10]), "0000000000ZZZZZZZZZZZZZZZZ");
        let a = generate(1_700_000_000_000, 1000).unwrap();
        let b = generate(1_700_000_000_001, 1000).unwrap();
        let all: std::collections::HashSet<&String> = a.iter().chain(&b).collect();
        assert_eq!(all.len(), 2000);
        assert!(a.iter().all(|x| x.len() == ID_LEN && x.len() <= crate::wire::limits::MAX_ID_BYTES));
        assert!(a.iter().all(|x| b.iter().all(|y| x < y)), "a later millisecond sorts after");
    }
}
