//! Schools (onboarded by an operator, each a partner) and their merchants (each a partner for its POS), and the
//! school's statistics.

use scenefin_core::clock::Timestamp;
use scenefin_core::ids::Id;
use scenefin_core::json::text;
use scenefin_core::kv::{self, Key, Store, get_json, put_json};
use scenefin_core::limits;
use scenefin_core::orders::CardDiscount;
use scenefin_core::partners::{self, Credentials, Partner, PartnerError};
use serde::{Deserialize, Serialize};

use crate::{CampusError, OWNER, keys};

/// Partner kind of a school.
pub const SCHOOL_PARTNER: &str = "school";
/// Partner kind of a merchant's POS.
pub const MERCHANT_PARTNER: &str = "merchant";

/// The top-up bonus: a rate of the amount, capped per top-up, funded by a bank budget.
pub type TopupBonus = CardDiscount;

/// A school.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct School {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// City.
    pub city: Option<String>,
    /// Bonus on top-ups paid with the bank's card.
    pub topup_bonus: Option<TopupBonus>,
    /// The school's partner id.
    pub partner_id: String,
    /// Created.
    pub created_at: Timestamp,
}

/// What an operator registers.
#[derive(Debug, Clone)]
pub struct NewSchool {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// City.
    pub city: Option<String>,
    /// Top-up bonus.
    pub topup_bonus: Option<TopupBonus>,
}

/// Kinds of campus merchants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MerchantKind {
    /// Canteen.
    Canteen,
    /// Shop.
    Shop,
    /// Print shop.
    Print,
    /// A third party on campus (laundry, showers...).
    ThirdParty,
}

/// A campus merchant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    /// Schema version.
    pub v: u32,
    /// Id (unique across schools).
    pub id: String,
    /// The school.
    pub school_id: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: MerchantKind,
    /// The POS partner id.
    pub partner_id: String,
    /// Created.
    pub created_at: Timestamp,
}

fn id(field: &str, value: &str) -> Result<(), CampusError> {
    Id::parse(value).map(drop).map_err(|_| CampusError::invalid(field, "1 to 64 of [A-Za-z0-9_-]"))
}

fn name(field: &str, value: &str, max: usize) -> Result<String, CampusError> {
    text(value, max).ok_or_else(|| CampusError::invalid(field, format!("1 to {max} characters")))
}

/// Registers a school, configures its bonus budget and onboards it as a partner (credentials returned once).
pub async fn register(
    store: &impl Store,
    input: NewSchool,
    now: Timestamp,
) -> Result<(School, Credentials), CampusError> {
    let creds = partners::new_credentials(now)?;
    register_with(store, input, creds, now).await
}

/// The school's name and city, checked with the rest of the input.
fn validate(input: &NewSchool) -> Result<(String, Option<String>), CampusError> {
    id("id", &input.id)?;
    let school_name = name("name", &input.name, 64)?;
    let city = input.city.as_deref().map(|c| name("city", c, 32)).transpose()?;
    if let Some(b) = &input.topup_bonus {
        b.validate("topup_bonus").map_err(|(field, message)| CampusError::invalid(&field, message))?;
    }
    Ok((school_name, city))
}

/// Checks a registration without writing anything: the input, and that the id is free (`409` otherwise).
pub async fn check_new(store: &impl Store, input: &NewSchool) -> Result<(), CampusError> {
    validate(input)?;
    if store.get(&keys::school_claim(&input.id)).await?.is_some() {
        return Err(CampusError::SchoolExists(input.id.clone()));
    }
    Ok(())
}

