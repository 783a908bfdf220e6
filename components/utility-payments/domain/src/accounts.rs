//! Household accounts a customer binds (at most [`MAX_BINDINGS`]), with the holder name shown masked so the
//! customer can confirm it is theirs without learning anyone else's name.

use scenefin_core::clock::Timestamp;
use scenefin_core::customers::{LifecycleRules, mask_name};
use scenefin_core::events::{self, Event, EventKind};
use scenefin_core::ids::hash_key_part;
use scenefin_core::kv::{self, Step, Store, claim_once, get_json};
use serde::{Deserialize, Serialize};

use crate::bills::{self, BillStatus};
use crate::{SCENARIO, UtilityError, billers, keys};

/// Most accounts one customer binds.
pub const MAX_BINDINGS: usize = 20;

/// A bound account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Biller.
    pub biller_id: String,
    /// Account number.
    pub account_no: String,
    /// The customer's name for it.
    #[serde(default)]
    pub alias: Option<String>,
    /// Holder name, masked.
    pub holder_masked: String,
    /// When bound.
    pub bound_at: Timestamp,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Bindings {
    v: u32,
    accounts: Vec<Binding>,
}

/// A bound account with what is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoundAccount {
    /// The binding.
    #[serde(flatten)]
    pub binding: Binding,
    /// Biller name.
    pub biller_name: String,
    /// Open bills.
    pub open_bills: usize,
    /// Total due.
    pub outstanding_fen: i64,
}

/// Binds an account: checks the rule and that the biller knows the account; idempotent.
pub async fn bind(
    store: &impl Store,
    customer_id: &str,
    biller_id: &str,
    account_no: &str,
    alias: Option<String>,
    rules: &LifecycleRules,
    now: Timestamp,
) -> Result<Binding, UtilityError> {
    let biller = billers::get(store, biller_id).await?;
    let account = bills::account(store, &biller, account_no).await?;
    if let Some(a) = &alias
        && (a.trim().is_empty() || a.chars().count() > 32 || a.chars().any(char::is_control))
    {
        return Err(UtilityError::invalid("alias", "1 to 32 characters"));
    }
    let binding = Binding {
        biller_id: biller.id.clone(),
        account_no: account.account_no.clone(),
        alias: alias.map(|a| a.trim().to_owned()),
        holder_masked: mask_name(&account.holder_name),
        bound_at: now,
    };
    let bound = kv::update_json(store, &keys::bindings(customer_id), |current: Option<&Bindings>| {
        let mut b = current.cloned().unwrap_or(Bindings { v: 1, accounts: Vec::new() });
        if let Some(existing) =
            b.accounts.iter().find(|x| x.biller_id == binding.biller_id && x.account_no == binding.account_no)
        {
            return Ok(Step::Keep(existing.clone()));
        }
        if b.accounts.len() >= MAX_BINDINGS {
            return Err(UtilityError::TooManyAccounts(MAX_BINDINGS));
        }
        b.accounts.push(binding.clone());
        Ok(Step::Write(b, binding.clone()))
    })
    .await?;
    // Counted once per customer and account, however often it is unbound and bound again.
    if claim_once(store, &keys::first_binding(customer_id, &biller.id, account_no)).await? {
        store.increment(&keys::stat(&biller.id, "accounts_bound"), 1).await?;
    }
    let event = Event {
        id: format!("bound:{customer_id}:{}:{}", biller.id, hash_key_part(account_no)),
        customer_id: customer_id.to_owned(),
        kind: EventKind::BoundAccount,
        scenario: SCENARIO.into(),
        at: now,
        amount_fen: None,
        bank_card: false,
        tags: vec![],
    };
    events::record(store, &event, rules).await?;
    Ok(bound)
}

/// The customer's bound accounts with what is due on each.
pub async fn list(store: &impl Store, customer_id: &str) -> Result<Vec<BoundAccount>, UtilityError> {
    let b: Bindings = get_json(store, &keys::bindings(customer_id)).await?.unwrap_or_default();
    let mut out = Vec::with_capacity(b.accounts.len());
    for binding in b.accounts {
        let biller = billers::get(store, &binding.biller_id).await?;
        let open = match bills::account(store, &biller, &binding.account_no).await {
            Ok(acct) => {
                bills::bills_of(store, &acct).await?.into_iter().filter(|x| x.status == BillStatus::Open).collect()
            }
            Err(UtilityError::NoSuchAccount) => Vec::new(),
            Err(e) => return Err(e),
        };
        out.push(BoundAccount {
            biller_name: biller.name.clone(),
            open_bills: open.len(),
            outstanding_fen: open.iter().map(bills::Bill::due_fen).sum(),
            binding,
        });
    }
    Ok(out)
}

/// Unbinds an account.
pub async fn unbind(
    store: &impl Store,
    customer_id: &str,
    biller_id: &str,
    account_no: &str,
) -> Result<(), UtilityError> {
    kv::update_json(store, &keys::bindings(customer_id), |current: Option<&Bindings>| {
        let Some(current) = current else { return Err(UtilityError::NotBound) };
        let mut b = current.clone();
        let before = b.accounts.len();
        b.accounts.retain(|x| !(x.biller_id == biller_id && x.account_no == account_no));
        if b.accounts.len() == before {
            return Err(UtilityError::NotBound);
        }
        Ok(Step::Write(b, ()))
    })
    .await
}
