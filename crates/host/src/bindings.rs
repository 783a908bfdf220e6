//! Host bindings for the Spin imports in `wit/world.wit` (world `host`), generated from the same WIT files the
//! components are written against, and their implementation over [`crate::kv`] and resolved variables.
//!
//! Access control follows Spin: a component may open only the stores its manifest entry lists
//! (`access-denied` otherwise); a listed store the host does not provide is `no-such-store`.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use crate::faults::InstanceFaults;
use crate::kv::{Kv, Op, Output};

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "scenefin:platform/host",
    imports: { "wasi:keyvalue": async | trappable, default: async | store | trappable },
    with: {
        "spin:key-value/key-value.store": OpenStore,
        "wasi:keyvalue/store.bucket": OpenStore,
        "wasi:keyvalue/atomics.cas": CasHandle,
    },
});

use spin::key_value::key_value as spin_kv;
use spin::variables::variables as spin_vars;
use wasi::keyvalue::{atomics, batch, store as wasi_kv};

/// An open store, as the guest holds it.
pub struct OpenStore {
    label: String,
}

/// A `wasi:keyvalue` CAS handle: the key, and the value `current` read (Spin compares against that).
pub struct CasHandle {
    label: String,
    key: String,
    read: Option<Vec<u8>>,
}

/// Per-component facts the Spin imports need, shared by all instances of the component.
pub struct ComponentEnv {
    pub id: String,
    pub allowed_stores: Vec<String>,
    pub variables: BTreeMap<String, String>,
}

/// Stores the host provides.
pub const PROVIDED_STORES: &[&str] = &["default"];

/// The slice of the instance state the Spin imports use.
pub struct SpinCtx {
    pub table: ResourceTable,
    pub env: Arc<ComponentEnv>,
    pub kv: Kv,
    /// This instance's fault counters, when the host injects faults.
    pub faults: Option<Arc<InstanceFaults>>,
}

/// Marker for [`HasData`]: the generated traits are implemented on [`SpinCtx`].
pub struct Spin;

impl HasData for Spin {
    type Data<'a> = &'a mut SpinCtx;
}

/// Where the generated code finds [`SpinCtx`] in a store's data.
pub trait SpinView: Send + 'static {
    fn spin(&mut self) -> &mut SpinCtx;
}

pub fn add_to_linker<T: SpinView>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()> {
    Host_::add_to_linker::<T, Spin>(linker, T::spin)
}

enum OpenError {
    Denied,
    NoSuchStore,
}

fn open_check(env: &ComponentEnv, label: &str) -> Result<(), OpenError> {
    if !env.allowed_stores.iter().any(|s| s == label) {
        Err(OpenError::Denied)
    } else if !PROVIDED_STORES.contains(&label) {
        Err(OpenError::NoSuchStore)
    } else {
        Ok(())
    }
}

/// Runs one op against the store behind resource `rep`.
async fn run<T, R: 'static>(
    accessor: &Accessor<T, Spin>,
    res: &Resource<R>,
    label_of: impl FnOnce(&R) -> String,
    op: Op,
) -> wasmtime::Result<Result<Output, String>> {
    let op = accessor.with(|mut access| {
        let ctx = access.get();
        let label = label_of(ctx.table.get(res)?);
        wasmtime::Result::<_>::Ok(ctx.exec(&label, op))
    })?;
    op.await
}

fn store_label(s: &OpenStore) -> String {
    s.label.clone()
}

// --- spin:key-value@3.0.0 -----------------------------------------------------------------------------------------

fn spin_err(msg: String) -> spin_kv::Error {
    spin_kv::Error::Other(msg)
}

impl spin_kv::Host for &mut SpinCtx {}

impl spin_kv::HostStore for &mut SpinCtx {}

