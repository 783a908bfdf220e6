//! Customer events: the one way a scenario reports what a customer did.
//!
//! [`record`] applies an event to the customer's profile — automatic tags, activity, payments, lifecycle stage —
//! in one compare-and-swap of the profile document, which also remembers the event id: an event applied twice
//! changes the profile once. It then moves the funnel counters (`ops:funnel:{day}:{step}:{dimension}`), all behind
//! one per-event claim (`kv::count_all_once`), so a retried event never counts twice. (A crash between the claim
//! and its increments loses those counts: counters are analytics, and an undercount is the safe side.)
//!
//! Funnel steps: `visited` (a channel code resolved), `registered`, `activated` (first payment, top-up or
//! redemption), `retained` (activity on a day at least [`RETAINED_AFTER_DAYS`] after registration). Dimensions: `all`,
//! `ch:{channel code}`, `cp:{campaign}`, `sc:{scenario}`; registration, activation and retention are attributed to
//! the customer's first touch.
//!
//! Beside the funnel, the same claimed effects keep the operator counters `core::insights` reads:
//! - `ops:tta:{day}:{bucket}:{dimension}`: time from registration to activation, a histogram of
//!   [`TTA_BUCKETS`] exponential minute buckets ([`tta_bucket`]) per activation day and funnel dimension, counted
//!   with the activation (behind the same per-event claim);
//! - `ops:stage:{stage}`: customers per stored stage, +1 on `new` at registration, −1 on the old and +1 on the new
//!   stage at each transition; `ops:trans:{day}:{from}:{to}`: transitions per day. These are claimed per entry of
//!   the profile's stage history (`cust:stagefx:{customer}:{entry}`), not per event, so whichever event or
//!   replay meets a transition first applies it, and never twice. Dormancy is evaluated on read and never
//!   stored, so it never moves these counters.
//!
//! A registration may instead be written with its profile ([`register`]: the login creates the profile with its
//! `registered` event applied, one write instead of a creation and a compare-and-swap) and counted by
//! [`count_registration`] behind the caller's own exactly-once claim, without the per-event and per-entry claims.
//! Entry 0 of the stage history (registration's `new`) is owed by the `registered` event alone, so no replay of
//! another event counts it.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::customers::{
    self, APPLIED_EVENTS_KEPT, Customer, LifecycleRules, PAYMENTS_KEPT, Payment, Stage, Touch, Transition,
};
use crate::ids::hash_key_part;
use crate::kv::{self, Step, Store, StoreError};
use crate::problem::{ErrorKind, Problem};

/// Activity this many days after registration counts as retention.
pub const RETAINED_AFTER_DAYS: i64 = 7;

/// Buckets of the time-to-activate histogram: bucket 0 is under a minute, bucket `b` from 1 to 17 is
/// `[2^(b-1), 2^b)` minutes, bucket 18 is 2^17 minutes (about 91 days) or more.
pub const TTA_BUCKETS: usize = 19;

/// The time-to-activate bucket of `minutes` (see [`TTA_BUCKETS`]).
pub fn tta_bucket(minutes: i64) -> usize {
    if minutes < 1 {
        return 0;
    }
    // floor(log2(minutes)) + 1, at most the last (open) bucket.
    let bits = 64 - minutes.leading_zeros();
    usize::try_from(bits).unwrap_or(TTA_BUCKETS).min(TTA_BUCKETS - 1)
}

/// The minutes a time-to-activate bucket covers: `[from, to)`, `to` `None` for the last, open bucket.
pub fn tta_bucket_bounds(bucket: usize) -> (i64, Option<i64>) {
    match bucket {
        0 => (0, Some(1)),
        b if b < TTA_BUCKETS - 1 => (1 << (b - 1), Some(1 << b)),
        _ => (1 << (TTA_BUCKETS - 2), None),
    }
}

/// What a customer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Became a customer.
    Registered,
    /// Bound a household account, room or card.
    BoundAccount,
    /// Paid a bill or fee.
    Paid,
    /// Topped up stored value.
    ToppedUp,
    /// Claimed a coupon.
    Claimed,
    /// Redeemed a coupon.
    Redeemed,
    /// Referred someone.
    Referred,
    /// Had a payment refunded.
    Refunded,
}

