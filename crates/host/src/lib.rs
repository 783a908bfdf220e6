//! scenefin-host: runs a Spin application (`spin.toml`) on wasmtime with Spin 4's semantics, for tests, CI and
//! machines without Spin. See the crate README and ARCHITECTURE.md for what is mirrored and why.

pub mod bindings;
pub mod faults;
pub mod kv;
pub mod manifest;
pub mod outbound;
pub mod routes;
pub mod runtime;
pub mod runtime_config;
mod server;
pub mod testing;
pub mod variables;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::sync::watch;

pub use faults::{FaultPlan, Faults};
pub use kv::{CasMode, Kv};
pub use runtime::Limits;

/// Which backend serves the `default` store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvKind {
    /// SQLite at `<state dir>/sqlite_key_value.db`, Spin's file and layout.
    Sqlite,
    /// SQLite at this file (a runtime config's `type = "spin"` with a `path`).
    SqliteAt(PathBuf),
    /// Redis at this URL (a runtime config's `type = "redis"`): several hosts may share it.
    Redis(String),
    /// In memory, gone when the host stops.
    Memory(CasMode),
}

impl From<runtime_config::StoreConfig> for KvKind {
    fn from(config: runtime_config::StoreConfig) -> Self {
        match config {
            runtime_config::StoreConfig::Sqlite(None) => KvKind::Sqlite,
            runtime_config::StoreConfig::Sqlite(Some(path)) => KvKind::SqliteAt(path),
            runtime_config::StoreConfig::Redis(url) => KvKind::Redis(url),
        }
    }
}

/// How to run the host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub manifest: PathBuf,
    pub listen: SocketAddr,
    /// Serve only these components (all when empty), like `spin up --component-id`.
    pub components: Vec<String>,
    pub kv: KvKind,
    pub state_dir: PathBuf,
    pub limits: Limits,
    pub max_body_bytes: usize,
    /// Environment used for `SPIN_VARIABLE_*` overrides.
    pub env: HashMap<String, String>,
    /// Use wasmtime's on-disk compiled-module cache.
    pub module_cache: bool,
    /// Where the cache lives (default `<state dir>/cache`).
    pub cache_dir: Option<PathBuf>,
    pub access_log: bool,
    /// Fault injection (`None`: off). When on, every request gets a fresh instance, so counts are per request.
    pub faults: Option<FaultPlan>,
    /// Answer guests' key-value calls as Spin 4's stores do where those are weak (default): an `increment` on a
    /// non-counter traps the instance, Redis `swap` always reports `cas-failed`, Redis `get-many` sends `KEYS`.
    /// Off (`--no-spin-quirks`, for experiments only) guests get what the store did. See [`Kv::with_spin_quirks`].
    pub spin_quirks: bool,
}

impl HostConfig {
    /// Spin's defaults, reading `manifest`, with state under `.spin/` beside it.
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        let manifest = manifest.into();
        let state_dir = manifest.parent().map(|d| d.join(".spin")).unwrap_or_else(|| PathBuf::from(".spin"));
        Self {
            manifest,
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            components: Vec::new(),
            kv: KvKind::Sqlite,
            state_dir,
            limits: Limits {
                request_timeout: Duration::from_secs(30),
                memory_bytes: 128 << 20,
                max_instance_reuse_count: 128,
                max_instance_concurrent_reuse_count: 16,
                idle_instance_timeout: Duration::from_secs(1),
            },
            max_body_bytes: 1 << 20,
            env: std::env::vars().collect(),
            module_cache: true,
            cache_dir: None,
            access_log: true,
            faults: None,
            spin_quirks: true,
        }
    }
}

