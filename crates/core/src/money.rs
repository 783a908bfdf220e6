//! Money: integer amounts of Chinese yuan (CNY) in fen, and rates in basis points.
//!
//! Invariants:
//! - An amount is a [`Fen`]: a whole number of fen (1 yuan = 100 fen) in an `i64`. There are no floats anywhere
//!   near money, on the wire or in memory; [`parse_fen`] refuses JSON floats outright rather than rounding them.
//! - Arithmetic is checked: every operation that could overflow returns `Option`, so an overflow becomes an error
//!   the caller must handle instead of a wrapped balance.
//! - A rate is a [`Bp`] (basis points, 10000 = 100%) in `0..=10000`.
//! - **The one rounding rule:** a rate applied to an amount truncates toward zero ([`Fen::apply_bp`]). A discount,
//!   bonus or fee computed from a rate therefore never exceeds its exact value, whatever the sign of the amount,
//!   and there is no other rounding anywhere in the code base.
//! - Amounts accepted from clients lie in `-10^15..=10^15` fen ([`MAX_AMOUNT_FEN`]), far below `i64::MAX`, so sums
//!   of a few of them cannot overflow in practice (the checked arithmetic still guards the rest).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::problem::{ErrorKind, Problem};

/// The largest absolute amount, in fen, that [`parse_fen`] accepts (10^15 fen = 10 trillion yuan).
pub const MAX_AMOUNT_FEN: i64 = 1_000_000_000_000_000;

/// An amount of CNY in fen (1 yuan = 100 fen). Serialised as a bare JSON integer.
///
/// `Display` renders yuan with two decimals: `Fen(-1234)` is `-12.34`, `Fen(5)` is `0.05`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fen(pub i64);

impl Fen {
    /// Zero fen.
    pub const ZERO: Fen = Fen(0);

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Fen) -> Option<Fen> {
        self.0.checked_add(other.0).map(Fen)
    }

    /// `self - other`, or `None` on overflow.
    pub fn checked_sub(self, other: Fen) -> Option<Fen> {
        self.0.checked_sub(other.0).map(Fen)
    }

    /// `self * factor` (e.g. unit price times quantity), or `None` on overflow.
    pub fn checked_mul(self, factor: i64) -> Option<Fen> {
        self.0.checked_mul(factor).map(Fen)
    }

    /// Whether the amount is below zero.
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Whether the amount is above zero.
    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// `self * bp / 10000`, truncated toward zero: the module's one rounding rule.
    ///
    /// The product is computed in `i128`, so it is exact for every `i64` amount; `None` only if the result does
    /// not fit an `i64` (possible only with a hand-built `Bp` above 100%).
    pub fn apply_bp(self, bp: Bp) -> Option<Fen> {
        // i128 division truncates toward zero, which is exactly the rule: the result's magnitude never exceeds the
        // exact value's, so a customer is never granted (or charged) a fraction of a fen the rate did not earn.
        let scaled = i128::from(self.0) * i128::from(bp.0) / i128::from(Bp::FULL.0);
        i64::try_from(scaled).ok().map(Fen)
    }

    /// The smaller of `self` and `cap`: applies a ceiling such as "10% off, at most 20.00 yuan".
    pub fn capped_at(self, cap: Fen) -> Fen {
        self.min(cap)
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `unsigned_abs` rather than `abs`: `i64::MIN` has no positive `i64` counterpart.
        let abs = self.0.unsigned_abs();
        let sign = if self.0 < 0 { "-" } else { "" };
        // `pad` so width and alignment flags (`{:>10}`) work in reports.
        f.pad(&format!("{sign}{}.{:02}", abs / 100, abs % 100))
    }
}

/// A rate in basis points: 10000 = 100%, 250 = 2.5%. Valid values are `0..=10000`.
///
/// Serialised as a bare JSON integer; deserialising validates the range, so an out-of-range rate in a config or
/// request is rejected at the boundary rather than silently over-paying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Bp(pub u32);

impl Bp {
    /// 0%.
    pub const ZERO: Bp = Bp(0);
    /// 100%, the largest valid rate.
    pub const FULL: Bp = Bp(10_000);

    /// A validated rate: `Some` for `0..=10000`, `None` otherwise.
    pub fn new(bp: u32) -> Option<Bp> {
        (bp <= Bp::FULL.0).then_some(Bp(bp))
    }
}

impl TryFrom<u32> for Bp {
    type Error = MoneyError;

    fn try_from(bp: u32) -> Result<Self, Self::Error> {
        Bp::new(bp).ok_or(MoneyError::RateOutOfRange(bp))
    }
}

