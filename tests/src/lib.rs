//! `TestApp`: boots scenefin-host in-process on a free loopback port with the real spin.toml and the real
//! `target/wasm32-wasip2/release/*.wasm`, an in-memory store (strict CAS off: Spin's semantics) and a temp state
//! directory, and offers small request helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use scenefin_host::{CasMode, HostConfig, KvKind, RunningHost};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A running app and an HTTP client for it.
pub struct TestApp {
    pub host: RunningHost,
    pub client: reqwest::Client,
    pub base: String,
    _state: tempfile::TempDir,
}

impl TestApp {
    /// Starts every component of spin.toml.
    pub async fn spawn() -> anyhow::Result<Self> {
        let state = tempfile::tempdir()?;
        let mut config = HostConfig::new(workspace().join("spin.toml"));
        config.listen = ([127, 0, 0, 1], 0).into();
        config.kv = KvKind::Memory(CasMode::SpinUpsert);
        config.state_dir = state.path().to_owned();
        config.cache_dir = Some(workspace().join("target/scenefin-test-cache"));
        config.access_log = false;
        config.limits.request_timeout = Duration::from_secs(10);
        let host = scenefin_host::start(config).await?;
        let base = format!("http://{}", host.addr);
        Ok(Self {
            host,
            client: reqwest::Client::new(),
            base,
            _state: state,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request failed")
    }
}
