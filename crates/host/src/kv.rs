//! Key-value backends behind `spin:key-value` and `wasi:keyvalue`.
//!
//! Every operation a guest can ask for is one [`Op`]; a backend executes ops atomically, one at a time as far as
//! any observer can tell. Semantics follow Spin's SQLite store (`crates/key-value-spin/src/store.rs`):
//! - `increment` treats an absent key as 0 and stores the result as 8 little-endian bytes;
//! - `swap` compares against the value the CAS handle read (`current`); when it read nothing (absent key, or
//!   `current` never called) Spin performs an unconditional upsert. [`CasMode::Strict`] instead only creates an
//!   absent key (what Redis's WATCH/MULTI gives); the SQLite backend always behaves like Spin.
//!
//! What Spin's stores do not survive, or answer wrongly, is mirrored for guests ([`Kv::exec_guest`], on by default,
//! off with [`Kv::with_spin_quirks`]) so that no component comes to rely on it:
//! - `increment` on a value that is not a counter is [`Fatal`] on every backend: Spin's SQLite store panics there
//!   (`i64::from_le_bytes(v.try_into().expect("incorrect length"))`) and poisons its connection mutex. A counter is
//!   any 8-byte value on SQLite and in memory (exactly what Spin accepts), a decimal integer `INCRBY` accepts on
//!   Redis.
//! - On Redis, as Spin's Redis store (`crates/key-value-redis/src/store.rs`) answers: `swap` always reports a failed
//!   CAS (Spin sends `UNWATCH <key>`, which Redis refuses, after its conditional write), and `get-many` sends
//!   `KEYS <k1> <k2> ...`.
//!
//! [`Kv::exec`], for the host itself and tests, has none of these: it reports what the store did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context as _, Result};
use futures::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

/// One key-value operation, addressed to a store label (`default`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Get {
        key: String,
    },
    Exists {
        key: String,
    },
    Keys,
    GetMany {
        keys: Vec<String>,
    },
    Set {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    SetMany {
        entries: Vec<(String, Vec<u8>)>,
    },
    DeleteMany {
        keys: Vec<String>,
    },
    Increment {
        key: String,
        delta: i64,
    },
    /// Compare-and-swap: write `value` if the stored value still equals `expected`.
    Swap {
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    },
}

impl Op {
    /// How many keys the op reads or writes (a batch counts each of its keys; `Keys` counts one).
    pub fn key_count(&self) -> u64 {
        match self {
            Op::GetMany { keys } | Op::DeleteMany { keys } => keys.len() as u64,
            Op::SetMany { entries } => entries.len() as u64,
            _ => 1,
        }
    }

    /// `kind key` (a batch: `kind [n] first-key …`), for traces.
    pub fn describe(&self) -> String {
        fn batch<'a>(kind: &str, mut keys: impl ExactSizeIterator<Item = &'a String>) -> String {
            let n = keys.len();
            let first = keys.next().map(String::as_str).unwrap_or("");
            if n > 1 { format!("{kind} [{n}] {first} …") } else { format!("{kind} {first}") }
        }
        match self {
            Op::Get { key } => format!("get {key}"),
            Op::Exists { key } => format!("exists {key}"),
            Op::Keys => "keys".to_owned(),
            Op::GetMany { keys } => batch("get-many", keys.iter()),
            Op::Set { key, .. } => format!("set {key}"),
            Op::Delete { key } => format!("delete {key}"),
            Op::SetMany { entries } => batch("set-many", entries.iter().map(|(k, _)| k)),
            Op::DeleteMany { keys } => batch("delete-many", keys.iter()),
            Op::Increment { key, delta } => format!("increment {key} {delta:+}"),
            Op::Swap { key, .. } => format!("swap {key}"),
        }
    }

    /// Whether the op changes the store (and so goes into a write batch).
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. } | Op::Exists { .. } | Op::Keys | Op::GetMany { .. })
    }
}

/// The result of an [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Value(Option<Vec<u8>>),
    Bool(bool),
    Keys(Vec<String>),
    Values(Vec<(String, Option<Vec<u8>>)>),
    Done,
    Counter(i64),
    /// `Swap` outcome: `true` when written, `false` when the value had changed.
    Swapped(bool),
}

/// Why an [`Op`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// An ordinary store error: the guest is told (`error::other`).
    Store(String),
    /// Something Spin's store does not survive: with Spin's behaviour mirrored the guest's instance traps,
    /// otherwise it is an ordinary store error.
    Fatal(Fatal),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Store(msg) => f.write_str(msg),
            KvError::Fatal(fatal) => fatal.fmt(f),
        }
    }
}

/// A guest call that Spin answers with a panic (and the instance, or the whole app's store, with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fatal {
    /// `increment` on a key whose value is not a counter (`len` bytes); the value is left as it was.
    NotACounter { key: String, len: usize },
    /// Spin's Redis `get-many` sent `KEYS <pattern>`, which matched an odd number of keys (one existing key without
    /// glob characters): its redis client panics pairing them up ("entered unreachable code").
    RedisKeysOdd { pattern: String, matched: usize },
}

impl Fatal {
    /// The host's log line for a guest of component `component` that ran into this.
    pub fn log_line(&self, component: &str) -> String {
        match self {
            Fatal::NotACounter { key, len } => format!(
                "scenefin-host: component {component} incremented key {key} holding a non-counter value ({len} bytes); \
                 Spin's SQLite store would panic here (\"incorrect length\") and poison itself: every later key-value \
                 call of the app would fail until restart"
            ),
            Fatal::RedisKeysOdd { pattern, matched } => format!(
                "scenefin-host: component {component} called get-many with the one key {pattern}, which matches \
                 {matched} key(s); Spin's Redis store sends KEYS {pattern} here and panics in its redis client \
                 (\"entered unreachable code\"): the request would fail"
            ),
        }
    }
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fatal::NotACounter { key, len } => {
                write!(f, "increment of key {key:?}: value is not a counter ({len} bytes)")
            }
            Fatal::RedisKeysOdd { pattern, matched } => write!(
                f,
                "get-many of key {pattern:?}: Spin's Redis store sends KEYS {pattern}, which matches {matched} key(s), \
                 and panics"
            ),
        }
    }
}

/// What a guest's op came to: `Ok` is what the guest sees (the op's output or a store error), `Err` a trap.
pub type GuestResult = Result<Result<Output, String>, Fatal>;

/// How `swap` treats a CAS handle that read no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasMode {
    /// Spin's SQLite behaviour: unconditional upsert.
    SpinUpsert,
    /// Create only if still absent.
    Strict,
}

