//! Nearby-merchant perks: coupon campaigns merchant-coupons targets at a community. merchant-coupons owns the
//! index (`cpn:community:{id}:perks`); other components read it only through [`for_community`].

use serde::{Deserialize, Serialize};

use crate::kv::{Key, Store, StoreError, get_json};

/// A campaign offered to a community's owners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perk {
    /// Campaign.
    pub campaign_id: String,
    /// Merchant.
    pub merchant_id: String,
    /// What it offers.
    pub title: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    v: u32,
    perks: Vec<Perk>,
}

/// `cpn:community:{id}:perks` (written by merchant-coupons).
pub fn index_key(community_id: &str) -> Key {
    Key::new(&["cpn", "community", community_id, "perks"])
}

/// The perks targeted at a community (empty until merchant-coupons publishes some).
pub async fn for_community(store: &impl Store, community_id: &str) -> Result<Vec<Perk>, StoreError> {
    Ok(get_json::<Index>(store, &index_key(community_id)).await?.unwrap_or_default().perks)
}
