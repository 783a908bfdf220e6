//! District merchants (each a partner for its POS) and their stores; the lockout on guessed codes.

use scenefin_core::clock::Timestamp;
use scenefin_core::ids::Id;
use scenefin_core::json::text;
use scenefin_core::kv::{self, Step, Store, get_json, put_json};
use scenefin_core::partners::{self, Credentials, Partner};
use serde::{Deserialize, Serialize};

use crate::{CouponError, OWNER, keys};

/// Partner kind of a merchant.
pub const MERCHANT_PARTNER: &str = "merchant";
/// Most stores per merchant.
pub const MAX_STORES: usize = 50;
/// Failed lookups answered per store within a clock minute; the last of them locks the store out.
pub const MAX_MISSES_PER_MINUTE: i64 = 10;
/// How long the lockout lasts.
pub const LOCKOUT_SECS: i64 = 5 * 60;

/// A store of a merchant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shop {
    /// Id (unique within the merchant).
    pub store_id: String,
    /// Name.
    pub name: String,
}

/// A merchant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// District.
    pub district: String,
    /// Communities it is near (for community perks).
    pub community_ids: Vec<String>,
    /// Stores.
    pub stores: Vec<Shop>,
    /// The merchant's partner id.
    pub partner_id: String,
    /// Created.
    pub created_at: Timestamp,
}

/// What an operator registers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMerchant {
    /// Id.
    pub merchant_id: String,
    /// Name.
    pub name: String,
    /// District.
    pub district: String,
    /// Communities nearby.
    #[serde(default)]
    pub community_ids: Vec<String>,
    /// Stores.
    pub stores: Vec<Shop>,
}

pub(crate) fn id(field: &str, value: &str) -> Result<(), CouponError> {
    Id::parse(value)
        .map(drop)
        .map_err(|_| CouponError::invalid(field, "1 to 64 letters, digits, underscores or hyphens"))
}

pub(crate) fn name(field: &str, value: &str, max: usize) -> Result<String, CouponError> {
    // Counted as sent (the contract's `Label64`/`Label32`): no control character anywhere, at most `max` characters.
    let as_sent = value.chars().count() <= max && !value.chars().any(char::is_control);
    as_sent.then(|| text(value, max)).flatten().ok_or_else(|| {
        CouponError::invalid(field, format!("1 to {max} characters, not only spaces, no control characters"))
    })
}

