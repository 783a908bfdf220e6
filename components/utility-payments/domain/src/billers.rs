//! The biller registry: who can be paid, how their account numbers look, how exact a payment must be, where the
//! money settles, and the cardholder discount the bank funds for them.

use scenefin_core::clock::Timestamp;
use scenefin_core::ids::Id;
use scenefin_core::kv::{self, Store, get_json, put_json};
use scenefin_core::limits;
use scenefin_core::partners::{self, Credentials};
use serde::{Deserialize, Serialize};

use crate::{OWNER, UtilityError, keys};

/// Categories of billers: the brief's list (docs/openapi.yaml `BillerCategory` lists the same).
pub const CATEGORIES: &[&str] = &["water", "power", "gas", "heating"];

/// Billers registered before the categories followed the brief were stored as `electricity`; they read as `power`.
fn stored_category<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let category = String::deserialize(d)?;
    Ok(if category == "electricity" { "power".to_owned() } else { category })
}

/// How exact a payment must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exactness {
    /// Pay exactly the selected bills.
    Exact,
    /// Pay at least what is due (the rest is credit).
    ExactUp,
    /// Pay up to what is due (partial payment).
    ExactDown,
    /// Any amount (prepaid meters).
    Adhoc,
}

/// Characters allowed in account numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Charset {
    /// `0-9`.
    Digits,
    /// `0-9A-Za-z`.
    Alphanumeric,
}

/// The shape of a valid account number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRule {
    /// Shortest.
    pub min_len: usize,
    /// Longest.
    pub max_len: usize,
    /// Allowed characters.
    pub charset: Charset,
}

impl AccountRule {
    /// Checks an account number against the rule.
    pub fn check<'a>(&self, account_no: &'a str) -> Result<&'a str, UtilityError> {
        let chars_ok = match self.charset {
            Charset::Digits => account_no.bytes().all(|b| b.is_ascii_digit()),
            Charset::Alphanumeric => account_no.bytes().all(|b| b.is_ascii_alphanumeric()),
        };
        if chars_ok && (self.min_len..=self.max_len).contains(&account_no.len()) {
            Ok(account_no)
        } else {
            let what = match self.charset {
                Charset::Digits => "digits",
                Charset::Alphanumeric => "letters and digits",
            };
            Err(UtilityError::BadAccountNumber {
                field: "account_no".into(),
                rule: format!("{} to {} {what}", self.min_len, self.max_len),
            })
        }
    }
}

/// The cardholder discount (shared with other paying scenarios).
pub type Discount = scenefin_core::orders::CardDiscount;

/// A biller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Biller {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Category.
    #[serde(deserialize_with = "stored_category")]
    pub category: String,
    /// City.
    pub city: String,
    /// Account number rule.
    pub account_rule: AccountRule,
    /// Amount exactness.
    pub exactness: Exactness,
    /// The biller's bank account money settles to.
    pub settlement_account: String,
    /// Cardholder discount, if any.
    #[serde(default)]
    pub discount: Option<Discount>,
    /// The biller's partner id.
    pub partner_id: String,
    /// Created.
    pub created_at: Timestamp,
}

impl Biller {
    /// The ledger account the biller's money is owed on.
    pub fn ledger_account(&self) -> String {
        ledger_account(&self.id)
    }
}

/// The ledger account biller `biller_id`'s money is owed on.
pub fn ledger_account(biller_id: &str) -> String {
    format!("biller:{biller_id}:settlement")
}

/// What an operator registers.
#[derive(Debug, Clone)]
pub struct NewBiller {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Category.
    pub category: String,
    /// City.
    pub city: String,
    /// Account rule.
    pub account_rule: AccountRule,
    /// Exactness.
    pub exactness: Exactness,
    /// Settlement bank account.
    pub settlement_account: String,
    /// Discount.
    pub discount: Option<Discount>,
}

fn text(field: &str, value: &str, max: usize) -> Result<String, UtilityError> {
    scenefin_core::json::text(value, max).ok_or_else(|| UtilityError::invalid(field, format!("1 to {max} characters")))
}

fn check_category(category: &str) -> Result<(), UtilityError> {
    if CATEGORIES.contains(&category) {
        Ok(())
    } else {
        Err(UtilityError::invalid("category", format!("one of {}", CATEGORIES.join(", "))))
    }
}

/// Validates a registration (pure).
pub fn validate(input: &NewBiller) -> Result<(), UtilityError> {
    Id::parse(&input.id).map_err(|_| UtilityError::invalid("id", "1 to 64 of [A-Za-z0-9_-]"))?;
    text("name", &input.name, 64)?;
    text("city", &input.city, 32)?;
    check_category(&input.category)?;
    let r = input.account_rule;
    if r.min_len == 0 || r.min_len > r.max_len || r.max_len > 32 {
        return Err(UtilityError::invalid("account_rule", "need 1 <= min_len <= max_len <= 32"));
    }
    let s = &input.settlement_account;
    if s.is_empty() || s.len() > 34 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(UtilityError::invalid("settlement_account", "1 to 34 letters and digits"));
    }
    if let Some(d) = &input.discount {
        d.validate("discount").map_err(|(field, message)| UtilityError::invalid(&field, message))?;
    }
    Ok(())
}

