//! referral-tiers-domain: referral programs (qualification, holding period, tier ladder, referee reward, caps,
//! budget, schedule), one code per customer and program, and the lazy settlement of rewards, tier bonuses and their
//! clawback, with the referrer's view, program statistics and the leaderboard. The facts it settles from —
//! attachment and qualification — are `scenefin_core::referrals`, written by customers and by every scenario's
//! events.

pub mod codes;
pub mod error;
pub mod keys;
pub mod programs;
pub mod reports;
pub mod rewards;

pub use error::ReferralError;

/// Key owner prefix.
pub const OWNER: &str = "ref";
/// Scenario name in events.
pub const SCENARIO: &str = "referrals";

#[cfg(test)]
mod tests;
