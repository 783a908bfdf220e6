//! Community reports: collection rate by period, claimed households vs rooms, bank-card penetration, late-fee
//! income; the daily settlement statement; nearby-merchant perks.

use scenefin_core::kv::{Store, read_counter};
use scenefin_core::settlement;
use serde::Serialize;

use crate::{OWNER, PropertyError, communities, fees, keys};

/// Collection of one billing period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodCollection {
    /// Period.
    pub period: String,
    /// Billed.
    pub billed_fen: i64,
    /// Paid through us.
    pub paid_fen: i64,
    /// Paid / billed, in basis points.
    pub collection_rate_bp: i64,
}

/// Stats of a community.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Community.
    pub community_id: String,
    /// Rooms known.
    pub rooms: i64,
    /// Rooms claimed by an owner.
    pub households_claimed: i64,
    /// Rooms paid with the bank's card.
    pub bank_card_rooms: i64,
    /// Bank-card rooms / claimed households, in basis points.
    pub bank_card_penetration_bp: i64,
    /// Late fees collected.
    pub late_fee_income_fen: i64,
    /// Orders paid.
    pub orders_paid: i64,
    /// By period.
    pub collection: Vec<PeriodCollection>,
}

fn ratio_bp(a: i64, b: i64) -> i64 {
    if b > 0 { a.saturating_mul(10_000) / b } else { 0 }
}

/// Stats of a community.
pub async fn stats(store: &impl Store, community_id: &str) -> Result<Stats, PropertyError> {
    let c = communities::get(store, community_id).await?;
    let counter = |name: &str| keys::stat(&c.id, name);
    let mut collection = Vec::new();
    for period in fees::periods(store, &c.id).await? {
        let billed = read_counter(store, &keys::period_stat(&c.id, &period, "billed_fen")).await?;
        let paid = read_counter(store, &keys::period_stat(&c.id, &period, "paid_fen")).await?;
        collection.push(PeriodCollection {
            period,
            billed_fen: billed,
            paid_fen: paid,
            collection_rate_bp: ratio_bp(paid, billed),
        });
    }
    let households = read_counter(store, &counter("households_claimed")).await?;
    let bank_rooms = read_counter(store, &counter("bank_card_rooms")).await?;
    Ok(Stats {
        community_id: c.id.clone(),
        rooms: read_counter(store, &counter("rooms")).await?,
        households_claimed: households,
        bank_card_rooms: bank_rooms,
        bank_card_penetration_bp: ratio_bp(bank_rooms, households),
        late_fee_income_fen: read_counter(store, &counter("late_fee_income_fen")).await?,
        orders_paid: read_counter(store, &counter("orders_paid")).await?,
        collection,
    })
}

/// How a community's statements are made and announced (`statement.closed` in its feed).
pub fn statement_spec(community_id: &str) -> settlement::StatementSpec {
    settlement::StatementSpec {
        ledger_account: communities::ledger_account(community_id),
        reference: "room_id",
        resource_field: "community_id",
        path: format!("/api/property/communities/{community_id}/settlement"),
    }
}

/// The settlement statement of a day for the property company.
pub async fn settlement(
    store: &impl Store,
    community_id: &str,
    day: u32,
) -> Result<settlement::Statement, PropertyError> {
    let c = communities::get(store, community_id).await?;
    Ok(settlement::statement(store, OWNER, &c.id, &c.ledger_account(), "room_id", day).await?)
}