/// Registers a biller, configures its discount budget and onboards it as a partner (credentials returned once).
pub async fn register(
    store: &impl Store,
    input: NewBiller,
    now: Timestamp,
) -> Result<(Biller, Credentials), UtilityError> {
    let creds = partners::new_credentials(now)?;
    register_with(store, input, creds, now).await
}

/// Checks a registration without writing anything: the input, and that the id is free (`409` otherwise).
pub async fn check_new(store: &impl Store, input: &NewBiller) -> Result<(), UtilityError> {
    validate(input)?;
    if store.get(&keys::biller_claim(&input.id)).await?.is_some() {
        return Err(UtilityError::BillerExists(input.id.clone()));
    }
    Ok(())
}

/// [`register`] with the given credentials (minted when the registration was proposed, so every run installs the
/// same ones). A run repeated after it completed (an approval retried) finds its own biller and answers it again;
/// an id registered by anyone else is `409`.
pub async fn register_with(
    store: &impl Store,
    input: NewBiller,
    creds: Credentials,
    now: Timestamp,
) -> Result<(Biller, Credentials), UtilityError> {
    validate(&input)?;
    let (claim, doc) = (keys::biller_claim(&input.id), keys::biller(&input.id));
    match partners::claim_registration(store, &claim, &doc, &creds, |b: &Biller| &b.partner_id).await? {
        partners::Registration::Done(done) => return Ok((done, creds)),
        partners::Registration::Taken => return Err(UtilityError::BillerExists(input.id)),
        partners::Registration::Ours => {}
    }
    partners::onboard_with(store, OWNER, "biller", &input.id, &creds, now).await?;
    if let Some(d) = &input.discount {
        limits::configure(store, &keys::budget(&d.budget_id), d.budget_fen, now).await?;
    }
    let biller = Biller {
        v: 1,
        id: input.id,
        name: input.name.trim().to_owned(),
        category: input.category,
        city: input.city.trim().to_owned(),
        account_rule: input.account_rule,
        exactness: input.exactness,
        settlement_account: input.settlement_account,
        discount: input.discount,
        partner_id: creds.partner_id.clone(),
        created_at: now,
    };
    // Index first: readers skip listed ids without a document, so a crash in between hides nothing.
    kv::add_to_index(store, &keys::biller_index(), &biller.id).await?;
    put_json(store, &keys::biller(&biller.id), &biller).await?;
    Ok((biller, creds))
}

/// A biller by id.
pub async fn get(store: &impl Store, id: &str) -> Result<Biller, UtilityError> {
    if Id::parse(id).is_err() {
        return Err(UtilityError::UnknownBiller);
    }
    get_json(store, &keys::biller(id)).await?.ok_or(UtilityError::UnknownBiller)
}

/// Billers, optionally filtered by category and city.
/// The billers, filtered by category (one of [`CATEGORIES`], else `400`) and city.
pub async fn list(store: &impl Store, category: Option<&str>, city: Option<&str>) -> Result<Vec<Biller>, UtilityError> {
    if let Some(c) = category {
        check_category(c)?;
    }
    let all: Vec<Biller> = kv::read_indexed(store, &keys::biller_index(), keys::biller).await?;
    Ok(all
        .into_iter()
        .filter(|b| category.is_none_or(|c| c == b.category) && city.is_none_or(|c| c == b.city))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn biller(category: &str) -> NewBiller {
        NewBiller {
            id: "b1".into(),
            name: "Biller".into(),
            category: category.into(),
            city: "shenzhen".into(),
            account_rule: AccountRule { min_len: 6, max_len: 10, charset: Charset::Digits },
            exactness: Exactness::Adhoc,
            settlement_account: "6222000011112222".into(),
            discount: None,
        }
    }

    #[test]
    fn the_briefs_categories_and_no_other_are_accepted() {
        for category in ["water", "power", "gas", "heating"] {
            assert_eq!(validate(&biller(category)), Ok(()), "{category}");
        }
        for category in ["electricity", "Power", "telecom", ""] {
            let err = validate(&biller(category)).expect_err(category);
            assert_eq!(err, UtilityError::invalid("category", "one of water, power, gas, heating"));
        }
    }

    #[test]
    fn a_biller_stored_as_electricity_reads_as_power() {
        let stored = serde_json::json!({
            "v": 1, "id": "sz_power", "name": "Shenzhen Power", "category": "electricity", "city": "shenzhen",
            "account_rule": {"min_len": 6, "max_len": 12, "charset": "digits"}, "exactness": "adhoc",
            "settlement_account": "6222000033334444", "partner_id": "p_1", "created_at": "2026-11-23T10:00:00+08:00"
        });
        let biller: Biller = serde_json::from_value(stored).expect("biller");
        assert_eq!(biller.category, "power");
    }

    #[test]
    fn account_rules_check_length_and_charset() {
        let digits = AccountRule { min_len: 6, max_len: 10, charset: Charset::Digits };
        assert!(digits.check("123456").is_ok());
        assert!(digits.check("12345").is_err());
        assert!(digits.check("12345678901").is_err());
        assert!(digits.check("12345a").is_err());
        let alnum = AccountRule { min_len: 2, max_len: 4, charset: Charset::Alphanumeric };
        assert!(alnum.check("aB3").is_ok());
        assert!(alnum.check("a-3").is_err());
    }
}
