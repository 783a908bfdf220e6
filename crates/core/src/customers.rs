//! The customer profile every scenario shares: identities, tags, attribution, lifecycle.
//!
//! The customers component creates profiles; any component changes them only through [`crate::events::record`]
//! (tags, lifecycle, activity) and reads them through [`lookup`]. The profile is one JSON document updated with
//! compare-and-swap, so everything in it changes atomically — including the list of events already applied, which
//! is what makes event application exactly-once.
//!
//! Lifecycle: `new` → `activated` (first payment, top-up or redemption) → `engaged` (enough payments in a window)
//! → `high_value` (enough paid with the bank's card in a window, or the bank's card used in several scenarios);
//! `dormant` after a stretch without activity. The stage is a pure function of the profile and the time
//! ([`Customer::stage_at`]), so dormancy needs no background job: it is evaluated on read.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::kv::{Store, StoreError, get_json};

/// How many applied event ids a profile remembers for deduplication.
pub const APPLIED_EVENTS_KEPT: usize = 256;
/// How many recent payments a profile keeps for lifecycle rules.
pub const PAYMENTS_KEPT: usize = 500;
/// How many identity-link journal entries a profile keeps.
pub const JOURNAL_KEPT: usize = 100;

/// Lifecycle stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Registered, nothing paid yet.
    New,
    /// Paid, topped up or redeemed once.
    Activated,
    /// Pays regularly.
    Engaged,
    /// Pays a lot with the bank's card, or across scenarios.
    HighValue,
    /// No activity for a long time.
    Dormant,
}

impl Stage {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::New => "new",
            Stage::Activated => "activated",
            Stage::Engaged => "engaged",
            Stage::HighValue => "high_value",
            Stage::Dormant => "dormant",
        }
    }
}

/// Thresholds of the lifecycle rules (variables in deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleRules {
    /// Payments needed for `engaged`...
    pub engaged_min_payments: usize,
    /// ...within this many days.
    pub engaged_window_days: i64,
    /// Paid with the bank's card for `high_value`...
    pub high_value_min_fen: i64,
    /// ...within this many days.
    pub high_value_window_days: i64,
    /// Or the bank's card used in this many distinct scenarios.
    pub high_value_min_scenarios: usize,
    /// Days without activity before `dormant`.
    pub dormant_after_days: i64,
}

impl Default for LifecycleRules {
    fn default() -> Self {
        Self {
            engaged_min_payments: 3,
            engaged_window_days: 30,
            high_value_min_fen: 500_000,
            high_value_window_days: 90,
            high_value_min_scenarios: 2,
            dormant_after_days: 60,
        }
    }
}

/// A login identity linked to the customer. The subject itself is never stored, only its hash and a mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `wechat`, `app` or `phone`.
    pub provider: String,
    /// Hash of the subject (the identity index key part).
    pub subject_hash: String,
    /// Masked subject for display.
    pub subject_masked: String,
    /// When linked.
    pub linked_at: Timestamp,
}

/// Where a customer came from: a resolved channel code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    /// The channel code.
    pub code: String,
    /// `branch`, `staff`, `poster`, `wechat_oa`, `app` or `partner`.
    pub channel: String,
    /// Branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_id: Option<String>,
    /// Staff member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff_id: Option<String>,
    /// Campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// When.
    pub at: Timestamp,
}

/// A stage change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The new stage.
    pub stage: Stage,
    /// When it was entered.
    pub at: Timestamp,
}

/// A payment, as the lifecycle rules need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// When.
    pub at: Timestamp,
    /// Amount in fen.
    pub amount_fen: i64,
    /// Paid with the bank's own card.
    pub bank_card: bool,
    /// Scenario (`utility`, `property`, `campus`, ...).
    pub scenario: String,
}

/// An entry of the identity-link journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEntry {
    /// Provider.
    pub provider: String,
    /// Masked subject.
    pub subject_masked: String,
    /// `registered` (new customer), `phone` (linked by verified phone) or `unlinked`.
    pub via: String,
    /// When.
    pub at: Timestamp,
}

/// Automatic and operator tags, kept apart so operators never remove what events set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    /// Set by events.
    pub auto: BTreeSet<String>,
    /// Set by operators.
    pub operator: BTreeSet<String>,
}

