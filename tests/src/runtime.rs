//! Where a [`crate::TestApp`] runs: in-process on scenefin-host (the default) or under the real Spin 4 CLI
//! (`spin up`), on Spin's default SQLite store or on a private Redis, chosen by `SCENEFIN_E2E_RUNTIME`
//! (`host` | `spin-sqlite` | `spin-redis`).
//!
//! Under Spin the store is read directly (Spin's SQLite file read-only, or the Redis server), so tests that look
//! at stored keys work on every runtime. What only the host has (fault injection, operation counts, a particular
//! host store, host processes) is not there: such tests start with [`crate::host_only!`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};
use scenefin_host::kv::{Op, Output};
use scenefin_host::testing::RedisServer;
use scenefin_host::{Faults, Kv, RunningHost};

use crate::{test_variables, workspace};

/// The environment variable that picks the runtime.
pub const RUNTIME_VAR: &str = "SCENEFIN_E2E_RUNTIME";

/// How long `spin up` may take to serve (the first start compiles every component; Spin caches them).
const SPIN_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The runtime [`crate::TestApp`] starts the app on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// scenefin-host in-process (in memory unless a test picks a host store).
    Host,
    /// `spin up` with Spin's default key-value store (SQLite in the state directory).
    SpinSqlite,
    /// `spin up` with the `default` store on a private `redis-server`.
    SpinRedis,
}

impl Runtime {
    /// The runtime `SCENEFIN_E2E_RUNTIME` names (`host` when unset); panics on anything else.
    pub fn current() -> Self {
        static CURRENT: OnceLock<Runtime> = OnceLock::new();
        *CURRENT.get_or_init(|| match std::env::var(RUNTIME_VAR).as_deref() {
            Err(_) | Ok("" | "host") => Runtime::Host,
            Ok("spin-sqlite") => Runtime::SpinSqlite,
            Ok("spin-redis") => Runtime::SpinRedis,
            Ok(other) => panic!("{RUNTIME_VAR}={other:?}: expected host, spin-sqlite or spin-redis"),
        })
    }

    /// The name `SCENEFIN_E2E_RUNTIME` uses.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Host => "host",
            Runtime::SpinSqlite => "spin-sqlite",
            Runtime::SpinRedis => "spin-redis",
        }
    }

    /// Whether the app runs under real Spin.
    pub fn is_spin(self) -> bool {
        self != Runtime::Host
    }
}

/// Whether a test that needs `what` (a host-only capability) can run: under a Spin runtime it prints one line
/// saying why it is skipped and returns `false`. Use it through [`crate::host_only!`].
pub fn runs_on_host(what: &str) -> bool {
    let runtime = Runtime::current();
    if !runtime.is_spin() {
        return true;
    }
    // Straight to the process's stderr, past the test harness's capture, so a run shows what it skipped; one write,
    // so the line stays whole between the harness's.
    let line = format!("skip: needs {what} (runtime {})\n", runtime.name());
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// Returns from the test, after one line saying so, when the app runs under Spin: for tests that need
/// something only scenefin-host has, e.g. `host_only!("the host's fault injection");`.
#[macro_export]
macro_rules! host_only {
    ($what:expr) => {
        if !$crate::runtime::runs_on_host($what) {
            return;
        }
    };
}

/// The Spin CLI: `SCENEFIN_SPIN`, else `spin` on `PATH`, else what `<workspace>/../shared/tools/spin/install`
/// unpacks; `None` when there is none.
pub fn spin_binary() -> Option<PathBuf> {
    static SPIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    SPIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("SCENEFIN_SPIN").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let on_path = std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("spin")).find(|p| p.is_file()));
        if on_path.is_some() {
            return on_path;
        }
        let root = workspace();
        let install = root.join("../shared/tools/spin/install");
        let out = Command::new(&install).current_dir(&root).stderr(Stdio::inherit()).output().ok()?;
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        (out.status.success() && path.is_file()).then_some(path)
    })
    .clone()
}

/// The running app behind a [`crate::TestApp`]: its store (readable on every runtime) and, on the host, its fault
/// plan.
pub struct AppHost {
    /// The app's store (under Spin, read directly: reads only).
    pub kv: StoreView,
    /// The fault plan of an app started with `TestApp::spawn_faulty` (host only).
    pub faults: Option<Faults>,
    server: Server,
}

enum Server {
    Host(RunningHost),
    Spin(SpinApp),
}

impl AppHost {
    pub(crate) fn host(host: RunningHost) -> Self {
        Self { kv: StoreView::Host(host.kv.clone()), faults: host.faults.clone(), server: Server::Host(host) }
    }

