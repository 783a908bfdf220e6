//! merchant-coupons-domain: district merchants and their stores, coupon campaigns (stock, per-day stock,
//! per-customer limits, a bank budget, eligibility, a schedule), claiming into a wallet, check-in streaks, and
//! exactly-once redemption with reversal. Pure logic over `scenefin_core::kv::Store`; the coupon document itself is
//! `scenefin_core::coupons::Coupon`, shared with the scenarios whose quotes may consume a coupon.
//!
//! Never oversold, never over budget, never redeemed twice: stock and limits are atomic capped counters (an
//! over-cap addition is undone at once), the budget is a `core::limits` reservation per coupon, and a coupon is used
//! by exactly one compare-and-swap on its document.

pub mod campaigns;
pub mod checkin;
pub mod claims;
pub mod error;
pub mod keys;
pub mod merchants;
pub mod redemptions;

pub use error::{CouponError, Refusal};

/// Key owner prefix.
pub const OWNER: &str = "cpn";
/// Scenario name in events.
pub const SCENARIO: &str = "coupons";

#[cfg(test)]
mod tests;
