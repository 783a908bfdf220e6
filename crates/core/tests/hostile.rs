//! Hostile input, property-based: request decoding, credential parsing and the small parsers every route runs on
//! untrusted text (ids, amounts, timestamps, referral codes) never panic, refuse what they must, and round-trip what
//! they produce.

use proptest::prelude::*;
use scenefin_core::auth::{
    self, IdentityAssertion, PartnerHeaders, Provider, issue_session, partner_canonical, sign_assertion, sign_partner,
    sign_webhook, verify_assertion, verify_operator, verify_partner, verify_session, verify_webhook,
};
use scenefin_core::clock::Timestamp;
use scenefin_core::ids::{Id, hash_key_part};
use scenefin_core::json::decode;
use scenefin_core::money::parse_fen;
use scenefin_core::referrals::valid_code;
use serde::Deserialize;
use serde_json::Value;

const NOW: i64 = 1_795_000_000;
const PARTNER_SECRET: &str = "partner-secret-for-hostile-tests";
const WEBHOOK_SECRET: &str = "whsec_dGVzdC1nYXRld2F5LWtleQ==";
const SESSION_SECRET: &[u8] = b"session-secret-for-hostile-tests";
const IDENTITY_SECRET: &[u8] = b"identity-secret-for-hostile-tests";
const OPERATOR_TOKEN: &str = "operator-token-for-hostile-tests";

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// A typed request body, as the adapters decode them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Body {
    id: String,
    amount_fen: i64,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    inner: Option<Inner>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Inner {
    flag: bool,
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Quarters print and parse exactly (serde_json's default float parsing may round other values).
        (-1e9..1e9f64).prop_map(|f| Value::from((f * 4.0).round() / 4.0)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,10}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `bytes` with the byte at `index % len` replaced by a different byte.
fn with_byte_changed(bytes: &[u8], index: usize, delta: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let i = index % out.len();
    out[i] = out[i].wrapping_add(delta.max(1));
    out
}

/// `text` with one byte changed, as a string when it is still UTF-8 (a header that is not is refused earlier).
fn text_with_byte_changed(text: &str, index: usize, delta: u8) -> Option<String> {
    String::from_utf8(with_byte_changed(text.as_bytes(), index, delta)).ok()
}

// ---------------------------------------------------------------------------------------------------------------
// Request decoding

/// `value` with every number that has a zero fraction (and fits i64) as that integer: how `decode` reads JSON.
fn integral(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && (-(2f64.powi(63))..2f64.powi(63)).contains(&f) => {
                Value::from(f as i64)
            }
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(integral).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, integral(v))).collect()),
        other => other,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Value>(&bytes, 1024);
        let _ = decode::<Body>(&bytes, 1024);
    }

    #[test]
    fn decoding_arbitrary_json_into_a_dto_never_panics_and_refusals_are_4xx(value in json_value()) {
        let bytes = serde_json::to_vec(&value).expect("json");
        if let Err(e) = decode::<Body>(&bytes, 64 * 1024) {
            prop_assert!(matches!(e.code, "malformed_json" | "validation_failed" | "payload_too_large"), "{}", e.code);
        }
        // Whatever serde_json wrote, it reads back; a number with a zero fraction as the integer it equals.
        prop_assert_eq!(decode::<Value>(&bytes, 64 * 1024).map_err(|e| e.code), Ok(integral(value)));
    }

    #[test]
    fn invalid_utf8_in_a_body_is_refused(prefix in "[a-z]{0,8}", bad in prop::sample::select(vec![0x80u8, 0xc0, 0xe0, 0xf8, 0xfe, 0xff])) {
        let mut bytes = format!(r#"{{"id":"{prefix}"#).into_bytes();
        bytes.push(bad);
        bytes.extend_from_slice(br#"","amount_fen":1}"#);
        let e = decode::<Body>(&bytes, 1024).expect_err("invalid UTF-8");
        prop_assert_eq!(e.code, "malformed_json");
        prop_assert!(decode::<Value>(&bytes, 1024).is_err());
    }

    #[test]
    fn deeply_nested_json_is_refused_without_overflowing_the_stack(depth in 129usize..20_000, objects in any::<bool>()) {
        let (open, close) = if objects { (r#"{"a":"#, "}") } else { ("[", "]") };
        let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        prop_assert!(decode::<Value>(body.as_bytes(), usize::MAX).is_err());
        let wrapped = format!(r#"{{"id":"x","amount_fen":1,"tags":{body}}}"#);
        prop_assert!(decode::<Body>(wrapped.as_bytes(), usize::MAX).is_err());
    }

    #[test]
    fn bodies_over_the_limit_are_refused_before_parsing(extra in 1usize..4096) {
        let body = vec![b'['; 1024 + extra];
        prop_assert_eq!(decode::<Value>(&body, 1024).map_err(|e| e.code), Err("payload_too_large"));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Credentials

proptest! {
    #![proptest_config(config())]

    #[test]
    fn partner_signatures_with_arbitrary_headers_are_refused(
        partner_id in ".{0,24}",
        timestamp in prop_oneof![".{0,24}".boxed(), (NOW - 400..NOW + 400).prop_map(|t| t.to_string()).boxed()],
        nonce in prop_oneof![".{0,80}".boxed(), "[A-Za-z0-9_-]{8,64}".boxed()],
        signature in prop_oneof![".{0,80}".boxed(), "[0-9a-f]{64}".boxed()],
        method in ".{0,8}",
        path in ".{0,64}",
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let headers = PartnerHeaders { partner_id: &partner_id, timestamp: &timestamp, nonce: &nonce, signature: &signature };
        prop_assert!(verify_partner(PARTNER_SECRET, &method, &path, &headers, &body, NOW).is_err());
        prop_assert!(verify_partner("", &method, &path, &headers, &body, NOW).is_err());
    }

    #[test]
    fn a_valid_partner_signature_with_any_byte_changed_fails(
        path in "/[a-z0-9/_?=&-]{0,48}",
        body in prop::collection::vec(any::<u8>(), 0..64),
        part in 0usize..5,
        index in any::<usize>(),
        delta in 1u8..=255,
    ) {
        let ts = NOW.to_string();
        let nonce = "n0123456789abcdef";
        let signature = sign_partner(PARTNER_SECRET, &partner_canonical("POST", &path, &ts, nonce, &body));
        let headers = PartnerHeaders { partner_id: "pt_1", timestamp: &ts, nonce, signature: &signature };
        prop_assert!(verify_partner(PARTNER_SECRET, "POST", &path, &headers, &body, NOW).is_ok());

        let refused = match part {
            0 => text_with_byte_changed(&signature, index, delta).map(|s| {
                verify_partner(PARTNER_SECRET, "POST", &path, &PartnerHeaders { signature: &s, ..headers }, &body, NOW)
            }),
            1 => text_with_byte_changed(&path, index, delta)
                .map(|p| verify_partner(PARTNER_SECRET, "POST", &p, &headers, &body, NOW)),
            2 if !body.is_empty() => {
                let b = with_byte_changed(&body, index, delta);
                Some(verify_partner(PARTNER_SECRET, "POST", &path, &headers, &b, NOW))
            }
            3 => text_with_byte_changed(nonce, index, delta).map(|n| {
                verify_partner(PARTNER_SECRET, "POST", &path, &PartnerHeaders { nonce: &n, ..headers }, &body, NOW)
            }),
            _ => text_with_byte_changed(&ts, index, delta).map(|t| {
                verify_partner(PARTNER_SECRET, "POST", &path, &PartnerHeaders { timestamp: &t, ..headers }, &body, NOW)
            }),
        };
        if let Some(result) = refused {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn webhooks_with_arbitrary_headers_are_refused(
        id in ".{0,32}",
        timestamp in prop_oneof![".{0,24}".boxed(), (NOW - 400..NOW + 400).prop_map(|t| t.to_string()).boxed()],
        signature in prop_oneof![".{0,120}".boxed(), "v1,[A-Za-z0-9+/]{43}=".boxed(), "(v1,[A-Za-z0-9+/=]{0,50} ?){0,4}".boxed()],
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        prop_assert!(verify_webhook(WEBHOOK_SECRET, &id, &timestamp, &signature, &body, NOW).is_err());
        prop_assert!(verify_webhook("not-a-secret", &id, &timestamp, &signature, &body, NOW).is_err());
    }

    #[test]
    fn a_valid_webhook_signature_with_any_byte_changed_fails(
        id in "msg_[a-z0-9]{1,20}",
        body in prop::collection::vec(any::<u8>(), 1..64),
        part in 0usize..4,
        index in any::<usize>(),
        delta in 1u8..=255,
    ) {
        let ts = NOW.to_string();
        let signature = sign_webhook(WEBHOOK_SECRET, &id, NOW, &body).expect("sign");
        prop_assert!(verify_webhook(WEBHOOK_SECRET, &id, &ts, &signature, &body, NOW).is_ok());
        let refused = match part {
            0 => text_with_byte_changed(&signature, index, delta)
                .map(|s| verify_webhook(WEBHOOK_SECRET, &id, &ts, &s, &body, NOW)),
            1 => text_with_byte_changed(&id, index, delta)
                .map(|i| verify_webhook(WEBHOOK_SECRET, &i, &ts, &signature, &body, NOW)),
            2 => Some(verify_webhook(WEBHOOK_SECRET, &id, &ts, &signature, &with_byte_changed(&body, index, delta), NOW)),
            _ => text_with_byte_changed(&ts, index, delta)
                .map(|t| verify_webhook(WEBHOOK_SECRET, &id, &t, &signature, &body, NOW)),
        };
        if let Some(result) = refused {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn arbitrary_session_tokens_are_refused(token in prop_oneof![
        ".{0,200}".boxed(),
        "[A-Za-z0-9_-]{0,120}\\.[A-Za-z0-9_-]{0,60}".boxed(),
        prop::collection::vec(any::<u8>(), 0..5000).prop_map(|b| String::from_utf8_lossy(&b).into_owned()).boxed(),
    ]) {
        prop_assert!(verify_session(SESSION_SECRET, &token, NOW).is_err());
        prop_assert!(verify_assertion(IDENTITY_SECRET, &token, NOW).is_err());
        prop_assert!(verify_session(b"", &token, NOW).is_err());
    }

    #[test]
    fn a_session_token_or_assertion_with_any_byte_changed_fails(
        customer in "[a-z0-9_]{1,30}",
        index in any::<usize>(),
        delta in 1u8..=255,
    ) {
        let token = issue_session(SESSION_SECRET, &customer, NOW, 3600);
        prop_assert_eq!(verify_session(SESSION_SECRET, &token, NOW).map(|c| c.customer_id), Ok(customer.clone()));
        if let Some(t) = text_with_byte_changed(&token, index, delta) {
            prop_assert!(verify_session(SESSION_SECRET, &t, NOW).is_err(), "{} accepted", t);
        }
        // A session token is not an identity assertion, nor the other way round.
        prop_assert!(verify_assertion(IDENTITY_SECRET, &token, NOW).is_err());

        let assertion = IdentityAssertion {
            provider: Provider::Wechat, subject: customer, phone: None, card_fingerprint: None, iat: NOW,
        };
        let signed = sign_assertion(IDENTITY_SECRET, &assertion);
        prop_assert_eq!(verify_assertion(IDENTITY_SECRET, &signed, NOW), Ok(assertion));
        if let Some(a) = text_with_byte_changed(&signed, index, delta) {
            prop_assert!(verify_assertion(IDENTITY_SECRET, &a, NOW).is_err(), "{} accepted", a);
        }
        prop_assert!(verify_session(SESSION_SECRET, &signed, NOW).is_err());
    }

    #[test]
    fn operator_tokens_other_than_the_configured_one_are_refused(
        header in prop_oneof![".{0,80}".boxed(), "Bearer .{0,60}".boxed()],
        index in any::<usize>(),
        delta in 1u8..=255,
    ) {
        let expected = auth::bearer(Some(&header)) == Some(OPERATOR_TOKEN);
        prop_assert_eq!(verify_operator(OPERATOR_TOKEN, Some(&header)).is_ok(), expected);
        prop_assert!(verify_operator("", Some(&header)).is_err());
        if let Some(token) = text_with_byte_changed(OPERATOR_TOKEN, index, delta) {
            let header = format!("Bearer {token}");
            prop_assert!(verify_operator(OPERATOR_TOKEN, Some(&header)).is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Ids, amounts, timestamps, codes

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ids_parse_exactly_the_key_safe_strings(s in prop_oneof![".{0,80}".boxed(), "[A-Za-z0-9_:/.%-]{0,70}".boxed()]) {
        let parsed = Id::parse(&s);
        prop_assert_eq!(parsed.is_ok(), is_id(&s));
        if let Ok(id) = parsed {
            prop_assert_eq!(id.as_str(), s.as_str());
            let json = serde_json::to_string(&id).expect("json");
            prop_assert_eq!(serde_json::from_str::<Id>(&json).expect("round trip"), id);
        } else {
            prop_assert!(serde_json::from_value::<Id>(Value::String(s.clone())).is_err());
        }
        let hashed = hash_key_part(&s);
        prop_assert!(hashed.len() == 32 && is_id(&hashed));
    }

    #[test]
    fn amounts_are_json_integers_in_range(value in json_value()) {
        match parse_fen(&value) {
            Ok(fen) => {
                prop_assert_eq!(value.as_i64(), Some(fen.0));
                prop_assert!(fen.0.unsigned_abs() <= 1_000_000_000_000_000);
            }
            Err(_) => prop_assert!(value.as_i64().is_none_or(|n| n.unsigned_abs() > 1_000_000_000_000_000)),
        }
    }

    #[test]
    fn integers_round_trip_through_parse_fen(n in -1_000_000_000_000_000i64..=1_000_000_000_000_000) {
        prop_assert_eq!(parse_fen(&Value::from(n)).map(|f| f.0), Ok(n));
        prop_assert!(parse_fen(&Value::from(n as f64 + 0.5)).is_err());
        prop_assert!(parse_fen(&Value::String(n.to_string())).is_err());
    }

    #[test]
    fn timestamps_parse_without_panicking(s in prop_oneof![
        ".{0,40}".boxed(),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2}|.{0,4})".boxed(),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}.{0,8}".boxed(),
    ]) {
        if let Ok(t) = Timestamp::parse_rfc3339(&s) {
            // Whatever parses denotes an instant that prints and parses back to itself.
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Ok(t));
        }
        let _ = serde_json::from_value::<Timestamp>(Value::String(s));
    }

    #[test]
    fn timestamps_round_trip(ms in -2_208_988_800_000i64..253_402_000_000_000) {
        let t = Timestamp::from_unix_ms(ms);
        prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Ok(t));
        let json = serde_json::to_string(&t).expect("json");
        prop_assert_eq!(serde_json::from_str::<Timestamp>(&json).expect("round trip"), t);
    }

    #[test]
    fn referral_codes_are_checked_before_they_become_keys(s in prop_oneof![".{0,24}".boxed(), "[A-Z0-9:/]{0,20}".boxed()]) {
        let ok = valid_code(&s);
        prop_assert_eq!(ok, (4..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
    }
}