    /// Stops the app. Under Spin, also fails the test if Spin's output shows a panic.
    pub async fn shutdown(self) {
        match self.server {
            Server::Host(host) => host.shutdown().await,
            Server::Spin(mut spin) => spin.stop(),
        }
    }

    /// Starts `spin up` for `runtime` with the test variables and `extra_env`; the app's base URL with it.
    pub(crate) async fn spin(runtime: Runtime, extra_env: &[(&str, &str)]) -> Result<(Self, String)> {
        let spin = SpinApp::start(runtime, extra_env).await?;
        let kv = match &spin.redis {
            Some(redis) => StoreView::SpinRedis(Kv::new(scenefin_host::kv::RedisBackend::connect(&redis.url()).await?)),
            None => StoreView::SpinSqlite(spin.state.join("sqlite_key_value.db")),
        };
        let base = format!("http://{}", spin.listen);
        Ok((Self { kv, faults: None, server: Server::Spin(spin) }, base))
    }
}

/// A `spin up` child process, its state directory and log, and its private Redis (for `spin-redis`).
struct SpinApp {
    child: Child,
    listen: String,
    state: PathBuf,
    log: PathBuf,
    /// Stopped, and the log checked.
    stopped: bool,
    redis: Option<RedisServer>,
    /// Dropped last: the state directory and the log.
    _dir: tempfile::TempDir,
}

/// Whether a `spin up` of this test process has served yet. Held while the first one compiles the components, so
/// parallel tests do not all compile them at once; later starts find them in Spin's cache.
static WARM: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

impl SpinApp {
    async fn start(runtime: Runtime, extra_env: &[(&str, &str)]) -> Result<Self> {
        let spin = spin_binary().context("no Spin binary (set SCENEFIN_SPIN or put spin on PATH)")?;
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        let log = dir.path().join("spin.log");
        let redis = match runtime {
            Runtime::SpinRedis => Some(RedisServer::start()?),
            _ => None,
        };
        let runtime_config = match &redis {
            Some(redis) => {
                let path = dir.path().join("runtime-config.toml");
                let config = format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n", redis.url());
                std::fs::write(&path, config)?;
                Some(path)
            }
            None => None,
        };
        let mut first = Some(WARM.lock().await);
        if first.as_deref().is_some_and(|warm| *warm) {
            first = None;
        }
        // A port picked free may be taken by someone else before Spin binds it: Spin exits, another port is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let listen = format!("127.0.0.1:{port}");
            let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
            let mut cmd = Command::new(&spin);
            cmd.arg("up")
                .arg("--from")
                .arg(workspace().join("spin.toml"))
                .args(["--listen", &listen])
                .arg("--state-dir")
                .arg(&state);
            if let Some(config) = &runtime_config {
                cmd.arg("--runtime-config-file").arg(config);
            }
            // Spin's binary is stripped: its backtraces are frames of `<unknown>`.
            cmd.envs(test_variables())
                .envs(extra_env.iter().copied())
                .env("RUST_BACKTRACE", "0")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let mut child = cmd.spawn().with_context(|| format!("starting {}", spin.display()))?;
            match wait_until_serving(&mut child, &listen).await {
                Ok(()) => {
                    if let Some(warm) = first.as_deref_mut() {
                        *warm = true;
                    }
                    return Ok(Self { child, listen, state, log, stopped: false, redis, _dir: dir });
                }
                Err(e) => {
                    kill_tree(&mut child);
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if attempt < 3 && text.contains("in use") {
                        continue;
                    }
                    bail!("spin up --listen {listen}: {e:#}\n{}", tail(&text));
                }
            }
        }
    }

    /// Fails the test if Spin's output so far shows a panic (or prints its log when the test failed already), then
    /// kills Spin: nothing of a test's state outlives it.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // Read before stopping: Spin reports its HTTP workers dropped at shutdown as "worker panicked".
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        kill_tree(&mut self.child);
        if std::thread::panicking() {
            eprintln!("spin up --listen {} (the test failed):\n{}", self.listen, tail(&text));
        } else if text.contains("panicked") {
            panic!("Spin's output shows a panic:\n{}", tail(&text));
        }
    }
}