/// A running host.
pub struct RunningHost {
    pub addr: SocketAddr,
    pub kv: Kv,
    /// Components served, in id order.
    pub components: Vec<String>,
    /// Time from `start` to ready for the first request.
    pub startup: Duration,
    /// The fault plan, when started with one; [`Faults::set`] changes it while the host runs.
    pub faults: Option<Faults>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHost {
    /// Stops accepting connections and waits for in-flight ones.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits until the server stops (after [`RunningHost::stop_handle`] is used).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// A handle that stops the server when sent `true`.
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Loads the app, compiles its components and starts serving.
pub async fn start(config: HostConfig) -> Result<RunningHost> {
    let started = Instant::now();
    let manifest = manifest::Manifest::load(&config.manifest)?;
    let manifest_dir = config.manifest.parent().map(PathBuf::from).unwrap_or_default();

    let routed: Vec<&str> = manifest.trigger.http.iter().map(|t| t.component.as_str()).collect();
    let mut served: Vec<String> = if config.components.is_empty() {
        routed.iter().map(|s| (*s).to_owned()).collect()
    } else {
        for id in &config.components {
            if !manifest.component.contains_key(id) {
                bail!("--component {id}: no such component in {}", config.manifest.display());
            }
        }
        config.components.clone()
    };
    served.sort();
    served.dedup();

    let app_vars = variables::resolve_application(&manifest, &config.env)?;
    // Like Spin's loader: every component's `allowed_outbound_hosts` must be well formed (with defaults).
    outbound::validate_manifest(&manifest)?;
    // Self requests (`http://self.alt/...`) go to the address we listen on, known once bound.
    let self_addr = Arc::new(OnceLock::new());

    let kv = match &config.kv {
        KvKind::Sqlite => Kv::new(kv::SqliteBackend::open(&config.state_dir.join("sqlite_key_value.db"))?),
        KvKind::SqliteAt(path) => Kv::new(kv::SqliteBackend::open(path)?),
        KvKind::Redis(url) => Kv::new(kv::RedisBackend::connect(url).await?),
        KvKind::Memory(mode) => Kv::new(kv::MemoryBackend::new(*mode)),
    }
    .with_spin_quirks(config.spin_quirks);
    let mut limits = config.limits.clone();
    let faults = config.faults.clone().map(|plan| {
        limits.max_instance_reuse_count = 1;
        limits.max_instance_concurrent_reuse_count = 1;
        Faults::new(plan)
    });
    for id in &served {
        for label in &manifest.component[id].key_value_stores {
            if !bindings::PROVIDED_STORES.contains(&label.as_str()) {
                bail!("component `{id}` uses key-value store `{label}`, which this host does not provide");
            }
        }
    }

    let cache_dir =
        config.module_cache.then(|| config.cache_dir.clone().unwrap_or_else(|| config.state_dir.join("cache")));
    let engine = runtime::engine(&config.limits, cache_dir.as_deref())?;

    // Compile each distinct file once, in parallel; several components may share one.
    let mut sources: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for id in &served {
        let wasm = manifest.source_path(&manifest_dir, id).context("component without source")?;
        sources.entry(wasm).or_default().push(id.clone());
    }
    let jobs: Vec<_> = sources
        .into_iter()
        .map(|(wasm, ids)| {
            let engine = engine.clone();
            (ids, tokio::task::spawn_blocking(move || runtime::compile(&engine, &wasm)))
        })
        .collect();
    let mut components = HashMap::new();
    for (ids, job) in jobs {
        let compiled = job.await.context("compiling a component")??;
        for id in ids {
            let env = bindings::ComponentEnv {
                allowed_stores: manifest.component[&id].key_value_stores.clone(),
                variables: variables::resolve_component(&manifest, &id, &app_vars)?,
                id,
            };
            let outbound = outbound::OutboundHttp::resolve(&manifest, &env.id, &app_vars, self_addr.clone())?;
            let loaded =
                runtime::load_component(&engine, &compiled, env, kv.clone(), limits.clone(), faults.clone(), outbound)?;
            components.insert(loaded.id.clone(), loaded.handler);
        }
    }

    let router = routes::Router::build(manifest.trigger.http.iter().filter_map(|t| match &t.route {
        manifest::Route::Pattern(route) if components.contains_key(&t.component) => {
            Some((route.as_str(), t.component.as_str()))
        }
        _ => None,
    }))?;

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let _ = self_addr.set(addr);
    let (shutdown, rx) = watch::channel(false);
    let app = Arc::new(server::App {
        router,
        components,
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.limits.request_timeout,
        admission: tokio::sync::Semaphore::new(server::MAX_CONCURRENT_REQUESTS),
        access_log: config.access_log,
        kv: kv.clone(),
    });
    let task = tokio::spawn(server::serve(listener, app, rx));
    Ok(RunningHost { addr, kv, components: served, startup: started.elapsed(), faults, shutdown, task })
}
