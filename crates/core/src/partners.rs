//! Partners (billers, property companies, schools, merchants): credentials issued once at onboarding, and the
//! verification of their signed requests (HMAC headers from `auth`, plus nonce replay protection in the store).
//!
//! Partner documents live under the owning scenario's prefix (`util:partner:{id}`), because a partner acts only on
//! that scenario's resource (`resource_id`: its biller, community, school or merchant). The secret is stored as
//! issued: HMAC verification needs it (see the notes on encrypting it at rest).
//!
//! Secrets rotate with an overlap: [`rotate_secret`] issues a new secret (shown once) and keeps the old one valid
//! until `now + overlap` ([`DEFAULT_OVERLAP_SECS`], at most [`MAX_OVERLAP_SECS`]), so a partner can switch without
//! a failed call; [`revoke_previous_secrets`] ends the overlap early. A signature verifies if the current secret or
//! a previous one not yet expired produced it. The partner document changes only through `kv::update_json`.

use serde::{Deserialize, Serialize};

use crate::auth::{self, AuthError, PartnerHeaders};
use crate::clock::Timestamp;
use crate::ids::{Id, hash_key_part, new_id, random_bytes};
use crate::kv::{Key, Step, Store, StoreError, claim_once, get_json, update_json, update_json_new};
use crate::problem::{ErrorKind, Problem};

/// A partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// Schema version.
    pub v: u32,
    /// Public id (`X-Partner-Id`).
    pub partner_id: String,
    /// HMAC key (UTF-8 bytes of this string).
    pub secret: String,
    /// `biller`, `property_company`, `school`, `merchant`...
    pub kind: String,
    /// The one resource this partner acts on.
    pub resource_id: String,
    /// Onboarding time.
    pub created_at: Timestamp,
    /// Earlier secrets still accepted until they expire (a rotation's overlap), oldest first, at most
    /// [`MAX_PREVIOUS_SECRETS`] live ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<PreviousSecret>,
    /// Hashes of the secrets rotations installed, newest last (the last [`ROTATIONS_REMEMBERED`]): a rotation run
    /// again after a later one finds its secret here and changes nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotated_in: Vec<String>,
}

/// A secret a rotation replaced, accepted until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The HMAC key, as it was issued.
    pub secret: String,
    /// From this instant on it is refused.
    pub expires_at: Timestamp,
}

/// How long the old secret stays valid after a rotation, unless the operator says otherwise: 24 hours.
pub const DEFAULT_OVERLAP_SECS: i64 = 86_400;
/// The longest overlap a rotation may give the old secret: 7 days.
pub const MAX_OVERLAP_SECS: i64 = 7 * 86_400;
/// How many earlier secrets may be live at once (rotating again during an overlap keeps the older one live too).
pub const MAX_PREVIOUS_SECRETS: usize = 3;

/// What a rotation returns, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotated {
    /// `X-Partner-Id`, unchanged.
    pub partner_id: String,
    /// The new signing secret: shown only now.
    pub partner_secret: String,
    /// When the secret it replaces stops being accepted.
    pub previous_secret_expires_at: Timestamp,
}

/// What onboarding returns, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// `X-Partner-Id`.
    pub partner_id: String,
    /// The signing secret: shown only now.
    pub partner_secret: String,
}

