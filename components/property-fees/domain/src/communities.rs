//! Communities (run by property companies) and their rooms.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::mask_name;
use scenefin_core::ids::Id;
use scenefin_core::kv::{self, Step, Store, get_json, put_json};
use scenefin_core::limits;
use scenefin_core::orders::CardDiscount;
use scenefin_core::partners::{self, Credentials};
use scenefin_core::pii::PiiKeys;
use serde::{Deserialize, Serialize};

use crate::{OWNER, PropertyError, keys};

/// Most rooms in one upsert.
pub const MAX_ROOMS: usize = 1000;

/// Pay `months` months ahead, get `free_months` free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepay {
    /// Months to pay for the incentive (e.g. 12).
    pub months: u32,
    /// Months free per such block (e.g. 1).
    pub free_months: u32,
}

/// Late fee rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateFee {
    /// Rate per day late, of the bill amount.
    pub late_fee_bp_per_day: u32,
    /// Days after the due date before it accrues.
    pub grace_days: u32,
    /// Cap, as a rate of the bill amount.
    pub cap_bp: u32,
}

/// A community.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Community {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// City.
    pub city: String,
    /// Property company.
    pub property_company: String,
    /// The company's bank account money settles to.
    pub settlement_account: String,
    /// Owner discount for the bank's cardholders.
    #[serde(default)]
    pub owner_discount: Option<CardDiscount>,
    /// Prepay incentive.
    #[serde(default)]
    pub prepay: Option<Prepay>,
    /// Late fee rule.
    #[serde(default)]
    pub late_fee: Option<LateFee>,
    /// The company's partner id.
    pub partner_id: String,
    /// Created.
    pub created_at: Timestamp,
}

impl Community {
    /// The ledger account the company's money is owed on.
    pub fn ledger_account(&self) -> String {
        ledger_account(&self.id)
    }
}

/// The ledger account community `community_id`'s company's money is owed on.
pub fn ledger_account(community_id: &str) -> String {
    format!("community:{community_id}:settlement")
}

/// What an operator registers.
#[derive(Debug, Clone)]
pub struct NewCommunity {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// City.
    pub city: String,
    /// Property company.
    pub property_company: String,
    /// Settlement account.
    pub settlement_account: String,
    /// Owner discount.
    pub owner_discount: Option<CardDiscount>,
    /// Prepay incentive.
    pub prepay: Option<Prepay>,
    /// Late fee.
    pub late_fee: Option<LateFee>,
}

pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<String, PropertyError> {
    scenefin_core::json::text(value, max).ok_or_else(|| PropertyError::invalid(field, format!("1 to {max} characters")))
}

pub(crate) fn id(field: &str, value: &str) -> Result<(), PropertyError> {
    Id::parse(value).map(drop).map_err(|_| PropertyError::invalid(field, "1 to 64 of [A-Za-z0-9_-]"))
}

/// Validates a registration (pure).
pub fn validate(c: &NewCommunity) -> Result<(), PropertyError> {
    id("id", &c.id)?;
    text("name", &c.name, 64)?;
    text("city", &c.city, 32)?;
    text("property_company", &c.property_company, 64)?;
    let s = &c.settlement_account;
    if s.is_empty() || s.len() > 34 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(PropertyError::invalid("settlement_account", "1 to 34 letters and digits"));
    }
    if let Some(d) = &c.owner_discount {
        d.validate("owner_discount").map_err(|(field, message)| PropertyError::invalid(&field, message))?;
    }
    if let Some(p) = c.prepay
        && (p.months == 0 || p.months > 36 || p.free_months == 0 || p.free_months >= p.months)
    {
        return Err(PropertyError::invalid("prepay", "need 0 < free_months < months <= 36"));
    }
    if let Some(l) = c.late_fee
        && (l.late_fee_bp_per_day == 0
            || l.late_fee_bp_per_day > 100
            || l.cap_bp == 0
            || l.cap_bp > 10_000
            || l.grace_days > 365)
    {
        return Err(PropertyError::invalid(
            "late_fee",
            "1 <= late_fee_bp_per_day <= 100, 1 <= cap_bp <= 10000, grace_days <= 365",
        ));
    }
    Ok(())
}

