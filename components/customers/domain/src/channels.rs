//! Channel codes: short codes (≤16 `[A-Za-z0-9]`, fits a mini-program QR scene) that resolve to where a customer
//! came from. Written once by an operator; resolving one counts a `visited` funnel step.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::Touch;
use scenefin_core::events;
use scenefin_core::ids::Id;
use scenefin_core::kv::{self, Key, Store, put_json};
use serde::{Deserialize, Serialize};

use crate::CustomerError;
use crate::keys;

/// Channel kinds.
pub const CHANNELS: &[&str] = &["branch", "staff", "poster", "wechat_oa", "app", "partner"];
/// Scenarios a code may point at.
pub const SCENARIOS: &[&str] = &["utility", "property", "campus", "coupons", "referrals"];
/// Longest code.
pub const MAX_CODE_LEN: usize = 16;

/// A channel code document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCode {
    /// Schema version.
    pub v: u32,
    /// The code.
    pub code: String,
    /// Channel kind.
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
    /// Created.
    pub created_at: Timestamp,
}

impl ChannelCode {
    /// The touch this code gives a customer at `at`.
    pub fn touch(&self, at: Timestamp) -> Touch {
        Touch {
            code: self.code.clone(),
            channel: self.channel.clone(),
            branch_id: self.branch_id.clone(),
            staff_id: self.staff_id.clone(),
            campaign_id: self.campaign_id.clone(),
            scenario: self.scenario.clone(),
            at,
        }
    }
}

/// What an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct NewChannel {
    /// The code, or `None` to generate one.
    pub code: Option<String>,
    /// Channel kind.
    pub channel: String,
    /// Branch.
    pub branch_id: Option<String>,
    /// Staff member.
    pub staff_id: Option<String>,
    /// Campaign.
    pub campaign_id: Option<String>,
    /// Scenario.
    pub scenario: Option<String>,
}

/// Checks a code's shape.
pub fn parse_code(code: &str) -> Result<&str, CustomerError> {
    if code.is_empty() || code.len() > MAX_CODE_LEN || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CustomerError::Invalid {
            field: "code",
            message: format!("1 to {MAX_CODE_LEN} letters and digits"),
        });
    }
    Ok(code)
}

fn optional_id(field: &'static str, value: Option<String>) -> Result<Option<String>, CustomerError> {
    value.map(|v| Id::parse(&v).map(|id| id.as_str().to_owned())).transpose().map_err(|_| CustomerError::Invalid {
        field,
        message: "1 to 64 letters, digits, underscores or hyphens".into(),
    })
}

/// Validates the request into a document (pure).
pub fn decide_create(input: NewChannel, generated: &str, now: Timestamp) -> Result<ChannelCode, CustomerError> {
    let code = match input.code {
        Some(code) => parse_code(&code)?.to_owned(),
        None => generated.to_owned(),
    };
    if !CHANNELS.contains(&input.channel.as_str()) {
        return Err(CustomerError::Invalid { field: "channel", message: format!("one of {}", CHANNELS.join(", ")) });
    }
    if let Some(s) = &input.scenario
        && !SCENARIOS.contains(&s.as_str())
    {
        return Err(CustomerError::Invalid { field: "scenario", message: format!("one of {}", SCENARIOS.join(", ")) });
    }
    Ok(ChannelCode {
        v: 1,
        code,
        channel: input.channel,
        branch_id: optional_id("branch_id", input.branch_id)?,
        staff_id: optional_id("staff_id", input.staff_id)?,
        campaign_id: optional_id("campaign_id", input.campaign_id)?,
        scenario: input.scenario,
        created_at: now,
    })
}

