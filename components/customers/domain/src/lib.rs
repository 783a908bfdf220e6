//! customers-domain: who a customer is (One ID across login providers), where they came from (channel codes,
//! first and last touch), and what operators say about them (tags). Pure logic over `scenefin_core::kv::Store`;
//! the `customers` component is its HTTP adapter.

pub mod channels;
pub mod error;
pub mod keys;
pub mod privacy;
pub mod sessions;
pub mod tags;

pub use error::CustomerError;
