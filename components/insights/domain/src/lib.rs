//! insights-domain: the operator reviews that read across owners — channel codes with their funnel numbers, grouped
//! by branch and by staff ([`channels`]), and every coupon campaign, referral program and scenario budget
//! ([`campaigns`]), and reservations nobody came back for ([`reservations`]). Pure reads over `scenefin_core::kv::Store`: index documents and counters, through each owner's
//! own domain functions and keys, never a listing of the store. The funnel and lifecycle reports read only core's
//! counters and live in `scenefin_core::insights`.
//!
//! Nothing here writes but [`reservations::release_expired`] (what each budget's next reserve would do) and the
//! roll-ups reads build: referral rewards are settled lazily by referral-tiers when its own pages are read, so the
//! referral numbers here are as of the last settlement.

pub mod campaigns;
pub mod channels;
pub mod reservations;

use scenefin_core::problem::{ApiError, Problem};

/// An owner's error as the problem it is.
fn problem(e: impl Problem) -> ApiError {
    ApiError::from_problem(&e)
}
