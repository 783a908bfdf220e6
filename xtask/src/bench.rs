//! `cargo xtask bench`: load-tests the host with `wrk`, then the real Spin 4 CLI on the same app and the same load,
//! and writes docs/BENCHMARKS.md.
//!
//! The host (`target/debug/scenefin-host`, the dev profile: wasmtime, cranelift, hyper, tokio and rusqlite are
//! compiled at opt-level 3 there) runs as a child process twice, on loopback:
//! 1. `tests/fixtures/spin.toml`: the fixture's echo at `/` is the "hello" floor;
//! 2. `spin.toml` on SQLite with a fresh state dir under `target/bench`, started cold (empty module cache) and then
//!    warm (same cache); the warm instance is seeded through the HTTP APIs and each route driven with
//!    `wrk -t2 -c32 -d10s --latency` (`SCENEFIN_BENCH_SECONDS` sets `-d`, 10 by default).
//!
//! Then, when there is a Spin binary (`SCENEFIN_SPIN`, `spin` on `PATH`, or what `../shared/tools/spin/install`
//! unpacks), the same two runs under `spin up` (Spin's default SQLite key-value store, a fresh state dir and a private
//! Wasmtime cache under `target/bench/spin`, the same variables): the fixture's echo, then the app started cold and
//! warm, seeded through the same APIs with its own data and driven with the same wrk settings. Its wrk scripts also
//! tally the non-2xx statuses and the problem code of each; Spin's output goes to `target/bench/spin/*.log`, and the
//! SQLite file's change counter, read before and after each route, gives the writes Spin committed. Without a Spin
//! binary the document says so in one line and has no Spin columns.
//!
//! Then, when `redis-server` is installed, the app on Redis: a private `redis-server` on loopback (no persistence,
//! a fresh one per server) under the host (`--runtime-config-file` naming it) and, with a Spin binary, under
//! `spin up --runtime-config-file` (a `redis` `key_value_store.default`), seeded the same way and driven with the same
//! wrk settings for `SCENEFIN_BENCH_REDIS_SECONDS` (5 by default); Redis's own round trip is timed with sequential
//! `PING`s on the idle server. Without `redis-server` the document says so in one line and has no Redis columns.
//!
//! The e2e test `kv_ops` counts each route's store operations (keys) and sequential round trips (calls) on the
//! host and writes `target/kv-ops.md` (and each route's calls to `target/kv-ops-trace.md`) before it enforces its
//! budgets: the document uses that table even when the test fails, and says it failed.
//!
//! Campus spends are signed POS calls (a fresh nonce and HMAC each): the requests are signed just before that route
//! runs (on each server, its own set), one per line of `spend.tsv`, which the route's Lua script loads and walks, each
//! wrk thread its own share, never reusing one (a replay would be refused).
//!
//! Every number in the generated document comes from this run.

use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use scenefin_core::auth::{
    IdentityAssertion, Provider, SIGNATURE_WINDOW_SECS, partner_canonical, sign_assertion, sign_partner, sign_webhook,
};
use scenefin_core::clock::Timestamp;
use serde_json::{Value, json};

use crate::{cargo, run};

const OPERATOR_TOKEN: &str = "bench-operator-token";
const IDENTITY_SECRET: &str = "bench-identity-secret";
const SESSION_SECRET: &str = "bench-session-secret";
const GATEWAY_SECRET: &str = "whsec_YmVuY2gtZ2F0ZXdheS1rZXk=";
const BANK_BIN: &str = "622588";
/// How long `spin up` may take to answer: its first start compiles every component.
const SPIN_START_LIMIT: Duration = Duration::from_secs(180);
/// wrk threads and connections.
const THREADS: usize = 2;
const CONNECTIONS: usize = 32;
/// How long wrk drives each route unless `SCENEFIN_BENCH_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 10;
/// The same for the Redis runs (`SCENEFIN_BENCH_REDIS_SECONDS`).
const DEFAULT_REDIS_SECONDS: u64 = 5;

/// The share of the floor's rate a write route must reach.
fn write_ratio(route: &str) -> f64 {
    if route.contains("/quotes") { QUOTE_RATIO } else { WRITE_RATIO }
}

/// Targets.
const MAX_WASM_BYTES: u64 = 1 << 20;
const READ_RATIO: f64 = 0.60;
const WRITE_RATIO: f64 = 0.25;
/// Quotes are asked for more often than anything is paid: the issue wants them at 35% of the floor.
const QUOTE_RATIO: f64 = 0.35;
const MAX_P99_MS: f64 = 20.0;
const MAX_WARM_START_MS: f64 = 1000.0;
/// Sequential round trips to the store per request, on every route.
const MAX_ROUND_TRIPS: u64 = 8;
/// Spin (SQLite) serves every write route at least this share of the host's rate.
const SPIN_WRITE_SHARE: f64 = 1.0 / 3.0;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Floor,
    Read,
    Write,
}

struct Outcome {
    route: String,
    kind: Kind,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
    peak_rss_kib: u64,
    /// CPU time (user + system) the server's processes used while wrk ran, in milliseconds.
    host_cpu_ms: f64,
    /// How long wrk ran, in seconds.
    seconds: f64,
    /// Pre-signed requests used and prepared (campus spends).
    signed: Option<(u64, u64)>,
    /// Non-2xx statuses: status, how many, and the problem code (or the start of the body) of the first (Spin runs).
    statuses: Vec<(u16, u64, String)>,
    /// Write transactions the SQLite store committed (Spin runs).
    commits: Option<Commits>,
}

/// What the SQLite store committed for a route (its file change counter: one per write transaction).
#[derive(Clone, Copy)]
struct Commits {
    /// While wrk ran.
    during: u64,
    /// Until the store was quiet again: also what the requests in flight when wrk stopped went on to commit.
    total: u64,
    /// Requests sent: those wrk completed and those in flight when it stopped (one per connection, or for the
    /// spends, the signed requests used).
    sent: u64,
}

/// A server child process (scenefin-host or `spin up`) and what it started, on a free loopback port, stopped
/// (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: Child,
    /// Where it listens.
    addr: String,
    /// Its stdout and stderr.
    log: PathBuf,
}

impl Server {
    /// The host on `manifest`, SQLite in `state_dir` (or the store `runtime_config` names), its output in
    /// `state_dir/host.log`.
    fn host(
        root: &Path,
        manifest: &Path,
        state_dir: &Path,
        env: &[(&str, &str)],
        runtime_config: Option<&Path>,
    ) -> Result<Self> {
        let bin = root.join("target/debug/scenefin-host");
        let log = state_dir.join("host.log");
        Self::start(&log, Duration::from_secs(300), |addr| {
            let out = std::fs::File::create(&log)?;
            let mut cmd = Command::new(&bin);
            cmd.current_dir(root)
                .args(["up", "--from"])
                .arg(manifest)
                .args(["--listen", addr, "--kv", "sqlite", "--quiet", "--state-dir"])
                .arg(state_dir)
                .args(runtime_config.map(|c| [Path::new("--runtime-config-file"), c]).into_iter().flatten())
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            cmd.spawn().with_context(|| format!("starting {}", bin.display()))
        })
    }

    /// `spin up` on its default key-value store (SQLite in the state dir), with the Wasmtime cache the start's cache
    /// config names; its output goes to the start's log.
    fn spin(spin: &Path, start: &SpinStart) -> Result<Self> {
        std::fs::create_dir_all(start.state_dir)?;
        Self::start(start.log, SPIN_START_LIMIT, |addr| {
            let out = std::fs::File::create(start.log)?;
            let mut cmd = Command::new(spin);
            cmd.args(["up", "--from"])
                .arg(start.manifest)
                .args(["--listen", addr, "--state-dir"])
                .arg(start.state_dir)
                .arg("--cache")
                .arg(start.cache_config)
                .args(start.runtime_config.map(|c| [Path::new("--runtime-config-file"), c]).into_iter().flatten())
                .envs(start.env.iter().copied())
                // The binary is stripped: a backtrace would be frames of `<unknown>`.
                .env("RUST_BACKTRACE", "0")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            cmd.spawn().with_context(|| format!("starting {}", spin.display()))
        })
    }

