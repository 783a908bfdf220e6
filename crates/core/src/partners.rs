//! Partners (billers, property companies, schools, merchants): credentials issued once at onboarding, and the
//! verification of their signed requests (HMAC headers from `auth`, plus nonce replay protection in the store).
//!
//! Partner documents live under the owning scenario's prefix (`util:partner:{id}`), because a partner acts only on
//! that scenario's resource (`resource_id`: its biller, community, school or merchant). The secret is stored as
//! issued: HMAC verification needs it (see the notes on encrypting it at rest).

use serde::{Deserialize, Serialize};

use crate::auth::{self, AuthError, PartnerHeaders};
use crate::clock::Timestamp;
use crate::ids::{Id, hash_key_part, new_id, random_bytes};
use crate::kv::{Key, Store, StoreError, claim_once, get_json, put_json};
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
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Problem for PartnerError {
    fn kind(&self) -> ErrorKind {
        match self {
            PartnerError::Auth(e) => e.kind(),
            PartnerError::Forbidden(_) => ErrorKind::Forbidden,
            PartnerError::Store(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            PartnerError::Auth(e) => e.code(),
            PartnerError::Forbidden(_) => "forbidden",
            PartnerError::Store(e) => e.code(),
        }
    }
}

/// `{owner}:partner:{id}`.
pub fn partner_key(owner: &str, partner_id: &str) -> Key {
    Key::new(&[owner, "partner", partner_id])
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
    let id_err = |e: crate::ids::IdError| StoreError::Backend(e.to_string());
    let partner_id = new_id("p", now.unix_ms()).map_err(id_err)?;
    let secret: String = random_bytes::<32>().map_err(id_err)?.iter().map(|b| format!("{b:02x}")).collect();
    let partner = Partner {
        v: 1,
        partner_id: partner_id.clone(),
        secret: secret.clone(),
        kind: kind.to_owned(),
        resource_id: resource_id.to_owned(),
        created_at: now,
    };
    // A fresh random id: nobody else can be writing it.
    put_json(store, &partner_key(owner, &partner_id), &partner).await?;
    Ok(Credentials { partner_id, partner_secret: secret })
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
    auth::verify_partner(&partner.secret, method, path_and_query, &parts, body, now.unix_secs())?;
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
}
