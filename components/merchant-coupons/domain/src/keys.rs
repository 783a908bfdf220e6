//! Keys owned by merchant-coupons (`cpn:`). The coupon document's key is `scenefin_core::coupons::keys::coupon`.

use scenefin_core::ids::hash_key_part;
use scenefin_core::kv::Key;

/// `cpn:merchant:{id}` → merchant (write-once).
pub fn merchant(id: &str) -> Key {
    Key::new(&["cpn", "merchant", id])
}

/// `cpn:merchant:{id}:claim` → creation claim.
pub fn merchant_claim(id: &str) -> Key {
    merchant(id).child(&["claim"])
}

/// `cpn:merchant:{id}:store:{store}:miss:{minute}` → failed code lookups at one of the merchant's stores (the
/// signed POS request's till) in a clock minute (counter only: changed by `increment` alone).
pub fn misses(merchant_id: &str, store_id: &str, minute: i64) -> Key {
    merchant(merchant_id).child(&["store", store_id, "miss", &minute.to_string()])
}

/// `cpn:merchant:{id}:store:{store}:lock` → the store's lockout after too many failed lookups.
pub fn lockout(merchant_id: &str, store_id: &str) -> Key {
    merchant(merchant_id).child(&["store", store_id, "lock"])
}

/// `cpn:district:{hash(district)}:merchants` → merchant ids of a district.
pub fn district(district: &str) -> Key {
    Key::new(&["cpn", "district", &hash_key_part(district), "merchants"])
}

/// `cpn:campaign:{id}` → campaign.
pub fn campaign(id: &str) -> Key {
    Key::new(&["cpn", "campaign", id])
}

/// `cpn:campaign:{id}:claim` → creation claim.
pub fn campaign_claim(id: &str) -> Key {
    campaign(id).child(&["claim"])
}

/// `cpn:campaigns` → every campaign id.
pub fn campaigns() -> Key {
    Key::new(&["cpn", "campaigns"])
}

/// `cpn:campaign:{id}:ctr:{name}` → a stock or statistics counter.
pub fn counter(campaign_id: &str, name: &str) -> Key {
    campaign(campaign_id).child(&["ctr", name])
}

/// `cpn:campaign:{id}:ctr:day:{yyyymmdd}` → coupons issued that day (daily stock).
pub fn issued_on(campaign_id: &str, day: u32) -> Key {
    campaign(campaign_id).child(&["ctr", "day", &day.to_string()])
}

/// `cpn:campaign:{id}:ctr:ch:{channel}:{what}` → per-channel statistics.
pub fn channel_counter(campaign_id: &str, channel: &str, what: &str) -> Key {
    campaign(campaign_id).child(&["ctr", "ch", channel, what])
}

/// `cpn:campaign:{id}:channels` → channels seen (index).
pub fn channels(campaign_id: &str) -> Key {
    campaign(campaign_id).child(&["channels"])
}

/// `cpn:campaign:{id}:cust:{customer}` → coupons the customer holds from the campaign (limit counter).
pub fn per_customer(campaign_id: &str, customer_id: &str) -> Key {
    campaign(campaign_id).child(&["cust", customer_id])
}

/// `cpn:campaign:{id}:cust:{customer}:day:{yyyymmdd}` → the same per day.
pub fn per_customer_day(campaign_id: &str, customer_id: &str, day: u32) -> Key {
    campaign(campaign_id).child(&["cust", customer_id, "day", &day.to_string()])
}

/// `cpn:budget:{campaign}` → the campaign's budget (core limits).
pub fn budget(campaign_id: &str) -> Key {
    Key::new(&["cpn", "budget", campaign_id])
}

/// `cpn:code:{hash(code)}` → the coupon id of a code.
pub fn code(code: &str) -> Key {
    Key::new(&["cpn", "code", &hash_key_part(code)])
}

/// `cpn:wallet:{customer}` → the customer's coupon ids.
pub fn wallet(customer_id: &str) -> Key {
    Key::new(&["cpn", "wallet", customer_id])
}

/// `cpn:checkin:{customer}` → streak.
pub fn checkin(customer_id: &str) -> Key {
    Key::new(&["cpn", "checkin", customer_id])
}

/// `cpn:redemption:{id}` → redemption record.
pub fn redemption(id: &str) -> Key {
    Key::new(&["cpn", "redemption", id])
}

/// `cpn:fx:{what}:{id}` → a one-shot claim that an effect happened.
pub fn effect(what: &str, id: &str) -> Key {
    Key::new(&["cpn", "fx", what, id])
}

/// The ledger account the bank owes a merchant on (redeemed discounts).
pub fn merchant_account(merchant_id: &str) -> String {
    format!("cpn:merchant:{merchant_id}:settlement")
}
