//! `TestApp`: boots scenefin-host in-process on a free loopback port with the real spin.toml and the real
//! `target/wasm32-wasip2/release/*.wasm`, an in-memory store with Spin's CAS semantics, the test clock enabled and
//! known secrets, and offers small request helpers. Build the components first (`cargo xtask build`).
//!
//! With `SCENEFIN_E2E_RUNTIME=spin-sqlite` or `spin-redis` every `TestApp` is a real `spin up` instead (see
//! [`runtime`]); tests that need what only the host has start with [`host_only!`].

pub mod runtime;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use scenefin_core::auth::{IdentityAssertion, Provider, sign_assertion};
use scenefin_core::clock::Timestamp;
use scenefin_host::kv::{Op, Output};
use scenefin_host::{CasMode, HostConfig, KvKind};
use serde_json::Value;

pub use runtime::{AppHost, Runtime};

/// Secrets the test app runs with.
pub const OPERATOR_TOKEN: &str = "test-operator-token";
/// Signs identity assertions in tests.
pub const IDENTITY_SECRET: &str = "test-identity-secret";
/// The staff identity provider's signing secret in tests.
pub const STAFF_IDENTITY_SECRET: &str = "test-staff-identity-secret";
/// Keys the phone and identity indexes and seals phone numbers in tests.
pub const PII_SECRET: &str = "test-pii-secret";
/// Signs session tokens.
pub const SESSION_SECRET: &str = "test-session-secret";
/// Gateway webhook secret (`whsec_` + base64 of "test-gateway-key").
pub const GATEWAY_SECRET: &str = "whsec_dGVzdC1nYXRld2F5LWtleQ==";

/// The BIN of the bank's own cards in tests.
pub const BANK_BIN: &str = "622588";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The `SPIN_VARIABLE_*` settings every test app runs with (known secrets, the test clock on).
pub fn test_variables() -> HashMap<String, String> {
    HashMap::from([
        ("SPIN_VARIABLE_OPERATOR_TOKEN".into(), OPERATOR_TOKEN.into()),
        ("SPIN_VARIABLE_IDENTITY_SECRET".into(), IDENTITY_SECRET.into()),
        ("SPIN_VARIABLE_SESSION_SECRET".into(), SESSION_SECRET.into()),
        ("SPIN_VARIABLE_STAFF_IDENTITY_SECRET".into(), STAFF_IDENTITY_SECRET.into()),
        ("SPIN_VARIABLE_PII_SECRET".into(), PII_SECRET.into()),
        ("SPIN_VARIABLE_GATEWAY_SECRET".into(), GATEWAY_SECRET.into()),
        ("SPIN_VARIABLE_TEST_CLOCK_ENABLED".into(), "true".into()),
        ("SPIN_VARIABLE_BANK_CARD_BINS".into(), BANK_BIN.into()),
        // Partners' webhook receivers in the tests listen on loopback.
        ("SPIN_VARIABLE_WEBHOOK_ALLOWED_HOSTS".into(), "http://127.0.0.1:*".into()),
    ])
}

/// The instant test requests carry in `X-Scenefin-Now`.
pub fn test_now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").expect("a valid instant")
}

/// A running app and an HTTP client for it (the client's request helpers through `Deref`).
pub struct TestApp {
    pub host: AppHost,
    pub api: Api,
    _state: Option<tempfile::TempDir>,
}

/// An HTTP client for an app at `base`, with the request helpers (signed partner calls, gateway notifications,
/// logins) that tests of an in-process app and of host processes share.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    /// The instant requests carry in `X-Scenefin-Now`.
    pub now: Timestamp,
}

impl Api {
    /// A client for the app at `base` (e.g. `http://127.0.0.1:3000`), at the test instant.
    pub fn new(base: String) -> Self {
        Self { client: reqwest::Client::new(), base, now: test_now() }
    }
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut Api {
        &mut self.api
    }
}

static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A response: status and JSON body (or `Value::Null`).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

