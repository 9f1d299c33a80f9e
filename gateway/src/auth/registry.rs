//! The client and tenant registry and the revocation list, held as one local
//! view that every request reads without I/O.
//!
//! Without Redis the view is the store. With Redis, Redis is the truth:
//! writes are compare-and-set there (a retried read-modify-write), each one
//! moves a version counter, and `sync` reloads the view whenever a counter
//! moved, every 250 ms. A view whose last good sync is older than
//! [`MAX_STALENESS`] is not trusted: checks that need it answer 503, never a
//! 401 for a valid token and never a 500. Config entries seed the registry
//! (written only where no record, not even a deletion's tombstone, exists).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tollgate_shared::config::{
    ClientConfig, ClientCredential, Limits, Priority, Scope, TenantConfig,
};
use tollgate_shared::store::{Redis, StoreError};

use super::model::{ClientRecord, TenantRecord};
use super::secret::{self, Memory, Slots};
use super::shared_store::SharedStore;
use crate::error::ApiError;

/// How old the view may be before checks fail closed.
pub const MAX_STALENESS: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Arc<str>,
    pub priority: Priority,
    pub weight: u32,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: Arc<str>,
    pub tenant: Arc<str>,
    pub scopes: Vec<Scope>,
    pub limits: Limits,
    pub disabled: bool,
    /// Credential generation (see `ClientRecord::generation`).
    pub generation: u64,
}

impl From<&TenantRecord> for Tenant {
    fn from(t: &TenantRecord) -> Self {
        Tenant {
            id: t.id.as_str().into(),
            priority: t.priority,
            weight: t.weight,
            limits: t.limits,
        }
    }
}

impl From<&ClientRecord> for Client {
    fn from(c: &ClientRecord) -> Self {
        Client {
            id: c.id.as_str().into(),
            tenant: c.tenant.as_str().into(),
            scopes: c.scopes.clone(),
            limits: c.limits,
            disabled: c.disabled,
            generation: c.generation,
        }
    }
}

/// Which collection a record lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tenant,
    Client,
}

/// A record with the exact text it is stored as (the compare-and-set compares that).
#[derive(Clone)]
struct Slot<T> {
    raw: String,
    record: T,
}

#[derive(Default)]
struct View {
    tenants: HashMap<String, Slot<TenantRecord>>,
    clients: HashMap<String, Slot<ClientRecord>>,
    /// jti → exp
    revoked: HashMap<String, u64>,
    registry_version: Option<u64>,
    revoked_version: Option<u64>,
}

impl View {
    fn raw(&self, kind: Kind, id: &str) -> Option<String> {
        match kind {
            Kind::Tenant => self.tenants.get(id).map(|s| s.raw.clone()),
            Kind::Client => self.clients.get(id).map(|s| s.raw.clone()),
        }
    }

    fn put(&mut self, kind: Kind, id: &str, raw: String) {
        match kind {
            Kind::Tenant => insert(&mut self.tenants, id, raw),
            Kind::Client => insert(&mut self.clients, id, raw),
        }
    }
}

fn insert<T: DeserializeOwned>(map: &mut HashMap<String, Slot<T>>, id: &str, raw: String) {
    match serde_json::from_str(&raw) {
        Ok(record) => {
            map.insert(id.to_owned(), Slot { raw, record });
        }
        Err(e) => tracing::error!(id, error = %e, "unreadable registry record ignored"),
    }
}

pub struct Registry {
    view: RwLock<View>,
    redis: Option<SharedStore>,
    synced_at: Mutex<Option<Instant>>,
    /// Trust the last good view however old (`auth.on_redis_failure = "stale"`).
    stale_ok: bool,
    /// Woken after every good sync.
    synced: tokio::sync::Notify,
    /// Verified against for unknown ids, so that an unknown id and a wrong
    /// secret cost the same time and get the same answer.
    dummy_hash: String,
    /// Where every argon2 hash and check of this registry runs.
    hashing: Slots,
}