/// Why a partner request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartnerError {
    /// Signature, timestamp, nonce or headers.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A valid partner acting on someone else's resource.
    #[error("this partner may not act on {0}")]
    Forbidden(String),
    /// No partner of this scenario has this id.
    #[error("no partner {0} here")]
    NotFound(String),
    /// A rotation's overlap is outside 0 to [`MAX_OVERLAP_SECS`] seconds.
    #[error("overlap_secs must be 0 to {MAX_OVERLAP_SECS} seconds")]
    InvalidOverlap,
    /// A rotation would leave more than [`MAX_PREVIOUS_SECRETS`] earlier secrets live.
    #[error("{MAX_PREVIOUS_SECRETS} earlier secrets are still accepted; revoke them before rotating again")]
    TooManySecrets,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for PartnerError {
    fn kind(&self) -> ErrorKind {
        match self {
            PartnerError::Auth(e) => e.kind(),
            PartnerError::Forbidden(_) => ErrorKind::Forbidden,
            PartnerError::NotFound(_) => ErrorKind::NotFound,
            PartnerError::InvalidOverlap => ErrorKind::Invalid,
            PartnerError::TooManySecrets => ErrorKind::Conflict,
            PartnerError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            PartnerError::Auth(e) => e.code(),
            PartnerError::Forbidden(_) => "forbidden",
            PartnerError::NotFound(_) => "partner_not_found",
            PartnerError::InvalidOverlap => "validation_failed",
            PartnerError::TooManySecrets => "too_many_partner_secrets",
            PartnerError::Store(e) => e.code(),
        }
    }
    fn field(&self) -> Option<&str> {
        match self {
            PartnerError::InvalidOverlap => Some("overlap_secs"),
            _ => None,
        }
    }
}

/// `{owner}:partner:{id}`.
pub fn partner_key(owner: &str, partner_id: &str) -> Key {
    Key::new(&[owner, "partner", partner_id])
}

/// `{owner}:partners`: the ids of every partner of scenario `owner` onboarded since the index exists (the console's
/// feed view lists them).
pub fn index_key(owner: &str) -> Key {
    Key::new(&[owner, "partners"])
}

/// `{owner}:partner:{id}:nonce:{hash}` — a used nonce (claim).
pub fn nonce_key(owner: &str, partner_id: &str, nonce: &str) -> Key {
    partner_key(owner, partner_id).child(&["nonce", &hash_key_part(nonce)])
}

/// Onboards a partner for `resource_id` and returns its credentials (the only time the secret is shown).
pub async fn onboard(
    store: &impl Store,
    owner: &str,
    kind: &str,
    resource_id: &str,
    now: Timestamp,
) -> Result<Credentials, PartnerError> {
    let creds = new_credentials(now)?;
    onboard_with(store, owner, kind, resource_id, &creds, now).await?;
    Ok(creds)
}

/// Fresh credentials: a new partner id and secret (minted before they are installed, e.g. when a registration is
/// proposed, so every run of the approved registration installs the same ones).
pub fn new_credentials(now: Timestamp) -> Result<Credentials, PartnerError> {
    let id_err = |e: crate::ids::IdError| StoreError::Backend(e.to_string());
    Ok(Credentials { partner_id: new_id("p", now.unix_ms()).map_err(id_err)?, partner_secret: new_secret()? })
}

/// Onboards a partner for `resource_id` with the given credentials; idempotent (a partner already recorded under
/// this id, a run repeated after a crash, is kept as it stands: it may have rotated its secret since).
pub async fn onboard_with(
    store: &impl Store,
    owner: &str,
    kind: &str,
    resource_id: &str,
    creds: &Credentials,
    now: Timestamp,
) -> Result<(), PartnerError> {
    let partner = Partner {
        v: 1,
        partner_id: creds.partner_id.clone(),
        secret: creds.partner_secret.clone(),
        kind: kind.to_owned(),
        resource_id: resource_id.to_owned(),
        created_at: now,
        previous_secrets: Vec::new(),
        rotated_in: Vec::new(),
    };
    update_json_new(store, &partner_key(owner, &creds.partner_id), |current: Option<&Partner>| {
        Ok::<_, PartnerError>(match current {
            Some(_) => Step::Keep(()),
            None => Step::Write(partner.clone(), ()),
        })
    })
    .await?;
    crate::kv::add_to_index(store, &index_key(owner), &creds.partner_id).await?;
    Ok(())
}

