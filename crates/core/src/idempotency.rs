//! Idempotent POSTs with Stripe's semantics, keyed by the client's `Idempotency-Key`.
//!
//! - same key, same request → the first response, replayed byte for byte;
//! - same key, different request → `409 idempotency_key_reused`;
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
    request_sha256: String,
    #[serde(flatten)]
    state: State,
}

/// Where the record of `key` lives.
pub fn record_key(component: &str, principal: &str, key: &str) -> Key {
    Key::new(&["idem", component, principal, &hash_key_part(key)])
}

/// Runs `op` at most once per (component, principal, key) and request fingerprint.
///
/// `request` is whatever identifies the request (method, path and body); `op` produces the response.
pub async fn run<F, Fut>(
    store: &impl Store,
    now: Timestamp,
    component: &str,
    principal: &str,
    key: Option<&str>,
    request: &[u8],
    op: F,
) -> Result<Recorded, IdempotencyError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Recorded>,
{
    let key =
        key.filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    let Some(key) = key else { return Err(IdempotencyError::InvalidKey) };
    let rec_key = record_key(component, principal, key);
    let fingerprint = sha256_hex(request);
    let fresh = Record { v: 1, request_sha256: fingerprint.clone(), state: State::InFlight { started_at: now } };

    // The record is created (or an abandoned one taken over) by the one writer `update_json` lets through; everyone
    // else settles against what it finds.
    let settled = kv::update_json(store, &rec_key, |current: Option<&Record>| {
        let Some(current) = current else { return Ok::<_, StoreError>(Step::Write(fresh.clone(), None)) };
        let abandoned = match &current.state {
            State::Failed => true,
            State::InFlight { started_at } => now.secs_since(*started_at) > STALE_AFTER_SECS,
            State::Done { .. } => false,
        };
        if abandoned && current.request_sha256 == fingerprint {
            Ok(Step::Write(fresh.clone(), None))
        } else {
            Ok(Step::Keep(Some(settle(Some(current.clone()), &fingerprint))))
        }
    })
    .await?;
    if let Some(settled) = settled {
        return settled;
    }

    let response = op().await;
    let state = if response.status >= 500 { State::Failed } else { State::Done { response: response.clone() } };
    let done = Record { v: 1, request_sha256: fingerprint, state };
    let bytes = serde_json::to_vec(&done).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.set(&rec_key, &bytes).await?;
    Ok(response)
}

/// The answer for a request that does not own the key.
fn settle(current: Option<Record>, fingerprint: &str) -> Result<Recorded, IdempotencyError> {
    match current {
        Some(rec) if rec.request_sha256 != fingerprint => Err(IdempotencyError::KeyReused),
        Some(Record { state: State::Done { response }, .. }) => Ok(response),
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

    fn ok(body: &str) -> Recorded {
        Recorded { status: 201, content_type: "application/json".into(), body: body.into() }
    }

    #[test]
    fn same_key_and_request_replays_the_first_response() {
        let store = MemStore::default();
        let runs = &Cell::new(0);
        let call = |body: &'static str| {
            run(&store, t(0), "test", "cust1", Some("k1"), b"POST /x {}", move || {
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
        let first = run(&store, t(0), "test", "c", Some("k"), b"a", || async { ok("a") });
        assert!(pollster::block_on(first).is_ok());
        let second = run(&store, t(1), "test", "c", Some("k"), b"b", || async { ok("b") });
        assert_eq!(pollster::block_on(second), Err(IdempotencyError::KeyReused));
    }

    #[test]
    fn keys_are_scoped_by_principal() {
        let store = MemStore::default();
        assert!(pollster::block_on(run(&store, t(0), "test", "alice", Some("k"), b"a", || async { ok("a") })).is_ok());
        let other = run(&store, t(0), "test", "bob", Some("k"), b"b", || async { ok("b") });
        assert_eq!(pollster::block_on(other), Ok(ok("b")));
    }

    #[test]
    fn a_duplicate_while_the_first_runs_is_in_flight() {
        let store = MemStore::default();
        let slow = run(&store, t(0), "test", "c", Some("k"), b"a", || async {
            for _ in 0..10 {
                crate::kv::yield_now().await;
            }
            ok("a")
        });
        let dup = run(&store, t(0), "test", "c", Some("k"), b"a", || async { ok("dup") });
        let (first, second) = pollster::block_on(crate::kv::interleave::join2(slow, dup));
        assert_eq!(first, Ok(ok("a")));
        assert_eq!(second, Err(IdempotencyError::InFlight));
    }

    #[test]
    fn an_abandoned_request_is_taken_over_after_the_stale_window() {
        let store = MemStore::default();
        // The first attempt crashes after writing its record (the op never finishes).
        let first = run(&store, t(0), "test", "c", Some("k"), b"a", || async {
            store.crash_after_write(0);
            ok("never")
        });
        assert!(pollster::block_on(first).is_err(), "the crashed attempt records nothing final");
        store.heal();

        let early = run(&store, t(30), "test", "c", Some("k"), b"a", || async { ok("retry") });
        assert_eq!(pollster::block_on(early), Err(IdempotencyError::InFlight));
        let late = run(&store, t(61), "test", "c", Some("k"), b"a", || async { ok("retry") });
        assert_eq!(pollster::block_on(late), Ok(ok("retry")));
    }

    #[test]
    fn server_errors_are_not_final() {
        let store = MemStore::default();
        let failed = Recorded { status: 503, content_type: "application/problem+json".into(), body: "{}".into() };
        let first = run(&store, t(0), "test", "c", Some("k"), b"a", || async { failed.clone() });
        assert_eq!(pollster::block_on(first).map(|r| r.status), Ok(503));
        let retry = run(&store, t(1), "test", "c", Some("k"), b"a", || async { ok("fine") });
        assert_eq!(pollster::block_on(retry), Ok(ok("fine")));
    }

    #[test]
    fn missing_or_oversized_keys_are_rejected() {
        let store = MemStore::default();
        for key in [None, Some(""), Some("bad\nkey")] {
            let r = run(&store, t(0), "test", "c", key, b"a", || async { ok("a") });
            assert_eq!(pollster::block_on(r), Err(IdempotencyError::InvalidKey));
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let r = run(&store, t(0), "test", "c", Some(&long), b"a", || async { ok("a") });
        assert_eq!(pollster::block_on(r), Err(IdempotencyError::InvalidKey));
    }
}
