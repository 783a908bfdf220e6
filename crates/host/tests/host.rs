//! scenefin-host end to end: the fixture app in `tests/fixtures/spin.toml` (one real spin-sdk 7 component mounted
//! several ways) served on a free loopback port and driven over HTTP.
//!
//! Build the fixture first: `cargo xtask build` (the xtask `test` task does it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scenefin_host::testing::RedisServer;
use scenefin_host::{CasMode, HostConfig, KvKind, RunningHost};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures_manifest() -> PathBuf {
    let wasm = workspace().join("target/wasm32-wasip2/release/host_fixture.wasm");
    assert!(wasm.exists(), "{} is missing: run `cargo xtask build` before the tests", wasm.display());
    workspace().join("tests/fixtures/spin.toml")
}

fn config(state: &Path) -> HostConfig {
    let mut c = HostConfig::new(fixtures_manifest());
    c.listen = ([127, 0, 0, 1], 0).into();
    c.kv = KvKind::Memory(CasMode::SpinUpsert);
    c.state_dir = state.to_owned();
    c.cache_dir = Some(workspace().join("target/scenefin-test-cache"));
    c.env = HashMap::from([("SPIN_VARIABLE_TOKEN".to_owned(), "t0ken".to_owned())]);
    c.access_log = false;
    c.limits.request_timeout = Duration::from_secs(2);
    c
}

struct App {
    host: RunningHost,
    base: String,
    http: reqwest::Client,
}

