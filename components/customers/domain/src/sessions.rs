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
use scenefin_core::pii::PiiKeys;
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
    /// Keys the identity and phone indexes and seals the phone number (`scenefin_core::pii`).
    pub pii: &'a PiiKeys,
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

/// The customer id a new identity registers under: derived, so concurrent first logins agree. `generation` counts
/// the identity's erased customers: after an erasure the same identity registers afresh under the next id.
pub fn derived_customer_id(provider: &str, subject_hash: &str, generation: u32) -> String {
    let seed = match generation {
        0 => format!("{provider}:{subject_hash}"),
        n => format!("{provider}:{subject_hash}:{n}"),
    };
    format!("c_{}", &hash_key_part(&seed)[..24])
}

/// Erased customers one identity may leave behind before a login gives up (each erasure moves the identity's next
/// registration one id on).
const MAX_GENERATIONS: u32 = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    v: u32,
    customer_id: String,
}

/// The customer an index entry (identity or phone) read as `raw` points at.
pub(crate) fn index_entry(key: &kv::Key, raw: Option<Vec<u8>>) -> Result<Option<String>, CustomerError> {
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
    /// Older hashes of the same subject (the previous key's, the unkeyed one): a profile linked under one moves to
    /// the current hash.
    older_subject_hashes: &'a [String],
    /// The phone's current hash and number, its older hashes, and the number sealed for the target profile.
    phone: Option<(String, &'a str)>,
    older_phone_hashes: &'a [String],
    phone_sealed: Option<String>,
    pii: &'a PiiKeys,
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
    if current.is_some_and(|c| c.erased_at.is_some()) {
        return Err(CustomerError::Erased);
    }
    let mut c = current.cloned().unwrap_or_else(|| Customer::new(target, now));
    let is_new_profile = current.is_none();
    for i in c.identities.iter_mut().filter(|i| i.provider == identity.provider) {
        if facts.older_subject_hashes.contains(&i.subject_hash) {
            i.subject_hash.clone_from(&identity.subject_hash);
        }
    }
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
    if let Some((ph, phone)) = &facts.phone {
        let older = c.phone_hash.as_ref().is_some_and(|h| facts.older_phone_hashes.contains(h));
        if c.phone_hash.is_none() || older {
            c.phone_hash = Some(ph.clone());
            c.phone_masked = Some(customers::mask_phone(phone));
        }
        // The number itself only sealed, and sealed again under a rotated key.
        if c.phone_hash.as_ref() == Some(ph) && c.phone_sealed.as_ref().is_none_or(|s| !facts.pii.is_current(s)) {
            c.phone_sealed.clone_from(&facts.phone_sealed);
        }
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
    let retry = input.clone();
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
    let subject_hashes = secrets.pii.lookups(assertion.subject.trim());
    let subject_hash = subject_hashes[0].clone();
    let identity_keys: Vec<kv::Key> = subject_hashes.iter().map(|h| keys::identity(provider, h)).collect();
    let phone_hashes = assertion.phone.as_deref().map(|p| secrets.pii.lookups(p)).unwrap_or_default();
    let phone_keys: Vec<kv::Key> = phone_hashes.iter().map(|h| keys::phone(h)).collect();

    // Everything the login needs to know, in one batch: the identity and the phone (under their current hash and
    // any older one), the channel code.
    let mut wanted = identity_keys.clone();
    wanted.extend(phone_keys.iter().cloned());
    wanted.extend(channel_key.iter().cloned());
    let mut read = kv::get_all(store, &wanted).await?.into_iter();
    let mut entries = |keys: &[kv::Key]| -> Result<Vec<Option<String>>, CustomerError> {
        keys.iter().map(|k| index_entry(k, read.next().flatten())).collect()
    };
    let identity_owners = entries(&identity_keys)?;
    let phone_owners = entries(&phone_keys)?;
    let channel = match (&input.channel_code, &channel_key) {
        (Some(code), Some(key)) => Some(channels::decode(code, key, read.next().flatten().as_deref())?),
        _ => None,
    };
    let referral_code = referral_code?;
    let known = identity_owners.iter().flatten().next().cloned();
    let phone_owner = phone_owners.iter().flatten().next().cloned();

    // Who is this? Known identity, else the customer of a known phone, else a new customer whose id is derived
    // from the identity (so concurrent first logins converge on it).
    let mut facts = Facts {
        identity: Identity {
            provider: provider.to_owned(),
            subject_hash: subject_hash.clone(),
            subject_masked: customers::mask(assertion.subject.trim()),
            linked_at: now,
        },
        older_subject_hashes: &subject_hashes[1..],
        phone: phone_hashes.first().cloned().zip(assertion.phone.as_deref()),
        older_phone_hashes: phone_hashes.get(1..).unwrap_or_default(),
        phone_sealed: None,
        pii: secrets.pii,
        card_fingerprint: assertion.card_fingerprint.as_deref(),
        touch: channel.as_ref().map(|c: &ChannelCode| c.touch(now)),
        referral_code,
    };
    let nonce = scenefin_core::ids::random_bytes::<12>()
        .map_err(|e| CustomerError::Store(scenefin_core::kv::StoreError::Backend(e.to_string())))?;
    let mut generation = 0;
    let (target, registers, customer) = loop {
        let (target, registers) = match (&known, &phone_owner) {
            (Some(id), _) | (None, Some(id)) => (id.clone(), false),
            (None, None) => (derived_customer_id(provider, &subject_hash, generation), true),
        };
        facts.phone_sealed = assertion.phone.as_deref().map(|p| secrets.pii.seal(&phone_context(&target), p, nonce));
        let profile_key = customers::keys::customer(&target);
        let decide = |current: Option<&Customer>| link(current, &target, &facts, registers.then_some(rules), now);
        let linked = if registers {
            // Usually new: claimed first, without a read.
            kv::update_json_new(store, &profile_key, decide).await
        } else {
            kv::update_json(store, &profile_key, decide).await
        };
        match linked {
            Ok(customer) => break (target, registers, customer),
            // An index still pointing at an erased customer (an erasure cut short): finish that erasure, then
            // look again.
            Err(CustomerError::Erased) if !registers => {
                let pointing = identity_keys.iter().zip(&identity_owners).chain(phone_keys.iter().zip(&phone_owners));
                let stale: Vec<kv::Key> =
                    pointing.filter(|(_, owner)| owner.as_deref() == Some(&target)).map(|(k, _)| k.clone()).collect();
                crate::privacy::finish_erasure(store, &target, &stale).await?;
                return Box::pin(login(store, secrets, rules, retry, now)).await;
            }
            // The identity's customer was erased: it registers afresh under its next id.
            Err(CustomerError::Erased) if generation < MAX_GENERATIONS => generation += 1,
            Err(e) => return Err(e),
        }
    };

    let mut is_new = false;
    if identity_owners[0].is_none() {
        // The identity index is the truth for One ID: if a concurrent login linked this identity elsewhere first,
        // that customer wins and our profile change is undone.
        let (owner, created) = index_claim(store, &identity_keys[0], &target).await?;
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
    if phone_owners.first().is_some_and(Option::is_none) && phone_owner.as_ref().is_none_or(|o| *o == target) {
        index_claim(store, &phone_keys[0], &target).await?;
    }
    // This customer's entries under older hashes now live under the current one: the older ones go.
    let older = identity_keys.iter().zip(&identity_owners).skip(1).chain(phone_keys.iter().zip(&phone_owners).skip(1));
    for (key, _) in older.filter(|(_, owner)| owner.as_deref() == Some(&target)) {
        kv::delete_doc(store, key).await?;
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
    let customer = customers::lookup(store, &claims.customer_id).await?.ok_or(CustomerError::NotFound)?;
    if customer.erased_at.is_some() {
        return Err(CustomerError::Erased);
    }
    Ok(customer)
}

/// The context a customer's phone number is sealed for.
pub fn phone_context(customer_id: &str) -> String {
    format!("{customer_id}:phone")
}

#[cfg(test)]
mod tests;
