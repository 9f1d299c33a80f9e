//! Secrets: where they come from in the config, and a value type that never prints itself.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};
use subtle::ConstantTimeEq;

/// How a secret is given in the config: a literal, an environment variable, or a file.
#[derive(Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    Env { env: String },
    File { file: PathBuf },
    Literal(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env { env } => write!(f, "{{ env = {env:?} }}"),
            SecretSource::File { file } => write!(f, "{{ file = {:?} }}", file.display()),
            SecretSource::Literal(_) => f.write_str("\"***\""),
        }
    }
}

impl SecretSource {
    /// Reads the secret. The error says where it looked, never what it found.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            SecretSource::Literal(s) => Ok(Secret::new(s.clone())),
            SecretSource::Env { env } => std::env::var(env)
                .map(Secret::new)
                .map_err(|_| format!("environment variable {env} is not set")),
            SecretSource::File { file } => std::fs::read_to_string(file)
                .map(|s| Secret::new(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| format!("cannot read {}: {e}", file.display())),
        }
    }
}

/// A secret value. Debug and Serialize print `***`; only [`Secret::expose`] reveals it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, for credentials presented by peers.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Secrets published in tutorials and examples (among them the article this
/// project grew from). A deployment using one of them is as good as unauthenticated.
pub const PUBLISHED_EXAMPLE_SECRETS: &[&str] = &[
    "your-super-secret-jwt-key-change-in-production",
    "secret_xyz789",
    "secret_pqr321",
    "your-256-bit-secret",
    "your-secret-key",
    "your_secret_key",
    "supersecret",
    "secret",
    "changeme",
    "change-me",
    "password",
    "mysecretkey",
    "my-secret-key",
    "jwt-secret",
    "jwt_secret",
    "secretkey",
    "s3cr3t",
];

/// True when `value` is, ignoring case and surrounding blanks, a published example secret.
pub fn is_published_example(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    PUBLISHED_EXAMPLE_SECRETS.iter().any(|e| *e == v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2-hunter2".into());
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        let src = SecretSource::Literal("hunter2".into());
        assert!(!format!("{src:?}").contains("hunter2"));
    }

    #[test]
    fn constant_time_match() {
        let s = Secret::new("abc".into());
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"abd"));
        assert!(!s.matches(b"ab"));
    }

    #[test]
    fn example_secrets_are_recognised() {
        assert!(is_published_example(
            "your-super-secret-jwt-key-change-in-production"
        ));
        assert!(is_published_example(" Secret_XYZ789 "));
        assert!(!is_published_example(
            "a-real-secret-of-decent-length-0123456789"
        ));
    }
}
