//! A customer's rights over their personal information (PIPL arts. 44–47), and operators' logged access to it.
//!
//! - **Export** ([`export`]): everything the profile holds about the customer, their phone number opened from its
//!   sealed form, and every time staff unmasked it (who, when, why).
//! - **Erasure** ([`erase`]): the profile is pseudonymised — identities, phone, card fingerprints, tags, the link
//!   journal and the access log go; the customer id stays, with what the bank must keep and what keeps its books
//!   and partners' statements balancing (ledger postings, orders, payments, stage history, counted funnel steps all
//!   name the id, never the person). Index entries that led from the person to the id are deleted, so the next login
//!   of any of their identities registers a new customer ([`crate::sessions`] moves to the identity's next derived
//!   id). Order of writes: the profile first (pseudonymised, with the index keys still to delete), then the index
//!   entries, then the list is cleared — a crash anywhere is finished by a retry or by the next login that meets a
//!   stale entry ([`finish_erasure`]).
//! - **Marketing consent** ([`set_consent`]): `scenefin_core::customers::Customer::marketing_allowed`.
//! - **Unmask** ([`unmask`]): a staff member with a reason reads the phone number; the reason is logged on the
//!   customer (shown in their export) before the number is returned.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{self, Consent, Customer, Identity, LinkEntry, Payment, Tags, Touch, Transition};
use scenefin_core::kv::{self, Key, Step, Store};
use scenefin_core::pii::PiiKeys;
use serde::{Deserialize, Serialize};

use crate::sessions::phone_context;
use crate::{CustomerError, keys};

/// Unmask entries kept per customer.
pub const ACCESS_KEPT: usize = 200;

/// One time staff read a customer's masked information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// When.
    pub at: Timestamp,
    /// Who (staff id, or `break-glass`).
    pub by: String,
    /// What (`phone`).
    pub field: String,
    /// Why, as they wrote it.
    pub reason: String,
}

/// `cust:pii-access:{id}`: the unmask log of one customer, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AccessLog {
    v: u32,
    entries: Vec<Access>,
}

/// What a customer's export holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Export {
    /// When it was made.
    pub exported_at: Timestamp,
    /// The customer id.
    pub customer_id: String,
    /// Registration.
    pub created_at: Timestamp,
    /// Linked login identities (the subjects are never stored: masked).
    pub identities: Vec<Identity>,
    /// The verified phone number.
    pub phone: Option<String>,
    /// How many bank-card fingerprints were seen at login (the fingerprints mean nothing to a person).
    pub card_fingerprints: usize,
    /// Tags the bank set, automatic and by staff.
    pub tags: Tags,
    /// Lifecycle stage history.
    pub stage_history: Vec<Transition>,
    /// Where the customer came from.
    pub first_touch: Option<Touch>,
    /// The latest channel.
    pub last_touch: Option<Touch>,
    /// The referral code registered with.
    pub referral_code: Option<String>,
    /// Recent payments, as the lifecycle rules see them (orders themselves are in each scenario's order list).
    pub payments: Vec<Payment>,
    /// The marketing choice.
    pub marketing_consent: Option<Consent>,
    /// Whether profile-based offers may be shown now.
    pub marketing_allowed: bool,
    /// Identity links and unlinks.
    pub journal: Vec<LinkEntry>,
    /// Every time bank staff unmasked the customer's information.
    pub staff_access: Vec<Access>,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Erasure {
    /// The (now pseudonymous) customer id.
    pub customer_id: String,
    /// When.
    pub erased_at: Timestamp,
    /// Index entries deleted (identities and phone).
    pub index_entries_deleted: usize,
    /// What the bank keeps, under the pseudonymous id only.
    pub kept: &'static [&'static str],
}

/// What the bank keeps after an erasure (named in the answer and in docs/SECURITY.md).
const KEPT: &[&str] = &[
    "ledger postings and orders (accounting and anti-money-laundering retention)",
    "partner settlement statements",
    "lifecycle stage history and payment amounts (funnel statistics already counted)",
    "channel attribution (which channel code brought the id)",
];

/// `cust:pii-access:{id}`.
fn access_key(id: &str) -> Key {
    Key::new(&["cust", "pii-access", id])
}

/// The customer's export (reads the unmask log; the profile is the caller's, already authenticated).
pub async fn export(store: &impl Store, pii: &PiiKeys, c: &Customer, now: Timestamp) -> Result<Export, CustomerError> {
    let log: AccessLog = kv::get_json(store, &access_key(&c.id)).await?.unwrap_or_default();
    Ok(Export {
        exported_at: now,
        customer_id: c.id.clone(),
        created_at: c.created_at,
        identities: c.identities.clone(),
        phone: c.phone_sealed.as_deref().and_then(|s| pii.open(&phone_context(&c.id), s)),
        card_fingerprints: c.card_fingerprints.len(),
        tags: c.tags.clone(),
        stage_history: c.history.clone(),
        first_touch: c.first_touch.clone(),
        last_touch: c.last_touch.clone(),
        referral_code: c.referral_code.clone(),
        payments: c.payments.clone(),
        marketing_consent: c.marketing_consent,
        marketing_allowed: c.marketing_allowed(),
        journal: c.journal.clone(),
        staff_access: log.entries,
    })
}

