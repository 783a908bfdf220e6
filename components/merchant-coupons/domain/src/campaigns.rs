//! Coupon campaigns: what they offer, where, to whom, how many, when; pause and resume; stock changes; the public
//! list; eligibility.

use scenefin_core::clock::Timestamp;
use scenefin_core::coupons::Discount;
use scenefin_core::customers::{Customer, LifecycleRules, Stage};
use scenefin_core::ids::Id;
use scenefin_core::kv::{self, Step, Store, get_json};
use scenefin_core::limits;
use scenefin_core::perks::{self, Perk, community_tag};
use serde::{Deserialize, Serialize};

use crate::merchants::{self, id, name};
use crate::{CouponError, keys};

/// What kind of campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// For customers who have not activated yet.
    NewCustomer,
    /// Everyday offers (usually with daily stock).
    Daily,
    /// Issued by check-in streaks, not claimed.
    Checkin,
    /// Every merchant of a district.
    District,
    /// Offered to the owners of nearby communities.
    CommunityPerk,
    /// Issued by referral programs, not claimed.
    ReferralReward,
}

impl Kind {
    /// Whether customers claim it themselves.
    pub fn claimable(self) -> bool {
        !matches!(self, Kind::Checkin | Kind::ReferralReward)
    }
}

/// How long a claimed coupon stays valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validity {
    /// Days after the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_after_claim: Option<i64>,
    /// A fixed end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<Timestamp>,
}

/// When a campaign runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Start.
    pub starts_at: Timestamp,
    /// End.
    pub ends_at: Timestamp,
}

/// Who may claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Eligibility {
    /// Only customers who have not activated yet.
    pub new_customers_only: bool,
    /// Any of these tags.
    pub tags_any: Vec<String>,
    /// Only the bank's cardholders (tag `bank_cardholder`).
    pub cardholders_only: bool,
    /// Only these lifecycle stages.
    pub lifecycle_in: Vec<Stage>,
    /// Only owners in these communities (tag `community:{id}`).
    pub community_ids: Vec<String>,
}

/// A campaign as an operator submits it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    /// Id.
    pub id: String,
    /// Title shown to customers.
    pub title: String,
    /// Kind.
    pub kind: Kind,
    /// Merchants.
    #[serde(default)]
    pub merchant_ids: Vec<String>,
    /// A district.
    #[serde(default)]
    pub district: Option<String>,
    /// The coupon.
    pub coupon: Discount,
    /// Validity of claimed coupons.
    pub validity: Validity,
    /// When claims are open.
    pub schedule: Schedule,
    /// Coupons in total.
    pub stock_total: i64,
    /// Coupons per day.
    #[serde(default)]
    pub daily_stock: Option<i64>,
    /// Coupons per customer.
    #[serde(default = "one")]
    pub per_customer_limit: i64,
    /// Coupons per customer per day.
    #[serde(default)]
    pub per_customer_daily_limit: Option<i64>,
    /// The bank's budget.
    pub budget_fen: i64,
    /// Eligibility.
    #[serde(default)]
    pub eligibility: Eligibility,
    /// Scenarios that may use the coupon besides merchants.
    #[serde(default)]
    pub applies_to: Vec<String>,
    /// Check-in campaigns: the streak days that issue a coupon.
    #[serde(default)]
    pub checkin_streaks: Vec<u32>,
}

fn one() -> i64 {
    1
}

/// Running, paused or ended by the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Claims allowed inside the schedule.
    Active,
    /// Claims refused until resumed.
    Paused,
}

/// A campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    /// Schema version.
    pub v: u32,
    /// Id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Kind.
    pub kind: Kind,
    /// Merchants.
    pub merchant_ids: Vec<String>,
    /// District.
    pub district: Option<String>,
    /// The coupon.
    pub coupon: Discount,
    /// Validity.
    pub validity: Validity,
    /// Schedule.
    pub schedule: Schedule,
    /// Stock.
    pub stock_total: i64,
    /// Daily stock.
    pub daily_stock: Option<i64>,
    /// Per customer.
    pub per_customer_limit: i64,
    /// Per customer per day.
    pub per_customer_daily_limit: Option<i64>,
    /// Budget.
    pub budget_fen: i64,
    /// Eligibility.
    pub eligibility: Eligibility,
    /// Scenarios that may use the coupon (`merchant` always first).
    pub applies_to: Vec<String>,
    /// Check-in streak days.
    pub checkin_streaks: Vec<u32>,
    /// Paused or not.
    pub state: State,
    /// Created.
    pub created_at: Timestamp,
}

