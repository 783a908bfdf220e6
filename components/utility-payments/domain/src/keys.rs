//! Keys owned by utility-payments (`util:`).

use scenefin_core::ids::hash_key_part;
use scenefin_core::kv::Key;

/// `util:biller:{id}` → biller document.
pub fn biller(id: &str) -> Key {
    Key::new(&["util", "biller", id])
}

/// `util:biller:{id}:claim` → creation claim.
pub fn biller_claim(id: &str) -> Key {
    biller(id).child(&["claim"])
}

/// `util:billers:idx` → list of biller ids.
pub fn biller_index() -> Key {
    Key::new(&["util", "billers", "idx"])
}

/// `util:bill:{biller}:{bill_id}` → bill document.
pub fn bill(biller_id: &str, bill_id: &str) -> Key {
    Key::new(&["util", "bill", biller_id, bill_id])
}

/// `util:acct:{biller}:{hash(account_no)}` → household account (holder, bill ids).
pub fn account(biller_id: &str, account_no: &str) -> Key {
    Key::new(&["util", "acct", biller_id, &hash_key_part(account_no)])
}

/// `util:cust:{customer}:accounts` → the customer's bound accounts.
pub fn bindings(customer_id: &str) -> Key {
    Key::new(&["util", "cust", customer_id, "accounts"])
}

/// `util:bind:{customer}:{biller}:{hash(account_no)}` → claim counting a first binding once.
pub fn first_binding(customer_id: &str, biller_id: &str, account_no: &str) -> Key {
    Key::new(&["util", "bind", customer_id, biller_id, &hash_key_part(account_no)])
}

/// `util:budget:{budget_id}` → base key of a discount budget (core limits).
pub fn budget(budget_id: &str) -> Key {
    Key::new(&["util", "budget", budget_id])
}

/// `util:biller:{id}:ctr:{name}` → a stats counter.
pub fn stat(biller_id: &str, name: &str) -> Key {
    biller(biller_id).child(&["ctr", name])
}

/// `util:order:{order}:fx:{name}` → claim that an order's effect was counted.
pub fn order_effect(order_id: &str, name: &str) -> Key {
    Key::new(&["util", "order", order_id, "fx", name])
}
