//! Idempotent POSTs with Stripe's semantics, keyed by the client's `Idempotency-Key`.
//!
//! - same key, same request → the first response, replayed byte for byte;
//! - same key, different request → `409 idempotency_key_reused`;
//!
//! "Same request" compares what was asked, as Stripe compares parameters: the method, the path and a JSON body
//! parsed (objects' keys sorted, whitespace dropped), so a client that re-serialises its request differently is
//! replayed; a body that is not JSON (or has a duplicate key, which the routes refuse) is compared byte for byte.
//! - same key while the first is still running → `409 idempotency_request_in_flight`.
//!
//! The record (`idem:{component}:{principal}:{hash(key)}`) is created `in_flight` through [`kv::update_json`] (one
//! creator, whatever the store) before the operation runs, so a crash leaves evidence: an `in_flight` record older
//! than [`STALE_AFTER_SECS`] (or a `failed` one) is taken over with a compare-and-swap, and the operation runs again. Operations must therefore be idempotent in
//! their own effects (keyed by an operation id), which is the rule for every multi-key change in scenefin.
//! 5xx responses are not recorded as final: the client may retry with the same key.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::auth::sha256_hex;
use crate::clock::Timestamp;
use crate::ids::hash_key_part;
use crate::kv::{self, Key, Step, Store, StoreError};
use crate::problem::{ErrorKind, Problem};

/// An `in_flight` record older than this is presumed abandoned (requests are cut after 30 s).
pub const STALE_AFTER_SECS: i64 = 60;

/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A response as recorded and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: String,
    /// Body (JSON text).
    pub body: String,
}

/// Why an idempotent call did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyError {
    /// The header is missing or unusable.
    #[error("Idempotency-Key header is required: 1 to 255 printable ASCII characters")]
    InvalidKey,
    /// The key was used with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    KeyReused,
    /// The first request with this key has not finished.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    InFlight,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for IdempotencyError {
    fn kind(&self) -> ErrorKind {
        match self {
            IdempotencyError::InvalidKey => ErrorKind::Invalid,
            IdempotencyError::KeyReused | IdempotencyError::InFlight => ErrorKind::Conflict,
            IdempotencyError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            IdempotencyError::InvalidKey => "validation_failed",
            IdempotencyError::KeyReused => "idempotency_key_reused",
            IdempotencyError::InFlight => "idempotency_request_in_flight",
            IdempotencyError::Store(e) => e.code(),
        }
    }
    fn field(&self) -> Option<&str> {
        matches!(self, IdempotencyError::InvalidKey).then_some("Idempotency-Key")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum State {
    InFlight { started_at: Timestamp },
    Failed,
    Done { response: Recorded },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    v: u32,
    /// SHA-256 of the request as sent (method, path, raw body): all that records written before
    /// `params_sha256` existed have.
    request_sha256: String,
    /// SHA-256 of the request as parsed ([`Fingerprint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params_sha256: Option<String>,
    #[serde(flatten)]
    state: State,
}

impl Record {
    fn new(fingerprint: &Fingerprint, state: State) -> Self {
        Record { v: 1, request_sha256: fingerprint.raw.clone(), params_sha256: Some(fingerprint.params.clone()), state }
    }

    /// Whether the record is of this request: the same parameters, or (a record without them) the same bytes.
    fn is_of(&self, fingerprint: &Fingerprint) -> bool {
        self.params_sha256.as_ref() == Some(&fingerprint.params) || self.request_sha256 == fingerprint.raw
    }
}

/// What identifies a request: its method and path, and its body both as sent and as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    raw: String,
    params: String,
}

impl Fingerprint {
    /// The fingerprint of `target` (`METHOD /path`) with `body`.
    pub fn of(target: &str, body: &[u8]) -> Self {
        let digest = |body: &[u8]| {
            let mut request = Vec::with_capacity(target.len() + 1 + body.len());
            request.extend_from_slice(target.as_bytes());
            request.push(b'\n');
            request.extend_from_slice(body);
            sha256_hex(&request)
        };
        let raw = digest(body);
        let params = canonical_json(body).map_or_else(|| raw.clone(), |canonical| digest(&canonical));
        Fingerprint { raw, params }
    }
}

/// `body` as canonical JSON (objects' keys sorted, no whitespace), or `None` when it is not exactly one JSON
/// value or an object repeats a key (where "the last one wins" would make different requests look the same).
fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = crate::json::Tree::deserialize(&mut de).ok()?;
    de.end().ok()?;
    serde_json::to_vec(&value.0).ok()
}

