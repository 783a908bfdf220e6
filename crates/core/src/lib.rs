//! scenefin-core: the pure domain library every component shares.
//!
//! It knows nothing of Spin or HTTP: storage is the [`kv::Store`] trait, time is a [`clock::Clock`], errors are
//! [`problem::Problem`]s. Scenario components get money, ids, auth, idempotency and customer events from here, so
//! they write almost no plumbing of their own.
//!
//! API boundary: every `pub` item here is shared by all scenarios; adding one is a design change.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod coupons;
pub mod customers;
pub mod events;
pub mod feed;
pub mod holds;
pub mod idempotency;
pub mod ids;
pub mod insights;
pub mod json;
pub mod kv;
pub mod ledger;
pub mod limits;
pub mod money;
pub mod orders;
pub mod partners;
pub mod perks;
pub mod pii;
pub mod problem;
pub mod referrals;
pub mod rollups;
pub mod settlement;
pub mod staff;
pub mod webhooks;

pub use problem::{ApiError, ErrorKind, Problem};
