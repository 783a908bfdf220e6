//! Authentication primitives: customer session tokens, the operator token, partner request signatures, Standard
//! Webhooks signatures from the payment gateway, and identity assertions from the bank's login gateway.
//!
//! Invariants:
//! - Every comparison involving a secret or a signature is constant-time ([`constant_time_eq`], built on
//!   `subtle`), so response timing reveals nothing about how much of a guess was right.
//! - A MAC is always verified before the payload it covers is decoded or parsed: unauthenticated input never
//!   reaches the JSON parser. Tokens and assertions longer than [`MAX_TOKEN_BYTES`] are refused before any work.
//! - Error messages tell a client developer what to fix, but never contain a secret or an expected signature.
//!   All refusals are `401`, except a misconfigured server secret, which is a `500` whose detail stays in logs.
//! - An empty secret never authenticates anything: anyone can compute an HMAC with an empty key.
//! - Time is passed in as Unix seconds (`now`); this module never reads the clock. Signed requests and webhooks
//!   are accepted within ±[`SIGNATURE_WINDOW_SECS`] of `now`.
//! - Nonce *replay* is not checked here: that needs the store. Callers verify the signature first (so nobody can
//!   burn another partner's nonces), then record the nonce for at least twice the signature window and answer a
//!   repeat with [`AuthError::NonceReplayed`].
//!
//! Session tokens and identity assertions share one format, `base64url(json) "." base64url(HMAC-SHA256(secret,
//! base64url(json)))` (no padding). They must use different secrets, so one can never be presented as the other.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::Hmac;
use hmac::digest::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::{ErrorKind, Problem};

/// The longest session token or identity assertion accepted, in bytes. Real ones are a few hundred bytes; the cap
/// bounds the work an attacker can make us do per request.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// How far, in seconds, a partner request's `X-Timestamp` or a webhook's `webhook-timestamp` may be from `now`,
/// in either direction.
pub const SIGNATURE_WINDOW_SECS: i64 = 300;

/// How long an identity assertion is valid after its `iat`, in seconds.
pub const ASSERTION_TTL_SECS: i64 = 300;

/// How far in the future an identity assertion's `iat` may be, in seconds: tolerated clock skew with the gateway.
pub const ASSERTION_MAX_FUTURE_SECS: i64 = 60;

/// The shortest and longest `X-Nonce` accepted.
const NONCE_LEN: std::ops::RangeInclusive<usize> = 8..=64;

/// SHA-256 block size: HMAC keys are hashed down to or zero-padded up to this.
const SHA256_BLOCK: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was sent; the message says which one. Code `missing_credentials`.
    #[error("missing credentials: {0}")]
    MissingCredentials(&'static str),
    /// The session token is malformed or its signature does not match. Code `invalid_token`.
    #[error("invalid session token: {0}")]
    InvalidToken(&'static str),
    /// The session token was genuine but has expired. Code `token_expired`.
    #[error("session token expired at {expires_at} (Unix seconds); sign in again")]
    TokenExpired {
        /// When it expired, Unix seconds.
        expires_at: i64,
    },
    /// A request or webhook signature is malformed or does not match. Code `invalid_signature`.
    #[error("invalid signature: {0}")]
    InvalidSignature(&'static str),
    /// A signature timestamp header is not Unix seconds. Code `invalid_signature`.
    #[error("invalid signature: {header} must be Unix time in seconds, as decimal digits")]
    InvalidTimestamp {
        /// The header at fault.
        header: &'static str,
    },
    /// A signature timestamp is outside the window around server time. Code `signature_expired`.
    #[error("{header} is {skew} s away from server time; the window is {window} s", window = SIGNATURE_WINDOW_SECS)]
    SignatureExpired {
        /// The header at fault.
        header: &'static str,
        /// Distance from server time, in seconds.
        skew: u64,
    },
    /// `X-Nonce` is not 8 to 64 characters of `[A-Za-z0-9_-]`. Code `invalid_nonce`.
    #[error("X-Nonce must be 8 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    InvalidNonce,
    /// `X-Nonce` was already used within the replay window (detected by the caller, which has the store). Code
    /// `nonce_replayed`.
    #[error("X-Nonce has already been used; send a fresh random nonce with every request")]
    NonceReplayed,
    /// The identity assertion is malformed or forged. Code `invalid_assertion`.
    #[error("invalid identity assertion: {0}")]
    InvalidAssertion(&'static str),
    /// The identity assertion is older than its validity period. Code `assertion_expired`.
    #[error(
        "identity assertion was issued {age} s ago and is valid for {ttl} s; get a fresh one from the login gateway",
        ttl = ASSERTION_TTL_SECS
    )]
    AssertionExpired {
        /// Seconds since `iat`.
        age: i64,
    },
    /// The identity assertion's `iat` is too far in the future (clock skew). Code `assertion_expired`, like an
    /// expired one: either way it is not valid now.
    #[error(
        "identity assertion iat is {ahead} s in the future; at most {max} s of clock skew is tolerated",
        max = ASSERTION_MAX_FUTURE_SECS
    )]
    AssertionNotYetValid {
        /// Seconds `iat` is ahead of server time.
        ahead: i64,
    },
    /// The operator token is wrong, or no operator token is configured. Code `invalid_operator_token`.
    #[error("invalid operator token")]
    InvalidOperatorToken,
    /// A server-side secret is missing or malformed: a deployment bug, not the client's fault. Kind `Internal`,
    /// code `internal_error`; the message (which never includes the secret) is for logs.
    #[error("authentication is misconfigured: {0}")]
    Misconfigured(&'static str),
}

