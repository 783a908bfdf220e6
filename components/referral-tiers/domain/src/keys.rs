//! Keys owned by referral-tiers (`ref:`) beyond the shared ones of `scenefin_core::referrals::keys`.

use scenefin_core::kv::Key;
use scenefin_core::referrals::keys as shared;

/// `ref:program:{id}:claim` → creation claim.
pub fn program_claim(id: &str) -> Key {
    shared::program(id).child(&["claim"])
}

/// `ref:programs` → every program id.
pub fn programs() -> Key {
    Key::new(&["ref", "programs"])
}

/// `ref:referrer:{program}:{referrer}:state` → rewards and bonuses granted to a referrer.
pub fn state(program_id: &str, referrer_id: &str) -> Key {
    shared::referrer(program_id, referrer_id).child(&["state"])
}

/// `ref:points:{customer}` → loyalty points (counter).
pub fn points(customer_id: &str) -> Key {
    Key::new(&["ref", "points", customer_id])
}

/// `ref:budget:{program}` → the program's budget (core limits).
pub fn budget(program_id: &str) -> Key {
    Key::new(&["ref", "budget", program_id])
}

/// The ledger account a customer's cash rewards are owed on.
pub fn rewards_account(customer_id: &str) -> String {
    format!("ref:rewards:{customer_id}")
}
