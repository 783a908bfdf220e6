//! `TestApp`: boots scenefin-host in-process on a free loopback port with the real spin.toml and the real
//! `target/wasm32-wasip2/release/*.wasm`, an in-memory store with Spin's CAS semantics, the test clock enabled and
//! known secrets, and offers small request helpers. Build the components first (`cargo xtask build`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use scenefin_core::auth::{IdentityAssertion, Provider, sign_assertion};
use scenefin_core::clock::Timestamp;
use scenefin_host::kv::{Op, Output};
use scenefin_host::{CasMode, HostConfig, KvKind, RunningHost};
use serde_json::Value;

/// Secrets the test app runs with.
pub const OPERATOR_TOKEN: &str = "test-operator-token";
/// Signs identity assertions in tests.
pub const IDENTITY_SECRET: &str = "test-identity-secret";
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

/// A running app and an HTTP client for it.
pub struct TestApp {
    pub host: RunningHost,
    pub client: reqwest::Client,
    pub base: String,
    /// The instant requests carry in `X-Scenefin-Now`.
    pub now: Timestamp,
    _state: tempfile::TempDir,
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
    /// `GET /api/ops/ledger/check`, asserted balanced; the report.
    pub async fn ledger_check(&self) -> Value {
        let r = self.send("GET", "/api/ops/ledger/check", None, Some(OPERATOR_TOKEN)).await;
        assert_eq!((r.status, r.body["balanced"].as_bool()), (200, Some(true)), "{:?}", r.body);
        r.body
    }

    /// Every key and value of the store, but partners' used nonces and idempotency records (which a refused
    /// request may legitimately leave): compare two snapshots to prove a request wrote nothing.
    pub async fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let Ok(Output::Keys(keys)) = self.host.kv.exec("default", Op::Keys).await else { panic!("listing keys") };
        let keys: Vec<String> =
            keys.into_iter().filter(|k| !k.contains(":nonce:") && !k.starts_with("idem:")).collect();
        let Ok(Output::Values(values)) = self.host.kv.exec("default", Op::GetMany { keys }).await else {
            panic!("reading keys")
        };
        values.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
    }

    /// Starts every component of spin.toml on an in-memory store (Spin's CAS semantics).
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_on(KvKind::Memory(CasMode::SpinUpsert)).await
    }

    /// Starts every component of spin.toml on the given store (e.g. `KvKind::Sqlite`, as `cargo xtask up` runs).
    pub async fn spawn_on(kv: KvKind) -> anyhow::Result<Self> {
        Self::spawn_with(kv, &[]).await
    }

    /// Starts the app with variable `demo_mode` on (the demo identity provider and gateway simulator).
    pub async fn spawn_demo() -> anyhow::Result<Self> {
        Self::spawn_with(KvKind::Memory(CasMode::SpinUpsert), &[("SPIN_VARIABLE_DEMO_MODE", "true")]).await
    }

    /// Starts the app with extra `SPIN_VARIABLE_*` settings.
    pub async fn spawn_with(kv: KvKind, extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let state = tempfile::tempdir()?;
        let mut config = HostConfig::new(workspace().join("spin.toml"));
        config.listen = ([127, 0, 0, 1], 0).into();
        config.kv = kv;
        config.state_dir = state.path().to_owned();
        config.cache_dir = Some(workspace().join("target/scenefin-test-cache"));
        config.access_log = false;
        // Generous: the concurrency tests queue a thousand requests on two cores, next to other tests.
        config.limits.request_timeout = Duration::from_secs(30);
        config.env = HashMap::from([
            ("SPIN_VARIABLE_OPERATOR_TOKEN".into(), OPERATOR_TOKEN.into()),
            ("SPIN_VARIABLE_IDENTITY_SECRET".into(), IDENTITY_SECRET.into()),
            ("SPIN_VARIABLE_SESSION_SECRET".into(), SESSION_SECRET.into()),
            ("SPIN_VARIABLE_GATEWAY_SECRET".into(), GATEWAY_SECRET.into()),
            ("SPIN_VARIABLE_TEST_CLOCK_ENABLED".into(), "true".into()),
            ("SPIN_VARIABLE_BANK_CARD_BINS".into(), BANK_BIN.into()),
        ]);
        config.env.extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let host = scenefin_host::start(config).await?;
        let base = format!("http://{}", host.addr);
        let now = Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self { host, client: reqwest::Client::new(), base, now, _state: state })
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
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("x-scenefin-now", self.now.to_rfc3339())
            .body(body);
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
        let body = serde_json::to_vec(event).expect("json");
        let id = format!("msg_{}", event["event_id"].as_str().unwrap_or("x"));
        let ts = self.now.unix_secs();
        let sig = scenefin_core::auth::sign_webhook(GATEWAY_SECRET, &id, ts, &body).expect("sign");
        let headers = vec![
            ("webhook-id".into(), id),
            ("webhook-timestamp".into(), ts.to_string()),
            ("webhook-signature".into(), sig),
            ("content-type".into(), "application/json".into()),
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
