//! Reservations nobody came back for: a quote's discount that was never paid, a claimed coupon that expired unused,
//! a referral reward never settled. Each budget frees them itself (the next reserve that needs the room sweeps
//! them, and budget reads count them free), so nothing here is money at risk; operators review them as abandonment
//! and can release what is still held at once.
//!
//! Every budget is known by name from its owner's index — coupon campaigns, referral programmes and the scenario
//! budgets of billers, communities and schools — through [`crate::campaigns::known_budgets`].

use std::collections::BTreeMap;

use scenefin_core::clock::Timestamp;
use scenefin_core::kv::Store;
use scenefin_core::limits::{self, Lapsed};
use scenefin_core::problem::ApiError;
use serde::Serialize;

use crate::campaigns::{KnownBudget, known_budgets};
use crate::problem;

/// An expired reservation as an operator reviews it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredReservation {
    /// `coupon_campaign`, `referral_program`, `utility`, `property` or `campus` (a scenario budget), or `unknown`.
    pub budget_kind: &'static str,
    /// The campaign, programme or scenario budget id.
    pub budget_id: String,
    /// Its title (a scenario budget's id when it has none).
    pub budget_title: String,
    /// The quote, claimed coupon or reward that held the amount.
    pub reservation_id: String,
    /// What it held.
    pub amount_fen: i64,
    /// When it expired.
    pub expired_at: Timestamp,
    /// `released` (the amount is back in the budget) or `held` (expired, not swept yet: budget reads already
    /// count it free, and the next reserve that needs the room releases it).
    pub state: &'static str,
    /// The Asia/Shanghai day it was released (`YYYY-MM-DD`), when released.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_on: Option<String>,
}

/// The expired reservations of a range of days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredReservations {
    /// Those still held, oldest expiry first (whatever the range: they are held now), then those released on the
    /// range's days, by day of release.
    pub items: Vec<ExpiredReservation>,
    /// What the held ones hold.
    pub held_fen: i64,
    /// What the released ones gave back.
    pub released_fen: i64,
}

/// Expired reservations still held by any budget, and those released on `day_numbers` (Asia/Shanghai day numbers).
pub async fn expired(store: &impl Store, day_numbers: &[i64], now: Timestamp) -> Result<ExpiredReservations, ApiError> {
    let budgets = known_budgets(store).await?;
    let by_key: BTreeMap<&str, &KnownBudget> = budgets.iter().map(|b| (b.key.as_str(), b)).collect();
    let mut items = Vec::new();
    for budget in &budgets {
        let held = limits::expired_unreleased(store, &budget.key, now).await.map_err(problem)?;
        items.extend(held.into_iter().map(|r| listed(&by_key, r)));
    }
    let held_fen = items.iter().map(|r| r.amount_fen).sum();
    let released = limits::lapsed_in(store, day_numbers, now).await.map_err(problem)?;
    let released_fen = released.iter().map(|r| r.amount_fen).sum();
    items.extend(released.into_iter().map(|r| listed(&by_key, r)));
    Ok(ExpiredReservations { items, held_fen, released_fen })
}

/// What [`release_expired`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Released {
    /// Budgets swept.
    pub budgets: usize,
    /// Reservations released (expired ones only; a repeat releases nothing more).
    pub released: usize,
}

/// Releases every reservation of every known budget that has expired by `now`, up to the current hour: what the
/// next reserve of each budget would do. Safe to repeat and against concurrent payments (each release re-checks
/// state and expiry).
pub async fn release_expired(store: &impl Store, now: Timestamp) -> Result<Released, ApiError> {
    let budgets = known_budgets(store).await?;
    let mut released = 0;
    for budget in &budgets {
        released += limits::sweep_due(store, &budget.key, now, true).await.map_err(problem)?;
    }
    Ok(Released { budgets: budgets.len(), released })
}

fn listed(by_key: &BTreeMap<&str, &KnownBudget>, r: Lapsed) -> ExpiredReservation {
    let known = by_key.get(r.budget.as_str());
    ExpiredReservation {
        budget_kind: known.map_or("unknown", |b| b.kind),
        budget_id: known.map_or_else(|| r.budget.clone(), |b| b.id.clone()),
        budget_title: known.map_or_else(|| r.budget.clone(), |b| b.title.clone()),
        reservation_id: r.reservation_id,
        amount_fen: r.amount_fen,
        expired_at: r.expired_at,
        state: if r.released_on.is_some() { "released" } else { "held" },
        released_on: r.released_on.map(scenefin_core::clock::iso_day),
    }
}