/// Where the record of `key` lives.
pub fn record_key(component: &str, principal: &str, key: &str) -> Key {
    Key::new(&["idem", component, principal, &hash_key_part(key)])
}

/// Runs `op` at most once per (component, principal, key) and request fingerprint.
///
/// `request` identifies the request ([`Fingerprint::of`] its method, path and body); `op` produces the response.
pub async fn run<F, Fut>(
    store: &impl Store,
    now: Timestamp,
    component: &str,
    principal: &str,
    key: Option<&str>,
    request: Fingerprint,
    op: F,
) -> Result<Recorded, IdempotencyError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Recorded>,
{
    // Only the call of `op` is generic over the handler: claiming and recording are compiled once per store
    // (component size).
    let rec_key = match begin(store, now, component, principal, key, &request).await? {
        Begun::Settled(settled) => return settled,
        Begun::Owned(rec_key) => rec_key,
    };
    let response = op().await;
    finish(store, &rec_key, &request, response).await
}

/// What [`begin`] found: the answer for a request that does not own the key, or the key of the record it now owns.
enum Begun {
    Settled(Result<Recorded, IdempotencyError>),
    Owned(Key),
}

/// The request's `Idempotency-Key` if it is one: 1 to [`MAX_KEY_LEN`] printable ASCII characters. Routes that
/// look anything up before their idempotent step check it first, so a missing key is refused before a `404`.
pub fn valid_key(key: Option<&str>) -> Result<&str, IdempotencyError> {
    key.filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .ok_or(IdempotencyError::InvalidKey)
}

/// Validates the key and creates the record `in_flight` (or takes an abandoned one over), or settles against it.
async fn begin(
    store: &impl Store,
    now: Timestamp,
    component: &str,
    principal: &str,
    key: Option<&str>,
    request: &Fingerprint,
) -> Result<Begun, IdempotencyError> {
    let key = valid_key(key)?;
    let rec_key = record_key(component, principal, key);
    let fresh = Record::new(request, State::InFlight { started_at: now });

    // The record is created (or an abandoned one taken over) by the one writer `update_json` lets through; everyone
    // else settles against what it finds.
    let settled = kv::update_json(store, &rec_key, |current: Option<&Record>| {
        let Some(current) = current else { return Ok::<_, StoreError>(Step::Write(fresh.clone(), None)) };
        let abandoned = match &current.state {
            State::Failed => true,
            State::InFlight { started_at } => now.secs_since(*started_at) > STALE_AFTER_SECS,
            State::Done { .. } => false,
        };
        if abandoned && current.is_of(request) {
            Ok(Step::Write(fresh.clone(), None))
        } else {
            Ok(Step::Keep(Some(settle(current.clone(), request))))
        }
    })
    .await?;
    Ok(match settled {
        Some(settled) => Begun::Settled(settled),
        None => Begun::Owned(rec_key),
    })
}

/// Records the response of the request that owns the key (a 5xx as `failed`, so it may run again).
async fn finish(
    store: &impl Store,
    rec_key: &Key,
    request: &Fingerprint,
    response: Recorded,
) -> Result<Recorded, IdempotencyError> {
    let state = if response.status >= 500 { State::Failed } else { State::Done { response: response.clone() } };
    let done = Record::new(request, state);
    let bytes = serde_json::to_vec(&done).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.set(rec_key, &bytes).await?;
    Ok(response)
}

