//! Fault injection for tests (off unless the host is started with a plan): fail the Nth key-value operation of a
//! request, trap the instance right after its Nth write, delay every operation.
//!
//! Counts are per instance. A host started with faults enabled gives every request a fresh instance (reuse count
//! 1, one request at a time), so "the Nth operation of the instance" is "the Nth operation of the request". The
//! plan can be changed while the host runs ([`Faults::set`]), so a test can sweep N over a flow's writes.
//!
//! - A failed operation returns a storage error to the guest and writes nothing, as a store that is down would.
//! - A trap after a write is a crash between two writes: the write is durable, the instance dies mid-request and
//!   the client gets a 500 `component_failed`, as if the process had been killed there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::kv::{GuestResult, Kv, Op};

/// What to inject. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The Nth key-value operation (1-based) of each request fails with a storage error, writing nothing.
    pub fail_op: Option<u64>,
    /// Right after the Nth write (1-based) of each request is applied, the instance traps.
    pub trap_after_write: Option<u64>,
    /// Every key-value operation waits this long first.
    pub delay: Duration,
}

impl FaultPlan {
    /// A short description for the start-up banner and test reports.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.fail_op {
            parts.push(format!("fail KV op #{n}"));
        }
        if let Some(n) = self.trap_after_write {
            parts.push(format!("trap after write #{n}"));
        }
        if !self.delay.is_zero() {
            parts.push(format!("delay {} ms per op", self.delay.as_millis()));
        }
        if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
    }
}

/// The host's fault plan, shared by every instance, and how many faults fired.
#[derive(Clone, Default)]
pub struct Faults(Arc<Shared>);

#[derive(Default)]
struct Shared {
    plan: Mutex<FaultPlan>,
    fired: AtomicU64,
}

impl Faults {
    pub fn new(plan: FaultPlan) -> Self {
        let faults = Self::default();
        faults.set(plan);
        faults
    }

    /// Replaces the plan; instances pick it up at their next operation.
    pub fn set(&self, plan: FaultPlan) {
        if let Ok(mut p) = self.0.plan.lock() {
            *p = plan;
        }
    }

    pub fn plan(&self) -> FaultPlan {
        self.0.plan.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Faults injected (failed operations and traps) since start.
    pub fn fired(&self) -> u64 {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Counters for a new instance.
    pub fn for_instance(&self) -> Arc<InstanceFaults> {
        Arc::new(InstanceFaults { faults: self.clone(), ops: AtomicU64::new(0), writes: AtomicU64::new(0) })
    }
}

/// One instance's operation and write counts.
pub struct InstanceFaults {
    faults: Faults,
    ops: AtomicU64,
    writes: AtomicU64,
}

impl InstanceFaults {
    /// Runs `op` for a guest ([`Kv::exec_guest`]) with the plan applied: `Err` is an injected trap (the instance
    /// ends), `Ok` what the guest's call came to.
    pub async fn exec(&self, kv: &Kv, label: &str, op: Op) -> wasmtime::Result<GuestResult> {
        let plan = self.faults.plan();
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if plan.fail_op == Some(n) {
            self.faults.0.fired.fetch_add(1, Ordering::SeqCst);
            return Ok(Ok(Err(format!("fault injected: key-value operation #{n} failed"))));
        }
        let is_write = op.is_write();
        let result = kv.exec_guest(label, op).await;
        if is_write && matches!(result, Ok(Ok(_))) {
            let w = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
            if plan.trap_after_write == Some(w) {
                self.faults.0.fired.fetch_add(1, Ordering::SeqCst);
                return Err(wasmtime::Error::msg(format!("fault injected: trap after write #{w}")));
            }
        }
        Ok(result)
    }
}
