//! Wire format of the campus routes.

use campus_card_domain::cards::MemberInput;
use campus_card_domain::schools::{Merchant, MerchantKind, School, TopupBonus};
use campus_card_domain::spend::{Spend, SpendState};
use scenefin_core::clock::Timestamp;
use scenefin_core::orders::PayWith;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchoolBody {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub topup_bonus: Option<TopupBonus>,
}

impl From<SchoolBody> for campus_card_domain::schools::NewSchool {
    fn from(b: SchoolBody) -> Self {
        campus_card_domain::schools::NewSchool { id: b.id, name: b.name, city: b.city, topup_bonus: b.topup_bonus }
    }
}

/// A school as its partner and operators see it (the bonus budget included).
#[derive(Serialize)]
pub struct SchoolView<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub city: Option<&'a str>,
    pub topup_bonus: Option<&'a TopupBonus>,
    pub created_at: Timestamp,
}

impl<'a> From<&'a School> for SchoolView<'a> {
    fn from(s: &'a School) -> Self {
        SchoolView {
            id: &s.id,
            name: &s.name,
            city: s.city.as_deref(),
            topup_bonus: s.topup_bonus.as_ref(),
            created_at: s.created_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantBody {
    pub merchant_id: String,
    pub name: String,
    pub kind: MerchantKind,
}

#[derive(Serialize)]
pub struct MerchantView<'a> {
    pub merchant_id: &'a str,
    pub school_id: &'a str,
    pub name: &'a str,
    pub kind: MerchantKind,
    pub created_at: Timestamp,
}

impl<'a> From<&'a Merchant> for MerchantView<'a> {
    fn from(m: &'a Merchant) -> Self {
        MerchantView {
            merchant_id: &m.id,
            school_id: &m.school_id,
            name: &m.name,
            kind: m.kind,
            created_at: m.created_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    pub members: Vec<MemberInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    pub school_id: String,
    pub member_no: String,
    pub activation_code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    pub daily_limit_fen: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopupBody {
    pub card_id: String,
    pub amount_fen: i64,
    #[serde(default = "other")]
    pub pay_with: PayWith,
    #[serde(default)]
    pub card_bin: Option<String>,
}

fn other() -> PayWith {
    PayWith::Other
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendBody {
    pub pos_txn_id: String,
    #[serde(default)]
    pub card_id: Option<String>,
    #[serde(default)]
    pub pay_code: Option<String>,
    pub amount_fen: i64,
}

/// A spend as its merchant sees it.
#[derive(Serialize)]
pub struct SpendView<'a> {
    pub spend_id: &'a str,
    pub pos_txn_id: &'a str,
    pub merchant_id: &'a str,
    pub card_id: &'a str,
    pub amount_fen: i64,
    pub state: SpendState,
    pub at: Timestamp,
    pub reversed_at: Option<Timestamp>,
    /// What the card holds now (after this spend and anything since).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_fen: Option<i64>,
}

impl<'a> SpendView<'a> {
    pub fn of(s: &'a Spend, balance_fen: Option<i64>) -> Self {
        SpendView {
            spend_id: &s.spend_id,
            pos_txn_id: &s.pos_txn_id,
            merchant_id: &s.merchant_id,
            card_id: &s.card_id,
            amount_fen: s.amount_fen,
            state: s.state,
            at: s.completed_at.unwrap_or(s.created_at),
            reversed_at: s.reversed_at,
            balance_fen,
        }
    }
}
