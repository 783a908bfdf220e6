//! Holds: what an open order pays for (a bill, a group of fee bills) is held by that one order until its payment
//! succeeds, fails or its window closes, so two phones can never place two orders for one bill.
//!
//! A hold lives inside the held document (`hold: {order_id, until}`), taken and dropped in the document's own CAS,
//! so it needs no key of its own and a lapsed hold needs no clean-up: past `until` it holds nothing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::kv::{self, Key, Step, Store, StoreError};
use crate::orders::OrderError;

/// An open order's hold on a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The order.
    pub order_id: String,
    /// When the hold lapses (the order's payment deadline plus the reservation grace).
    pub until: Timestamp,
}

/// A document an order can hold.
pub trait Holdable: Serialize + DeserializeOwned + Clone {
    /// The hold, if any (lapsed or not).
    fn hold(&self) -> Option<&Hold>;
    /// Replaces the hold.
    fn set_hold(&mut self, hold: Option<Hold>);

    /// The open order other than `order_id` holding this document at `now`, if any.
    fn held_by_other(&self, order_id: Option<&str>, now: Timestamp) -> Option<&str> {
        self.hold().filter(|h| h.until > now && Some(h.order_id.as_str()) != order_id).map(|h| h.order_id.as_str())
    }
}

/// Holds the document at `key` for `order_id` until `until`, after `check` accepts it (open, the version priced...):
/// [`OrderError::InPayment`] naming the other order when another open order holds it (`item` says what it is).
pub async fn take<T, E>(
    store: &impl Store,
    key: &Key,
    item: &str,
    order_id: &str,
    until: Timestamp,
    now: Timestamp,
    check: impl Fn(Option<&T>) -> Result<(), E>,
) -> Result<(), E>
where
    T: Holdable,
    E: From<StoreError> + From<OrderError>,
{
    kv::update_json(store, key, |doc: Option<&T>| {
        check(doc)?;
        let Some(doc) = doc else { return Ok(Step::Keep(())) };
        if let Some(other) = doc.held_by_other(Some(order_id), now) {
            return Err(OrderError::InPayment { item: item.to_owned(), order_id: other.to_owned() }.into());
        }
        if doc.hold().is_some_and(|h| h.order_id == order_id && h.until == until) {
            return Ok(Step::Keep(()));
        }
        let mut next = doc.clone();
        next.set_hold(Some(Hold { order_id: order_id.to_owned(), until }));
        Ok(Step::Write(next, ()))
    })
    .await
}

/// Drops `order_id`'s hold on the document at `key`, if it still has it (idempotent).
pub async fn release<T, E>(store: &impl Store, key: &Key, order_id: &str) -> Result<(), E>
where
    T: Holdable,
    E: From<StoreError>,
{
    kv::update_json(store, key, |doc: Option<&T>| match doc {
        Some(doc) if doc.hold().is_some_and(|h| h.order_id == order_id) => {
            let mut next = doc.clone();
            next.set_hold(None);
            Ok::<_, E>(Step::Write(next, ()))
        }
        _ => Ok(Step::Keep(())),
    })
    .await
}