/// The customer profile, `cust:customer:{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Schema version.
    pub v: u32,
    /// Customer id.
    pub id: String,
    /// Registration time.
    pub created_at: Timestamp,
    /// Linked identities.
    pub identities: Vec<Identity>,
    /// Hash of the verified phone number, if any.
    #[serde(default)]
    pub phone_hash: Option<String>,
    /// Masked phone number.
    #[serde(default)]
    pub phone_masked: Option<String>,
    /// Card fingerprints seen at login (anti-abuse checks compare these).
    #[serde(default)]
    pub card_fingerprints: BTreeSet<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
    /// Stored stage (as of the last event).
    pub stage: Stage,
    /// Stage transitions, oldest first.
    pub history: Vec<Transition>,
    /// First touch: never overwritten.
    #[serde(default)]
    pub first_touch: Option<Touch>,
    /// Last touch.
    #[serde(default)]
    pub last_touch: Option<Touch>,
    /// Referral code given at registration, for referral programs.
    #[serde(default)]
    pub referral_code: Option<String>,
    /// Recent payments.
    #[serde(default)]
    pub payments: Vec<Payment>,
    /// Last activity (any event).
    #[serde(default)]
    pub last_activity_at: Option<Timestamp>,
    /// First activation.
    #[serde(default)]
    pub activated_at: Option<Timestamp>,
    /// Whether the customer has been counted as retained.
    #[serde(default)]
    pub retained: bool,
    /// Recently applied event ids.
    #[serde(default)]
    pub applied_events: Vec<String>,
    /// Identity-link journal, newest last.
    #[serde(default)]
    pub journal: Vec<LinkEntry>,
    /// The verified phone number sealed ([`crate::pii`]), for the customer's own export and a logged unmask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_sealed: Option<String>,
    /// The customer's marketing choice; absent when never made ([`Customer::marketing_allowed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketing_consent: Option<Consent>,
    /// When the customer's personal information was erased: the profile is pseudonymous from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<Timestamp>,
    /// Index entries an erasure still has to delete (their keys), emptied once they are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erasure_pending: Vec<String>,
}

/// A marketing choice: whether the customer's profile (tags, lifecycle stage, cards) may be used to target offers
/// and referral nudges at them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Granted (`true`) or withdrawn.
    pub granted: bool,
    /// When the choice was made.
    pub at: Timestamp,
}

impl Customer {
    /// A new profile.
    pub fn new(id: &str, now: Timestamp) -> Self {
        Self {
            v: 1,
            id: id.to_owned(),
            created_at: now,
            identities: Vec::new(),
            phone_hash: None,
            phone_masked: None,
            card_fingerprints: BTreeSet::new(),
            tags: Tags::default(),
            stage: Stage::New,
            history: vec![Transition { stage: Stage::New, at: now }],
            first_touch: None,
            last_touch: None,
            referral_code: None,
            payments: Vec::new(),
            last_activity_at: None,
            activated_at: None,
            retained: false,
            applied_events: Vec::new(),
            journal: Vec::new(),
            phone_sealed: None,
            marketing_consent: None,
            erased_at: None,
            erasure_pending: Vec::new(),
        }
    }

    /// Whether offers and nudges may be targeted at the customer by their profile: unless they withdrew marketing
    /// consent (PIPL art. 24 asks for a convenient way to refuse profile-based marketing; the mini-program's privacy
    /// settings offer it) or had their data erased.
    pub fn marketing_allowed(&self) -> bool {
        self.erased_at.is_none() && self.marketing_consent.is_none_or(|c| c.granted)
    }

    /// All tags, automatic and operator.
    pub fn all_tags(&self) -> BTreeSet<String> {
        self.tags.auto.union(&self.tags.operator).cloned().collect()
    }

    /// The stage at `now` by the rules: a pure function of the profile, so dormancy needs no job.
    pub fn stage_at(&self, now: Timestamp, rules: &LifecycleRules) -> Stage {
        let last = self.last_activity_at.unwrap_or(self.created_at);
        if now.secs_since(last) > rules.dormant_after_days * 86_400 {
            return Stage::Dormant;
        }
        let Some(_) = self.activated_at else { return Stage::New };
        let within = |days: i64| {
            let since = now.plus_days(-days);
            self.payments.iter().filter(move |p| p.at > since && p.at <= now)
        };
        let bank_fen: i64 = within(rules.high_value_window_days).filter(|p| p.bank_card).map(|p| p.amount_fen).sum();
        let bank_scenarios: BTreeSet<&str> =
            within(rules.high_value_window_days).filter(|p| p.bank_card).map(|p| p.scenario.as_str()).collect();
        if bank_fen >= rules.high_value_min_fen || bank_scenarios.len() >= rules.high_value_min_scenarios {
            Stage::HighValue
        } else if within(rules.engaged_window_days).count() >= rules.engaged_min_payments {
            Stage::Engaged
        } else {
            Stage::Activated
        }
    }

