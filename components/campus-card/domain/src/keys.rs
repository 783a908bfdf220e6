//! Keys owned by campus-card (`campus:`).

use scenefin_core::ids::hash_key_part;
use scenefin_core::kv::Key;

/// `campus:school:{id}` → school (write-once).
pub fn school(id: &str) -> Key {
    Key::new(&["campus", "school", id])
}

/// `campus:schools` → every school id (index).
pub fn schools() -> Key {
    Key::new(&["campus", "schools"])
}

/// `campus:school:{id}:claim` → creation claim.
pub fn school_claim(id: &str) -> Key {
    school(id).child(&["claim"])
}

/// `campus:school:{id}:ctr:{name}` → a statistics counter.
pub fn stat(school_id: &str, name: &str) -> Key {
    school(school_id).child(&["ctr", name])
}

/// `campus:school:{id}:merchants` → the school's merchant ids.
pub fn merchants(school_id: &str) -> Key {
    school(school_id).child(&["merchants"])
}

/// `campus:merchant:{id}` → merchant (write-once).
pub fn merchant(id: &str) -> Key {
    Key::new(&["campus", "merchant", id])
}

/// `campus:merchant:{id}:claim` → creation claim.
pub fn merchant_claim(id: &str) -> Key {
    merchant(id).child(&["claim"])
}

/// `campus:member:{school}:{hash(member_no)}` → member.
pub fn member(school_id: &str, member_no: &str) -> Key {
    Key::new(&["campus", "member", school_id, &hash_key_part(member_no)])
}

/// `campus:card:{id}` → card.
pub fn card(card_id: &str) -> Key {
    Key::new(&["campus", "card", card_id])
}

/// `campus:card:{id}:day:{yyyymmdd}` → fen spent that day (capped counter).
pub fn spent(card_id: &str, day: u32) -> Key {
    card(card_id).child(&["day", &day.to_string()])
}

/// `campus:card:{id}:txn_seq` → the last transaction number (counter).
pub fn txn_seq(card_id: &str) -> Key {
    card(card_id).child(&["txn_seq"])
}

/// `campus:card:{id}:txn:{n}` → transaction `n`.
pub fn txn(card_id: &str, n: i64) -> Key {
    card(card_id).child(&["txn", &n.to_string()])
}

/// `campus:txnref:{card}:{hash(reference)}` → the number a transaction reference got (dedupe).
pub fn txn_ref(card_id: &str, reference: &str) -> Key {
    Key::new(&["campus", "txnref", card_id, &hash_key_part(reference)])
}

/// `campus:cust:{customer}:cards` → the customer's card ids (index).
pub fn customer_cards(customer_id: &str) -> Key {
    Key::new(&["campus", "cust", customer_id, "cards"])
}

/// `campus:cust:{customer}:bindfail:{hour}` → the customer's wrong activation codes in that hour since the epoch
/// (capped counter).
pub fn bind_failures(customer_id: &str, hour: i64) -> Key {
    Key::new(&["campus", "cust", customer_id, "bindfail", &hour.to_string()])
}

/// `campus:paycode:{hash(code)}` → one-time pay code.
pub fn pay_code(code: &str) -> Key {
    Key::new(&["campus", "paycode", &hash_key_part(code)])
}

/// `campus:spend:{id}` → spend record.
pub fn spend(spend_id: &str) -> Key {
    Key::new(&["campus", "spend", spend_id])
}

/// `campus:settle:{merchant}:{yyyymmdd}:{shard}` → spend and reversal entries of a merchant's day, in 16 shards,
/// each a log (`kv::append_to_log`: `…:ctr:n` and one write-once entry per slot, `…:s:{n}`).
pub fn settlement(merchant_id: &str, day: u32, shard: char) -> Key {
    Key::new(&["campus", "settle", merchant_id, &day.to_string(), &shard.to_string()])
}

/// `campus:budget:{id}` → base key of a top-up bonus budget (core limits).
pub fn budget(budget_id: &str) -> Key {
    Key::new(&["campus", "budget", budget_id])
}

/// `campus:fx:{what}:{id}` → a one-shot claim that an effect (a statistic, a give-back) happened.
pub fn effect(what: &str, id: &str) -> Key {
    Key::new(&["campus", "fx", what, id])
}

/// The ledger account holding a card's stored value (credit-normal: the ledger never lets it pay out more than it
/// holds).
pub fn card_account(card_id: &str) -> String {
    format!("campus:card:{card_id}{}", scenefin_core::ledger::STORED_VALUE_SUFFIX)
}

/// The ledger account a merchant's takings are owed on.
pub fn merchant_account(merchant_id: &str) -> String {
    format!("campus:merchant:{merchant_id}:settlement")
}
