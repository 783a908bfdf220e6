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

/// How many times a CAS loop re-reads and retries before giving up with [`StoreError::Contention`].
pub const CAS_RETRIES: u32 = 64;

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

    /// This key with more parts appended.
    pub fn child(&self, parts: &[&str]) -> Key {
        let mut all = vec![self.0.as_str()];
        all.extend_from_slice(parts);
        Key::new(&all)
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
}

/// Reads and decodes a JSON document.
pub async fn get_json<T: DeserializeOwned>(store: &impl Store, key: &Key) -> Result<Option<T>, StoreError> {
    decode_doc(key, store.get(key).await?.as_deref())
}

fn decode<T: DeserializeOwned>(key: &Key, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_string(), detail: e.to_string() })
}

fn encode<T: Serialize>(key: &Key, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt { key: key.to_string(), detail: e.to_string() })
}

/// Writes a JSON document unconditionally: for write-once documents whose content is determined by their key
/// (so a repeated write writes the same thing).
pub async fn put_json<T: Serialize>(store: &impl Store, key: &Key, value: &T) -> Result<(), StoreError> {
    store.set(key, &encode(key, value)?).await
}

/// Reads a counter written by `increment` (absent = 0).
pub async fn read_counter(store: &impl Store, key: &Key) -> Result<i64, StoreError> {
    match store.get(key).await? {
        None => Ok(0),
        Some(bytes) => decode_counter(key, &bytes),
    }
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

/// Whether `bytes` is what `increment(key, 0)` leaves on an absent key: [`CREATING`] on SQLite, `"0"` on Redis.
pub fn is_creating(bytes: &[u8]) -> bool {
    bytes == CREATING || bytes == b"0"
}

/// What an [`update_json`] step decided.
pub enum Step<T, R> {
    /// Write this document and return `R`.
    Write(T, R),
    /// Leave the document as it is and return `R`.
    Keep(R),
}

/// What a document key holds while being created on SQLite: the value `increment(key, 0)` leaves on an absent key
/// (Redis leaves `"0"`; see [`is_creating`]). It is never valid JSON, so it cannot be mistaken for a document;
/// readers treat it as absent. `"0"` is valid JSON, but no document is a bare number.
pub const CREATING: [u8; 8] = [0; 8];

/// Read-modify-write of a JSON document with compare-and-swap and bounded retries; creation survives a crash at
/// any point.
///
/// `decide` sees the current document (`None` when absent) and returns a [`Step`] or a business error. It may run
/// several times, so it must be a pure function of its input.
///
/// An absent key is first turned into the 8-byte zero counter [`CREATING`] with `increment(key, 0)`, which the
/// store does atomically (it creates an absent counter, leaves an existing one alone, and fails without effect on
/// a JSON value). The document is then written with a CAS from those exact bytes, which only one writer can win.
/// Nothing is ever CAS'd against absence (Spin would upsert) and nothing is left orphaned: a creator that dies
/// after the increment leaves `CREATING`, which the next writer reads as absent and CASes from.
pub async fn update_json<T, R, E>(
    store: &impl Store,
    key: &Key,
    mut decide: impl FnMut(Option<&T>) -> Result<Step<T, R>, E>,
) -> Result<R, E>
where
    T: Serialize + DeserializeOwned,
    E: From<StoreError>,
{
    for _ in 0..CAS_RETRIES {
        let current = store.get(key).await?;
        let doc: Option<T> = decode_doc(key, current.as_deref())?;
        let (next, result) = match decide(doc.as_ref())? {
            Step::Keep(result) => return Ok(result),
            Step::Write(next, result) => (next, result),
        };
        let bytes = encode(key, &next)?;
        let expected = match current {
            Some(current) => current,
            None => match store.increment(key, 0).await {
                // SQLite's zero counter; on Redis the CAS fails against `"0"` and the next round CASes from it.
                Ok(0) => CREATING.to_vec(),
                Ok(n) => {
                    let detail = format!("counter {n} where a document belongs");
                    return Err(StoreError::Corrupt { key: key.to_string(), detail }.into());
                }
                Err(e) => {
                    // The increment fails on a JSON value: a racer created the document since our read.
                    if store.get(key).await?.is_some_and(|b| !is_creating(&b)) {
                        continue;
                    }
                    return Err(e.into());
                }
            },
        };
        if store.cas(key, Some(&expected), &bytes).await? {
            return Ok(result);
        }
    }
    Err(StoreError::Contention { key: key.to_string() }.into())
}

/// Decodes a JSON document; absent and still-being-created ([`CREATING`]) both read as `None`.
pub fn decode_doc<T: DeserializeOwned>(key: &Key, bytes: Option<&[u8]>) -> Result<Option<T>, StoreError> {
    match bytes {
        None => Ok(None),
        Some(bytes) if is_creating(bytes) => Ok(None),
        Some(bytes) => decode(key, bytes).map(Some),
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

/// Most ids one chunk of a log ([`append_to_log`]) holds.
pub const LOG_CHUNK_IDS: i64 = 64;
/// The longest suffix [`append_to_log`] appends to its base key (`:c:` and a 19-digit chunk number).
pub const LOG_KEY_OVERHEAD: usize = 22;

/// Appends `id` to the log at `base`: an append-only list that may grow without bound (a day's postings, an hour's
/// reservations), kept as chunk documents of at most [`LOG_CHUNK_IDS`] ids (`{base}:c:{n}`) numbered by an atomic
/// counter (`{base}:ctr:n`), so an append costs the same whatever the log's length, where one growing index
/// document ([`add_to_index`]) costs a read and a rewrite of everything before it.
///
/// A retried append may list `id` twice (a crash between taking a slot and filling it only leaves a chunk short);
/// [`read_logs`] returns each id once.
pub async fn append_to_log(store: &impl Store, base: &Key, id: &str) -> Result<(), StoreError> {
    let slot = store.increment(&log_counter_key(base), 1).await?;
    let chunk = (slot - 1).max(0) / LOG_CHUNK_IDS;
    add_to_index(store, &log_chunk_key(base, chunk), id).await?;
    Ok(())
}

/// The ids of each log at `bases` ([`append_to_log`]), each id once, in order of appending: two batch reads (the
/// counters, then every chunk).
pub async fn read_logs(store: &impl Store, bases: &[Key]) -> Result<Vec<Vec<String>>, StoreError> {
    let counter_keys: Vec<Key> = bases.iter().map(log_counter_key).collect();
    let mut chunk_keys = Vec::new();
    let mut chunks_per_log = Vec::with_capacity(bases.len());
    for ((base, key), raw) in bases.iter().zip(&counter_keys).zip(get_all(store, &counter_keys).await?) {
        let appended = match raw {
            Some(bytes) => decode_counter(key, &bytes)?,
            None => 0,
        };
        let chunks = (appended.max(0) + LOG_CHUNK_IDS - 1) / LOG_CHUNK_IDS;
        chunks_per_log.push(usize::try_from(chunks).unwrap_or(0));
        chunk_keys.extend((0..chunks).map(|n| log_chunk_key(base, n)));
    }
    let mut raws = chunk_keys.iter().zip(get_all(store, &chunk_keys).await?);
    let mut logs = Vec::with_capacity(bases.len());
    for chunks in chunks_per_log {
        let mut seen = std::collections::HashSet::new();
        let mut ids = Vec::new();
        for (key, raw) in raws.by_ref().take(chunks) {
            for id in decode_doc::<Index>(key, raw.as_deref())?.map(|i| i.ids).unwrap_or_default() {
                if seen.insert(id.clone()) {
                    ids.push(id);
                }
            }
        }
        logs.push(ids);
    }
    Ok(logs)
}

fn log_counter_key(base: &Key) -> Key {
    base.child(&["ctr", "n"])
}

fn log_chunk_key(base: &Key, chunk: i64) -> Key {
    base.child(&["c", &chunk.to_string()])
}

/// Adds `delta` to `counter` once per `claim` (e.g. per order): at most once, even when retried.
pub async fn count_once(store: &impl Store, claim: &Key, counter: &Key, delta: i64) -> Result<(), StoreError> {
    if claim_once(store, claim).await? {
        store.increment(counter, delta).await?;
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

    /// How `cas` with `expected == None` behaves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CasMode {
        /// Spin's SQLite store: check absence, yield, then upsert unconditionally (so a racer can be overwritten).
        SpinUpsert,
        /// Create only if still absent (Redis WATCH/MULTI).
        Strict,
    }

    /// An in-memory store for tests. Every operation yields once first, as a host call would, so futures polled
    /// together interleave between operations.
    pub struct MemStore {
        data: RefCell<BTreeMap<String, Vec<u8>>>,
        mode: CasMode,
        writes: Cell<u64>,
        fail_write: Cell<Option<u64>>,
    }

    impl Default for MemStore {
        fn default() -> Self {
            Self::new(CasMode::SpinUpsert)
        }
    }

    impl MemStore {
        /// An empty store.
        pub fn new(mode: CasMode) -> Self {
            Self { data: RefCell::default(), mode, writes: Cell::new(0), fail_write: Cell::new(None) }
        }

        /// Makes the `n`th write from now on (1-based) fail without effect.
        pub fn fail_write(&self, n: u64) {
            self.fail_write.set(Some(self.writes.get() + n));
        }

        /// Cancels a failure set with [`MemStore::fail_write`] that has not happened yet.
        pub fn heal(&self) {
            self.fail_write.set(None);
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

        fn write(&self) -> Result<(), StoreError> {
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
                Some(bytes) => super::decode_counter(key, bytes)?,
            };
            let next = current.checked_add(delta).ok_or_else(|| StoreError::Backend("counter overflow".into()))?;
            data.insert(key.as_str().to_owned(), next.to_le_bytes().to_vec());
            Ok(next)
        }

        async fn cas(&self, key: &Key, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError> {
            yield_now().await;
            self.write()?;
            match expected {
                Some(expected) => {
                    let mut data = self.data.borrow_mut();
                    if data.get(key.as_str()).map(Vec::as_slice) == Some(expected) {
                        data.insert(key.as_str().to_owned(), new.to_vec());
                        Ok(true)
                    } else {
                        Ok(false)
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
                    Ok(true)
                }
            }
        }

        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
            yield_now().await;
            let data = self.data.borrow();
            Ok(keys.iter().map(|k| data.get(k.as_str()).cloned()).collect())
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
    fn a_log_keeps_every_id_once_in_order_in_bounded_chunks() {
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
        for chunk in 0..3 {
            let raw = store.raw(&format!("t:log:a:c:{chunk}")).expect("chunk written");
            let index: Index = serde_json::from_slice(&raw).expect("index");
            assert!(index.ids.len() <= LOG_CHUNK_IDS as usize, "chunk {chunk} holds {}", index.ids.len());
        }
        assert_eq!(store.raw("t:log:a:c:3"), None, "151 appends fill three chunks");
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
