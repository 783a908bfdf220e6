//! Identifiers: generating new ids, validating ids received from outside, and hashing free-form strings into
//! key-safe parts.
//!
//! Invariants:
//! - Every [`Id`] (and every id [`new_id`] makes) matches `[A-Za-z0-9_-]{1,64}`. That charset is URL-safe and never
//!   contains `:`, the KV key separator, so an id can be embedded in a key or a path without escaping and cannot
//!   forge another key.
//! - New ids are `{prefix}_{26 chars}`: lowercase Crockford base32 of a 48-bit millisecond timestamp followed by 80
//!   random bits (the ULID layout). Ids with the same prefix therefore sort by creation time (to the millisecond;
//!   ids made in the same millisecond are in random order among themselves), and are unguessable.
//! - Time is passed in (`now_ms`); this module never reads the clock.
//! - Strings that do not fit the charset (partner references, phone numbers, ...) become key parts through
//!   [`hash_key_part`], never by escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::problem::{ErrorKind, Problem};

/// The longest id accepted, in bytes (all id characters are ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Length of the time-and-randomness part of a new id.
const ULID_LEN: usize = 26;

/// The longest prefix [`new_id`] accepts: the whole id, `{prefix}_{26 chars}`, must fit in [`MAX_ID_LEN`].
pub const MAX_PREFIX_LEN: usize = MAX_ID_LEN - 1 - ULID_LEN;

/// Lowercase Crockford base32: no `i`, `l`, `o`, `u`, so ids survive being read aloud or retyped. The digits come
/// before the letters in ASCII, so string order equals numeric order.
const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Largest millisecond timestamp a ULID can hold (48 bits, about the year 10889).
const MAX_TIMESTAMP_MS: i64 = (1 << 48) - 1;

/// A failure to make or accept an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// An id from outside does not match `[A-Za-z0-9_-]{1,64}`; the message says why. `400 validation_failed`.
    #[error("{0}")]
    Invalid(String),
    /// No id could be generated: the OS random source failed, or the caller passed a bad prefix or time (a bug).
    /// `500 internal_error`; the message is for logs only.
    #[error("cannot generate id: {0}")]
    Generation(String),
}