/// Most merchants named by one campaign.
const MAX_MERCHANTS: usize = 100;
/// Largest stock.
const MAX_STOCK: i64 = 10_000_000;
/// Largest budget: ¥100 million.
const MAX_BUDGET_FEN: i64 = 10_000_000_000;
/// Scenarios a coupon may be used in.
const SCENARIOS: [&str; 3] = ["merchant", "utility", "property"];

impl Campaign {
    /// `scheduled`, `running`, `paused` or `ended` at `now`.
    pub fn status_at(&self, now: Timestamp) -> &'static str {
        if now >= self.schedule.ends_at {
            "ended"
        } else if self.state == State::Paused {
            "paused"
        } else if now < self.schedule.starts_at {
            "scheduled"
        } else {
            "running"
        }
    }

    /// When a coupon claimed at `now` expires.
    pub fn coupon_expiry(&self, now: Timestamp) -> Timestamp {
        match (self.validity.days_after_claim, self.validity.ends_at) {
            (Some(days), _) => now.plus_days(days),
            (None, Some(end)) => end,
            (None, None) => self.schedule.ends_at,
        }
    }

    /// Whether a merchant (by id and district) accepts its coupons.
    pub fn accepted_by(&self, merchant_id: &str, district: &str) -> bool {
        self.merchant_ids.iter().any(|m| m == merchant_id) || self.district.as_deref() == Some(district)
    }

    /// Whether the campaign picks its customers by their profile (operator tags, lifecycle stage, the bank's card):
    /// such targeting needs the customer's marketing consent (`Customer::marketing_allowed`). New-customer offers and
    /// community perks follow from the customer's relationship with the bank, not their profile.
    pub fn targets_profile(&self) -> bool {
        let e = &self.eligibility;
        !e.tags_any.is_empty() || e.cardholders_only || !e.lifecycle_in.is_empty()
    }

    /// Whether the customer meets the eligibility rules at `now` (pure).
    pub fn eligible(&self, customer: &Customer, rules: &LifecycleRules, now: Timestamp) -> bool {
        let e = &self.eligibility;
        let tags = customer.all_tags();
        let new_only = e.new_customers_only || self.kind == Kind::NewCustomer;
        !(new_only && customer.activated_at.is_some())
            && (e.tags_any.is_empty() || e.tags_any.iter().any(|t| tags.contains(t)))
            && (!e.cardholders_only || tags.contains("bank_cardholder"))
            && (e.lifecycle_in.is_empty() || e.lifecycle_in.contains(&customer.stage_at(now, rules)))
            && (e.community_ids.is_empty() || e.community_ids.iter().any(|c| tags.contains(&community_tag(c))))
    }
}

