//! Personal information at rest (PIPL): what a store dump must not reveal.
//!
//! - **Lookups** (phone index, identity index) use a keyed hash: HMAC-SHA256 under a key derived from variable
//!   `pii_secret`. An 11-digit phone number has about 10^10 values, so an unkeyed hash of one is reversed by trying
//!   them all; a keyed one is not, without the secret. Records written before keyed hashes (plain SHA-256) and
//!   records under the previous key during a rotation (variable `pii_secret_previous`) are still found:
//!   [`PiiKeys::lookups`] lists every hash a value may be stored under, newest first, and a login that finds one of
//!   the older ones moves the record to the newest.
//! - **Values an authorised person must read again** (a customer's own phone number in their export, an operator
//!   unmasking with a logged reason) are sealed with ChaCha20-Poly1305 under another key derived from the same
//!   secret, bound to their context (customer and field) so a sealed value copied into another record does not
//!   open. The sealed form names its key (`s1.{key id}.{base64url(nonce ‖ ciphertext)}`), so values sealed under
//!   the previous key still open during a rotation.
//! - Everything shown is masked (`customers::mask_phone`, `mask_name`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::auth::{hex, hmac_sha256};

/// The keys derived from one secret.
#[derive(Clone)]
struct Derived {
    lookup: [u8; 32],
    seal: [u8; 32],
    id: String,
}

impl Derived {
    fn of(secret: &[u8]) -> Self {
        let seal = hmac_sha256(secret, b"scenefin pii seal v1");
        Self {
            lookup: hmac_sha256(secret, b"scenefin pii lookup v1"),
            id: hex(&hmac_sha256(&seal, b"key id")[..4]),
            seal,
        }
    }

    fn lookup(&self, value: &str) -> String {
        let mut h = hex(&hmac_sha256(&self.lookup, value.as_bytes()));
        h.truncate(32);
        h
    }
}

/// The current personal-information key and, during a rotation, the previous one.
#[derive(Clone)]
pub struct PiiKeys {
    current: Derived,
    previous: Option<Derived>,
}

impl PiiKeys {
    /// Keys from `pii_secret` and, when rotating, `pii_secret_previous` (empty means none).
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Self {
        Self { current: Derived::of(current), previous: previous.filter(|p| !p.is_empty()).map(Derived::of) }
    }

    /// The keyed hash `value` is indexed under now (32 hex characters, a valid key part).
    pub fn lookup(&self, value: &str) -> String {
        self.current.lookup(value)
    }

    /// Every hash `value` may be indexed under, newest first: the current key's, the previous key's, and the
    /// unkeyed SHA-256 prefix of records written before keyed hashes.
    pub fn lookups(&self, value: &str) -> Vec<String> {
        let mut all = vec![self.current.lookup(value)];
        all.extend(self.previous.as_ref().map(|p| p.lookup(value)));
        all.push(crate::ids::hash_key_part(value));
        all.dedup();
        all
    }

    /// `value` sealed under the current key for `context` (e.g. `c_123:phone`), with a fresh random nonce.
    pub fn seal(&self, context: &str, value: &str, nonce: [u8; 12]) -> String {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.current.seal));
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: context.as_bytes() })
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("s1.{}.{}", self.current.id, URL_SAFE_NO_PAD.encode(out))
    }

    /// The value `sealed` holds, if it was sealed for `context` under the current or the previous key.
    pub fn open(&self, context: &str, sealed: &str) -> Option<String> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("s1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else { return None };
        let key = [Some(&self.current), self.previous.as_ref()].into_iter().flatten().find(|k| k.id == id)?;
        let raw = URL_SAFE_NO_PAD.decode(body).ok()?;
        if raw.len() < 12 + 16 {
            return None;
        }
        let (nonce, ciphertext) = raw.split_at(12);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.seal));
        let plain =
            cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: context.as_bytes() }).ok()?;
        String::from_utf8(plain).ok()
    }

    /// Whether `sealed` is under the current key (a value under the previous one is sealed again when its record
    /// is next written).
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) == Some(self.current.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_keyed_and_list_older_forms() {
        let keys = PiiKeys::new(b"secret-a", None);
        let h = keys.lookup("13812345678");
        assert_eq!(h.len(), 32);
        assert_ne!(h, crate::ids::hash_key_part("13812345678"), "not the unkeyed hash");
        assert_ne!(h, PiiKeys::new(b"secret-b", None).lookup("13812345678"), "depends on the secret");
        assert_eq!(keys.lookups("13812345678"), vec![h.clone(), crate::ids::hash_key_part("13812345678")]);
        let rotated = PiiKeys::new(b"secret-b", Some(b"secret-a"));
        assert_eq!(rotated.lookups("13812345678")[1], h, "the previous key's hash is still looked up");
    }

    #[test]
    fn sealed_values_open_only_in_their_context_and_under_known_keys() {
        let keys = PiiKeys::new(b"secret-a", None);
        let sealed = keys.seal("c_1:phone", "13812345678", [7; 12]);
        assert!(!sealed.contains("13812345678"));
        assert_eq!(keys.open("c_1:phone", &sealed).as_deref(), Some("13812345678"));
        assert_eq!(keys.open("c_2:phone", &sealed), None, "bound to its customer");
        assert_eq!(PiiKeys::new(b"secret-b", None).open("c_1:phone", &sealed), None, "another key");
        let rotated = PiiKeys::new(b"secret-b", Some(b"secret-a"));
        assert_eq!(rotated.open("c_1:phone", &sealed).as_deref(), Some("13812345678"), "the previous key opens");
        assert!(!rotated.is_current(&sealed));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(keys.open("c_1:phone", &tampered), None, "tampering is detected");
        assert_eq!(keys.open("c_1:phone", "s1.x.y"), None);
    }
}