/// Registers a community, configures its discount budget, onboards its property company (credentials once).
pub async fn register(
    store: &impl Store,
    input: NewCommunity,
    now: Timestamp,
) -> Result<(Community, Credentials), PropertyError> {
    let creds = partners::new_credentials(now)?;
    register_with(store, input, creds, now).await
}

/// Checks a registration without writing anything: the input, and that the id is free (`409` otherwise).
pub async fn check_new(store: &impl Store, input: &NewCommunity) -> Result<(), PropertyError> {
    validate(input)?;
    if store.get(&keys::community_claim(&input.id)).await?.is_some() {
        return Err(PropertyError::CommunityExists(input.id.clone()));
    }
    Ok(())
}

/// [`register`] with the given credentials (minted when the registration was proposed, so every run installs the
/// same ones). A run repeated after it completed (an approval retried) finds its own community and answers it again;
/// an id registered by anyone else is `409`.
pub async fn register_with(
    store: &impl Store,
    input: NewCommunity,
    creds: Credentials,
    now: Timestamp,
) -> Result<(Community, Credentials), PropertyError> {
    validate(&input)?;
    let (claim, doc) = (keys::community_claim(&input.id), keys::community(&input.id));
    match partners::claim_registration(store, &claim, &doc, &creds, |c: &Community| &c.partner_id).await? {
        partners::Registration::Done(done) => return Ok((done, creds)),
        partners::Registration::Taken => return Err(PropertyError::CommunityExists(input.id)),
        partners::Registration::Ours => {}
    }
    partners::onboard_with(store, OWNER, "property_company", &input.id, &creds, now).await?;
    if let Some(d) = &input.owner_discount {
        limits::configure(store, &keys::budget(&d.budget_id), d.budget_fen, now).await?;
    }
    let community = Community {
        v: 1,
        id: input.id,
        name: input.name.trim().to_owned(),
        city: input.city.trim().to_owned(),
        property_company: input.property_company.trim().to_owned(),
        settlement_account: input.settlement_account,
        owner_discount: input.owner_discount,
        prepay: input.prepay,
        late_fee: input.late_fee,
        partner_id: creds.partner_id.clone(),
        created_at: now,
    };
    // Index first: readers skip listed ids without a document, so a crash in between hides nothing.
    kv::add_to_index(store, &keys::community_index(), &community.id).await?;
    put_json(store, &keys::community(&community.id), &community).await?;
    Ok((community, creds))
}

/// Every community, in the order registered (the index, then one batch read).
pub async fn all(store: &impl Store) -> Result<Vec<Community>, PropertyError> {
    Ok(kv::read_indexed(store, &keys::community_index(), keys::community).await?)
}

/// A community by id.
pub async fn get(store: &impl Store, id: &str) -> Result<Community, PropertyError> {
    if Id::parse(id).is_err() {
        return Err(PropertyError::UnknownCommunity);
    }
    get_json(store, &keys::community(id)).await?.ok_or(PropertyError::UnknownCommunity)
}

/// A room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// Schema version.
    pub v: u32,
    /// Community.
    pub community_id: String,
    /// Room id.
    pub room_id: String,
    /// Building.
    pub building: String,
    /// Unit.
    pub unit: String,
    /// Number.
    pub number: String,
    /// Owner's name, masked (`张*丰`): the full name is never stored.
    pub owner_name: String,
    /// Keyed hash of the owner's normalised name (`scenefin_core::pii`), which a claim's name must match. Absent on
    /// rooms uploaded before names were hashed: their `owner_name` is the name as uploaded, until the next upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_hash: Option<String>,
    /// Area in hundredths of a square metre.
    pub area_cm2: i64,
    /// Monthly property fee.
    pub monthly_fee_fen: i64,
    /// Months prepaid, by order (an order's credit is applied once and removed on refund).
    #[serde(default)]
    pub prepaid: Vec<PrepaidCredit>,
}

/// Months of fees paid ahead by one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepaidCredit {
    /// The order.
    pub order_id: String,
    /// Months paid plus free months.
    pub months: u32,
}