/// [`register`] with the given credentials (minted when the registration was proposed, so every run installs the
/// same ones). A run repeated after it completed (an approval retried) finds its own school and answers it again;
/// an id registered by anyone else is `409`.
pub async fn register_with(
    store: &impl Store,
    input: NewSchool,
    creds: Credentials,
    now: Timestamp,
) -> Result<(School, Credentials), CampusError> {
    let (school_name, city) = validate(&input)?;
    let (claim, doc) = (keys::school_claim(&input.id), keys::school(&input.id));
    match partners::claim_registration(store, &claim, &doc, &creds, |s: &School| &s.partner_id).await? {
        partners::Registration::Done(done) => return Ok((done, creds)),
        partners::Registration::Taken => return Err(CampusError::SchoolExists(input.id)),
        partners::Registration::Ours => {}
    }
    partners::onboard_with(store, OWNER, SCHOOL_PARTNER, &input.id, &creds, now).await?;
    if let Some(b) = &input.topup_bonus {
        limits::configure(store, &keys::budget(&b.budget_id), b.budget_fen, now).await?;
    }
    let school = School {
        v: 1,
        id: input.id,
        name: school_name,
        city,
        topup_bonus: input.topup_bonus,
        partner_id: creds.partner_id.clone(),
        created_at: now,
    };
    // Indexed before it is written, so every school that exists is listed (readers skip an id whose write a crash
    // prevented).
    kv::add_to_index(store, &keys::schools(), &school.id).await?;
    put_json(store, &keys::school(&school.id), &school).await?;
    Ok((school, creds))
}

/// Every school, in the order registered (the index, then one batch read).
pub async fn all(store: &impl Store) -> Result<Vec<School>, CampusError> {
    Ok(kv::read_indexed(store, &keys::schools(), keys::school).await?)
}

/// A school by id.
pub async fn get(store: &impl Store, id: &str) -> Result<School, CampusError> {
    if Id::parse(id).is_err() {
        return Err(CampusError::SchoolNotFound);
    }
    get_json(store, &keys::school(id)).await?.ok_or(CampusError::SchoolNotFound)
}

/// Refuses unless `partner` is the school `school_id` itself.
pub fn require_school(partner: &Partner, school_id: &str) -> Result<(), CampusError> {
    if partner.kind != SCHOOL_PARTNER {
        return Err(PartnerError::Forbidden(school_id.chars().take(64).collect()).into());
    }
    Ok(partner.require(school_id)?)
}

/// The event feed a partner reads: a school's is `feed::key(OWNER, school_id)` (top-ups, refunds, reissues); a
/// merchant's its own, apart (a merchant id may equal a school's, and `.` is in no id), so a merchant never reads
/// its school's or another school's.
pub fn feed_of(partner: &Partner) -> Key {
    if partner.kind == SCHOOL_PARTNER {
        scenefin_core::feed::key(OWNER, &partner.resource_id)
    } else {
        scenefin_core::feed::key(OWNER, &format!("{}.{}", partner.kind, partner.resource_id))
    }
}

/// The merchant a signed POS request comes from.
pub async fn merchant_of(store: &impl Store, partner: &Partner) -> Result<Merchant, CampusError> {
    if partner.kind != MERCHANT_PARTNER {
        return Err(PartnerError::Forbidden("a merchant's POS credentials are required".into()).into());
    }
    merchant(store, &partner.resource_id).await
}

/// Registers a merchant of a school and onboards its POS as a partner (credentials returned once).
pub async fn add_merchant(
    store: &impl Store,
    school: &School,
    merchant_id: &str,
    merchant_name: &str,
    kind: MerchantKind,
    now: Timestamp,
) -> Result<(Merchant, Credentials), CampusError> {
    id("merchant_id", merchant_id)?;
    let merchant_name = name("name", merchant_name, 64)?;
    if !kv::claim_new(store, &keys::merchant_claim(merchant_id)).await? {
        return Err(CampusError::MerchantExists(merchant_id.to_owned()));
    }
    let creds = partners::onboard(store, OWNER, MERCHANT_PARTNER, merchant_id, now).await?;
    let merchant = Merchant {
        v: 1,
        id: merchant_id.to_owned(),
        school_id: school.id.clone(),
        name: merchant_name,
        kind,
        partner_id: creds.partner_id.clone(),
        created_at: now,
    };
    // Index first: a crash in between leaves a listed id without a document, which readers skip.
    kv::add_to_index(store, &keys::merchants(&school.id), merchant_id).await?;
    put_json(store, &keys::merchant(merchant_id), &merchant).await?;
    Ok((merchant, creds))
}

