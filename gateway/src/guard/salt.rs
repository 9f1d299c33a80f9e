//! The per-tenant `cache_salt` put on every upstream body. vLLM mixes it into
//! the hash of the first KV block of a prompt, so one tenant's prompts never
//! hit another tenant's prefix cache (no cross-tenant timing probe). It is an
//! HMAC of the tenant id under the cluster secret: stable across gateway
//! replicas and restarts (the cache keeps working), and not guessable by a
//! tenant who knows another tenant's id.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Separates this use of the cluster secret from any other.
const LABEL: &[u8] = b"tollgate cache_salt v1\0";

#[derive(Clone)]
pub struct SaltKey(Hmac<Sha256>);

impl std::fmt::Debug for SaltKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltKey(..)")
    }
}

impl SaltKey {
    pub fn new(secret: &[u8]) -> Result<SaltKey, String> {
        let mac =
            Hmac::<Sha256>::new_from_slice(secret).map_err(|e| format!("cache salt key: {e}"))?;
        Ok(SaltKey(mac))
    }

    /// 128 bits as 32 hex digits.
    pub fn for_tenant(&self, tenant: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(LABEL);
        mac.update(tenant.as_bytes());
        let digest = mac.finalize().into_bytes();
        tollgate_shared::hex::lower(&digest[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_differ_by_tenant_and_key_and_are_stable() {
        let k = SaltKey::new(b"0123456789abcdef0123").unwrap();
        let a = k.for_tenant("acme");
        assert_eq!(a.len(), 32);
        assert_eq!(a, k.for_tenant("acme"));
        assert_ne!(a, k.for_tenant("globex"));
        let other = SaltKey::new(b"another secret of 20b").unwrap();
        assert_ne!(a, other.for_tenant("acme"));
    }
}
