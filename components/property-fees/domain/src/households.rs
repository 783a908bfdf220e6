//! Owners claiming their rooms (the owner name must match; answers never reveal it beyond a mask; five wrong
//! names a day lock the room for that customer) and what they owe.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{LifecycleRules, mask_name};
use scenefin_core::events::{self, Event, EventKind};
use scenefin_core::kv::{self, Step, Store, get_json};
use scenefin_core::limits;
use scenefin_core::pii::PiiKeys;
use serde::{Deserialize, Serialize};

use crate::communities::{self, Community, Room};
use crate::fees::{self, BillStatus, FeeBill};
use crate::{PropertyError, SCENARIO, keys};

/// Wrong owner names allowed per customer, room and day.
pub const MAX_FAILED_CLAIMS: i64 = 5;
/// Rooms one customer may claim.
pub const MAX_HOUSEHOLDS: usize = 10;

/// A claimed room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Household {
    /// Community.
    pub community_id: String,
    /// Room.
    pub room_id: String,
    /// When claimed.
    pub claimed_at: Timestamp,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Households {
    v: u32,
    rooms: Vec<Household>,
}

/// A bill as an owner sees it, with its late fee to date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DueBill {
    /// Bill.
    pub bill_id: String,
    /// Kind.
    pub cost_type: String,
    /// Period.
    pub period: String,
    /// Amount.
    pub amount_fen: i64,
    /// Late fee accrued to today.
    pub late_fee_fen: i64,
    /// Due date.
    pub due_date: String,
    /// Group paid together.
    pub relate_id: Option<String>,
}

/// A claimed room with what is owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HouseholdView {
    /// Community.
    pub community_id: String,
    /// Community name.
    pub community_name: String,
    /// Room.
    pub room_id: String,
    /// Building / unit / number.
    pub address: String,
    /// Owner, masked.
    pub owner_masked: String,
    /// Monthly fee.
    pub monthly_fee_fen: i64,
    /// Months prepaid.
    pub prepaid_months: u32,
    /// Open bills.
    pub bills: Vec<DueBill>,
    /// Open bills plus late fees.
    pub arrears_fen: i64,
}

/// A customer's claim of a room: the owner's name as they typed it.
pub struct Claim<'a> {
    /// The community.
    pub community_id: &'a str,
    /// The room.
    pub room_id: &'a str,
    /// The owner's name.
    pub owner_name: &'a str,
}

