//! Keys owned by property-fees (`prop:`).

use scenefin_core::kv::Key;

/// `prop:community:{id}` → community (write-once).
pub fn community(id: &str) -> Key {
    Key::new(&["prop", "community", id])
}

/// `prop:community:{id}:claim` → creation claim.
pub fn community_claim(id: &str) -> Key {
    community(id).child(&["claim"])
}

/// `prop:communities:idx` → community ids.
pub fn community_index() -> Key {
    Key::new(&["prop", "communities", "idx"])
}

/// `prop:room:{community}:{room_id}` → room.
pub fn room(community_id: &str, room_id: &str) -> Key {
    Key::new(&["prop", "room", community_id, room_id])
}

/// `prop:bill:{community}:{bill_id}` → fee bill.
pub fn bill(community_id: &str, bill_id: &str) -> Key {
    Key::new(&["prop", "bill", community_id, bill_id])
}

/// `prop:roombills:{community}:{room_id}` → the room's bill ids.
pub fn room_bills(community_id: &str, room_id: &str) -> Key {
    Key::new(&["prop", "roombills", community_id, room_id])
}

/// `prop:cust:{customer}:households` → rooms the customer claimed.
pub fn households(customer_id: &str) -> Key {
    Key::new(&["prop", "cust", customer_id, "households"])
}

/// `prop:claimfail:{customer}:{community}:{room}:{day}` → wrong owner names today (capped counter).
pub fn claim_failures(customer_id: &str, community_id: &str, room_id: &str, day: u32) -> Key {
    Key::new(&["prop", "claimfail", customer_id, community_id, room_id, &day.to_string()])
}

/// `prop:budget:{budget_id}` → base key of an owner-discount budget (core limits).
pub fn budget(budget_id: &str) -> Key {
    Key::new(&["prop", "budget", budget_id])
}

/// `prop:community:{id}:ctr:{name}` → a stats counter.
pub fn stat(community_id: &str, name: &str) -> Key {
    community(community_id).child(&["ctr", name])
}

/// `prop:community:{id}:period:{period}:ctr:{name}` → a per-period counter (billed, paid).
pub fn period_stat(community_id: &str, period: &str, name: &str) -> Key {
    community(community_id).child(&["period", period, "ctr", name])
}

/// `prop:community:{id}:periods` → billing periods seen.
pub fn periods(community_id: &str) -> Key {
    community(community_id).child(&["periods"])
}

/// `prop:once:{scope}:{a}:{b}` → a claim making an effect count once (per order, per room...).
pub fn once(scope: &str, a: &str, b: &str) -> Key {
    Key::new(&["prop", "once", scope, a, b])
}
