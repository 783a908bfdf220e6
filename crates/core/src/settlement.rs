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

/// How a scenario's statements are made and announced (for [`close_due`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementSpec {
    /// The resource's settlement account in the ledger.
    pub ledger_account: String,
    /// The order payload field shown per line (`account_no`, `room_id`).
    pub reference: &'static str,
    /// The name of the resource's id in the event (`biller_id`, `community_id`).
    pub resource_field: &'static str,
    /// Where the partner reads the statement, without the date (`/api/utility/billers/{id}/settlement`).
    pub path: String,
}

/// Days looked back at when a resource's statements are closed for the first time.
pub const CLOSE_LOOKBACK_DAYS: i64 = 31;

/// `{owner}:settle:{resource}:closed`: the last Shanghai day (a day number) whose statement was closed.
pub fn closed_key(owner: &str, resource_id: &str) -> Key {
    Key::new(&[owner, "settle", resource_id, "closed"])
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Closed {
    v: u32,
    through: i64,
}

/// Closes the statements of the days that have ended since the last close (Shanghai midnight ends a day; at most
/// [`CLOSE_LOOKBACK_DAYS`] back): each day that has entries gets a `statement.closed` event in `feed` (id
/// `statement.closed:{resource}:{date}`, so closing again, concurrently or after a crash, records it once) with the
/// statement's totals. One read when nothing has ended since; the number of statements closed.
pub async fn close_due(
    store: &impl Store,
    owner: &str,
    resource_id: &str,
    spec: &StatementSpec,
    feed: &Key,
    now: Timestamp,
) -> Result<usize, LedgerError> {
    let closed: Option<Closed> = kv::get_json(store, &closed_key(owner, resource_id)).await?;
    close_after(store, owner, resource_id, spec, feed, closed, now).await
}

/// [`close_due`] for several resources of scenario `owner`, each `(resource id, its feed)`, with `spec_of` its
/// statements: one batch read when none has a day to close.
pub async fn close_due_all(
    store: &impl Store,
    owner: &str,
    resources: &[(&str, &Key)],
    spec_of: impl Fn(&str) -> StatementSpec,
    now: Timestamp,
) -> Result<usize, LedgerError> {
    let keys: Vec<Key> = resources.iter().map(|(resource, _)| closed_key(owner, resource)).collect();
    let mut closed_now = 0;
    for (((resource, feed), key), raw) in resources.iter().zip(&keys).zip(kv::get_all(store, &keys).await?) {
        let closed: Option<Closed> = kv::decode_doc(key, raw.as_deref())?;
        if closed.is_none_or(|c| c.through < now.shanghai_day_number() - 1) {
            closed_now += close_after(store, owner, resource, &spec_of(resource), feed, closed, now).await?;
        }
    }
    Ok(closed_now)
}

/// Closes the days after `closed` (the marker as read) that have ended.
async fn close_after(
    store: &impl Store,
    owner: &str,
    resource_id: &str,
    spec: &StatementSpec,
    feed: &Key,
    closed: Option<Closed>,
    now: Timestamp,
) -> Result<usize, LedgerError> {
    let yesterday = now.shanghai_day_number() - 1;
    let earliest = yesterday - CLOSE_LOOKBACK_DAYS + 1;
    let from = match closed {
        Some(c) if c.through >= yesterday => return Ok(0),
        Some(c) => (c.through + 1).max(earliest),
        None => earliest,
    };
    let days: Vec<u32> = (from..=yesterday).map(crate::clock::day_of_number).collect();
    let keys: Vec<Key> = days.iter().map(|d| day_key(owner, resource_id, *d)).collect();
    let raw = kv::get_all(store, &keys).await?;
    let mut closed_now = 0;
    for ((day, key), raw) in days.iter().zip(&keys).zip(raw) {
        let entries: Option<Day> = kv::decode_doc(key, raw.as_deref())?;
        if entries.is_none_or(|d| d.entries.is_empty()) {
            continue;
        }
        let s = statement(store, owner, resource_id, &spec.ledger_account, spec.reference, *day).await?;
        let next_day = crate::clock::number_of_day(*day).map_or(yesterday + 1, |n| n + 1);
        let closed_at = Timestamp::parse_rfc3339(&format!(
            "{}T00:00:00+08:00",
            crate::clock::iso_day(crate::clock::day_of_number(next_day))
        ))
        .unwrap_or(now);
        let mut data = serde_json::json!({
            "date": s.date, "closed_at": closed_at, "lines": s.lines.len(),
            "total_gross_fen": s.total_gross_fen, "total_discount_fen": s.total_discount_fen,
            "total_customer_paid_fen": s.total_customer_paid_fen, "ledger_total_fen": s.ledger_total_fen,
            "reconciled": s.reconciled, "statement_path": format!("{}?date={}", spec.path, s.date),
        });
        data[spec.resource_field] = serde_json::Value::from(resource_id);
        let cause = format!("{resource_id}:{}", s.date);
        let event = crate::feed::FeedEvent::new("statement.closed", &cause, closed_at, data);
        crate::feed::append(store, feed, &event).await?;
        closed_now += 1;
    }
    kv::update_json(store, &closed_key(owner, resource_id), |current: Option<&Closed>| {
        Ok::<_, StoreError>(match current {
            Some(c) if c.through >= yesterday => Step::Keep(()),
            _ => Step::Write(Closed { v: 1, through: yesterday }, ()),
        })
    })
    .await?;
    Ok(closed_now)
}

/// Parses `YYYY-MM-DD` into `yyyymmdd` (Asia/Shanghai).
pub fn parse_date(s: &str) -> Option<u32> {
    if s.len() != 10 {
        return None;
    }
    Timestamp::parse_rfc3339(&format!("{s}T12:00:00+08:00")).ok().map(Timestamp::shanghai_day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed;
    use crate::kv::MemStore;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        pollster::block_on(f)
    }

    fn spec() -> StatementSpec {
        StatementSpec {
            ledger_account: "biller:sz_water:settlement".into(),
            reference: "account_no",
            resource_field: "biller_id",
            path: "/api/utility/billers/sz_water/settlement".into(),
        }
    }

    #[test]
    fn each_ended_day_with_entries_is_closed_once_in_the_feed() {
        run(async {
            let store = MemStore::default();
            let feed = feed::key("util", "sz_water");
            let monday = Timestamp::parse_rfc3339("2026-11-23T23:59:00+08:00").expect("test step");
            let wednesday = Timestamp::parse_rfc3339("2026-11-25T09:00:00+08:00").expect("test step");
            record(&store, "util", "sz_water", "o_1", "pay", monday).await.expect("test step");
            record(&store, "util", "sz_water", "o_2", "pay", wednesday).await.expect("test step");
            // Monday is not over on Monday.
            assert_eq!(close_due(&store, "util", "sz_water", &spec(), &feed, monday).await.expect("test step"), 0);
            // On Wednesday, Monday closes (Tuesday had nothing); again, nothing more, even twice at once.
            assert_eq!(close_due(&store, "util", "sz_water", &spec(), &feed, wednesday).await.expect("test step"), 1);
            let spec = spec();
            let again = crate::kv::interleave::join_all(
                (0..2).map(|_| close_due(&store, "util", "sz_water", &spec, &feed, wednesday)).collect(),
            )
            .await;
            assert!(again.into_iter().all(|n| n.expect("test step") == 0));
            let page = feed::read(&store, &feed, 0, 10, wednesday).await.expect("test step");
            assert_eq!(page.events.len(), 1);
            let event = &page.events[0].1;
            assert_eq!(event.id, "statement.closed:sz_water:2026-11-23");
            assert_eq!(event.occurred_at, Timestamp::parse_rfc3339("2026-11-24T00:00:00+08:00").expect("test step"));
            assert_eq!(event.data["biller_id"], "sz_water");
            assert_eq!(event.data["statement_path"], "/api/utility/billers/sz_water/settlement?date=2026-11-23");
            // Thursday closes Wednesday.
            let thursday = wednesday.plus_days(1);
            assert_eq!(close_due(&store, "util", "sz_water", &spec, &feed, thursday).await.expect("test step"), 1);
        });
    }
}
