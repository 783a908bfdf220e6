//! Keys owned by the customers component (`cust:`). The profile key itself lives in `scenefin_core::customers`,
//! because every component reads it.

use scenefin_core::kv::Key;

/// `cust:identity:{provider}:{hash(subject)}` → `{customer_id}`: One ID's index.
pub fn identity(provider: &str, subject_hash: &str) -> Key {
    Key::new(&["cust", "identity", provider, subject_hash])
}

/// `cust:phone:{hash(phone)}` → `{customer_id}`: links identities that share a verified phone.
pub fn phone(phone_hash: &str) -> Key {
    Key::new(&["cust", "phone", phone_hash])
}

/// `cust:channel:{code}` → channel code document (write-once).
pub fn channel(code: &str) -> Key {
    Key::new(&["cust", "channel", code])
}

/// `cust:channel:{code}:init` → claim counter for creating the code.
pub fn channel_claim(code: &str) -> Key {
    channel(code).child(&["claim"])
}

/// `cust:channels:idx` → index document listing codes (for operators).
pub fn channel_index() -> Key {
    Key::new(&["cust", "channels", "idx"])
}