impl App {
    async fn start(config: HostConfig) -> App {
        let host = scenefin_host::start(config).await.expect("host starts");
        let base = format!("http://{}", host.addr);
        App { host, base, http: reqwest::Client::new() }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, String) {
        let res = self.http.request(method, format!("{}{path}", self.base)).body(body).send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.text().await.expect("body"))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.send(reqwest::Method::GET, path, Vec::new()).await
    }

    async fn post(&self, path: &str) -> (u16, String) {
        self.send(reqwest::Method::POST, path, Vec::new()).await
    }

    async fn echo(&self, path: &str) -> serde_json::Value {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .header("spin-path-info", "/forged")
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.expect("json")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_spin_precedence_and_carry_spin_headers() {
    let state = tempfile::tempdir().expect("tempdir");
    let app = App::start(config(state.path())).await;

    // An exact route beats the wildcard it sits under.
    let exact = app.echo("/fx/exact").await;
    assert_eq!(exact["headers"]["spin-matched-route"], "/fx/exact");
    assert_eq!(exact["headers"]["spin-path-info"], "");

    // The wildcard takes what the exact route does not match; the client's forged header is replaced.
    let wild = app.echo("/fx/exact/echo/?q=1").await;
    let h = &wild["headers"];
    assert_eq!(h["spin-matched-route"], "/fx/...");
    assert_eq!(h["spin-path-info"], "/exact/echo/");
    assert_eq!(h["spin-component-route"], "/fx");
    assert_eq!(h["spin-raw-component-route"], "/fx/...");
    assert_eq!(h["spin-base-path"], "/");
    assert_eq!(h["spin-full-url"], format!("{}/fx/exact/echo/?q=1", app.base));
    assert!(h["spin-client-addr"].as_str().expect("addr").starts_with("127.0.0.1:"));
    assert_eq!(wild["uri"], format!("{}/fx/exact/echo/?q=1", app.base));

    // `:name` segments are captured into spin-path-match-<name>.
    let param = app.echo("/users/42/echo").await;
    assert_eq!(param["headers"]["spin-matched-route"], "/users/:id/...");
    assert_eq!(param["headers"]["spin-path-match-id"], "42");
    assert_eq!(param["headers"]["spin-component-route"], "/users/:id");
    assert_eq!(param["headers"]["spin-path-info"], "/echo");

    // Anything else falls through to the catch-all; private components are never routed.
    let root = app.echo("/elsewhere/echo").await;
    assert_eq!(root["headers"]["spin-matched-route"], "/...");
    assert_eq!(root["headers"]["spin-path-info"], "/elsewhere/echo");
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_persists_across_requests_and_restarts_in_spins_sqlite_layout() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(state.path());
    cfg.kv = KvKind::Sqlite;

    let app = App::start(cfg.clone()).await;
    assert_eq!(app.get("/fx/kv/greeting").await.0, 404);
    assert_eq!(app.send(reqwest::Method::PUT, "/fx/kv/greeting", b"ni hao".to_vec()).await, (200, "stored".into()));
    assert_eq!(app.get("/fx/kv/greeting").await, (200, "ni hao".into()));
    // Another component sharing the store sees the same data.
    assert_eq!(app.get("/users/1/kv/greeting").await, (200, "ni hao".into()));
    assert_eq!(app.post("/fx/incr/visits?by=3").await, (200, "3".into()));
    app.host.shutdown().await;

    let app = App::start(cfg.clone()).await;
    assert_eq!(app.get("/fx/kv/greeting").await, (200, "ni hao".into()), "value survives a restart");
    assert_eq!(app.post("/fx/incr/visits").await, (200, "4".into()));
    assert_eq!(app.send(reqwest::Method::DELETE, "/fx/kv/greeting", Vec::new()).await.0, 200);
    assert_eq!(app.get("/fx/kv/greeting").await.0, 404);
    app.host.shutdown().await;

    // The file is Spin's: table spin_key_value(store, key, value) keyed by (store, key), counters as 8-byte LE.
    let db = rusqlite::Connection::open(state.path().join("sqlite_key_value.db")).expect("open db");
    let sql: String = db
        .query_row("SELECT sql FROM sqlite_master WHERE type='table' AND name='spin_key_value'", [], |r| r.get(0))
        .expect("table exists");
    let normalized: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        normalized,
        "CREATE TABLE spin_key_value ( store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key) )"
    );
    let visits: Vec<u8> = db
        .query_row("SELECT value FROM spin_key_value WHERE store='default' AND key='visits'", [], |r| r.get(0))
        .expect("row");
    assert_eq!(visits, 4i64.to_le_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_opens_only_the_stores_its_manifest_lists() {
    let state = tempfile::tempdir().expect("tempdir");
    let app = App::start(config(state.path())).await;

    assert_eq!(app.get("/fx/open/default").await, (200, "ok".into()));
    let (status, body) = app.get("/nostore/open/default").await;
    assert_eq!(status, 403);
    assert_eq!(body.matches("AccessDenied").count(), 2, "both APIs deny: {body}");
    let (status, body) = app.get("/fx/open/secrets").await;
    assert_eq!(status, 403, "a store not listed is denied even if it might exist: {body}");
    app.host.shutdown().await;
}

async fn concurrent_posts(app: &App, path: &str, n: usize) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (http, url) = (app.http.clone(), format!("{}{path}", app.base));
        tasks.push(tokio::spawn(async move {
            let res = http.post(url).send().await.expect("request");
            (res.status().as_u16(), res.text().await.expect("body"))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_cas_increments_end_at_exactly_fifty() {
    for (kv, reuse) in [(KvKind::Sqlite, 128), (KvKind::Memory(CasMode::SpinUpsert), 1)] {
        let state = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(state.path());
        cfg.kv = kv.clone();
        cfg.limits.max_instance_reuse_count = reuse;
        cfg.limits.max_instance_concurrent_reuse_count = reuse.min(16);
        let app = App::start(cfg).await;
        // Seed the key so every CAS compares against a read value (the absent-key case is an upsert in Spin).
        app.send(reqwest::Method::PUT, "/fx/kv/hits", b"0".to_vec()).await;

        let results = concurrent_posts(&app, "/fx/cas/hits", 50).await;

        assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
        assert_eq!(app.get("/fx/kv/hits").await, (200, "50".into()), "{kv:?} reuse {reuse}");
        app.host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_increments_are_exact_and_stored_as_spin_counters() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(state.path());
    cfg.kv = KvKind::Sqlite;
    let app = App::start(cfg).await;

    assert_eq!(app.post("/fx/incr/n?by=5").await, (200, "5".into()));
    assert_eq!(app.post("/fx/incr/n?by=-2").await, (200, "3".into()));
    let results = concurrent_posts(&app, "/fx/incr/n", 50).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let mut seen: Vec<i64> = results.iter().map(|(_, b)| b.parse().expect("number")).collect();
    seen.sort();
    assert_eq!(seen, (4..=53).collect::<Vec<_>>(), "every increment saw a distinct value");
    assert_eq!(app.host.kv.get("default", "n").await, Ok(Some(53i64.to_le_bytes().to_vec())));

    // A non-counter value is refused without being changed (the instance traps: Spin's SQLite store panics there).
    app.send(reqwest::Method::PUT, "/fx/kv/text", b"abc".to_vec()).await;
    assert_eq!(app.post("/fx/incr/text").await.0, 500);
    assert_eq!(app.get("/fx/kv/text").await, (200, "abc".into()));

    assert_eq!(app.post("/fx/batch").await, (200, "b1=one,b2=two".into()));
    app.host.shutdown().await;
}

/// The stores Spin's key-value behaviour is checked on; the Redis one needs its server kept alive.
fn every_store(state: &Path, redis: &RedisServer) -> Vec<(&'static str, KvKind)> {
    vec![
        ("memory", KvKind::Memory(CasMode::SpinUpsert)),
        ("sqlite", KvKind::SqliteAt(state.join("kv.db"))),
        ("redis", KvKind::Redis(redis.url())),
    ]
}

/// A 500 from a trapped instance (the host's problem+json), not one the component wrote.
fn assert_trapped((status, body): &(u16, String), what: &str) {
    assert_eq!(*status, 500, "{what}: {body}");
    assert!(body.contains("\"component_failed\""), "{what}: expected a trap, got {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_on_a_json_value_traps_the_instance_on_every_store() {
    let redis = RedisServer::start().expect("redis-server");
    let state = tempfile::tempdir().expect("tempdir");
    for (name, kv) in every_store(state.path(), &redis) {
        let mut cfg = config(state.path());
        cfg.kv = kv;
        let app = App::start(cfg).await;
        let json = r#"{"balance":1}"#;
        assert_eq!(app.send(reqwest::Method::PUT, "/fx/kv/doc", json.into()).await.0, 200, "{name}");

        assert_trapped(&app.post("/fx/incr/doc?by=0").await, name);
        assert_trapped(&app.post("/fx/incr/doc").await, name);
        assert_eq!(app.get("/fx/kv/doc").await, (200, json.to_owned()), "{name}: the value is unchanged");
        // The host keeps serving, the store too (Spin's SQLite store would be poisoned here).
        assert_eq!(app.post("/fx/incr/visits?by=2").await, (200, "2".into()), "{name}");
        assert_eq!(app.echo("/fx/echo").await["method"], "GET", "{name}");
        app.host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_byte_values_count_on_sqlite_and_decimal_strings_on_redis() {
    let redis = RedisServer::start().expect("redis-server");
    let state = tempfile::tempdir().expect("tempdir");
    for (name, kv) in every_store(state.path(), &redis) {
        let mut cfg = config(state.path());
        cfg.kv = kv;
        let app = App::start(cfg).await;
        app.send(reqwest::Method::PUT, "/fx/kv/eight", b"12345678".to_vec()).await;
        let counted = app.post("/fx/incr/eight").await;
        if name == "redis" {
            assert_eq!(counted, (200, "12345679".into()), "{name}: a decimal string");
        } else {
            // Spin reads any 8 bytes as a little-endian i64, and so does the host: no stricter.
            assert_eq!(counted, (200, (i64::from_le_bytes(*b"12345678") + 1).to_string()), "{name}");
        }
        app.send(reqwest::Method::PUT, "/fx/kv/word", b"abcdefgh".to_vec()).await;
        let word = app.post("/fx/incr/word").await;
        if name == "redis" {
            assert_trapped(&word, name);
        } else {
            assert_eq!(word.0, 200, "{name}: {word:?}");
        }
        app.host.shutdown().await;
    }
}

fn redis_config(state: &Path, redis: &RedisServer) -> HostConfig {
    let mut cfg = config(state);
    cfg.kv = KvKind::Redis(redis.url());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_swap_reports_cas_failed_even_when_the_write_landed() {
    let redis = RedisServer::start().expect("redis-server");
    let state = tempfile::tempdir().expect("tempdir");
    let app = App::start(redis_config(state.path(), &redis)).await;
    app.send(reqwest::Method::PUT, "/fx/kv/doc", b"v1".to_vec()).await;

    // The value did not change between `current` and `swap`: written, and reported failed (Spin's UNWATCH <key>).
    assert_eq!(app.send(reqwest::Method::POST, "/fx/cas-once/doc", b"v2".to_vec()).await, (409, "cas-failed".into()));
    assert_eq!(app.get("/fx/kv/doc").await, (200, "v2".into()), "the write landed");
    // It changed: reported failed, nothing written.
    let raced = app.send(reqwest::Method::POST, "/fx/cas-once/doc?interfere=v3", b"v4".to_vec()).await;
    assert_eq!(raced, (409, "cas-failed".into()));
    assert_eq!(app.get("/fx/kv/doc").await, (200, "v3".into()), "the stale CAS wrote nothing");
    app.host.shutdown().await;

    // SQLite's swap is unchanged: a CAS that won reports it.
    let mut cfg = config(state.path());
    cfg.kv = KvKind::SqliteAt(state.path().join("kv.db"));
    let app = App::start(cfg).await;
    app.send(reqwest::Method::PUT, "/fx/kv/doc", b"v1".to_vec()).await;
    assert_eq!(app.send(reqwest::Method::POST, "/fx/cas-once/doc", b"v2".to_vec()).await, (200, "swapped".into()));
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_get_many_answers_as_spins_keys_command_does() {
    let redis = RedisServer::start().expect("redis-server");
    let state = tempfile::tempdir().expect("tempdir");
    let app = App::start(redis_config(state.path(), &redis)).await;
    app.send(reqwest::Method::PUT, "/fx/kv/a", b"1".to_vec()).await;
    app.send(reqwest::Method::PUT, "/fx/kv/b", b"2".to_vec()).await;

    assert_eq!(app.get("/fx/many/").await, (200, String::new()), "no keys: an empty list");
    let (status, body) = app.get("/fx/many/a,b").await;
    assert_eq!(status, 500);
    assert!(body.contains("Other(") && body.contains("Spin's Redis store sends KEYS a b"), "a store error: {body}");
    assert_eq!(app.get("/fx/many/absent").await, (200, String::new()), "one absent key: an empty list");
    assert_trapped(&app.get("/fx/many/a").await, "one existing key");
    // The host keeps serving.
    assert_eq!(app.get("/fx/kv/a").await, (200, "1".into()));
    assert_eq!(app.post("/fx/batch").await.0, 500, "set-many works, the 3-key get-many is refused");
    assert_eq!(app.get("/fx/kv/b1").await, (200, "one".into()), "MSET as Spin's store sends it");
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spin_quirks_guests_get_what_the_store_did() {
    let redis = RedisServer::start().expect("redis-server");
    let state = tempfile::tempdir().expect("tempdir");
    for (name, kv) in every_store(state.path(), &redis) {
        let mut cfg = config(state.path());
        cfg.kv = kv;
        cfg.spin_quirks = false;
        let app = App::start(cfg).await;
        app.send(reqwest::Method::PUT, "/fx/kv/doc", br#"{"a":1}"#.to_vec()).await;
        let (status, body) = app.post("/fx/incr/doc").await;
        assert_eq!(status, 500, "{name}");
        assert!(body.contains("Other(") && body.contains("not a counter"), "{name}: a store error: {body}");
        assert_eq!(app.get("/fx/kv/doc").await, (200, r#"{"a":1}"#.into()), "{name}");

        app.send(reqwest::Method::PUT, "/fx/kv/v", b"v1".to_vec()).await;
        assert_eq!(app.send(reqwest::Method::POST, "/fx/cas-once/v", b"v2".to_vec()).await, (200, "swapped".into()));
        let raced = app.send(reqwest::Method::POST, "/fx/cas-once/v?interfere=v3", b"v4".to_vec()).await;
        assert_eq!(raced, (409, "cas-failed".into()), "{name}");
        assert_eq!(app.get("/fx/kv/v").await, (200, "v3".into()), "{name}");

        assert_eq!(app.post("/fx/batch").await, (200, "b1=one,b2=two".into()), "{name}");
        assert_eq!(app.get("/fx/many/b1").await, (200, "b1=one".into()), "{name}");
        app.host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_resolve_from_environment_then_defaults() {
    let state = tempfile::tempdir().expect("tempdir");
    let app = App::start(config(state.path())).await;
    assert_eq!(app.get("/fx/var/greeting").await, (200, "hello, world".into()));
    assert_eq!(app.get("/fx/var/token").await, (200, "t0ken".into()));
    let (status, body) = app.get("/fx/var/nonexistent").await;
    assert_eq!(status, 404);
    assert!(body.contains("Undefined"), "{body}");
    let (status, body) = app.get("/fx/var/Bad-Name").await;
    assert_eq!(status, 404);
    assert!(body.contains("InvalidName"), "{body}");
    // Component variables are per component: this one declares none.
    assert!(app.get("/users/1/var/greeting").await.1.contains("Undefined"));
    app.host.shutdown().await;

    let mut cfg = config(state.path());
    cfg.env.insert("SPIN_VARIABLE_GREETING".into(), "ni hao".into());
    let app = App::start(cfg).await;
    assert_eq!(app.get("/fx/var/greeting").await, (200, "ni hao, world".into()));
    app.host.shutdown().await;

    let mut cfg = config(state.path());
    cfg.env.clear();
    let err = scenefin_host::start(cfg).await.err().expect("a missing required variable stops the start");
    let msg = format!("{err:#}");
    assert!(msg.contains("`token`") && msg.contains("SPIN_VARIABLE_TOKEN"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_and_looping_components_get_500s_and_the_host_keeps_serving() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(state.path());
    cfg.limits.request_timeout = Duration::from_millis(1500);
    let app = App::start(cfg).await;

    let trap = app.http.get(format!("{}/fx/trap", app.base)).send().await.expect("request");
    assert_eq!(trap.status(), 500);
    assert_eq!(trap.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = trap.json().await.expect("json");
    assert_eq!(problem["code"], "component_failed");
    assert_eq!(problem["detail"], "internal error", "no internals leak");

    let looping = {
        let (http, url) = (app.http.clone(), format!("{}/fx/loop", app.base));
        tokio::spawn(async move {
            let started = Instant::now();
            let res = http.get(url).send().await.expect("request");
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.expect("json");
            (status, body, started.elapsed())
        })
    };
    // While one instance spins, other components and other instances keep answering.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.echo("/users/7/echo").await["headers"]["spin-path-match-id"], "7");
    assert_eq!(app.get("/fx/kv/absent").await.0, 404);

    let (status, body, took) = looping.await.expect("task");
    assert_eq!(status, 500);
    assert_eq!(body["code"], "component_timeout");
    assert!(took < Duration::from_secs(10), "timed out after {took:?}");

    assert_eq!(app.echo("/fx/echo").await["method"], "GET");
    assert_eq!(app.get("/fx/alloc/8").await, (200, (8usize << 20).to_string()));
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_beyond_the_instance_limit_fails_only_that_request() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(state.path());
    cfg.limits.memory_bytes = 48 << 20;
    let app = App::start(cfg).await;

    assert_eq!(app.get("/fx/alloc/16").await.0, 200);
    assert_eq!(app.get("/fx/alloc/64").await.0, 500);
    assert_eq!(app.get("/fx/alloc/16").await.0, 200);
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_problem_json() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(state.path());
    cfg.max_body_bytes = 1024;
    let app = App::start(cfg).await;

    assert_eq!(app.send(reqwest::Method::POST, "/fx/body", vec![b'x'; 1024]).await, (200, "1024".into()));
    let (status, body) = app.send(reqwest::Method::POST, "/fx/body", vec![b'x'; 1025]).await;
    assert_eq!(status, 413);
    let problem: serde_json::Value = serde_json::from_str(&body).expect("problem json");
    assert_eq!(problem["code"], "payload_too_large");

    // Without a content-length the limit applies while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![b'y'; 400])).collect();
    let res = app
        .http
        .post(format!("{}/fx/body", app.base))
        .body(reqwest::Body::wrap_stream(futures_stream(chunks)))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 413);
    app.host.shutdown().await;
}

fn futures_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures::stream::iter(items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_subset_serves_only_its_routes() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(state.path());
    cfg.components = vec!["fixture-param".into()];
    let app = App::start(cfg).await;

    assert_eq!(app.echo("/users/3/echo").await["headers"]["spin-path-match-id"], "3");
    let (status, body) = app.get("/fx/echo").await;
    assert_eq!(status, 404);
    assert!(body.contains("route_not_found"), "{body}");
    assert_eq!(app.get("/elsewhere").await.0, 404);
    app.host.shutdown().await;

    let mut cfg = config(state.path());
    cfg.components = vec!["no-such-component".into()];
    assert!(scenefin_host::start(cfg).await.is_err());
}

/// A child `scenefin-host up` process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn spawn_cli(state: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    spawn_cli_with(state, port, env, &[])
}

fn spawn_cli_with(state: &Path, port: u16, env: &[(&str, &str)], args: &[&str]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scenefin-host"));
    cmd.args(["up", "--from"])
        .arg(fixtures_manifest())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(state)
        .args(["--quiet"])
        .args(args)
        .env_remove("SPIN_VARIABLE_TOKEN")
        .env_remove("SPIN_VARIABLE_GREETING")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn scenefin-host")
}

async fn wait_ready(base: &str) -> reqwest::Client {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if http.get(format!("{base}/fx/echo")).send().await.is_ok() {
            return http;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("scenefin-host did not come up at {base}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_serves_with_env_overrides_and_stops_cleanly_on_sigterm() {
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut proc =
        Proc(spawn_cli(state.path(), port, &[("SPIN_VARIABLE_TOKEN", "from-env"), ("SPIN_VARIABLE_GREETING", "hi")]));
    let base = format!("http://127.0.0.1:{port}");
    let http = wait_ready(&base).await;

    let body = http.get(format!("{base}/fx/var/greeting")).send().await.expect("req").text().await.expect("body");
    assert_eq!(body, "hi, world");
    let body = http.get(format!("{base}/fx/var/token")).send().await.expect("req").text().await.expect("body");
    assert_eq!(body, "from-env");

    let pid = proc.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = proc.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "host did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "graceful exit, got {status}");
    // The SQLite store is the default and lives in the state directory.
    assert!(state.path().join("sqlite_key_value.db").exists());
}

#[test]
fn the_cli_refuses_to_start_without_a_required_variable() {
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let out = spawn_cli(state.path(), port, &[]).wait_with_output().expect("output");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("required variables are not set") && stderr.contains("SPIN_VARIABLE_TOKEN"), "{stderr}");
}

/// Sends SIGTERM to a `scenefin-host up` child and returns everything it wrote to stderr.
fn stop_and_read_stderr(child: Child) -> String {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_logs_a_fatal_increment_and_no_spin_quirks_makes_it_a_store_error() {
    for quirks in [true, false] {
        let state = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let args: &[&str] = if quirks { &[] } else { &["--no-spin-quirks"] };
        let child = spawn_cli_with(state.path(), port, &[("SPIN_VARIABLE_TOKEN", "t")], args);
        let base = format!("http://127.0.0.1:{port}");
        let http = wait_ready(&base).await;
        let put = http.put(format!("{base}/fx/kv/doc")).body(r#"{"a":1}"#).send().await.expect("put");
        assert_eq!(put.status(), 200);
        let res = http.post(format!("{base}/fx/incr/doc")).send().await.expect("incr");
        assert_eq!(res.status(), 500);
        let body = res.text().await.expect("body");
        let stderr = tokio::task::spawn_blocking(move || stop_and_read_stderr(child)).await.expect("stderr");
        let line = "scenefin-host: component fixture incremented key doc holding a non-counter value (7 bytes); \
                    Spin's SQLite store would panic here (\"incorrect length\") and poison itself: every later \
                    key-value call of the app would fail until restart";
        if quirks {
            assert!(body.contains("component_failed"), "{body}");
            assert_eq!(stderr.matches(line).count(), 1, "{stderr}");
        } else {
            assert!(body.contains("not a counter"), "{body}");
            assert!(!stderr.contains(line), "{stderr}");
            assert!(stderr.contains("SPIN QUIRKS OFF"), "{stderr}");
        }
    }
}