/// Grants (`true`) or withdraws marketing consent; the profile after the change.
pub async fn set_consent(
    store: &impl Store,
    id: &str,
    granted: bool,
    now: Timestamp,
) -> Result<Customer, CustomerError> {
    kv::update_json(store, &customers::keys::customer(id), |current: Option<&Customer>| {
        let Some(current) = current.filter(|c| c.erased_at.is_none()) else { return Err(CustomerError::Erased) };
        if current.marketing_consent.is_some_and(|c| c.granted == granted) {
            return Ok(Step::Keep(current.clone()));
        }
        let next = Customer { marketing_consent: Some(Consent { granted, at: now }), ..current.clone() };
        Ok(Step::Write(next.clone(), next))
    })
    .await
}

/// The profile pseudonymised (pure): every personal field cleared, the index keys to delete listed.
fn pseudonymised(c: &Customer, now: Timestamp) -> Customer {
    let mut pending: Vec<String> =
        c.identities.iter().map(|i| keys::identity(&i.provider, &i.subject_hash).as_str().to_owned()).collect();
    pending.extend(c.phone_hash.as_deref().map(|h| keys::phone(h).as_str().to_owned()));
    pending.push(access_key(&c.id).as_str().to_owned());
    Customer {
        identities: Vec::new(),
        phone_hash: None,
        phone_masked: None,
        phone_sealed: None,
        card_fingerprints: Default::default(),
        tags: Tags::default(),
        journal: Vec::new(),
        marketing_consent: None,
        erased_at: Some(now),
        erasure_pending: pending,
        ..c.clone()
    }
}

/// Erases the customer's personal information (idempotent: erasing again finishes an erasure a crash cut short).
pub async fn erase(store: &impl Store, id: &str, now: Timestamp) -> Result<Erasure, CustomerError> {
    let erased = kv::update_json(store, &customers::keys::customer(id), |current: Option<&Customer>| {
        let Some(current) = current else { return Err(CustomerError::NotFound) };
        if current.erased_at.is_some() {
            return Ok(Step::Keep(current.clone()));
        }
        let next = pseudonymised(current, now);
        Ok(Step::Write(next.clone(), next))
    })
    .await?;
    let deleted = finish_erasure(store, id, &[]).await?;
    Ok(Erasure {
        customer_id: id.to_owned(),
        erased_at: erased.erased_at.unwrap_or(now),
        index_entries_deleted: deleted,
        kept: KEPT,
    })
}

/// Deletes what an erasure of `id` still lists, and `stale` index entries found pointing at it; how many index
/// entries were deleted.
pub async fn finish_erasure(store: &impl Store, id: &str, stale: &[Key]) -> Result<usize, CustomerError> {
    let profile_key = customers::keys::customer(id);
    let Some(c) = kv::get_json::<Customer>(store, &profile_key).await? else { return Ok(0) };
    // The access log first (it is the customer's alone); then the index entries, each only while it still names
    // this customer (a phone entry may belong to another customer who verified the number first, an identity's
    // entry to the customer its next login registered).
    let access = access_key(id);
    let mut doomed: Vec<Key> = c.erasure_pending.iter().filter_map(|k| Key::try_from_stored(k)).collect();
    doomed.extend(stale.iter().cloned());
    doomed.sort();
    doomed.dedup();
    if doomed.contains(&access) {
        kv::delete_doc(store, &access).await?;
    }
    doomed.retain(|k| *k != access);
    let mut deleted = 0;
    for (key, raw) in doomed.iter().zip(kv::get_all(store, &doomed).await?) {
        if crate::sessions::index_entry(key, raw)?.as_deref() == Some(id) {
            kv::delete_doc(store, key).await?;
            deleted += 1;
        }
    }
    if !c.erasure_pending.is_empty() {
        kv::update_json(store, &profile_key, |current: Option<&Customer>| match current {
            Some(cur) if !cur.erasure_pending.is_empty() => {
                Ok::<_, CustomerError>(Step::Write(Customer { erasure_pending: Vec::new(), ..cur.clone() }, ()))
            }
            _ => Ok(Step::Keep(())),
        })
        .await?;
    }
    Ok(deleted)
}

/// Checks an unmask reason (pure): 5 to 200 characters, no control characters.
pub fn parse_reason(reason: &str) -> Result<&str, CustomerError> {
    let reason = reason.trim();
    let n = reason.chars().count();
    if (5..=200).contains(&n) && !reason.chars().any(char::is_control) {
        Ok(reason)
    } else {
        Err(CustomerError::ReasonRequired)
    }
}

/// A staff member (`by`) reads customer `id`'s phone number for `reason`: the access is logged first (the customer
/// sees it in their export; the audit log has the request), then the number is returned.
pub async fn unmask(
    store: &impl Store,
    pii: &PiiKeys,
    id: &str,
    by: &str,
    reason: &str,
    now: Timestamp,
) -> Result<String, CustomerError> {
    let reason = parse_reason(reason)?;
    let c = crate::tags::get(store, id).await?;
    let phone = c
        .phone_sealed
        .as_deref()
        .and_then(|s| pii.open(&phone_context(&c.id), s))
        .ok_or(CustomerError::NothingToUnmask("phone number"))?;
    let entry = Access { at: now, by: by.to_owned(), field: "phone".into(), reason: reason.to_owned() };
    kv::update_json(store, &access_key(id), |current: Option<&AccessLog>| {
        let mut log = current.cloned().unwrap_or(AccessLog { v: 1, entries: Vec::new() });
        log.entries.push(entry.clone());
        let excess = log.entries.len().saturating_sub(ACCESS_KEPT);
        log.entries.drain(..excess);
        Ok::<_, CustomerError>(Step::Write(log, ()))
    })
    .await?;
    Ok(phone)
}