impl<T> spin_kv::HostStoreWithStore<T> for Spin {
    async fn drop(accessor: &Accessor<T, Self>, rep: Resource<OpenStore>) -> wasmtime::Result<()> {
        accessor.with(|mut access| access.get().table.delete(rep).map(drop).map_err(Into::into))
    }

    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, spin_kv::Error>> {
        accessor.with(|mut access| {
            let ctx = access.get();
            Ok(match open_check(&ctx.env, &label) {
                Err(OpenError::Denied) => Err(spin_kv::Error::AccessDenied),
                Err(OpenError::NoSuchStore) => Err(spin_kv::Error::NoSuchStore),
                Ok(()) => Ok(ctx.table.push(OpenStore { label })?),
            })
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_kv::Error>> {
        Ok(match run(accessor, &this, store_label, Op::Get { key }).await? {
            Ok(Output::Value(v)) => Ok(v),
            other => Err(spin_err(unexpected(other))),
        })
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(done(run(accessor, &this, store_label, Op::Set { key, value }).await?).map_err(spin_err))
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(done(run(accessor, &this, store_label, Op::Delete { key }).await?).map_err(spin_err))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, spin_kv::Error>> {
        Ok(match run(accessor, &this, store_label, Op::Exists { key }).await? {
            Ok(Output::Bool(b)) => Ok(b),
            other => Err(spin_err(unexpected(other))),
        })
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        this: Resource<OpenStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), spin_kv::Error>>)> {
        let (keys, outcome) = match run(accessor, &this, store_label, Op::Keys).await? {
            Ok(Output::Keys(keys)) => (keys, Ok(())),
            other => (Vec::new(), Err(spin_err(unexpected(other)))),
        };
        accessor.with(|mut access| {
            let stream = StreamReader::new(&mut access, keys)?;
            let future = FutureReader::new(&mut access, async move { wasmtime::Result::<_>::Ok(outcome) })?;
            Ok((stream, future))
        })
    }
}

fn done(result: Result<Output, String>) -> Result<(), String> {
    match result {
        Ok(Output::Done) => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(result: Result<Output, String>) -> String {
    match result {
        Err(msg) => msg,
        Ok(output) => format!("unexpected store output {output:?}"),
    }
}

// --- spin:variables@3.0.0 -----------------------------------------------------------------------------------------

impl spin_vars::Host for &mut SpinCtx {}

impl<T> spin_vars::HostWithStore<T> for Spin {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> wasmtime::Result<Result<String, spin_vars::Error>> {
        if crate::manifest::check_variable_name(&name).is_err() {
            return Ok(Err(spin_vars::Error::InvalidName(name)));
        }
        accessor.with(|mut access| {
            Ok(match access.get().env.variables.get(&name) {
                Some(value) => Ok(value.clone()),
                None => Err(spin_vars::Error::Undefined(format!("no variable for {name:?}"))),
            })
        })
    }
}

// --- wasi:keyvalue@0.2.0-draft2 -----------------------------------------------------------------------------------
//
// These functions are synchronous in WIT: the guest blocks until the op is done, so they borrow the instance state
// for the duration (no other task of the instance runs meanwhile).

fn wasi_err(msg: String) -> wasi_kv::Error {
    wasi_kv::Error::Other(msg)
}

impl SpinCtx {
    /// The op as a future that does not borrow `self` (the instance state is not `Sync`), answered as Spin's store
    /// would ([`Kv::exec_guest`]) and with the fault plan applied: `Err` is a trap, for an injected fault or for a
    /// call Spin's store does not survive (logged here, with the component's id).
    fn exec(
        &self,
        label: &str,
        op: Op,
    ) -> impl Future<Output = wasmtime::Result<Result<Output, String>>> + Send + use<> {
        let (kv, label, faults, env) = (self.kv.clone(), label.to_owned(), self.faults.clone(), self.env.clone());
        async move {
            let result = match faults {
                Some(faults) => faults.exec(&kv, &label, op).await?,
                None => kv.exec_guest(&label, op).await,
            };
            result.map_err(|fatal| {
                eprintln!("{}", fatal.log_line(&env.id));
                wasmtime::Error::msg(format!("fatal key-value call, as in Spin: {fatal}"))
            })
        }
    }

    fn bucket(&self, rep: &Resource<OpenStore>) -> wasmtime::Result<String> {
        Ok(self.table.get(rep)?.label.clone())
    }
}

impl wasi_kv::Host for &mut SpinCtx {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<OpenStore>, wasi_kv::Error>> {
        Ok(match open_check(&self.env, &identifier) {
            Err(OpenError::Denied) => Err(wasi_kv::Error::AccessDenied),
            Err(OpenError::NoSuchStore) => Err(wasi_kv::Error::NoSuchStore),
            Ok(()) => Ok(self.table.push(OpenStore { label: identifier })?),
        })
    }
}

impl wasi_kv::HostBucket for &mut SpinCtx {
    async fn get(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_kv::Error>> {
        Ok(match self.exec(&self.bucket(&this)?, Op::Get { key }).await? {
            Ok(Output::Value(v)) => Ok(v),
            other => Err(wasi_err(unexpected(other))),
        })
    }

    async fn set(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        Ok(done(self.exec(&self.bucket(&this)?, Op::Set { key, value }).await?).map_err(wasi_err))
    }

    async fn delete(&mut self, this: Resource<OpenStore>, key: String) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        Ok(done(self.exec(&self.bucket(&this)?, Op::Delete { key }).await?).map_err(wasi_err))
    }

    async fn exists(
        &mut self,
        this: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wasi_kv::Error>> {
        Ok(match self.exec(&self.bucket(&this)?, Op::Exists { key }).await? {
            Ok(Output::Bool(b)) => Ok(b),
            other => Err(wasi_err(unexpected(other))),
        })
    }

    async fn list_keys(
        &mut self,
        this: Resource<OpenStore>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<wasi_kv::KeyResponse, wasi_kv::Error>> {
        if cursor.is_some() {
            return Ok(Err(wasi_err("list-keys does not support cursors".to_owned())));
        }
        Ok(match self.exec(&self.bucket(&this)?, Op::Keys).await? {
            Ok(Output::Keys(keys)) => Ok(wasi_kv::KeyResponse { keys, cursor: None }),
            other => Err(wasi_err(unexpected(other))),
        })
    }

    async fn drop(&mut self, rep: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl atomics::HostCas for &mut SpinCtx {
    async fn new(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, wasi_kv::Error>> {
        let label = self.bucket(&bucket)?;
        Ok(Ok(self.table.push(CasHandle { label, key, read: None })?))
    }

    async fn current(
        &mut self,
        this: Resource<CasHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_kv::Error>> {
        let cas = self.table.get(&this)?;
        let (label, key) = (cas.label.clone(), cas.key.clone());
        let value = match self.exec(&label, Op::Get { key }).await? {
            Ok(Output::Value(v)) => v,
            other => return Ok(Err(wasi_err(unexpected(other)))),
        };
        self.table.get_mut(&this)?.read.clone_from(&value);
        Ok(Ok(value))
    }

    async fn drop(&mut self, rep: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl atomics::Host for &mut SpinCtx {
    async fn increment(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wasi_kv::Error>> {
        Ok(match self.exec(&self.bucket(&bucket)?, Op::Increment { key, delta }).await? {
            Ok(Output::Counter(n)) => Ok(n),
            other => Err(wasi_err(unexpected(other))),
        })
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let handle = self.table.delete(cas)?;
        let op = Op::Swap { key: handle.key.clone(), expected: handle.read, value };
        match self.exec(&handle.label, op).await? {
            Ok(Output::Swapped(true)) => Ok(Ok(())),
            // As Spin does, hand back a fresh handle on the same key; the guest calls `current` again to retry.
            Ok(Output::Swapped(false)) => {
                let fresh = self.table.push(CasHandle { label: handle.label, key: handle.key, read: None })?;
                Ok(Err(atomics::CasError::CasFailed(fresh)))
            }
            other => Ok(Err(atomics::CasError::StoreError(wasi_err(unexpected(other))))),
        }
    }
}

impl batch::Host for &mut SpinCtx {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, wasi_kv::Error>> {
        Ok(match self.exec(&self.bucket(&bucket)?, Op::GetMany { keys }).await? {
            Ok(Output::Values(values)) => Ok(values),
            other => Err(wasi_err(unexpected(other))),
        })
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        Ok(done(self.exec(&self.bucket(&bucket)?, Op::SetMany { entries: key_values }).await?).map_err(wasi_err))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        Ok(done(self.exec(&self.bucket(&bucket)?, Op::DeleteMany { keys }).await?).map_err(wasi_err))
    }
}