/// Whether a client would send the same (idempotent) request again: store contention (`503`) or a component that
/// ran out of time (`500 component_timeout`, outcome unknown).
pub fn retryable(r: &Reply) -> bool {
    r.status == 503 || (r.status == 500 && r.body["code"] == "component_timeout")
}

/// An account's stored balance in a ledger check report (debits positive; 0 when it never moved).
pub fn ledger_account(report: &Value, name: &str) -> i64 {
    let accounts = report["accounts"].as_array().expect("accounts");
    accounts.iter().find(|a| a["account"] == name).and_then(|a| a["stored_fen"].as_i64()).unwrap_or(0)
}

impl TestApp {
    /// Every key and value of the store, but partners' used nonces, idempotency records and the audit log (which a
    /// refused request may legitimately leave: the audit log records refused operator and partner writes on
    /// purpose): compare two snapshots to prove a request wrote nothing.
    pub async fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let Ok(Output::Keys(keys)) = self.host.kv.exec("default", Op::Keys).await else { panic!("listing keys") };
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| !k.contains(":nonce:") && !k.starts_with("idem:") && !k.starts_with("audit:"))
            .collect();
        let Ok(Output::Values(values)) = self.host.kv.exec("default", Op::GetMany { keys }).await else {
            panic!("reading keys")
        };
        values.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
    }

    /// Starts every component of spin.toml: on an in-memory store (Spin's CAS semantics), or under Spin when
    /// `SCENEFIN_E2E_RUNTIME` says so.
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_configured(None, &[], None).await
    }

    /// Starts every component of spin.toml on the given host store (e.g. `KvKind::Sqlite`, as `cargo xtask up`
    /// runs). Host only.
    pub async fn spawn_on(kv: KvKind) -> anyhow::Result<Self> {
        Self::spawn_with(kv, &[]).await
    }

    /// Starts the app with variable `demo_mode` on (the demo identity provider and gateway simulator).
    pub async fn spawn_demo() -> anyhow::Result<Self> {
        Self::spawn_configured(None, &[("SPIN_VARIABLE_DEMO_MODE", "true")], None).await
    }

    /// Starts the app on the given host store with extra `SPIN_VARIABLE_*` settings. Host only.
    pub async fn spawn_with(kv: KvKind, extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::spawn_configured(Some(kv), extra_env, None).await
    }

    /// Starts the app with fault injection on (injecting nothing until `self.faults().set(..)`): every request
    /// gets a fresh instance, so a plan's counts are per request. Host only.
    pub async fn spawn_faulty(kv: KvKind) -> anyhow::Result<Self> {
        // A creation a fault left claimed is taken over after a second (not the production minute): these tests
        // send one request at a time, so no live creator is ever that slow.
        let env = [("SPIN_VARIABLE_KV_CREATION_LEASE_SECS", "1")];
        Self::spawn_configured(Some(kv), &env, Some(scenefin_host::FaultPlan::default())).await
    }

    /// The fault plan handle of an app started with [`TestApp::spawn_faulty`].
    pub fn faults(&self) -> &scenefin_host::Faults {
        self.host.faults.as_ref().expect("the app was started with spawn_faulty")
    }

    /// `kv`: a host store (`None`: the runtime's default store).
    async fn spawn_configured(
        kv: Option<KvKind>,
        extra_env: &[(&str, &str)],
        faults: Option<scenefin_host::FaultPlan>,
    ) -> anyhow::Result<Self> {
        let runtime = Runtime::current();
        if runtime.is_spin() {
            if kv.is_some() || faults.is_some() {
                anyhow::bail!(
                    "a particular host store or fault injection: runtime {} has neither (start the test with \
                     host_only!)",
                    runtime.name()
                );
            }
            let (host, base) = AppHost::spin(runtime, extra_env).await?;
            return Ok(Self { host, api: Api::new(base), _state: None });
        }
        let state = tempfile::tempdir()?;
        let mut config = HostConfig::new(workspace().join("spin.toml"));
        config.listen = ([127, 0, 0, 1], 0).into();
        config.kv = kv.unwrap_or(KvKind::Memory(CasMode::SpinUpsert));
        config.state_dir = state.path().to_owned();
        config.cache_dir = Some(workspace().join("target/scenefin-test-cache"));
        config.access_log = false;
        // Generous: the concurrency tests queue a thousand requests on two cores, next to other tests.
        config.limits.request_timeout = Duration::from_secs(30);
        config.env = test_variables();
        config.env.extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        config.faults = faults;
        let host = scenefin_host::start(config).await?;
        let base = format!("http://{}", host.addr);
        Ok(Self { host: AppHost::host(host), api: Api::new(base), _state: Some(state) })
    }
}