/// Why a registry check refused a token's holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The view is stale: fail closed (503).
    Unavailable,
    Revoked,
    /// Deleted, disabled, moved, or its credentials changed since the token.
    ClientInactive,
    TenantGone,
}

pub fn unavailable(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(why) => {
            tracing::warn!(error = %why, "registry store unavailable");
            ApiError::AuthUnavailable
        }
        StoreError::Protocol(why) => ApiError::Internal(format!("registry store: {why}")),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, ApiError> {
    serde_json::to_string(v).map_err(|e| ApiError::Internal(e.to_string()))
}

impl Registry {
    /// Builds the registry, hashing any secret the config gives in clear.
    /// With `redis`, the view stays empty (and untrusted) until the first sync.
    pub fn new(
        tenants: &[TenantConfig],
        clients: &[ClientConfig],
        redis: Option<Redis>,
        now: u64,
    ) -> Result<Registry, String> {
        let hashing = Slots::per_core();
        let mut slot = hashing.try_take().ok_or("no argon2 slot at start-up")?;
        let mut seeds = Vec::new();
        for t in tenants {
            let record = TenantRecord {
                id: t.id.clone(),
                priority: t.priority,
                weight: t.weight,
                limits: t.limits,
                deleted: false,
                created_at: now,
                updated_at: now,
            };
            seeds.push((Kind::Tenant, t.id.clone(), json(&record)?));
        }
        for c in clients {
            let secret_hash = match &c.credential {
                ClientCredential::Secret(s) => secret::hash(s.expose(), slot.memory())?,
                ClientCredential::Hash(h) => h.clone(),
            };
            let record = ClientRecord {
                id: c.id.clone(),
                tenant: c.tenant.clone(),
                scopes: c.scopes.clone(),
                limits: c.limits,
                disabled: c.disabled,
                secret_hash,
                generation: 0,
                deleted: false,
                created_at: now,
                updated_at: now,
            };
            seeds.push((Kind::Client, c.id.clone(), json(&record)?));
        }
        let dummy_hash = secret::hash("tollgate-dummy-secret-for-unknown-clients", slot.memory())?;
        drop(slot);
        let mut view = View::default();
        let redis = match redis {
            None => {
                for (kind, id, raw) in seeds {
                    view.put(kind, &id, raw);
                }
                None
            }
            Some(redis) => Some(SharedStore::new(redis, seeds)),
        };
        Ok(Registry {
            view: RwLock::new(view),
            redis,
            synced_at: Mutex::new(None),
            stale_ok: false,
            synced: tokio::sync::Notify::new(),
            dummy_hash,
            hashing,
        })
    }

    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// True when the view may be trusted: always in memory, with Redis when
    /// the last good sync is recent.
    ///
    /// With `auth.on_redis_failure = "stale"` the last good view stays trusted
    /// while Redis is down: revocations and admin changes made meanwhile are
    /// not seen until it is back (availability chosen over freshness).
    pub fn fresh(&self) -> bool {
        if self.redis.is_none() {
            return true;
        }
        self.synced_at
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| self.stale_ok || t.elapsed() < MAX_STALENESS)
    }

    /// Keep trusting the last good view while Redis is down (see [`Registry::fresh`]).
    pub fn tolerate_stale(mut self, ok: bool) -> Self {
        self.stale_ok = ok;
        self
    }

    /// Waits up to `patience` for the view to be fresh (a replica that just
    /// started, or a sync late by a moment). True when it is.
    pub async fn wait_fresh(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let woken = self.synced.notified();
            if self.fresh() {
                return true;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return self.fresh();
            }
        }
    }

    /// A live (not deleted) client, disabled or not.
    pub fn client(&self, id: &str) -> Option<Client> {
        let view = self.view.read().ok()?;
        let slot = view.clients.get(id)?;
        (!slot.record.deleted).then(|| Client::from(&slot.record))
    }

    /// A live (not deleted) tenant.
    pub fn tenant(&self, id: &str) -> Option<Tenant> {
        let view = self.view.read().ok()?;
        let slot = view.tenants.get(id)?;
        (!slot.record.deleted).then(|| Tenant::from(&slot.record))
    }

    /// Stage `authenticate`, after the signature: is the token's holder still
    /// allowed in? `jti` not revoked, client active under the same tenant and
    /// credential generation, tenant present.
    pub fn admit(
        &self,
        sub: &str,
        tid: &str,
        generation: u64,
        jti: &str,
    ) -> Result<(Client, Tenant), Refused> {
        if !self.fresh() {
            return Err(Refused::Unavailable);
        }
        let view = self.view.read().map_err(|_| Refused::Unavailable)?;
        if view.revoked.contains_key(jti) {
            return Err(Refused::Revoked);
        }
        let client = view
            .clients
            .get(sub)
            .map(|s| &s.record)
            .filter(|c| !c.deleted && !c.disabled && c.tenant == tid && c.generation == generation)
            .ok_or(Refused::ClientInactive)?;
        let tenant = view
            .tenants
            .get(tid)
            .map(|s| &s.record)
            .filter(|t| !t.deleted)
            .ok_or(Refused::TenantGone)?;
        Ok((Client::from(client), Tenant::from(tenant)))
    }

    /// An argon2 slot, or None when all stay taken for `patience`. Move it into
    /// the blocking task that uses it.
    pub async fn hashing_slot(&self, patience: Duration) -> Option<secret::Slot> {
        self.hashing.take(patience).await
    }

    /// Checks a client's credentials in a slot's `memory`. Blocking (argon2):
    /// call it off the async executor. Unknown, deleted, disabled and
    /// wrong-secret clients are indistinguishable, in answer and in time: the
    /// same argon2 work is done for each.
    pub fn check_secret(&self, id: &str, presented: &str, memory: &mut Memory) -> Option<Client> {
        let found = self.view.read().ok().and_then(|v| {
            let c = v.clients.get(id)?;
            let tenant_live = v
                .tenants
                .get(&c.record.tenant)
                .is_some_and(|t| !t.record.deleted);
            Some((c.record.clone(), tenant_live))
        });
        let hash = match &found {
            Some((c, _)) if !c.secret_hash.is_empty() => c.secret_hash.as_str(),
            _ => self.dummy_hash.as_str(),
        };
        let ok = secret::verify(presented, hash, memory);
        match found {
            Some((c, true)) if ok && !c.deleted && !c.disabled => Some(Client::from(&c)),
            _ => None,
        }
    }

    /// Every live tenant, sorted by id.
    pub fn tenants(&self) -> Vec<TenantRecord> {
        let Ok(view) = self.view.read() else {
            return Vec::new();
        };
        let mut out: Vec<_> = view
            .tenants
            .values()
            .filter(|s| !s.record.deleted)
            .map(|s| s.record.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every live client (of `tenant`, when given), sorted by id.
    pub fn clients(&self, tenant: Option<&str>) -> Vec<ClientRecord> {
        let Ok(view) = self.view.read() else {
            return Vec::new();
        };
        let mut out: Vec<_> = view
            .clients
            .values()
            .filter(|s| !s.record.deleted && tenant.is_none_or(|t| s.record.tenant == t))
            .map(|s| s.record.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The stored record (tombstones included), from the truth: Redis when shared.
    async fn current<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Slot<T>>, ApiError> {
        let raw = match &self.redis {
            None => self.view.read().ok().and_then(|v| v.raw(kind, id)),
            Some(store) => store.get(kind, id).await.map_err(unavailable)?,
        };
        raw.map(|raw| {
            serde_json::from_str(&raw)
                .map(|record| Slot { raw, record })
                .map_err(|e| ApiError::Internal(format!("unreadable registry record {id}: {e}")))
        })
        .transpose()
    }

    /// Writes `new` where `expected` (None: nothing) is still stored. False when it moved.
    async fn compare_and_set(
        &self,
        kind: Kind,
        id: &str,
        expected: Option<&str>,
        new: String,
    ) -> Result<bool, ApiError> {
        match &self.redis {
            None => {
                let mut view = self
                    .view
                    .write()
                    .map_err(|_| ApiError::Internal("registry lock poisoned".into()))?;
                if view.raw(kind, id).as_deref() != expected {
                    return Ok(false);
                }
                view.put(kind, id, new);
                Ok(true)
            }
            Some(store) => store
                .compare_and_set(kind, id, expected, &new)
                .await
                .map_err(unavailable),
        }
    }

    /// Read-modify-write of one record: `change` sees the current record
    /// (tombstones included) and returns the new one; retried when another
    /// writer got there first. Returns what was stored before and after.
    pub async fn update<T, F>(
        &self,
        kind: Kind,
        id: &str,
        change: F,
    ) -> Result<(Option<T>, T), ApiError>
    where
        T: Serialize + DeserializeOwned + Clone,
        F: Fn(Option<&T>) -> Result<T, ApiError>,
    {
        for _ in 0..8 {
            let current = self.current::<T>(kind, id).await?;
            let new = change(current.as_ref().map(|s| &s.record))?;
            let raw = to_json(&new)?;
            if self
                .compare_and_set(kind, id, current.as_ref().map(|s| s.raw.as_str()), raw)
                .await?
            {
                self.refresh().await;
                return Ok((current.map(|s| s.record), new));
            }
        }
        Err(ApiError::Conflict(format!(
            "{id} is being changed by someone else; try again"
        )))
    }

    /// Revokes `jti` until `exp` (its token's expiry): gone everywhere within [`MAX_STALENESS`].
    pub async fn revoke(&self, jti: &str, exp: u64, now: u64) -> Result<(), ApiError> {
        match &self.redis {
            None => {
                let mut view = self
                    .view
                    .write()
                    .map_err(|_| ApiError::Internal("registry lock poisoned".into()))?;
                view.revoked.retain(|_, e| *e > now);
                view.revoked.insert(jti.to_owned(), exp);
                Ok(())
            }
            Some(store) => {
                store.revoke(jti, exp, now).await.map_err(unavailable)?;
                self.refresh().await;
                Ok(())
            }
        }
    }

    /// Syncs now (after a local write, so this replica reads its own writes).
    async fn refresh(&self) {
        if let Err(e) = self.sync().await {
            tracing::warn!(error = %e, "registry sync after a write failed");
        }
    }

    /// One sync with Redis: reload what moved, re-seed after a data loss,
    /// and mark the view fresh. Does nothing without Redis.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let Some(store) = &self.redis else {
            return Ok(());
        };
        let _one = store.syncing.lock().await;
        let (registry, revoked) = store.versions().await?;
        if registry.is_none() {
            store.seed().await?;
        }
        let (have_registry, have_revoked) = self
            .view
            .read()
            .map(|v| (v.registry_version, v.revoked_version))
            .map_err(|_| StoreError::Protocol("registry lock poisoned".into()))?;
        if registry.is_none() || registry != have_registry {
            let (tenants, clients, version) = store.load_registry().await?;
            let mut next = View::default();
            for (id, raw) in tenants {
                next.put(Kind::Tenant, &id, raw);
            }
            for (id, raw) in clients {
                next.put(Kind::Client, &id, raw);
            }
            if let Ok(mut view) = self.view.write() {
                view.tenants = next.tenants;
                view.clients = next.clients;
                view.registry_version = version;
            }
        }
        if revoked.is_none() || revoked != have_revoked {
            let (list, version) = store.load_revoked(super::jwt::now_secs()).await?;
            if let Ok(mut view) = self.view.write() {
                view.revoked = list.into_iter().collect();
                view.revoked_version = version;
            }
        }
        if let Ok(mut t) = self.synced_at.lock() {
            *t = Some(Instant::now());
        }
        self.synced.notify_waiters();
        Ok(())
    }

    /// Asks Redis itself whether `jti` is revoked (a round trip; the request
    /// path reads the synced view instead). None without Redis.
    pub async fn revoked_in_store(&self, jti: &str) -> Option<Result<bool, StoreError>> {
        Some(self.redis.as_ref()?.is_revoked(jti).await)
    }
}

fn json<T: Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string(v).map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