/// Where the registration of a partner resource stands for the run holding `creds` ([`claim_registration`]).
pub enum Registration<T> {
    /// Registered by this registration already (a retried run): its document.
    Done(T),
    /// This registration holds the id: go on (first run, or one resuming a run a crash cut short).
    Ours,
    /// Another registration holds the id.
    Taken,
}

/// Who holds a resource id's registration: `{claim}:by`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    v: u32,
    partner_id: String,
}

/// Claims resource id `claim` (whose document is `doc`) for the registration minting `creds`, so that a run cut
/// short after the claim is resumed by its retry instead of finding the id taken: the holder is recorded
/// (create-once, by the partner id the registration minted) before the id's claim (`claim`, which
/// `check_new`-style pre-checks read).
pub async fn claim_registration<T: serde::de::DeserializeOwned>(
    store: &impl Store,
    claim: &Key,
    doc: &Key,
    creds: &Credentials,
    partner_of: impl Fn(&T) -> &str,
) -> Result<Registration<T>, StoreError> {
    if let Some(done) = get_json::<T>(store, doc).await? {
        return Ok(if partner_of(&done) == creds.partner_id { Registration::Done(done) } else { Registration::Taken });
    }
    let holder = update_json_new(store, &claim.child(&["by"]), |current: Option<&Holder>| {
        Ok::<_, StoreError>(match current {
            Some(h) => Step::Keep(h.partner_id.clone()),
            None => Step::Write(Holder { v: 1, partner_id: creds.partner_id.clone() }, creds.partner_id.clone()),
        })
    })
    .await?;
    if holder != creds.partner_id {
        return Ok(Registration::Taken);
    }
    crate::kv::claim_new(store, claim).await?;
    Ok(Registration::Ours)
}

/// Rotations a partner record remembers ([`Partner::rotated_in`]).
pub const ROTATIONS_REMEMBERED: usize = 20;

