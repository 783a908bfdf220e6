//! The wasmtime side: one engine (pooling allocator, epoch interruption, compiled-module cache), one pre-instantiated
//! component per Spin component, and instance reuse the way Spin 4 does it for WASIp3 components (wasmtime-wasi-http's
//! `ProxyHandler`: up to N requests per instance, up to M at a time, dropped after an idle timeout).

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreContextMut, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept, ViewFn, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::{WasiHttpCtxView, WasiHttpView};

use crate::bindings::{self, ComponentEnv, SpinCtx, SpinView};
use crate::faults::Faults;
use crate::kv::Kv;
use crate::outbound::{OutboundHooks, OutboundHttp};

/// Epoch tick: the granularity of the request time limit and of guest yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every instance.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_timeout: Duration,
    pub memory_bytes: usize,
    pub max_instance_reuse_count: usize,
    pub max_instance_concurrent_reuse_count: usize,
    pub idle_instance_timeout: Duration,
}

/// Store data of one component instance.
pub struct InstanceState {
    wasi: WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    hooks: OutboundHooks,
    spin: SpinCtx,
    limits: StoreLimits,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.spin.table }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.spin.table, hooks: &mut self.hooks }
    }
}

impl SpinView for InstanceState {
    fn spin(&mut self) -> &mut SpinCtx {
        &mut self.spin
    }
}

/// Builds the engine. `cache_dir` enables wasmtime's on-disk compiled-module cache.
pub fn engine(limits: &Limits, cache_dir: Option<&Path>) -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model_async(true);
    config.epoch_interruption(true);
    // Profiling aid: `SCENEFIN_PERFMAP=1` writes /tmp/perf-<pid>.map so `perf report` names guest functions.
    if std::env::var_os("SCENEFIN_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(1000);
    pool.total_core_instances(2000);
    pool.total_memories(1000);
    pool.total_tables(2000);
    pool.total_stacks(1000);
    pool.max_memory_size(limits.memory_bytes);
    pool.max_core_instances_per_component(64);
    pool.max_memories_per_component(16);
    pool.max_tables_per_component(64);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if let Some(dir) = cache_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(std::path::absolute(dir)?);
        config.cache(Some(wasmtime::Cache::new(cache)?));
    }
    let engine = Engine::new(&config)?;
    let weak = engine.weak();
    std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    })?;
    Ok(engine)
}

/// Everything needed to serve one component: its pre-instance and environment.
pub struct ComponentRuntime {
    pub id: String,
    pub handler: ProxyHandler<ComponentHandler>,
}

/// Compiles a component file (through the module cache when the engine has one).
pub fn compile(engine: &Engine, wasm: &Path) -> Result<Component> {
    if !wasm.exists() {
        anyhow::bail!("{} does not exist: build the components first (`cargo xtask build`)", wasm.display());
    }
    Component::from_file(engine, wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling {}", wasm.display()))
}

/// Links and pre-instantiates one component. `outbound` is its outbound HTTP policy (`allowed_outbound_hosts`).
pub fn load_component(
    engine: &Engine,
    component: &Component,
    env: ComponentEnv,
    kv: Kv,
    limits: Limits,
    faults: Option<Faults>,
    outbound: OutboundHttp,
) -> Result<ComponentRuntime> {
    let mut linker = Linker::<InstanceState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    bindings::add_to_linker(&mut linker)?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component `{}` imports something the host does not provide", env.id))?;
    let pre = wasmtime_wasi_http::p3::bindings::ServicePre::new(pre)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component `{}` does not export wasi:http/handler@0.3.0", env.id))?;
    let env = Arc::new(env);
    let outbound = Arc::new(outbound);
    let state = ComponentHandler { engine: engine.clone(), pre: ProxyPre::P3(pre), env, kv, limits, faults, outbound };
    Ok(ComponentRuntime { id: state.env.id.clone(), handler: ProxyHandler::new(state) })
}

/// [`HandlerState`] for one component.
pub struct ComponentHandler {
    engine: Engine,
    pre: ProxyPre<InstanceState>,
    env: Arc<ComponentEnv>,
    kv: Kv,
    limits: Limits,
    faults: Option<Faults>,
    outbound: Arc<OutboundHttp>,
}

impl HandlerState for ComponentHandler {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiration, Worker>> {
        let state = InstanceState {
            wasi: WasiCtx::builder().inherit_stdout().inherit_stderr().build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks: OutboundHooks(self.outbound.clone()),
            spin: SpinCtx {
                table: ResourceTable::new(),
                env: self.env.clone(),
                kv: self.kv.clone(),
                faults: self.faults.as_ref().map(Faults::for_instance),
            },
            limits: StoreLimitsBuilder::new().memory_size(self.limits.memory_bytes).trap_on_grow_failure(false).build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Guests run concurrently on one store: yield at every tick instead of trapping, and let `Expiration`
        // end an instance whose request ran out of time.
        store.epoch_deadline_async_yield_and_update(1);
        store.set_epoch_deadline(1);
        let proxy = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance {
            store,
            proxy,
            view: ViewFn::P3(<InstanceState as WasiHttpView>::http),
            expiration: Expiration {
                request_timeout: self.limits.request_timeout,
                idle_timeout: self.limits.idle_instance_timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            },
            state: Worker { limits: self.limits.clone(), component: self.env.id.clone() },
        })
    }
}

/// Ends an instance when it has been idle too long, or when its newest request has outlived the time limit.
pub struct Expiration {
    request_timeout: Duration,
    idle_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiration {
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>, state: WorkerStatus, start: Instant) -> Poll<()> {
        let limit = match state {
            WorkerStatus::Idle => self.idle_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.request_timeout,
        };
        let deadline = tokio::time::Instant::from_std(start + limit);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// Per-instance reuse policy.
pub struct Worker {
    limits: Limits,
    component: String,
}

impl WorkerState for Worker {
    type StoreData = InstanceState;
    type RequestId = ();

    fn should_accept_request(&self, concurrent_count: usize, total_count: usize) -> ShouldAccept {
        if total_count >= self.limits.max_instance_reuse_count {
            ShouldAccept::Never
        } else if concurrent_count >= self.limits.max_instance_concurrent_reuse_count {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, InstanceState>,
        _id: (),
        _task: wasmtime::component::GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        Box::pin(tokio::time::sleep(self.limits.request_timeout))
    }

    fn drop(&self, store: Store<InstanceState>, result: Result<(), wasmtime::Error>) {
        // "worker panicked" is also what an idle worker reports when the runtime drops it at shutdown; a real
        // panic has already been reported by the panic hook.
        if let Err(e) = result.as_ref().map_err(ToString::to_string)
            && e != "worker panicked"
        {
            eprintln!("component `{}`: instance ended: {e}", self.component);
        }
        drop(store);
    }
}
