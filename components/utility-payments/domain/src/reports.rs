//! Billers' reports: the daily settlement statement (reconciled line by line to the ledger) and acquisition stats.

use scenefin_core::kv::{self, Key, Store, read_counter};
use scenefin_core::ledger;
use scenefin_core::orders::{self, Order};
use serde::Serialize;

use crate::payments::Day;
use crate::{OWNER, UtilityError, keys};

/// A statement line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementLine {
    /// Order.
    pub order_id: String,
    /// `pay` or `refund`.
    pub kind: String,
    /// Account number.
    pub account_no: String,
    /// What the biller is owed (negative for refunds).
    pub gross_fen: i64,
    /// Of which the bank's discount.
    pub discount_fen: i64,
    /// Of which the customer paid.
    pub customer_paid_fen: i64,
    /// The settlement amount the ledger posting carries for this line.
    pub ledger_fen: i64,
}

/// A day's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// Biller.
    pub biller_id: String,
    /// Day `YYYY-MM-DD` (Asia/Shanghai).
    pub date: String,
    /// Lines.
    pub lines: Vec<StatementLine>,
    /// Net owed to the biller.
    pub total_gross_fen: i64,
    /// Discounts the bank funded.
    pub total_discount_fen: i64,
    /// What customers paid.
    pub total_customer_paid_fen: i64,
    /// The same net, from the ledger postings.
    pub ledger_total_fen: i64,
    /// Every line matched its posting and the totals agree.
    pub reconciled: bool,
}

/// The statement of `day` (`yyyymmdd`).
pub async fn settlement(store: &impl Store, biller_id: &str, day: u32) -> Result<Statement, UtilityError> {
    let biller = crate::billers::get(store, biller_id).await?;
    let account = biller.ledger_account();
    let entries: Day = kv::get_json(store, &keys::settlement_day(biller_id, day)).await?.unwrap_or_default();
    let mut lines = Vec::with_capacity(entries.entries.len());
    let mut reconciled = true;
    for entry in &entries.entries {
        let order: Option<Order> = kv::get_json(store, &orders::keys::order(OWNER, &entry.order_id)).await?;
        let Some(order) = order else {
            reconciled = false;
            continue;
        };
        let sign = if entry.kind == "refund" { -1 } else { 1 };
        let discount: i64 = order.lines.iter().filter(|l| l.funded_by.is_some()).map(|l| -l.amount_fen).sum();
        let posting_id = format!("{}:{}", if sign > 0 { "pay" } else { "refund" }, order.id);
        let posting = ledger::posting(store, &posting_id).await.map_err(orders::OrderError::from)?;
        // The settlement account is credited on payment (negative) and debited on refund.
        let ledger_fen =
            posting.map(|p| p.lines.iter().filter(|l| l.account == account).map(|l| -l.amount_fen).sum()).unwrap_or(0);
        let gross = sign * (order.total_fen + discount);
        reconciled &= ledger_fen == gross;
        lines.push(StatementLine {
            account_no: order.payload.get("account_no").and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
            order_id: order.id.clone(),
            kind: entry.kind.clone(),
            gross_fen: gross,
            discount_fen: sign * discount,
            customer_paid_fen: sign * order.total_fen,
            ledger_fen,
        });
    }
    let total_gross_fen = lines.iter().map(|l| l.gross_fen).sum();
    let ledger_total_fen = lines.iter().map(|l| l.ledger_fen).sum();
    Ok(Statement {
        biller_id: biller_id.to_owned(),
        date: format!("{:04}-{:02}-{:02}", day / 10_000, day / 100 % 100, day % 100),
        total_discount_fen: lines.iter().map(|l| l.discount_fen).sum(),
        total_customer_paid_fen: lines.iter().map(|l| l.customer_paid_fen).sum(),
        reconciled: reconciled && total_gross_fen == ledger_total_fen,
        total_gross_fen,
        ledger_total_fen,
        lines,
    })
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
    let bad = || UtilityError::invalid("date", "YYYY-MM-DD");
    let ts = scenefin_core::clock::Timestamp::parse_rfc3339(&format!("{s}T12:00:00+08:00")).map_err(|_| bad())?;
    if s.len() != 10 {
        return Err(bad());
    }
    Ok(ts.shanghai_day())
}