/// The answer for a request that does not own the key.
fn settle(current: Record, request: &Fingerprint) -> Result<Recorded, IdempotencyError> {
    match current {
        rec if !rec.is_of(request) => Err(IdempotencyError::KeyReused),
        Record { state: State::Done { response }, .. } => Ok(response),
        _ => Err(IdempotencyError::InFlight),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::kv::MemStore;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    fn fp(body: &[u8]) -> Fingerprint {
        Fingerprint::of("POST /x", body)
    }

    fn ok(body: &str) -> Recorded {
        Recorded { status: 201, content_type: "application/json".into(), body: body.into() }
    }

    #[test]
    fn same_key_and_request_replays_the_first_response() {
        let store = MemStore::default();
        let runs = &Cell::new(0);
        let call = |body: &'static str| {
            run(&store, t(0), "test", "cust1", Some("k1"), fp(b"{}"), move || {
                runs.set(runs.get() + 1);
                async move { ok(body) }
            })
        };
        assert_eq!(pollster::block_on(call("first")), Ok(ok("first")));
        assert_eq!(pollster::block_on(call("second")), Ok(ok("first")));
        assert_eq!(runs.get(), 1);
    }

    #[test]
    fn same_key_with_a_different_request_is_a_conflict() {
        let store = MemStore::default();
        let first = run(&store, t(0), "test", "c", Some("k"), fp(b"a"), || async { ok("a") });
        assert!(pollster::block_on(first).is_ok());
        let second = run(&store, t(1), "test", "c", Some("k"), fp(b"b"), || async { ok("b") });
        assert_eq!(pollster::block_on(second), Err(IdempotencyError::KeyReused));
    }

    #[test]
    fn keys_are_scoped_by_principal() {
        let store = MemStore::default();
        assert!(
            pollster::block_on(run(&store, t(0), "test", "alice", Some("k"), fp(b"a"), || async { ok("a") })).is_ok()
        );
        let other = run(&store, t(0), "test", "bob", Some("k"), fp(b"b"), || async { ok("b") });
        assert_eq!(pollster::block_on(other), Ok(ok("b")));
    }

    #[test]
    fn a_duplicate_while_the_first_runs_is_in_flight() {
        let store = MemStore::default();
        let slow = run(&store, t(0), "test", "c", Some("k"), fp(b"a"), || async {
            for _ in 0..10 {
                crate::kv::yield_now().await;
            }
            ok("a")
        });
        let dup = run(&store, t(0), "test", "c", Some("k"), fp(b"a"), || async { ok("dup") });
        let (first, second) = pollster::block_on(crate::kv::interleave::join2(slow, dup));
        assert_eq!(first, Ok(ok("a")));
        assert_eq!(second, Err(IdempotencyError::InFlight));
    }

    #[test]
    fn an_abandoned_request_is_taken_over_after_the_stale_window() {
        let store = MemStore::default();
        // The first attempt crashes after writing its record (the op never finishes).
        let first = run(&store, t(0), "test", "c", Some("k"), fp(b"a"), || async {
            store.crash_after_write(0);
            ok("never")
        });
        assert!(pollster::block_on(first).is_err(), "the crashed attempt records nothing final");
        store.heal();

        let early = run(&store, t(30), "test", "c", Some("k"), fp(b"a"), || async { ok("retry") });
        assert_eq!(pollster::block_on(early), Err(IdempotencyError::InFlight));
        let late = run(&store, t(61), "test", "c", Some("k"), fp(b"a"), || async { ok("retry") });
        assert_eq!(pollster::block_on(late), Ok(ok("retry")));
    }

    #[test]
    fn server_errors_are_not_final() {
        let store = MemStore::default();
        let failed = Recorded { status: 503, content_type: "application/problem+json".into(), body: "{}".into() };
        let first = run(&store, t(0), "test", "c", Some("k"), fp(b"a"), || async { failed.clone() });
        assert_eq!(pollster::block_on(first).map(|r| r.status), Ok(503));
        let retry = run(&store, t(1), "test", "c", Some("k"), fp(b"a"), || async { ok("fine") });
        assert_eq!(pollster::block_on(retry), Ok(ok("fine")));
    }

    #[test]
    fn missing_or_oversized_keys_are_rejected() {
        let store = MemStore::default();
        for key in [None, Some(""), Some("bad\nkey")] {
            let r = run(&store, t(0), "test", "c", key, fp(b"a"), || async { ok("a") });
            assert_eq!(pollster::block_on(r), Err(IdempotencyError::InvalidKey));
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let r = run(&store, t(0), "test", "c", Some(&long), fp(b"a"), || async { ok("a") });
        assert_eq!(pollster::block_on(r), Err(IdempotencyError::InvalidKey));
    }

    #[test]
    fn the_same_json_serialised_differently_is_the_same_request() {
        let store = MemStore::default();
        let body = br#"{"card_id":"cd_1","amount_fen":1000,"pay_with":"other","meta":{"b":[1,2.5,null],"a":true}}"#;
        let first = run(&store, t(0), "test", "c", Some("k"), fp(body), || async { ok("first") });
        assert_eq!(pollster::block_on(first), Ok(ok("first")));
        let same = [
            &br#" { "pay_with" : "other", "meta": {"a": true, "b": [1, 2.5, null]},
                    "amount_fen": 1000, "card_id": "cd_1" } "#[..],
            &br#"{"meta":{"a":true,"b":[1,2.5,null]},"card_id":"cd_1","pay_with":"other","amount_fen":1000}"#[..],
            // 1000.0 is the integer 1000 (JSON Schema's reading, and how the routes decode it).
            &br#"{"card_id":"cd_1","amount_fen":1000.0,"pay_with":"other","meta":{"b":[1,2.5,null],"a":true}}"#[..],
        ];
        for body in same {
            let again = run(&store, t(1), "test", "c", Some("k"), fp(body), || async { ok("second") });
            assert_eq!(pollster::block_on(again), Ok(ok("first")), "{}", String::from_utf8_lossy(body));
        }
        let different = [
            &br#"{"card_id":"cd_1","amount_fen":2000,"pay_with":"other","meta":{"b":[1,2.5,null],"a":true}}"#[..],
            &br#"{"card_id":"cd_1","amount_fen":1000,"pay_with":"other","meta":{"b":[2.5,1,null],"a":true}}"#[..],
            &br#"{"card_id":"cd_1","amount_fen":1000,"pay_with":"other"}"#[..],
        ];
        for body in different {
            let again = run(&store, t(1), "test", "c", Some("k"), fp(body), || async { ok("other") });
            assert_eq!(
                pollster::block_on(again),
                Err(IdempotencyError::KeyReused),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Another path is another request, whatever the body.
        let elsewhere = Fingerprint::of("POST /y", body);
        let moved = run(&store, t(1), "test", "c", Some("k"), elsewhere, || async { ok("other") });
        assert_eq!(pollster::block_on(moved), Err(IdempotencyError::KeyReused));
    }

    #[test]
    fn bodies_that_are_not_plain_json_compare_as_bytes() {
        assert_eq!(canonical_json(br#"{"a":1,"a":2}"#), None, "a repeated key");
        assert_eq!(canonical_json(b"{\"a\":1} {}"), None, "two values");
        assert_eq!(canonical_json(b"not json"), None);
        assert_eq!(canonical_json(b""), None);
        assert_eq!(fp(br#"{"a":1,"a":2}"#).params, fp(br#"{"a":1,"a":2}"#).raw);
        assert_ne!(fp(br#"{"a":1,"a":2}"#), fp(br#"{"a":2}"#));
        assert_ne!(fp(br#"{"a":1, "a":2}"#), fp(br#"{"a":1,"a":2}"#));
        let canonical = "{\"a\":[],\"b\":{\"c\":\"é\",\"d\":1}}";
        assert_eq!(canonical_json(br#" {"b":{"d":1,"c":"\u00e9"},"a":[]} "#).as_deref(), Some(canonical.as_bytes()));
    }

    #[test]
    fn a_record_written_before_parameters_were_compared_is_still_recognised() {
        let store = MemStore::default();
        let body = br#"{"quote_id":"q_1"}"#;
        // What the previous version stored: the hash of method, path and raw body, and no `params_sha256`.
        let legacy = serde_json::json!({
            "v": 1,
            "request_sha256": sha256_hex(b"POST /x\n{\"quote_id\":\"q_1\"}"),
            "state": "done",
            "response": {"status": 201, "content_type": "application/json", "body": "first"},
        });
        let key = record_key("test", "c", "k");
        pollster::block_on(store.set(&key, &serde_json::to_vec(&legacy).expect("json"))).expect("set");
        let replay = run(&store, t(1), "test", "c", Some("k"), fp(body), || async { ok("second") });
        assert_eq!(pollster::block_on(replay), Ok(ok("first")));
        let other = run(&store, t(1), "test", "c", Some("k"), fp(br#"{"quote_id":"q_2"}"#), || async { ok("x") });
        assert_eq!(pollster::block_on(other), Err(IdempotencyError::KeyReused));
        // An abandoned legacy record of the same request is taken over and completed in the new form.
        let in_flight = serde_json::json!({"v": 1, "request_sha256": fp(body).raw, "state": "in_flight",
                                           "started_at": t(0)});
        let key2 = record_key("test", "c", "k2");
        pollster::block_on(store.set(&key2, &serde_json::to_vec(&in_flight).expect("json"))).expect("set");
        let retried = run(&store, t(120), "test", "c", Some("k2"), fp(body), || async { ok("retried") });
        assert_eq!(pollster::block_on(retried), Ok(ok("retried")));
        let reformatted =
            run(&store, t(121), "test", "c", Some("k2"), fp(br#"{ "quote_id": "q_1" }"#), || async { ok("never") });
        assert_eq!(pollster::block_on(reformatted), Ok(ok("retried")));
    }
}
