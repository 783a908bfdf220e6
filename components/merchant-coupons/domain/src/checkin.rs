//! Daily check-in: once per Asia/Shanghai day, a streak that a missed day resets, and coupons from running
//! `checkin` campaigns when the streak reaches one of their days.
//!
//! The streak document changes first; the coupons are then issued with the day as claim key, so a check-in
//! interrupted after the streak moved issues them on the next call of the same day (which reports
//! `already_checked_in` but completes the issue).

use scenefin_core::clock::Timestamp;
use scenefin_core::coupons::Coupon;
use scenefin_core::customers::LifecycleRules;
use scenefin_core::kv::{self, Step, Store, get_json};
use serde::{Deserialize, Serialize};

use crate::campaigns::{self, Kind};
use crate::claims;
use crate::{CouponError, keys};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Streak {
    v: u32,
    /// Shanghai day number of the last check-in.
    last_day: i64,
    /// Its date, `yyyymmdd`.
    last_date: u32,
    streak: u32,
    total_days: u32,
}

/// What a check-in did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckedIn {
    /// Today, `YYYY-MM-DD`.
    pub date: String,
    /// Consecutive days including today.
    pub streak: u32,
    /// Today's check-in had already been made.
    pub already_checked_in: bool,
    /// Coupons today's streak earned.
    pub coupons: Vec<Coupon>,
    /// Streak coupons that could not be issued: `{campaign_id, code}`.
    pub refusals: Vec<(String, &'static str)>,
}

fn date(yyyymmdd: u32) -> String {
    scenefin_core::clock::iso_day(yyyymmdd)
}

/// Checks the customer in for today.
pub async fn check_in(
    store: &impl Store,
    customer_id: &str,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<CheckedIn, CouponError> {
    let today = now.shanghai_day_number();
    let (streak, already) = kv::update_json(store, &keys::checkin(customer_id), |doc: Option<&Streak>| {
        let current = doc.cloned().unwrap_or(Streak { v: 1, ..Streak::default() });
        if doc.is_some() && current.last_day == today {
            return Ok::<_, CouponError>(Step::Keep((current.streak, true)));
        }
        let streak = if doc.is_some() && current.last_day == today - 1 { current.streak + 1 } else { 1 };
        let next =
            Streak { v: 1, last_day: today, last_date: now.shanghai_day(), streak, total_days: current.total_days + 1 };
        Ok(Step::Write(next, (streak, false)))
    })
    .await?;
    let mut coupons = Vec::new();
    let mut refusals = Vec::new();
    for campaign in campaigns::all(store).await? {
        if campaign.kind != Kind::Checkin || !campaign.checkin_streaks.contains(&streak) {
            continue;
        }
        match claims::issue(store, &campaign, customer_id, &format!("checkin:{today}"), rules, now).await {
            Ok(coupon) => coupons.push(coupon),
            Err(CouponError::Refused(r)) => refusals.push((campaign.id.clone(), r.code())),
            Err(e) => return Err(e),
        }
    }
    Ok(CheckedIn { date: date(now.shanghai_day()), streak, already_checked_in: already, coupons, refusals })
}

/// The customer's streak as of `now`: `(streak, last date, checked in today)`; a streak whose last day is before
/// yesterday is over (0).
pub async fn status(
    store: &impl Store,
    customer_id: &str,
    now: Timestamp,
) -> Result<(u32, Option<String>, bool), CouponError> {
    let today = now.shanghai_day_number();
    let Some(s) = get_json::<Streak>(store, &keys::checkin(customer_id)).await? else { return Ok((0, None, false)) };
    let alive = s.last_day >= today - 1;
    Ok((if alive { s.streak } else { 0 }, Some(date(s.last_date)), s.last_day == today))
}