impl EventKind {
    fn activates(self) -> bool {
        matches!(self, EventKind::Paid | EventKind::ToppedUp | EventKind::Redeemed)
    }

    fn is_payment(self) -> bool {
        matches!(self, EventKind::Paid | EventKind::ToppedUp)
    }
}

/// An event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id, deterministic for the fact it reports (e.g. `paid:{order_id}`), so a retry reuses it.
    pub id: String,
    /// The customer.
    pub customer_id: String,
    /// What happened.
    pub kind: EventKind,
    /// Scenario: `customers`, `utility`, `property`, `campus`, `coupons`, `referrals`.
    pub scenario: String,
    /// When.
    pub at: Timestamp,
    /// Amount in fen, for payments, top-ups and refunds.
    #[serde(default)]
    pub amount_fen: Option<i64>,
    /// Paid with the bank's own card.
    #[serde(default)]
    pub bank_card: bool,
    /// Extra automatic tags the scenario knows apply (e.g. `campus_student`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Why an event was not recorded.
impl Event {
    /// An event with no amount, not by the bank's card, with no extra tags (set those with struct update syntax).
    pub fn new(id: String, customer_id: &str, kind: EventKind, scenario: &str, at: Timestamp) -> Event {
        Event {
            id,
            customer_id: customer_id.to_owned(),
            kind,
            scenario: scenario.to_owned(),
            at,
            amount_fen: None,
            bank_card: false,
            tags: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// No such customer.
    #[error("customer {0} does not exist")]
    UnknownCustomer(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for EventError {
    fn kind(&self) -> ErrorKind {
        match self {
            EventError::UnknownCustomer(_) => ErrorKind::NotFound,
            EventError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            EventError::UnknownCustomer(_) => "customer_not_found",
            EventError::Store(e) => e.code(),
        }
    }
}

/// The outcome of [`record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// False when the event had been applied before.
    pub first_time: bool,
    /// The stage after the event.
    pub stage: Stage,
    /// The stage change, if the event caused one.
    pub transition: Option<(Stage, Stage)>,
}

/// Funnel steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunnelStep {
    /// A channel code was resolved.
    Visited,
    /// A customer registered.
    Registered,
    /// A customer activated.
    Activated,
    /// A customer came back.
    Retained,
}

impl FunnelStep {
    /// The wire and key name.
    pub fn as_str(self) -> &'static str {
        match self {
            FunnelStep::Visited => "visited",
            FunnelStep::Registered => "registered",
            FunnelStep::Activated => "activated",
            FunnelStep::Retained => "retained",
        }
    }
}

/// Keys owned here (`ops:` is core's).
pub mod keys {
    use crate::kv::Key;

    /// `ops:funnel:{yyyymmdd}:{step}:{dimension}` — a counter.
    pub fn funnel(day: u32, step: &str, dimension: &str) -> Key {
        Key::new(&["ops", "funnel", &day.to_string(), step, dimension])
    }

    /// `cust:event:{hash(event id)}:fx` — the claim for an event's funnel and time-to-activate counts.
    pub fn effect_claim(event_hash: &str) -> Key {
        Key::new(&["cust", "event", event_hash, "fx"])
    }

    /// `ops:tta:{yyyymmdd}:{bucket}:{dimension}` — activations that day whose time to activate fell in the bucket
    /// (a counter).
    pub fn tta(day: u32, bucket: usize, dimension: &str) -> Key {
        Key::new(&["ops", "tta", &day.to_string(), &bucket.to_string(), dimension])
    }

    /// `ops:stage:{stage}` — customers whose stored stage it is (a counter).
    pub fn stage(stage: &str) -> Key {
        Key::new(&["ops", "stage", stage])
    }

    /// `ops:trans:{yyyymmdd}:{from}:{to}` — stage transitions that day (a counter).
    pub fn transitions(day: u32, from: &str, to: &str) -> Key {
        Key::new(&["ops", "trans", &day.to_string(), from, to])
    }

