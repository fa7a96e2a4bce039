//! A fault-injecting storage wrapper, for tests only: it fails the next N calls (or every Nth)
//! with a chosen fault, adds latency, or performs a write and then reports a timeout (the
//! case that makes retries write an object twice), or slows only the calls on names that
//! contain a given text (one disk's points, say). Everything it injects is counted, so tests
//! can assert that the faults actually happened; on request it also records which calls it
//! passed, so tests can count them (how many listings a consolidation run makes, say).

use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use crate::{ObjectMeta, ObjectStorage, Operation, PermanentKind, StorageError, TokenBucket};

/// What the wrapper pretends the backend answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 503 ServerBusy.
    ServerBusy,
    /// 500 OperationTimedOut / internal error.
    InternalError,
    /// 429 Too Many Requests.
    Throttled,
    /// The request timed out before the backend saw it.
    Timeout,
    /// The connection was reset.
    ConnectionReset,
    /// The backend performed the request, then the answer was lost (a timeout).
    TimeoutAfterSuccess,
    /// 403 AuthenticationFailed.
    AuthenticationFailed,
    /// 404 ContainerNotFound.
    ContainerMissing,
}

impl Fault {
    fn to_error(self, operation: Operation, name: &str) -> StorageError {
        let transient = |message: &str| StorageError::Transient {
            operation,
            name: name.to_string(),
            message: format!("injected: {message}"),
        };
        let permanent = |kind| StorageError::Permanent {
            operation,
            name: name.to_string(),
            kind,
            message: "injected".into(),
        };
        match self {
            Fault::ServerBusy => transient("503 ServerBusy"),
            Fault::InternalError => transient("500 OperationTimedOut"),
            Fault::Throttled => transient("429 Too Many Requests"),
            Fault::Timeout | Fault::TimeoutAfterSuccess => transient("request timed out"),
            Fault::ConnectionReset => transient("connection reset by peer"),
            Fault::AuthenticationFailed => permanent(PermanentKind::AuthenticationFailed),
            Fault::ContainerMissing => permanent(PermanentKind::ContainerMissing),
        }
    }
}

#[derive(Debug, Default)]
struct Plan {
    fault: Option<Fault>,
    /// Fail this many more calls (then stop).
    fail_next: u32,
    /// Fail every Nth call while set (N >= 1).
    fail_every: Option<u32>,
    latency: Duration,
    /// Extra latency for calls whose name contains the text.
    slow_names: Vec<(String, Duration)>,
    only: Option<Operation>,
    calls: u64,
    injected: u64,
    /// Each call's operation and name, while recording.
    recorded: Option<Vec<(Operation, String)>>,
}

/// The wrapper. Without a plan it passes every call through unchanged.
#[derive(Debug)]
pub struct FaultInjecting<S> {
    inner: S,
    plan: Mutex<Plan>,
}

impl<S: ObjectStorage> FaultInjecting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            plan: Mutex::new(Plan::default()),
        }
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        // A test that panicked while holding the lock already failed; keep going.
        self.plan.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next `count` calls (of `only`, if given) fail with `fault`.
    pub fn fail_next(&self, count: u32, fault: Fault, only: Option<Operation>) {
        let mut plan = self.plan();
        plan.fault = Some(fault);
        plan.fail_next = count;
        plan.fail_every = None;
        plan.only = only;
    }

    /// Every `every`th call (of `only`, if given) fails with `fault`, until [`Self::clear`].
    pub fn fail_every(&self, every: u32, fault: Fault, only: Option<Operation>) {
        let mut plan = self.plan();
        plan.fault = Some(fault);
        plan.fail_next = 0;
        plan.fail_every = Some(every.max(1));
        plan.only = only;
    }

    /// Every call waits this long first.
    pub fn set_latency(&self, latency: Duration) {
        self.plan().latency = latency;
    }

    /// Calls on names that contain `text` wait `latency` first (on top of any other latency).
    pub fn slow_names_containing(&self, text: &str, latency: Duration) {
        self.plan().slow_names.push((text.to_string(), latency));
    }

    /// Stops injecting faults and latency.
    pub fn clear(&self) {
        let mut plan = self.plan();
        plan.fault = None;
        plan.fail_next = 0;
        plan.fail_every = None;
        plan.latency = Duration::ZERO;
        plan.slow_names.clear();
    }

    /// Records every call from now on (its operation and name, for a list its prefix) until
    /// [`Self::take_recorded`].
    pub fn record_calls(&self) {
        self.plan().recorded = Some(Vec::new());
    }

    /// The calls recorded since [`Self::record_calls`], in order; recording stops.
    pub fn take_recorded(&self) -> Vec<(Operation, String)> {
        self.plan().recorded.take().unwrap_or_default()
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.plan().injected
    }

    /// Decides this call's fate: the latency to add and the fault to answer, if any.
    fn decide(&self, operation: Operation, name: &str) -> (Duration, Option<Fault>) {
        let mut plan = self.plan();
        let slowed: Duration = plan
            .slow_names
            .iter()
            .filter(|(text, _)| name.contains(text.as_str()))
            .map(|(_, latency)| *latency)
            .sum();
        if !slowed.is_zero() {
            plan.injected += 1;
        }
        plan.calls += 1;
        if let Some(recorded) = plan.recorded.as_mut() {
            recorded.push((operation, name.to_string()));
        }
        let applies = plan.only.is_none_or(|only| only == operation);
        let fault = match plan.fault {
            Some(fault) if applies && plan.fail_next > 0 => {
                plan.fail_next -= 1;
                Some(fault)
            }
            Some(fault) if applies && plan.fail_every.is_some_and(|n| plan.calls.is_multiple_of(u64::from(n))) => {
                Some(fault)
            }
            _ => None,
        };
        if fault.is_some() {
            plan.injected += 1;
        }
        (plan.latency + slowed, fault)
    }

    async fn run<T, Fut>(&self, operation: Operation, name: &str, call: Fut) -> Result<T, StorageError>
    where
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        let (latency, fault) = self.decide(operation, name);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match fault {
            None => call.await,
            Some(Fault::TimeoutAfterSuccess) => {
                call.await?;
                Err(Fault::TimeoutAfterSuccess.to_error(operation, name))
            }
            Some(fault) => Err(fault.to_error(operation, name)),
        }
    }
}

#[async_trait]
impl<S: ObjectStorage> ObjectStorage for FaultInjecting<S> {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.run(Operation::Put, name, self.inner.put(name, data)).await
    }

    async fn put_paced(&self, name: &str, data: Bytes, pace: &TokenBucket) -> Result<(), StorageError> {
        self.run(Operation::Put, name, self.inner.put_paced(name, data, pace))
            .await
    }

    async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        self.run(Operation::Get, name, self.inner.get(name)).await
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.run(Operation::Get, name, self.inner.get_range(name, range)).await
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta, StorageError> {
        self.run(Operation::Head, name, self.inner.head(name)).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_results: usize,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        self.run(
            Operation::List,
            prefix,
            self.inner.list_page(prefix, start_after, max_results),
        )
        .await
    }

    async fn list_directories(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.run(Operation::List, prefix, self.inner.list_directories(prefix))
            .await
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.run(Operation::Delete, name, self.inner.delete(name)).await
    }

    async fn put_new(&self, name: &str, data: Bytes) -> Result<bool, StorageError> {
        self.run(Operation::Put, name, self.inner.put_new(name, data)).await
    }

    async fn lease(&self, name: &str, op: crate::LeaseOp) -> Result<crate::LeaseAnswer, StorageError> {
        self.run(Operation::Lease, name, self.inner.lease(name, op)).await
    }

    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }
}
