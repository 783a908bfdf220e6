//! Logging in: One ID across providers, registration with attribution, and session tokens.
//!
//! The bank's login gateway signs an identity assertion (`scenefin_core::auth::verify_assertion`); this module
//! decides who that identity is:
//! - the same (provider, subject) is always the same customer (`cust:identity:{provider}:{hash}`);
//! - a new identity with a verified phone already known joins that phone's customer (at most
//!   [`MAX_IDENTITIES_PER_PROVIDER`] identities per provider);
//! - otherwise a new customer is registered, with an id derived from the identity, so two concurrent first logins
//!   converge on one customer.
//!
//! Order of writes (each step idempotent, so a retry after a crash completes the login): profile (identity, phone,
//! touches, journal, and for a new customer its `registered` event, applied in the same write) → identity index →
//! the registration's counters (counted by the one login that creates the identity index entry of the identity the
//! customer is derived from) → phone index.

use scenefin_core::auth::{self, IdentityAssertion};
use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{self, Customer, Identity, JOURNAL_KEPT, LifecycleRules, LinkEntry, Touch};
use scenefin_core::events;
use scenefin_core::ids::hash_key_part;
use scenefin_core::kv::{self, Step, Store};
use scenefin_core::referrals::{self, AttachError};
use serde::{Deserialize, Serialize};

use crate::channels::{self, ChannelCode};
use crate::{CustomerError, keys};

/// Identities of one provider a customer may link.
pub const MAX_IDENTITIES_PER_PROVIDER: usize = 3;
/// Session lifetime.
pub const SESSION_TTL_SECS: i64 = 7 * 24 * 3600;
/// Subjects the gateway must never send: placeholders from broken front ends.
const BLOCKED_SUBJECTS: &[&str] = &["", "null", "undefined", "anonymous", "none", "nil", "unknown", "test"];

/// A login request.
#[derive(Debug, Clone)]
pub struct Login {
    /// The signed identity assertion.
    pub assertion: String,
    /// Channel code from the QR scene, if any.
    pub channel_code: Option<String>,
    /// Referral code, kept for referral programs.
    pub referral_code: Option<String>,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Bearer token.
    pub token: String,
    /// When it expires.
    pub expires_at: Timestamp,
    /// The customer.
    pub customer_id: String,
    /// Whether this login registered the customer.
    pub is_new: bool,
}

/// Secrets the login needs.
pub struct Secrets<'a> {
    /// Verifies assertions.
    pub identity_secret: &'a [u8],
    /// Signs session tokens.
    pub session_secret: &'a [u8],
}

/// Checks the assertion's business content (pure).
pub fn check_identity(a: &IdentityAssertion) -> Result<(), CustomerError> {
    let subject = a.subject.trim();
    let blocked = BLOCKED_SUBJECTS.iter().any(|b| subject.eq_ignore_ascii_case(b))
        || subject.chars().all(|c| c == '0')
        || subject.len() > 128
        || subject.chars().any(char::is_control);
    if blocked {
        return Err(CustomerError::BlockedSubject(a.subject.chars().take(32).collect()));
    }
    if let Some(phone) = &a.phone
        && !(phone.len() == 11 && phone.starts_with('1') && phone.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(CustomerError::InvalidPhone);
    }
    Ok(())
}

/// The customer id a new identity registers under: derived, so concurrent first logins agree.
pub fn derived_customer_id(provider: &str, subject_hash: &str) -> String {
    format!("c_{}", &hash_key_part(&format!("{provider}:{subject_hash}"))[..24])
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    v: u32,
    customer_id: String,
}

/// The customer an index entry (identity or phone) read as `raw` points at.
fn index_entry(key: &kv::Key, raw: Option<Vec<u8>>) -> Result<Option<String>, CustomerError> {
    Ok(kv::decode_doc::<IndexEntry>(key, raw.as_deref())?.map(|e| e.customer_id))
}

/// Points an index entry (just read as absent) at `customer_id` unless it already points somewhere: where it points,
/// and whether this call created it (exactly one caller ever does).
async fn index_claim(store: &impl Store, key: &kv::Key, customer_id: &str) -> Result<(String, bool), CustomerError> {
    kv::update_json_new(store, key, |current: Option<&IndexEntry>| match current {
        Some(e) => Ok::<_, CustomerError>(Step::Keep((e.customer_id.clone(), false))),
        None => {
            let entry = IndexEntry { v: 1, customer_id: customer_id.to_owned() };
            Ok(Step::Write(entry, (customer_id.to_owned(), true)))
        }
    })
    .await
}

/// What a login writes into the profile it lands on.
struct Facts<'a> {
    identity: Identity,
    phone: Option<(String, &'a str)>,
    card_fingerprint: Option<&'a str>,
    touch: Option<Touch>,
    referral_code: Option<String>,
}