fn validate(input: &NewCampaign) -> Result<(), CouponError> {
    id("id", &input.id)?;
    name("title", &input.title, 64)?;
    if input.merchant_ids.is_empty() && input.district.is_none() {
        return Err(CouponError::invalid("merchant_ids", "name merchants, a district, or both"));
    }
    if input.merchant_ids.len() > MAX_MERCHANTS {
        return Err(CouponError::invalid("merchant_ids", format!("at most {MAX_MERCHANTS}")));
    }
    if let Some(d) = &input.district {
        name("district", d, 32)?;
    }
    input.coupon.validate().map_err(|(field, message)| CouponError::invalid(field, message))?;
    match (input.validity.days_after_claim, input.validity.ends_at) {
        (Some(days), None) if (1..=365).contains(&days) => {}
        (None, Some(end)) if end > input.schedule.starts_at => {}
        _ => return Err(CouponError::invalid("validity", "days_after_claim (1 to 365) or ends_at after the start")),
    }
    if input.schedule.ends_at <= input.schedule.starts_at {
        return Err(CouponError::invalid("schedule.ends_at", "after starts_at"));
    }
    if !(1..=MAX_STOCK).contains(&input.stock_total) {
        return Err(CouponError::invalid("stock_total", format!("1 to {MAX_STOCK}")));
    }
    let positive = |field: &str, v: Option<i64>| match v {
        Some(v) if !(1..=MAX_STOCK).contains(&v) => Err(CouponError::invalid(field, format!("1 to {MAX_STOCK}"))),
        _ => Ok(()),
    };
    positive("daily_stock", input.daily_stock)?;
    positive("per_customer_limit", Some(input.per_customer_limit))?;
    positive("per_customer_daily_limit", input.per_customer_daily_limit)?;
    if !(1..=MAX_BUDGET_FEN).contains(&input.budget_fen) {
        return Err(CouponError::invalid("budget_fen", format!("1 to {MAX_BUDGET_FEN}")));
    }
    if input.budget_fen < input.coupon.max_value_fen() {
        return Err(CouponError::invalid("budget_fen", "must cover at least one coupon"));
    }
    for (i, s) in input.applies_to.iter().enumerate() {
        if !SCENARIOS.contains(&s.as_str()) {
            return Err(CouponError::invalid(&format!("applies_to[{i}]"), "merchant, utility or property"));
        }
    }
    for (i, t) in input.eligibility.tags_any.iter().enumerate() {
        name(&format!("eligibility.tags_any[{i}]"), t, 64)?;
    }
    for (i, c) in input.eligibility.community_ids.iter().enumerate() {
        id(&format!("eligibility.community_ids[{i}]"), c)?;
    }
    match input.kind {
        Kind::Checkin
            if input.checkin_streaks.is_empty() || input.checkin_streaks.iter().any(|d| !(1..=366).contains(d)) =>
        {
            return Err(CouponError::invalid("checkin_streaks", "streak days from 1 to 366"));
        }
        Kind::Checkin => {}
        _ if !input.checkin_streaks.is_empty() => {
            return Err(CouponError::invalid("checkin_streaks", "only for checkin campaigns"));
        }
        Kind::CommunityPerk if input.eligibility.community_ids.is_empty() => {
            return Err(CouponError::invalid("eligibility.community_ids", "required for community_perk campaigns"));
        }
        _ => {}
    }
    Ok(())
}

/// Creates a campaign, configures its budget, indexes it, and publishes community perks.
pub async fn create(store: &impl Store, input: NewCampaign, now: Timestamp) -> Result<Campaign, CouponError> {
    validate(&input)?;
    for m in &input.merchant_ids {
        merchants::get(store, m).await?;
    }
    if !kv::claim_new(store, &keys::campaign_claim(&input.id)).await? {
        return Err(CouponError::CampaignExists(input.id));
    }
    let mut applies_to = vec!["merchant".to_owned()];
    applies_to.extend(input.applies_to.into_iter().filter(|s| s != "merchant"));
    applies_to.dedup();
    let mut streaks = input.checkin_streaks;
    streaks.sort_unstable();
    streaks.dedup();
    let campaign = Campaign {
        v: 1,
        id: input.id,
        title: input.title.trim().to_owned(),
        kind: input.kind,
        merchant_ids: input.merchant_ids,
        district: input.district.map(|d| d.trim().to_owned()),
        coupon: input.coupon,
        validity: input.validity,
        schedule: input.schedule,
        stock_total: input.stock_total,
        daily_stock: input.daily_stock,
        per_customer_limit: input.per_customer_limit,
        per_customer_daily_limit: input.per_customer_daily_limit,
        budget_fen: input.budget_fen,
        eligibility: input.eligibility,
        applies_to,
        checkin_streaks: streaks,
        state: State::Active,
        created_at: now,
    };
    limits::configure(store, &keys::budget(&campaign.id), campaign.budget_fen, now).await?;
    // Index first: readers skip listed ids without a document, so a crash in between hides nothing.
    kv::add_to_index(store, &keys::campaigns(), &campaign.id).await?;
    kv::update_json(store, &keys::campaign(&campaign.id), |doc: Option<&Campaign>| match doc {
        Some(_) => Ok::<_, CouponError>(Step::Keep(())),
        None => Ok(Step::Write(campaign.clone(), ())),
    })
    .await?;
    if campaign.kind == Kind::CommunityPerk {
        let perk = Perk {
            campaign_id: campaign.id.clone(),
            merchant_id: campaign.merchant_ids.first().cloned().unwrap_or_default(),
            title: campaign.title.clone(),
        };
        for community in &campaign.eligibility.community_ids {
            perks::publish(store, community, &perk).await?;
        }
    }
    Ok(campaign)
}

/// A campaign by id.
pub async fn get(store: &impl Store, id: &str) -> Result<Campaign, CouponError> {
    if Id::parse(id).is_err() {
        return Err(CouponError::CampaignNotFound);
    }
    get_json(store, &keys::campaign(id)).await?.ok_or(CouponError::CampaignNotFound)
}

