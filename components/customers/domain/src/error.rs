//! Errors of the customers component, by business outcome.

use scenefin_core::auth::AuthError;
use scenefin_core::events::EventError;
use scenefin_core::kv::StoreError;
use scenefin_core::problem::{ErrorKind, Problem};

/// Everything a customers operation can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    /// A credential failed (assertion, session token, operator token).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The assertion names a subject the bank never issues (empty, "null", all zeros...).
    #[error("the identity's subject {0:?} is not a real account identifier")]
    BlockedSubject(String),
    /// The phone number in the assertion is not a mainland mobile number.
    #[error("phone must be an 11-digit mainland mobile number")]
    InvalidPhone,
    /// The customer already has the maximum number of identities for this provider.
    #[error("customer already has {limit} {provider} identities linked")]
    IdentityLimit {
        /// Provider.
        provider: String,
        /// The limit.
        limit: usize,
    },
    /// Input failed validation.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The channel code does not exist.
    #[error("channel code {0:?} does not exist")]
    UnknownChannel(String),
    /// The channel code already exists.
    #[error("channel code {0:?} already exists")]
    ChannelExists(String),
    /// No such customer (or not visible to the caller).
    #[error("no such customer")]
    NotFound,
    /// The customer's personal information was erased at their request: the session no longer names anyone.
    #[error("this customer's personal information was erased at their request; sign in again to start afresh")]
    Erased,
    /// An operator unmasking personal information gave no usable reason.
    #[error("reason: say why the value is needed (5 to 200 characters, logged and shown to the customer)")]
    ReasonRequired,
    /// The customer has no such value to unmask.
    #[error("the customer has no {0} on record")]
    NothingToUnmask(&'static str),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<EventError> for CustomerError {
    fn from(e: EventError) -> Self {
        match e {
            EventError::UnknownCustomer(_) => CustomerError::NotFound,
            EventError::Store(e) => CustomerError::Store(e),
        }
    }
}

impl Problem for CustomerError {
    fn kind(&self) -> ErrorKind {
        match self {
            CustomerError::Auth(e) => e.kind(),
            CustomerError::BlockedSubject(_) => ErrorKind::Unauthenticated,
            CustomerError::InvalidPhone | CustomerError::Invalid { .. } => ErrorKind::Invalid,
            CustomerError::IdentityLimit { .. } | CustomerError::ChannelExists(_) => ErrorKind::Conflict,
            CustomerError::UnknownChannel(_) => ErrorKind::Invalid,
            CustomerError::NotFound | CustomerError::NothingToUnmask(_) => ErrorKind::NotFound,
            CustomerError::Erased => ErrorKind::Unauthenticated,
            CustomerError::ReasonRequired => ErrorKind::Invalid,
            CustomerError::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CustomerError::Auth(e) => e.code(),
            CustomerError::BlockedSubject(_) => "blocked_subject",
            CustomerError::InvalidPhone => "invalid_assertion",
            CustomerError::IdentityLimit { .. } => "identity_limit_reached",
            CustomerError::Invalid { .. } => "validation_failed",
            CustomerError::UnknownChannel(_) => "unknown_channel_code",
            CustomerError::ChannelExists(_) => "channel_code_exists",
            CustomerError::NotFound => "customer_not_found",
            CustomerError::Erased => "customer_erased",
            CustomerError::ReasonRequired => "reason_required",
            CustomerError::NothingToUnmask(_) => "nothing_to_unmask",
            CustomerError::Store(e) => e.code(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            CustomerError::Invalid { field, .. } => Some(field),
            CustomerError::UnknownChannel(_) => Some("channel_code"),
            CustomerError::ReasonRequired => Some("reason"),
            _ => None,
        }
    }
}