    /// Runs `spawn(addr)` on a free loopback port and waits (at most `limit`) until the port takes connections; if
    /// the server exits saying the port is in use (taken in between), again on another port.
    fn start(log: &Path, limit: Duration, spawn: impl Fn(&str) -> Result<Child>) -> Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
            let mut server = Self { child: spawn(&addr)?, addr, log: log.to_owned() };
            let deadline = Instant::now() + limit;
            while std::net::TcpStream::connect(&server.addr).is_err() {
                if let Some(status) = server.exited() {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    if attempt < 3 && text.to_ascii_lowercase().contains("in use") {
                        break;
                    }
                    bail!("the server for {} exited ({status}) (see {})", server.addr, log.display());
                }
                if Instant::now() > deadline {
                    bail!("the server did not listen on {} within {limit:?} (see {})", server.addr, log.display());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if server.exited().is_none() {
                return Ok(server);
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(mut self) {
        self.terminate();
    }

    /// SIGTERM to the process and every process it started (`spin up` runs `spin trigger http`), SIGKILL to those
    /// still there after 5 s.
    fn terminate(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let tree: Vec<(u32, u64)> =
            process_tree(self.pid()).into_iter().filter_map(|p| Some((p, start_time(p)?))).collect();
        let signal = |signal: &str, tree: &[(u32, u64)]| {
            // Only processes that are still the ones seen above (a pid may be reused once its process is gone).
            let pids: Vec<String> =
                tree.iter().filter(|&&(p, t)| start_time(p) == Some(t)).map(|(p, _)| p.to_string()).collect();
            if !pids.is_empty() {
                let _ = Command::new("kill").arg(signal).args(&pids).stderr(Stdio::null()).status();
            }
        };
        signal("-TERM", &tree);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() && tree.iter().all(|&(p, t)| start_time(p) != Some(t) || is_zombie(p)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL", &tree);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `pid` and its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", out[i])) {
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                out.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    out
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses and may contain spaces): the
/// state is `[0]`, utime `[11]`, stime `[12]`, starttime `[19]`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z"))
}

pub fn bench(root: &Path) -> Result<()> {
    let seconds = bench_seconds("SCENEFIN_BENCH_SECONDS", DEFAULT_SECONDS)?;
    let redis_seconds = bench_seconds("SCENEFIN_BENCH_REDIS_SECONDS", DEFAULT_REDIS_SECONDS)?;
    let args = wrk_args(seconds);
    crate::deps::ensure(root, &[&crate::deps::WRK], false)?;
    run(Command::new(cargo()).current_dir(root).args(["build", "-p", "scenefin-host"]))?;
    let bench_dir = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&bench_dir);
    std::fs::create_dir_all(&bench_dir)?;
    let mut results = Vec::new();

    // 1. The floor: the fixture's echo.
    let fixture_state = bench_dir.join("fixture-state");
    std::fs::create_dir_all(&fixture_state)?;
    let mut fixture = Server::host(
        root,
        &root.join("tests/fixtures/spin.toml"),
        &fixture_state,
        &[("SPIN_VARIABLE_TOKEN", "bench")],
        None,
    )?;
    wait_ready(&mut fixture, "/", None, Duration::from_secs(300))?;
    let hello = bench_dir.join("hello.lua");
    std::fs::write(&hello, HELLO_SCRIPT)?;
    let load = Load { who: "host", args: &args, db: None };
    let floor = drive(&fixture, &load, "GET /", Kind::Floor, "/", &hello)?;
    let spends = spends_for(floor.rps, seconds);
    let redis_spends = spends_for(floor.rps, redis_seconds);
    results.push(floor);
    fixture.stop();

    // 2. The app: cold start, then warm start, seed, drive.
    let app_state = bench_dir.join("app-state");
    std::fs::create_dir_all(&app_state)?;
    let manifest = root.join("spin.toml");
    let started = Instant::now();
    let mut cold = Server::host(root, &manifest, &app_state, &APP_ENV, None)?;
    wait_ready(&mut cold, "/api/ops/funnel", Some(OPERATOR_TOKEN), Duration::from_secs(300))?;
    let cold_ms = ms(started.elapsed());
    cold.stop();
    let started = Instant::now();
    let mut app = Server::host(root, &manifest, &app_state, &APP_ENV, None)?;
    wait_ready(&mut app, "/api/ops/funnel", Some(OPERATOR_TOKEN), Duration::from_secs(300))?;
    let warm_ms = ms(started.elapsed());
    let idle_rss_kib = tree_rss_kib(app.pid()).unwrap_or(0);
    println!("bench: startup cold {cold_ms:.0} ms, warm {warm_ms:.0} ms; idle RSS {idle_rss_kib} KiB");

    let seeded = seed(&app.addr, spends)?;
    drive_routes(&app, &load, &bench_dir, &seeded, false, &mut results)?;
    app.stop();

    // 3. The same under real Spin, when there is one.
    // As many signed spends as the host had: plenty, as Spin's spends are slower (the document says if they ran out).
    let spin = spin_phase(root, &bench_dir, &args, spends);

    // 4. The app on Redis: the host, then Spin.
    let redis_args = wrk_args(redis_seconds);
    let redis = redis_phase(root, &bench_dir, &redis_args, redis_spends, spin.as_ref());

    let sizes = wasm_sizes(root)?;
    let kv_ops = kv_ops_table(root);
    let host = HostRun { results, cold_ms, warm_ms, idle_rss_kib };
    let mut doc = report(&host, spin.as_ref(), &redis, &kv_ops, &args, &sizes)?;
    kv_ops_section(&mut doc, &kv_ops)?;
    print!("{doc}");
    std::fs::write(root.join("docs/BENCHMARKS.md"), &doc)?;
    println!("bench: wrote docs/BENCHMARKS.md");
    Ok(())
}

/// The app's variables, as `SPIN_VARIABLE_*` environment (the host and Spin read them the same way).
const APP_ENV: [(&str, &str); 7] = [
    ("SPIN_VARIABLE_OPERATOR_TOKEN", OPERATOR_TOKEN),
    ("SPIN_VARIABLE_IDENTITY_SECRET", IDENTITY_SECRET),
    ("SPIN_VARIABLE_SESSION_SECRET", SESSION_SECRET),
    ("SPIN_VARIABLE_STAFF_IDENTITY_SECRET", "bench-staff-identity-secret"),
    ("SPIN_VARIABLE_PII_SECRET", "bench-pii-secret"),
    ("SPIN_VARIABLE_GATEWAY_SECRET", GATEWAY_SECRET),
    ("SPIN_VARIABLE_BANK_CARD_BINS", BANK_BIN),
];

const HELLO_SCRIPT: &str = "wrk.method = \"GET\"\n";

/// How many spends to sign for the host, whose echo served `floor_rps`: no app route outruns the echo, so signed
/// spends for the floor's rate (and a margin) last the whole run.
fn spends_for(floor_rps: f64, seconds: u64) -> usize {
    ((floor_rps * 1.25 * seconds as f64).ceil() as usize).clamp(MIN_SPENDS, MAX_SPENDS)
}

/// The host's half of the run.
struct HostRun {
    /// The floor first, then the app's routes.
    results: Vec<Outcome>,
    cold_ms: f64,
    warm_ms: f64,
    idle_rss_kib: u64,
}

/// The Spin half of the run: what ran before anything failed, and what failed.
struct SpinRun {
    binary: PathBuf,
    version: String,
    /// The floor first, then the app's routes (the host's route names).
    results: Vec<Outcome>,
    cold_ms: Option<f64>,
    warm_ms: Option<f64>,
    idle_rss_kib: Option<u64>,
    logs: Vec<LogCheck>,
    error: Option<String>,
}

impl SpinRun {
    /// Nothing run yet.
    fn new(binary: PathBuf, version: String) -> Self {
        Self {
            binary,
            version,
            results: Vec::new(),
            cold_ms: None,
            warm_ms: None,
            idle_rss_kib: None,
            logs: Vec::new(),
            error: None,
        }
    }
}

/// What one `spin up`'s output showed.
struct LogCheck {
    what: String,
    log: PathBuf,
    /// Lines with `panicked` before Spin was stopped (Spin reports its HTTP workers dropped at shutdown as "worker
    /// panicked", so what comes after the stop is not read).
    panics: Vec<String>,
    /// The components' `internal error (<code>): ...` lines (from `<state>/logs/*_stderr.txt`), each with a count.
    internal_errors: Vec<(String, u64)>,
}

impl LogCheck {
    fn read(what: &str, log: &Path, state_dir: &Path) -> Self {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let panics: Vec<String> = text.lines().filter(|l| l.contains("panicked")).map(str::to_owned).collect();
        let mut internal_errors: Vec<(String, u64)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(state_dir.join("logs")) {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for file in files.iter().filter(|f| f.to_string_lossy().ends_with("_stderr.txt")) {
                let component = file.file_name().unwrap_or_default().to_string_lossy().replace("_stderr.txt", "");
                for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
                    if let Some(at) = line.find("internal error (") {
                        let line = format!("{component}: {}", &line[at..]);
                        match internal_errors.iter_mut().find(|(l, _)| *l == line) {
                            Some((_, n)) => *n += 1,
                            None => internal_errors.push((line, 1)),
                        }
                    }
                }
            }
        }
        if !panics.is_empty() {
            eprintln!("bench: spin ({what}): {} line(s) with `panicked` in {}", panics.len(), log.display());
        }
        Self { what: what.to_owned(), log: log.to_owned(), panics, internal_errors }
    }
}

/// Runs the Spin half, or says in one line why there is none (`None`: no Spin binary).
fn spin_phase(root: &Path, bench_dir: &Path, args: &[String], spends: usize) -> Option<SpinRun> {
    let Some(binary) = crate::spin_binary(root) else {
        println!("bench: no Spin binary (set SCENEFIN_SPIN or put spin on PATH): the Spin comparison is skipped");
        return None;
    };
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("bench: the same runs under {} ({version})", binary.display());
    let mut run = SpinRun::new(binary, version);
    if let Err(e) = run_spin(root, bench_dir, args, spends, &mut run) {
        eprintln!("bench: the Spin run stopped: {e:#}");
        run.error = Some(format!("{e:#}"));
    }
    Some(run)
}

/// One `spin up`: what it serves, where, and where its state and output go.
struct SpinStart<'a> {
    /// What it is, for the document.
    what: &'a str,
    manifest: &'a Path,
    state_dir: &'a Path,
    /// The Wasmtime cache configuration (`--cache`).
    cache_config: &'a Path,
    env: &'a [(&'a str, &'a str)],
    log: &'a Path,
    /// A runtime config file (`--runtime-config-file`): the Redis runs.
    runtime_config: Option<&'a Path>,
}

/// Starts `spin up`, runs `body` on it, then reads its output and stops it, whatever `body` returned.
fn with_spin<T>(
    run: &mut SpinRun,
    start: &SpinStart,
    body: impl FnOnce(&mut Server, &mut SpinRun) -> Result<T>,
) -> Result<T> {
    let mut server = Server::spin(&run.binary, start)?;
    let result = body(&mut server, run);
    run.logs.push(LogCheck::read(start.what, start.log, start.state_dir));
    server.stop();
    result
}

fn run_spin(root: &Path, bench_dir: &Path, args: &[String], spends: usize, run: &mut SpinRun) -> Result<()> {
    let dir = bench_dir.join("spin");
    std::fs::create_dir_all(&dir)?;
    // A private Wasmtime cache, empty at first: the app's first start compiles its components (cold), the second finds
    // them there (warm).
    let cache_config = dir.join("wasmtime-cache.toml");
    let cache = dir.join("wasmtime-cache").display().to_string();
    std::fs::write(&cache_config, format!("[cache]\ndirectory = {cache:?}\n"))?;

    // The floor: the fixture's echo.
    let hello = dir.join("hello.lua");
    std::fs::write(&hello, format!("{HELLO_SCRIPT}{STATUS_TALLY}"))?;
    let fixture = SpinStart {
        what: "the fixture",
        manifest: &root.join("tests/fixtures/spin.toml"),
        state_dir: &dir.join("fixture-state"),
        cache_config: &cache_config,
        env: &[("SPIN_VARIABLE_TOKEN", "bench")],
        log: &dir.join("fixture.log"),
        runtime_config: None,
    };
    with_spin(run, &fixture, |spin, run| {
        wait_ready(spin, "/", None, SPIN_START_LIMIT)?;
        let load = Load { who: "spin", args, db: None };
        run.results.push(drive(spin, &load, "GET /", Kind::Floor, "/", &hello)?);
        Ok(())
    })?;

    // The app: cold start, then warm start, seed, drive.
    let state = dir.join("app-state");
    let db = state.join("sqlite_key_value.db");
    let manifest = root.join("spin.toml");
    let (cold_log, log) = (dir.join("app-cold.log"), dir.join("app.log"));
    let app = |what, log| SpinStart {
        what,
        manifest: &manifest,
        state_dir: &state,
        cache_config: &cache_config,
        env: &APP_ENV,
        log,
        runtime_config: None,
    };
    let started = Instant::now();
    with_spin(run, &app("the app, cold start", &cold_log), |spin, run| {
        wait_ready(spin, "/api/ops/funnel", Some(OPERATOR_TOKEN), SPIN_START_LIMIT)?;
        run.cold_ms = Some(ms(started.elapsed()));
        Ok(())
    })?;
    let started = Instant::now();
    with_spin(run, &app("the app", &log), |spin, run| {
        wait_ready(spin, "/api/ops/funnel", Some(OPERATOR_TOKEN), SPIN_START_LIMIT)?;
        run.warm_ms = Some(ms(started.elapsed()));
        run.idle_rss_kib = tree_rss_kib(spin.pid());
        println!(
            "bench: spin: startup cold {:.0} ms, warm {:.0} ms; idle RSS {} KiB",
            run.cold_ms.unwrap_or(f64::NAN),
            run.warm_ms.unwrap_or(f64::NAN),
            run.idle_rss_kib.unwrap_or(0)
        );
        let seeded = seed(&spin.addr, spends)?;
        let load = Load { who: "spin", args, db: Some(&db) };
        drive_routes(spin, &load, &dir, &seeded, true, &mut run.results)
    })
}

/// Drives each of the app's routes on `server` (seeded with `seeded`), their scripts in `dir`, into `results`; with
/// `tally`, the scripts also count the non-2xx statuses ([`STATUS_TALLY`]).
fn drive_routes(
    server: &Server,
    load: &Load,
    dir: &Path,
    seeded: &Seeded,
    tally: bool,
    results: &mut Vec<Outcome>,
) -> Result<()> {
    for (route, kind, path, script) in route_scripts(dir, seeded)? {
        let script = match script {
            Script::File(file) => file,
            // Signed now, for this server's data, so every timestamp is within the partner window for the whole run.
            Script::Spend => spend_script(dir, &seeded.campus)?,
        };
        if tally {
            let mut text = std::fs::read_to_string(&script)?;
            text.push_str(STATUS_TALLY);
            std::fs::write(&script, text)?;
        }
        results.push(drive(server, load, &route, kind, &path, &script)?);
    }
    Ok(())
}

