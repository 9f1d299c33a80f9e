//! Registry changes as the admin API makes them: each one a read-modify-write
//! of one record under the rules of `model`. Secrets are generated here,
//! returned once to the caller and stored only as a hash.

use std::time::Duration;

use tollgate_shared::config::Scope;

use super::jwt::now_secs;
use super::model::{
    ClientPatch, ClientRecord, Invalid, NewClient, NewTenant, TenantPatch, TenantRecord,
};
use super::registry::{Kind, Registry};
use super::secret;
use crate::error::ApiError;

/// A secret shown once: at creation and at rotation.
pub struct Shown<T> {
    pub record: T,
    pub secret: String,
}

fn refused(i: Invalid) -> ApiError {
    ApiError::invalid_param(i.param, i.message)
}

fn no_tenant(id: &str) -> ApiError {
    ApiError::ResourceNotFound(format!("no tenant `{id}`"))
}

fn no_client(id: &str) -> ApiError {
    ApiError::ResourceNotFound(format!("no client `{id}`"))
}

/// How long an admin change waits for an argon2 slot.
const HASHING_PATIENCE: Duration = Duration::from_secs(5);

/// argon2 is slow on purpose: off the async executor, in one of the
/// registry's slots (it shares them with the token endpoint).
async fn hash(reg: &Registry, secret: String) -> Result<String, ApiError> {
    let mut slot = reg
        .hashing_slot(HASHING_PATIENCE)
        .await
        .ok_or(ApiError::Overloaded {
            message: "every password hashing slot is busy; try again",
            retry_after_secs: 1,
        })?;
    tokio::task::spawn_blocking(move || secret::hash(&secret, slot.memory()))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing task: {e}")))?
        .map_err(|e| ApiError::Internal(format!("hashing a secret: {e}")))
}

pub async fn create_tenant(reg: &Registry, new: NewTenant) -> Result<TenantRecord, ApiError> {
    let record = new.into_record(now_secs()).map_err(refused)?;
    let id = record.id.clone();
    let (_, stored) = reg
        .update(
            Kind::Tenant,
            &id,
            |current: Option<&TenantRecord>| match current {
                Some(t) if !t.deleted => Err(ApiError::Conflict(format!("tenant `{id}` exists"))),
                _ => Ok(record.clone()),
            },
        )
        .await?;
    Ok(stored)
}

pub async fn patch_tenant(
    reg: &Registry,
    id: &str,
    patch: TenantPatch,
) -> Result<TenantRecord, ApiError> {
    let (_, stored) = reg
        .update(Kind::Tenant, id, |current: Option<&TenantRecord>| {
            let t = current
                .filter(|t| !t.deleted)
                .ok_or_else(|| no_tenant(id))?;
            patch.clone().apply(t, now_secs()).map_err(refused)
        })
        .await?;
    Ok(stored)
}

/// Refused while live clients belong to the tenant: delete or move them first.
pub async fn delete_tenant(reg: &Registry, id: &str) -> Result<TenantRecord, ApiError> {
    let members = reg.clients(Some(id)).len();
    if members > 0 {
        return Err(ApiError::Conflict(format!(
            "tenant `{id}` still has {members} client(s); delete them first"
        )));
    }
    let (_, stored) = reg
        .update(Kind::Tenant, id, |current: Option<&TenantRecord>| {
            let t = current
                .filter(|t| !t.deleted)
                .ok_or_else(|| no_tenant(id))?;
            Ok(t.tombstone(now_secs()))
        })
        .await?;
    Ok(stored)
}

fn generated_id() -> String {
    format!("cl_{}", &uuid::Uuid::new_v4().simple().to_string()[..20])
}

pub async fn create_client(
    reg: &Registry,
    new: NewClient,
) -> Result<Shown<ClientRecord>, ApiError> {
    // A well-formed request naming a tenant that does not exist (yet): it
    // clashes with the registry's state, like a duplicate id.
    if reg.tenant(&new.tenant).is_none() {
        return Err(ApiError::Conflict(format!(
            "no tenant `{}`; create it first",
            new.tenant
        )));
    }
    let id = new.id.clone().unwrap_or_else(generated_id);
    let secret = secret::generate();
    let secret_hash = hash(reg, secret.clone()).await?;
    let (_, stored) = reg
        .update(Kind::Client, &id, |current: Option<&ClientRecord>| {
            if current.is_some_and(|c| !c.deleted) {
                return Err(ApiError::Conflict(format!("client `{id}` exists")));
            }
            new.clone()
                .into_record(id.clone(), secret_hash.clone(), current, now_secs())
                .map_err(refused)
        })
        .await?;
    Ok(Shown {
        record: stored,
        secret,
    })
}

pub async fn patch_client(
    reg: &Registry,
    id: &str,
    patch: ClientPatch,
) -> Result<(ClientRecord, ClientRecord), ApiError> {
    let (before, after) = reg
        .update(Kind::Client, id, |current: Option<&ClientRecord>| {
            let c = current
                .filter(|c| !c.deleted)
                .ok_or_else(|| no_client(id))?;
            patch.clone().apply(c, now_secs()).map_err(refused)
        })
        .await?;
    Ok((before.ok_or_else(|| no_client(id))?, after))
}

pub async fn delete_client(reg: &Registry, id: &str) -> Result<ClientRecord, ApiError> {
    let (_, stored) = reg
        .update(Kind::Client, id, |current: Option<&ClientRecord>| {
            let c = current
                .filter(|c| !c.deleted)
                .ok_or_else(|| no_client(id))?;
            Ok(c.tombstone(now_secs()))
        })
        .await?;
    Ok(stored)
}

pub async fn rotate_secret(reg: &Registry, id: &str) -> Result<Shown<ClientRecord>, ApiError> {
    if reg.client(id).is_none() {
        return Err(no_client(id));
    }
    let secret = secret::generate();
    let secret_hash = hash(reg, secret.clone()).await?;
    let (_, stored) = reg
        .update(Kind::Client, id, |current: Option<&ClientRecord>| {
            let c = current
                .filter(|c| !c.deleted)
                .ok_or_else(|| no_client(id))?;
            Ok(c.rotated(secret_hash.clone(), now_secs()))
        })
        .await?;
    Ok(Shown {
        record: stored,
        secret,
    })
}

/// Scopes as the admin API and the audit trail write them.
pub fn scope_list(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}
