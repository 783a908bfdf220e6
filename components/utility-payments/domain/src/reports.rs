//! Billers' reports: the daily settlement statement (reconciled line by line to the ledger) and acquisition stats.

use scenefin_core::kv::{Key, Store, read_counter};
use scenefin_core::settlement;
use serde::Serialize;

use crate::{OWNER, UtilityError, keys};

/// The statement of `day` (`yyyymmdd`) for a biller.
pub async fn settlement(store: &impl Store, biller_id: &str, day: u32) -> Result<settlement::Statement, UtilityError> {
    let biller = crate::billers::get(store, biller_id).await?;
    settlement::statement(store, OWNER, biller_id, &biller.ledger_account(), "account_no", day)
        .await
        .map_err(|e| UtilityError::Order(e.into()))
}

/// How a biller's statements are made and announced (`statement.closed` in its feed).
pub fn statement_spec(biller_id: &str) -> settlement::StatementSpec {
    settlement::StatementSpec {
        ledger_account: crate::billers::ledger_account(biller_id),
        reference: "account_no",
        resource_field: "biller_id",
        path: format!("/api/utility/billers/{biller_id}/settlement"),
    }
}

/// Acquisition stats of a biller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Biller.
    pub biller_id: String,
    /// Household accounts bound by customers.
    pub accounts_bound: i64,
    /// Bills settled through us.
    pub bills_paid: i64,
    /// Orders paid.
    pub orders_paid: i64,
    /// Of which with the bank's card.
    pub orders_paid_bank_card: i64,
    /// Orders refunded.
    pub orders_refunded: i64,
    /// Bank-card share of paid orders, in basis points.
    pub bank_card_share_bp: i64,
}

/// Stats of a biller.
pub async fn stats(store: &impl Store, biller_id: &str) -> Result<Stats, UtilityError> {
    crate::billers::get(store, biller_id).await?;
    let c = |name: &str| -> Key { keys::stat(biller_id, name) };
    let orders_paid = read_counter(store, &c("orders_paid")).await?;
    let bank = read_counter(store, &c("orders_paid_bank_card")).await?;
    Ok(Stats {
        biller_id: biller_id.to_owned(),
        accounts_bound: read_counter(store, &c("accounts_bound")).await?,
        bills_paid: read_counter(store, &c("bills_paid")).await?,
        orders_paid,
        orders_paid_bank_card: bank,
        orders_refunded: read_counter(store, &c("orders_refunded")).await?,
        bank_card_share_bp: if orders_paid > 0 { bank * 10_000 / orders_paid } else { 0 },
    })
}

/// Parses `YYYY-MM-DD` into `yyyymmdd`.
pub fn parse_date(s: &str) -> Result<u32, UtilityError> {
    settlement::parse_date(s).ok_or_else(|| UtilityError::invalid("date", "YYYY-MM-DD"))
}