impl From<Bp> for u32 {
    fn from(bp: Bp) -> u32 {
        bp.0
    }
}

/// A rejected amount or rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The JSON value is not an integer (a float, a string, null, ...). Code `invalid_amount`.
    #[error("amount must be a JSON integer number of fen (1 yuan = 100 fen), not {0}")]
    NotAnInteger(&'static str),
    /// The integer lies outside `-10^15..=10^15` fen. Code `invalid_amount`.
    #[error("amount must be between -{MAX_AMOUNT_FEN} and {MAX_AMOUNT_FEN} fen")]
    OutOfRange,
    /// A rate outside `0..=10000` basis points. Code `invalid_rate`.
    #[error("rate must be between 0 and 10000 basis points (10000 = 100%), got {0}")]
    RateOutOfRange(u32),
}

impl Problem for MoneyError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }

    fn code(&self) -> &'static str {
        match self {
            MoneyError::NotAnInteger(_) | MoneyError::OutOfRange => "invalid_amount",
            MoneyError::RateOutOfRange(_) => "invalid_rate",
        }
    }
}

/// Parses an amount in fen from a JSON value: only JSON integers in `-10^15..=10^15` are accepted.
///
/// Floats are refused even when integral (`1.0`, `1e3`): a client sending them is most likely sending yuan, and
/// guessing would move money by a factor of 100.
pub fn parse_fen(value: &serde_json::Value) -> Result<Fen, MoneyError> {
    use serde_json::Value;
    let number = match value {
        Value::Number(n) => n,
        Value::Null => return Err(MoneyError::NotAnInteger("null")),
        Value::Bool(_) => return Err(MoneyError::NotAnInteger("a boolean")),
        Value::String(_) => return Err(MoneyError::NotAnInteger("a string")),
        Value::Array(_) => return Err(MoneyError::NotAnInteger("an array")),
        Value::Object(_) => return Err(MoneyError::NotAnInteger("an object")),
    };
    match number.as_i64() {
        Some(fen) if (-MAX_AMOUNT_FEN..=MAX_AMOUNT_FEN).contains(&fen) => Ok(Fen(fen)),
        Some(_) => Err(MoneyError::OutOfRange),
        // An integer above i64::MAX is still an integer, just far out of range.
        None if number.is_u64() => Err(MoneyError::OutOfRange),
        None => Err(MoneyError::NotAnInteger("a decimal number")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn checked_add_and_sub_work_until_the_i64_edge() {
        assert_eq!(Fen(1).checked_add(Fen(2)), Some(Fen(3)));
        assert_eq!(Fen(i64::MAX - 1).checked_add(Fen(1)), Some(Fen(i64::MAX)));
        assert_eq!(Fen(i64::MAX).checked_add(Fen(1)), None);
        assert_eq!(Fen(5).checked_sub(Fen(7)), Some(Fen(-2)));
        assert_eq!(Fen(i64::MIN).checked_sub(Fen(1)), None);
    }

    #[test]
    fn checked_mul_detects_overflow() {
        assert_eq!(Fen(250).checked_mul(3), Some(Fen(750)));
        assert_eq!(Fen(-250).checked_mul(3), Some(Fen(-750)));
        assert_eq!(Fen(i64::MAX).checked_mul(2), None);
        assert_eq!(Fen(i64::MIN).checked_mul(-1), None);
    }

    #[test]
    fn sign_predicates_treat_zero_as_neither() {
        assert!(Fen(-1).is_negative());
        assert!(!Fen(-1).is_positive());
        assert!(Fen(1).is_positive());
        assert!(!Fen::ZERO.is_negative());
        assert!(!Fen::ZERO.is_positive());
    }

    #[test]
    fn display_renders_yuan_with_two_decimals() {
        assert_eq!(Fen(-1234).to_string(), "-12.34");
        assert_eq!(Fen(5).to_string(), "0.05");
        assert_eq!(Fen(-5).to_string(), "-0.05");
        assert_eq!(Fen(100).to_string(), "1.00");
        assert_eq!(Fen::ZERO.to_string(), "0.00");
        assert_eq!(Fen(i64::MIN).to_string(), "-92233720368547758.08");
        assert_eq!(Fen(i64::MAX).to_string(), "92233720368547758.07");
        assert_eq!(format!("{:>7}", Fen(150)), "   1.50");
    }

    #[test]
    fn apply_bp_truncates_toward_zero() {
        // 999 * 2.5% = 24.975 fen: a bonus never exceeds its exact value.
        assert_eq!(Fen(999).apply_bp(Bp(250)), Some(Fen(24)));
        // Negative amounts truncate toward zero too, not toward minus infinity.
        assert_eq!(Fen(-999).apply_bp(Bp(250)), Some(Fen(-24)));
        assert_eq!(Fen(1000).apply_bp(Bp(250)), Some(Fen(25)));
        assert_eq!(Fen(12345).apply_bp(Bp::ZERO), Some(Fen::ZERO));
        assert_eq!(Fen(12345).apply_bp(Bp::FULL), Some(Fen(12345)));
    }

    #[test]
    fn apply_bp_is_exact_at_the_i64_edge_and_reports_overflow() {
        assert_eq!(Fen(i64::MAX).apply_bp(Bp::FULL), Some(Fen(i64::MAX)));
        assert_eq!(Fen(i64::MIN).apply_bp(Bp::FULL), Some(Fen(i64::MIN)));
        // Only a hand-built rate above 100% can overflow.
        assert_eq!(Fen(i64::MAX).apply_bp(Bp(20_000)), None);
    }

    #[test]
    fn capped_at_takes_the_smaller_amount() {
        assert_eq!(Fen(3000).capped_at(Fen(2000)), Fen(2000));
        assert_eq!(Fen(1500).capped_at(Fen(2000)), Fen(1500));
        assert_eq!(Fen(2000).capped_at(Fen(2000)), Fen(2000));
    }

    #[test]
    fn bp_new_accepts_zero_to_full_only() {
        assert_eq!(Bp::new(0), Some(Bp::ZERO));
        assert_eq!(Bp::new(10_000), Some(Bp::FULL));
        assert_eq!(Bp::new(10_001), None);
        assert_eq!(Bp::new(u32::MAX), None);
    }

    #[test]
    fn bp_deserialisation_validates_the_range() {
        let ok: Bp = serde_json::from_value(json!(250)).expect("250 bp is valid");
        assert_eq!(ok, Bp(250));
        assert!(serde_json::from_value::<Bp>(json!(10_001)).is_err());
        assert!(serde_json::from_value::<Bp>(json!(-1)).is_err());
        assert_eq!(serde_json::to_value(Bp(250)).expect("serialises"), json!(250));
    }

    #[test]
    fn fen_serialises_as_a_bare_integer() {
        assert_eq!(serde_json::to_value(Fen(-1234)).expect("serialises"), json!(-1234));
        let back: Fen = serde_json::from_value(json!(42)).expect("deserialises");
        assert_eq!(back, Fen(42));
    }

    #[test]
    fn parse_fen_accepts_integers_up_to_the_limit() {
        assert_eq!(parse_fen(&json!(0)), Ok(Fen::ZERO));
        assert_eq!(parse_fen(&json!(-1234)), Ok(Fen(-1234)));
        assert_eq!(parse_fen(&json!(MAX_AMOUNT_FEN)), Ok(Fen(MAX_AMOUNT_FEN)));
        assert_eq!(parse_fen(&json!(-MAX_AMOUNT_FEN)), Ok(Fen(-MAX_AMOUNT_FEN)));
    }

    #[test]
    fn parse_fen_rejects_amounts_beyond_the_limit() {
        assert_eq!(parse_fen(&json!(MAX_AMOUNT_FEN + 1)), Err(MoneyError::OutOfRange));
        assert_eq!(parse_fen(&json!(-MAX_AMOUNT_FEN - 1)), Err(MoneyError::OutOfRange));
        assert_eq!(parse_fen(&json!(i64::MAX)), Err(MoneyError::OutOfRange));
        assert_eq!(parse_fen(&json!(u64::MAX)), Err(MoneyError::OutOfRange));
    }

    #[test]
    fn parse_fen_rejects_floats_strings_and_null() {
        let not_integers = [json!(1.5), json!(1.0), json!("100"), json!(null), json!(true), json!([1]), json!({})];
        for value in not_integers {
            // Act
            let err = parse_fen(&value).expect_err("non-integers must be rejected");
            // Assert
            assert!(matches!(err, MoneyError::NotAnInteger(_)), "{value} gave {err:?}");
            assert_eq!(err.code(), "invalid_amount");
            assert_eq!(err.kind(), ErrorKind::Invalid);
        }
        let exponent: serde_json::Value = serde_json::from_str("1e3").expect("valid JSON");
        assert!(parse_fen(&exponent).is_err());
    }

    #[test]
    fn money_errors_explain_themselves() {
        assert_eq!(
            MoneyError::NotAnInteger("a string").to_string(),
            "amount must be a JSON integer number of fen (1 yuan = 100 fen), not a string"
        );
        assert_eq!(MoneyError::RateOutOfRange(20_000).code(), "invalid_rate");
    }
}
