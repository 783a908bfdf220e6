//! Daily settlement statements for partners (billers, property companies, schools, merchants), reconciled line by
//! line to the ledger.
//!
//! A scenario records each paid or refunded order under its partner's resource and Shanghai day
//! (`{owner}:settle:{resource}:{yyyymmdd}`, an index document, idempotent per entry); the statement reads the orders
//! and their postings (`pay:{order}`, `refund:{order}`) and shows the gross owed next to what the ledger posted to
//! the resource's settlement account.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::kv::{self, Key, Step, Store, StoreError};
use crate::ledger::{self, LedgerError};
use crate::orders::{self, Order};

/// `{owner}:settle:{resource}:{yyyymmdd}`.
pub fn day_key(owner: &str, resource_id: &str, day: u32) -> Key {
    Key::new(&[owner, "settle", resource_id, &day.to_string()])
}

/// An entry of a settlement day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Order.
    pub order_id: String,
    /// `pay`, `refund` (the whole rest) or `refund:{id}` (partial refund `id`).
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Day {
    v: u32,
    entries: Vec<Entry>,
}

/// Records a paid (`pay`) or refunded (`refund`) order on its day (idempotent).
pub async fn record(
    store: &impl Store,
    owner: &str,
    resource_id: &str,
    order_id: &str,
    kind: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    let entry = Entry { order_id: order_id.to_owned(), kind: kind.to_owned() };
    kv::update_json(store, &day_key(owner, resource_id, at.shanghai_day()), |day: Option<&Day>| {
        let mut day = day.cloned().unwrap_or(Day { v: 1, entries: Vec::new() });
        if day.entries.contains(&entry) {
            return Ok::<_, StoreError>(Step::Keep(()));
        }
        day.entries.push(entry.clone());
        Ok(Step::Write(day, ()))
    })
    .await
}

/// A statement line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Order.
    pub order_id: String,
    /// `pay` or `refund`.
    pub kind: String,
    /// The scenario's reference (account number, room...).
    pub reference: String,
    /// What the partner is owed (negative for refunds).
    pub gross_fen: i64,
    /// Of which the bank's discounts.
    pub discount_fen: i64,
    /// Of which the customer paid.
    pub customer_paid_fen: i64,
    /// The settlement amount the ledger posting carries for this line.
    pub ledger_fen: i64,
}

/// A day's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// The partner's resource (biller, community...).
    pub resource_id: String,
    /// Day `YYYY-MM-DD` (Asia/Shanghai).
    pub date: String,
    /// Lines.
    pub lines: Vec<Line>,
    /// Net owed to the partner.
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

/// The statement of `day` (`yyyymmdd`); `reference` picks the field of the order payload shown per line.
pub async fn statement(
    store: &impl Store,
    owner: &str,
    resource_id: &str,
    ledger_account: &str,
    reference: &str,
    day: u32,
) -> Result<Statement, LedgerError> {
    let entries: Day = kv::get_json(store, &day_key(owner, resource_id, day)).await?.unwrap_or_default();
    let mut lines = Vec::with_capacity(entries.entries.len());
    let mut reconciled = true;
    for entry in &entries.entries {
        let order: Option<Order> = kv::get_json(store, &orders::keys::order(owner, &entry.order_id)).await?;
        let Some(order) = order else {
            reconciled = false;
            continue;
        };
        // What the line moves: (posting id, discount, what the customer paid), negative for refunds. A partial
        // refund (`refund:{id}`) gives back part of what the customer paid; the final refund gives back the rest
        // and the bank's discount.
        let (posting_id, discount, customer_paid) = match entry.kind.strip_prefix("refund:") {
            Some(part) => {
                let amount = order.partial_refunds.iter().find(|r| r.id == part).map_or(0, |r| r.amount_fen);
                (format!("refund:{}:{part}", order.id), 0, -amount)
            }
            None if entry.kind == "refund" => (
                format!("refund:{}", order.id),
                -order.funded_fen(),
                -(order.total_fen - order.partially_refunded_fen()),
            ),
            None => (format!("pay:{}", order.id), order.funded_fen(), order.total_fen),
        };
        let posting = ledger::posting(store, &posting_id).await?;
        // The settlement account is credited on payment (negative) and debited on refund.
        let ledger_fen = posting
            .map(|p| p.lines.iter().filter(|l| l.account == ledger_account).map(|l| -l.amount_fen).sum())
            .unwrap_or(0);
        let gross = customer_paid + discount;
        reconciled &= ledger_fen == gross;
        lines.push(Line {
            reference: order.payload.get(reference).and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
            order_id: order.id.clone(),
            kind: entry.kind.clone(),
            gross_fen: gross,
            discount_fen: discount,
            customer_paid_fen: customer_paid,
            ledger_fen,
        });
    }
    let total_gross_fen = lines.iter().map(|l| l.gross_fen).sum();
    let ledger_total_fen = lines.iter().map(|l| l.ledger_fen).sum();
    Ok(Statement {
        resource_id: resource_id.to_owned(),
        date: crate::clock::iso_day(day),
        total_discount_fen: lines.iter().map(|l| l.discount_fen).sum(),
        total_customer_paid_fen: lines.iter().map(|l| l.customer_paid_fen).sum(),
        reconciled: reconciled && total_gross_fen == ledger_total_fen,
        total_gross_fen,
        ledger_total_fen,
        lines,
    })
}

/// Parses `YYYY-MM-DD` into `yyyymmdd` (Asia/Shanghai).
pub fn parse_date(s: &str) -> Option<u32> {
    if s.len() != 10 {
        return None;
    }
    Timestamp::parse_rfc3339(&format!("{s}T12:00:00+08:00")).ok().map(Timestamp::shanghai_day)
}