/// A private `redis-server` on a free loopback port, without persistence, its files and output in its own
/// directory; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let out = std::fs::File::create(dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting redis-server")?;
        let mut redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = redis.child.try_wait() {
                bail!("redis-server on port {port} exited ({status}) (see {})", dir.join("redis.log").display());
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    /// A Spin runtime config file at `path` that makes this server the `default` key-value store.
    fn runtime_config(&self, path: &Path) -> Result<()> {
        let config =
            format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n", self.port);
        std::fs::write(path, config)?;
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis's own round trip: sequential `PING`s from one connection.
struct Rtt {
    p50_us: f64,
    mean_us: f64,
    samples: usize,
}

/// Times `samples` sequential `PING`s (after 200 unmeasured ones) on the Redis at `port`.
fn redis_rtt(port: u16, samples: usize) -> Result<Rtt> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = [0u8; 7];
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 200 {
        let started = Instant::now();
        stream.write_all(b"PING\r\n")?;
        stream.read_exact(&mut reply)?;
        if &reply != b"+PONG\r\n" {
            bail!("PING: unexpected reply {:?}", String::from_utf8_lossy(&reply));
        }
        if i >= 200 {
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    times.sort_by(f64::total_cmp);
    let mean_us = times.iter().sum::<f64>() / times.len().max(1) as f64;
    Ok(Rtt { p50_us: times.get(times.len() / 2).copied().unwrap_or(f64::NAN), mean_us, samples })
}

/// The app on Redis: the host, and Spin when there is one.
struct RedisRun {
    version: String,
    /// wrk's `-d`.
    seconds: String,
    rtt: Option<Rtt>,
    /// The host's routes (no floor).
    host: Vec<Outcome>,
    host_error: Option<String>,
    /// Spin's routes, its output and what stopped it, when there is a Spin binary.
    spin: Option<SpinRun>,
}

/// Runs the app on Redis, or says in one line why not (no `redis-server`).
fn redis_phase(
    root: &Path,
    bench_dir: &Path,
    args: &[String],
    spends: usize,
    spin: Option<&SpinRun>,
) -> std::result::Result<RedisRun, String> {
    let version = match Command::new("redis-server").arg("--version").output() {
        Ok(out) if out.status.success() => {
            // `Redis server v=7.0.15 sha=… malloc=… bits=64 build=…`
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let v = text.split_whitespace().find_map(|w| w.strip_prefix("v=")).unwrap_or("?");
            format!("redis-server {v}")
        }
        _ => {
            println!("bench: no redis-server (apt-get install redis-server): the Redis runs are skipped");
            return Err("`redis-server` is not installed (the Debian package `redis-server`)".to_owned());
        }
    };
    let dir = bench_dir.join("redis");
    let seconds = args.iter().find_map(|a| a.strip_prefix("-d")).unwrap_or("?").to_owned();
    let mut run = RedisRun { version, seconds, rtt: None, host: Vec::new(), host_error: None, spin: None };
    println!("bench: the app on Redis ({})", run.version);
    if let Err(e) = run_host_redis(root, &dir, args, spends, &mut run) {
        eprintln!("bench: the host's Redis run stopped: {e:#}");
        run.host_error = Some(format!("{e:#}"));
    }
    run.spin = spin.map(|spin| {
        let mut spin_run = SpinRun::new(spin.binary.clone(), spin.version.clone());
        if let Err(e) = run_spin_redis(root, bench_dir, args, spends, &mut spin_run) {
            eprintln!("bench: the Spin Redis run stopped: {e:#}");
            spin_run.error = Some(format!("{e:#}"));
        }
        spin_run
    });
    Ok(run)
}

/// The host on a fresh Redis: Redis's round trip first (idle), then the app seeded and driven.
fn run_host_redis(root: &Path, dir: &Path, args: &[String], spends: usize, run: &mut RedisRun) -> Result<()> {
    let host_dir = dir.join("host");
    std::fs::create_dir_all(&host_dir)?;
    let redis = Redis::start(&host_dir.join("redis"))?;
    let rtt = redis_rtt(redis.port, 2000)?;
    println!("bench: redis round trip (PING): p50 {:.1} us, mean {:.1} us", rtt.p50_us, rtt.mean_us);
    run.rtt = Some(rtt);
    let config = host_dir.join("runtime-config.toml");
    redis.runtime_config(&config)?;
    let state = host_dir.join("state");
    std::fs::create_dir_all(&state)?;
    let mut app = Server::host(root, &root.join("spin.toml"), &state, &APP_ENV, Some(&config))?;
    wait_ready(&mut app, "/api/ops/funnel", Some(OPERATOR_TOKEN), Duration::from_secs(300))?;
    let seeded = seed(&app.addr, spends)?;
    let load = Load { who: "host (Redis)", args, db: None };
    let result = drive_routes(&app, &load, &host_dir, &seeded, false, &mut run.host);
    app.stop();
    result
}

/// `spin up` on a fresh Redis (its runtime config naming it; the Spin run's private Wasmtime cache, so a warm
/// start), seeded and driven.
fn run_spin_redis(root: &Path, bench_dir: &Path, args: &[String], spends: usize, run: &mut SpinRun) -> Result<()> {
    let dir = bench_dir.join("redis/spin");
    std::fs::create_dir_all(&dir)?;
    let redis = Redis::start(&dir.join("redis"))?;
    let config = dir.join("runtime-config.toml");
    redis.runtime_config(&config)?;
    let cache_config = dir.join("wasmtime-cache.toml");
    let cache = bench_dir.join("spin/wasmtime-cache").display().to_string();
    std::fs::write(&cache_config, format!("[cache]\ndirectory = {cache:?}\n"))?;
    let start = SpinStart {
        what: "the app on Redis",
        manifest: &root.join("spin.toml"),
        state_dir: &dir.join("app-state"),
        cache_config: &cache_config,
        env: &APP_ENV,
        log: &dir.join("app.log"),
        runtime_config: Some(&config),
    };
    let result = with_spin(run, &start, |spin, run| {
        wait_ready(spin, "/api/ops/funnel", Some(OPERATOR_TOKEN), SPIN_START_LIMIT)?;
        let seeded = seed(&spin.addr, spends)?;
        let load = Load { who: "spin (Redis)", args, db: None };
        drive_routes(spin, &load, &dir, &seeded, true, &mut run.results)
    });
    drop(redis);
    result
}

/// Appended to the Spin runs' wrk scripts: counts the statuses wrk counts as errors (over 399) and keeps the problem
/// code (or the start of the body) of the first of each; `done` prints `status <code> <count> <problem>` lines.
const STATUS_TALLY: &str = r#"
-- The bench's status tally (Spin runs).
local tally_setup, tally_done = setup, done
local tally_threads = {}
function setup(thread)
  table.insert(tally_threads, thread)
  if tally_setup then tally_setup(thread) end
end
statuses = {}
problems = {}
function response(status, headers, body)
  if status > 399 then
    local k = tostring(status)
    statuses[k] = (statuses[k] or 0) + 1
    if problems[k] == nil then
      local code = string.match(body or "", '"code"%s*:%s*"([^"]*)"')
      problems[k] = code or (string.sub((string.gsub(body or "", "%s+", " ")), 1, 80))
    end
  end
end
function done(summary, latency, requests)
  if tally_done then tally_done(summary, latency, requests) end
  local counts, firsts = {}, {}
  for _, t in ipairs(tally_threads) do
    local problems = t:get("problems") or {}
    for k, n in pairs(t:get("statuses") or {}) do
      counts[k] = (counts[k] or 0) + n
      if firsts[k] == nil then firsts[k] = problems[k] end
    end
  end
  for k, n in pairs(counts) do
    io.write(string.format("status %s %d %s\n", k, n, firsts[k] or ""))
  end
end
"#;

/// wrk's `-d` from the environment variable `var` (`SCENEFIN_BENCH_SECONDS`, `SCENEFIN_BENCH_REDIS_SECONDS`), or
/// `default`.
fn bench_seconds(var: &str, default: u64) -> Result<u64> {
    let Ok(text) = std::env::var(var) else {
        return Ok(default);
    };
    let seconds: u64 = text.trim().parse().with_context(|| format!("{var}={text:?}"))?;
    // The signed spends carry the time they were signed at; the whole run must stay within the partner window.
    let limit = SIGNATURE_WINDOW_SECS.unsigned_abs() - 60;
    if !(1..=limit).contains(&seconds) {
        bail!("{var} must be 1 to {limit} (pre-signed spends expire after {SIGNATURE_WINDOW_SECS} s)");
    }
    Ok(seconds)
}

fn wrk_args(seconds: u64) -> Vec<String> {
    vec![
        format!("-t{THREADS}"),
        format!("-c{CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".into(),
        "--timeout=5s".into(),
    ]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// Polls `GET path` until it answers 200.
fn wait_ready(server: &mut Server, path: &str, bearer: Option<&str>, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let addr = server.addr.clone();
    loop {
        let addr = addr.as_str();
        if status_of(addr, path, bearer) == Some(200) {
            return Ok(());
        }
        if let Some(status) = server.exited() {
            bail!("the server for {addr} exited ({status}) before answering (see {})", server.log.display());
        }
        if Instant::now() > deadline {
            bail!("the server on {addr} did not answer GET {path} with 200 (see {})", server.log.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The status of a `GET` over a fresh connection, if any.
fn status_of(addr: &str, path: &str, bearer: Option<&str>) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// An HTTP call through curl: status and JSON body (or `Null`).
fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, String)],
) -> Result<(u16, Value)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, &format!("http://{addr}{path}")]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    if let Some(body) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", &body.to_string()]);
    }
    let out = cmd.output().context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status: u16 = code.trim().parse().with_context(|| format!("{method} {path}: no status ({text})"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn expect(what: &str, reply: (u16, Value)) -> Result<Value> {
    match reply {
        (200 | 201, body) => Ok(body),
        (status, body) => bail!("seeding {what}: {status} {body}"),
    }
}

fn operator(addr: &str, method: &str, path: &str, body: &Value) -> Result<Value> {
    expect(path, call(addr, method, path, Some(body), &[("authorization", format!("Bearer {OPERATOR_TOKEN}"))])?)
}

static NONCE: AtomicU64 = AtomicU64::new(1);

fn partner(addr: &str, partner_id: &str, secret: &str, method: &str, path: &str, body: &Value) -> Result<Value> {
    let bytes = body.to_string();
    let ts = now_secs().to_string();
    let nonce = format!("bench{:016x}", NONCE.fetch_add(1, Ordering::Relaxed));
    let signature = sign_partner(secret, &partner_canonical(method, path, &ts, &nonce, bytes.as_bytes()));
    let headers =
        [("x-partner-id", partner_id.to_owned()), ("x-timestamp", ts), ("x-nonce", nonce), ("x-signature", signature)];
    expect(path, call(addr, method, path, Some(body), &headers)?)
}

struct Seeded {
    token: String,
    /// Sessions of many customers: claims spread over them, as a campaign launch's crowd would.
    crowd: Vec<String>,
    quote_body: Value,
    campaign: String,
    campus: Campus,
}

/// A school's merchant POS, the cards it debits and the spends planned for them.
struct Campus {
    pos_id: String,
    pos_secret: String,
    cards: Vec<String>,
    /// One spend per pre-signed request: the card (an index into `cards`) and the amount.
    plan: Vec<(usize, i64)>,
}

const CAMPUS_PATH: &str = "/api/campus/spend";
/// How many cards (each bound by its own customer) the spends rotate over.
const CAMPUS_CARDS: usize = 50;
/// Bounds on the pre-signed spends: at most 10,000 per card, each at most 1 yuan, stays within the highest daily
/// limit a card takes (10,000 yuan).
const MIN_SPENDS: usize = 2_000;
const MAX_SPENDS: usize = 10_000 * CAMPUS_CARDS;
const MAX_DAILY_LIMIT_FEN: i64 = 1_000_000;
/// The largest top-up the API takes.
const MAX_TOPUP_FEN: i64 = 100_000;

/// How many customers the claim load is spread over.
const CROWD: usize = 200;

/// A session for customer `subject` (registering it).
fn login(addr: &str, subject: &str) -> Result<String> {
    let assertion = IdentityAssertion {
        provider: Provider::Wechat,
        subject: subject.into(),
        phone: None,
        card_fingerprint: None,
        iat: now_secs(),
    };
    let body = json!({"assertion": sign_assertion(IDENTITY_SECRET.as_bytes(), &assertion)});
    let session = expect("session", call(addr, "POST", "/api/sessions", Some(&body), &[])?)?;
    Ok(session["token"].as_str().context("session token")?.to_owned())
}

/// A customer session, a water biller with a bill bound to the customer, a coupon campaign that will not run out,
/// and a crowd of customers to claim it.
fn seed(addr: &str, spends: usize) -> Result<Seeded> {
    let token = login(addr, "bench_customer")?;
    let crowd = (0..CROWD).map(|i| login(addr, &format!("bench_crowd_{i}"))).collect::<Result<Vec<_>>>()?;
    let auth = [("authorization", format!("Bearer {token}"))];

    let biller = operator(
        addr,
        "POST",
        "/api/utility/billers",
        &json!({
            "id": "bench_water", "name": "Bench Water", "category": "water", "city": "shenzhen",
            "account_rule": {"min_len": 10, "max_len": 10, "charset": "digits"}, "exactness": "exact",
            "settlement_account": "6222000012345678",
            "discount": {"percent_bp": 500, "cap_fen": 1000, "budget_id": "bench_water_card", "budget_fen": 1_000_000_000}
        }),
    )?;
    let pid = biller["partner_id"].as_str().context("partner_id")?;
    let secret = biller["partner_secret"].as_str().context("partner_secret")?;
    let bills = json!({"bills": [{"bill_id": "BW-2026-11-0", "account_no": "8800112233", "period": "2026-11",
        "amount_fen": 12500, "due_date": "2027-01-31", "holder_name": "张三丰"}]});
    partner(addr, pid, secret, "PUT", "/api/utility/billers/bench_water/bills", &bills)?;
    let bind = json!({"biller_id": "bench_water", "account_no": "8800112233", "alias": "home"});
    expect("account", call(addr, "POST", "/api/utility/accounts", Some(&bind), &auth)?)?;
    let quote_body = json!({"biller_id": "bench_water", "account_no": "8800112233", "bill_ids": ["BW-2026-11-0"],
        "pay_with": "bank_card", "card_bin": BANK_BIN});
    expect("quote", call(addr, "POST", "/api/utility/quotes", Some(&quote_body), &auth)?)?;

    operator(
        addr,
        "POST",
        "/api/coupons/merchants",
        &json!({"merchant_id": "bench_cafe", "name": "Bench Cafe", "district": "nanshan",
            "stores": [{"store_id": "s1", "name": "Main"}]}),
    )?;
    operator(
        addr,
        "POST",
        "/api/coupons/campaigns",
        &json!({
            "id": "bench_coffee", "title": "bench", "kind": "daily", "merchant_ids": ["bench_cafe"],
            "coupon": {"type": "fixed_off", "amount_fen": 500, "min_spend_fen": 1500}, "validity": {"days_after_claim": 7},
            "schedule": {"starts_at": "2026-01-01T00:00:00+08:00", "ends_at": "2028-01-01T00:00:00+08:00"},
            "stock_total": 10_000_000, "per_customer_limit": 10_000_000, "budget_fen": 10_000_000_000_i64,
            "applies_to": ["merchant"]
        }),
    )?;
    let campus = seed_campus(addr, spends)?;
    Ok(Seeded { token, crowd, quote_body, campaign: "bench_coffee".into(), campus })
}

/// The `i`th planned spend: its card (in turn) and an amount from 1 fen to 1 yuan.
fn planned_spend(i: usize) -> (usize, i64) {
    let amount = 1 + (i as u64).wrapping_mul(2_654_435_761) % 100;
    (i % CAMPUS_CARDS, amount as i64)
}

/// A school, a canteen with POS credentials, and [`CAMPUS_CARDS`] cards issued in one batch, each bound by its own
/// customer, with the highest daily limit and topped up (by wallet, through the gateway's signed notification) with
/// at least what the planned spends will take from it.
fn seed_campus(addr: &str, spends: usize) -> Result<Campus> {
    let school =
        operator(addr, "POST", "/api/campus/schools", &json!({"id": "bench_uni", "name": "Bench University"}))?;
    let school_id = school["partner_id"].as_str().context("partner_id")?;
    let school_secret = school["partner_secret"].as_str().context("partner_secret")?;
    let merchant = json!({"merchant_id": "bench_canteen", "name": "Bench Canteen", "kind": "canteen"});
    let pos = partner(addr, school_id, school_secret, "POST", "/api/campus/schools/bench_uni/merchants", &merchant)?;
    let members: Vec<Value> = (0..CAMPUS_CARDS)
        .map(|i| {
            json!({"member_no": format!("B{i:04}"), "kind": "student", "name": format!("Student {i}"),
                "valid_until": "2099-12-31", "activation_code": format!("code{i:04}")})
        })
        .collect();
    let issued = partner(
        addr,
        school_id,
        school_secret,
        "PUT",
        "/api/campus/schools/bench_uni/members",
        &json!({ "members": members }),
    )?;
    if issued["rejected"] != json!([]) {
        bail!("seeding members: {issued}");
    }

    let plan: Vec<(usize, i64)> = (0..spends).map(planned_spend).collect();
    let mut need = [0i64; CAMPUS_CARDS];
    for &(card, amount) in &plan {
        need[card] += amount;
    }
    let mut cards = Vec::with_capacity(CAMPUS_CARDS);
    for (i, need) in need.iter().enumerate() {
        let auth = [("authorization", format!("Bearer {}", login(addr, &format!("bench_student_{i}"))?))];
        let (member_no, code) = (format!("B{i:04}"), format!("code{i:04}"));
        let bind = json!({"school_id": "bench_uni", "member_no": member_no, "activation_code": code});
        let card = expect("bind", call(addr, "POST", "/api/campus/cards/bind", Some(&bind), &auth)?)?;
        let card_id = card["card_id"].as_str().context("card_id")?.to_owned();
        if *need > MAX_DAILY_LIMIT_FEN {
            bail!("card {card_id} would spend {need} fen, over the highest daily limit");
        }
        let limits = format!("/api/campus/cards/{card_id}/limits");
        let limit = json!({"daily_limit_fen": MAX_DAILY_LIMIT_FEN});
        expect("limits", call(addr, "PUT", &limits, Some(&limit), &auth)?)?;
        for n in 0..(need + MAX_TOPUP_FEN - 1) / MAX_TOPUP_FEN {
            top_up(addr, &auth, &card_id, MAX_TOPUP_FEN, &format!("bench-topup-{i}-{n}"))?;
        }
        cards.push(card_id);
    }
    Ok(Campus {
        pos_id: pos["partner_id"].as_str().context("pos partner_id")?.to_owned(),
        pos_secret: pos["partner_secret"].as_str().context("pos partner_secret")?.to_owned(),
        cards,
        plan,
    })
}

/// A wallet top-up of a card: the order, then the gateway's signed notification that it was paid.
fn top_up(addr: &str, auth: &[(&str, String)], card_id: &str, amount_fen: i64, key: &str) -> Result<()> {
    let mut headers = auth.to_vec();
    headers.push(("idempotency-key", key.to_owned()));
    let body = json!({"card_id": card_id, "amount_fen": amount_fen, "pay_with": "other"});
    let placed = expect("top-up", call(addr, "POST", "/api/campus/topups", Some(&body), &headers)?)?;
    let order_id = placed["order"]["order_id"].as_str().context("top-up order_id")?;
    let now = now_secs();
    let paid_at = Timestamp::from_unix_secs(now).to_rfc3339();
    let event = json!({"event_id": format!("evt_{key}"), "order_id": order_id, "status": "succeeded",
        "paid_fen": amount_fen, "paid_at": paid_at, "instrument": {"type": "wallet"}});
    let id = format!("msg_evt_{key}");
    let signature = sign_webhook(GATEWAY_SECRET, &id, now, event.to_string().as_bytes())?;
    let headers = [("webhook-id", id), ("webhook-timestamp", now.to_string()), ("webhook-signature", signature)];
    let paid = expect("top-up payment", call(addr, "POST", "/api/campus/payments/notify", Some(&event), &headers)?)?;
    if paid["state"] != "paid" {
        bail!("seeding top-up {key}: {paid}");
    }
    Ok(())
}

/// A route's wrk script: written up front, or (the campus spends) signed just before the route runs.
enum Script {
    File(PathBuf),
    Spend,
}

type RouteScript = (String, Kind, String, Script);

/// One wrk Lua script per route.
fn route_scripts(dir: &Path, s: &Seeded) -> Result<Vec<RouteScript>> {
    let lua_str = |v: &str| format!("{v:?}");
    let bearer = |t: &str| format!("wrk.headers[\"Authorization\"] = {}\n", lua_str(&format!("Bearer {t}")));
    let me = format!("wrk.method = \"GET\"\n{}", bearer(&s.token));
    let quotes = format!(
        "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n{}",
        lua_str(&s.quote_body.to_string()),
        bearer(&s.token)
    );
    // A unique Idempotency-Key per request (thread number, start time and a counter), and the crowd's sessions in
    // turn, so claims spread over many customers.
    let tokens: Vec<String> = s.crowd.iter().map(|t| lua_str(&format!("Bearer {t}"))).collect();
    let claim = format!(
        "local tokens = {{{}}}\nlocal n = 0\nlocal threads = 0\n\
         function setup(thread) threads = threads + 1; thread:set(\"tid\", threads) end\n\
         function init(args) prefix = string.format(\"bench-%d-%d-\", tid or 0, os.time()) end\n\
         function request()\n  n = n + 1\n  wrk.headers[\"Idempotency-Key\"] = prefix .. n\n  \
         wrk.headers[\"Authorization\"] = tokens[(n + (tid or 0) * 7) % #tokens + 1]\n  \
         return wrk.format(\"POST\", nil, nil, \"\")\nend\n",
        tokens.join(", ")
    );
    let funnel = format!("wrk.method = \"GET\"\n{}", bearer(OPERATOR_TOKEN));
    let mut out = Vec::new();
    for (name, route, kind, path, text) in [
        ("me", "GET /api/me".to_owned(), Kind::Read, "/api/me".to_owned(), me),
        ("quotes", "POST /api/utility/quotes".to_owned(), Kind::Write, "/api/utility/quotes".to_owned(), quotes),
        (
            "claim",
            format!("POST /api/coupons/campaigns/{}/claim", s.campaign),
            Kind::Write,
            format!("/api/coupons/campaigns/{}/claim", s.campaign),
            claim,
        ),
        ("funnel", "GET /api/ops/funnel".to_owned(), Kind::Read, "/api/ops/funnel".to_owned(), funnel),
    ] {
        let file = dir.join(format!("{name}.lua"));
        std::fs::write(&file, text)?;
        out.push((route, kind, path, Script::File(file)));
    }
    // The last write route, before the funnel.
    out.insert(3, (format!("POST {CAMPUS_PATH}"), Kind::Write, CAMPUS_PATH.to_owned(), Script::Spend));
    Ok(out)
}

/// Signs every planned spend now (its own `pos_txn_id` and nonce) into `spend.tsv` (timestamp, nonce, signature,
/// body: one request a line) and writes the Lua script that walks them: wrk thread `t` of `THREADS` takes the lines
/// `t, t + THREADS, …`, formats them once in `init`, and sends each once. If a thread runs out it stops (an entry
/// sent twice would be a refused replay); `done` prints how many were used.
fn spend_script(dir: &Path, c: &Campus) -> Result<PathBuf> {
    let started = Instant::now();
    let ts = now_secs().to_string();
    let mut tsv = String::with_capacity(c.plan.len() * 200);
    for (i, &(card, amount)) in c.plan.iter().enumerate() {
        let body =
            json!({"pos_txn_id": format!("bench-{i}"), "card_id": c.cards[card], "amount_fen": amount}).to_string();
        let nonce = format!("spend-{i:010}");
        let signature =
            sign_partner(&c.pos_secret, &partner_canonical("POST", CAMPUS_PATH, &ts, &nonce, body.as_bytes()));
        writeln!(tsv, "{ts}\t{nonce}\t{signature}\t{body}")?;
    }
    let data = dir.join("spend.tsv");
    std::fs::write(&data, tsv)?;
    println!("bench: signed {} spends in {:.0} ms", c.plan.len(), ms(started.elapsed()));
    let lua = format!(
        r#"local data = {data:?}
local total = {total}
local nthreads = {THREADS}
local pos = {pos:?}
local path = {path:?}
local threads = {{}}
local reqs = {{}}
local stopped = false
used = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local mine = (tid or 1) - 1
  local n = 0
  for line in io.lines(data) do
    if n % nthreads == mine then
      local ts, nonce, sig, body = line:match("^(%d+)\t([%w_-]+)\t(%x+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", path, {{
        ["Host"] = wrk.headers["Host"], ["Content-Type"] = "application/json", ["X-Partner-Id"] = pos,
        ["X-Timestamp"] = ts, ["X-Nonce"] = nonce, ["X-Signature"] = sig }}, body)
    end
    n = n + 1
  end
end

function request()
  if used < #reqs then
    used = used + 1
    return reqs[used]
  end
  -- Out of signed requests: stop this thread; what is returned here is never counted.
  if not stopped then
    stopped = true
    wrk.thread:stop()
  end
  return reqs[#reqs]
end

function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do
    n = n + t:get("used")
  end
  io.write(string.format("signed requests used: %d of %d\n", n, total))
end
"#,
        data = data.display().to_string(),
        total = c.plan.len(),
        pos = c.pos_id,
        path = CAMPUS_PATH,
    );
    let file = dir.join("spend.lua");
    std::fs::write(&file, lua)?;
    Ok(file)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The RSS of `pid` and its descendants, summed (`spin up` serves from a `spin trigger http` child).
fn tree_rss_kib(pid: u32) -> Option<u64> {
    let sizes: Vec<u64> = process_tree(pid).into_iter().filter_map(rss_kib).collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum())
}

/// CPU time (user + system) process `pid` has used, in milliseconds (`/proc/<pid>/stat`, USER_HZ = 100).
fn cpu_ms(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let (user, system): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((user + system) as f64 * 10.0)
}

/// CPU time of `pid` and its descendants, summed, in milliseconds.
fn tree_cpu_ms(pid: u32) -> Option<f64> {
    let times: Vec<f64> = process_tree(pid).into_iter().filter_map(cpu_ms).collect();
    (!times.is_empty()).then(|| times.iter().sum())
}

/// SQLite's file change counter (bytes 24..28 of the database header), which a database in rollback-journal mode
/// (Spin's key-value store) bumps once per committed write transaction.
fn change_counter(db: &Path) -> Option<u32> {
    let mut file = std::fs::File::open(db).ok()?;
    file.seek(std::io::SeekFrom::Start(24)).ok()?;
    let mut bytes = [0u8; 4];
    file.read_exact(&mut bytes).ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// The change counter once the store is quiet (unchanged for 500 ms, or after 15 s): requests still in flight
/// when wrk stopped have finished.
fn settled_counter(db: &Path) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = change_counter(db)?;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = change_counter(db)?;
        if now == last || Instant::now() > deadline {
            return Some(now);
        }
        last = now;
    }
}

impl Outcome {
    /// Host CPU per completed request, in microseconds.
    fn cpu_us_per_request(&self) -> f64 {
        self.host_cpu_ms * 1000.0 / self.requests.max(1) as f64
    }

    /// Cores the host kept busy while wrk ran.
    fn host_cores(&self) -> f64 {
        self.host_cpu_ms / 1000.0 / self.seconds
    }

    /// Write transactions committed per completed request.
    /// (Every commit of the route, the in-flight requests' included, over the requests sent.)
    fn commits_per_request(&self) -> Option<f64> {
        self.commits.map(|c| c.total as f64 / c.sent.max(1) as f64)
    }

    /// Write transactions committed per second of the run.
    /// (While wrk ran.)
    fn commits_per_second(&self) -> Option<f64> {
        self.commits.map(|c| c.during as f64 / self.seconds)
    }
}

/// The server under load and how it is loaded.
struct Load<'a> {
    /// `host` or `spin`, for the progress lines.
    who: &'a str,
    /// wrk's arguments.
    args: &'a [String],
    /// The server's SQLite store, whose commits are counted (Spin).
    db: Option<&'a Path>,
}

/// Runs wrk against one route while sampling the server's RSS (and, with a `db`, counting the commits of the SQLite
/// store there).
fn drive(server: &Server, load: &Load, route: &str, kind: Kind, path: &str, script: &Path) -> Result<Outcome> {
    let Load { who, args, db } = *load;
    let addr = &server.addr;
    println!("bench: {who}: {route} ...");
    let pid = server.pid();
    let counter_before = db.and_then(settled_counter);
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = tree_rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (cpu_before, started) = (tree_cpu_ms(pid), Instant::now());
    let out = Command::new("wrk").args(args).arg("-s").arg(script).arg(format!("http://{addr}{path}")).output();
    let (cpu_after, seconds) = (tree_cpu_ms(pid), started.elapsed().as_secs_f64());
    let counter_end = db.and_then(change_counter);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let out = out.context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed on {route}: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut o = parse_wrk(&text, route, kind, peak.load(Ordering::Relaxed))
        .with_context(|| format!("parsing wrk output for {route}:\n{text}"))?;
    o.host_cpu_ms = cpu_after.zip(cpu_before).map_or(f64::NAN, |(after, before)| after - before);
    o.seconds = seconds;
    if let (Some(before), Some(end), Some(settled)) = (counter_before, counter_end, db.and_then(settled_counter)) {
        let in_flight = o.signed.map_or(CONNECTIONS as u64, |(used, _)| used.saturating_sub(o.requests));
        o.commits = Some(Commits {
            during: u64::from(end.wrapping_sub(before)),
            total: u64::from(settled.wrapping_sub(before)),
            sent: o.requests + in_flight,
        });
        println!(
            "bench: {who}: {route}: {} commits while wrk ran, {} after it stopped ({in_flight} requests in flight)",
            end.wrapping_sub(before),
            settled.wrapping_sub(end)
        );
    }
    println!(
        "bench: {who}: {route}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, non-2xx {}, socket errors {}, peak RSS {} KiB, \
         CPU {:.0} us/request",
        o.rps,
        o.p50_ms,
        o.p99_ms,
        o.non_2xx,
        o.socket_errors,
        o.peak_rss_kib,
        o.cpu_us_per_request()
    );
    if let Some(commits) = o.commits_per_request() {
        println!("bench: {who}: {route}: {commits:.1} commits per request");
    }
    for (status, n, problem) in &o.statuses {
        println!("bench: {who}: {route}: {n} × {status} {problem}");
    }
    if let Some((used, total)) = o.signed {
        println!("bench: {who}: {route}: {used} of {total} signed requests used");
        if used >= total {
            eprintln!("bench: {who}: {route}: WARNING: the signed requests ran out; wrk's threads stopped early");
        }
    }
    Ok(o)
}

/// `635.91us`, `3.45ms`, `1.02s`, `2.00m` in milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

fn parse_wrk(text: &str, route: &str, kind: Kind, peak_rss_kib: u64) -> Option<Outcome> {
    let mut rps = None;
    let (mut p50, mut p99, mut requests) = (None, None, None);
    let (mut non_2xx, mut socket_errors) = (0, 0);
    let mut signed = None;
    let mut statuses = Vec::new();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => rps = n.parse().ok(),
            ["50%", d] => p50 = duration_ms(d),
            ["99%", d] => p99 = duration_ms(d),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().ok()?,
            ["signed", "requests", "used:", used, "of", total] => {
                signed = Some((used.parse().ok()?, total.parse().ok()?))
            }
            ["status", status, n, problem @ ..] => {
                statuses.push((status.parse().ok()?, n.parse().ok()?, problem.join(" ")));
            }
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum();
            }
            _ => {}
        }
    }
    Some(Outcome {
        route: route.to_owned(),
        kind,
        rps: rps?,
        p50_ms: p50?,
        p99_ms: p99?,
        requests: requests?,
        non_2xx,
        socket_errors,
        peak_rss_kib,
        host_cpu_ms: f64::NAN,
        seconds: f64::NAN,
        signed,
        statuses,
        commits: None,
    })
}

/// Each spin.toml component's `.wasm` and its size in bytes.
fn wasm_sizes(root: &Path) -> Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(root.join("spin.toml"))?;
    let doc: toml::Table = toml::from_str(&text)?;
    let mut out = Vec::new();
    if let Some(components) = doc.get("component").and_then(|c| c.as_table()) {
        for (id, c) in components {
            let source = c.get("source").and_then(|s| s.as_str()).context("component source")?;
            let size = std::fs::metadata(root.join(source)).with_context(|| source.to_owned())?.len();
            out.push((id.clone(), size));
        }
    }
    Ok(out)
}

fn machine() -> (String, String) {
    let cores = std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "?".into());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
    (cores, model)
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// What the e2e test `kv_ops` measured: its table, parsed, and each route's calls.
struct KvOps {
    /// The table as the test wrote it (`target/kv-ops.md`), if it wrote one in this run.
    table: Option<String>,
    rows: Vec<KvRow>,
    /// Each route's calls (`target/kv-ops-trace.md`): the route as the table names it, and one line per call.
    traces: Vec<(String, Vec<String>)>,
    /// Whether the test passed, and if not, how it ended.
    passed: bool,
    status: String,
}

/// One route of the `kv_ops` table.
struct KvRow {
    /// As the table names it, without the backticks (`{id}` for a path segment, a note in parentheses after it).
    route: String,
    /// Store operations: keys read or written (a batch counts each key), and the route's target.
    keys: Option<u64>,
    keys_target: Option<u64>,
    /// Sequential round trips: calls the handler waited for (a batch is one), and the route's target.
    calls: Option<u64>,
    calls_target: Option<u64>,
}

impl KvRow {
    /// The route's round-trip target: the table's, never above [`MAX_ROUND_TRIPS`].
    fn calls_limit(&self) -> u64 {
        self.calls_target.map_or(MAX_ROUND_TRIPS, |t| t.min(MAX_ROUND_TRIPS))
    }
}

impl KvOps {
    /// The row for `route` (`{id}` in the table matches any path segment; a note in parentheses after the path is
    /// ignored).
    fn row(&self, route: &str) -> Option<&KvRow> {
        let want: Vec<&str> = route.split(['/', ' ']).collect();
        self.rows.iter().find(|row| {
            let name = row.route.split(" (").next().unwrap_or_default();
            let have: Vec<&str> = name.split(['/', ' ']).collect();
            have.len() == want.len()
                && have.iter().zip(&want).all(|(h, w)| h == w || (h.starts_with('{') && h.ends_with('}')))
        })
    }

    /// The calls of the table's route `route`.
    fn trace(&self, route: &str) -> Option<&[String]> {
        self.traces.iter().find(|(r, _)| r == route).map(|(_, calls)| calls.as_slice())
    }

    /// Round trips on Redis as Spin's store serves it: a batch get there is refused and the guest falls back to
    /// one `GET` per key, so each `get-many [n]` is `n` round trips (from the route's calls).
    fn redis_round_trips(&self, route: &str) -> Option<u64> {
        let calls = self.trace(route)?;
        Some(calls.iter().map(|c| if c.starts_with("get-many") { batch_len(c) } else { 1 }).sum())
    }
}

/// The keys of a traced call: `n` for `kind [n] first-key …`, else 1.
fn batch_len(call: &str) -> u64 {
    call.split_whitespace().nth(1).and_then(|w| w.strip_prefix('[')?.strip_suffix(']')?.parse().ok()).unwrap_or(1)
}

/// Parses the `kv_ops` table by its header: `store operations` (or the older `KV operations`) and `sequential round
/// trips` columns, each followed by its `target` (or `budget`) column.
fn parse_kv_table(table: &str) -> Vec<KvRow> {
    let mut lines = table.lines().map(str::trim).filter(|l| l.starts_with('|'));
    let cells = |line: &str| -> Vec<String> {
        line.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`').to_owned()).collect()
    };
    let Some(header) = lines.next().map(cells) else { return Vec::new() };
    let (mut keys, mut calls) = (None, None);
    for (i, name) in header.iter().enumerate() {
        let name = name.to_ascii_lowercase();
        if name.starts_with("store operations") || name.starts_with("kv operations") {
            keys = Some(i);
        } else if name.starts_with("sequential round trips") {
            calls = Some(i);
        }
    }
    let target_after = |col: Option<usize>| {
        col.map(|c| c + 1).filter(|&t| header.get(t).is_some_and(|h| h == "target" || h == "budget"))
    };
    let (keys_target, calls_target) = (target_after(keys), target_after(calls));
    lines
        .map(cells)
        .filter(|row| !row.first().is_some_and(|c| c.starts_with("---")))
        .filter_map(|row| {
            let number = |col: Option<usize>| col.and_then(|c| row.get(c)?.parse::<u64>().ok());
            Some(KvRow {
                route: row.first().filter(|r| !r.is_empty())?.clone(),
                keys: number(keys),
                keys_target: number(keys_target),
                calls: number(calls),
                calls_target: number(calls_target),
            })
        })
        .collect()
}

/// Parses `target/kv-ops-trace.md`: `## <route>: <n> calls, <m> keys`, then the calls, one an indented line.
fn parse_kv_trace(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("## ") {
            let route = head.rsplit_once(": ").map_or(head, |(route, _)| route);
            out.push((route.to_owned(), Vec::new()));
        } else if let Some((_, calls)) = out.last_mut()
            && line.starts_with("    ")
            && !line.trim().is_empty()
        {
            calls.push(line.trim().to_owned());
        }
    }
    out
}

/// A file written since `since`.
fn read_if_newer(path: &Path, since: SystemTime) -> Option<String> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// Runs the e2e test that counts store operations and round trips per route; its table is written before its
/// budgets are enforced, so it is read (if this run wrote it) whether or not the test passed.
fn kv_ops_table(root: &Path) -> KvOps {
    println!("bench: counting store operations per route (cargo test ... kv_ops)");
    // Modification times can be coarse: anything from a second before the run is this run's.
    let since = SystemTime::now() - Duration::from_secs(1);
    let status = Command::new(cargo())
        .current_dir(root)
        .args(["test", "-q", "-p", "scenefin-e2e", "--test", "e2e", "kv_ops"])
        .status();
    let (passed, status) = match status {
        Ok(s) if s.success() => (true, "passed".to_owned()),
        Ok(s) => (false, format!("failed ({s})")),
        Err(e) => (false, format!("did not run ({e})")),
    };
    if !passed {
        eprintln!("bench: the kv_ops test {status}");
    }
    let table = read_if_newer(&root.join("target/kv-ops.md"), since);
    let rows = table.as_deref().map(parse_kv_table).unwrap_or_default();
    let traces =
        read_if_newer(&root.join("target/kv-ops-trace.md"), since).map(|t| parse_kv_trace(&t)).unwrap_or_default();
    KvOps { table, rows, traces, passed, status }
}

/// The document's section on store operations and round trips per route.
fn kv_ops_section(d: &mut String, kv: &KvOps) -> Result<()> {
    writeln!(d)?;
    writeln!(d, "## Store operations and round trips per route")?;
    writeln!(d)?;
    writeln!(
        d,
        "Counted by the host in a steady state by the e2e test `kv_ops` (one request after a warm-up, nothing else \
         running): store operations are the keys read or written (a batch counts each key), sequential round trips \
         the calls the handler waited for (a batch is one). Partner authentication, idempotency records, ledger \
         postings and customer events are included. Each route's calls are in `target/kv-ops-trace.md`."
    )?;
    writeln!(d)?;
    match (&kv.table, kv.passed) {
        (Some(table), true) => {
            writeln!(d, "The test passed: every route is within its targets.")?;
            writeln!(d)?;
            d.push_str(table);
        }
        (Some(table), false) => {
            writeln!(
                d,
                "**The `kv_ops` test {}**: it enforces these targets after writing the table, so the table is this \
                 run's.",
                kv.status
            )?;
            writeln!(d)?;
            d.push_str(table);
        }
        (None, _) => {
            writeln!(d, "Not available: the `kv_ops` test {} and wrote no `target/kv-ops.md`.", kv.status)?;
        }
    }
    Ok(())
}

/// A route's calls on keys of one prefix.
struct CallGroup {
    label: String,
    calls: u64,
    keys: u64,
    /// How many calls of each kind (`get`, `set-many`, …), in order of appearance.
    kinds: Vec<(String, u64)>,
}

/// A route's calls grouped by key prefix (the key's first two segments; creation markers, `…:~born`, apart),
/// largest first by keys (`by_keys`) or calls.
fn call_groups(calls: &[String], by_keys: bool) -> Vec<CallGroup> {
    let mut groups: Vec<CallGroup> = Vec::new();
    for call in calls {
        let words: Vec<&str> = call.split_whitespace().collect();
        let Some(&kind) = words.first() else { continue };
        let key = words.iter().skip(1).find(|w| !w.starts_with('[')).copied().unwrap_or("");
        let label = if key.contains(":~born") {
            "…:~born (creation markers)".to_owned()
        } else if key.is_empty() {
            "(no key)".to_owned()
        } else {
            let parts: Vec<&str> = key.split(':').take(2).collect();
            format!("{}:…", parts.join(":"))
        };
        let i = match groups.iter().position(|g| g.label == label) {
            Some(i) => i,
            None => {
                groups.push(CallGroup { label, calls: 0, keys: 0, kinds: Vec::new() });
                groups.len() - 1
            }
        };
        let group = &mut groups[i];
        group.calls += 1;
        group.keys += batch_len(call);
        match group.kinds.iter_mut().find(|(k, _)| k == kind) {
            Some((_, count)) => *count += 1,
            None => group.kinds.push((kind.to_owned(), 1)),
        }
    }
    groups.sort_by(|a, b| if by_keys { b.keys.cmp(&a.keys) } else { b.calls.cmp(&a.calls) });
    groups
}

/// The top three groups of a route's calls, for a reason: "`util:budget:…` 11 calls, 13 keys (5 get, …)".
fn top_groups(calls: &[String], by_keys: bool) -> String {
    let groups = call_groups(calls, by_keys);
    let shown: Vec<String> = groups
        .iter()
        .take(3)
        .map(|g| {
            let kinds: Vec<String> = g.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let keys = if g.keys != g.calls { format!(", {} keys", g.keys) } else { String::new() };
            let s = if g.calls == 1 { "" } else { "s" };
            format!("`{}` {} call{s}{keys} ({})", g.label, g.calls, kinds.join(", "))
        })
        .collect();
    let rest = groups.len().saturating_sub(3);
    let rest = if rest > 0 { format!(" and {rest} smaller group(s)") } else { String::new() };
    format!("{}{rest}", shown.join("; "))
}

fn report(
    host: &HostRun,
    spin: Option<&SpinRun>,
    redis: &std::result::Result<RedisRun, String>,
    kv_ops: &KvOps,
    args: &[String],
    sizes: &[(String, u64)],
) -> Result<String> {
    let HostRun { results, cold_ms, warm_ms, idle_rss_kib } = host;
    let (cold_ms, warm_ms, idle_rss_kib) = (*cold_ms, *warm_ms, *idle_rss_kib);
    let floor = results.iter().find(|r| r.kind == Kind::Floor).map(|r| r.rps).unwrap_or(f64::NAN);
    let (cores, model) = machine();
    let mut d = String::new();
    writeln!(d, "# Benchmarks")?;
    writeln!(d)?;
    writeln!(d, "Generated by `cargo xtask bench` (xtask/src/bench.rs); do not edit by hand, run it again.")?;
    writeln!(d)?;
    writeln!(d, "- Date: {}", today())?;
    writeln!(d, "- Machine: {cores} cores (`nproc`), {model}")?;
    writeln!(
        d,
        "- Host: `target/debug/scenefin-host` (dev profile; its dependencies wasmtime, cranelift, hyper, tokio and \
         rusqlite are compiled at opt-level 3 in this workspace), components from `target/wasm32-wasip2/release`, \
         SQLite store, loopback."
    )?;
    writeln!(
        d,
        "- Load: `wrk {}` from a second process on the same machine (wrk and the host share the cores).",
        args.join(" ")
    )?;
    writeln!(
        d,
        "- Floor: the host's test fixture (`tests/fixtures/spin.toml`, `GET /`: the echo), served by the same binary \
         just before the app."
    )?;
    writeln!(
        d,
        "- Customers: `/api/me` and quotes from one customer; coupon claims rotate over {CROWD} customers, each request \
         with its own `Idempotency-Key` (a campaign launch's crowd, not one customer claiming thousands)."
    )?;
    for r in results {
        if let Some((used, total)) = r.signed {
            let ran_out = if used >= total { " (**ran out**: wrk's threads stopped early)" } else { "" };
            writeln!(
                d,
                "- Campus spends (`{}`): one canteen POS debiting {CAMPUS_CARDS} cards in turn (each bound by its own \
                 customer, topped up through a gateway-notified payment), 1 fen to 1 yuan each; every request signed \
                 just before the run with its own `pos_txn_id` and nonce, {total} prepared, {used} sent (completed or \
                 in flight when wrk stopped){ran_out}.",
                r.route
            )?;
        }
    }
    spin_setup(&mut d, spin)?;
    if let Err(why) = redis {
        writeln!(d, "- Redis: {why}, so this run has no Redis columns.")?;
    }
    // Spin's outcome for a route, if it ran.
    let spin_of = |route: &str| spin.and_then(|s| s.results.iter().find(|r| r.route == route));
    let spin_columns = spin.is_some_and(|s| !s.results.is_empty());
    writeln!(d)?;
    writeln!(d, "## Routes")?;
    writeln!(d)?;
    let (spin_head, spin_rule) = if spin_columns {
        (" Spin req/s | Spin p99 | Spin non-2xx | host/Spin |", "---:|---:|---:|---:|")
    } else {
        ("", "")
    };
    writeln!(
        d,
        "| route | kind | requests | req/s | vs floor | p50 | p99 | non-2xx | socket errors | peak RSS | host CPU per \
         request | host cores busy |{spin_head}"
    )?;
    writeln!(d, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{spin_rule}")?;
    for r in results {
        let kind = match r.kind {
            Kind::Floor => "floor",
            Kind::Read => "read",
            Kind::Write => "write",
        };
        let spin_cells = match spin_of(&r.route) {
            _ if !spin_columns => String::new(),
            None => " — | — | — | — |".to_owned(),
            Some(s) => {
                let socket =
                    if s.socket_errors > 0 { format!(" (+{} socket)", s.socket_errors) } else { String::new() };
                format!(" {:.0} | {:.2} ms | {}{socket} | {:.1}× |", s.rps, s.p99_ms, s.non_2xx, r.rps / s.rps)
            }
        };
        writeln!(
            d,
            "| `{}` | {kind} | {} | {:.0} | {:.0}% | {:.2} ms | {:.2} ms | {} | {} | {:.1} MiB | {:.0} µs | {:.2} |{spin_cells}",
            r.route,
            r.requests,
            r.rps,
            100.0 * r.rps / floor,
            r.p50_ms,
            r.p99_ms,
            r.non_2xx,
            r.socket_errors,
            r.peak_rss_kib as f64 / 1024.0,
            r.cpu_us_per_request(),
            r.host_cores()
        )?;
    }
    if let Some(spin) = spin.filter(|_| spin_columns) {
        host_vs_spin(&mut d, results, spin, kv_ops)?;
    }
    if let Ok(redis) = redis {
        redis_section(&mut d, redis, kv_ops)?;
    }
    writeln!(d)?;
    writeln!(d, "## Startup, memory, size")?;
    writeln!(d)?;
    writeln!(
        d,
        "- Startup to the first `200` (`GET /api/ops/funnel`), spin.toml: cold (empty module cache) {cold_ms:.0} ms, warm (second start, cached) {warm_ms:.0} ms."
    )?;
    writeln!(
        d,
        "- Host RSS: {:.1} MiB idle after the warm start; peak under load per route in the table (VmRSS sampled every 100 ms).",
        idle_rss_kib as f64 / 1024.0
    )?;
    if let Some(spin) = spin {
        spin_startup(&mut d, spin)?;
    }
    writeln!(d)?;
    writeln!(d, "| component | .wasm size |")?;
    writeln!(d, "|---|---:|")?;
    for (id, size) in sizes {
        writeln!(d, "| {id} | {:.1} KiB |", *size as f64 / 1024.0)?;
    }
    writeln!(d)?;
    writeln!(d, "## Targets")?;
    writeln!(d)?;
    writeln!(d, "| target | measured | status |")?;
    writeln!(d, "|---|---|---|")?;
    let largest = sizes.iter().max_by_key(|(_, s)| *s);
    if let Some((id, size)) = largest {
        writeln!(
            d,
            "| every component ≤ 1 MiB | largest: {id}, {:.1} KiB | {} |",
            *size as f64 / 1024.0,
            mark(*size <= MAX_WASM_BYTES)
        )?;
    }
    for r in results.iter().filter(|r| r.kind != Kind::Floor) {
        let (want, what) = match r.kind {
            Kind::Read => (READ_RATIO, "read"),
            _ => (write_ratio(&r.route), "write"),
        };
        let ratio = r.rps / floor;
        writeln!(
            d,
            "| `{}` ({what}) ≥ {:.0}% of the floor's req/s at c=32 | {:.0}% ({:.0} / {:.0}) | {} |",
            r.route,
            want * 100.0,
            ratio * 100.0,
            r.rps,
            floor,
            mark(ratio >= want)
        )?;
    }
    for r in results {
        writeln!(
            d,
            "| `{}` p99 ≤ {MAX_P99_MS:.0} ms | {:.2} ms | {} |",
            r.route,
            r.p99_ms,
            mark(r.p99_ms <= MAX_P99_MS)
        )?;
    }
    for r in results {
        let errors = r.non_2xx + r.socket_errors;
        writeln!(
            d,
            "| `{}` zero errors | {} non-2xx, {} socket | {} |",
            r.route,
            r.non_2xx,
            r.socket_errors,
            mark(errors == 0)
        )?;
    }
    writeln!(d, "| startup with cache ≤ 1 s | {warm_ms:.0} ms | {} |", mark(warm_ms <= MAX_WARM_START_MS))?;
    kv_targets(&mut d, kv_ops)?;
    for (h, s) in spin_writes(results, spin) {
        writeln!(
            d,
            "| `{}` on Spin (SQLite) ≥ 1/3 of the host's req/s | {:.0} / {:.0} = {:.2} (1/{:.1}) | {} |",
            h.route,
            s.rps,
            h.rps,
            s.rps / h.rps,
            h.rps / s.rps,
            mark(s.rps >= h.rps * SPIN_WRITE_SHARE)
        )?;
    }
    why_not_met(&mut d, results, spin, kv_ops, largest)?;
    Ok(d)
}

/// The write routes that ran on the host and on Spin (SQLite), with both outcomes.
fn spin_writes<'a>(host: &'a [Outcome], spin: Option<&'a SpinRun>) -> Vec<(&'a Outcome, &'a Outcome)> {
    let Some(spin) = spin else { return Vec::new() };
    host.iter()
        .filter(|h| h.kind == Kind::Write)
        .filter_map(|h| spin.results.iter().find(|s| s.route == h.route).map(|s| (h, s)))
        .collect()
}

/// The Targets rows from the `kv_ops` table: store operations ≤ the route's target, sequential round trips ≤ 8.
fn kv_targets(d: &mut String, kv: &KvOps) -> Result<()> {
    if kv.rows.is_empty() {
        writeln!(
            d,
            "| store operations and sequential round trips per route (`kv_ops`) | not measured: the test {} and wrote \
             no table | **not met** |",
            kv.status
        )?;
        return Ok(());
    }
    if !kv.passed {
        writeln!(
            d,
            "| the `kv_ops` test, which enforces the budgets below | {} (its table is written before its assertions, \
             so the rows below are this run's) | **not met** |",
            kv.status
        )?;
    }
    for row in &kv.rows {
        if let (Some(keys), Some(target)) = (row.keys, row.keys_target) {
            writeln!(d, "| `{}` store operations ≤ {target} | {keys} | {} |", row.route, mark(keys <= target))?;
        }
    }
    for row in &kv.rows {
        let limit = row.calls_limit();
        match row.calls {
            Some(calls) => writeln!(
                d,
                "| `{}` sequential round trips ≤ {limit} | {calls} | {} |",
                row.route,
                mark(calls <= limit)
            )?,
            None => writeln!(
                d,
                "| `{}` sequential round trips ≤ {limit} | not in the `kv_ops` table | **not met** |",
                row.route
            )?,
        }
    }
    Ok(())
}

/// The Redis section: how it ran, Redis's round trip, each route's p50 and rate next to its round trips, and how the
/// p50 relates to round trips × the round trip.
fn redis_section(d: &mut String, redis: &RedisRun, kv: &KvOps) -> Result<()> {
    writeln!(d)?;
    writeln!(d, "## On Redis")?;
    writeln!(d)?;
    let spin_how = match &redis.spin {
        Some(spin) => format!(
            "; Spin: `spin up --runtime-config-file` with the same kind of file (`{}`), its private Wasmtime cache from \
             the run above",
            spin.version
        ),
        None => "; no Spin binary, so no Spin on Redis".to_owned(),
    };
    writeln!(
        d,
        "- `{}`, on loopback, a fresh private instance for each server without persistence (`--save \"\" --appendonly \
         no`, as the e2e suites run it); the app seeded through the same APIs; wrk as above but `-d{}` \
         (`SCENEFIN_BENCH_REDIS_SECONDS`). The host: `scenefin-host up --runtime-config-file` with \
         `[key_value_store.default] type = \"redis\"`, answering guests as Spin's Redis store does{spin_how}.",
        redis.version, redis.seconds
    )?;
    if let Some(rtt) = &redis.rtt {
        writeln!(
            d,
            "- Redis round trip: p50 {:.0} µs, mean {:.0} µs ({} sequential `PING`s over one connection to the idle \
             server, before the host's run).",
            rtt.p50_us, rtt.mean_us, rtt.samples
        )?;
    }
    writeln!(
        d,
        "- Spin's Redis store refuses a batch get (it sends `KEYS k1 k2 …`), and the guest then reads each key with \
         its own `GET`, so on Redis a route's round trips are its sequential round trips with each `get-many [n]` \
         counted n times (from `target/kv-ops-trace.md`)."
    )?;
    if let Some(error) = &redis.host_error {
        writeln!(d, "- **The host's Redis run stopped early**: {}", quoted(&one_line(error)))?;
    }
    if let Some(spin) = &redis.spin {
        if let Some(error) = &spin.error {
            writeln!(d, "- **Spin's Redis run stopped early**: {}", quoted(&one_line(error)))?;
        }
        spin_problems(d, spin, " on Redis")?;
    }
    let spin_results = redis.spin.as_ref().map(|s| s.results.as_slice());
    let spin_of = |route: &str| spin_results.and_then(|r| r.iter().find(|o| o.route == route));
    let row_of = |route: &str| kv.row(route);
    let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let cell = |o: Option<&Outcome>| o.map_or_else(|| "—".to_owned(), |o| format!("{:.2} ms / {:.0}", o.p50_ms, o.rps));
    let errors = |o: Option<&Outcome>| o.map_or_else(|| "—".to_owned(), |o| (o.non_2xx + o.socket_errors).to_string());
    writeln!(d)?;
    let spin_head = if redis.spin.is_some() { " Spin on Redis: p50 / req/s |" } else { "" };
    let spin_rule = if redis.spin.is_some() { "---:|" } else { "" };
    writeln!(
        d,
        "| route | sequential round trips (`kv_ops`) | round trips on Redis | host on Redis: p50 / req/s |{spin_head} \
         non-2xx + socket errors (host{}) |",
        if redis.spin.is_some() { " / Spin" } else { "" }
    )?;
    writeln!(d, "|---|---:|---:|---:|{spin_rule}---:|")?;
    for h in &redis.host {
        let row = row_of(&h.route);
        let on_redis = row.and_then(|r| kv.redis_round_trips(&r.route));
        let s = spin_of(&h.route);
        let spin_cell = if redis.spin.is_some() { format!(" {} |", cell(s)) } else { String::new() };
        let errs = if redis.spin.is_some() { format!("{} / {}", errors(Some(h)), errors(s)) } else { errors(Some(h)) };
        writeln!(
            d,
            "| `{}` | {} | {} | {} |{spin_cell} {errs} |",
            h.route,
            n(row.and_then(|r| r.calls)),
            n(on_redis),
            cell(Some(h))
        )?;
    }
    // One sentence: round trips × Redis's round trip against each write route's p50.
    let Some(rtt) = &redis.rtt else { return Ok(()) };
    let mut each = Vec::new();
    let (mut host_shares, mut spin_shares) = (Vec::new(), Vec::new());
    for h in redis.host.iter().filter(|h| h.kind == Kind::Write) {
        let Some(row) = row_of(&h.route) else { continue };
        let Some(trips) = kv.redis_round_trips(&row.route).or(row.calls) else { continue };
        let wait_ms = trips as f64 * rtt.p50_us / 1000.0;
        host_shares.push(wait_ms / h.p50_ms);
        let spin = spin_of(&h.route).map_or_else(String::new, |s| {
            spin_shares.push(wait_ms / s.p50_ms);
            format!(" and {:.1} ms on Spin", s.p50_ms)
        });
        each.push(format!(
            "`{}` {trips} × {:.0} µs = {wait_ms:.1} ms against a p50 of {:.1} ms on the host{spin} ({CONNECTIONS} / {:.0} \
             req/s = {:.1} ms by Little's law)",
            h.route,
            rtt.p50_us,
            h.p50_ms,
            h.rps,
            CONNECTIONS as f64 * 1000.0 / h.rps
        ));
    }
    if each.is_empty() {
        return Ok(());
    }
    let pct = |shares: &[f64]| {
        let (lo, hi) = shares.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        if shares.len() > 1 { format!("{:.0}–{:.0}%", lo * 100.0, hi * 100.0) } else { format!("{:.0}%", hi * 100.0) }
    };
    let spin_share = if spin_shares.is_empty() { String::new() } else { format!(" ({} of Spin's)", pct(&spin_shares)) };
    let most = host_shares.iter().all(|&s| s < 0.5);
    writeln!(d)?;
    writeln!(
        d,
        "**Round trips × Redis's round trip.** Waiting for Redis alone, one after another, costs a request its round \
         trips on Redis × the idle round trip: {}. At c={CONNECTIONS} that is {} of the host's p50{spin_share}: {}",
        each.join("; "),
        pct(&host_shares),
        if most {
            "the rest is each request queueing behind the others in flight for the CPU that the server, redis-server \
             and wrk share, and the CPU a request takes grows with its store calls too (each is a host call, a Redis \
             command and a reply to parse)."
        } else {
            "the waiting for Redis is most of the p50, so on Redis the round trips set the latency."
        }
    )?;
    Ok(())
}

/// Whitespace (newlines in an error chain) as single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A path under the workspace's `target/` as `target/...`; any other path whole.
fn shown(path: &Path) -> String {
    let text = path.display().to_string();
    match text.rfind("/target/") {
        Some(at) => text[at + 1..].to_owned(),
        None => text,
    }
}

/// A line of a log, safe inside a Markdown code span and not too long.
fn quoted(line: &str) -> String {
    let line: String = line.trim().replace('`', "'").chars().take(240).collect();
    format!("`{line}`")
}

/// The document's lines on how Spin was run, or that it was not.
fn spin_setup(d: &mut String, spin: Option<&SpinRun>) -> Result<()> {
    let Some(spin) = spin else {
        writeln!(
            d,
            "- Spin: no Spin binary found (`SCENEFIN_SPIN`, `spin` on `PATH`, `../shared/tools/spin/install`), so this \
             run has no Spin columns."
        )?;
        return Ok(());
    };
    let spends = spin
        .results
        .iter()
        .find_map(|r| r.signed)
        .map(|(used, total)| {
            let ran_out = if used >= total { ", **ran out**" } else { "" };
            format!(" (its campus spends signed just before its run: {total} prepared, {used} sent{ran_out})")
        })
        .unwrap_or_default();
    writeln!(
        d,
        "- Spin: `{}` (`{}`), run right after the host on the same machine with the same wrk settings: `spin up` on \
         Spin's default SQLite key-value store (a fresh state dir), the same variables, a private Wasmtime cache. Its \
         floor is the same fixture's echo; the app is seeded through the same APIs with its own data{spends}. Its wrk \
         scripts add a Lua `response` hook that tallies the non-2xx statuses (work for wrk only). Commits: SQLite's \
         file change counter (one per write transaction in Spin's rollback-journal store); per request, all a route \
         committed until the store was quiet again over the requests sent (completed, and the {CONNECTIONS} in flight \
         when wrk stopped, which Spin goes on to finish); per second, while wrk ran.",
        spin.version,
        shown(&spin.binary)
    )?;
    if let Some(error) = &spin.error {
        let error = error.split_whitespace().collect::<Vec<_>>().join(" ");
        writeln!(d, "- **The Spin run stopped early**, so some Spin cells are empty: {}", quoted(&error))?;
    }
    Ok(())
}

/// Under the routes table: why the host/Spin ratio is what it is, from this run's numbers, and Spin's figures per
/// route.
fn host_vs_spin(d: &mut String, host: &[Outcome], spin: &SpinRun, kv_ops: &KvOps) -> Result<()> {
    let pairs: Vec<(&Outcome, &Outcome)> =
        host.iter().filter_map(|h| spin.results.iter().find(|s| s.route == h.route).map(|s| (h, s))).collect();
    let ratio = |h: &Outcome, s: &Outcome| h.rps / s.rps;
    // Store operations and round trips on the host.
    let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let kv = |route: &str| kv_ops.row(route).map(|r| (n(r.keys), n(r.calls)));
    let mut writes: Vec<(&Outcome, &Outcome, f64)> = pairs
        .iter()
        .filter(|(h, _)| h.kind == Kind::Write)
        .filter_map(|&(h, s)| Some((h, s, s.commits_per_request()?)))
        .collect();
    writes.sort_by(|a, b| a.2.total_cmp(&b.2));
    let reads: Vec<(&Outcome, &Outcome)> = pairs.iter().copied().filter(|(h, _)| h.kind == Kind::Read).collect();
    let span = |ratios: &[f64]| {
        let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        if ratios.len() > 1 { format!("{lo:.1}–{hi:.1}×") } else { format!("{hi:.1}×") }
    };
    writeln!(d)?;
    let mut p = String::from(
        "**Host vs Spin.** Spin's default SQLite store runs every key-value call on one connection behind one lock and \
         commits each write as its own transaction (rollback journal, `synchronous=FULL`), so on Spin a route that \
         writes goes no faster than that lock lets its commits through.",
    );
    if !writes.is_empty() {
        let rates: Vec<f64> = writes.iter().filter_map(|(_, s, _)| s.commits_per_second()).collect();
        let (lo, hi) = rates.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let busy = writes.iter().map(|(_, s, _)| s.host_cores()).fold(0.0f64, f64::max);
        let limit = if busy < 1.0 { " (the lock, not the machine, is the limit)" } else { "" };
        let ceiling = if hi <= lo * 1.2 { " (about one ceiling)" } else { "" };
        let each: Vec<String> = writes
            .iter()
            .map(|(h, s, c)| {
                let (keys, calls) = kv(&h.route).unwrap_or_else(|| ("?".to_owned(), "?".to_owned()));
                format!(
                    "`{}` {c:.1} commits per request ({keys} store operations in {calls} round trips on the host) → \
                     {:.0} req/s, host/Spin {:.1}×",
                    h.route,
                    s.rps,
                    ratio(h, s)
                )
            })
            .collect();
        write!(
            p,
            " In this run Spin committed {lo:.0} to {hi:.0} writes/s on the write routes{ceiling}, with at most \
             {busy:.2} of the {} cores busy{limit}: {}.",
            machine().0,
            each.join("; ")
        )?;
        if writes.len() > 1 && !rates.is_empty() {
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            let predicted: Vec<String> = writes.iter().map(|(_, _, c)| format!("{:.0}", mean / c)).collect();
            let measured: Vec<String> = writes.iter().map(|(_, s, _)| format!("{:.0}", s.rps)).collect();
            write!(
                p,
                " At their mean, {mean:.0} commits/s, the commits alone predict {} req/s for these routes; measured: {}.",
                predicted.join(" / "),
                measured.join(" / ")
            )?;
        }
        let write_ratios: Vec<f64> = writes.iter().map(|(h, s, _)| ratio(h, s)).collect();
        if !reads.is_empty() {
            let read_ratios: Vec<f64> = reads.iter().map(|(h, s)| ratio(h, s)).collect();
            let each: Vec<String> = reads
                .iter()
                .map(|(h, s)| {
                    let commits =
                        s.commits_per_request().map_or_else(String::new, |c| format!(", {c:.2} commits per request"));
                    format!("`{}` {:.1}×{commits}", h.route, ratio(h, s))
                })
                .collect();
            write!(
                p,
                " The write routes are {} slower on Spin than on the host, the reads {} ({})",
                span(&write_ratios),
                span(&read_ratios),
                each.join("; ")
            )?;
            let min_write = write_ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let max_read = read_ratios.iter().copied().fold(0.0f64, f64::max);
            p.push_str(if min_write > max_read { ": fewer writes per request matter most on Spin." } else { "." });
        }
        let rising = writes.windows(2).all(|w| ratio(w[0].0, w[0].1) <= ratio(w[1].0, w[1].1));
        if writes.len() > 1 && rising {
            p.push_str(" Among the write routes, the more a request commits, the larger the ratio.");
        } else if writes.len() > 1 {
            let cpu: Vec<String> = writes.iter().map(|(h, _, _)| format!("{:.0}", h.cpu_us_per_request())).collect();
            write!(
                p,
                " Among the write routes the ratio does not strictly rise with the commits, as it also carries the \
                 host's own cost per request ({} µs of host CPU, in the same order).",
                cpu.join(" / ")
            )?;
        }
    }
    if let Some((h, s)) = pairs.iter().find(|(h, _)| h.kind == Kind::Floor) {
        write!(
            p,
            " Spin's echo (`GET /`, no key-value access) served {:.0} req/s (host/Spin {:.1}×) at p50 {:.1} ms with {:.2} \
             cores busy",
            s.rps,
            ratio(h, s),
            s.p50_ms,
            s.host_cores()
        )?;
        if s.host_cores() < 1.0 && s.p50_ms > 20.0 {
            p.push_str(
                ": latency, not CPU, bounds it, so it is no floor for Spin's routes (an idle Spin writes the last chunk \
                 of a keep-alive response on its own and the kernel holds it until the client's delayed ACK, about \
                 40 ms; a busy one sends it with the body; see docs/PERFORMANCE.md).",
            );
        } else {
            p.push('.');
        }
    }
    writeln!(d, "{p}")?;
    writeln!(d)?;
    writeln!(
        d,
        "| route (Spin) | store operations / sequential round trips per request (host, `kv_ops`) | commits per \
         request | commits/s | p50 | CPU per request | cores busy | peak RSS | socket errors | host/Spin |"
    )?;
    writeln!(d, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (h, s) in &pairs {
        let (per_request, per_second) = match (s.commits_per_request(), s.commits_per_second()) {
            (Some(c), Some(r)) => (format!("{c:.2}"), format!("{r:.0}")),
            _ => ("—".to_owned(), "—".to_owned()),
        };
        let kv = match kv(&h.route) {
            _ if h.kind == Kind::Floor => "0 / 0".to_owned(),
            Some((keys, calls)) => format!("{keys} / {calls}"),
            None => "?".to_owned(),
        };
        writeln!(
            d,
            "| `{}` | {kv} | {per_request} | {per_second} | {:.2} ms | {:.0} µs | {:.2} | {:.1} MiB | {} | {:.1}× |",
            s.route,
            s.p50_ms,
            s.cpu_us_per_request(),
            s.host_cores(),
            s.peak_rss_kib as f64 / 1024.0,
            s.socket_errors,
            ratio(h, s)
        )?;
    }
    Ok(())
}

/// Spin's startup and memory, and what its output and its error responses showed.
fn spin_startup(d: &mut String, spin: &SpinRun) -> Result<()> {
    let ms = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0} ms"));
    if spin.cold_ms.is_some() {
        writeln!(
            d,
            "- Spin startup to the first `200` (`GET /api/ops/funnel`), spin.toml: cold (empty private Wasmtime cache: \
             Spin compiles every component) {}, warm (second start, cached) {}.",
            ms(spin.cold_ms),
            ms(spin.warm_ms)
        )?;
    }
    if let Some(kib) = spin.idle_rss_kib {
        writeln!(
            d,
            "- Spin RSS: {:.1} MiB idle after the warm start (`spin up` and its `spin trigger http` process, summed); \
             peak under load per route in the Spin table above.",
            kib as f64 / 1024.0
        )?;
    }
    if spin.logs.iter().all(|l| l.panics.is_empty()) && !spin.logs.is_empty() {
        writeln!(d, "- Spin's output (`target/bench/spin/*.log`, read before each stop): no `panicked`.")?;
    }
    spin_problems(d, spin, "")
}

/// Panics in Spin's output, the components' internal errors and Spin's non-2xx per route; `on` after "non-2xx"
/// says which run (` on Redis`).
fn spin_problems(d: &mut String, spin: &SpinRun, on: &str) -> Result<()> {
    for log in spin.logs.iter().filter(|l| !l.panics.is_empty()) {
        writeln!(
            d,
            "- **Spin's output shows `panicked`** ({}, `{}`): {} line(s); the first: {}",
            log.what,
            shown(&log.log),
            log.panics.len(),
            quoted(&log.panics[0])
        )?;
    }
    for log in spin.logs.iter().filter(|l| !l.internal_errors.is_empty()) {
        let lines: Vec<String> =
            log.internal_errors.iter().take(5).map(|(line, n)| format!("{} ×{n}", quoted(line))).collect();
        let more = log.internal_errors.len().saturating_sub(5);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        writeln!(d, "- Internal errors the components logged under Spin ({}): {}{more}.", log.what, lines.join("; "))?;
    }
    for r in spin.results.iter().filter(|r| !r.statuses.is_empty()) {
        let each: Vec<String> =
            r.statuses.iter().map(|(status, n, problem)| format!("{status} ×{n} ({})", quoted(problem))).collect();
        writeln!(d, "- Spin's non-2xx{on} on `{}`: {}.", r.route, each.join(", "))?;
    }
    Ok(())
}

/// For each target missed, the measured reason: host CPU per request against the floor's (throughput), Little's law
/// (latency), bytes over the limit (size). The profile behind the CPU figures is in docs/PERFORMANCE.md.
fn why_not_met(
    d: &mut String,
    results: &[Outcome],
    spin: Option<&SpinRun>,
    kv: &KvOps,
    largest: Option<&(String, u64)>,
) -> Result<()> {
    let Some(floor) = results.iter().find(|r| r.kind == Kind::Floor) else { return Ok(()) };
    let floor_cpu = floor.cpu_us_per_request();
    let mut lines = Vec::new();
    for r in results.iter().filter(|r| r.kind != Kind::Floor) {
        let want = if r.kind == Kind::Read { READ_RATIO } else { write_ratio(&r.route) };
        let ratio = r.rps / floor.rps;
        if ratio < want {
            lines.push(format!(
                "- `{}` reaches {:.0}% of the floor, not {:.0}%: the floor's echo costs the host {floor_cpu:.0} µs of CPU \
                 per request and this route {:.0} µs ({:.1}×), with the host keeping {:.2} cores busy (the floor {:.2}): \
                 the run is CPU-bound, so the ratio is about the inverse of the CPU ratio. {:.0}% needs at most {:.0} µs \
                 per request.",
                r.route,
                ratio * 100.0,
                want * 100.0,
                r.cpu_us_per_request(),
                r.cpu_us_per_request() / floor_cpu,
                r.host_cores(),
                floor.host_cores(),
                want * 100.0,
                floor_cpu / want
            ));
        }
        if r.p99_ms > MAX_P99_MS {
            lines.push(format!(
                "- `{}` p99 is {:.1} ms, not ≤ {MAX_P99_MS:.0} ms: wrk keeps {CONNECTIONS} requests in flight, so by \
                 Little's law the mean latency is {CONNECTIONS} / {:.0} req/s = {:.1} ms; queueing behind a CPU-bound host, \
                 not any one slow step, sets the tail (p50 {:.1} ms).",
                r.route,
                r.p99_ms,
                r.rps,
                CONNECTIONS as f64 * 1000.0 / r.rps,
                r.p50_ms
            ));
        }
    }
    for (h, s) in spin_writes(results, spin) {
        let want = h.rps * SPIN_WRITE_SHARE;
        if s.rps >= want {
            continue;
        }
        let mut line = format!(
            "- `{}` on Spin (SQLite) serves {:.0} req/s, 1/{:.1} of the host's {:.0}, not 1/3 ({want:.0} req/s)",
            h.route,
            s.rps,
            h.rps / s.rps,
            h.rps
        );
        match (s.commits_per_request(), s.commits_per_second()) {
            (Some(per_request), Some(per_second)) => write!(
                line,
                ": each request committed {per_request:.1} write transactions, one at a time through the one lock of \
                 Spin's SQLite store, which got {per_second:.0} commits/s through with {:.2} cores busy; at that rate \
                 {want:.0} req/s allows at most {:.1} commits per request. On Spin every write is its own transaction, \
                 so only fewer writes per request (one document per aggregate, set-many) close the gap.",
                s.host_cores(),
                per_second / want
            )?,
            _ => write!(
                line,
                ": Spin's CPU per request is {:.0} µs with {:.2} cores busy (the host's: {:.0} µs, {:.2}).",
                s.cpu_us_per_request(),
                s.host_cores(),
                h.cpu_us_per_request(),
                h.host_cores()
            )?,
        }
        lines.push(line);
    }
    for row in &kv.rows {
        let over_keys = row.keys.zip(row.keys_target).filter(|(keys, target)| keys > target);
        let over_calls = row.calls.filter(|&calls| calls > row.calls_limit());
        if over_keys.is_none() && over_calls.is_none() {
            continue;
        }
        let mut what = Vec::new();
        if let Some((keys, target)) = over_keys {
            what.push(format!("{keys} store operations, not ≤ {target}"));
        }
        if let Some(calls) = over_calls {
            what.push(format!("{calls} sequential round trips, not ≤ {}", row.calls_limit()));
        }
        let mut line = format!("- `{}` makes {}", row.route, what.join(", and "));
        match kv.trace(&row.route) {
            Some(calls) if !calls.is_empty() => {
                let batches = calls.iter().filter(|c| batch_len(c) > 1).count();
                let batches = match batches {
                    0 => "none of them is a batch".to_owned(),
                    1 => format!("1 is a batch and the other {} each read or write one key", calls.len() - 1),
                    n => format!("{n} are batches and the other {} each read or write one key", calls.len() - n),
                };
                write!(
                    line,
                    ". Its calls by key prefix (`target/kv-ops-trace.md`), largest first by {}: {}. Of its {} calls, \
                     {batches}; each call waits for the one before it.",
                    if over_calls.is_some() { "calls" } else { "keys" },
                    top_groups(calls, over_calls.is_none()),
                    calls.len(),
                )?;
            }
            _ => line.push_str(" (no trace of its calls in `target/kv-ops-trace.md`)."),
        }
        line.push_str(
            " Done and tried so far, and what is left: docs/PERFORMANCE.md, \"Store operations per request\".",
        );
        lines.push(line);
    }
    if let Some((id, size)) = largest.filter(|(_, size)| *size > MAX_WASM_BYTES) {
        lines.push(format!(
            "- `{id}` is {:.1} KiB over 1 MiB, already built with `opt-level = \"z\"`, LTO, one codegen unit and \
             stripped; the rest is its code (serde and the domain). Done and tried so far, and the leads left: \
             docs/PERFORMANCE.md, \"What is left\" and \"Tried and not adopted\".",
            (*size - MAX_WASM_BYTES) as f64 / 1024.0
        ));
    }
    if lines.is_empty() {
        return Ok(());
    }
    writeln!(d)?;
    writeln!(d, "## Why the missed targets are missed")?;
    writeln!(d)?;
    writeln!(
        d,
        "From this run's numbers. What was changed and tried for each kind of target, measured, is in \
         docs/PERFORMANCE.md: store operations and round trips under \"Store operations per request\" (with what \
         reaching the targets would take), component size under \"What is left\", throughput, latency and Spin \
         under \"Changed because of it\", \"Tried and not adopted\" and \"On real Spin 4\"; where the CPU goes \
         inside a request is profiled there too."
    )?;
    writeln!(d)?;
    for line in lines {
        writeln!(d, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "| route | store operations (keys) | target | sequential round trips (calls) | target |\n\
        |---|---:|---:|---:|---:|\n\
        | `POST /api/sessions (a new customer)` | 16 | 6 | 16 | 6 |\n\
        | `GET /api/me` | 1 | 3 | 1 | 3 |\n\
        | `POST /api/coupons/campaigns/{id}/claim` | 46 | 15 | 44 | 8 |\n\
        | `GET /api/ops/funnel (30 days)` | 690 | 40 | 8 | 8 |\n";

    const TRACE: &str = "## GET /api/me: 1 calls, 1 keys\n\n    get cust:customer:c_1\n\n\
        ## POST /api/coupons/campaigns/{id}/claim: 4 calls, 6 keys\n\n    get coup:campaign:x\n    \
        get-many [3] coup:claim:a …\n    increment coup:claim:a:~born +5\n    set coup:claim:a\n\n";

    fn kv() -> KvOps {
        KvOps {
            table: Some(TABLE.to_owned()),
            rows: parse_kv_table(TABLE),
            traces: parse_kv_trace(TRACE),
            passed: false,
            status: "failed".into(),
        }
    }

    #[test]
    fn the_kv_ops_table_is_read_by_its_header_and_routes_match_with_placeholders_and_notes() {
        let kv = kv();
        assert_eq!(kv.rows.len(), 4);
        let claim = kv.row("POST /api/coupons/campaigns/bench_coffee/claim").expect("claim");
        assert_eq!(
            (claim.keys, claim.keys_target, claim.calls, claim.calls_target),
            (Some(46), Some(15), Some(44), Some(8))
        );
        let funnel = kv.row("GET /api/ops/funnel").expect("funnel");
        assert_eq!((funnel.keys, funnel.calls), (Some(690), Some(8)));
        assert_eq!(kv.row("GET /api/me").map(KvRow::calls_limit), Some(3));
        assert!(kv.row("GET /api/other").is_none());
        let old = parse_kv_table("| route | KV operations | budget |\n|---|---:|---:|\n| `GET /api/me` | 1 | 3 |\n");
        assert_eq!((old[0].keys, old[0].keys_target, old[0].calls), (Some(1), Some(3), None));
    }

    #[test]
    fn traces_give_round_trips_on_redis_and_groups_by_prefix() {
        let kv = kv();
        let route = "POST /api/coupons/campaigns/{id}/claim";
        assert_eq!(kv.trace(route).map(<[String]>::len), Some(4));
        assert_eq!(kv.redis_round_trips(route), Some(6));
        assert_eq!(kv.redis_round_trips("GET /api/me"), Some(1));
        let groups = top_groups(kv.trace(route).expect("trace"), false);
        assert_eq!(
            groups,
            "`coup:claim:…` 2 calls, 4 keys (1 get-many, 1 set); `coup:campaign:…` 1 call (1 get); \
             `…:~born (creation markers)` 1 call (1 increment)"
        );
    }
    fn outcome(route: &str, kind: Kind, rps: f64, p50_ms: f64) -> Outcome {
        Outcome {
            route: route.to_owned(),
            kind,
            rps,
            p50_ms,
            p99_ms: p50_ms * 2.0,
            requests: (rps * 2.0) as u64,
            non_2xx: 0,
            socket_errors: 0,
            peak_rss_kib: 1024,
            host_cpu_ms: rps,
            seconds: 2.0,
            signed: None,
            statuses: Vec::new(),
            commits: None,
        }
    }

    #[test]
    fn without_redis_one_line_says_so_and_with_it_the_table_relates_p50_to_round_trips() {
        let claim = "POST /api/coupons/campaigns/bench_coffee/claim";
        let host = HostRun {
            results: vec![outcome("GET /", Kind::Floor, 5000.0, 5.0), outcome(claim, Kind::Write, 600.0, 40.0)],
            cold_ms: 1.0,
            warm_ms: 1.0,
            idle_rss_kib: 1,
        };
        let sizes = [("x".to_owned(), 10)];
        let absent = Err("`redis-server` is not installed".to_owned());
        let doc = report(&host, None, &absent, &kv(), &[], &sizes).expect("report");
        assert!(doc.contains("- Redis: `redis-server` is not installed, so this run has no Redis columns."), "{doc}");
        assert!(!doc.contains("## On Redis"));
        assert!(
            doc.contains("| `POST /api/coupons/campaigns/{id}/claim` sequential round trips ≤ 8 | 44 | **not met** |")
        );
        assert!(doc.contains("| `GET /api/me` store operations ≤ 3 | 1 | met |"));
        assert!(doc.contains("| the `kv_ops` test, which enforces the budgets below | failed"));
        assert!(doc.contains("Of its 4 calls, 1 is a batch and the other 3 each read or write one key"), "{doc}");
        let redis = Ok(RedisRun {
            version: "redis-server 7".into(),
            seconds: "2s".into(),
            rtt: Some(Rtt { p50_us: 20.0, mean_us: 21.0, samples: 10 }),
            host: vec![outcome(claim, Kind::Write, 300.0, 50.0)],
            host_error: None,
            spin: None,
        });
        let doc = report(&host, None, &redis, &kv(), &[], &sizes).expect("report");
        assert!(doc.contains(&format!("| `{claim}` | 44 | 6 | 50.00 ms / 300 | 0 |")), "{doc}");
        assert!(doc.contains("6 × 20 µs = 0.1 ms against a p50 of 50.0 ms on the host"), "{doc}");
    }
}