impl Api {
    /// `GET /api/ops/ledger/check`, asserted balanced; the report.
    pub async fn ledger_check(&self) -> Value {
        let r = self.send("GET", "/api/ops/ledger/check", None, Some(OPERATOR_TOKEN)).await;
        assert_eq!((r.status, r.body["balanced"].as_bool()), (200, Some(true)), "{:?}", r.body);
        r.body
    }

    /// Sends a request with the test clock; `bearer` adds `Authorization: Bearer`.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>, bearer: Option<&str>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req =
            self.client.request(method, format!("{}{path}", self.base)).header("x-scenefin-now", self.now.to_rfc3339());
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.expect("request failed");
        let status = res.status().as_u16();
        let content_type =
            res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, content_type, body }
    }

    /// Sends raw bytes with extra headers (signed partner and gateway calls).
    pub async fn send_raw(&self, method: &str, path: &str, body: Vec<u8>, headers: &[(String, String)]) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{path}", self.base)).body(body);
        // The test clock, unless the caller sets its own time.
        if !headers.iter().any(|(k, _)| k == "x-scenefin-now") {
            req = req.header("x-scenefin-now", self.now.to_rfc3339());
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let res = req.send().await.expect("request failed");
        let status = res.status().as_u16();
        let content_type =
            res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = res.text().await.expect("body");
        Reply { status, content_type, body: serde_json::from_str(&text).unwrap_or(Value::Null) }
    }

    /// Headers of a partner request signed with `secret` (nonce unique per call).
    pub fn partner_headers(
        &self,
        partner_id: &str,
        secret: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Vec<(String, String)> {
        let ts = self.now.unix_secs().to_string();
        let nonce = format!("n{:016x}", NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let canonical = scenefin_core::auth::partner_canonical(method, path_and_query, &ts, &nonce, body);
        let signature = scenefin_core::auth::sign_partner(secret, &canonical);
        vec![
            ("x-partner-id".into(), partner_id.into()),
            ("x-timestamp".into(), ts),
            ("x-nonce".into(), nonce),
            ("x-signature".into(), signature),
        ]
    }

    /// A signed partner call.
    pub async fn partner(
        &self,
        partner_id: &str,
        secret: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("json")).unwrap_or_default();
        let headers = self.partner_headers(partner_id, secret, method, path, &bytes);
        self.send_raw(method, path, bytes, &headers).await
    }

    /// `POST {path}` `{quote_id}` as a customer with an `Idempotency-Key` (placing an order).
    pub async fn place_order(&self, path: &str, token: &str, quote_id: &str, key: &str) -> Reply {
        let body = serde_json::to_vec(&serde_json::json!({ "quote_id": quote_id })).expect("json");
        let headers = vec![
            ("authorization".to_owned(), format!("Bearer {token}")),
            ("idempotency-key".to_owned(), key.to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        self.send_raw("POST", path, body, &headers).await
    }

    /// A gateway notification, signed as the gateway signs it.
    pub async fn notify(&self, path: &str, event: &Value) -> Reply {
        self.notify_at(path, event, self.now).await
    }

    /// A gateway notification sent (and signed) at `at` by the test clock.
    pub async fn notify_at(&self, path: &str, event: &Value, at: Timestamp) -> Reply {
        let body = serde_json::to_vec(event).expect("json");
        let id = format!("msg_{}", event["event_id"].as_str().unwrap_or("x"));
        let ts = at.unix_secs();
        let sig = scenefin_core::auth::sign_webhook(GATEWAY_SECRET, &id, ts, &body).expect("sign");
        let headers = vec![
            ("webhook-id".into(), id),
            ("webhook-timestamp".into(), ts.to_string()),
            ("webhook-signature".into(), sig),
            ("content-type".into(), "application/json".into()),
            ("x-scenefin-now".into(), at.to_rfc3339()),
        ];
        self.send_raw("POST", path, body, &headers).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base)).send().await.expect("request failed")
    }

    /// A signed identity assertion issued now.
    pub fn assertion(&self, provider: Provider, subject: &str, phone: Option<&str>) -> String {
        let a = IdentityAssertion {
            provider,
            subject: subject.into(),
            phone: phone.map(Into::into),
            card_fingerprint: None,
            iat: self.now.unix_secs(),
        };
        sign_assertion(IDENTITY_SECRET.as_bytes(), &a)
    }

    /// Logs in and returns the session reply body.
    pub async fn login(
        &self,
        provider: Provider,
        subject: &str,
        phone: Option<&str>,
        channel_code: Option<&str>,
    ) -> Reply {
        let mut body = serde_json::json!({ "assertion": self.assertion(provider, subject, phone) });
        if let Some(code) = channel_code {
            body["channel_code"] = code.into();
        }
        self.send("POST", "/api/sessions", Some(&body), None).await
    }
}