/// Validates a registration (pure).
pub fn validate(input: &NewMerchant) -> Result<(), CouponError> {
    id("merchant_id", &input.merchant_id)?;
    name("name", &input.name, 64)?;
    name("district", &input.district, 32)?;
    for (i, c) in input.community_ids.iter().enumerate() {
        id(&format!("community_ids[{i}]"), c)?;
    }
    if input.stores.is_empty() || input.stores.len() > MAX_STORES {
        return Err(CouponError::invalid("stores", format!("1 to {MAX_STORES} stores")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in input.stores.iter().enumerate() {
        id(&format!("stores[{i}].store_id"), &s.store_id)?;
        name(&format!("stores[{i}].name"), &s.name, 64)?;
        if !seen.insert(&s.store_id) {
            return Err(CouponError::invalid(&format!("stores[{i}].store_id"), "duplicate store id"));
        }
    }
    Ok(())
}

/// Registers a merchant and onboards it as a partner (credentials returned once).
pub async fn register(
    store: &impl Store,
    input: NewMerchant,
    now: Timestamp,
) -> Result<(Merchant, Credentials), CouponError> {
    let creds = partners::new_credentials(now)?;
    register_with(store, input, creds, now).await
}

/// Checks a registration without writing anything: the input, and that the id is free (`409` otherwise).
pub async fn check_new(store: &impl Store, input: &NewMerchant) -> Result<(), CouponError> {
    validate(input)?;
    if store.get(&keys::merchant_claim(&input.merchant_id)).await?.is_some() {
        return Err(CouponError::MerchantExists(input.merchant_id.clone()));
    }
    Ok(())
}

/// [`register`] with the given credentials (minted when the registration was proposed, so every run installs the
/// same ones). A run repeated after it completed (an approval retried) finds its own merchant and answers it again;
/// an id registered by anyone else is `409`.
pub async fn register_with(
    store: &impl Store,
    input: NewMerchant,
    creds: Credentials,
    now: Timestamp,
) -> Result<(Merchant, Credentials), CouponError> {
    validate(&input)?;
    let (claim, doc) = (keys::merchant_claim(&input.merchant_id), keys::merchant(&input.merchant_id));
    match partners::claim_registration(store, &claim, &doc, &creds, |m: &Merchant| &m.partner_id).await? {
        partners::Registration::Done(done) => return Ok((done, creds)),
        partners::Registration::Taken => return Err(CouponError::MerchantExists(input.merchant_id)),
        partners::Registration::Ours => {}
    }
    partners::onboard_with(store, OWNER, MERCHANT_PARTNER, &input.merchant_id, &creds, now).await?;
    let merchant = Merchant {
        v: 1,
        id: input.merchant_id,
        name: input.name.trim().to_owned(),
        district: input.district.trim().to_owned(),
        community_ids: input.community_ids,
        stores: input.stores.into_iter().map(|s| Shop { name: s.name.trim().to_owned(), ..s }).collect(),
        partner_id: creds.partner_id.clone(),
        created_at: now,
    };
    // Index first: readers skip listed ids without a document, so a crash in between hides nothing.
    kv::add_to_index(store, &keys::district(&merchant.district), &merchant.id).await?;
    put_json(store, &keys::merchant(&merchant.id), &merchant).await?;
    Ok((merchant, creds))
}

/// A merchant by id.
pub async fn get(store: &impl Store, id: &str) -> Result<Merchant, CouponError> {
    if Id::parse(id).is_err() {
        return Err(CouponError::MerchantNotFound);
    }
    get_json(store, &keys::merchant(id)).await?.ok_or(CouponError::MerchantNotFound)
}

/// The merchant a signed request comes from.
pub async fn of_partner(store: &impl Store, partner: &Partner) -> Result<Merchant, CouponError> {
    if partner.kind != MERCHANT_PARTNER {
        return Err(CouponError::MerchantNotFound);
    }
    get(store, &partner.resource_id).await
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lockout {
    v: u32,
    until: Timestamp,
}

/// Refuses a store that is locked out: `raw` is its lockout document (`keys::lockout`) as read, usually in one
/// batch with what the request needs next.
pub fn lockout_in(key: &scenefin_core::kv::Key, raw: Option<&[u8]>, now: Timestamp) -> Result<(), CouponError> {
    match kv::decode_doc::<Lockout>(key, raw)? {
        Some(lock) if now < lock.until => Err(CouponError::LockedOut(lock.until)),
        _ => Ok(()),
    }
}

/// Counts a failed code lookup at a store. Within a clock minute the first [`MAX_MISSES_PER_MINUTE`] are answered
/// (`Ok`: the caller says "no such coupon"), the last of them locks the store out for [`LOCKOUT_SECS`], and any
/// beyond is refused as locked out. The count is one atomic `increment` of a counter-only key, never a read then a
/// write, so however many lookups race past [`lockout_in`], exactly that many are answered.
pub async fn record_miss(
    store: &impl Store,
    merchant_id: &str,
    store_id: &str,
    now: Timestamp,
) -> Result<(), CouponError> {
    let minute = now.unix_secs().div_euclid(60);
    let misses = store.increment(&keys::misses(merchant_id, store_id, minute), 1).await?;
    if misses < MAX_MISSES_PER_MINUTE {
        return Ok(());
    }
    // Every lookup past the limit makes sure of the lockout too, so it holds even if the one that reached the limit
    // died before writing it; a lockout in force is kept as it is (it lasts from the limit, not the latest miss).
    let fresh = Lockout { v: 1, until: now.plus_secs(LOCKOUT_SECS) };
    let until = kv::update_json(store, &keys::lockout(merchant_id, store_id), |doc: Option<&Lockout>| match doc {
        Some(lock) if now < lock.until => Ok::<_, CouponError>(Step::Keep(lock.until)),
        _ => Ok(Step::Write(fresh.clone(), fresh.until)),
    })
    .await?;
    if misses == MAX_MISSES_PER_MINUTE { Ok(()) } else { Err(CouponError::LockedOut(until)) }
}
