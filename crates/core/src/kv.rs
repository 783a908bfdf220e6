//! The key-value store as domain code sees it: the [`Store`] trait, validated [`Key`]s, JSON documents updated
//! with compare-and-swap, counters, and an in-memory [`MemStore`] for tests (feature `mem`).
//!
//! Semantics are Spin's (see `crates/host/src/kv.rs`), including its weak spot: a CAS against an absent key is an
//! unconditional upsert in Spin's SQLite store. So nothing here creates a document with a CAS on absence:
//! [`update_json`] first turns the absent key into a zero counter with an atomic `increment`, then CASes from it.
//!
//! Values are JSON documents with a `"v"` schema version, except counters, which are 8-byte little-endian `i64`
//! written only by `increment` (Spin's store reads them that way and fails on anything else).

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::{ErrorKind, Problem};

/// Longest key accepted (Spin documents 256 bytes; keep a margin for suffixes).
pub const MAX_KEY_BYTES: usize = 250;

/// How many times a CAS loop re-reads and retries at least before giving up with [`StoreError::Contention`]
/// (with [`Store::pause`] between attempts), and for how many seconds at least: a thousand writers on one document
/// under real Spin on Redis (a new connection and a read-back for every swap) need seconds, not attempts.
pub const CAS_RETRIES: u32 = 200;
/// See [`CAS_RETRIES`].
pub const CAS_PATIENCE_SECS: i64 = 20;
/// Attempts after which a CAS loop gives up whatever the clock says.
pub const CAS_MAX_ATTEMPTS: u32 = 5_000;

/// How many times (and for how many seconds, [`CREATION_PATIENCE_SECS`]) a writer at least re-reads a document
/// another writer is creating before answering [`StoreError::Contention`]: a live creator is one store call from
/// writing it, though that call may queue behind many others; a dead one holds it until the lease.
pub const CREATION_WAITS: u32 = 24;
/// See [`CREATION_WAITS`].
pub const CREATION_PATIENCE_SECS: i64 = 5;

/// How long a document's creation may stay claimed with no document written before another writer takes the
/// creation over: the claimant is presumed dead. Five minutes: the host cuts requests after 30 s, but Spin has no
/// limit unless `--request-timeout` is given, and an overloaded Spin SQLite store can hold one call for many seconds
/// behind its single mutex. See [`update_json`].
pub const CREATION_LEASE_SECS: i64 = 300;

/// How many of the latest write tokens a document carries (`"_w"`), so a writer whose compare-and-swap reported an
/// unknown outcome can tell whether it landed even after a few later writes (see [`update_json`]).
pub const WRITE_TOKENS: usize = 8;

/// A store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, access denied...).
    #[error("key-value store failure: {0}")]
    Backend(String),
    /// A CAS loop kept losing to concurrent writers.
    #[error("too much concurrent activity on {key}; retry the request")]
    Contention {
        /// The contended key.
        key: String,
    },
    /// A stored value does not decode: a bug or a schema mismatch.
    #[error("stored value at {key} is unreadable: {detail}")]
    Corrupt {
        /// The key.
        key: String,
        /// What failed.
        detail: String,
    },
    /// Fault injection in tests: the write was refused.
    #[error("injected fault at write {0}")]
    Injected(u64),
}

impl Problem for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Contention { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            StoreError::Contention { .. } => "contention",
            _ => "internal_error",
        }
    }
}