/// One row of docs/RELIABILITY.md, written by the test that earned it: `cargo xtask test` assembles the rows of a
/// green run into the document, so the table only ever says what a test measured.
pub struct ReliabilityRow<'a> {
    /// The test, as `module::name`.
    pub test: &'a str,
    /// The load it ran (requests, concurrency, processes).
    pub load: &'a str,
    /// The faults it injected, or "none".
    pub faults: &'a str,
    /// What it found (counts and invariants checked).
    pub result: &'a str,
}

/// Writes `row` to `target/reliability/<test>.json` (replacing an earlier run's row of the same test). The table
/// describes the host: under a Spin runtime nothing is written.
pub fn record_reliability(row: ReliabilityRow<'_>) {
    if Runtime::current().is_spin() {
        return;
    }
    let dir = workspace().join("target/reliability");
    let value = serde_json::json!({ "test": row.test, "load": row.load, "faults": row.faults, "result": row.result });
    let file: String = row.test.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("{file}.json")), value.to_string()));
    if let Err(e) = written {
        eprintln!("reliability row for {}: {e}", row.test);
    }
}

/// A `scenefin-host up` child process serving the real spin.toml (the binary `cargo test --workspace` and
/// `cargo xtask build` build into `target/debug`), for tests that kill a host or run several.
pub struct HostProcess {
    child: std::process::Child,
    pub api: Api,
}

impl std::ops::Deref for HostProcess {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl HostProcess {
    /// The host binary.
    pub fn binary() -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
        let path = target.join("debug/scenefin-host");
        assert!(
            path.exists(),
            "{} is missing: run `cargo xtask build` (or `cargo build -p scenefin-host`)",
            path.display()
        );
        path
    }

    /// Starts the host on a free loopback port with the test variables and `args` (e.g. `--state-dir D` or
    /// `--runtime-config-file F`), and waits until it serves.
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(Self::binary())
            .arg("up")
            .arg("--from")
            .arg(workspace().join("spin.toml"))
            .args(["--listen", &listen, "--quiet"])
            .args(args)
            .envs(test_variables())
            // A creation left claimed by a killed request is taken over after 5 s (not the production minute), so a
            // restarted host serves the killed requests' retries within the test's patience.
            .env("SPIN_VARIABLE_KV_CREATION_LEASE_SECS", "5")
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let process = Self { child, api: Api::new(format!("http://{listen}")) };
        let started = std::time::Instant::now();
        loop {
            if let Ok(r) = process.client.get(format!("{}/", process.base)).send().await
                && r.status().is_success()
            {
                return Ok(process);
            }
            if started.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("scenefin-host on {listen} did not serve within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the process dies between any two instructions, with no chance to flush or finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