/// 32 random bytes, hex.
fn new_secret() -> Result<String, StoreError> {
    let bytes = random_bytes::<32>().map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The key of partner `partner_id` of scenario `owner`, once the id is known to be one (else `NotFound`).
fn existing_key(owner: &str, partner_id: &str) -> Result<Key, PartnerError> {
    match Id::parse(partner_id) {
        Ok(_) => Ok(partner_key(owner, partner_id)),
        Err(_) => Err(PartnerError::NotFound(partner_id.chars().take(64).collect())),
    }
}

/// Gives partner `partner_id` of scenario `owner` a new secret (returned once); the current one stays valid for
/// `overlap_secs` more seconds (0 to [`MAX_OVERLAP_SECS`]; 0 ends it at once), and earlier secrets still in their
/// overlap keep theirs. Bad input writes nothing.
pub async fn rotate_secret(
    store: &impl Store,
    owner: &str,
    partner_id: &str,
    overlap_secs: i64,
    now: Timestamp,
) -> Result<Rotated, PartnerError> {
    rotate_secret_to(store, owner, partner_id, &new_secret()?, overlap_secs, now).await
}

/// Checks a rotation's input without writing: the overlap, and that partner `partner_id` of `owner` exists.
pub async fn check_rotation(
    store: &impl Store,
    owner: &str,
    partner_id: &str,
    overlap_secs: i64,
) -> Result<(), PartnerError> {
    if !(0..=MAX_OVERLAP_SECS).contains(&overlap_secs) {
        return Err(PartnerError::InvalidOverlap);
    }
    let key = existing_key(owner, partner_id)?;
    match get_json::<Partner>(store, &key).await? {
        Some(_) => Ok(()),
        None => Err(PartnerError::NotFound(partner_id.chars().take(64).collect())),
    }
}

/// [`rotate_secret`] to a given new secret (minted when the rotation was proposed); idempotent: a partner that
/// holds `secret` already (the rotation repeated after a crash) is kept as it stands.
pub async fn rotate_secret_to(
    store: &impl Store,
    owner: &str,
    partner_id: &str,
    secret: &str,
    overlap_secs: i64,
    now: Timestamp,
) -> Result<Rotated, PartnerError> {
    if !(0..=MAX_OVERLAP_SECS).contains(&overlap_secs) {
        return Err(PartnerError::InvalidOverlap);
    }
    let key = existing_key(owner, partner_id)?;
    let not_found = || PartnerError::NotFound(partner_id.chars().take(64).collect());
    let expires_at = now.plus_secs(overlap_secs);
    update_json(store, &key, |partner: Option<&Partner>| {
        let partner = partner.ok_or_else(not_found)?;
        let rotated = Rotated {
            partner_id: partner.partner_id.clone(),
            partner_secret: secret.to_owned(),
            previous_secret_expires_at: expires_at,
        };
        // Installed already: now, or before a later rotation replaced it (a retried run must not roll that back).
        let fingerprint = hash_key_part(secret);
        if partner.secret == secret || partner.rotated_in.contains(&fingerprint) {
            return Ok(Step::Keep(rotated));
        }
        let mut next = partner.clone();
        next.rotated_in.push(fingerprint);
        let excess = next.rotated_in.len().saturating_sub(ROTATIONS_REMEMBERED);
        next.rotated_in.drain(..excess);
        next.previous_secrets.retain(|p| p.expires_at > now);
        if overlap_secs > 0 {
            if next.previous_secrets.len() >= MAX_PREVIOUS_SECRETS {
                return Err(PartnerError::TooManySecrets);
            }
            next.previous_secrets.push(PreviousSecret { secret: partner.secret.clone(), expires_at });
        }
        next.secret = secret.to_owned();
        Ok(Step::Write(next, rotated))
    })
    .await
}

/// Ends the overlap of every earlier secret of partner `partner_id` at once; returns how many were still accepted.
pub async fn revoke_previous_secrets(
    store: &impl Store,
    owner: &str,
    partner_id: &str,
    now: Timestamp,
) -> Result<usize, PartnerError> {
    let key = existing_key(owner, partner_id)?;
    let not_found = || PartnerError::NotFound(partner_id.chars().take(64).collect());
    update_json(store, &key, |partner: Option<&Partner>| {
        let partner = partner.ok_or_else(not_found)?;
        if partner.previous_secrets.is_empty() {
            return Ok(Step::Keep(0));
        }
        let live = partner.previous_secrets.iter().filter(|p| p.expires_at > now).count();
        Ok(Step::Write(Partner { previous_secrets: Vec::new(), ..partner.clone() }, live))
    })
    .await
}

/// The headers of a signed request, as received (any may be missing).
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedHeaders<'a> {
    /// `X-Partner-Id`.
    pub partner_id: Option<&'a str>,
    /// `X-Timestamp`.
    pub timestamp: Option<&'a str>,
    /// `X-Nonce`.
    pub nonce: Option<&'a str>,
    /// `X-Signature`.
    pub signature: Option<&'a str>,
}