/// A key-value backend shared by every component instance of the host.
pub trait Backend: Send + Sync + 'static {
    /// Runs one op against the store `store`, reporting what the store did.
    fn exec(&self, store: &str, op: Op) -> BoxFuture<'static, Result<Output, KvError>>;
    /// Runs one op for a guest as Spin's store of this kind answers it, where that differs from what the store did
    /// (Spin's Redis store: see [`RedisBackend`]). By default the same as [`Backend::exec`].
    fn exec_as_spin(&self, store: &str, op: Op) -> BoxFuture<'static, Result<Output, KvError>> {
        self.exec(store, op)
    }
    /// A short human description for the start-up banner.
    fn describe(&self) -> String;
    /// Resolves once every write committed before the call is durable. The server awaits it before a response
    /// leaves, so an acknowledged write is never lost; backends that make each write durable as it commits have
    /// nothing to wait for.
    fn barrier(&self) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// A cheap, clonable handle to the configured backend, counting operations.
#[derive(Clone)]
pub struct Kv {
    backend: Arc<dyn Backend>,
    ops: Arc<AtomicU64>,
    keys: Arc<AtomicU64>,
    trace: Arc<Mutex<Option<Vec<String>>>>,
    spin_quirks: bool,
}

impl Kv {
    /// A handle that answers guests as Spin does ([`Kv::exec_guest`]).
    pub fn new(backend: impl Backend) -> Self {
        Self {
            backend: Arc::new(backend),
            ops: Arc::default(),
            keys: Arc::default(),
            trace: Arc::default(),
            spin_quirks: true,
        }
    }

    /// With `on` false, guests get what the store did instead of Spin's answer: an `increment` on a non-counter is
    /// an ordinary store error, Redis `swap` reports its true outcome, Redis `get-many` uses `MGET`.
    pub fn with_spin_quirks(mut self, on: bool) -> Self {
        self.spin_quirks = on;
        self
    }

    /// Whether guests get Spin's answers (see [`Kv::with_spin_quirks`]).
    pub fn spin_quirks(&self) -> bool {
        self.spin_quirks
    }

    /// Runs `op` for the host or a test: what the store did, failures as messages.
    pub async fn exec(&self, store: &str, op: Op) -> Result<Output, String> {
        self.count(&op);
        self.backend.exec(store, op).await.map_err(|e| e.to_string())
    }

    /// Runs `op` for a guest: as Spin's store answers it, or, with Spin's behaviour off, what the store did. `Err`
    /// is a call Spin does not survive; the caller traps the instance.
    pub async fn exec_guest(&self, store: &str, op: Op) -> GuestResult {
        self.count(&op);
        let result =
            if self.spin_quirks { self.backend.exec_as_spin(store, op) } else { self.backend.exec(store, op) }.await;
        match result {
            Ok(output) => Ok(Ok(output)),
            Err(KvError::Store(msg)) => Ok(Err(msg)),
            Err(KvError::Fatal(fatal)) if self.spin_quirks => Err(fatal),
            Err(KvError::Fatal(fatal)) => Ok(Err(fatal.to_string())),
        }
    }

    fn count(&self, op: &Op) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.keys.fetch_add(op.key_count(), Ordering::Relaxed);
        if let Some(trace) = self.trace.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            trace.push(op.describe());
        }
    }

    /// Number of calls executed since start (a batch is one call: one round trip to the store).
    pub fn op_count(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Number of keys read or written since start (a batch counts each of its keys).
    pub fn key_count(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }

    /// Starts recording every call ([`Op::describe`]) until [`Kv::take_trace`]; for profiling a route in tests.
    pub fn start_trace(&self) {
        *self.trace.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// The calls recorded since [`Kv::start_trace`], ending the recording.
    pub fn take_trace(&self) -> Vec<String> {
        self.trace.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default()
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Waits until every write committed so far is durable (see [`Backend::barrier`]).
    pub async fn barrier(&self) -> Result<(), String> {
        self.backend.barrier().await
    }

    /// Convenience for hosts and tests: read one key.
    pub async fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.exec(store, Op::Get { key: key.to_owned() }).await? {
            Output::Value(v) => Ok(v),
            other => Err(format!("unexpected output {other:?}")),
        }
    }

    /// Convenience for hosts and tests: write one key.
    pub async fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.exec(store, Op::Set { key: key.to_owned(), value: value.to_vec() }).await.map(drop)
    }
}

/// A stored counter as Spin's SQLite store reads it: absent is 0, any 8 bytes are a little-endian `i64`, anything
/// else is not a counter (Spin panics there).
fn decode_counter(key: &str, value: Option<&[u8]>) -> Result<i64, KvError> {
    match value {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes)
            .map(i64::from_le_bytes)
            .map_err(|_| KvError::Fatal(Fatal::NotACounter { key: key.to_owned(), len: bytes.len() })),
    }
}

fn add_counter(current: i64, delta: i64) -> Result<i64, KvError> {
    current.checked_add(delta).ok_or_else(|| KvError::Store("counter overflow".to_owned()))
}

// ---------------------------------------------------------------------------------------------------------------
// In memory

/// An in-memory store: for tests and throw-away runs.
pub struct MemoryBackend {
    data: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    cas_mode: CasMode,
}

impl MemoryBackend {
    pub fn new(cas_mode: CasMode) -> Self {
        Self { data: Mutex::default(), cas_mode }
    }

    fn apply(&self, store: &str, op: Op) -> Result<Output, KvError> {
        let mut data = self.data.lock().map_err(|_| KvError::Store("store poisoned".to_owned()))?;
        let k = |key: &str| (store.to_owned(), key.to_owned());
        Ok(match op {
            Op::Get { key } => Output::Value(data.get(&k(&key)).cloned()),
            Op::Exists { key } => Output::Bool(data.contains_key(&k(&key))),
            Op::Keys => Output::Keys(data.keys().filter(|(s, _)| s == store).map(|(_, key)| key.clone()).collect()),
            Op::GetMany { keys } => Output::Values(
                keys.into_iter().filter_map(|key| data.get(&k(&key)).cloned().map(|v| (key, Some(v)))).collect(),
            ),
            Op::Set { key, value } => {
                data.insert(k(&key), value);
                Output::Done
            }
            Op::Delete { key } => {
                data.remove(&k(&key));
                Output::Done
            }
            Op::SetMany { entries } => {
                for (key, value) in entries {
                    data.insert(k(&key), value);
                }
                Output::Done
            }
            Op::DeleteMany { keys } => {
                for key in keys {
                    data.remove(&k(&key));
                }
                Output::Done
            }
            Op::Increment { key, delta } => {
                let next = add_counter(decode_counter(&key, data.get(&k(&key)).map(Vec::as_slice))?, delta)?;
                data.insert(k(&key), next.to_le_bytes().to_vec());
                Output::Counter(next)
            }
            Op::Swap { key, expected, value } => {
                let current = data.get(&k(&key));
                let ok = match (&expected, current) {
                    (Some(expected), Some(current)) => expected == current,
                    (Some(_), None) => false,
                    (None, None) => true,
                    (None, Some(_)) => self.cas_mode == CasMode::SpinUpsert,
                };
                if ok {
                    data.insert(k(&key), value);
                }
                Output::Swapped(ok)
            }
        })
    }
}

