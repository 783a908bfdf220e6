//! Referral codes: one per customer and program, short and unambiguous (QR- and voice-friendly).

use scenefin_core::ids::random_bytes;
use scenefin_core::kv::{self, Step, Store};
use scenefin_core::referrals::{self, Code};

use crate::{ReferralError, programs};

/// Code characters: no `0 O 1 I L`.
const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Code length: 31^8 ≈ 8.5 × 10^11 codes.
const LEN: usize = 8;

fn new_code() -> Result<String, ReferralError> {
    let bytes = random_bytes::<LEN>().map_err(|e| ReferralError::invalid("code", e.to_string()))?;
    Ok(bytes.iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect())
}

/// The customer's code for the program, created on first ask; `true` when created by this call.
pub async fn get_or_create(
    store: &impl Store,
    program_id: &str,
    customer_id: &str,
) -> Result<(Code, bool), ReferralError> {
    let program = programs::get(store, program_id).await?;
    let own = referrals::own_code_key(&program.id, customer_id);
    if let Some(existing) = kv::get_json::<Code>(store, &own).await? {
        return Ok((existing, false));
    }
    // Claim a fresh code text first (write-once), then make it the customer's; a racing request for the same
    // customer may have won, in which case ours stays an unused code.
    let mut code = None;
    for _ in 0..8 {
        let candidate =
            Code { v: 1, code: new_code()?, program_id: program.id.clone(), referrer_id: customer_id.to_owned() };
        if referrals::put_code(store, &candidate).await? {
            code = Some(candidate);
            break;
        }
    }
    let code = code.ok_or_else(|| ReferralError::invalid("code", "could not find a free code; try again"))?;
    let (stored, created) = kv::update_json(store, &own, |doc: Option<&Code>| match doc {
        Some(existing) => Ok::<_, ReferralError>(Step::Keep((existing.clone(), false))),
        None => Ok(Step::Write(code.clone(), (code.clone(), true))),
    })
    .await?;
    Ok((stored, created))
}

/// A customer attaches a friend's code after registering (within 7 days). A rejected referral is recorded and
/// reported as [`ReferralError::Rejected`] with its reason.
pub async fn attach(
    store: &impl Store,
    customer_id: &str,
    code: &str,
    now: scenefin_core::clock::Timestamp,
) -> Result<referrals::Referral, ReferralError> {
    let customer = scenefin_core::customers::lookup(store, customer_id)
        .await?
        .ok_or_else(|| ReferralError::invalid("customer", "unknown customer"))?;
    let referral = referrals::attach(store, &customer, code, false, now).await?;
    match (referral.status, referral.reason.as_deref()) {
        (referrals::Status::Rejected, Some(reason)) => Err(ReferralError::Rejected(reason_code(reason))),
        _ => Ok(referral),
    }
}

/// The static code of a recorded rejection reason.
fn reason_code(reason: &str) -> &'static str {
    crate::reports::REASONS.iter().copied().find(|r| *r == reason).unwrap_or("referral_rejected")
}