/// A merchant by id.
pub async fn merchant(store: &impl Store, id: &str) -> Result<Merchant, CampusError> {
    if Id::parse(id).is_err() {
        return Err(CampusError::MerchantNotFound);
    }
    get_json(store, &keys::merchant(id)).await?.ok_or(CampusError::MerchantNotFound)
}

/// Names of the school statistics counters (`campus:school:{id}:ctr:{name}`).
pub mod stat {
    /// Cards issued (one per member).
    pub const CARDS_ISSUED: &str = "cards_issued";
    /// Cards bound by a customer.
    pub const CARDS_BOUND: &str = "cards_bound";
    /// Cards that topped up or spent at least once.
    pub const CARDS_ACTIVE: &str = "cards_active";
    /// Paid top-ups.
    pub const TOPUPS: &str = "topups";
    /// What customers paid for top-ups.
    pub const TOPUP_FEN: &str = "topup_fen";
    /// Of which with the bank's card.
    pub const TOPUP_BANK_CARD_FEN: &str = "topup_bank_card_fen";
    /// Top-ups paid with the bank's card.
    pub const TOPUPS_BANK_CARD: &str = "topups_bank_card";
    /// Bonus credited, funded by the bank.
    pub const BONUS_FEN: &str = "bonus_fen";
    /// Completed spends.
    pub const SPENDS: &str = "spends";
    /// Their amount.
    pub const SPEND_FEN: &str = "spend_fen";
    /// Reversed spends' amount.
    pub const REVERSED_FEN: &str = "reversed_fen";

    /// Every counter, in the order [`super::stats`] reads them.
    pub const ALL: [&str; 11] = [
        CARDS_ISSUED,
        CARDS_BOUND,
        CARDS_ACTIVE,
        TOPUPS,
        TOPUP_FEN,
        TOPUP_BANK_CARD_FEN,
        TOPUPS_BANK_CARD,
        BONUS_FEN,
        SPENDS,
        SPEND_FEN,
        REVERSED_FEN,
    ];
}

/// Adds `delta` to a school counter once per `effect_id` (an order, card or spend id).
pub async fn count_once(
    store: &impl Store,
    school_id: &str,
    counter: &str,
    effect_id: &str,
    delta: i64,
) -> Result<(), CampusError> {
    let claim = keys::effect(counter, effect_id);
    Ok(kv::count_once(store, &claim, &keys::stat(school_id, counter), delta).await?)
}

/// A school's statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// School.
    pub school_id: String,
    /// Merchants.
    pub merchants: usize,
    /// Counters by name ([`stat::ALL`]).
    #[serde(flatten)]
    pub counters: std::collections::BTreeMap<&'static str, i64>,
    /// Share of top-up volume paid with the bank's card, in basis points.
    pub topup_bank_card_share_bp: i64,
}

/// The school's statistics: counters (one batch read) and the merchant count.
pub async fn stats(store: &impl Store, school: &School) -> Result<Stats, CampusError> {
    let keys: Vec<_> = stat::ALL.iter().map(|name| keys::stat(&school.id, name)).collect();
    let mut counters = std::collections::BTreeMap::new();
    for ((name, key), raw) in stat::ALL.iter().zip(&keys).zip(kv::get_all(store, &keys).await?) {
        let value = raw.map(|bytes| kv::decode_counter(key, &bytes)).transpose()?.unwrap_or(0);
        counters.insert(*name, value);
    }
    let volume = counters.get(stat::TOPUP_FEN).copied().unwrap_or(0);
    let bank = counters.get(stat::TOPUP_BANK_CARD_FEN).copied().unwrap_or(0);
    let share = if volume > 0 { bank.saturating_mul(10_000) / volume } else { 0 };
    let merchants = kv::read_index(store, &keys::merchants(&school.id)).await?.len();
    Ok(Stats { school_id: school.id.clone(), merchants, counters, topup_bank_card_share_bp: share })
}