impl Problem for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::Misconfigured(_) => ErrorKind::Internal,
            _ => ErrorKind::Unauthenticated,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials(_) => "missing_credentials",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::TokenExpired { .. } => "token_expired",
            AuthError::InvalidSignature(_) | AuthError::InvalidTimestamp { .. } => "invalid_signature",
            AuthError::SignatureExpired { .. } => "signature_expired",
            AuthError::InvalidNonce => "invalid_nonce",
            AuthError::NonceReplayed => "nonce_replayed",
            AuthError::InvalidAssertion(_) => "invalid_assertion",
            AuthError::AssertionExpired { .. } | AuthError::AssertionNotYetValid { .. } => "assertion_expired",
            AuthError::InvalidOperatorToken => "invalid_operator_token",
            AuthError::Misconfigured(_) => "internal_error",
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------------------------------

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`; any key length is allowed.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // RFC 2104 hashes a key longer than the block and zero-pads a shorter one; doing that here gives a block-sized
    // key for the infallible `KeyInit::new`, instead of `new_from_slice`, whose error cannot happen for HMAC but
    // would still need handling. The MAC is identical (checked against RFC 4231 in the tests).
    let mut block = [0u8; SHA256_BLOCK];
    if key.len() > SHA256_BLOCK {
        let digest: [u8; 32] = Sha256::digest(key).into();
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <HmacSha256 as KeyInit>::new(&block.into());
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Lowercase hex SHA-256 of `data` (64 characters).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Whether `a == b`, in time that depends only on the lengths (which are not secret: signatures have fixed sizes).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The token in an `Authorization: Bearer <token>` header value: the scheme is case-insensitive and surrounding
/// whitespace is ignored. `None` if the header is absent, uses another scheme, or the token is empty or contains
/// whitespace.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

// ---------------------------------------------------------------------------------------------------------------
// Sealed tokens (sessions and identity assertions)
// ---------------------------------------------------------------------------------------------------------------

pub(crate) fn seal(secret: &[u8], claims: &impl Serialize) -> String {
    // Serialising these plain structs of strings and integers cannot fail; if it ever did, the empty payload would
    // fail verification, so the failure is closed rather than a panic.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let payload = URL_SAFE_NO_PAD.encode(json);
    let mac = URL_SAFE_NO_PAD.encode(hmac_sha256(secret, payload.as_bytes()));
    format!("{payload}.{mac}")
}

/// The JSON inside a sealed token whose MAC matches, or why not. The MAC covers the base64 text, so it is checked
/// before anything is decoded.
pub(crate) fn unseal(secret: &[u8], token: &str) -> Result<Vec<u8>, &'static str> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("longer than 4096 bytes");
    }
    let (payload, mac) = token.split_once('.').ok_or("expected two base64url parts separated by '.'")?;
    // The base64 engine rejects non-canonical encodings, so a MAC has exactly one accepted spelling.
    let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| "the signature part is not unpadded base64url")?;
    if !constant_time_eq(&mac, &hmac_sha256(secret, payload.as_bytes())) {
        return Err("signature does not match");
    }
    URL_SAFE_NO_PAD.decode(payload).map_err(|_| "the payload part is not unpadded base64url")
}

/// The claims of a customer session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The customer the session belongs to.
    pub customer_id: String,
    /// When the token was issued, Unix seconds.
    pub issued_at: i64,
    /// When the token stops being valid, Unix seconds (exclusive: valid while `now < expires_at`).
    pub expires_at: i64,
}

/// Issues a session token for `customer_id`, valid from `now` for `ttl_secs` seconds.
///
/// `secret` must be non-empty (and differ from the identity secret): [`verify_session`] refuses an empty one.
pub fn issue_session(secret: &[u8], customer_id: &str, now: i64, ttl_secs: i64) -> String {
    let claims =
        SessionClaims { customer_id: customer_id.to_owned(), issued_at: now, expires_at: now.saturating_add(ttl_secs) };
    seal(secret, &claims)
}

/// Verifies a session token made by [`issue_session`] and returns its claims.
///
/// Errors: `invalid_token` if too long, malformed or not signed with `secret`; `token_expired` once
/// `now >= expires_at`; `internal_error` if `secret` is empty.
pub fn verify_session(secret: &[u8], token: &str, now: i64) -> Result<SessionClaims, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Misconfigured("the session secret is empty"));
    }
    let json = unseal(secret, token).map_err(AuthError::InvalidToken)?;
    let claims: SessionClaims =
        serde_json::from_slice(&json).map_err(|_| AuthError::InvalidToken("the claims are not valid"))?;
    if now >= claims.expires_at {
        return Err(AuthError::TokenExpired { expires_at: claims.expires_at });
    }
    Ok(claims)
}

// ---------------------------------------------------------------------------------------------------------------
// Operator token
// ---------------------------------------------------------------------------------------------------------------

/// Checks `Authorization: Bearer <token>` against the configured operator token.
///
/// An empty `expected_token` (operator access not configured) never matches anything.
pub fn verify_operator(expected_token: &str, authorization: Option<&str>) -> Result<(), AuthError> {
    let given = bearer(authorization)
        .ok_or(AuthError::MissingCredentials("send the operator token as `Authorization: Bearer <token>`"))?;
    // Comparing digests makes the comparison time independent even of the expected token's length.
    let matches = constant_time_eq(&Sha256::digest(given), &Sha256::digest(expected_token));
    if expected_token.is_empty() || !matches {
        return Err(AuthError::InvalidOperatorToken);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Partner request signatures
// ---------------------------------------------------------------------------------------------------------------

/// The signature headers of a partner request, as sent (an absent header is the empty string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartnerHeaders<'a> {
    /// `X-Partner-Id`: which partner, and so which secret.
    pub partner_id: &'a str,
    /// `X-Timestamp`: Unix seconds when the request was signed.
    pub timestamp: &'a str,
    /// `X-Nonce`: 8 to 64 random characters of `[A-Za-z0-9_-]`, unique per request.
    pub nonce: &'a str,
    /// `X-Signature`: lowercase hex HMAC-SHA256 of the canonical string.
    pub signature: &'a str,
}

/// The string a partner signs: `METHOD\nPATH_AND_QUERY\nTIMESTAMP\nNONCE\nhex(SHA256(body))`, no trailing newline.
///
/// Every part is used exactly as sent (the method upper-case, the path and query undecoded), so partner and server
/// never disagree about normalisation.
pub fn partner_canonical(method: &str, path_and_query: &str, timestamp: &str, nonce: &str, body: &[u8]) -> String {
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{}", sha256_hex(body))
}

/// The `X-Signature` for a canonical string: lowercase hex HMAC-SHA256 keyed by the secret's UTF-8 bytes.
pub fn sign_partner(secret: &str, canonical: &str) -> String {
    hex(&hmac_sha256(secret.as_bytes(), canonical.as_bytes()))
}

/// Verifies a signed partner request: headers present, timestamp within ±300 s of `now`, well-formed nonce, and a
/// matching signature.
///
/// Does not check nonce replay (see the module doc): on success the caller must still record `headers.nonce`.
pub fn verify_partner(
    secret: &str,
    method: &str,
    path_and_query: &str,
    headers: &PartnerHeaders<'_>,
    body: &[u8],
    now: i64,
) -> Result<(), AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Misconfigured("the partner secret is empty"));
    }
    let required = [
        (headers.partner_id, "the X-Partner-Id header is required"),
        (headers.timestamp, "the X-Timestamp header is required"),
        (headers.nonce, "the X-Nonce header is required"),
        (headers.signature, "the X-Signature header is required"),
    ];
    if let Some((_, missing)) = required.iter().find(|(value, _)| value.is_empty()) {
        return Err(AuthError::MissingCredentials(missing));
    }
    check_timestamp("X-Timestamp", headers.timestamp, now)?;
    if !NONCE_LEN.contains(&headers.nonce.len())
        || !headers.nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(AuthError::InvalidNonce);
    }
    if headers.signature.len() != 64 || !headers.signature.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(AuthError::InvalidSignature("X-Signature must be 64 lowercase hex characters (an HMAC-SHA256)"));
    }
    let canonical = partner_canonical(method, path_and_query, headers.timestamp, headers.nonce, body);
    let expected = sign_partner(secret, &canonical);
    if !constant_time_eq(expected.as_bytes(), headers.signature.as_bytes()) {
        return Err(AuthError::InvalidSignature(
            "X-Signature does not match; sign METHOD\\nPATH_AND_QUERY\\nX-Timestamp\\nX-Nonce\\nhex(sha256(body)) \
             with HMAC-SHA256 keyed by your partner secret",
        ));
    }
    Ok(())
}

/// Checks that a timestamp header is Unix seconds within ±[`SIGNATURE_WINDOW_SECS`] of `now`.
fn check_timestamp(header: &'static str, value: &str, now: i64) -> Result<(), AuthError> {
    // Digits only: `i64::from_str` would also take a sign, which no honest client sends.
    let timestamp = Some(value)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or(AuthError::InvalidTimestamp { header })?;
    // `abs_diff` cannot overflow, however far off the timestamp is.
    let skew = now.abs_diff(timestamp);
    if skew > SIGNATURE_WINDOW_SECS.unsigned_abs() {
        return Err(AuthError::SignatureExpired { header, skew });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Standard Webhooks (payment gateway notifications)
// ---------------------------------------------------------------------------------------------------------------

/// The HMAC key inside a `whsec_<base64>` secret.
fn webhook_key(secret: &str) -> Result<Vec<u8>, AuthError> {
    let encoded =
        secret.strip_prefix("whsec_").ok_or(AuthError::Misconfigured("the webhook secret must start with whsec_"))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| AuthError::Misconfigured("the webhook secret is not whsec_ followed by standard base64"))?;
    if key.is_empty() {
        return Err(AuthError::Misconfigured("the webhook secret's key is empty"));
    }
    Ok(key)
}

/// `{id}.{timestamp}.{body}`, the signed content of a Standard Webhooks message.
fn webhook_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// The `webhook-signature` value `v1,<base64 HMAC-SHA256>` for a message, as the gateway (or a test) sends it.
///
/// Errors with `internal_error` if `secret` is not `whsec_` followed by non-empty standard base64.
pub fn sign_webhook(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, AuthError> {
    let key = webhook_key(secret)?;
    let mac = hmac_sha256(&key, &webhook_content(id, &timestamp.to_string(), body));
    Ok(format!("v1,{}", STANDARD.encode(mac)))
}

/// Verifies a Standard Webhooks message from its `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.
///
/// The signature header may list several space-separated entries (the gateway signs with old and new keys while
/// rotating); the message is genuine if any `v1,` entry matches. Entries with other versions are ignored. The
/// timestamp must be within ±300 s of `now`.
pub fn verify_webhook(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), AuthError> {
    let key = webhook_key(secret)?;
    let required = [
        (id, "the webhook-id header is required"),
        (timestamp, "the webhook-timestamp header is required"),
        (signature_header.trim(), "the webhook-signature header is required"),
    ];
    if let Some((_, missing)) = required.iter().find(|(value, _)| value.is_empty()) {
        return Err(AuthError::MissingCredentials(missing));
    }
    check_timestamp("webhook-timestamp", timestamp, now)?;
    let expected = hmac_sha256(&key, &webhook_content(id, timestamp, body));
    let mut matched = false;
    for entry in signature_header.split_whitespace() {
        let Some(("v1", signature)) = entry.split_once(',') else {
            continue;
        };
        let Ok(signature) = STANDARD.decode(signature) else {
            continue;
        };
        // `|=` rather than an early return: every entry costs the same, whichever one matches.
        matched |= constant_time_eq(&signature, &expected);
    }
    if !matched {
        return Err(AuthError::InvalidSignature(
            "no v1 entry of webhook-signature matches; sign \"{webhook-id}.{webhook-timestamp}.{body}\" with \
             HMAC-SHA256 keyed by the base64-decoded part of the whsec_ secret",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Identity assertions (the bank's login gateway)
// ---------------------------------------------------------------------------------------------------------------

/// How the login gateway identified the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// WeChat login.
    Wechat,
    /// The bank's mobile app.
    App,
    /// SMS code to a phone number.
    Phone,
}

impl Provider {
    /// The wire name: `wechat`, `app` or `phone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Wechat => "wechat",
            Provider::App => "app",
            Provider::Phone => "phone",
        }
    }
}

/// A signed statement from the login gateway that someone proved an identity at `iat`.
///
/// Only the signature and time are checked here; the values of `subject`, `phone` and `card_fingerprint` are for
/// the caller's business rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityAssertion {
    /// How the identity was proven.
    pub provider: Provider,
    /// The provider's stable identifier for the person.
    pub subject: String,
    /// The verified phone number, if the provider gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// A fingerprint of the bank card, if the provider gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_fingerprint: Option<String>,
    /// When the identity was proven, Unix seconds.
    pub iat: i64,
}

/// Signs an assertion the way the login gateway does (for tests, fixtures and local development).
pub fn sign_assertion(secret: &[u8], assertion: &IdentityAssertion) -> String {
    seal(secret, assertion)
}

/// Verifies an identity assertion and returns it.
///
/// Valid while `iat <= now + 60` and `now < iat + 300`. Errors: `invalid_assertion` if too long, forged or
/// malformed (including an unknown provider); `assertion_expired` outside the validity period; `internal_error` if
/// `secret` is empty.
pub fn verify_assertion(secret: &[u8], assertion: &str, now: i64) -> Result<IdentityAssertion, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Misconfigured("the identity secret is empty"));
    }
    let json = unseal(secret, assertion).map_err(AuthError::InvalidAssertion)?;
    let parsed: IdentityAssertion = serde_json::from_slice(&json).map_err(|_| {
        AuthError::InvalidAssertion("the payload is not a valid assertion (provider must be wechat, app or phone)")
    })?;
    check_assertion_time(parsed.iat, now)?;
    Ok(parsed)
}