/// The profile after a login (pure): the identity linked (within [`MAX_IDENTITIES_PER_PROVIDER`]), the phone, card
/// fingerprint and touches recorded, and, when `register` is given, the `registered` event applied in the same write
/// (`events::register`) if the profile lacks it.
fn link(
    current: Option<&Customer>,
    target: &str,
    facts: &Facts<'_>,
    register: Option<&LifecycleRules>,
    now: Timestamp,
) -> Result<Step<Customer, Customer>, CustomerError> {
    let identity = &facts.identity;
    let mut c = current.cloned().unwrap_or_else(|| Customer::new(target, now));
    let is_new_profile = current.is_none();
    if !c.identities.iter().any(|i| i.provider == identity.provider && i.subject_hash == identity.subject_hash) {
        let same_provider = c.identities.iter().filter(|i| i.provider == identity.provider).count();
        if same_provider >= MAX_IDENTITIES_PER_PROVIDER {
            return Err(CustomerError::IdentityLimit {
                provider: identity.provider.clone(),
                limit: MAX_IDENTITIES_PER_PROVIDER,
            });
        }
        c.identities.push(identity.clone());
        let via = if is_new_profile { "registered" } else { "phone" };
        c.journal.push(LinkEntry {
            provider: identity.provider.clone(),
            subject_masked: identity.subject_masked.clone(),
            via: via.into(),
            at: now,
        });
        let excess = c.journal.len().saturating_sub(JOURNAL_KEPT);
        c.journal.drain(..excess);
    }
    if let Some((ph, phone)) = &facts.phone
        && c.phone_hash.is_none()
    {
        c.phone_hash = Some(ph.clone());
        c.phone_masked = Some(customers::mask_phone(phone));
    }
    if let Some(fp) = facts.card_fingerprint
        && fp.len() <= 128
        && c.card_fingerprints.len() < 20
    {
        c.card_fingerprints.insert(fp.to_owned());
    }
    if let Some(t) = &facts.touch {
        if c.first_touch.is_none() {
            c.first_touch = Some(t.clone());
        }
        c.last_touch = Some(t.clone());
    }
    if c.referral_code.is_none() && is_new_profile {
        c.referral_code.clone_from(&facts.referral_code);
    }
    // After the first touch: the registration's scenario is the first touch's.
    if let Some(rules) = register
        && events::unregistered(&c)
    {
        c = events::register(&c, rules);
    }
    if current == Some(&c) {
        return Ok(Step::Keep(c));
    }
    Ok(Step::Write(c.clone(), c))
}