/// A validated key: printable ASCII without spaces, at most [`MAX_KEY_BYTES`].
///
/// Keys are built only by each owner's `keys` module from validated parts, so user input never shapes a key
/// beyond the part it is allowed to fill.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Joins parts with `:`. Panics on an invalid key: keys come from validated parts, so a bad one is a bug.
    pub fn new(parts: &[&str]) -> Key {
        let key = parts.join(":");
        assert!(key.len() <= MAX_KEY_BYTES, "key too long ({} bytes): {key}", key.len());
        assert!(
            key.bytes().all(|b| b.is_ascii_graphic()) && parts.iter().all(|p| !p.is_empty()),
            "invalid key {key:?}"
        );
        Key(key)
    }

    /// A key read back from a document that stored it with [`Key::as_str`] (e.g. a budget's base key on an order).
    pub fn from_stored(stored: &str) -> Key {
        Key::new(&stored.split(':').collect::<Vec<_>>())
    }

    /// [`Key::from_stored`] for text that may not be a key (a log entry): `None` instead of a panic.
    pub fn try_from_stored(stored: &str) -> Option<Key> {
        let parts: Vec<&str> = stored.split(':').collect();
        let valid = stored.len() <= MAX_KEY_BYTES
            && stored.bytes().all(|b| b.is_ascii_graphic())
            && parts.iter().all(|p| !p.is_empty());
        valid.then(|| Key::new(&parts))
    }

    /// This key with more parts appended.
    pub fn child(&self, parts: &[&str]) -> Key {
        let mut all = vec![self.0.as_str()];
        all.extend_from_slice(parts);
        Key::new(&all)
    }

    /// Where the creation of the document at this key is claimed (see [`update_json`]): `{key}:~born`. `~` is in no
    /// id, so no other key is ever named so; the suffix may take a key past [`MAX_KEY_BYTES`], which Spin allows.
    fn creation(&self) -> Key {
        Key(format!("{}:~born", self.0))
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key-value store with Spin's semantics. Async without `Send`: guests are single-threaded.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// The value at `key`, if any.
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value` unconditionally.
    async fn set(&self, key: &Key, value: &[u8]) -> Result<(), StoreError>;
    /// Deletes `key` (absent is fine).
    async fn delete(&self, key: &Key) -> Result<(), StoreError>;
    /// Adds `delta` to the counter at `key` (absent = 0) and returns the new value, atomically.
    async fn increment(&self, key: &Key, delta: i64) -> Result<i64, StoreError>;
    /// Writes `new` if the value is still `expected`; `Ok(false)` if it changed. With `expected == None` this is
    /// Spin's weak upsert: do not rely on it to create documents (see the module docs).
    async fn cas(&self, key: &Key, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError>;
    /// Several values at once (one round trip where the backend allows), in the order of `keys`.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// A compare-and-swap under way: opened by [`Store::cas_open`], finished by [`Store::cas_swap`].
    type Cas;
    /// Opens a compare-and-swap on `key` and returns what the key holds now: one read, the same one a swap compares
    /// against (`wasi:keyvalue` `cas::new` and `current`).
    async fn cas_open(&self, key: &Key) -> Result<(Self::Cas, Option<Vec<u8>>), StoreError>;
    /// Writes `new` if the key still holds what [`Store::cas_open`] read; `Ok(false)` if it changed. When it read
    /// nothing this is Spin's weak upsert: never use it to create a document.
    async fn cas_swap(&self, cas: Self::Cas, new: &[u8]) -> Result<bool, StoreError>;

    /// Unix seconds by the real clock (never a request's test clock), for creation leases.
    fn now_unix_secs(&self) -> i64 {
        crate::clock::Clock::now(&crate::clock::SystemClock).unix_secs()
    }

    /// How long a claimed creation may stay without its document before it is taken over
    /// ([`CREATION_LEASE_SECS`] unless the runtime configures otherwise).
    async fn creation_lease_secs(&self) -> i64 {
        CREATION_LEASE_SECS
    }

    /// Waits before retry `attempt` (1, 2, ...) of a contended operation. The default only yields to other tasks; a
    /// store in a runtime sleeps a little (jittered, growing with `attempt`), so contending writers spread out.
    async fn pause(&self, attempt: u32) {
        let _ = attempt;
        yield_now().await;
    }
}

/// Reads and decodes a JSON document.
pub async fn get_json<T: DeserializeOwned>(store: &impl Store, key: &Key) -> Result<Option<T>, StoreError> {
    decode_doc(key, store.get(key).await?.as_deref())
}

/// Reads one value from a JSON deserializer (the type-specific part of decoding a document).
type JsonReader<'a> =
    dyn FnMut(&mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>) -> serde_json::Result<()> + 'a;

/// Runs `read` on a JSON deserializer over `bytes`, then requires that nothing but whitespace follows: what
/// `serde_json::from_slice` does, with its error as [`StoreError::Corrupt`]. Not generic, so a document type adds only
/// its own `deserialize` (component size).
fn parse_with(key: &Key, bytes: &[u8], read: &mut JsonReader<'_>) -> Result<(), StoreError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    read(&mut de).and_then(|()| de.end()).map_err(|e| corrupt(key, e))
}

/// `serde_json::to_vec` with its error as [`StoreError::Corrupt`] (only `T::serialize` is generic, as in
/// [`parse_with`]).
fn encode<T: Serialize>(key: &Key, value: &T) -> Result<Vec<u8>, StoreError> {
    write_with(key, &mut |ser| value.serialize(ser))
}

fn write_with(
    key: &Key,
    write: &mut dyn FnMut(&mut serde_json::Serializer<&mut Vec<u8>>) -> serde_json::Result<()>,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(128);
    write(&mut serde_json::Serializer::new(&mut out)).map_err(|e| corrupt(key, e))?;
    Ok(out)
}

fn corrupt(key: &Key, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { key: key.to_string(), detail: detail.to_string() }
}

/// Writes a JSON document unconditionally: for write-once documents whose content is determined by their key
/// (so a repeated write writes the same thing).
pub async fn put_json<T: Serialize>(store: &impl Store, key: &Key, value: &T) -> Result<(), StoreError> {
    store.set(key, &encode(key, value)?).await
}

/// Reads a counter written by `increment` (absent = 0).
pub async fn read_counter(store: &impl Store, key: &Key) -> Result<i64, StoreError> {
    counter_of(key, store.get(key).await?.as_deref())
}

/// A counter written by `increment` as read raw (absent = 0), e.g. from a batch read.
pub fn counter_of(key: &Key, raw: Option<&[u8]>) -> Result<i64, StoreError> {
    raw.map_or(Ok(0), |bytes| decode_counter(key, bytes))
}

/// Decodes an `increment` counter value, as either store leaves it: Spin's SQLite store writes 8 little-endian
/// bytes, its Redis store (`INCRBY`) a decimal string. They cannot be confused: an 8-byte little-endian counter
/// below 2^55 in magnitude has a top byte of `0x00` or `0xff`, never an ASCII digit.
pub fn decode_counter(key: &Key, bytes: &[u8]) -> Result<i64, StoreError> {
    if let Some(n) = decimal_counter(bytes) {
        return Ok(n);
    }
    <[u8; 8]>::try_from(bytes)
        .map(i64::from_le_bytes)
        .map_err(|_| StoreError::Corrupt { key: key.to_string(), detail: format!("counter of {} bytes", bytes.len()) })
}

/// A Redis counter: `-`? digits, at most 20 bytes, that parse as an `i64`.
fn decimal_counter(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if digits.is_empty() || bytes.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Whether `bytes` is a creation marker older versions left at a document key while creating it (`increment(key,
/// 0)`: 8 zero bytes on SQLite, `"0"` on Redis). Readers treat it as absent and writers CAS from it; nothing writes
/// it any more, because `increment` on a key that may hold a document crashes Spin's SQLite store.
pub fn is_creating(bytes: &[u8]) -> bool {
    bytes == [0u8; 8] || bytes == b"0"
}

/// What an [`update_json`] step decided.
pub enum Step<T, R> {
    /// Write this document and return `R`.
    Write(T, R),
    /// Leave the document as it is and return `R`.
    Keep(R),
}

/// Read-modify-write of a JSON document, correct on every store Spin ships as it actually behaves, and across a
/// crash between any two of its writes.
///
/// `decide` sees the current document (`None` when absent) and returns a [`Step`] or a business error. It may run
/// several times, so it must be a pure function of its input.
///
/// - **Update** (the document exists): compare-and-swap from the exact bytes read. Every written document starts
///   with `"_w"`, the unique tokens of its last [`WRITE_TOKENS`] writes. When `swap` does not report success (Spin's
///   Redis store reports failure even after its write landed), the document is read back: if it carries this
///   write's token, the write landed (perhaps followed by others); otherwise it did not, and the loop decides again
///   from what it read. An update is never applied twice.
/// - **Creation** (absent): never a CAS on an absent key (an unconditional upsert on Spin's SQLite store) and never
///   an `increment` of the document key (on a document, Spin's SQLite store panics and poisons itself). The writer
///   claims the creation with an `increment` of the companion counter `{key}:~born`, which holds only counters: the
///   first claimant (the counter was 0) writes the document with `set`; any later one gives its claim back and waits
///   for the document, then updates it. A claimant that dies before writing leaves the counter set and no document:
///   when the claim is older than [`Store::creation_lease_secs`] another writer takes it over with a CAS on the
///   counter (a counter again), and creates.
/// - Retries are bounded ([`CAS_RETRIES`] and [`CAS_PATIENCE_SECS`], with [`Store::pause`] between them):
///   [`StoreError::Contention`] after.
pub async fn update_json<T, R, E>(
    store: &impl Store,
    key: &Key,
    decide: impl FnMut(Option<&T>) -> Result<Step<T, R>, E>,
) -> Result<R, E>
where
    T: Serialize + DeserializeOwned,
    E: From<StoreError>,
{
    typed(store, key, false, decide).await
}

/// [`update_json`] for a document that is usually new (a posting, an idempotency record, a record keyed by a
/// request's own id), or that the caller has just read as absent: the creation is claimed first, without reading,
/// so a new document costs the claim and the write. When the claim is held (the document exists, or another writer
/// is creating it) the claim is given back and this is [`update_json`].
///
/// Only for keys written by `update_json` and its variants alone: a document written with a plain `set` has no
/// creation counter, and a first claim would overwrite it.
pub async fn update_json_new<T, R, E>(
    store: &impl Store,
    key: &Key,
    decide: impl FnMut(Option<&T>) -> Result<Step<T, R>, E>,
) -> Result<R, E>
where
    T: Serialize + DeserializeOwned,
    E: From<StoreError>,
{
    typed(store, key, true, decide).await
}

/// Deletes a document written by [`update_json`] and its variants, with its creation claim, so the key can be
/// created afresh at once (a creation claim left behind would make the next creator wait out the lease). The
/// document goes first: a crash between the two leaves only the claim, which the next creator takes over after the
/// lease.
pub async fn delete_doc(store: &impl Store, key: &Key) -> Result<(), StoreError> {
    store.delete(key).await?;
    store.delete(&key.creation()).await
}

/// What a type-erased decision asks for: write this document body (JSON, without write tokens), or stop.
enum RawStep {
    Write(Vec<u8>),
    Stop,
}

/// A type-erased decision: sees the stored bytes (`None` when absent).
type RawDecide<'a> = dyn FnMut(Option<&[u8]>) -> Result<RawStep, StoreError> + 'a;

/// Runs a typed decision through the type-erased [`update_raw`], so the store protocol is compiled once per store
/// rather than once per document type and call site (component size). The decision's result or error is kept from
/// its last run.
async fn typed<T, R, E>(
    store: &impl Store,
    key: &Key,
    fresh: bool,
    mut decide: impl FnMut(Option<&T>) -> Result<Step<T, R>, E>,
) -> Result<R, E>
where
    T: Serialize + DeserializeOwned,
    E: From<StoreError>,
{
    let mut outcome: Option<Result<R, E>> = None;
    let mut raw = |current: Option<&[u8]>| -> Result<RawStep, StoreError> {
        let doc: Option<T> = decode_doc(key, current)?;
        Ok(match decide(doc.as_ref()) {
            Err(e) => {
                outcome = Some(Err(e));
                RawStep::Stop
            }
            Ok(Step::Keep(result)) => {
                outcome = Some(Ok(result));
                RawStep::Stop
            }
            Ok(Step::Write(next, result)) => {
                let body = encode(key, &next)?;
                outcome = Some(Ok(result));
                RawStep::Write(body)
            }
        })
    };
    update_raw(store, key, fresh, &mut raw).await?;
    outcome.unwrap_or_else(|| Err(StoreError::Corrupt { key: key.to_string(), detail: "no decision".into() }.into()))
}

/// The protocol of [`update_json`] on raw documents; with `fresh`, the creation is claimed before anything is read
/// ([`update_json_new`]).
async fn update_raw<S: Store>(store: &S, key: &Key, fresh: bool, decide: &mut RawDecide<'_>) -> Result<(), StoreError> {
    if fresh {
        match decide(None)? {
            RawStep::Stop => {}
            RawStep::Write(body) => {
                let bytes = with_tokens(key, &body, &write_token()?, b"")?;
                if let Some(stamp) = claim_creation(store, key).await? {
                    return create(store, key, &bytes, stamp).await;
                }
            }
        }
    }
    // The document is read through a compare-and-swap handle, so the read that decides is the one the swap
    // compares against: an update is one read and one swap.
    let mut open = store.cas_open(key).await?;
    // Whether another writer was found holding this document's creation, and how often it was waited for.
    let mut creation_held = false;
    let mut waits_for_creator = 0;
    let mut retries = Retries::start(store);
    while retries.next(store).await {
        let (cas, current) = open;
        let RawStep::Write(body) = decide(current.as_deref())? else { return Ok(()) };
        match current {
            Some(old) => {
                let token = write_token()?;
                let bytes = with_tokens(key, &body, &token, &old)?;
                if let Ok(true) = store.cas_swap(cas, &bytes).await {
                    return Ok(());
                }
                // Not reported written (Spin's Redis store reports failure even after writing): the token tells.
                open = store.cas_open(key).await?;
                if open.1.as_deref().is_some_and(|now| carries_token(now, &token)) {
                    return Ok(());
                }
            }
            None => {
                drop(cas);
                let bytes = with_tokens(key, &body, &write_token()?, b"")?;
                let stamp = if creation_held {
                    take_over_abandoned_creation(store, key).await?
                } else {
                    claim_creation(store, key).await?
                };
                match stamp {
                    Some(stamp) => return create(store, key, &bytes, stamp).await,
                    None => {
                        creation_held = true;
                        waits_for_creator += 1;
                        if waits_for_creator > CREATION_WAITS && retries.elapsed_secs(store) >= CREATION_PATIENCE_SECS {
                            break;
                        }
                    }
                }
                open = store.cas_open(key).await?;
            }
        }
    }
    Err(StoreError::Contention { key: key.to_string() })
}

/// The retry budget of a contended operation: at least [`CAS_RETRIES`] attempts and [`CAS_PATIENCE_SECS`] seconds,
/// at most [`CAS_MAX_ATTEMPTS`], with [`Store::pause`] before every attempt but the first.
pub struct Retries {
    started: i64,
    attempt: u32,
}

impl Retries {
    /// A budget starting now.
    pub fn start(store: &impl Store) -> Retries {
        Retries { started: store.now_unix_secs(), attempt: 0 }
    }

    /// Whether another attempt may run (after pausing, unless it is the first).
    pub async fn next(&mut self, store: &impl Store) -> bool {
        let spent = self.attempt >= CAS_RETRIES && self.elapsed_secs(store) >= CAS_PATIENCE_SECS;
        if spent || self.attempt >= CAS_MAX_ATTEMPTS {
            return false;
        }
        if self.attempt > 0 {
            store.pause(self.attempt).await;
        }
        self.attempt += 1;
        true
    }

    /// Whether the attempt under way is the first.
    pub fn first(&self) -> bool {
        self.attempt <= 1
    }

    /// Seconds since the budget started.
    pub fn elapsed_secs(&self, store: &impl Store) -> i64 {
        store.now_unix_secs() - self.started
    }
}

/// Replaces the existing document `old` (the exact bytes read) with `next`: `None` when the write landed, otherwise
/// `Some` of what the key holds now. `Ok(false)` and errors of the swap alike leave the outcome to a read-back of the
/// write's token, since Spin's Redis store reports a failed swap after writing.
async fn swap_doc<T: Serialize>(
    store: &impl Store,
    key: &Key,
    old: &[u8],
    next: &T,
) -> Result<Option<Option<Vec<u8>>>, StoreError> {
    let token = write_token()?;
    let bytes = encode_doc(key, next, &token, old)?;
    if let Ok(true) = store.cas(key, Some(old), &bytes).await {
        return Ok(None);
    }
    let now = store.get(key).await?;
    if now.as_deref().is_some_and(|now| carries_token(now, &token)) {
        return Ok(None);
    }
    Ok(Some(now))
}

/// What one [`try_update_json`] attempt did.
pub enum Tried<R> {
    /// The decision kept the document, or its write landed.
    Done(R),
    /// Another writer changed the document first; this is what the key holds now.
    Lost(Option<Vec<u8>>),
}

/// One attempt of [`update_json`] on an existing document, from the exact bytes the caller read: for callers that
/// do something else between attempts than try again (see the ledger's stored-value accounts). The outcome is known
/// as in `update_json` (write token read back); `current` must hold a document.
pub async fn try_update_json<T, R, E>(
    store: &impl Store,
    key: &Key,
    current: &[u8],
    decide: impl FnOnce(&T) -> Result<Step<T, R>, E>,
) -> Result<Tried<R>, E>
where
    T: Serialize + DeserializeOwned,
    E: From<StoreError>,
{
    let Some(doc) = decode_doc::<T>(key, Some(current))? else {
        return Err(StoreError::Corrupt { key: key.to_string(), detail: "no document to update".into() }.into());
    };
    match decide(&doc)? {
        Step::Keep(result) => Ok(Tried::Done(result)),
        Step::Write(next, result) => Ok(match swap_doc(store, key, current, &next).await? {
            None => Tried::Done(result),
            Some(now) => Tried::Lost(now),
        }),
    }
}

/// A claim on a document's creation: `now_unix_secs << 20` plus 20 random bits, so two claims differ and the sum of
/// a few claims still tells their mean time.
fn creation_stamp(store: &impl Store) -> Result<i64, StoreError> {
    let random = crate::ids::random_bytes::<4>().map_err(|e| StoreError::Backend(e.to_string()))?;
    let low = i64::from(u32::from_le_bytes(random) & 0xf_ffff);
    Ok((store.now_unix_secs().max(1) << 20) | low)
}

/// Claims the creation of `key`: `Some(stamp)` for the first claimant; `None` (the claim given back) when another
/// writer holds it.
async fn claim_creation(store: &impl Store, key: &Key) -> Result<Option<i64>, StoreError> {
    let born = key.creation();
    let stamp = creation_stamp(store)?;
    if store.increment(&born, stamp).await? == stamp {
        return Ok(Some(stamp));
    }
    // Give the claim back so the counter keeps describing the claimant that matters (a failure here only delays a
    // takeover: the counter's mean claim time looks newer).
    let _ = store.increment(&born, -stamp).await;
    Ok(None)
}

/// Takes over the creation of `key` when its claim is older than the lease (or the counter was released): `Some`
/// stamp when this writer now holds it.
async fn take_over_abandoned_creation(store: &impl Store, key: &Key) -> Result<Option<i64>, StoreError> {
    let born = key.creation();
    let Some(held) = store.get(&born).await? else { return claim_creation(store, key).await };
    let total = decode_counter(&born, &held)?;
    if total <= 0 {
        return claim_creation(store, key).await;
    }
    let now = store.now_unix_secs();
    // The counter holds one claim, or a few claims whose holders have not given them back yet: their mean time is no
    // earlier than the first claimant's, so "the mean is older than the lease" is a safe test for "the first claimant
    // is older than the lease". A claim in the future by more than the lease is a clock that cannot be trusted.
    let unit = now.max(1) << 20;
    let claims = ((total + unit / 2) / unit).max(1);
    let claimed_at = (total / claims) >> 20;
    if (now - claimed_at).abs() <= store.creation_lease_secs().await {
        return Ok(None);
    }
    let stamp = creation_stamp(store)?;
    let fresh = counter_like(&held, stamp);
    if swap(store, &born, &held, &fresh).await? { Ok(Some(stamp)) } else { Ok(None) }
}

/// Writes a new document under a creation claim. On an error nothing is known to be written, so the claim is given
/// back (after checking the document did not land), and the next writer can create at once.
async fn create(store: &impl Store, key: &Key, bytes: &[u8], stamp: i64) -> Result<(), StoreError> {
    let Err(e) = store.set(key, bytes).await else { return Ok(()) };
    if store.get(key).await?.as_deref() == Some(bytes) {
        return Ok(());
    }
    let born = key.creation();
    if let Some(held) = store.get(&born).await?
        && decode_counter(&born, &held)? == stamp
    {
        let _ = swap(store, &born, &held, &counter_like(&held, 0)).await;
    }
    Err(e)
}

/// `n` encoded as the counter `like` is: 8 little-endian bytes (Spin's SQLite store) or decimal text (Redis).
fn counter_like(like: &[u8], n: i64) -> Vec<u8> {
    if decimal_counter(like).is_some() { n.to_string().into_bytes() } else { n.to_le_bytes().to_vec() }
}

/// Compare-and-swap of `key` from `expected` to `new`, with its outcome known: when the store does not report
/// success (Spin's Redis store reports failure even after writing), the value is read back. `new` must be unique to
/// this writer (a token, a random stamp) for the read-back to prove anything.
pub async fn swap(store: &impl Store, key: &Key, expected: &[u8], new: &[u8]) -> Result<bool, StoreError> {
    match store.cas(key, Some(expected), new).await {
        Ok(true) => Ok(true),
        Ok(false) | Err(_) => Ok(store.get(key).await?.as_deref() == Some(new)),
    }
}

/// A fresh write token: 12 lowercase hex characters.
fn write_token() -> Result<String, StoreError> {
    let bytes = crate::ids::random_bytes::<6>().map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

const TOKENS_PREFIX: &[u8] = b"{\"_w\":[";

/// The token list of a stored document (the bytes between `[` and `]`) and where the document's own fields start.
fn split_tokens(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let rest = bytes.strip_prefix(TOKENS_PREFIX)?;
    let end = rest.iter().position(|&b| b == b']')?;
    let fields = TOKENS_PREFIX.len() + end + 1;
    let fields = if bytes.get(fields) == Some(&b',') { fields + 1 } else { fields };
    Some((&rest[..end], fields))
}

/// Whether the stored document carries write token `token`.
fn carries_token(bytes: &[u8], token: &str) -> bool {
    split_tokens(bytes).is_some_and(|(tokens, _)| {
        tokens
            .split(|&b| b == b',')
            .any(|t| t.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")) == Some(token.as_bytes()))
    })
}

/// Encodes `value` as a document that carries `token` first, then the latest tokens of `previous` (the bytes it
/// replaces; empty for a new document).
fn encode_doc<T: Serialize>(key: &Key, value: &T, token: &str, previous: &[u8]) -> Result<Vec<u8>, StoreError> {
    with_tokens(key, &encode(key, value)?, token, previous)
}

/// A document body (a JSON object) with `token` and the latest of `previous`'s tokens in front.
fn with_tokens(key: &Key, body: &[u8], token: &str, previous: &[u8]) -> Result<Vec<u8>, StoreError> {
    let Some(fields) = body.strip_prefix(b"{") else {
        return Err(StoreError::Corrupt { key: key.to_string(), detail: "a document must be a JSON object".into() });
    };
    let mut out = Vec::with_capacity(body.len() + 16 + 15 * WRITE_TOKENS);
    out.extend_from_slice(TOKENS_PREFIX);
    out.push(b'"');
    out.extend_from_slice(token.as_bytes());
    out.push(b'"');
    if let Some((tokens, _)) = split_tokens(previous) {
        for t in tokens.split(|&b| b == b',').filter(|t| !t.is_empty()).take(WRITE_TOKENS - 1) {
            out.push(b',');
            out.extend_from_slice(t);
        }
    }
    out.push(b']');
    if fields != b"}" {
        out.push(b',');
    }
    out.extend_from_slice(fields);
    Ok(out)
}

/// Decodes a JSON document; absent and an old creation marker ([`is_creating`]) both read as `None`. The write tokens
/// (`"_w"`) are not part of the document.
pub fn decode_doc<T: DeserializeOwned>(key: &Key, bytes: Option<&[u8]>) -> Result<Option<T>, StoreError> {
    let mut doc = None;
    parse_doc(key, bytes, &mut |de| {
        doc = Some(T::deserialize(de)?);
        Ok(())
    })?;
    Ok(doc)
}

/// [`decode_doc`] up to the document type: `read` runs on the document's JSON, without its write tokens, unless it is
/// absent or an old creation marker.
fn parse_doc(key: &Key, bytes: Option<&[u8]>, read: &mut JsonReader<'_>) -> Result<(), StoreError> {
    let Some(bytes) = bytes.filter(|bytes| !is_creating(bytes)) else { return Ok(()) };
    match split_tokens(bytes) {
        Some((_, fields)) => {
            let mut doc = Vec::with_capacity(bytes.len() + 1 - fields);
            doc.push(b'{');
            doc.extend_from_slice(&bytes[fields..]);
            parse_with(key, &doc, read)
        }
        None => parse_with(key, bytes, read),
    }
}

/// `get_many` in chunks of 100 keys, values in the order of `keys`.
pub async fn get_all(store: &impl Store, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let mut values = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(100) {
        let got = store.get_many(chunk).await?;
        if got.len() != chunk.len() {
            return Err(StoreError::Backend(format!(
                "get_many returned {} values for {} keys",
                got.len(),
                chunk.len()
            )));
        }
        values.extend(got);
    }
    Ok(values)
}

/// Yields once to the executor, so a concurrent task can make progress.
pub fn yield_now() -> impl Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
}

/// An index document: a list of ids (`{"v":1,"ids":[...]}`), the store's substitute for listing keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Index {
    /// Schema version.
    pub v: u32,
    /// Ids, in insertion order.
    pub ids: Vec<String>,
}

/// Adds `id` to the index document at `key` (idempotent); returns whether it was new.
pub async fn add_to_index(store: &impl Store, key: &Key, id: &str) -> Result<bool, StoreError> {
    update_json(store, key, |idx: Option<&Index>| {
        let mut idx = idx.cloned().unwrap_or(Index { v: 1, ids: Vec::new() });
        if idx.ids.iter().any(|x| x == id) {
            return Ok::<_, StoreError>(Step::Keep(false));
        }
        idx.ids.push(id.to_owned());
        Ok(Step::Write(idx, true))
    })
    .await
}

/// Whether the index document `key` read as `raw` lists `id` already (absent: no).
pub fn index_holds(key: &Key, raw: Option<&[u8]>, id: &str) -> Result<bool, StoreError> {
    Ok(decode_doc::<Index>(key, raw)?.is_some_and(|idx| idx.ids.iter().any(|x| x == id)))
}

/// The ids of the index document at `key` (empty when absent).
pub async fn read_index(store: &impl Store, key: &Key) -> Result<Vec<String>, StoreError> {
    Ok(get_json::<Index>(store, key).await?.unwrap_or_default().ids)
}

/// The documents an index lists, in index order: the index, then one batch read (`key_of` turns an id into its
/// document's key). Ids whose document is absent (a creator that crashed between index and document) are skipped.
pub async fn read_indexed<T: DeserializeOwned>(
    store: &impl Store,
    index: &Key,
    key_of: impl Fn(&str) -> Key,
) -> Result<Vec<T>, StoreError> {
    let keys: Vec<Key> = read_index(store, index).await?.iter().map(|id| key_of(id)).collect();
    let mut out = Vec::with_capacity(keys.len());
    for (key, raw) in keys.iter().zip(get_all(store, &keys).await?) {
        if let Some(doc) = decode_doc(key, raw.as_deref())? {
            out.push(doc);
        }
    }
    Ok(out)
}

/// The longest suffix [`append_to_log`] appends to its base key (`:s:` and a 19-digit slot number).
pub const LOG_KEY_OVERHEAD: usize = 22;

/// One entry of a log ([`append_to_log`]), write-once under its slot.
#[derive(Serialize, serde::Deserialize)]
struct LogEntry {
    v: u32,
    id: String,
}

/// Appends `id` to the log at `base`: an append-only list that may grow without bound (a day's postings, an hour's
/// reservations). The slot comes from an atomic counter (`{base}:ctr:n`) and the entry is written once under it
/// (`{base}:s:{slot}`): no two writers ever touch the same document, so an append is two writes whatever the log's
/// length and however many append at once, with no compare-and-swap and no document to create under contention.
///
/// A retried append may list `id` twice (a crash between taking a slot and filling it only leaves a slot empty);
/// [`read_logs`] returns each id once.
pub async fn append_to_log(store: &impl Store, base: &Key, id: &str) -> Result<(), StoreError> {
    let slot = store.increment(&log_counter_key(base), 1).await?;
    put_json(store, &log_slot_key(base, slot), &LogEntry { v: 1, id: id.to_owned() }).await
}

/// The ids of each log at `bases` ([`append_to_log`]), each id once, in order of appending: two batch reads (the
/// counters, then every slot).
pub async fn read_logs(store: &impl Store, bases: &[Key]) -> Result<Vec<Vec<String>>, StoreError> {
    let counter_keys: Vec<Key> = bases.iter().map(log_counter_key).collect();
    let mut slot_keys = Vec::new();
    let mut slots_per_log = Vec::with_capacity(bases.len());
    for ((base, key), raw) in bases.iter().zip(&counter_keys).zip(get_all(store, &counter_keys).await?) {
        let appended = counter_of(key, raw.as_deref())?.max(0);
        slots_per_log.push(usize::try_from(appended).unwrap_or(0));
        slot_keys.extend((1..=appended).map(|slot| log_slot_key(base, slot)));
    }
    let mut raws = slot_keys.iter().zip(get_all(store, &slot_keys).await?);
    let mut logs = Vec::with_capacity(bases.len());
    for slots in slots_per_log {
        let mut seen = std::collections::HashSet::new();
        let mut ids = Vec::new();
        for (key, raw) in raws.by_ref().take(slots) {
            if let Some(entry) = decode_doc::<LogEntry>(key, raw.as_deref())?
                && seen.insert(entry.id.clone())
            {
                ids.push(entry.id);
            }
        }
        logs.push(ids);
    }
    Ok(logs)
}

/// The slot counter of the log at `base` ([`append_to_log`]).
pub fn log_counter_key(base: &Key) -> Key {
    base.child(&["ctr", "n"])
}

/// The key of slot `slot` of the log at `base` ([`append_to_log`]).
pub fn log_slot_key(base: &Key, slot: i64) -> Key {
    base.child(&["s", &slot.to_string()])
}

/// Adds `delta` to `counter` once per `claim` (e.g. per order): at most once, even when retried.
pub async fn count_once(store: &impl Store, claim: &Key, counter: &Key, delta: i64) -> Result<(), StoreError> {
    if claim_once(store, claim).await? {
        store.increment(counter, delta).await?;
    }
    Ok(())
}

/// Adds each `(counter, delta)` once per `claim`: one claim for a group of counters one cause moves (analytics),
/// instead of one per counter. When an increment fails, the ones before it are taken back and the claim given back
/// (best effort), so the retry counts the whole group; a process that dies between the claim and the last increment
/// loses the rest of the group's counts, the safe side for counters nothing is paid from (money and stock never
/// rely on this).
pub async fn count_all_once(store: &impl Store, claim: &Key, counters: &[(Key, i64)]) -> Result<(), StoreError> {
    if counters.is_empty() || !claim_once(store, claim).await? {
        return Ok(());
    }
    for (done, (counter, delta)) in counters.iter().enumerate() {
        if let Err(e) = store.increment(counter, *delta).await {
            for (counter, delta) in &counters[..done] {
                if store.increment(counter, -delta).await.is_err() {
                    return Err(e);
                }
            }
            let _ = store.increment(claim, -1).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Claims a new resource's id: `false`, without writing, when it is taken already (a refused duplicate leaves the
/// store as it was); otherwise [`claim_once`].
pub async fn claim_new(store: &impl Store, key: &Key) -> Result<bool, StoreError> {
    if store.get(key).await?.is_some() {
        return Ok(false);
    }
    claim_once(store, key).await
}

/// Claims `key` once: `true` for exactly one caller ever (per key), via an atomic increment.
pub async fn claim_once(store: &impl Store, key: &Key) -> Result<bool, StoreError> {
    Ok(store.increment(key, 1).await? == 1)
}

#[cfg(any(test, feature = "mem"))]
pub use mem::{CasMode, MemStore};

#[cfg(any(test, feature = "mem"))]
mod mem {
    //! An in-memory [`Store`] with Spin's semantics, switchable CAS-on-absent behaviour and fault injection.

    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use super::{Key, Store, StoreError, yield_now};

    /// How `cas` behaves: each mode is a Spin store as it actually behaves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CasMode {
        /// Spin's SQLite store: with `expected == None`, check absence, yield, then upsert unconditionally (so a
        /// racer can be overwritten).
        SpinUpsert,
        /// Create only if still absent (Redis WATCH/MULTI), and report the true outcome.
        Strict,
        /// Spin's Redis store: as `Strict`, but `swap` reports failure whether or not its write landed (Spin sends
        /// `UNWATCH <key>`, which Redis refuses).
        SpinRedis,
    }

    /// An in-memory store for tests. Every operation yields once first, as a host call would, so futures polled
    /// together interleave between operations.
    ///
    /// `increment` of a value that is not 8 bytes (nor a Redis decimal counter) panics, as Spin's SQLite store does
    /// (which then poisons itself): domain code must never do it, and a test that does fails loudly.
    pub struct MemStore {
        data: RefCell<BTreeMap<String, Vec<u8>>>,
        mode: CasMode,
        writes: Cell<u64>,
        fail_write: Cell<Option<u64>>,
        crash_after: Cell<Option<u64>>,
        now: Cell<i64>,
        lease: Cell<i64>,
    }

    impl Default for MemStore {
        fn default() -> Self {
            Self::new(CasMode::SpinUpsert)
        }
    }

    impl MemStore {
        /// An empty store.
        pub fn new(mode: CasMode) -> Self {
            Self {
                data: RefCell::default(),
                mode,
                writes: Cell::new(0),
                fail_write: Cell::new(None),
                crash_after: Cell::new(None),
                now: Cell::new(1_800_000_000),
                lease: Cell::new(super::CREATION_LEASE_SECS),
            }
        }

        /// Makes the `n`th write from now on (1-based) fail without effect.
        pub fn fail_write(&self, n: u64) {
            self.fail_write.set(Some(self.writes.get() + n));
        }

        /// Simulates a crash right after the `n`th write from now on (1-based): that write lands, and every later
        /// operation fails until [`MemStore::heal`] (a new process taking over the same data).
        pub fn crash_after_write(&self, n: u64) {
            self.crash_after.set(Some(self.writes.get() + n));
        }

        /// Cancels a failure or crash set with [`MemStore::fail_write`] or [`MemStore::crash_after_write`].
        pub fn heal(&self) {
            self.fail_write.set(None);
            self.crash_after.set(None);
        }

        /// Sets the real clock the store reports (Unix seconds).
        pub fn set_now(&self, unix_secs: i64) {
            self.now.set(unix_secs);
        }

        /// Sets the creation lease (seconds).
        pub fn set_creation_lease(&self, secs: i64) {
            self.lease.set(secs);
        }

        /// Writes attempted so far.
        pub fn writes(&self) -> u64 {
            self.writes.get()
        }

        /// Raw value, for assertions.
        pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
            self.data.borrow().get(key).cloned()
        }

        /// Writes a raw value behind the store's back, as a concurrent writer would (no write counted).
        pub fn put_raw(&self, key: &str, value: &[u8]) {
            self.data.borrow_mut().insert(key.to_owned(), value.to_vec());
        }

        /// All keys, for assertions.
        pub fn keys(&self) -> Vec<String> {
            self.data.borrow().keys().cloned().collect()
        }

        fn alive(&self) -> Result<(), StoreError> {
            match self.crash_after.get() {
                Some(n) if self.writes.get() >= n => Err(StoreError::Backend("crashed".into())),
                _ => Ok(()),
            }
        }

        fn write(&self) -> Result<(), StoreError> {
            self.alive()?;
            let n = self.writes.get() + 1;
            self.writes.set(n);
            if self.fail_write.get() == Some(n) {
                return Err(StoreError::Injected(n));
            }
            Ok(())
        }
    }

    impl Store for MemStore {
        async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
            yield_now().await;
            self.alive()?;
            Ok(self.data.borrow().get(key.as_str()).cloned())
        }

        async fn set(&self, key: &Key, value: &[u8]) -> Result<(), StoreError> {
            yield_now().await;
            self.write()?;
            self.data.borrow_mut().insert(key.as_str().to_owned(), value.to_vec());
            Ok(())
        }

        async fn delete(&self, key: &Key) -> Result<(), StoreError> {
            yield_now().await;
            self.write()?;
            self.data.borrow_mut().remove(key.as_str());
            Ok(())
        }

        async fn increment(&self, key: &Key, delta: i64) -> Result<i64, StoreError> {
            yield_now().await;
            self.write()?;
            let mut data = self.data.borrow_mut();
            let current = match data.get(key.as_str()) {
                None => 0,
                Some(bytes) => match super::decode_counter(key, bytes) {
                    Ok(n) => n,
                    Err(_) => panic!(
                        "increment of {key} holding a non-counter value ({} bytes): Spin's SQLite store panics here \
                         and poisons itself",
                        bytes.len()
                    ),
                },
            };
            let next = current.checked_add(delta).ok_or_else(|| StoreError::Backend("counter overflow".into()))?;
            data.insert(key.as_str().to_owned(), next.to_le_bytes().to_vec());
            Ok(next)
        }

        async fn cas(&self, key: &Key, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError> {
            yield_now().await;
            self.write()?;
            let landed = match expected {
                Some(expected) => {
                    let mut data = self.data.borrow_mut();
                    if data.get(key.as_str()).map(Vec::as_slice) == Some(expected) {
                        data.insert(key.as_str().to_owned(), new.to_vec());
                        true
                    } else {
                        false
                    }
                }
                None => {
                    if self.data.borrow().contains_key(key.as_str()) {
                        return Ok(false);
                    }
                    if self.mode == CasMode::SpinUpsert {
                        // Spin checks (`current`) and writes (`swap`) in two host calls.
                        yield_now().await;
                    } else if self.data.borrow().contains_key(key.as_str()) {
                        return Ok(false);
                    }
                    self.data.borrow_mut().insert(key.as_str().to_owned(), new.to_vec());
                    true
                }
            };
            Ok(landed && self.mode != CasMode::SpinRedis)
        }

        type Cas = (Key, Option<Vec<u8>>);

        async fn cas_open(&self, key: &Key) -> Result<(Self::Cas, Option<Vec<u8>>), StoreError> {
            let current = self.get(key).await?;
            Ok(((key.clone(), current.clone()), current))
        }

        async fn cas_swap(&self, (key, read): Self::Cas, new: &[u8]) -> Result<bool, StoreError> {
            self.cas(&key, read.as_deref(), new).await
        }

        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
            yield_now().await;
            self.alive()?;
            let data = self.data.borrow();
            Ok(keys.iter().map(|k| data.get(k.as_str()).cloned()).collect())
        }

        fn now_unix_secs(&self) -> i64 {
            self.now.get()
        }

        async fn creation_lease_secs(&self) -> i64 {
            self.lease.get()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Doc {
        v: u32,
        n: i64,
    }

    fn add(delta: i64) -> impl FnMut(Option<&Doc>) -> Result<Step<Doc, i64>, StoreError> {
        move |doc| {
            let n = doc.map_or(0, |d| d.n) + delta;
            Ok(Step::Write(Doc { v: 1, n }, n))
        }
    }

    #[test]
    fn keys_join_parts_and_refuse_bad_input() {
        assert_eq!(Key::new(&["cust", "customer", "c_1"]).as_str(), "cust:customer:c_1");
        assert_eq!(Key::new(&["a"]).child(&["b", "c"]).as_str(), "a:b:c");
        assert!(std::panic::catch_unwind(|| Key::new(&["a b"])).is_err());
        assert!(std::panic::catch_unwind(|| Key::new(&["a", ""])).is_err());
        assert!(std::panic::catch_unwind(|| Key::new(&[&"x".repeat(MAX_KEY_BYTES + 1)])).is_err());
    }

    #[test]
    fn a_log_keeps_every_id_once_in_order_one_write_once_entry_per_slot() {
        // Arrange
        let store = MemStore::default();
        let (a, b) = (Key::new(&["t", "log", "a"]), Key::new(&["t", "log", "b"]));
        let ids: Vec<String> = (0..150).map(|i| format!("id{i}")).collect();

        // Act: a retried append lists an id twice.
        for id in &ids {
            pollster::block_on(append_to_log(&store, &a, id)).expect("append");
        }
        pollster::block_on(append_to_log(&store, &a, "id7")).expect("retried append");
        pollster::block_on(append_to_log(&store, &b, "only")).expect("append");

        // Assert
        let logs = pollster::block_on(read_logs(&store, &[a.clone(), Key::new(&["t", "log", "none"]), b]));
        assert_eq!(logs, Ok(vec![ids, Vec::new(), vec!["only".to_owned()]]));
        assert_eq!(store.raw("t:log:a:s:151").map(|r| r.starts_with(b"{")), Some(true), "151 slots, one each");
        assert_eq!(store.raw("t:log:a:s:152"), None);
    }

    #[test]
    fn concurrent_log_appends_lose_nothing() {
        let store = MemStore::default();
        let base = Key::new(&["t", "log"]);
        let appends: Vec<_> = (0..100)
            .map(|i| {
                let (store, base) = (&store, &base);
                async move { append_to_log(store, base, &format!("id{i}")).await }
            })
            .collect();
        for result in pollster::block_on(interleave::join_all(appends)) {
            result.expect("append");
        }
        let mut got = pollster::block_on(read_logs(&store, std::slice::from_ref(&base))).expect("read").remove(0);
        got.sort();
        let mut want: Vec<String> = (0..100).map(|i| format!("id{i}")).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn update_creates_then_updates_a_document() {
        let store = MemStore::default();
        let key = Key::new(&["t", "doc"]);
        assert_eq!(pollster::block_on(update_json(&store, &key, add(2))), Ok(2));
        assert_eq!(pollster::block_on(update_json(&store, &key, add(3))), Ok(5));
        assert_eq!(pollster::block_on(get_json::<Doc>(&store, &key)), Ok(Some(Doc { v: 1, n: 5 })));
    }

    #[test]
    fn counters_decode_as_either_spin_store_writes_them() {
        let key = Key::new(&["t", "ctr"]);
        for n in [0i64, 1, -2, 1_000_000_007, i64::MAX, i64::MIN, (1 << 55) - 1, -(1 << 55)] {
            assert_eq!(decode_counter(&key, &n.to_le_bytes()), Ok(n), "SQLite's 8 bytes for {n}");
            assert_eq!(decode_counter(&key, n.to_string().as_bytes()), Ok(n), "Redis's INCRBY text for {n}");
        }
        for bad in [&b""[..], b"-", b"1.5", b" 1", b"99999999999999999999", b"{\"v\":1}"] {
            assert!(decode_counter(&key, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_document_is_created_over_redis_creating_marker() {
        // Redis's `INCRBY key 0` on an absent key leaves "0": a creator that died there must not block the key.
        let store = MemStore::default();
        let key = Key::new(&["t", "doc"]);
        store.put_raw(key.as_str(), b"0");
        assert_eq!(pollster::block_on(get_json::<Doc>(&store, &key)), Ok(None));
        assert_eq!(pollster::block_on(update_json(&store, &key, add(4))), Ok(4));
        assert_eq!(pollster::block_on(get_json::<Doc>(&store, &key)), Ok(Some(Doc { v: 1, n: 4 })));
    }

    #[test]
    fn concurrent_creators_and_updaters_lose_nothing_under_spin_semantics() {
        // Arrange: interleave many updaters step by step on one thread (as one guest instance would).
        let store = MemStore::new(CasMode::SpinUpsert);
        let key = Key::new(&["t", "hot"]);
        let tasks: Vec<_> = (0..20).map(|_| update_json(&store, &key, add(1))).collect();

        // Act
        let results = pollster::block_on(interleave::join_all(tasks));

        // Assert
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(pollster::block_on(get_json::<Doc>(&store, &key)).expect("read").map(|d| d.n), Some(20));
    }

    #[test]
    fn concurrent_creators_and_updaters_lose_nothing_on_every_spin_store() {
        for mode in [CasMode::SpinUpsert, CasMode::Strict, CasMode::SpinRedis] {
            // Arrange: 30 writers race to create and update one absent document, interleaved at every store call.
            let store = MemStore::new(mode);
            let key = Key::new(&["t", "race"]);
            let tasks: Vec<_> = (0..30).map(|_| update_json(&store, &key, add(1))).collect();

            // Act
            let results = pollster::block_on(interleave::join_all(tasks));

            // Assert: every update applied exactly once; the creation counter holds one claim; tokens stay bounded.
            assert!(results.iter().all(Result::is_ok), "{mode:?}: {results:?}");
            let doc = pollster::block_on(get_json::<Doc>(&store, &key)).expect("read");
            assert_eq!(doc.map(|d| d.n), Some(30), "{mode:?}");
            let raw = store.raw("t:race").expect("written");
            let (tokens, _) = split_tokens(&raw).expect("tokens");
            assert_eq!(tokens.split(|&b| b == b',').count(), WRITE_TOKENS, "{mode:?}");
            let born = store.raw("t:race:~born").expect("claimed");
            assert_eq!(decode_counter(&key, &born).map(|n| n >> 20), Ok(store.now_unix_secs()), "{mode:?}");
        }
    }

    #[test]
    fn claim_first_creation_writes_twice_and_races_with_updaters_lose_nothing() {
        // A new document: the claim and the write, nothing read.
        let store = MemStore::new(CasMode::SpinUpsert);
        let key = Key::new(&["t", "fresh"]);
        assert_eq!(pollster::block_on(update_json_new(&store, &key, add(1))).expect("create"), 1);
        assert_eq!(store.writes(), 2);
        // An existing one: the claim is given back and the document updated.
        assert_eq!(pollster::block_on(update_json_new(&store, &key, add(1))).expect("update"), 2);
        for mode in [CasMode::SpinUpsert, CasMode::Strict, CasMode::SpinRedis] {
            // 30 writers, half claiming first, half reading first, race on one absent document.
            let store = MemStore::new(mode);
            let key = Key::new(&["t", "race"]);
            let fresh: Vec<_> = (0..15).map(|_| update_json_new(&store, &key, add(1))).collect();
            let read_first: Vec<_> = (0..15).map(|_| update_json(&store, &key, add(1))).collect();
            let (a, b) =
                pollster::block_on(interleave::join2(interleave::join_all(fresh), interleave::join_all(read_first)));
            assert!(a.iter().chain(&b).all(Result::is_ok), "{mode:?}: {a:?} {b:?}");
            let doc = pollster::block_on(get_json::<Doc>(&store, &key)).expect("read");
            assert_eq!(doc.map(|d| d.n), Some(30), "{mode:?}");
        }
    }

    #[test]
    fn an_update_whose_swap_reports_failure_after_landing_is_not_applied_twice() {
        // Spin's Redis store: every swap reports failure; the read-back finds the write token.
        let store = MemStore::new(CasMode::SpinRedis);
        let key = Key::new(&["t", "redis"]);
        for expected in 1..=5 {
            assert_eq!(pollster::block_on(update_json(&store, &key, add(1))), Ok(expected));
        }
        assert_eq!(pollster::block_on(get_json::<Doc>(&store, &key)).expect("read").map(|d| d.n), Some(5));
    }

    #[test]
    fn a_creator_that_dies_after_its_claim_is_taken_over_once_the_lease_has_passed() {
        // Arrange: the first creator's claim lands, then its process dies before the document is written.
        let store = MemStore::default();
        let key = Key::new(&["t", "orphan"]);
        store.crash_after_write(1);
        assert!(pollster::block_on(update_json(&store, &key, add(1))).is_err());
        store.heal();
        assert_eq!(store.raw("t:orphan"), None);

        // Act / Assert: within the lease a writer waits and gives up; after it, the next writer creates.
        assert_eq!(
            pollster::block_on(update_json(&store, &key, add(2))),
            Err(StoreError::Contention { key: "t:orphan".into() })
        );
        store.set_now(store.now_unix_secs() + CREATION_LEASE_SECS + 1);
        assert_eq!(pollster::block_on(update_json(&store, &key, add(3))), Ok(3));
        assert_eq!(pollster::block_on(update_json(&store, &key, add(4))), Ok(7));
    }

    #[test]
    fn a_creation_whose_write_fails_gives_its_claim_back_at_once() {
        let store = MemStore::default();
        let key = Key::new(&["t", "failed"]);
        store.fail_write(2);
        assert_eq!(pollster::block_on(update_json(&store, &key, add(1))), Err(StoreError::Injected(2)));
        assert_eq!(pollster::block_on(update_json(&store, &key, add(5))), Ok(5));
    }

    #[test]
    fn a_crash_between_any_two_writes_of_concurrent_updates_applies_each_at_most_once() {
        // Every write of a creation plus updates, in turn, is the last before a crash; the writer that crashed is
        // not retried (its outcome is unknown), everyone else's update lands exactly once.
        for n in 1..=12 {
            let store = MemStore::new(CasMode::SpinRedis);
            let key = Key::new(&["t", "crash"]);
            store.crash_after_write(n);
            let crashed = pollster::block_on(update_json(&store, &key, add(100))).is_err()
                || pollster::block_on(update_json(&store, &key, add(100))).is_err();
            store.heal();
            store.set_now(store.now_unix_secs() + CREATION_LEASE_SECS + 1);
            pollster::block_on(update_json(&store, &key, add(1))).expect("after the crash");
            let n_now = pollster::block_on(get_json::<Doc>(&store, &key)).expect("read").map_or(0, |d| d.n);
            assert!([1, 101, 201].contains(&n_now), "crash after write {n}: {n_now} (crashed: {crashed})");
        }
    }

    #[test]
    fn write_tokens_are_invisible_to_readers() {
        let store = MemStore::default();
        let key = Key::new(&["t", "tokens"]);
        pollster::block_on(update_json(&store, &key, add(1))).expect("create");
        let raw = store.raw("t:tokens").expect("written");
        assert!(raw.starts_with(b"{\"_w\":[\""), "{}", String::from_utf8_lossy(&raw));
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Strict {
            v: u32,
            n: i64,
        }
        assert_eq!(decode_doc::<Strict>(&key, Some(&raw)), Ok(Some(Strict { v: 1, n: 1 })));
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        struct Empty {}
        assert_eq!(decode_doc::<Empty>(&key, Some(b"{\"_w\":[\"ab\"]}")), Ok(Some(Empty {})));
    }

    #[test]
    fn a_naive_cas_on_absent_key_loses_updates_in_spin_mode() {
        // This is why update_json creates through an increment claim.
        let store = MemStore::new(CasMode::SpinUpsert);
        let key = Key::new(&["t", "naive"]);
        let a = store.cas(&key, None, b"a");
        let b = store.cas(&key, None, b"b");
        let (ra, rb) = pollster::block_on(interleave::join2(a, b));
        assert_eq!((ra, rb), (Ok(true), Ok(true)), "both creators believe they won");
        let strict = MemStore::new(CasMode::Strict);
        let (ra, rb) =
            pollster::block_on(interleave::join2(strict.cas(&key, None, b"a"), strict.cas(&key, None, b"b")));
        assert_eq!((ra, rb), (Ok(true), Ok(false)));
    }

    #[test]
    fn counters_read_back_what_increment_wrote() {
        let store = MemStore::default();
        let key = Key::new(&["t", "ctr"]);
        assert_eq!(pollster::block_on(read_counter(&store, &key)), Ok(0));
        assert_eq!(pollster::block_on(store.increment(&key, 7)), Ok(7));
        assert_eq!(pollster::block_on(read_counter(&store, &key)), Ok(7));
        assert_eq!(store.raw("t:ctr"), Some(7i64.to_le_bytes().to_vec()));
        assert!(pollster::block_on(claim_once(&store, &Key::new(&["t", "claim"]))).expect("claim"));
        assert!(!pollster::block_on(claim_once(&store, &Key::new(&["t", "claim"]))).expect("claim"));
    }

    #[test]
    fn an_injected_write_failure_writes_nothing() {
        let store = MemStore::default();
        let key = Key::new(&["t", "f"]);
        store.fail_write(1);
        assert_eq!(pollster::block_on(store.set(&key, b"x")), Err(StoreError::Injected(1)));
        assert_eq!(store.raw("t:f"), None);
        assert_eq!(pollster::block_on(store.set(&key, b"y")), Ok(()));
    }

    #[test]
    fn contention_is_reported_after_bounded_retries() {
        // A decide function that keeps changing the document under itself never wins.
        let store = MemStore::default();
        let key = Key::new(&["t", "busy"]);
        pollster::block_on(put_json(&store, &key, &Doc { v: 1, n: 0 })).expect("seed");
        let mut i = 0;
        let result: Result<(), StoreError> = pollster::block_on(update_json(&store, &key, |_: Option<&Doc>| {
            i += 1;
            // Simulate a concurrent writer changing the document between read and CAS.
            store.put_raw(key.as_str(), &serde_json::to_vec(&Doc { v: 1, n: i }).expect("encode"));
            Ok(Step::Write(Doc { v: 1, n: -1 }, ()))
        }));
        assert_eq!(result, Err(StoreError::Contention { key: "t:busy".into() }));
    }
}

/// Drives several futures on one thread, interleaving them at every await: how concurrent requests to one guest
/// instance behave. For tests of CAS loops and claims against [`MemStore`].
#[cfg(any(test, feature = "mem"))]
pub mod interleave {
    use std::future::Future;

    /// Polls all futures round-robin on one thread until all are done, returning outputs in order.
    pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut futures: Vec<_> = futures.into_iter().map(Box::pin).map(Some).collect();
        let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (slot, out) in futures.iter_mut().zip(outputs.iter_mut()) {
                if let Some(fut) = slot {
                    match fut.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            *out = Some(v);
                            *slot = None;
                        }
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
        })
        .await;
        outputs.into_iter().flatten().collect()
    }

    /// Polls two futures together until both are done.
    pub async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
        let mut a = Box::pin(a);
        let mut b = Box::pin(b);
        let (mut ra, mut rb) = (None, None);
        std::future::poll_fn(|cx| {
            if ra.is_none()
                && let std::task::Poll::Ready(v) = a.as_mut().poll(cx)
            {
                ra = Some(v);
            }
            if rb.is_none()
                && let std::task::Poll::Ready(v) = b.as_mut().poll(cx)
            {
                rb = Some(v);
            }
            if ra.is_some() && rb.is_some() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
        })
        .await;
        (ra.expect("a done"), rb.expect("b done"))
    }
}