/// A code from random bytes: 8 characters of upper-case letters and digits without look-alikes.
pub fn generated_code(random: &[u8; 8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

/// Creates a code once: the single winner of the claim writes it; a second create is `channel_code_exists`.
pub async fn create(
    store: &impl Store,
    input: NewChannel,
    generated: &str,
    now: Timestamp,
) -> Result<ChannelCode, CustomerError> {
    let doc = decide_create(input, generated, now)?;
    // A code is claimed once, ever: a second create reports it, even if the first creator crashed before its
    // write (an operator's code must never change silently; pick another code).
    if !kv::claim_new(store, &keys::channel_claim(&doc.code)).await? {
        return Err(CustomerError::ChannelExists(doc.code));
    }
    // Index first: readers skip listed codes without a document, so a crash in between hides nothing.
    kv::add_to_index(store, &keys::channel_index(), &doc.code).await?;
    put_json(store, &keys::channel(&doc.code), &doc).await?;
    Ok(doc)
}

/// Looks a code up without counting.
pub async fn find(store: &impl Store, code: &str) -> Result<ChannelCode, CustomerError> {
    let key = key_of(code)?;
    decode(code, &key, store.get(&key).await?.as_deref())
}

/// The key of code `code`'s document; `unknown_channel` when it is not shaped like a code.
pub fn key_of(code: &str) -> Result<Key, CustomerError> {
    let code = parse_code(code).map_err(|_| CustomerError::UnknownChannel(code.chars().take(32).collect()))?;
    Ok(keys::channel(code))
}

/// Code `code`'s document from what its key ([`key_of`]) holds: `unknown_channel` when absent.
pub fn decode(code: &str, key: &Key, raw: Option<&[u8]>) -> Result<ChannelCode, CustomerError> {
    kv::decode_doc(key, raw)?.ok_or_else(|| CustomerError::UnknownChannel(code.to_owned()))
}

/// Every channel code, in the order created (the index, then one batch read; codes indexed but never written are
/// skipped).
pub async fn all(store: &impl Store) -> Result<Vec<ChannelCode>, CustomerError> {
    Ok(kv::read_indexed(store, &keys::channel_index(), keys::channel).await?)
}

/// Resolves a code for a visitor and counts the visit.
pub async fn resolve(store: &impl Store, code: &str, now: Timestamp) -> Result<ChannelCode, CustomerError> {
    let doc = find(store, code).await?;
    events::count_visit(store, &doc.touch(now)).await?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scenefin_core::kv::MemStore;

    fn now() -> Timestamp {
        Timestamp::from_unix_secs(1_795_000_000)
    }

    fn branch(code: &str) -> NewChannel {
        NewChannel {
            code: Some(code.into()),
            channel: "branch".into(),
            branch_id: Some("b01".into()),
            ..Default::default()
        }
    }

    #[test]
    fn codes_are_created_once_and_resolve() {
        let store = MemStore::default();
        let created = pollster::block_on(create(&store, branch("BR01"), "GEN", now())).expect("create");
        assert_eq!(created.branch_id.as_deref(), Some("b01"));
        let again = pollster::block_on(create(&store, branch("BR01"), "GEN", now()));
        assert_eq!(again, Err(CustomerError::ChannelExists("BR01".into())));
        let resolved = pollster::block_on(resolve(&store, "BR01", now())).expect("resolve");
        assert_eq!(resolved, created);
        assert_eq!(pollster::block_on(all(&store)), Ok(vec![created.clone()]));
        let visits = pollster::block_on(events::funnel_count(
            &store,
            now().shanghai_day(),
            events::FunnelStep::Visited,
            "ch:BR01",
        ));
        assert_eq!(visits, Ok(1));
    }

    #[test]
    fn bad_codes_and_fields_are_rejected_before_anything_is_written() {
        let store = MemStore::default();
        for (input, field) in [
            (branch("toolongcode123456"), "code"),
            (branch("has space"), "code"),
            (NewChannel { channel: "tv".into(), ..branch("OK1") }, "channel"),
            (NewChannel { scenario: Some("casino".into()), ..branch("OK2") }, "scenario"),
            (NewChannel { staff_id: Some("a:b".into()), ..branch("OK3") }, "staff_id"),
        ] {
            let err = pollster::block_on(create(&store, input, "GEN", now())).expect_err("invalid");
            assert_eq!(scenefin_core::Problem::field(&err), Some(field));
        }
        assert!(store.keys().is_empty());
        assert!(matches!(pollster::block_on(resolve(&store, "NOPE", now())), Err(CustomerError::UnknownChannel(_))));
    }

    #[test]
    fn generated_codes_fit_the_rules() {
        let code = generated_code(&[0, 1, 2, 250, 251, 252, 253, 255]);
        assert_eq!(code.len(), 8);
        assert!(parse_code(&code).is_ok());
    }
}

/// Hostile channel codes, property-based.
#[cfg(test)]
mod hostile_tests {
    use proptest::prelude::*;
    use scenefin_core::kv::MemStore;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn codes_parse_exactly_the_short_alphanumeric_strings(code in prop_oneof![
            ".{0,24}".boxed(),
            "[A-Za-z0-9:/%._-]{0,20}".boxed(),
        ]) {
            let ok = !code.is_empty() && code.len() <= MAX_CODE_LEN && code.bytes().all(|b| b.is_ascii_alphanumeric());
            prop_assert_eq!(parse_code(&code).is_ok(), ok);
            if ok {
                prop_assert_eq!(parse_code(&code), Ok(code.as_str()));
            }
        }

        #[test]
        fn unknown_or_malformed_codes_resolve_to_a_refusal_and_write_nothing(code in ".{0,40}") {
            let store = MemStore::default();
            prop_assert!(pollster::block_on(find(&store, &code)).is_err());
            let input = NewChannel { code: Some(code.clone()), channel: "branch".into(), ..Default::default() };
            let created = pollster::block_on(create(&store, input, "GEN", Timestamp::from_unix_secs(1_795_000_000)));
            prop_assert_eq!(created.is_ok(), parse_code(&code).is_ok());
            if created.is_err() {
                prop_assert!(store.keys().is_empty());
            }
        }

        #[test]
        fn generated_codes_always_parse(random in any::<[u8; 8]>()) {
            let code = generated_code(&random);
            prop_assert_eq!(parse_code(&code), Ok(code.as_str()));
        }
    }
}