    /// The history with the stage at `now` appended when it differs from the stored one.
    pub fn history_at(&self, now: Timestamp, rules: &LifecycleRules) -> Vec<Transition> {
        let mut history = self.history.clone();
        let stage = self.stage_at(now, rules);
        if stage != self.stage {
            let at = match stage {
                // Dormancy began when the quiet period ran out.
                Stage::Dormant => self.last_activity_at.unwrap_or(self.created_at).plus_days(rules.dormant_after_days),
                _ => now,
            };
            history.push(Transition { stage, at });
        }
        history
    }
}

/// Masks all but the first and last characters (`wx_abcdef` → `w*******f`; short values are fully masked).
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    match chars.len() {
        0..=2 => "*".repeat(chars.len().max(1)),
        n => format!("{}{}{}", chars[0], "*".repeat(n - 2), chars[n - 1]),
    }
}

/// Masks a person's name the way Chinese banks show it: a two-character name keeps its first character (`王芳` →
/// `王*`), a longer one its first and last (`张三丰` → `张*丰`), a single character is fully masked. Unlike [`mask`],
/// which hides a two-character identifier completely, the customer must recognise the name to confirm it is theirs.
pub fn mask_name(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    match chars.len() {
        0 | 1 => "*".into(),
        2 => format!("{}*", chars[0]),
        _ => mask(name),
    }
}

/// Masks a phone number as `138****5678`.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() >= 7 {
        let n = chars.len();
        format!(
            "{}{}{}",
            chars[..3].iter().collect::<String>(),
            "*".repeat(n - 7),
            chars[n - 4..].iter().collect::<String>()
        )
    } else {
        mask(phone)
    }
}

/// Keys of the customer profile (owned by the customers component, shared through this module).
pub mod keys {
    use crate::kv::Key;

    /// `cust:customer:{id}`.
    pub fn customer(id: &str) -> Key {
        Key::new(&["cust", "customer", id])
    }
}

/// Reads a customer profile.
pub async fn lookup(store: &impl Store, id: &str) -> Result<Option<Customer>, StoreError> {
    if !valid_id(id) {
        return Ok(None);
    }
    get_json(store, &keys::customer(id)).await
}

/// Whether `id` is shaped like an id (safe to put in a key).
pub fn valid_id(id: &str) -> bool {
    crate::ids::Id::parse(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64) -> Timestamp {
        Timestamp::from_unix_secs(1_767_225_600).plus_days(day)
    }

    fn pay(c: &mut Customer, day: i64, fen: i64, bank_card: bool, scenario: &str) {
        c.payments.push(Payment { at: at(day), amount_fen: fen, bank_card, scenario: scenario.into() });
        c.activated_at.get_or_insert(at(day));
        c.last_activity_at = Some(at(day));
    }

    #[test]
    fn stage_follows_the_rules() {
        let rules = LifecycleRules::default();
        let mut c = Customer::new("c1", at(0));
        assert_eq!(c.stage_at(at(1), &rules), Stage::New);
        pay(&mut c, 1, 100, false, "utility");
        assert_eq!(c.stage_at(at(1), &rules), Stage::Activated);
        pay(&mut c, 2, 100, false, "utility");
        pay(&mut c, 3, 100, false, "property");
        assert_eq!(c.stage_at(at(3), &rules), Stage::Engaged);
        assert_eq!(c.stage_at(at(40), &rules), Stage::Activated, "the 30-day window moved on");
        pay(&mut c, 41, 100, true, "utility");
        pay(&mut c, 42, 100, true, "campus");
        assert_eq!(c.stage_at(at(42), &rules), Stage::HighValue, "bank card in two scenarios");
        assert_eq!(c.stage_at(at(42 + 61), &rules), Stage::Dormant);
    }

    #[test]
    fn a_big_bank_card_spend_is_high_value() {
        let rules = LifecycleRules::default();
        let mut c = Customer::new("c1", at(0));
        pay(&mut c, 1, 499_999, true, "utility");
        assert_eq!(c.stage_at(at(1), &rules), Stage::Activated);
        pay(&mut c, 2, 1, true, "utility");
        assert_eq!(c.stage_at(at(2), &rules), Stage::HighValue);
    }

    #[test]
    fn dormancy_shows_in_history_without_a_write() {
        let rules = LifecycleRules::default();
        let c = Customer::new("c1", at(0));
        let history = c.history_at(at(100), &rules);
        assert_eq!(history.last(), Some(&Transition { stage: Stage::Dormant, at: at(60) }));
    }

    #[test]
    fn masks_hide_the_middle() {
        assert_eq!(mask("wx_abcdef"), "w*******f");
        assert_eq!(mask("ab"), "**");
        assert_eq!(mask_name("王芳"), "王*");
        assert_eq!(mask_name("张三丰"), "张*丰");
        assert_eq!(mask_name("欧阳娜娜"), "欧**娜");
        assert_eq!(mask_name("李"), "*");
        assert_eq!(mask_phone("13812345678"), "138****5678");
    }
}
