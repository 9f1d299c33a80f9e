//! The client and tenant registry: who may ask for tokens, with which
//! scopes, for which tenant. Secrets are kept only as argon2id PHC hashes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};
use tollgate_shared::config::{
    ClientConfig, ClientCredential, Limits, Priority, Scope, TenantConfig,
};

/// argon2id with OWASP's first recommended setting: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a secret into an argon2id PHC string.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    hasher()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => hasher().verify_password(secret.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

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
    secret_hash: String,
}

#[derive(Default)]
struct Inner {
    tenants: HashMap<Arc<str>, Tenant>,
    clients: HashMap<Arc<str>, Client>,
}

/// In-memory registry (the embedded default).
pub struct Registry {
    inner: RwLock<Inner>,
    /// Verified against when the client id is unknown, so that an unknown id
    /// and a wrong secret cost the same time.
    dummy_hash: String,
}

impl Registry {
    /// Builds the registry from the config, hashing any secret given in clear.
    pub fn from_config(
        tenants: &[TenantConfig],
        clients: &[ClientConfig],
    ) -> Result<Registry, String> {
        let mut inner = Inner::default();
        for t in tenants {
            let id: Arc<str> = t.id.as_str().into();
            inner.tenants.insert(
                id.clone(),
                Tenant {
                    id,
                    priority: t.priority,
                    weight: t.weight,
                    limits: t.limits,
                },
            );
        }
        for c in clients {
            let secret_hash = match &c.credential {
                ClientCredential::Secret(s) => hash_secret(s.expose())?,
                ClientCredential::Hash(h) => h.clone(),
            };
            let id: Arc<str> = c.id.as_str().into();
            inner.clients.insert(
                id.clone(),
                Client {
                    id,
                    tenant: c.tenant.as_str().into(),
                    scopes: c.scopes.clone(),
                    limits: c.limits,
                    disabled: c.disabled,
                    secret_hash,
                },
            );
        }
        Ok(Registry {
            inner: RwLock::new(inner),
            dummy_hash: hash_secret("tollgate-dummy-secret-for-unknown-clients")?,
        })
    }

    pub fn client(&self, id: &str) -> Option<Client> {
        self.inner.read().ok()?.clients.get(id).cloned()
    }

    pub fn tenant(&self, id: &str) -> Option<Tenant> {
        self.inner.read().ok()?.tenants.get(id).cloned()
    }

    /// Checks a client's credentials. Blocking (argon2): call it off the async executor.
    /// Unknown, disabled and wrong-secret clients are indistinguishable, in answer and in time.
    pub fn authenticate(&self, id: &str, secret: &str) -> Option<Client> {
        let client = self.client(id);
        let hash = client
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |c| c.secret_hash.as_str());
        let ok = verify(secret, hash);
        client.filter(|c| ok && !c.disabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::secret::Secret;

    fn registry() -> Registry {
        let tenants = vec![TenantConfig {
            id: "acme".into(),
            priority: Priority::High,
            weight: 2,
            limits: Limits::default(),
        }];
        let clients = vec![
            ClientConfig {
                id: "c1".into(),
                credential: ClientCredential::Secret(Secret::new("correct horse battery".into())),
                tenant: "acme".into(),
                scopes: vec![Scope::Infer],
                limits: Limits::default(),
                disabled: false,
            },
            ClientConfig {
                id: "off".into(),
                credential: ClientCredential::Hash(hash_secret("another secret!!").unwrap()),
                tenant: "acme".into(),
                scopes: vec![Scope::Infer],
                limits: Limits::default(),
                disabled: true,
            },
        ];
        Registry::from_config(&tenants, &clients).unwrap()
    }

    #[test]
    fn authenticates_only_the_right_secret_of_an_active_client() {
        let r = registry();
        assert_eq!(
            r.authenticate("c1", "correct horse battery")
                .unwrap()
                .tenant
                .as_ref(),
            "acme"
        );
        assert!(r.authenticate("c1", "wrong").is_none());
        assert!(r.authenticate("nobody", "correct horse battery").is_none());
        assert!(r.authenticate("off", "another secret!!").is_none());
    }

    #[test]
    fn secrets_are_stored_hashed() {
        let r = registry();
        let c = r.client("c1").unwrap();
        assert!(c.secret_hash.starts_with("$argon2id$"));
        assert!(!c.secret_hash.contains("correct horse"));
    }
}