/// An assertion issued at `iat` is valid at `now` while `iat <= now + 60` and `now < iat + 300`.
pub(crate) fn check_assertion_time(iat: i64, now: i64) -> Result<(), AuthError> {
    let ahead = iat.saturating_sub(now);
    if ahead > ASSERTION_MAX_FUTURE_SECS {
        return Err(AuthError::AssertionNotYetValid { ahead });
    }
    let age = now.saturating_sub(iat);
    if age >= ASSERTION_TTL_SECS {
        return Err(AuthError::AssertionExpired { age });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const SECRET: &[u8] = b"session-secret-for-tests";

    /// Replaces the character at `index` with a different base64url character.
    fn flip_char(token: &str, index: usize) -> String {
        let mut bytes = token.as_bytes().to_vec();
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("still ASCII")
    }

    // --- primitives ---------------------------------------------------------------------------------------------

    #[test]
    fn hmac_matches_rfc_4231_for_short_and_long_keys() {
        // Test case 1: a 20-byte key.
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(hex(&mac), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        // Test case 6: a 131-byte key, longer than the block, which must be hashed first.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
        // A key of exactly one block is used as is.
        assert_eq!(hmac_sha256(&[7; 64], b"x").len(), 32);
    }

    #[test]
    fn sha256_hex_is_lowercase_and_matches_known_digests() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn bearer_extracts_the_token_whatever_the_scheme_case() {
        assert_eq!(bearer(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(Some("bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("  BEARER   abc  ")), Some("abc"));
        assert_eq!(bearer(Some("Bearer\tabc")), Some("abc"));
    }

    #[test]
    fn bearer_rejects_absent_empty_and_other_schemes() {
        for header in [None, Some(""), Some("Bearer"), Some("Bearer   "), Some("Basic abc"), Some("Bearer a b")] {
            assert_eq!(bearer(header), None, "{header:?}");
        }
    }

    // --- sessions -----------------------------------------------------------------------------------------------

    #[test]
    fn session_token_round_trips() {
        // Arrange
        let token = issue_session(SECRET, "cus_123", NOW, 3600);
        // Act
        let claims = verify_session(SECRET, &token, NOW + 10).expect("fresh token is valid");
        // Assert
        assert_eq!(claims, SessionClaims { customer_id: "cus_123".into(), issued_at: NOW, expires_at: NOW + 3600 });
    }

    #[test]
    fn session_token_is_accepted_one_second_before_expiry_and_rejected_at_it() {
        let token = issue_session(SECRET, "cus_123", NOW, 60);
        assert!(verify_session(SECRET, &token, NOW + 59).is_ok());
        let err = verify_session(SECRET, &token, NOW + 60).expect_err("expired at expires_at");
        assert_eq!(err, AuthError::TokenExpired { expires_at: NOW + 60 });
        assert_eq!(err.code(), "token_expired");
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    }

    #[test]
    fn session_token_with_tampered_payload_is_rejected() {
        // Arrange: swap in a payload naming another customer, keeping the original MAC.
        let token = issue_session(SECRET, "cus_123", NOW, 3600);
        let (_, mac) = token.split_once('.').expect("two parts");
        let forged_claims = SessionClaims { customer_id: "cus_999".into(), issued_at: NOW, expires_at: NOW + 3600 };
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).expect("serialises"));
        // Act
        let err = verify_session(SECRET, &format!("{forged_payload}.{mac}"), NOW).expect_err("forged");
        // Assert
        assert_eq!(err, AuthError::InvalidToken("signature does not match"));
        assert_eq!(err.code(), "invalid_token");
        assert!(verify_session(SECRET, &flip_char(&token, 3), NOW).is_err());
    }

    #[test]
    fn session_token_with_tampered_mac_is_rejected() {
        let token = issue_session(SECRET, "cus_123", NOW, 3600);
        let tampered = flip_char(&token, token.len() - 5);
        let err = verify_session(SECRET, &tampered, NOW).expect_err("tampered MAC");
        assert_eq!(err.code(), "invalid_token");
    }

    #[test]
    fn session_token_signed_with_another_secret_is_rejected() {
        let token = issue_session(b"another-secret", "cus_123", NOW, 3600);
        let err = verify_session(SECRET, &token, NOW).expect_err("wrong secret");
        assert_eq!(err.code(), "invalid_token");
    }

    #[test]
    fn malformed_and_oversized_session_tokens_are_rejected() {
        let oversized = format!("{}.x", "a".repeat(MAX_TOKEN_BYTES));
        for token in ["", "abc", ".", "abc.", "abc.!!!", "a.b.c", oversized.as_str()] {
            let err = verify_session(SECRET, token, NOW).expect_err("malformed");
            assert_eq!(err.code(), "invalid_token", "{token:?}");
        }
    }

    #[test]
    fn validly_signed_non_json_session_payload_is_rejected() {
        let payload = URL_SAFE_NO_PAD.encode(b"not json");
        let mac = URL_SAFE_NO_PAD.encode(hmac_sha256(SECRET, payload.as_bytes()));
        let err = verify_session(SECRET, &format!("{payload}.{mac}"), NOW).expect_err("not JSON");
        assert_eq!(err, AuthError::InvalidToken("the claims are not valid"));
    }

    #[test]
    fn an_empty_session_secret_is_a_server_error() {
        let token = issue_session(b"", "cus_123", NOW, 3600);
        let err = verify_session(b"", &token, NOW).expect_err("empty secret");
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(err.code(), "internal_error");
    }

    // --- operator -----------------------------------------------------------------------------------------------

    #[test]
    fn operator_token_must_match_exactly() {
        assert_eq!(verify_operator("op-secret", Some("Bearer op-secret")), Ok(()));
        assert_eq!(verify_operator("op-secret", Some("Bearer op-secreT")), Err(AuthError::InvalidOperatorToken));
        assert_eq!(verify_operator("op-secret", Some("Bearer op-secret2")), Err(AuthError::InvalidOperatorToken));
        let missing = verify_operator("op-secret", None).expect_err("no header");
        assert_eq!(missing.code(), "missing_credentials");
    }

    #[test]
    fn an_empty_operator_token_never_matches() {
        assert_eq!(verify_operator("", Some("Bearer x")), Err(AuthError::InvalidOperatorToken));
        assert_eq!(verify_operator("", Some("Bearer ")).map_err(|e| e.code()), Err("missing_credentials"));
    }

    // --- partners -----------------------------------------------------------------------------------------------

    const PARTNER_SECRET: &str = "partner-secret";
    const BODY: &[u8] = br#"{"amount_fen":100}"#;

    fn signed_headers<'a>(timestamp: &'a str, nonce: &'a str, signature: &'a str) -> PartnerHeaders<'a> {
        PartnerHeaders { partner_id: "acme", timestamp, nonce, signature }
    }

    fn sign_sample(timestamp: &str, nonce: &str) -> String {
        sign_partner(PARTNER_SECRET, &partner_canonical("POST", "/v1/orders?page=2", timestamp, nonce, BODY))
    }

    #[test]
    fn partner_canonical_string_has_the_exact_documented_format() {
        let canonical = partner_canonical("POST", "/v1/orders?page=2", "1700000000", "nonce_123", BODY);
        assert_eq!(
            canonical,
            "POST\n/v1/orders?page=2\n1700000000\nnonce_123\n\
             df690f964ca913d6855aff0b935df141ea04b98a488a82ef5c728ee051490f65"
        );
    }

    #[test]
    fn partner_signature_matches_an_independent_implementation() {
        // Computed with Python's hmac module over the canonical string above.
        assert_eq!(
            sign_sample("1700000000", "nonce_123"),
            "8a48ab8393ddf0027d6a8da81e0f7c08503cb9cd983e7655215cbffd941b9d22"
        );
    }

    #[test]
    fn correctly_signed_partner_request_is_accepted() {
        let signature = sign_sample("1700000000", "nonce_123");
        let headers = signed_headers("1700000000", "nonce_123", &signature);
        assert_eq!(verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=2", &headers, BODY, NOW), Ok(()));
    }

    #[test]
    fn partner_request_with_changed_body_path_method_or_secret_is_rejected() {
        let signature = sign_sample("1700000000", "nonce_123");
        let headers = signed_headers("1700000000", "nonce_123", &signature);
        let attempts = [
            verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=2", &headers, b"{\"amount_fen\":999}", NOW),
            verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=3", &headers, BODY, NOW),
            verify_partner(PARTNER_SECRET, "PUT", "/v1/orders?page=2", &headers, BODY, NOW),
            verify_partner("other-secret", "POST", "/v1/orders?page=2", &headers, BODY, NOW),
        ];
        for result in attempts {
            let err = result.expect_err("must not verify");
            assert_eq!(err.code(), "invalid_signature");
            assert!(!err.to_string().contains(&signature), "never echo a signature");
        }
    }

    #[test]
    fn partner_timestamp_is_accepted_at_the_window_edges_and_rejected_beyond() {
        for (offset, ok) in [(-300, true), (300, true), (-301, false), (301, false)] {
            // Arrange
            let timestamp = (NOW + offset).to_string();
            let signature = sign_sample(&timestamp, "nonce_123");
            let headers = signed_headers(&timestamp, "nonce_123", &signature);
            // Act
            let result = verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=2", &headers, BODY, NOW);
            // Assert
            if ok {
                assert_eq!(result, Ok(()), "offset {offset}");
            } else {
                assert_eq!(result, Err(AuthError::SignatureExpired { header: "X-Timestamp", skew: 301 }));
            }
        }
    }

    #[test]
    fn signature_expired_message_tells_the_client_the_skew_and_window() {
        let err = AuthError::SignatureExpired { header: "X-Timestamp", skew: 412 };
        assert_eq!(err.to_string(), "X-Timestamp is 412 s away from server time; the window is 300 s");
        assert_eq!(err.code(), "signature_expired");
    }

    #[test]
    fn partner_timestamp_must_be_plain_digits() {
        for timestamp in ["17e8", "-1700000000", "+1700000000", "1700000000.5", " 1700000000", "99999999999999999999"] {
            let signature = sign_sample(timestamp, "nonce_123");
            let headers = signed_headers(timestamp, "nonce_123", &signature);
            let err = verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=2", &headers, BODY, NOW)
                .expect_err("bad timestamp");
            assert_eq!(err, AuthError::InvalidTimestamp { header: "X-Timestamp" }, "{timestamp:?}");
        }
    }

    #[test]
    fn partner_nonce_must_be_8_to_64_safe_characters() {
        let long_ok = "n".repeat(64);
        let too_long = "n".repeat(65);
        for (nonce, ok) in [
            ("12345678", true),
            (long_ok.as_str(), true),
            ("aZ09_-aZ", true),
            ("1234567", false),
            (too_long.as_str(), false),
            ("nonce:123", false),
            ("nonce 123", false),
            ("nonceé123", false),
        ] {
            let signature = sign_sample("1700000000", nonce);
            let headers = signed_headers("1700000000", nonce, &signature);
            let result = verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=2", &headers, BODY, NOW);
            if ok {
                assert_eq!(result, Ok(()), "{nonce:?}");
            } else {
                assert_eq!(result, Err(AuthError::InvalidNonce), "{nonce:?}");
            }
        }
        assert_eq!(AuthError::InvalidNonce.code(), "invalid_nonce");
        assert_eq!(AuthError::NonceReplayed.code(), "nonce_replayed");
    }

    #[test]
    fn partner_signature_must_be_64_lowercase_hex() {
        let upper = sign_sample("1700000000", "nonce_123").to_uppercase();
        let short = "a".repeat(63);
        for signature in [upper.as_str(), short.as_str(), "not-hex"] {
            let headers = signed_headers("1700000000", "nonce_123", signature);
            let err = verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=2", &headers, BODY, NOW)
                .expect_err("malformed signature");
            assert_eq!(err.code(), "invalid_signature");
        }
    }

    #[test]
    fn partner_request_missing_a_header_names_it() {
        let signature = sign_sample("1700000000", "nonce_123");
        let mut headers = signed_headers("1700000000", "nonce_123", &signature);
        headers.nonce = "";
        let err = verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=2", &headers, BODY, NOW)
            .expect_err("missing nonce");
        assert_eq!(err, AuthError::MissingCredentials("the X-Nonce header is required"));
        headers = PartnerHeaders { partner_id: "", ..signed_headers("1700000000", "nonce_123", &signature) };
        let err = verify_partner(PARTNER_SECRET, "POST", "/v1/orders?page=2", &headers, BODY, NOW)
            .expect_err("missing partner id");
        assert_eq!(err.code(), "missing_credentials");
    }

    #[test]
    fn an_empty_partner_secret_never_verifies() {
        let signature = sign_partner("", &partner_canonical("POST", "/", "1700000000", "nonce_123", b""));
        let headers = signed_headers("1700000000", "nonce_123", &signature);
        let err = verify_partner("", "POST", "/", &headers, b"", NOW).expect_err("empty secret");
        assert_eq!(err.kind(), ErrorKind::Internal);
    }

    // --- webhooks -----------------------------------------------------------------------------------------------

    const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const WEBHOOK_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const WEBHOOK_TS: i64 = 1_614_265_330;
    const WEBHOOK_BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn webhook_signature_matches_the_standard_webhooks_test_vector() {
        let signature = sign_webhook(WEBHOOK_SECRET, WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn signed_webhook_verifies() {
        let signature = sign_webhook(WEBHOOK_SECRET, WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
        let result = verify_webhook(WEBHOOK_SECRET, WEBHOOK_ID, "1614265330", &signature, WEBHOOK_BODY, WEBHOOK_TS);
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn webhook_rotation_list_with_one_good_entry_verifies() {
        let good = sign_webhook(WEBHOOK_SECRET, WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
        let old = sign_webhook("whsec_b2xkLWtleQ==", WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
        let good_b64 = good.trim_start_matches("v1,");
        let header = format!("{old} v1a,{good_b64} v1,!!notbase64 {good}");
        let result = verify_webhook(WEBHOOK_SECRET, WEBHOOK_ID, "1614265330", &header, WEBHOOK_BODY, WEBHOOK_TS);
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn webhook_signature_under_another_version_prefix_is_ignored() {
        let good = sign_webhook(WEBHOOK_SECRET, WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
        let header = good.replacen("v1,", "v2,", 1);
        let err = verify_webhook(WEBHOOK_SECRET, WEBHOOK_ID, "1614265330", &header, WEBHOOK_BODY, WEBHOOK_TS)
            .expect_err("only v1 counts");
        assert_eq!(err.code(), "invalid_signature");
    }

    #[test]
    fn webhook_signed_with_another_secret_or_changed_body_is_rejected() {
        let wrong = sign_webhook("whsec_b2xkLWtleQ==", WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
        let err = verify_webhook(WEBHOOK_SECRET, WEBHOOK_ID, "1614265330", &wrong, WEBHOOK_BODY, WEBHOOK_TS)
            .expect_err("wrong secret");
        assert_eq!(err.code(), "invalid_signature");
        let good = sign_webhook(WEBHOOK_SECRET, WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
        let err = verify_webhook(WEBHOOK_SECRET, WEBHOOK_ID, "1614265330", &good, b"{}", WEBHOOK_TS)
            .expect_err("changed body");
        assert_eq!(err.code(), "invalid_signature");
        let err = verify_webhook(WEBHOOK_SECRET, "msg_other", "1614265330", &good, WEBHOOK_BODY, WEBHOOK_TS)
            .expect_err("changed id");
        assert_eq!(err.code(), "invalid_signature");
    }

    #[test]
    fn webhook_timestamp_window_is_300_seconds() {
        let ts = "1614265330";
        for (now, ok) in [(WEBHOOK_TS + 300, true), (WEBHOOK_TS - 300, true), (WEBHOOK_TS + 301, false)] {
            let signature = sign_webhook(WEBHOOK_SECRET, WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
            let result = verify_webhook(WEBHOOK_SECRET, WEBHOOK_ID, ts, &signature, WEBHOOK_BODY, now);
            if ok {
                assert_eq!(result, Ok(()));
            } else {
                assert_eq!(result, Err(AuthError::SignatureExpired { header: "webhook-timestamp", skew: 301 }));
            }
        }
    }

    #[test]
    fn malformed_webhook_secrets_are_server_errors() {
        for secret in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not base64!", "whsec"] {
            let err = sign_webhook(secret, WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect_err("malformed secret");
            assert_eq!(err.kind(), ErrorKind::Internal, "{secret:?}");
            assert_eq!(err.code(), "internal_error");
            let err = verify_webhook(secret, WEBHOOK_ID, "1614265330", "v1,AAAA", WEBHOOK_BODY, WEBHOOK_TS)
                .expect_err("malformed secret");
            assert_eq!(err.kind(), ErrorKind::Internal);
        }
    }

    #[test]
    fn webhook_with_missing_headers_is_rejected() {
        let good = sign_webhook(WEBHOOK_SECRET, WEBHOOK_ID, WEBHOOK_TS, WEBHOOK_BODY).expect("valid secret");
        for (id, ts, sig) in
            [("", "1614265330", good.as_str()), (WEBHOOK_ID, "", good.as_str()), (WEBHOOK_ID, "1614265330", " ")]
        {
            let err = verify_webhook(WEBHOOK_SECRET, id, ts, sig, WEBHOOK_BODY, WEBHOOK_TS).expect_err("missing");
            assert_eq!(err.code(), "missing_credentials");
        }
    }

    // --- identity assertions ------------------------------------------------------------------------------------

    const IDENTITY_SECRET: &[u8] = b"identity-secret-for-tests";

    fn sample_assertion(iat: i64) -> IdentityAssertion {
        IdentityAssertion {
            provider: Provider::Wechat,
            subject: "wx-openid-1".into(),
            phone: Some("13800138000".into()),
            card_fingerprint: None,
            iat,
        }
    }

    #[test]
    fn identity_assertion_round_trips() {
        let signed = sign_assertion(IDENTITY_SECRET, &sample_assertion(NOW));
        let verified = verify_assertion(IDENTITY_SECRET, &signed, NOW + 1).expect("fresh assertion");
        assert_eq!(verified, sample_assertion(NOW));
        assert_eq!(verified.provider.as_str(), "wechat");
    }

    #[test]
    fn identity_assertion_wire_format_is_the_documented_json() {
        let signed = sign_assertion(IDENTITY_SECRET, &sample_assertion(NOW));
        let (payload, _) = signed.split_once('.').expect("two parts");
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"provider": "wechat", "subject": "wx-openid-1", "phone": "13800138000", "iat": NOW})
        );
    }

    #[test]
    fn identity_assertion_expires_300_seconds_after_iat() {
        let signed = sign_assertion(IDENTITY_SECRET, &sample_assertion(NOW));
        assert!(verify_assertion(IDENTITY_SECRET, &signed, NOW + 299).is_ok());
        let err = verify_assertion(IDENTITY_SECRET, &signed, NOW + 300).expect_err("expired");
        assert_eq!(err, AuthError::AssertionExpired { age: 300 });
        assert_eq!(err.code(), "assertion_expired");
    }

    #[test]
    fn identity_assertion_from_more_than_60_seconds_in_the_future_is_rejected() {
        let at_limit = sign_assertion(IDENTITY_SECRET, &sample_assertion(NOW + 60));
        assert!(verify_assertion(IDENTITY_SECRET, &at_limit, NOW).is_ok());
        let beyond = sign_assertion(IDENTITY_SECRET, &sample_assertion(NOW + 61));
        let err = verify_assertion(IDENTITY_SECRET, &beyond, NOW).expect_err("from the future");
        assert_eq!(err, AuthError::AssertionNotYetValid { ahead: 61 });
        assert_eq!(err.code(), "assertion_expired");
    }

    #[test]
    fn forged_identity_assertions_are_rejected() {
        let forged = sign_assertion(b"attacker-secret", &sample_assertion(NOW));
        let err = verify_assertion(IDENTITY_SECRET, &forged, NOW).expect_err("forged");
        assert_eq!(err.code(), "invalid_assertion");
        // A session token is not an assertion, even under the same secret.
        let session = issue_session(IDENTITY_SECRET, "cus_1", NOW, 60);
        assert_eq!(verify_assertion(IDENTITY_SECRET, &session, NOW).map_err(|e| e.code()), Err("invalid_assertion"));
    }

    #[test]
    fn identity_assertion_with_unknown_provider_or_bad_json_is_rejected() {
        for json in [r#"{"provider":"email","subject":"x","iat":1700000000}"#, r#"{"subject":"x"}"#, "[]"] {
            let payload = URL_SAFE_NO_PAD.encode(json);
            let mac = URL_SAFE_NO_PAD.encode(hmac_sha256(IDENTITY_SECRET, payload.as_bytes()));
            let err = verify_assertion(IDENTITY_SECRET, &format!("{payload}.{mac}"), NOW).expect_err("bad JSON");
            assert_eq!(err.code(), "invalid_assertion", "{json}");
        }
        let oversized = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verify_assertion(IDENTITY_SECRET, &oversized, NOW).map_err(|e| e.code()), Err("invalid_assertion"));
    }

    #[test]
    fn provider_wire_names_match_serde() {
        for provider in [Provider::Wechat, Provider::App, Provider::Phone] {
            let json = serde_json::to_value(provider).expect("serialises");
            assert_eq!(json, provider.as_str());
        }
    }

    #[test]
    fn unauthenticated_codes_are_stable() {
        let cases = [
            (AuthError::MissingCredentials("x"), "missing_credentials"),
            (AuthError::InvalidToken("x"), "invalid_token"),
            (AuthError::TokenExpired { expires_at: 0 }, "token_expired"),
            (AuthError::InvalidSignature("x"), "invalid_signature"),
            (AuthError::SignatureExpired { header: "X-Timestamp", skew: 0 }, "signature_expired"),
            (AuthError::InvalidNonce, "invalid_nonce"),
            (AuthError::NonceReplayed, "nonce_replayed"),
            (AuthError::InvalidAssertion("x"), "invalid_assertion"),
            (AuthError::AssertionExpired { age: 0 }, "assertion_expired"),
            (AuthError::InvalidOperatorToken, "invalid_operator_token"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
            assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        }
    }
}