/// Claims a room if `owner_name` matches (normalised, through its keyed hash: the room keeps no full name).
pub async fn claim(
    store: &impl Store,
    customer_id: &str,
    Claim { community_id, room_id, owner_name }: Claim<'_>,
    pii: &PiiKeys,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Household, PropertyError> {
    let community = communities::get(store, community_id).await?;
    let room = communities::room(store, &community.id, room_id).await?;
    let failures = keys::claim_failures(customer_id, &community.id, room_id, now.shanghai_day());
    if kv::read_counter(store, &failures).await? >= MAX_FAILED_CLAIMS {
        return Err(PropertyError::ClaimLocked);
    }
    let given = fees::normalise_name(owner_name);
    let matches = match &room.owner_hash {
        Some(hash) => pii.lookups(&given).contains(hash),
        None => given == fees::normalise_name(&room.owner_name),
    };
    if given.is_empty() || !matches {
        limits::take(store, &failures, MAX_FAILED_CLAIMS, 1).await?;
        return Err(PropertyError::OwnerMismatch);
    }
    let household = Household { community_id: community.id.clone(), room_id: room.room_id.clone(), claimed_at: now };
    let claimed = kv::update_json(store, &keys::households(customer_id), |current: Option<&Households>| {
        let mut h = current.cloned().unwrap_or(Households { v: 1, rooms: Vec::new() });
        if let Some(existing) =
            h.rooms.iter().find(|x| x.community_id == household.community_id && x.room_id == household.room_id)
        {
            return Ok(Step::Keep(existing.clone()));
        }
        if h.rooms.len() >= MAX_HOUSEHOLDS {
            return Err(PropertyError::invalid("room_id", format!("at most {MAX_HOUSEHOLDS} rooms per customer")));
        }
        h.rooms.push(household.clone());
        Ok(Step::Write(h, household.clone()))
    })
    .await?;
    kv::count_once(
        store,
        &keys::once("claimed", &community.id, &room.room_id),
        &keys::stat(&community.id, "households_claimed"),
        1,
    )
    .await?;
    let event = Event {
        id: format!("bound:{customer_id}:{}:{}", community.id, room.room_id),
        customer_id: customer_id.to_owned(),
        kind: EventKind::BoundAccount,
        scenario: SCENARIO.into(),
        at: now,
        amount_fen: None,
        bank_card: false,
        tags: vec![scenefin_core::perks::community_tag(&community.id)],
    };
    events::record(store, &event, rules).await?;
    Ok(claimed)
}

/// The room a customer claimed, or `room_not_found` (so nobody learns of rooms they have not claimed).
pub async fn claimed_room(
    store: &impl Store,
    customer_id: &str,
    community_id: Option<&str>,
    room_id: &str,
) -> Result<(Community, Room), PropertyError> {
    let h: Households = get_json(store, &keys::households(customer_id)).await?.unwrap_or_default();
    let mut matches =
        h.rooms.iter().filter(|x| x.room_id == room_id && community_id.is_none_or(|c| c == x.community_id));
    let found = matches.next().ok_or(PropertyError::UnknownRoom)?;
    if matches.next().is_some() {
        return Err(PropertyError::invalid("community_id", "required: you have this room id in several communities"));
    }
    let community = communities::get(store, &found.community_id).await?;
    let room = communities::room(store, &community.id, room_id).await?;
    Ok((community, room))
}

/// Open bills of a room with their late fees at `now`.
pub async fn due(
    store: &impl Store,
    community: &Community,
    room_id: &str,
    now: Timestamp,
) -> Result<Vec<(FeeBill, i64)>, PropertyError> {
    let bills = fees::room_bills(store, &community.id, room_id).await?;
    Ok(bills
        .into_iter()
        .filter(|b| b.status == BillStatus::Open)
        .map(|b| {
            let fee = b.late_fee_at(community, now);
            (b, fee)
        })
        .collect())
}

/// The customer's rooms with bills, late fees to date and arrears.
pub async fn list(store: &impl Store, customer_id: &str, now: Timestamp) -> Result<Vec<HouseholdView>, PropertyError> {
    let h: Households = get_json(store, &keys::households(customer_id)).await?.unwrap_or_default();
    let mut out = Vec::with_capacity(h.rooms.len());
    for household in h.rooms {
        let community = communities::get(store, &household.community_id).await?;
        let room = communities::room(store, &community.id, &household.room_id).await?;
        let bills: Vec<DueBill> = due(store, &community, &room.room_id, now)
            .await?
            .into_iter()
            .map(|(b, late)| DueBill {
                bill_id: b.bill_id,
                cost_type: b.cost_type,
                period: b.period,
                amount_fen: b.amount_fen,
                late_fee_fen: late,
                due_date: b.due_date,
                relate_id: b.relate_id,
            })
            .collect();
        out.push(HouseholdView {
            arrears_fen: bills.iter().map(|b| b.amount_fen + b.late_fee_fen).sum(),
            community_name: community.name.clone(),
            community_id: community.id,
            address: format!("{}-{}-{}", room.building, room.unit, room.number),
            owner_masked: mask_name(&room.owner_name),
            monthly_fee_fen: room.monthly_fee_fen,
            prepaid_months: room.prepaid.iter().map(|p| p.months).sum(),
            room_id: room.room_id,
            bills,
        });
    }
    Ok(out)
}