/// SIGKILLs `spin up` and what it started (`spin trigger http`, which would go on serving without it).
pub fn kill_tree(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let mut descendants = Vec::new();
    let mut parents = vec![child.id()];
    while let Some(parent) = parents.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else { continue };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                descendants.push(pid);
                parents.push(pid);
            }
        }
    }
    if !descendants.is_empty() {
        let pids: Vec<String> = descendants.iter().map(u32::to_string).collect();
        let _ = Command::new("kill").arg("-KILL").args(&pids).stderr(Stdio::null()).status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for SpinApp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `GET /` answers 2xx, for at most [`SPIN_START_TIMEOUT`].
pub async fn wait_until_serving(child: &mut Child, listen: &str) -> Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited with {status}");
        }
        if let Ok(r) = client.get(format!("http://{listen}/")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if started.elapsed() > SPIN_START_TIMEOUT {
            bail!("did not serve within {SPIN_START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spin's log as a failing test shows it: around the first panic, if any, and the last lines.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let panics: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains("panicked")).collect();
    if let Some(&first) = panics.first() {
        let shown = &lines[first.saturating_sub(5)..(first + 15).min(lines.len())];
        out += &format!(
            "--- spin log: {} line(s) with `panicked`, the first at line {} ---\n{}\n",
            panics.len(),
            first + 1,
            shown.join("\n")
        );
    }
    let from = lines.len().saturating_sub(40);
    out += &format!(
        "--- spin log, last {} lines ---\n{}\n--- end of spin log ---",
        lines.len() - from,
        lines[from..].join("\n")
    );
    out
}

/// The app's key-value store as a test sees it: the host's own store, or Spin's read directly (its SQLite file
/// through read-only connections while Spin runs, or its Redis server).
pub enum StoreView {
    Host(Kv),
    /// `<state dir>/sqlite_key_value.db`, table `spin_key_value(store, key, value)`.
    SpinSqlite(PathBuf),
    SpinRedis(Kv),
}

impl StoreView {
    /// Runs one op. Under Spin only reads (`Get`, `Exists`, `Keys`, `GetMany`): tests change state through the app.
    pub async fn exec(&self, store: &str, op: Op) -> Result<Output, String> {
        match self {
            StoreView::Host(kv) => kv.exec(store, op).await,
            StoreView::SpinRedis(kv) if !op.is_write() => kv.exec(store, op).await,
            StoreView::SpinRedis(_) => Err(format!("{op:?}: the test's view of Spin's store is read only")),
            StoreView::SpinSqlite(path) => {
                let (path, store) = (path.clone(), store.to_owned());
                tokio::task::spawn_blocking(move || read_spin_sqlite(&path, &store, op).map_err(|e| format!("{e:#}")))
                    .await
                    .map_err(|e| e.to_string())?
            }
        }
    }

    /// One key's value.
    pub async fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.exec(store, Op::Get { key: key.to_owned() }).await? {
            Output::Value(v) => Ok(v),
            other => Err(format!("unexpected output {other:?}")),
        }
    }

    /// Key-value operations the app's components ran (host only: start the test with `host_only!`).
    pub fn op_count(&self) -> u64 {
        match self {
            StoreView::Host(kv) => kv.op_count(),
            _ => panic!("op_count is host only (start the test with host_only!)"),
        }
    }

    /// The host's [`Kv`] (host only: start the test with `host_only!`).
    pub fn host_kv(&self) -> &Kv {
        match self {
            StoreView::Host(kv) => kv,
            _ => panic!("host_kv is host only (start the test with host_only!)"),
        }
    }
}

fn read_spin_sqlite(path: &Path, store: &str, op: Op) -> Result<Output> {
    // Spin creates the file and its table when a component first opens the store.
    let conn = if path.exists() {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let table: Option<String> = conn
            .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'spin_key_value'", [], |r| {
                r.get(0)
            })
            .optional()?;
        table.map(|_| conn)
    } else {
        None
    };
    let get = |key: &str| -> Result<Option<Vec<u8>>> {
        let Some(conn) = &conn else { return Ok(None) };
        Ok(conn
            .prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")?
            .query_row([store, key], |r| r.get(0))
            .optional()?)
    };
    Ok(match op {
        Op::Get { key } => Output::Value(get(&key)?),
        Op::Exists { key } => Output::Bool(get(&key)?.is_some()),
        Op::GetMany { keys } => {
            Output::Values(keys.into_iter().map(|k| get(&k).map(|v| (k, v))).collect::<Result<_>>()?)
        }
        Op::Keys => {
            let Some(conn) = &conn else { return Ok(Output::Keys(Vec::new())) };
            let mut stmt = conn.prepare("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
            let keys = stmt.query_map([store], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            Output::Keys(keys)
        }
        op => bail!("{op:?}: the test's view of Spin's store is read only"),
    })
}