impl Problem for IdError {
    fn kind(&self) -> ErrorKind {
        match self {
            IdError::Invalid(_) => ErrorKind::Invalid,
            IdError::Generation(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            IdError::Invalid(_) => "validation_failed",
            IdError::Generation(_) => "internal_error",
        }
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// A new opaque, URL-safe, time-sortable id: `{prefix}_{26 chars}` (ULID layout, lowercase Crockford base32).
///
/// `prefix` names the kind of thing (`cus`, `ord`) and must be 1 to [`MAX_PREFIX_LEN`] characters of
/// `[A-Za-z0-9_-]`; `now_ms` is Unix time in milliseconds, `0..2^48`. Both are the caller's constants or clock,
/// so a violation is a bug and reported as [`IdError::Generation`], as is a failing OS random source.
pub fn new_id(prefix: &str, now_ms: i64) -> Result<String, IdError> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !prefix.chars().all(is_id_char) {
        return Err(IdError::Generation(format!(
            "prefix must be 1 to {MAX_PREFIX_LEN} characters of A-Z, a-z, 0-9, '_' or '-'"
        )));
    }
    if !(0..=MAX_TIMESTAMP_MS).contains(&now_ms) {
        return Err(IdError::Generation(format!("timestamp {now_ms} ms is outside the 48-bit ULID range")));
    }
    let mut random = [0u8; 10];
    // No fallback to a weaker source: predictable ids would let one customer guess another's resources.
    getrandom::fill(&mut random).map_err(|e| IdError::Generation(format!("random source failed: {e}")))?;

    // 48-bit time in the high bits, the 80 random bits shifted in below it: numeric order is time order.
    let mut value = u128::from(now_ms.unsigned_abs());
    for byte in random {
        value = (value << 8) | u128::from(byte);
    }

    let mut id = String::with_capacity(prefix.len() + 1 + ULID_LEN);
    id.push_str(prefix);
    id.push('_');
    // 26 characters x 5 bits = 130 bits: the first character carries only the top 3 bits (always 0-7).
    for i in (0..ULID_LEN).rev() {
        let index = (value >> (5 * i)) & 0x1f;
        id.push(char::from(CROCKFORD[index as usize]));
    }
    Ok(id)
}

/// An id received from outside (a path segment, a JSON field), validated to `[A-Za-z0-9_-]{1,64}`.
///
/// Deserialising validates too, so a struct field of type `Id` can never hold a key-unsafe string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Id(String);

impl Id {
    /// Validates `s` as an id: 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `_` or `-`.
    pub fn parse(s: &str) -> Result<Id, IdError> {
        if s.is_empty() {
            return Err(IdError::Invalid("id must not be empty".to_owned()));
        }
        // Length in bytes; any non-ASCII character fails the charset check below anyway.
        if s.len() > MAX_ID_LEN {
            return Err(IdError::Invalid(format!("id must be at most {MAX_ID_LEN} characters")));
        }
        if !s.chars().all(is_id_char) {
            return Err(IdError::Invalid("id may contain only A-Z, a-z, 0-9, '_' and '-'".to_owned()));
        }
        Ok(Id(s.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Id {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Id::parse(&s)
    }
}

impl From<Id> for String {
    fn from(id: Id) -> String {
        id.0
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key-safe stand-in for a string that does not fit the id charset: 32 lowercase hex characters, the first 16
/// bytes of its SHA-256.
///
/// 128 bits make accidental collisions negligible, and hashing (rather than escaping) means no input, however
/// crafted, can contain the `:` separator or grow a key without bound.
pub fn hash_key_part(input: &str) -> String {
    let mut hex = crate::auth::sha256_hex(input.as_bytes());
    hex.truncate(32);
    hex
}

/// `N` random bytes from the platform's secure source (WASI `random` in a component).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], IdError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| IdError::Generation(format!("random source failed: {e}")))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_the_prefix_and_26_crockford_characters() {
        // Act
        let id = new_id("cus", 1_700_000_000_000).expect("id is generated");
        // Assert
        let (prefix, rest) = id.split_once('_').expect("has a separator");
        assert_eq!(prefix, "cus");
        assert_eq!(rest.len(), 26);
        assert!(rest.bytes().all(|b| CROCKFORD.contains(&b)), "{id}");
        assert!(Id::parse(&id).is_ok());
    }

    #[test]
    fn new_ids_sort_by_time_across_milliseconds() {
        let times = [0, 1, 999, 1_000, 1_700_000_000_000, 1_700_000_000_001, MAX_TIMESTAMP_MS];
        let ids: Vec<String> = times.iter().map(|&t| new_id("ord", t).expect("id is generated")).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} should sort before {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn new_ids_encode_the_timestamp_in_the_first_ten_characters() {
        // 1 ms is the lowest bit of the 48-bit time, which is bit 80 of the 130-bit value: character 10, value 1.
        let id = new_id("x", 1).expect("id is generated");
        assert_eq!(&id[2..12], "0000000001");
        let max = new_id("x", MAX_TIMESTAMP_MS).expect("id is generated");
        assert_eq!(&max[2..12], "7zzzzzzzzz");
    }

    #[test]
    fn new_ids_from_the_same_millisecond_differ() {
        let a = new_id("evt", 42).expect("id is generated");
        let b = new_id("evt", 42).expect("id is generated");
        assert_ne!(a, b);
    }

    #[test]
    fn new_ids_with_the_longest_prefix_are_64_characters() {
        let prefix = "p".repeat(MAX_PREFIX_LEN);
        let id = new_id(&prefix, 5).expect("id is generated");
        assert_eq!(id.len(), MAX_ID_LEN);
        assert!(Id::parse(&id).is_ok());
    }

    #[test]
    fn new_id_rejects_bad_prefixes_and_times() {
        let too_long = "p".repeat(MAX_PREFIX_LEN + 1);
        for prefix in ["", "a:b", "a b", too_long.as_str()] {
            let err = new_id(prefix, 0).expect_err("bad prefix");
            assert_eq!(err.code(), "internal_error");
            assert_eq!(err.kind(), ErrorKind::Internal);
        }
        assert!(new_id("cus", -1).is_err());
        assert!(new_id("cus", MAX_TIMESTAMP_MS + 1).is_err());
    }

    #[test]
    fn parse_accepts_the_whole_charset_up_to_64_characters() {
        assert!(Id::parse("a").is_ok());
        assert!(Id::parse("AZaz09_-").is_ok());
        let id = Id::parse(&"x".repeat(64)).expect("64 characters is the limit");
        assert_eq!(id.as_str().len(), 64);
    }

    #[test]
    fn parse_rejects_empty_too_long_and_unsafe_characters() {
        let too_long = "x".repeat(65);
        for bad in ["", too_long.as_str(), "a:b", "a b", " a", "a/b", "a.b", "é", "客户", "a\n"] {
            // Act
            let err = Id::parse(bad).expect_err("must be rejected");
            // Assert
            assert_eq!(err.code(), "validation_failed", "{bad:?}");
            assert_eq!(err.kind(), ErrorKind::Invalid);
        }
    }

    #[test]
    fn parse_counts_bytes_so_multibyte_input_cannot_sneak_past_the_limit() {
        assert!(Id::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn id_serde_round_trips_and_validates() {
        let id = Id::parse("cus_01abc").expect("valid");
        let json = serde_json::to_string(&id).expect("serialises");
        assert_eq!(json, "\"cus_01abc\"");
        let back: Id = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, id);
        assert_eq!(back.to_string(), "cus_01abc");
        assert!(serde_json::from_str::<Id>("\"a:b\"").is_err());
        assert!(serde_json::from_str::<Id>("\"\"").is_err());
    }

    #[test]
    fn hash_key_part_is_32_hex_characters_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(hash_key_part("abc"), "ba7816bf8f01cfea414140de5dae2223");
        let hashed = hash_key_part("partner:ref with spaces/and:colons");
        assert_eq!(hashed.len(), 32);
        assert!(Id::parse(&hashed).is_ok());
        assert_ne!(hash_key_part("a"), hash_key_part("b"));
    }
}