impl Backend for MemoryBackend {
    fn exec(&self, store: &str, op: Op) -> BoxFuture<'static, Result<Output, KvError>> {
        let result = self.apply(store, op);
        Box::pin(async move { result })
    }

    fn describe(&self) -> String {
        format!("in-memory ({:?} CAS)", self.cas_mode)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// SQLite

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS spin_key_value (
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,

    PRIMARY KEY (store, key)
)";
const SELECT: &str = "SELECT value FROM spin_key_value WHERE store=$1 AND key=$2";
const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES ($1, $2, $3)
    ON CONFLICT(store, key) DO UPDATE SET value=$3";
const DELETE: &str = "DELETE FROM spin_key_value WHERE store=$1 AND key=$2";
// `?N` parameters are positional; `$N` ones would be numbered in order of appearance.
const UPDATE_IF: &str = "UPDATE spin_key_value SET value=?4 WHERE store=?1 AND key=?2 AND value=?3";

/// Most writes one transaction may carry.
const GROUP_COMMIT_MAX: usize = 512;
/// WAL size past which the checkpointer copies the log back into the database file.
const CHECKPOINT_WAL_BYTES: u64 = 8 << 20;
/// How often the checkpointer looks at the WAL's size.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// How long a barrier waits for the sync before the request is failed (its writes may then be lost, like a crash).
const BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type WriteJob = (String, Op, oneshot::Sender<Result<Output, KvError>>);

/// SQLite in Spin's table layout (`spin_key_value(store, key, value)`), so one data file serves both runtimes.
///
/// Durability: every write is acknowledged only once it is committed *and* synced, but the sync is taken off the
/// write's own path (see [`Backend::barrier`]):
/// - Writes are queued and committed in batches, one transaction per batch (group commit), in WAL mode with
///   `synchronous=NORMAL`: a commit appends to the WAL without waiting for the disk, and is at once visible to
///   readers. The op's result goes straight back to the guest, so a request with ten writes no longer waits for
///   ten syncs, and a synchronous `wasi:keyvalue` call holds its instance for microseconds, not a disk flush.
/// - Whoever finds the connection free commits the whole queue, its own write and everyone else's, on its own
///   thread (flat combining): no hop to a writer thread and back for each write, and writes that arrive together
///   still share a transaction. Whoever releases the connection looks at the queue again, so no write waits for
///   a committer that is not coming.
/// - Before any response leaves the host, the server waits until everything committed so far is synced: it asks a
///   syncer thread, which `fdatasync`s the WAL (covering every commit up to then) and publishes how far the disk
///   has caught up. A crash before that loses only writes nobody was told about. Requests finishing while a sync
///   runs share the next one.
/// - The WAL is append-only, so what survives a power cut is always a prefix of the commits: the writes a
///   response depended on (its own and any it read) are synced with it.
/// - A checkpointer thread copies the WAL back into the database file when it passes 8 MiB (SQLite syncs the WAL
///   before and the database after), so writers never stop for a checkpoint.
///
/// Point reads run on the calling thread against the same connection when it is free: a read from its
/// always-warm page cache takes microseconds. (A separate read connection drops its whole page cache whenever
/// anyone writes, so under a write load its every read fetches the b-tree again.) When the connection is busy, a
/// pooled read-only connection serves the read instead of waiting; listing the whole store always uses one, on
/// tokio's blocking pool.
pub struct SqliteBackend {
    path: PathBuf,
    /// The one read-write connection: write batches and, when free, point reads.
    main: Mutex<Connection>,
    /// Writes waiting for a committer.
    queue: Mutex<Vec<WriteJob>>,
    /// Read-only connections, for reads while `main` is busy and for listing the whole store.
    readers: Arc<Mutex<Vec<Connection>>>,
    durable: Arc<Durable>,
    /// Asks the syncer for a sync; dropped with the backend, which stops the syncer.
    wake_syncer: Mutex<mpsc::Sender<()>>,
    /// Dropped with the backend, which stops the checkpointer.
    _stop_checkpointer: mpsc::Sender<()>,
}

/// Commit and sync progress: write batch `n` is committed once `committed >= n` and durable once `synced >= n`.
struct Durable {
    committed: AtomicU64,
    synced: tokio::sync::watch::Sender<u64>,
}

impl SqliteBackend {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The syncer makes commits durable before they are acknowledged; see the type's documentation.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.execute(CREATE_TABLE, [])?;
        let wal = wal_path(path);
        // Whatever an earlier process left unsynced is made durable before anything is served from it.
        sync_file(&wal).with_context(|| format!("syncing {}", wal.display()))?;

        let durable = Arc::new(Durable { committed: AtomicU64::new(0), synced: tokio::sync::watch::Sender::new(0) });
        let (wake, wake_rx) = mpsc::channel();
        let for_syncer = durable.clone();
        let syncer_wal = wal.clone();
        std::thread::Builder::new()
            .name("kv-sqlite-syncer".into())
            .spawn(move || syncer_loop(&syncer_wal, &for_syncer, &wake_rx))?;
        let checkpointer = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        checkpointer.pragma_update(None, "synchronous", "NORMAL")?;
        let (stop, stop_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("kv-sqlite-checkpointer".into())
            .spawn(move || checkpointer_loop(&checkpointer, &wal, &stop_rx))?;
        Ok(Self {
            path: path.to_owned(),
            main: Mutex::new(conn),
            queue: Mutex::default(),
            readers: Arc::default(),
            durable,
            wake_syncer: Mutex::new(wake),
            _stop_checkpointer: stop,
        })
    }

    /// The main connection if nobody holds it. A panic while it was held (none is expected: SQLite reports
    /// errors) leaves it usable: every batch is one transaction, and the next batch rolls back one left open, so
    /// there is no half-written state to protect, and refusing it would strand every queued write.
    fn try_main(&self) -> Option<std::sync::MutexGuard<'_, Connection>> {
        match self.main.try_lock() {
            Ok(conn) => Some(conn),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Commits queued writes while the connection is free and the queue is not empty (see the type's
    /// documentation). Called after queueing a write and after every release of the connection.
    fn combine(&self) {
        loop {
            if self.queue.lock().map_or(true, |q| q.is_empty()) {
                return;
            }
            // Busy: its holder looks at the queue when it lets go.
            let Some(conn) = self.try_main() else { return };
            let batch: Vec<WriteJob> = match self.queue.lock() {
                Ok(mut queue) => {
                    let n = queue.len().min(GROUP_COMMIT_MAX);
                    queue.drain(..n).collect()
                }
                Err(_) => return,
            };
            // Another combiner may have taken the queue between the look and the lock: nothing to commit, look again.
            if !batch.is_empty() {
                commit_batch(&conn, batch, &self.durable);
            }
            drop(conn);
        }
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// `fdatasync` of a file (a missing file has nothing to sync). On Linux this flushes the file's pages whichever
/// descriptor wrote them, here SQLite's own.
fn sync_file(path: &Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(file) => file.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn syncer_loop(wal: &Path, durable: &Durable, wake: &mpsc::Receiver<()>) {
    // One descriptor for the life of the store: SQLite keeps the WAL file (it rewinds it, never replaces it) while
    // any connection is open, and the main connection always is.
    let mut file: Option<std::fs::File> = None;
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        let target = durable.committed.load(Ordering::Acquire);
        if target <= *durable.synced.borrow() {
            continue;
        }
        let synced = match &file {
            Some(f) => f.sync_data(),
            None => std::fs::File::open(wal).and_then(|f| {
                let r = f.sync_data();
                file = Some(f);
                r
            }),
        };
        match synced {
            Ok(()) => {
                durable.synced.send_replace(target);
            }
            Err(e) => {
                // Nothing is acknowledged meanwhile; the next request for a sync tries again with a fresh
                // descriptor (a waiting barrier times out and its request fails as if the host had crashed).
                eprintln!("kv: syncing {} failed: {e}", wal.display());
                file = None;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn checkpointer_loop(conn: &Connection, wal: &Path, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        if size > CHECKPOINT_WAL_BYTES
            && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            eprintln!("kv: checkpoint failed: {e}");
        }
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn read(conn: &Connection, store: &str, op: Op) -> rusqlite::Result<Output> {
    Ok(match op {
        Op::Get { key } => {
            Output::Value(conn.prepare_cached(SELECT)?.query_row(params![store, key], |r| r.get(0)).optional()?)
        }
        Op::Exists { key } => Output::Bool(conn.prepare_cached(SELECT)?.exists(params![store, key])?),
        Op::Keys => Output::Keys(
            conn.prepare_cached("SELECT key FROM spin_key_value WHERE store=$1")?
                .query_map(params![store], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
        ),
        Op::GetMany { keys } => {
            // One snapshot for the whole batch, so the values are mutually consistent.
            let mut stmt = conn.prepare_cached(SELECT)?;
            let mut found = Vec::with_capacity(keys.len());
            conn.execute_batch("BEGIN")?;
            let result = keys.into_iter().try_for_each(|key| {
                if let Some(v) = stmt.query_row(params![store, key], |r| r.get::<_, Vec<u8>>(0)).optional()? {
                    found.push((key, Some(v)));
                }
                Ok::<_, rusqlite::Error>(())
            });
            conn.execute_batch("COMMIT")?;
            result?;
            Output::Values(found)
        }
        write => unreachable!("write op {write:?} sent to a reader"),
    })
}

/// Applies one write inside the batch's open transaction. `Ok(Err(e))` is the op's own failure (nothing
/// written); `Err(e)` is an SQLite failure that aborts the batch.
fn write(conn: &Connection, store: &str, op: Op) -> Result<Result<Output, KvError>, rusqlite::Error> {
    Ok(Ok(match op {
        Op::Set { key, value } => {
            conn.prepare_cached(UPSERT)?.execute(params![store, key, value])?;
            Output::Done
        }
        Op::Delete { key } => {
            conn.prepare_cached(DELETE)?.execute(params![store, key])?;
            Output::Done
        }
        Op::SetMany { entries } => {
            let mut stmt = conn.prepare_cached(UPSERT)?;
            for (key, value) in entries {
                stmt.execute(params![store, key, value])?;
            }
            Output::Done
        }
        Op::DeleteMany { keys } => {
            let mut stmt = conn.prepare_cached(DELETE)?;
            for key in keys {
                stmt.execute(params![store, key])?;
            }
            Output::Done
        }
        Op::Increment { key, delta } => {
            let current: Option<Vec<u8>> =
                conn.prepare_cached(SELECT)?.query_row(params![store, key], |r| r.get(0)).optional()?;
            let next = match decode_counter(&key, current.as_deref()).and_then(|c| add_counter(c, delta)) {
                Ok(next) => next,
                Err(e) => return Ok(Err(e)),
            };
            conn.prepare_cached(UPSERT)?.execute(params![store, key, next.to_le_bytes()])?;
            Output::Counter(next)
        }
        Op::Swap { key, expected, value } => {
            let changed = match expected {
                Some(expected) => conn.prepare_cached(UPDATE_IF)?.execute(params![store, key, expected, value])?,
                // Spin's SQLite store: a CAS that read nothing upserts unconditionally.
                None => conn.prepare_cached(UPSERT)?.execute(params![store, key, value])?,
            };
            Output::Swapped(changed == 1)
        }
        read_op => unreachable!("read op {read_op:?} queued as a write"),
    }))
}

/// Commits one batch of queued writes as one transaction and answers each. `committed` is published before the
/// answers, so a barrier taken after any of these writes returned covers them.
fn commit_batch(conn: &Connection, batch: Vec<WriteJob>, durable: &Durable) {
    let outcome = (|| -> rusqlite::Result<Vec<Result<Output, KvError>>> {
        if !conn.is_autocommit() {
            // A batch that panicked half-way (see `try_main`) left its transaction open: it never committed.
            conn.execute_batch("ROLLBACK")?;
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut results = Vec::with_capacity(batch.len());
        for (store, op, _) in &batch {
            match write(conn, store, op.clone()) {
                Ok(r) => results.push(r),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
        }
        if let Err(e) = conn.execute_batch("COMMIT") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok(results)
    })();
    match outcome {
        Ok(results) => {
            // Batches commit one at a time (under the connection's lock), so this only ever grows.
            durable.committed.fetch_add(1, Ordering::AcqRel);
            for ((_, _, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            eprintln!("kv: sqlite write batch failed: {e}");
            for (_, _, reply) in batch {
                let _ = reply.send(Err(KvError::Store(format!("storage error: {e}"))));
            }
        }
    }
}

/// One read on a pooled reader connection (opened on first use, returned to the pool after).
fn read_pooled(readers: &Mutex<Vec<Connection>>, path: &Path, store: &str, op: Op) -> Result<Output, KvError> {
    let pooled = readers.lock().ok().and_then(|mut r| r.pop());
    let conn = match pooled {
        Some(c) => c,
        None => open_reader(path).map_err(storage_error)?,
    };
    let result = read(&conn, store, op).map_err(storage_error);
    if let Ok(mut r) = readers.lock() {
        r.push(conn);
    }
    result
}

fn storage_error(e: impl std::fmt::Display) -> KvError {
    KvError::Store(format!("storage error: {e}"))
}

impl Backend for SqliteBackend {
    fn exec(&self, store: &str, op: Op) -> BoxFuture<'static, Result<Output, KvError>> {
        let store = store.to_owned();
        if op.is_write() {
            let (tx, rx) = oneshot::channel();
            let queued = self.queue.lock().map(|mut q| q.push((store, op, tx))).is_ok();
            self.combine();
            return Box::pin(async move {
                if !queued {
                    return Err(KvError::Store("storage queue poisoned".to_owned()));
                }
                rx.await.map_err(|_| KvError::Store("storage write abandoned".to_owned()))?
            });
        }
        if op != Op::Keys {
            // Point reads and bounded batches: here and now on the main connection, which is cheaper than a hop to
            // another thread, and whose page cache stays warm (a reader connection's is dropped after every write by
            // anyone, so each of its reads would fetch the b-tree's pages again).
            let result = match self.try_main() {
                Some(conn) => {
                    let result = read(&conn, &store, op).map_err(storage_error);
                    drop(conn);
                    // Writes queued while this read held the connection are committed now.
                    self.combine();
                    result
                }
                // Busy (a batch being written, or another read): a pooled read connection rather than a wait.
                None => read_pooled(&self.readers, &self.path, &store, op),
            };
            return Box::pin(async move { result });
        }
        let readers = self.readers.clone();
        let path = self.path.clone();
        Box::pin(async move {
            let (pool, at, label, again) = (readers.clone(), path.clone(), store.clone(), op.clone());
            match tokio::task::spawn_blocking(move || read_pooled(&pool, &at, &label, op)).await {
                Ok(result) => result,
                // The blocking pool dropped the task before it ran (tokio reports this while a runtime winds down,
                // seen under heavy parallel tests): the listing is then done here rather than failing the request.
                Err(e) if e.is_cancelled() => read_pooled(&readers, &path, &store, again),
                Err(e) => Err(KvError::Store(format!("storage task failed: {e}"))),
            }
        })
    }

    fn describe(&self) -> String {
        format!("SQLite at {}", self.path.display())
    }

    fn barrier(&self) -> BoxFuture<'static, Result<(), String>> {
        let target = self.durable.committed.load(Ordering::Acquire);
        let mut synced = self.durable.synced.subscribe();
        // Syncs happen on demand: a request with twenty writes asks for one, and requests finishing together
        // share it.
        if *synced.borrow() < target
            && let Ok(wake) = self.wake_syncer.lock()
        {
            let _ = wake.send(());
        }
        Box::pin(async move {
            match tokio::time::timeout(BARRIER_TIMEOUT, synced.wait_for(|s| *s >= target)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err("storage syncer stopped".to_owned()),
                Err(_) => Err("storage sync timed out".to_owned()),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Redis

/// Compare-and-swap in one server-side step. `ARGV[1]` is `1` when the guest read a value (`ARGV[2]`): write only if
/// the key still holds exactly it. Otherwise the guest read nothing: create only if the key is still absent, which
/// is what Spin's Redis store gets from `WATCH` + `MULTI`/`EXEC` on an absent key.
const CAS_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"#;

/// Redis, as Spin's Redis key-value store uses it (`crates/key-value-redis`): one Redis database per store label,
/// keys stored as they are, `GET`/`SET`/`DEL`/`EXISTS`/`KEYS *`/`MGET`/`MSET`, counters with `INCRBY` (decimal
/// strings, so a counter is readable by both runtimes; `INCRBY` on a non-integer value fails without effect).
/// Compare-and-swap is a Lua script, atomic on the server, so any number of host processes can share the store.
///
/// For guests ([`Backend::exec_as_spin`]) it answers as Spin's Redis store does:
/// - `swap` always reports a failed CAS. Spin's store writes with `MULTI`/`EXEC` under the `WATCH` its `current`
///   set (conditional, as the Lua script here is), then sends `UNWATCH <key>`, which Redis refuses
///   (`UNWATCH` takes no argument), and reports that refusal as `cas-failed`, whether or not the write landed.
/// - `get-many` sends `KEYS <k1> <k2> ...` instead of `MGET`: with two or more keys Redis refuses the arity (a
///   store error); with one key the reply is the keys matching it as a glob pattern, which Spin's redis client
///   pairs up as `(key, value)`: none is an empty list, an odd number (one existing key) panics in the client
///   ([`Fatal::RedisKeysOdd`]), an even number pairs key names with key names. No keys: an empty list (Spin's
///   host answers that without asking the store).
///
/// Durability is Redis's: configure `appendonly yes` with `appendfsync always` for acknowledged writes to survive
/// a Redis crash (see deploy/README.md).
pub struct RedisBackend {
    url: String,
    conn: redis::aio::ConnectionManager,
    cas: Arc<redis::Script>,
}

impl RedisBackend {
    /// Connects (one multiplexed connection, re-established automatically when it drops).
    pub async fn connect(url: &str) -> Result<Self> {
        let shown = redact(url);
        let client = redis::Client::open(url).with_context(|| format!("redis url {shown}"))?;
        let conn = tokio::time::timeout(std::time::Duration::from_secs(10), client.get_connection_manager())
            .await
            .with_context(|| format!("connecting to {shown}: timed out"))?
            .with_context(|| format!("connecting to {shown}"))?;
        Ok(Self { url: shown, conn, cas: Arc::new(redis::Script::new(CAS_SCRIPT)) })
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl From<redis::RedisError> for KvError {
    fn from(e: redis::RedisError) -> Self {
        storage_error(e)
    }
}

/// Whether `INCRBY` refused the stored value (not a decimal `i64`), as opposed to an overflow or a lost connection.
fn is_not_an_integer(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::ResponseError && e.detail().is_some_and(|d| d.contains("not an integer"))
}

async fn redis_exec(
    mut conn: redis::aio::ConnectionManager,
    cas: Arc<redis::Script>,
    op: Op,
) -> Result<Output, KvError> {
    use redis::AsyncCommands as _;
    Ok(match op {
        Op::Get { key } => Output::Value(conn.get(key).await?),
        Op::Exists { key } => Output::Bool(conn.exists(key).await?),
        Op::Keys => Output::Keys(conn.keys("*").await?),
        Op::GetMany { keys } if keys.is_empty() => Output::Values(Vec::new()),
        Op::GetMany { keys } => {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            Output::Values(keys.into_iter().zip(values).filter(|(_, v)| v.is_some()).collect())
        }
        Op::Set { key, value } => {
            conn.set::<_, _, ()>(key, value).await?;
            Output::Done
        }
        Op::Delete { key } => {
            conn.del::<_, ()>(key).await?;
            Output::Done
        }
        Op::SetMany { entries } => {
            if !entries.is_empty() {
                conn.mset::<_, _, ()>(&entries).await?;
            }
            Output::Done
        }
        Op::DeleteMany { keys } => {
            if !keys.is_empty() {
                conn.del::<_, ()>(keys).await?;
            }
            Output::Done
        }
        Op::Increment { key, delta } => match conn.incr(&key, delta).await {
            Ok(n) => Output::Counter(n),
            // Nothing was written; the length is for the log line.
            Err(e) if is_not_an_integer(&e) => {
                let len: usize = conn.strlen(&key).await?;
                return Err(KvError::Fatal(Fatal::NotACounter { key, len }));
            }
            Err(e) => return Err(e.into()),
        },
        Op::Swap { key, expected, value } => {
            let read = if expected.is_some() { "1" } else { "0" };
            let written: i64 =
                cas.key(key).arg(read).arg(expected.unwrap_or_default()).arg(value).invoke_async(&mut conn).await?;
            Output::Swapped(written == 1)
        }
    })
}

/// `get-many` as Spin's Redis store does it: `KEYS <k1> <k2> ...`, the reply paired up by its redis client.
async fn spin_redis_get_many(mut conn: redis::aio::ConnectionManager, keys: Vec<String>) -> Result<Output, KvError> {
    if keys.is_empty() {
        return Ok(Output::Values(Vec::new()));
    }
    let matched: Vec<Vec<u8>> = redis::cmd("KEYS").arg(&keys).query_async(&mut conn).await.map_err(|e| {
        KvError::Store(format!(
            "get-many of {} key(s): Spin's Redis store sends KEYS {} instead of MGET, and Redis answers: {e}",
            keys.len(),
            keys.join(" ")
        ))
    })?;
    spin_pair_keys_reply(&keys.join(" "), matched)
}

/// What Spin's redis client (0.32) makes of a `KEYS` reply read as `Vec<(String, Option<Vec<u8>>)>`: consecutive
/// pairs, and a panic on an odd count.
fn spin_pair_keys_reply(pattern: &str, matched: Vec<Vec<u8>>) -> Result<Output, KvError> {
    if matched.len() % 2 == 1 {
        return Err(KvError::Fatal(Fatal::RedisKeysOdd { pattern: pattern.to_owned(), matched: matched.len() }));
    }
    let mut pairs = Vec::with_capacity(matched.len() / 2);
    let mut items = matched.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        pairs.push((String::from_utf8_lossy(&key).into_owned(), Some(value)));
    }
    Ok(Output::Values(pairs))
}

impl Backend for RedisBackend {
    fn exec(&self, _store: &str, op: Op) -> BoxFuture<'static, Result<Output, KvError>> {
        let (conn, cas) = (self.conn.clone(), self.cas.clone());
        Box::pin(redis_exec(conn, cas, op))
    }

    fn exec_as_spin(&self, store: &str, op: Op) -> BoxFuture<'static, Result<Output, KvError>> {
        match op {
            Op::GetMany { keys } => Box::pin(spin_redis_get_many(self.conn.clone(), keys)),
            // The write is as conditional as Spin's; its outcome is reported as Spin's `UNWATCH <key>` makes it.
            Op::Swap { .. } => {
                let swap = self.exec(store, op);
                Box::pin(async move { swap.await.map(|_| Output::Swapped(false)) })
            }
            op => self.exec(store, op),
        }
    }

    fn describe(&self) -> String {
        format!("Redis at {}", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn swap(kv: &Kv, key: &str, expected: Option<&[u8]>, value: &[u8]) -> bool {
        let op = Op::Swap { key: key.into(), expected: expected.map(<[u8]>::to_vec), value: value.to_vec() };
        matches!(kv.exec("default", op).await, Ok(Output::Swapped(true)))
    }

    /// How a backend stores counters.
    fn le_counter(n: i64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    fn decimal_counter(n: i64) -> Vec<u8> {
        n.to_string().into_bytes()
    }

    async fn semantics(kv: Kv, cas_mode: CasMode, counter: fn(i64) -> Vec<u8>) {
        assert_eq!(kv.get("default", "a").await, Ok(None));
        kv.set("default", "a", b"{1}").await.expect("set");
        assert_eq!(kv.get("default", "a").await, Ok(Some(b"{1}".to_vec())));
        assert!(swap(&kv, "a", Some(b"{1}"), b"{2}").await);
        assert!(!swap(&kv, "a", Some(b"{1}"), b"{3}").await, "stale CAS must fail");
        assert_eq!(kv.get("default", "a").await, Ok(Some(b"{2}".to_vec())));
        assert!(swap(&kv, "fresh", None, b"x").await, "CAS on absent key creates it");
        assert_eq!(swap(&kv, "fresh", None, b"y").await, cas_mode == CasMode::SpinUpsert);
        let inc = |d| kv.exec("default", Op::Increment { key: "n".into(), delta: d });
        assert_eq!(inc(5).await, Ok(Output::Counter(5)));
        assert_eq!(inc(-7).await, Ok(Output::Counter(-2)));
        assert_eq!(kv.get("default", "n").await, Ok(Some(counter(-2))));
        assert!(kv.exec("default", Op::Increment { key: "a".into(), delta: 1 }).await.is_err());
        assert_eq!(kv.get("default", "a").await, Ok(Some(b"{2}".to_vec())), "failed increment writes nothing");
        let got = kv.exec("default", Op::GetMany { keys: vec!["a".into(), "missing".into()] }).await;
        assert_eq!(got, Ok(Output::Values(vec![("a".into(), Some(b"{2}".to_vec()))])));
        kv.exec("default", Op::DeleteMany { keys: vec!["a".into(), "fresh".into()] }).await.expect("delete");
        assert_eq!(kv.exec("default", Op::Keys).await, Ok(Output::Keys(vec!["n".into()])));
    }

    fn incr(key: &str, delta: i64) -> Op {
        Op::Increment { key: key.into(), delta }
    }

    /// `increment` as guests see it: any value Spin's stores cannot count is fatal (with Spin's behaviour on) and
    /// changes nothing; the store keeps serving. `eight_bytes` is an 8-byte value that is a counter on SQLite (any 8
    /// bytes are) but not on Redis (not a decimal integer), `redis` whether the backend is Redis.
    async fn guest_increments(kv: Kv, redis: bool) {
        let json = br#"{"a":1}"#;
        kv.set("default", "doc", json).await.expect("set");
        assert_eq!(
            kv.exec_guest("default", incr("doc", 0)).await,
            Err(Fatal::NotACounter { key: "doc".into(), len: json.len() })
        );
        assert_eq!(kv.get("default", "doc").await, Ok(Some(json.to_vec())), "a fatal increment writes nothing");
        assert_eq!(kv.exec_guest("default", incr("absent", 2)).await, Ok(Ok(Output::Counter(2))), "absent is 0");
        kv.set("default", "eight", b"abcdefgh").await.expect("set");
        let eight = kv.exec_guest("default", incr("eight", 1)).await;
        if redis {
            assert_eq!(eight, Err(Fatal::NotACounter { key: "eight".into(), len: 8 }));
            kv.set("default", "dec", b"-12").await.expect("set");
            assert_eq!(kv.exec_guest("default", incr("dec", 2)).await, Ok(Ok(Output::Counter(-10))));
        } else {
            // Spin reads any 8 bytes as a counter: so does the host, no stricter.
            assert_eq!(eight, Ok(Ok(Output::Counter(i64::from_le_bytes(*b"abcdefgh") + 1))));
            kv.set("default", "short", b"1234567").await.expect("set");
            assert_eq!(
                kv.exec_guest("default", incr("short", 1)).await,
                Err(Fatal::NotACounter { key: "short".into(), len: 7 })
            );
        }
        let line = Fatal::NotACounter { key: "doc".into(), len: 7 }.log_line("fx");
        assert_eq!(
            line,
            "scenefin-host: component fx incremented key doc holding a non-counter value (7 bytes); Spin's SQLite \
             store would panic here (\"incorrect length\") and poison itself: every later key-value call of the app \
             would fail until restart"
        );

        // Spin's behaviour off: an ordinary store error, still without effect.
        let off = kv.clone().with_spin_quirks(false);
        match off.exec_guest("default", incr("doc", 1)).await {
            Ok(Err(msg)) => assert!(msg.contains("not a counter"), "{msg}"),
            other => panic!("expected a store error, got {other:?}"),
        }
        assert_eq!(kv.get("default", "doc").await, Ok(Some(json.to_vec())));
        // The host's own calls never trap.
        assert!(kv.exec("default", incr("doc", 1)).await.is_err());
    }

    #[tokio::test]
    async fn memory_increment_on_a_non_counter_is_fatal_for_guests() {
        guest_increments(Kv::new(MemoryBackend::new(CasMode::SpinUpsert)), false).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_increment_on_a_non_counter_is_fatal_for_guests() {
        let dir = tempfile::tempdir().expect("tempdir");
        guest_increments(Kv::new(SqliteBackend::open(&dir.path().join("kv.db")).expect("open")), false).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn redis_increment_on_a_non_counter_is_fatal_for_guests() {
        let server = crate::testing::RedisServer::start().expect("redis-server");
        guest_increments(Kv::new(RedisBackend::connect(&server.url()).await.expect("connect")), true).await;
    }

    fn guest_swap(key: &str, expected: &[u8], value: &[u8]) -> Op {
        Op::Swap { key: key.into(), expected: Some(expected.to_vec()), value: value.to_vec() }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn redis_swap_reports_cas_failed_to_guests_as_spin_does() {
        let server = crate::testing::RedisServer::start().expect("redis-server");
        let kv = Kv::new(RedisBackend::connect(&server.url()).await.expect("connect"));
        kv.set("default", "doc", b"v1").await.expect("set");
        // The write lands, and is reported failed.
        assert_eq!(kv.exec_guest("default", guest_swap("doc", b"v1", b"v2")).await, Ok(Ok(Output::Swapped(false))));
        assert_eq!(kv.get("default", "doc").await, Ok(Some(b"v2".to_vec())));
        // A stale CAS is reported failed and writes nothing.
        assert_eq!(kv.exec_guest("default", guest_swap("doc", b"v1", b"v3")).await, Ok(Ok(Output::Swapped(false))));
        assert_eq!(kv.get("default", "doc").await, Ok(Some(b"v2".to_vec())));
        // Spin's behaviour off: the true outcome.
        let off = kv.clone().with_spin_quirks(false);
        assert_eq!(off.exec_guest("default", guest_swap("doc", b"v2", b"v4")).await, Ok(Ok(Output::Swapped(true))));
        assert_eq!(off.exec_guest("default", guest_swap("doc", b"v2", b"v5")).await, Ok(Ok(Output::Swapped(false))));
        assert_eq!(kv.get("default", "doc").await, Ok(Some(b"v4".to_vec())));
        // SQLite's and memory's swap are not changed.
        let mem = Kv::new(MemoryBackend::new(CasMode::SpinUpsert));
        mem.set("default", "doc", b"v1").await.expect("set");
        assert_eq!(mem.exec_guest("default", guest_swap("doc", b"v1", b"v2")).await, Ok(Ok(Output::Swapped(true))));
    }

    fn get_many(keys: &[&str]) -> Op {
        Op::GetMany { keys: keys.iter().map(|k| (*k).to_owned()).collect() }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn redis_get_many_sends_keys_for_guests_as_spin_does() {
        let server = crate::testing::RedisServer::start().expect("redis-server");
        let kv = Kv::new(RedisBackend::connect(&server.url()).await.expect("connect"));
        kv.set("default", "a", b"1").await.expect("set");
        kv.set("default", "b", b"2").await.expect("set");
        assert_eq!(kv.exec_guest("default", get_many(&[])).await, Ok(Ok(Output::Values(vec![]))));
        match kv.exec_guest("default", get_many(&["a", "b"])).await {
            Ok(Err(msg)) => {
                assert!(msg.contains("Spin's Redis store sends KEYS a b") && msg.contains("arguments"), "{msg}")
            }
            other => panic!("expected a store error, got {other:?}"),
        }
        match kv.exec_guest("default", get_many(&["a", "absent"])).await {
            Ok(Err(msg)) => assert!(msg.contains("KEYS a absent"), "{msg}"),
            other => panic!("expected a store error, got {other:?}"),
        }
        assert_eq!(kv.exec_guest("default", get_many(&["absent"])).await, Ok(Ok(Output::Values(vec![]))));
        let fatal = Fatal::RedisKeysOdd { pattern: "a".into(), matched: 1 };
        assert_eq!(kv.exec_guest("default", get_many(&["a"])).await, Err(fatal.clone()));
        assert_eq!(
            fatal.log_line("fx"),
            "scenefin-host: component fx called get-many with the one key a, which matches 1 key(s); Spin's Redis \
             store sends KEYS a here and panics in its redis client (\"entered unreachable code\"): the request \
             would fail"
        );
        // One key that is a glob pattern matching two: Spin pairs the names up.
        kv.set("default", "p1", b"x").await.expect("set");
        kv.set("default", "p2", b"y").await.expect("set");
        match kv.exec_guest("default", get_many(&["p?"])).await {
            Ok(Ok(Output::Values(pairs))) => {
                assert_eq!(pairs.len(), 1, "{pairs:?}");
                let (k, v) = &pairs[0];
                let mut names = vec![k.clone(), String::from_utf8(v.clone().expect("some")).expect("utf8")];
                names.sort();
                assert_eq!(names, ["p1", "p2"], "a key name as the value");
            }
            other => panic!("expected Spin's pairs, got {other:?}"),
        }
        // Spin's behaviour off: MGET.
        let off = kv.clone().with_spin_quirks(false);
        let both = vec![("a".to_owned(), Some(b"1".to_vec())), ("b".to_owned(), Some(b"2".to_vec()))];
        assert_eq!(off.exec_guest("default", get_many(&["a", "b", "absent"])).await, Ok(Ok(Output::Values(both))));
        let one = vec![("a".to_owned(), Some(b"1".to_vec()))];
        assert_eq!(off.exec_guest("default", get_many(&["a"])).await, Ok(Ok(Output::Values(one.clone()))));
        // The host's own reads are never Spin's.
        assert_eq!(kv.exec("default", get_many(&["a"])).await, Ok(Output::Values(one)));
    }

    #[tokio::test]
    async fn memory_backend_has_spin_semantics() {
        semantics(Kv::new(MemoryBackend::new(CasMode::SpinUpsert)), CasMode::SpinUpsert, le_counter).await;
        semantics(Kv::new(MemoryBackend::new(CasMode::Strict)), CasMode::Strict, le_counter).await;
        let kv = Kv::new(MemoryBackend::new(CasMode::Strict));
        kv.set("default", "a", b"1").await.expect("set");
        assert_eq!(kv.get("other", "a").await, Ok(None), "stores are separate namespaces");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn redis_backend_has_spins_redis_semantics() {
        let server = crate::testing::RedisServer::start().expect("redis-server");
        let kv = Kv::new(RedisBackend::connect(&server.url()).await.expect("connect"));
        semantics(kv.clone(), CasMode::Strict, decimal_counter).await;
        assert_eq!(kv.exec("default", Op::GetMany { keys: vec![] }).await, Ok(Output::Values(vec![])));
        // A value with every byte, and a CAS that must compare bytes, not text.
        let bytes: Vec<u8> = (0..=255).collect();
        kv.set("default", "bin", &bytes).await.expect("set");
        assert_eq!(kv.get("default", "bin").await, Ok(Some(bytes.clone())));
        let mut other = bytes.clone();
        other[200] ^= 1;
        assert!(!swap(&kv, "bin", Some(&other), b"x").await);
        assert!(swap(&kv, "bin", Some(&bytes), b"y").await);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn redis_cas_and_increment_are_atomic_across_connections() {
        let server = crate::testing::RedisServer::start().expect("redis-server");
        // Two backends = two hosts' connections to one Redis.
        let a = Kv::new(RedisBackend::connect(&server.url()).await.expect("connect"));
        let b = Kv::new(RedisBackend::connect(&server.url()).await.expect("connect"));
        a.set("default", "cas", b"0").await.expect("set");
        let mut tasks = Vec::new();
        for i in 0..200 {
            let kv = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                kv.exec("default", Op::Increment { key: "ctr".into(), delta: 1 }).await.expect("incr");
                loop {
                    let current = kv.get("default", "cas").await.expect("get").expect("present");
                    let n: u64 = String::from_utf8_lossy(&current).parse().expect("number");
                    if swap(&kv, "cas", Some(&current), (n + 1).to_string().as_bytes()).await {
                        break;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(a.get("default", "ctr").await, Ok(Some(b"200".to_vec())));
        assert_eq!(b.get("default", "cas").await, Ok(Some(b"200".to_vec())), "no CAS update lost");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_backend_has_spin_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = Kv::new(SqliteBackend::open(&dir.path().join("kv.db")).expect("open"));
        semantics(kv, CasMode::SpinUpsert, le_counter).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_writes_from_many_threads_are_each_committed_once_and_none_is_stranded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = Kv::new(SqliteBackend::open(&dir.path().join("kv.db")).expect("open"));
        let mut tasks = Vec::new();
        for t in 0..16 {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    kv.exec("default", Op::Increment { key: "ctr".into(), delta: 1 }).await.expect("increment");
                    kv.set("default", &format!("t{t}:{i}"), b"v").await.expect("set");
                    // Reads interleave with the batches, on the main connection or a pooled one.
                    assert_eq!(kv.get("default", &format!("t{t}:{i}")).await, Ok(Some(b"v".to_vec())));
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(kv.get("default", "ctr").await, Ok(Some(1600i64.to_le_bytes().to_vec())));
        kv.barrier().await.expect("barrier");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_barrier_waits_for_the_sync_of_everything_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.db");
        let backend = SqliteBackend::open(&path).expect("open");
        let durable = backend.durable.clone();
        let kv = Kv::new(backend);
        kv.barrier().await.expect("nothing written: nothing to wait for");
        let mut writes = Vec::new();
        for i in 0..50 {
            let kv = kv.clone();
            writes.push(tokio::spawn(async move {
                kv.set("default", &format!("k{i}"), b"v").await.expect("set");
                kv.barrier().await.expect("barrier");
            }));
        }
        for w in writes {
            w.await.expect("task");
        }
        let committed = durable.committed.load(Ordering::Acquire);
        assert!(committed >= 1);
        assert!(*durable.synced.borrow() >= committed, "a barrier returned before the sync caught up");
        drop(kv);
        // A second process on the same file sees every acknowledged write.
        let again = Kv::new(SqliteBackend::open(&path).expect("reopen"));
        for i in 0..50 {
            assert_eq!(again.get("default", &format!("k{i}")).await, Ok(Some(b"v".to_vec())));
        }
    }
}
