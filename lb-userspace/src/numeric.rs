//! Small numeric helpers more than one module needs, kept in one place: FNV-1a (Fowler, Noll,
//! Vo; a fixed hash with published test vectors, the same on every machine, process and
//! version, unlike std's randomly keyed hasher) and the greatest common divisor.
//!
//! Results of the hashes decide where clients land (consistent hashing) and what generated
//! names are called, so they must never change: tests pin them to reference values.

const FNV64_PRIME: u64 = 0x0100_0000_01B3;
const FNV32_OFFSET: u32 = 0x811C_9DC5;
const FNV32_PRIME: u32 = 0x0100_0193;

/// The FNV-1a 64-bit state to start from.
pub const FNV1A_64_START: u64 = 0xCBF2_9CE4_8422_2325;

/// Feeds `bytes` into a 64-bit FNV-1a `state` (start from [`FNV1A_64_START`]), so a hash can
/// be built piece by piece without joining the pieces.
pub fn fnv1a_64(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(FNV64_PRIME))
}

/// 32-bit FNV-1a of `bytes`.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(FNV32_OFFSET, |hash, &byte| (hash ^ u32::from(byte)).wrapping_mul(FNV32_PRIME))
}

/// The greatest common divisor (`gcd(0, 0)` is 0).
pub fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV test vectors (Fowler, Noll, Vo; draft-eastlake-fnv): a change to
    /// either function fails here before it moves a client or renames a backend.
    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(fnv1a_64(FNV1A_64_START, b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a_64(FNV1A_64_START, b"a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(fnv1a_64(FNV1A_64_START, b"foobar"), 0x8594_4171_F739_67E8);
        assert_eq!(fnv1a_64(fnv1a_64(FNV1A_64_START, b"foo"), b"bar"), 0x8594_4171_F739_67E8);
        assert_eq!(fnv1a_32(b""), 0x811C_9DC5);
        assert_eq!(fnv1a_32(b"a"), 0xE40C_292C);
        assert_eq!(fnv1a_32(b"foobar"), 0xBF9C_F968);
    }

    #[test]
    fn gcd_of_weights() {
        assert_eq!(gcd(0, 0), 0);
        assert_eq!(gcd(0, 7), 7);
        assert_eq!(gcd(12, 18), 6);
        assert_eq!(gcd(90, 10), 10);
        assert_eq!(gcd(17, 5), 1);
    }
}
