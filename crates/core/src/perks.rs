//! Nearby-merchant perks: coupon campaigns merchant-coupons targets at a community. merchant-coupons owns the
//! index (`cpn:community:{id}:perks`); other components read it only through [`for_community`].

use serde::{Deserialize, Serialize};

use crate::kv::{self, Key, Step, Store, StoreError, get_json};

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

/// The automatic tag of an owner who claimed a room in `community_id` (property-fees gives it; community-targeted
/// coupon campaigns check it).
pub fn community_tag(community_id: &str) -> String {
    format!("community:{community_id}")
}

/// `cpn:community:{id}:perks` (written by merchant-coupons).
pub fn index_key(community_id: &str) -> Key {
    Key::new(&["cpn", "community", community_id, "perks"])
}

/// Publishes a perk to a community (merchant-coupons only; idempotent per campaign).
pub async fn publish(store: &impl Store, community_id: &str, perk: &Perk) -> Result<(), StoreError> {
    kv::update_json(store, &index_key(community_id), |index: Option<&Index>| {
        let mut next = index.cloned().unwrap_or(Index { v: 1, perks: Vec::new() });
        if next.perks.iter().any(|p| p.campaign_id == perk.campaign_id) {
            return Ok::<_, StoreError>(Step::Keep(()));
        }
        next.perks.push(perk.clone());
        Ok(Step::Write(next, ()))
    })
    .await
}

/// The perks targeted at a community (empty until merchant-coupons publishes some).
pub async fn for_community(store: &impl Store, community_id: &str) -> Result<Vec<Perk>, StoreError> {
    Ok(get_json::<Index>(store, &index_key(community_id)).await?.unwrap_or_default().perks)
}