/// Every campaign (from the index; one batch read).
pub async fn all(store: &impl Store) -> Result<Vec<Campaign>, CouponError> {
    Ok(kv::read_indexed(store, &keys::campaigns(), keys::campaign).await?)
}

/// The running, claimable campaigns of the public list: with `district`, that district's campaigns; with
/// `merchant_id`, every campaign the merchant redeems (its own, and its district's: [`Campaign::accepted_by`]); with
/// both, both. An unknown merchant redeems nothing; a filter that could name no district or merchant is refused
/// (`validation_failed`).
pub async fn listed(
    store: &impl Store,
    district: Option<&str>,
    merchant_id: Option<&str>,
    now: Timestamp,
) -> Result<Vec<Campaign>, CouponError> {
    if let Some(d) = district {
        name("district", d, 32)?;
    }
    if let Some(m) = merchant_id {
        id("merchant_id", m)?;
    }
    let merchant = match merchant_id.map(|id| merchants::get(store, id)) {
        None => None,
        Some(found) => match found.await {
            Ok(m) => Some(m),
            Err(CouponError::MerchantNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        },
    };
    Ok(all(store)
        .await?
        .into_iter()
        .filter(|c| c.status_at(now) == "running" && c.kind.claimable())
        .filter(|c| merchant.as_ref().is_none_or(|m| c.accepted_by(&m.id, &m.district)))
        .filter(|c| district.is_none_or(|d| c.district.as_deref() == Some(d)))
        .collect())
}

/// Coupons issued so far.
pub async fn issued(store: &impl Store, campaign_id: &str) -> Result<i64, CouponError> {
    Ok(kv::read_counter(store, &keys::counter(campaign_id, "issued")).await?.max(0))
}

/// Pauses (`true`) or resumes a campaign.
pub async fn set_paused(store: &impl Store, id: &str, paused: bool) -> Result<Campaign, CouponError> {
    get(store, id).await?;
    let state = if paused { State::Paused } else { State::Active };
    change(store, id, |c| Ok((c.state != state).then(|| Campaign { state, ..c.clone() }))).await
}

/// Checks a change of the total stock without writing: the total, the campaign, and that it is not below what was
/// issued; the campaign as it stands (a raise needs a second staff member's approval).
pub async fn check_stock(store: &impl Store, id: &str, stock_total: i64) -> Result<Campaign, CouponError> {
    if !(1..=MAX_STOCK).contains(&stock_total) {
        return Err(CouponError::invalid("stock_total", format!("1 to {MAX_STOCK}")));
    }
    let campaign = get(store, id).await?;
    let before = issued(store, id).await?;
    if stock_total < before {
        return Err(CouponError::StockBelowIssued(before));
    }
    Ok(campaign)
}

/// Changes the total stock: raising is free, lowering stops at what was issued. Setting the same total again
/// changes nothing, so an approved raise carried out twice raises once.
pub async fn set_stock(store: &impl Store, id: &str, stock_total: i64) -> Result<Campaign, CouponError> {
    check_stock(store, id, stock_total).await?;
    let updated =
        change(store, id, |c| Ok((c.stock_total != stock_total).then(|| Campaign { stock_total, ..c.clone() })))
            .await?;
    // Claims take stock with an atomic counter against the total they read; a claim racing a lowering may still
    // take up to the old total, so check again after writing and put the total back up if issuing got past it.
    let issued = issued(store, id).await?;
    if issued > stock_total {
        let restore = issued.max(stock_total);
        change(store, id, |c| Ok((c.stock_total < restore).then(|| Campaign { stock_total: restore, ..c.clone() })))
            .await?;
        return Err(CouponError::StockBelowIssued(issued));
    }
    Ok(updated)
}

async fn change(
    store: &impl Store,
    id: &str,
    decide: impl Fn(&Campaign) -> Result<Option<Campaign>, CouponError>,
) -> Result<Campaign, CouponError> {
    kv::update_json(store, &keys::campaign(id), |doc: Option<&Campaign>| {
        let Some(doc) = doc else { return Err(CouponError::CampaignNotFound) };
        Ok(match decide(doc)? {
            Some(next) => Step::Write(next.clone(), next),
            None => Step::Keep(doc.clone()),
        })
    })
    .await
}