/// Verifies a signed partner request and returns the partner. The nonce is burned only after the signature
/// verified, so forged requests cannot exhaust a partner's nonces.
pub async fn authenticate(
    store: &impl Store,
    owner: &str,
    method: &str,
    path_and_query: &str,
    headers: SignedHeaders<'_>,
    body: &[u8],
    now: Timestamp,
) -> Result<Partner, PartnerError> {
    let missing = |h: &'static str| PartnerError::Auth(AuthError::MissingCredentials(h));
    let partner_id = headers.partner_id.ok_or_else(|| missing("X-Partner-Id"))?;
    let timestamp = headers.timestamp.ok_or_else(|| missing("X-Timestamp"))?;
    let nonce = headers.nonce.ok_or_else(|| missing("X-Nonce"))?;
    let signature = headers.signature.ok_or_else(|| missing("X-Signature"))?;
    let unknown = || PartnerError::Auth(AuthError::InvalidSignature("unknown partner or bad signature"));
    Id::parse(partner_id).map_err(|_| unknown())?;
    let partner: Partner = get_json(store, &partner_key(owner, partner_id)).await?.ok_or_else(unknown)?;
    let parts = PartnerHeaders { partner_id, timestamp, nonce, signature };
    let verify = |secret: &str| auth::verify_partner(secret, method, path_and_query, &parts, body, now.unix_secs());
    if let Err(refused) = verify(&partner.secret) {
        // Only a signature mismatch may be another secret's: a bad timestamp or nonce is bad whatever the key.
        let mismatch = matches!(refused, AuthError::InvalidSignature(_));
        let live = partner.previous_secrets.iter().filter(|p| p.expires_at > now);
        if !mismatch || !live.clone().any(|p| verify(&p.secret).is_ok()) {
            return Err(refused.into());
        }
    }
    if !claim_once(store, &nonce_key(owner, partner_id, nonce)).await? {
        return Err(AuthError::NonceReplayed.into());
    }
    Ok(partner)
}