    /// `cust:stagefx:{customer}:{entry}` — the claim for the stage counters of the customer's stage history entry
    /// `entry`.
    pub fn stage_claim(customer_id: &str, entry: usize) -> Key {
        Key::new(&["cust", "stagefx", customer_id, &entry.to_string()])
    }
}

/// The funnel dimension of everything (`all`).
pub const ALL: &str = "all";

/// The funnel dimension of a channel code: `ch:{code}`.
pub fn channel_dimension(code: &str) -> String {
    format!("ch:{code}")
}

/// The funnel dimension of a campaign: `cp:{campaign}`.
pub fn campaign_dimension(campaign_id: &str) -> String {
    format!("cp:{campaign_id}")
}

/// The funnel dimension of a scenario: `sc:{scenario}`.
pub fn scenario_dimension(scenario: &str) -> String {
    format!("sc:{scenario}")
}

/// The funnel dimensions a touch (plus the event's scenario) contributes to.
pub fn dimensions(touch: Option<&Touch>, scenario: Option<&str>) -> Vec<String> {
    let mut dims = vec![ALL.to_owned()];
    if let Some(t) = touch {
        dims.push(channel_dimension(&t.code));
        if let Some(c) = &t.campaign_id {
            dims.push(campaign_dimension(c));
        }
    }
    let scenario = scenario.or(touch.and_then(|t| t.scenario.as_deref()));
    if let Some(s) = scenario {
        dims.push(scenario_dimension(s));
    }
    dims
}

/// Applies an event to the profile (pure): returns the new profile and the funnel steps it reached.
pub fn apply(customer: &Customer, event: &Event, rules: &LifecycleRules) -> (Customer, Vec<FunnelStep>) {
    let mut c = customer.clone();
    let mut steps = Vec::new();
    if event.kind == EventKind::Registered {
        steps.push(FunnelStep::Registered);
    }
    let activity = !matches!(event.kind, EventKind::Registered);
    if activity {
        c.last_activity_at = Some(c.last_activity_at.map_or(event.at, |t| t.max(event.at)));
    }
    if event.kind.activates() && c.activated_at.is_none() {
        c.activated_at = Some(event.at);
        steps.push(FunnelStep::Activated);
    }
    if activity
        && !c.retained
        && event.at.shanghai_day_number() - c.created_at.shanghai_day_number() >= RETAINED_AFTER_DAYS
    {
        c.retained = true;
        steps.push(FunnelStep::Retained);
    }
    if event.kind.is_payment() {
        c.payments.push(Payment {
            at: event.at,
            amount_fen: event.amount_fen.unwrap_or(0),
            bank_card: event.bank_card,
            scenario: event.scenario.clone(),
        });
        let horizon = event.at.plus_days(-rules.high_value_window_days.max(rules.engaged_window_days));
        c.payments.retain(|p| p.at > horizon);
        let excess = c.payments.len().saturating_sub(PAYMENTS_KEPT);
        c.payments.drain(..excess);
    }
    for tag in auto_tags(event) {
        c.tags.auto.insert(tag);
    }
    let stage = c.stage_at(event.at, rules);
    if stage != c.stage {
        c.stage = stage;
        c.history.push(Transition { stage, at: event.at });
    }
    c.applied_events.push(event.id.clone());
    let excess = c.applied_events.len().saturating_sub(APPLIED_EVENTS_KEPT);
    c.applied_events.drain(..excess);
    (c, steps)
}

fn auto_tags(event: &Event) -> Vec<String> {
    let mut tags: Vec<String> = event.tags.clone();
    let scenario = event.scenario.as_str();
    let derived = match (event.kind, scenario) {
        (EventKind::Paid, "utility") => Some("utility_payer"),
        (EventKind::Paid | EventKind::BoundAccount, "property") => Some("property_owner"),
        (EventKind::Redeemed | EventKind::Claimed, _) => Some("coupon_user"),
        (EventKind::Referred, _) => Some("referrer"),
        (EventKind::ToppedUp, "campus") => Some("campus_card_user"),
        _ => None,
    };
    tags.extend(derived.map(str::to_owned));
    if event.bank_card && event.kind.is_payment() {
        tags.push("bank_cardholder".to_owned());
    }
    // Scenario tags may carry an id (`community:{id}`), so `:` and `-` are allowed here, unlike operator tags.
    tags.retain(|t| {
        !t.is_empty()
            && t.len() <= 80
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
    });
    tags
}

/// Records an event: profile first (exactly once), then the funnel, time-to-activate and stage counters (each at
/// most once), then the referral facts of a payment or refund ([`crate::referrals::on_event`], idempotent).
pub async fn record(store: &impl Store, event: &Event, rules: &LifecycleRules) -> Result<Applied, EventError> {
    let key = customers::keys::customer(&event.customer_id);
    if !customers::valid_id(&event.customer_id) {
        return Err(EventError::UnknownCustomer(event.customer_id.clone()));
    }
    let (applied, effects) = kv::update_json(store, &key, |current: Option<&Customer>| {
        let Some(current) = current else { return Err(EventError::UnknownCustomer(event.customer_id.clone())) };
        let before = current.stage;
        if current.applied_events.contains(&event.id) {
            // Already applied: redo only the (claimed) counter effects, in case they were interrupted.
            let effects = Effects::of(current, event, replay_steps(current, event), None);
            let applied = Applied { first_time: false, stage: current.stage, transition: None };
            return Ok(Step::Keep((applied, effects)));
        }
        let (next, steps) = apply(current, event, rules);
        let transition = (next.stage != before).then_some((before, next.stage));
        let applied = Applied { first_time: true, stage: next.stage, transition };
        let effects = Effects::of(&next, event, steps, Some(current.history.len()));
        Ok(Step::Write(next, (applied, effects)))
    })
    .await?;
    count(store, event, &effects).await?;
    // A payment may qualify the customer's referral, a refund claw it back (whatever the scenario).
    crate::referrals::on_event(store, event).await?;
    Ok(applied)
}

/// The counter effects an event owes, read from the profile it produced (or found, on a replay).
struct Effects {
    /// The first touch the funnel attributes to.
    touch: Option<Touch>,
    /// Funnel steps reached.
    steps: Vec<FunnelStep>,
    /// Whole minutes from registration to activation, when the event activated the customer.
    tta_minutes: Option<i64>,
    /// Stage history entries stamped with the event's instant: `(entry, previous stage, stage)`.
    stages: Vec<(usize, Option<Stage>, Stage)>,
}

impl Effects {
    /// `added_from`: on first application, the length of the history before the event, so only the entries the
    /// event added (and registration's `new`, for the `registered` event) owe their effects; on a replay `None`, and
    /// the entries stamped with the event's instant are redone (their effects are claimed, so at most once).
    fn of(c: &Customer, event: &Event, steps: Vec<FunnelStep>, added_from: Option<usize>) -> Effects {
        let tta_minutes = steps
            .contains(&FunnelStep::Activated)
            .then(|| c.activated_at.unwrap_or(event.at).secs_since(c.created_at).max(0) / 60);
        // Transitions are stamped with the instant of the event that caused them, and registration's `new` with the
        // registration instant (the `registered` event's), so these are the entries this event may have added.
        // Others stamped with the same instant are harmless: their effects are claimed per entry.
        let stages = c
            .history
            .iter()
            .enumerate()
            .filter(|&(i, t)| match added_from {
                Some(from) => i >= from || (i == 0 && event.kind == EventKind::Registered),
                // Entry 0 is registration's `new`: only the `registered` event owes it (a registration written with
                // its profile counts it without this claim, see `count_registration`).
                None => t.at == event.at && (i > 0 || event.kind == EventKind::Registered),
            })
            .map(|(i, t)| (i, i.checked_sub(1).map(|p| c.history[p].stage), t.stage))
            .collect();
        Effects { touch: c.first_touch.clone(), steps, tta_minutes, stages }
    }
}

/// The steps an already-applied event reached, reconstructed from the profile.
fn replay_steps(c: &Customer, event: &Event) -> Vec<FunnelStep> {
    let mut steps = Vec::new();
    if event.kind == EventKind::Registered {
        steps.push(FunnelStep::Registered);
    }
    if c.activated_at == Some(event.at) && event.kind.activates() {
        steps.push(FunnelStep::Activated);
    }
    steps
}

async fn count(store: &impl Store, event: &Event, effects: &Effects) -> Result<(), StoreError> {
    let event_hash = hash_key_part(&event.id);
    let day = event.at.shanghai_day();
    // The funnel steps and the time-to-activate histogram the event reached, behind one claim for the event.
    kv::count_all_once(store, &keys::effect_claim(&event_hash), &funnel_counters(event, effects)).await?;
    // Each stage history entry's counters, behind one claim for the entry.
    for &(entry, from, to) in &effects.stages {
        let changes = stage_counters(day, from, to);
        kv::count_all_once(store, &keys::stage_claim(&event.customer_id, entry), &changes).await?;
    }
    Ok(())
}

/// The funnel and time-to-activate counters an event's effects move.
fn funnel_counters(event: &Event, effects: &Effects) -> Vec<(kv::Key, i64)> {
    let day = event.at.shanghai_day();
    let dims = dimensions(effects.touch.as_ref(), Some(&event.scenario));
    let mut counters = Vec::new();
    for step in &effects.steps {
        counters.extend(dims.iter().map(|dim| (keys::funnel(day, step.as_str(), dim), 1)));
    }
    if let Some(minutes) = effects.tta_minutes {
        let bucket = tta_bucket(minutes);
        counters.extend(dims.iter().map(|dim| (keys::tta(day, bucket, dim), 1)));
    }
    counters
}

/// The stage counters of a stage history entry: `to` entered (from `from`, unless it is the first entry).
fn stage_counters(day: u32, from: Option<Stage>, to: Stage) -> Vec<(kv::Key, i64)> {
    match from {
        None => vec![(keys::stage(to.as_str()), 1)],
        Some(from) => vec![
            (keys::stage(from.as_str()), -1),
            (keys::stage(to.as_str()), 1),
            (keys::transitions(day, from.as_str(), to.as_str()), 1),
        ],
    }
}

/// The `registered` event of a profile: `registered:{id}`, at its creation, in the scenario of its first touch
/// (`customers` without one).
pub fn registration(customer: &Customer) -> Event {
    let scenario = customer.first_touch.as_ref().and_then(|t| t.scenario.as_deref()).unwrap_or("customers");
    let id = format!("registered:{}", customer.id);
    Event::new(id, &customer.id, EventKind::Registered, scenario, customer.created_at)
}

/// Whether the profile surely lacks its [`registration`] event: not among its applied events while they are fewer
/// than [`APPLIED_EVENTS_KEPT`], so none has been forgotten (an old registration may have been).
pub fn unregistered(customer: &Customer) -> bool {
    let id = registration(customer).id;
    customer.applied_events.len() < APPLIED_EVENTS_KEPT && !customer.applied_events.contains(&id)
}

/// The profile with its [`registration`] event applied (pure): for a registration that writes the profile and its
/// `registered` event in one write (the login's creation of the profile), instead of a second compare-and-swap
/// through [`record`]. Its counters are then moved by [`count_registration`], once.
pub fn register(customer: &Customer, rules: &LifecycleRules) -> Customer {
    apply(customer, &registration(customer), rules).0
}

/// Counts a registration written with [`register`]: the `registered` funnel step (per dimension of the first touch
/// and the event's scenario) and the `new` stage of history entry 0, with plain increments and no claims. The
/// caller guarantees that each registration is counted once: it holds an exactly-once claim of its own (the
/// customers component counts when it creates the identity index entry of the identity the customer is derived
/// from, see `customers_domain::sessions`). So such a profile's `registered` event must never go through [`record`]
/// (its replay would count again); replays of other events never count entry 0. When an
/// increment fails, the ones before it are taken back (best effort): the group is counted whole or not at all
/// (at most once, like every funnel counter).
pub async fn count_registration(store: &impl Store, customer: &Customer) -> Result<(), StoreError> {
    let event = registration(customer);
    let effects = Effects::of(customer, &event, vec![FunnelStep::Registered], Some(customer.history.len()));
    let day = event.at.shanghai_day();
    let mut counters = funnel_counters(&event, &effects);
    for &(_, from, to) in &effects.stages {
        counters.extend(stage_counters(day, from, to));
    }
    for (done, (counter, delta)) in counters.iter().enumerate() {
        if let Err(e) = store.increment(counter, *delta).await {
            for (counter, delta) in &counters[..done] {
                if store.increment(counter, -delta).await.is_err() {
                    break;
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Counts a `visited` step for a resolved channel code (anonymous, so every resolution counts).
pub async fn count_visit(store: &impl Store, touch: &Touch) -> Result<(), StoreError> {
    let day = touch.at.shanghai_day();
    for dim in dimensions(Some(touch), None) {
        store.increment(&keys::funnel(day, FunnelStep::Visited.as_str(), &dim), 1).await?;
    }
    Ok(())
}

/// Reads one funnel counter.
pub async fn funnel_count(store: &impl Store, day: u32, step: FunnelStep, dimension: &str) -> Result<i64, StoreError> {
    kv::read_counter(store, &keys::funnel(day, step.as_str(), dimension)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{MemStore, put_json};

    fn at(day: i64) -> Timestamp {
        Timestamp::parse_rfc3339("2026-11-23T10:00:00+08:00").expect("time").plus_days(day)
    }

    fn touch() -> Touch {
        Touch {
            code: "BR001".into(),
            channel: "branch".into(),
            branch_id: Some("b1".into()),
            staff_id: None,
            campaign_id: Some("spring".into()),
            scenario: Some("utility".into()),
            at: at(0),
        }
    }

    fn customer(store: &MemStore) {
        let mut c = Customer::new("c1", at(0));
        c.first_touch = Some(touch());
        pollster::block_on(put_json(store, &customers::keys::customer("c1"), &c)).expect("seed");
    }

    fn event(id: &str, kind: EventKind, day: i64) -> Event {
        Event {
            id: id.into(),
            customer_id: "c1".into(),
            kind,
            scenario: "utility".into(),
            at: at(day),
            amount_fen: Some(12_300),
            bank_card: true,
            tags: vec![],
        }
    }

    fn funnel(store: &MemStore, step: FunnelStep, dim: &str, day: i64) -> i64 {
        pollster::block_on(funnel_count(store, at(day).shanghai_day(), step, dim)).expect("count")
    }

    #[test]
    fn an_event_applied_twice_counts_once() {
        let store = MemStore::default();
        customer(&store);
        let rules = LifecycleRules::default();
        let e = event("paid:o1", EventKind::Paid, 0);

        let first = pollster::block_on(record(&store, &e, &rules)).expect("record");
        let second = pollster::block_on(record(&store, &e, &rules)).expect("record");

        assert_eq!(
            first,
            Applied { first_time: true, stage: Stage::Activated, transition: Some((Stage::New, Stage::Activated)) }
        );
        assert!(!second.first_time);
        let c = pollster::block_on(customers::lookup(&store, "c1")).expect("read").expect("exists");
        assert_eq!(c.payments.len(), 1);
        assert!(c.tags.auto.contains("utility_payer") && c.tags.auto.contains("bank_cardholder"));
        assert_eq!(funnel(&store, FunnelStep::Activated, "all", 0), 1);
        assert_eq!(funnel(&store, FunnelStep::Activated, "ch:BR001", 0), 1);
        assert_eq!(funnel(&store, FunnelStep::Activated, "cp:spring", 0), 1);
        assert_eq!(funnel(&store, FunnelStep::Activated, "sc:utility", 0), 1);
    }

    /// `c1` registered as the login registers it: the profile written with its `registered` event, then counted.
    fn registered_customer(store: &MemStore) -> Customer {
        let mut c = Customer::new("c1", at(0));
        c.first_touch = Some(touch());
        let c = register(&c, &LifecycleRules::default());
        pollster::block_on(put_json(store, &customers::keys::customer("c1"), &c)).expect("seed");
        pollster::block_on(count_registration(store, &c)).expect("count");
        c
    }

    #[test]
    fn a_registration_written_with_its_profile_is_counted_by_the_caller() {
        let store = MemStore::default();
        let fresh = Customer::new("c1", at(0));
        assert!(unregistered(&fresh));
        let c = registered_customer(&store);
        assert!(!unregistered(&c));
        assert_eq!(c.applied_events, vec!["registered:c1".to_owned()]);
        assert_eq!((c.stage, c.history.len()), (Stage::New, 1));
        for dim in ["all", "ch:BR001", "cp:spring", "sc:utility"] {
            assert_eq!(funnel(&store, FunnelStep::Registered, dim, 0), 1, "{dim}");
        }
        let counter = |key: crate::kv::Key| pollster::block_on(kv::read_counter(&store, &key)).expect("counter");
        assert_eq!(counter(keys::stage("new")), 1);
        // No claim was taken: the caller's own claim made it once.
        assert!(store.keys().iter().all(|k| !k.starts_with("cust:event:") && !k.starts_with("cust:stagefx:")));
        // An event at the registration's instant, applied and replayed, never counts entry 0 again.
        let e = Event::new("bound:x".into(), "c1", EventKind::BoundAccount, "utility", at(0));
        pollster::block_on(record(&store, &e, &LifecycleRules::default())).expect("record");
        pollster::block_on(record(&store, &e, &LifecycleRules::default())).expect("replay");
        assert_eq!(counter(keys::stage("new")), 1);
        assert_eq!(funnel(&store, FunnelStep::Registered, "all", 0), 1);
    }

    #[test]
    fn a_profile_with_forgotten_events_is_not_taken_for_unregistered() {
        let mut c = Customer::new("c1", at(0));
        c.applied_events = (0..APPLIED_EVENTS_KEPT).map(|i| format!("paid:o{i}")).collect();
        assert!(!unregistered(&c), "its registration may be among the forgotten");
    }

    #[test]
    fn concurrent_duplicates_apply_once() {
        let store = MemStore::default();
        registered_customer(&store);
        let rules = LifecycleRules::default();
        let e = event("paid:o2", EventKind::Paid, 0);
        let results =
            pollster::block_on(crate::kv::interleave::join_all((0..5).map(|_| record(&store, &e, &rules)).collect()));
        assert_eq!(results.iter().filter(|r| matches!(r, Ok(a) if a.first_time)).count(), 1, "{results:?}");
        assert_eq!(funnel(&store, FunnelStep::Activated, "all", 0), 1);
        let counter = |key: crate::kv::Key| pollster::block_on(kv::read_counter(&store, &key)).expect("counter");
        let day = at(0).shanghai_day();
        // Registered and paid at the same instant: under a minute to activate.
        assert_eq!(counter(keys::tta(day, 0, "cp:spring")), 1);
        assert_eq!(counter(keys::transitions(day, "new", "activated")), 1);
        assert_eq!(counter(keys::stage("activated")), 1);
        // Registered at the payment's instant: its `new` entry, counted by the registration (and by no replay), left.
        assert_eq!(counter(keys::stage("new")), 0);
    }

    #[test]
    fn a_crash_mid_event_is_completed_by_the_retry_without_double_counting() {
        let store = MemStore::default();
        customer(&store);
        let rules = LifecycleRules::default();
        let e = event("paid:o3", EventKind::Paid, 0);
        // Writes: 1 profile CAS, then (claim, increment) per dimension. Fail the 4th: the second claim.
        store.fail_write(4);
        assert!(pollster::block_on(record(&store, &e, &rules)).is_err());
        let retry = pollster::block_on(record(&store, &e, &rules)).expect("retry");
        assert!(!retry.first_time);
        for dim in ["all", "ch:BR001", "cp:spring", "sc:utility"] {
            assert_eq!(funnel(&store, FunnelStep::Activated, dim, 0), 1, "{dim}");
        }
    }

    #[test]
    fn retention_and_lifecycle_move_with_events() {
        let store = MemStore::default();
        customer(&store);
        let rules = LifecycleRules::default();
        for (i, day) in [0, 1, 8].into_iter().enumerate() {
            pollster::block_on(record(&store, &event(&format!("paid:r{i}"), EventKind::Paid, day), &rules))
                .expect("record");
        }
        let c = pollster::block_on(customers::lookup(&store, "c1")).expect("read").expect("exists");
        assert!(c.retained);
        assert_eq!(funnel(&store, FunnelStep::Retained, "all", 8), 1);
        assert_eq!(c.stage, Stage::Engaged);
        assert_eq!(
            c.history.iter().map(|t| t.stage).collect::<Vec<_>>(),
            vec![Stage::New, Stage::Activated, Stage::Engaged]
        );
    }

    #[test]
    fn events_for_unknown_customers_are_refused() {
        let store = MemStore::default();
        let e = Event { customer_id: "nobody".into(), ..event("paid:x", EventKind::Paid, 0) };
        assert_eq!(
            pollster::block_on(record(&store, &e, &LifecycleRules::default())),
            Err(EventError::UnknownCustomer("nobody".into()))
        );
        assert!(store.keys().iter().all(|k| !k.starts_with("cust:customer")), "nothing written");
    }
}
