//! Operator tags and the operator's view of a customer.

use scenefin_core::customers::{self, Customer, keys};
use scenefin_core::kv::{self, Step, Store};

use crate::CustomerError;

/// Longest tag.
pub const MAX_TAG_LEN: usize = 32;
/// Most operator tags on one customer.
pub const MAX_OPERATOR_TAGS: usize = 50;

/// Checks a tag: 1 to 32 of `[a-z0-9_]`.
pub fn parse_tag(tag: &str) -> Result<&str, CustomerError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(tag)
    } else {
        Err(CustomerError::Invalid {
            field: "tag",
            message: "1 to 32 lower-case letters, digits or underscores".into(),
        })
    }
}

/// Reads a customer for an operator.
pub async fn get(store: &impl Store, id: &str) -> Result<Customer, CustomerError> {
    customers::lookup(store, id).await?.ok_or(CustomerError::NotFound)
}

/// Adds (`add = true`) or removes an operator tag; returns the profile after the change.
pub async fn set_tag(store: &impl Store, id: &str, tag: &str, add: bool) -> Result<Customer, CustomerError> {
    let tag = parse_tag(tag)?;
    if !customers::valid_id(id) {
        return Err(CustomerError::NotFound);
    }
    kv::update_json(store, &keys::customer(id), |current: Option<&Customer>| {
        let Some(current) = current else { return Err(CustomerError::NotFound) };
        let present = current.tags.operator.contains(tag);
        if present == add {
            return Ok(Step::Keep(current.clone()));
        }
        let mut next = current.clone();
        if add {
            if next.tags.operator.len() >= MAX_OPERATOR_TAGS {
                return Err(CustomerError::Invalid {
                    field: "tag",
                    message: format!("at most {MAX_OPERATOR_TAGS} operator tags"),
                });
            }
            next.tags.operator.insert(tag.to_owned());
        } else {
            next.tags.operator.remove(tag);
        }
        Ok(Step::Write(next.clone(), next))
    })
    .await
}

/// An offline activity recorded by an operator.
#[derive(Debug, Clone)]
pub struct Offline {
    /// The operator's id for it (made unique per customer), so a repeated submission records once.
    pub event_id: String,
    /// What happened.
    pub kind: scenefin_core::events::EventKind,
    /// Scenario.
    pub scenario: String,
    /// Amount, for payments.
    pub amount_fen: Option<i64>,
    /// Paid with the bank's card.
    pub bank_card: bool,
}

/// Records an offline activity through core's events (tags, lifecycle, funnel), exactly once per event id.
pub async fn record_offline(
    store: &impl Store,
    id: &str,
    input: Offline,
    now: scenefin_core::clock::Timestamp,
    rules: &customers::LifecycleRules,
) -> Result<scenefin_core::events::Applied, CustomerError> {
    use scenefin_core::events::{self, Event, EventKind};
    if scenefin_core::ids::Id::parse(&input.event_id).is_err() {
        return Err(CustomerError::Invalid {
            field: "event_id",
            message: "1 to 64 letters, digits, underscores or hyphens".into(),
        });
    }
    if !crate::channels::SCENARIOS.contains(&input.scenario.as_str()) {
        return Err(CustomerError::Invalid {
            field: "scenario",
            message: format!("one of {}", crate::channels::SCENARIOS.join(", ")),
        });
    }
    if input.kind == EventKind::Registered {
        return Err(CustomerError::Invalid { field: "kind", message: "registration happens at login".into() });
    }
    match input.amount_fen {
        Some(a) if a <= 0 || a > 100_000_000 => {
            return Err(CustomerError::Invalid {
                field: "amount_fen",
                message: "a positive integer up to 100000000".into(),
            });
        }
        None if matches!(input.kind, EventKind::Paid | EventKind::ToppedUp) => {
            return Err(CustomerError::Invalid {
                field: "amount_fen",
                message: "required for payments and top-ups".into(),
            });
        }
        _ => {}
    }
    if !customers::valid_id(id) {
        return Err(CustomerError::NotFound);
    }
    let event = Event {
        id: format!("offline:{id}:{}", input.event_id),
        customer_id: id.to_owned(),
        kind: input.kind,
        scenario: input.scenario,
        at: now,
        amount_fen: input.amount_fen,
        bank_card: input.bank_card,
        tags: vec![],
    };
    Ok(events::record(store, &event, rules).await?)
}