impl Partner {
    /// Refuses unless this partner acts on `resource_id`.
    pub fn require(&self, resource_id: &str) -> Result<(), PartnerError> {
        if self.resource_id == resource_id {
            Ok(())
        } else {
            Err(PartnerError::Forbidden(resource_id.chars().take(64).collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{partner_canonical, sign_partner};
    use crate::kv::MemStore;

    fn now() -> Timestamp {
        Timestamp::from_unix_secs(1_795_000_000)
    }

    fn signed<'a>(creds: &'a Credentials, ts: &'a str, nonce: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            partner_id: Some(&creds.partner_id),
            timestamp: Some(ts),
            nonce: Some(nonce),
            signature: Some(sig),
        }
    }

    #[test]
    fn a_signed_request_is_accepted_once_per_nonce() {
        let store = MemStore::default();
        let creds = pollster::block_on(onboard(&store, "util", "biller", "w1", now())).expect("onboard");
        let ts = now().unix_secs().to_string();
        let body = br#"{"bills":[]}"#;
        let canonical = partner_canonical("PUT", "/api/utility/billers/w1/bills", &ts, "nonce-0001", body);
        let sig = sign_partner(&creds.partner_secret, &canonical);

        let ok = pollster::block_on(authenticate(
            &store,
            "util",
            "PUT",
            "/api/utility/billers/w1/bills",
            signed(&creds, &ts, "nonce-0001", &sig),
            body,
            now(),
        ));
        let replay = pollster::block_on(authenticate(
            &store,
            "util",
            "PUT",
            "/api/utility/billers/w1/bills",
            signed(&creds, &ts, "nonce-0001", &sig),
            body,
            now(),
        ));

        let partner = ok.expect("accepted");
        assert_eq!(partner.resource_id, "w1");
        assert!(partner.require("w1").is_ok());
        assert_eq!(partner.require("w2").map_err(|e| e.code()), Err("forbidden"));
        assert_eq!(replay.map_err(|e| e.code()), Err("nonce_replayed"));
    }

    #[test]
    fn forged_requests_do_not_burn_nonces() {
        let store = MemStore::default();
        let creds = pollster::block_on(onboard(&store, "util", "biller", "w1", now())).expect("onboard");
        let ts = now().unix_secs().to_string();
        let bad = "0".repeat(64);
        let r = pollster::block_on(authenticate(
            &store,
            "util",
            "PUT",
            "/x",
            signed(&creds, &ts, "nonce-0002", &bad),
            b"",
            now(),
        ));
        assert_eq!(r.map_err(|e| e.code()), Err("invalid_signature"));
        let sig = sign_partner(&creds.partner_secret, &partner_canonical("PUT", "/x", &ts, "nonce-0002", b""));
        let r = pollster::block_on(authenticate(
            &store,
            "util",
            "PUT",
            "/x",
            signed(&creds, &ts, "nonce-0002", &sig),
            b"",
            now(),
        ));
        assert!(r.is_ok());
        let missing =
            pollster::block_on(authenticate(&store, "util", "PUT", "/x", SignedHeaders::default(), b"", now()));
        assert_eq!(missing.map_err(|e| e.code()), Err("missing_credentials"));
    }

    /// A `GET /x` signed with `secret` at `at`, authenticated (with a fresh nonce each call).
    fn call(store: &MemStore, creds: &Credentials, secret: &str, at: Timestamp) -> Result<Partner, PartnerError> {
        static NONCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nonce = format!("nonce-{:08}", NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let ts = at.unix_secs().to_string();
        let sig = sign_partner(secret, &partner_canonical("GET", "/x", &ts, &nonce, b""));
        pollster::block_on(authenticate(store, "util", "GET", "/x", signed(creds, &ts, &nonce, &sig), b"", at))
    }

    #[test]
    fn a_rotated_secret_overlaps_with_the_old_one_until_the_overlap_ends() {
        // Arrange
        let store = MemStore::default();
        let creds = pollster::block_on(onboard(&store, "util", "biller", "w1", now())).expect("onboard");

        // Act
        let rotated =
            pollster::block_on(rotate_secret(&store, "util", &creds.partner_id, 3600, now())).expect("rotate");

        // Assert
        assert_eq!(rotated.partner_id, creds.partner_id);
        assert_ne!(rotated.partner_secret, creds.partner_secret);
        assert_eq!(rotated.previous_secret_expires_at, now().plus_secs(3600));
        assert!(call(&store, &creds, &creds.partner_secret, now()).is_ok());
        assert!(call(&store, &creds, &rotated.partner_secret, now()).is_ok());
        assert!(call(&store, &creds, &creds.partner_secret, now().plus_secs(3599)).is_ok());
        let late = call(&store, &creds, &creds.partner_secret, now().plus_secs(3600));
        assert_eq!(late.map_err(|e| e.code()), Err("invalid_signature"));
        assert!(call(&store, &creds, &rotated.partner_secret, now().plus_secs(3600)).is_ok());
    }

    #[test]
    fn previous_secrets_can_be_revoked_early_and_rotation_without_overlap_ends_the_old_secret_at_once() {
        let store = MemStore::default();
        let creds = pollster::block_on(onboard(&store, "util", "biller", "w1", now())).expect("onboard");
        let first = pollster::block_on(rotate_secret(&store, "util", &creds.partner_id, 86_400, now())).expect("1");

        let revoked = pollster::block_on(revoke_previous_secrets(&store, "util", &creds.partner_id, now()));

        assert_eq!(revoked, Ok(1));
        assert_eq!(call(&store, &creds, &creds.partner_secret, now()).map_err(|e| e.code()), Err("invalid_signature"));
        assert!(call(&store, &creds, &first.partner_secret, now()).is_ok());
        assert_eq!(pollster::block_on(revoke_previous_secrets(&store, "util", &creds.partner_id, now())), Ok(0));
        let second = pollster::block_on(rotate_secret(&store, "util", &creds.partner_id, 0, now())).expect("2");
        assert_eq!(call(&store, &creds, &first.partner_secret, now()).map_err(|e| e.code()), Err("invalid_signature"));
        assert!(call(&store, &creds, &second.partner_secret, now()).is_ok());
    }

    #[test]
    fn rotation_refuses_bad_overlaps_unknown_partners_and_a_fourth_live_secret_writing_nothing() {
        let store = MemStore::default();
        let creds = pollster::block_on(onboard(&store, "util", "biller", "w1", now())).expect("onboard");
        let id = creds.partner_id.as_str();
        let writes = store.writes();
        let rotate =
            |owner: &str, id: &str, overlap: i64| pollster::block_on(rotate_secret(&store, owner, id, overlap, now()));

        for overlap in [-1, MAX_OVERLAP_SECS + 1, i64::MIN, i64::MAX] {
            let err = rotate("util", id, overlap).expect_err("bad overlap");
            assert_eq!(
                (err.kind(), err.code(), err.field()),
                (ErrorKind::Invalid, "validation_failed", Some("overlap_secs"))
            );
        }
        for (owner, id) in [("util", "p_nobody"), ("prop", id), ("util", "no/such:id"), ("util", "")] {
            let err = rotate(owner, id, 60).expect_err("unknown");
            assert_eq!((err.kind(), err.code()), (ErrorKind::NotFound, "partner_not_found"), "{owner} {id}");
        }
        let revoke = pollster::block_on(revoke_previous_secrets(&store, "util", "p_nobody", now()));
        assert_eq!(revoke.map_err(|e| e.code()), Err("partner_not_found"));
        assert_eq!(store.writes(), writes, "refusals write nothing");

        for _ in 0..MAX_PREVIOUS_SECRETS {
            rotate("util", id, MAX_OVERLAP_SECS).expect("rotate");
        }
        let err = rotate("util", id, 60).expect_err("a fourth live secret");
        assert_eq!((err.kind(), err.code()), (ErrorKind::Conflict, "too_many_partner_secrets"));
        // Once they expire, rotation goes on.
        let later = now().plus_secs(MAX_OVERLAP_SECS);
        assert!(pollster::block_on(rotate_secret(&store, "util", id, 60, later)).is_ok());
    }

    #[test]
    fn a_registration_cut_short_after_its_claim_is_resumed_by_its_own_retry_only() {
        #[derive(Serialize, Deserialize)]
        struct Thing {
            partner_id: String,
        }
        let store = MemStore::default();
        let (claim, doc) = (Key::new(&["util", "biller", "b1", "claim"]), Key::new(&["util", "biller", "b1"]));
        let ours = new_credentials(now()).expect("creds");
        let theirs = Credentials { partner_id: "p_other".into(), partner_secret: "s".into() };
        let claimed = |creds: &Credentials| {
            pollster::block_on(claim_registration(&store, &claim, &doc, creds, |t: &Thing| &t.partner_id))
                .expect("claim")
        };
        assert!(matches!(claimed(&ours), Registration::Ours));
        // The run stopped here (nothing else written); its retry resumes, another registration of the id cannot.
        assert!(matches!(claimed(&ours), Registration::Ours), "the retry resumes");
        assert!(matches!(claimed(&theirs), Registration::Taken));
        pollster::block_on(crate::kv::put_json(&store, &doc, &Thing { partner_id: ours.partner_id.clone() }))
            .expect("doc");
        assert!(matches!(claimed(&ours), Registration::Done(_)), "a completed run answers its document");
        assert!(matches!(claimed(&theirs), Registration::Taken));
    }

    #[test]
    fn a_rotation_run_again_after_a_later_one_changes_nothing() {
        let store = MemStore::default();
        let creds = pollster::block_on(onboard(&store, "util", "biller", "b1", now())).expect("onboard");
        let first = pollster::block_on(rotate_secret_to(&store, "util", &creds.partner_id, "s1", 3600, now()));
        assert_eq!(first.map(|r| r.partner_secret), Ok("s1".to_owned()));
        pollster::block_on(rotate_secret_to(&store, "util", &creds.partner_id, "s2", 3600, now())).expect("second");
        // The first rotation's run again (its approval retried): the partner keeps s2.
        pollster::block_on(rotate_secret_to(&store, "util", &creds.partner_id, "s1", 3600, now())).expect("again");
        let partner: Partner = pollster::block_on(get_json(&store, &partner_key("util", &creds.partner_id)))
            .expect("read")
            .expect("partner");
        assert_eq!(partner.secret, "s2");
    }
}