/// One room in an upsert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomInput {
    /// Room id.
    pub room_id: String,
    /// Building.
    pub building: String,
    /// Unit.
    pub unit: String,
    /// Number.
    pub number: String,
    /// Owner name.
    pub owner_name: String,
    /// Area in m² (a JSON number with at most two decimals).
    pub area_m2: serde_json::Number,
    /// Monthly property fee.
    pub monthly_fee_fen: i64,
}

/// Parses an area with at most two decimals into hundredths, without floating point.
pub fn area_cm2(n: &serde_json::Number) -> Option<i64> {
    let s = n.to_string();
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    if frac.len() > 2 || whole.starts_with('-') || whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: String = frac.chars().chain("00".chars()).take(2).collect();
    let value = whole.parse::<i64>().ok()?.checked_mul(100)?.checked_add(frac.parse::<i64>().ok()?)?;
    (1..=10_000_000).contains(&value).then_some(value)
}

/// Upserts rooms (idempotent; prepaid credits are kept).
pub async fn upsert_rooms(
    store: &impl Store,
    community: &Community,
    rooms: &[RoomInput],
    pii: &PiiKeys,
) -> Result<usize, PropertyError> {
    if rooms.is_empty() || rooms.len() > MAX_ROOMS {
        return Err(PropertyError::invalid("rooms", format!("1 to {MAX_ROOMS} rooms")));
    }
    let mut parsed = Vec::with_capacity(rooms.len());
    for (i, r) in rooms.iter().enumerate() {
        let f = |name: &str| format!("rooms[{i}].{name}");
        id(&f("room_id"), &r.room_id)?;
        let building = text(&f("building"), &r.building, 16)?;
        let unit = text(&f("unit"), &r.unit, 16)?;
        let number = text(&f("number"), &r.number, 16)?;
        let owner = text(&f("owner_name"), &r.owner_name, 64)?;
        let area = area_cm2(&r.area_m2)
            .ok_or_else(|| PropertyError::invalid(&f("area_m2"), "a positive number with at most two decimals"))?;
        if r.monthly_fee_fen <= 0 || r.monthly_fee_fen > 10_000_000 {
            return Err(PropertyError::invalid(&f("monthly_fee_fen"), "1 to 10000000"));
        }
        parsed.push((r, building, unit, number, owner, area));
    }
    let mut created = 0;
    for (r, building, unit, number, owner_name, area_cm2) in parsed {
        let new = kv::update_json(store, &keys::room(&community.id, &r.room_id), |current: Option<&Room>| {
            let room = Room {
                v: 1,
                community_id: community.id.clone(),
                room_id: r.room_id.clone(),
                building: building.clone(),
                unit: unit.clone(),
                number: number.clone(),
                owner_name: mask_name(&owner_name),
                owner_hash: Some(pii.lookup(&crate::fees::normalise_name(&owner_name))),
                area_cm2,
                monthly_fee_fen: r.monthly_fee_fen,
                prepaid: current.map(|c| c.prepaid.clone()).unwrap_or_default(),
            };
            if current == Some(&room) {
                return Ok::<_, PropertyError>(Step::Keep(false));
            }
            Ok(Step::Write(room, current.is_none()))
        })
        .await?;
        if new {
            created += 1;
            kv::count_once(
                store,
                &keys::once("room", &community.id, &r.room_id),
                &keys::stat(&community.id, "rooms"),
                1,
            )
            .await?;
        }
    }
    Ok(created)
}

/// A room by id.
pub async fn room(store: &impl Store, community_id: &str, room_id: &str) -> Result<Room, PropertyError> {
    if Id::parse(room_id).is_err() {
        return Err(PropertyError::UnknownRoom);
    }
    get_json(store, &keys::room(community_id, room_id)).await?.ok_or(PropertyError::UnknownRoom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_parse_without_floating_point() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).expect("number");
        assert_eq!(area_cm2(&n("89.52")), Some(8952));
        assert_eq!(area_cm2(&n("90")), Some(9000));
        assert_eq!(area_cm2(&n("90.5")), Some(9050));
        assert_eq!(area_cm2(&n("90.555")), None);
        assert_eq!(area_cm2(&n("-3")), None);
        assert_eq!(area_cm2(&n("0")), None);
    }
}