/// Logs in (registering when needed) and issues a session.
///
/// Store calls: one batch read (identity index, and the phone index and channel code when given); a returning
/// identity then reads its profile (and writes it only when something changed: a new touch, phone or card). A new
/// identity creates its profile with the `registered` event applied (claim and write), then its identity index entry
/// (claim and write), whose creation is the exactly-once claim of the registration's counters (plain increments:
/// the funnel's `registered` step per dimension and the `new` stage), and the phone index entry when the phone is
/// new.
pub async fn login(
    store: &impl Store,
    secrets: &Secrets<'_>,
    rules: &LifecycleRules,
    input: Login,
    now: Timestamp,
) -> Result<Session, CustomerError> {
    let assertion = auth::verify_assertion(secrets.identity_secret, &input.assertion, now.unix_secs())?;
    check_identity(&assertion)?;
    let channel_key = input.channel_code.as_deref().map(channels::key_of).transpose()?;
    let referral_code = input
        .referral_code
        .map(|c| {
            let ok = !c.is_empty() && c.len() <= 32 && c.bytes().all(|b| b.is_ascii_alphanumeric());
            if ok {
                Ok(c)
            } else {
                Err(CustomerError::Invalid { field: "referral_code", message: "1 to 32 letters and digits".into() })
            }
        })
        .transpose();

    let provider = assertion.provider.as_str();
    let subject_hash = hash_key_part(assertion.subject.trim());
    let identity_key = keys::identity(provider, &subject_hash);
    let phone_hash = assertion.phone.as_deref().map(hash_key_part);
    let phone_key = phone_hash.as_deref().map(keys::phone);

    // Everything the login needs to know, in one batch: the identity, the phone, the channel code.
    let mut wanted = vec![identity_key.clone()];
    wanted.extend(phone_key.iter().cloned());
    wanted.extend(channel_key.iter().cloned());
    let mut read = kv::get_all(store, &wanted).await?.into_iter();
    let known = index_entry(&identity_key, read.next().flatten())?;
    let phone_owner = match &phone_key {
        Some(key) => index_entry(key, read.next().flatten())?,
        None => None,
    };
    let channel = match (&input.channel_code, &channel_key) {
        (Some(code), Some(key)) => Some(channels::decode(code, key, read.next().flatten().as_deref())?),
        _ => None,
    };
    let referral_code = referral_code?;

    // Who is this? Known identity, else the customer of a known phone, else a new customer whose id is derived
    // from the identity (so concurrent first logins converge on it).
    let derived = derived_customer_id(provider, &subject_hash);
    let (target, registers) = match (&known, &phone_owner) {
        (Some(id), _) | (None, Some(id)) => (id.clone(), false),
        (None, None) => (derived, true),
    };
    let facts = Facts {
        identity: Identity {
            provider: provider.to_owned(),
            subject_hash: subject_hash.clone(),
            subject_masked: customers::mask(assertion.subject.trim()),
            linked_at: now,
        },
        phone: phone_hash.clone().zip(assertion.phone.as_deref()),
        card_fingerprint: assertion.card_fingerprint.as_deref(),
        touch: channel.as_ref().map(|c: &ChannelCode| c.touch(now)),
        referral_code,
    };
    let profile_key = customers::keys::customer(&target);
    let decide = |current: Option<&Customer>| link(current, &target, &facts, registers.then_some(rules), now);
    let customer = if registers {
        // Usually new: claimed first, without a read.
        kv::update_json_new(store, &profile_key, decide).await?
    } else {
        kv::update_json(store, &profile_key, decide).await?
    };

    let mut is_new = false;
    if known.is_none() {
        // The identity index is the truth for One ID: if a concurrent login linked this identity elsewhere first,
        // that customer wins and our profile change is undone.
        let (owner, created) = index_claim(store, &identity_key, &target).await?;
        if owner != target {
            unlink(store, &target, &facts.identity, now).await?;
            return Box::pin(login_existing(store, secrets, &owner, now)).await;
        }
        // The one login that creates the entry of the identity the customer is derived from counts its
        // registration (a crash before the entry is completed by the retry, one after it loses the counts: at
        // most once, as funnel counters are).
        if created && registers {
            events::count_registration(store, &customer).await?;
            is_new = true;
        }
    }
    if let (Some(key), None) = (&phone_key, &phone_owner) {
        index_claim(store, key, &target).await?;
    }
    // A profile registered before registrations were written with it, and never completed: record it now.
    if events::unregistered(&customer) {
        is_new = events::record(store, &events::registration(&customer), rules).await?.first_time;
    }
    // Registered with a referral code: attribute the referral (idempotent, so a retried login completes it). An
    // unknown code or an earlier referral leaves the login alone.
    if let Some(code) = &customer.referral_code
        && now.secs_since(customer.created_at) <= referrals::ATTACH_WINDOW_DAYS * 86_400
    {
        match referrals::attach(store, &customer, code, true, now).await {
            Ok(_) | Err(AttachError::UnknownCode | AttachError::AlreadyReferred) => {}
            Err(AttachError::Store(e)) => return Err(e.into()),
        }
    }
    issue(secrets, &target, is_new, now)
}

async fn login_existing(
    store: &impl Store,
    secrets: &Secrets<'_>,
    id: &str,
    now: Timestamp,
) -> Result<Session, CustomerError> {
    customers::lookup(store, id).await?.ok_or(CustomerError::NotFound)?;
    issue(secrets, id, false, now)
}

async fn unlink(store: &impl Store, id: &str, identity: &Identity, now: Timestamp) -> Result<(), CustomerError> {
    kv::update_json(store, &customers::keys::customer(id), |current: Option<&Customer>| {
        let Some(current) = current else { return Ok::<_, CustomerError>(Step::Keep(())) };
        let mut c = current.clone();
        let before = c.identities.len();
        c.identities.retain(|i| !(i.provider == identity.provider && i.subject_hash == identity.subject_hash));
        if c.identities.len() == before {
            return Ok(Step::Keep(()));
        }
        c.journal.push(LinkEntry {
            provider: identity.provider.clone(),
            subject_masked: identity.subject_masked.clone(),
            via: "unlinked".into(),
            at: now,
        });
        Ok(Step::Write(c, ()))
    })
    .await
}

fn issue(secrets: &Secrets<'_>, customer_id: &str, is_new: bool, now: Timestamp) -> Result<Session, CustomerError> {
    let token = auth::issue_session(secrets.session_secret, customer_id, now.unix_secs(), SESSION_TTL_SECS);
    Ok(Session { token, expires_at: now.plus_secs(SESSION_TTL_SECS), customer_id: customer_id.to_owned(), is_new })
}

/// The customer a session token belongs to.
pub async fn authenticate(
    store: &impl Store,
    session_secret: &[u8],
    authorization: Option<&str>,
    now: Timestamp,
) -> Result<Customer, CustomerError> {
    let token = auth::bearer(authorization)
        .ok_or(CustomerError::Auth(auth::AuthError::MissingCredentials("Authorization: Bearer <session token>")))?;
    let claims = auth::verify_session(session_secret, token, now.unix_secs())?;
    customers::lookup(store, &claims.customer_id).await?.ok_or(CustomerError::NotFound)
}

#[cfg(test)]
mod tests;
