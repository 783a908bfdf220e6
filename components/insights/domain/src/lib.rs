//! insights-domain: the operator reviews that read across owners — channel codes with their funnel numbers, grouped
//! by branch and by staff ([`channels`]), and every coupon campaign, referral program and scenario budget
//! ([`campaigns`]). Pure reads over `scenefin_core::kv::Store`: index documents and counters, through each owner's
//! own domain functions and keys, never a listing of the store. The funnel and lifecycle reports read only core's
//! counters and live in `scenefin_core::insights`.
//!
//! Nothing here writes: referral rewards are settled lazily by referral-tiers when its own pages are read, so the
//! referral numbers here are as of the last settlement.

pub mod campaigns;
pub mod channels;

use scenefin_core::problem::{ApiError, Problem};

/// An owner's error as the problem it is.
fn problem(e: impl Problem) -> ApiError {
    ApiError::from_problem(&e)
}
