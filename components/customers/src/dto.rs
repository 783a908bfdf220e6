//! Wire format of the customers routes (the edge owns it; domain types are not the JSON contract).

use customers_domain::channels::{ChannelCode, NewChannel};
use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{Customer, LifecycleRules, Touch, Transition};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub assertion: String,
    #[serde(default)]
    pub channel_code: Option<String>,
    #[serde(default)]
    pub referral_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelBody {
    #[serde(default)]
    pub code: Option<String>,
    pub channel: String,
    #[serde(default)]
    pub branch_id: Option<String>,
    #[serde(default)]
    pub staff_id: Option<String>,
    #[serde(default)]
    pub campaign_id: Option<String>,
    #[serde(default)]
    pub scenario: Option<String>,
}

impl From<ChannelBody> for NewChannel {
    fn from(b: ChannelBody) -> Self {
        NewChannel {
            code: b.code,
            channel: b.channel,
            branch_id: b.branch_id,
            staff_id: b.staff_id,
            campaign_id: b.campaign_id,
            scenario: b.scenario,
        }
    }
}

#[derive(Serialize)]
pub struct ChannelView<'a> {
    pub code: &'a str,
    pub channel: &'a str,
    pub branch_id: Option<&'a str>,
    pub staff_id: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub scenario: Option<&'a str>,
    pub created_at: Timestamp,
}

impl<'a> From<&'a ChannelCode> for ChannelView<'a> {
    fn from(c: &'a ChannelCode) -> Self {
        ChannelView {
            code: &c.code,
            channel: &c.channel,
            branch_id: c.branch_id.as_deref(),
            staff_id: c.staff_id.as_deref(),
            campaign_id: c.campaign_id.as_deref(),
            scenario: c.scenario.as_deref(),
            created_at: c.created_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagBody {
    pub tag: String,
}

#[derive(Serialize)]
pub struct IdentityView<'a> {
    pub provider: &'a str,
    pub subject_masked: &'a str,
    pub linked_at: Timestamp,
}

#[derive(Serialize)]
pub struct Lifecycle {
    pub stage: &'static str,
    pub history: Vec<Transition>,
}

/// The profile as the customer sees it: no operator tags, nothing unmasked.
#[derive(Serialize)]
pub struct MeView<'a> {
    pub customer_id: &'a str,
    pub created_at: Timestamp,
    pub identities: Vec<IdentityView<'a>>,
    pub phone_masked: Option<&'a str>,
    pub tags: Vec<&'a str>,
    pub lifecycle: Lifecycle,
    pub first_touch: Option<&'a Touch>,
    pub last_touch: Option<&'a Touch>,
    pub marketing_consent: Option<scenefin_core::customers::Consent>,
    pub marketing_allowed: bool,
    pub erased_at: Option<Timestamp>,
}

impl<'a> MeView<'a> {
    pub fn new(c: &'a Customer, now: Timestamp, rules: &LifecycleRules) -> Self {
        MeView {
            customer_id: &c.id,
            created_at: c.created_at,
            identities: c
                .identities
                .iter()
                .map(|i| IdentityView {
                    provider: &i.provider,
                    subject_masked: &i.subject_masked,
                    linked_at: i.linked_at,
                })
                .collect(),
            phone_masked: c.phone_masked.as_deref(),
            tags: c.tags.auto.iter().map(String::as_str).collect(),
            lifecycle: Lifecycle { stage: c.stage_at(now, rules).as_str(), history: c.history_at(now, rules) },
            first_touch: c.first_touch.as_ref(),
            last_touch: c.last_touch.as_ref(),
            marketing_consent: c.marketing_consent,
            marketing_allowed: c.marketing_allowed(),
            erased_at: c.erased_at,
        }
    }
}

/// The profile as an operator sees it.
#[derive(Serialize)]
pub struct OpsView<'a> {
    #[serde(flatten)]
    pub me: MeView<'a>,
    pub operator_tags: Vec<&'a str>,
    pub all_tags: Vec<String>,
    pub activated_at: Option<Timestamp>,
    pub last_activity_at: Option<Timestamp>,
    pub referral_code: Option<&'a str>,
    pub journal: &'a [scenefin_core::customers::LinkEntry],
}

impl<'a> OpsView<'a> {
    pub fn new(c: &'a Customer, now: Timestamp, rules: &LifecycleRules) -> Self {
        OpsView {
            me: MeView::new(c, now, rules),
            operator_tags: c.tags.operator.iter().map(String::as_str).collect(),
            all_tags: c.all_tags().into_iter().collect(),
            activated_at: c.activated_at,
            last_activity_at: c.last_activity_at,
            referral_code: c.referral_code.as_deref(),
            journal: &c.journal,
        }
    }
}

/// An offline activity an operator records (a branch payment, a backfill).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    pub event_id: String,
    pub kind: scenefin_core::events::EventKind,
    pub scenario: String,
    #[serde(default)]
    pub amount_fen: Option<i64>,
    #[serde(default)]
    pub bank_card: bool,
}

impl EventBody {
    pub fn into_offline(self) -> customers_domain::tags::Offline {
        customers_domain::tags::Offline {
            event_id: self.event_id,
            kind: self.kind,
            scenario: self.scenario,
            amount_fen: self.amount_fen,
            bank_card: self.bank_card,
        }
    }
}

#[derive(Serialize)]
pub struct RecordedView {
    pub first_time: bool,
    pub stage: &'static str,
}

impl From<&scenefin_core::events::Applied> for RecordedView {
    fn from(a: &scenefin_core::events::Applied) -> Self {
        RecordedView { first_time: a.first_time, stage: a.stage.as_str() }
    }
}

/// `PUT /api/me/consent`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    pub marketing: bool,
}

/// `POST /api/me/erasure`: the customer confirms, in so many words.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureBody {
    pub confirm: ErasureConfirm,
}

#[derive(Deserialize)]
pub enum ErasureConfirm {
    #[serde(rename = "erase my personal information")]
    Erase,
}

/// `POST /api/ops/customers/{id}/unmask`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmaskBody {
    pub field: UnmaskField,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmaskField {
    Phone,
}
