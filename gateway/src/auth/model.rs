//! The registry's records as stored (JSON, in Redis or in memory), the admin
//! API's inputs, and the pure rules between them. Inputs name every field they
//! accept and refuse any other (`secret_hash`, `generation`... cannot be assigned).

use serde::{Deserialize, Deserializer, Serialize};
use tollgate_shared::config::{ID_RULE, Limits, Priority, Scope, valid_id};
use tollgate_shared::integer::{self, Integral};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub priority: Priority,
    pub weight: u32,
    #[serde(default)]
    pub limits: Limits,
    /// A tombstone: kept so a restart's config bootstrap does not bring it back.
    #[serde(default)]
    pub deleted: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub disabled: bool,
    /// argon2id PHC string; empty on a tombstone.
    pub secret_hash: String,
    /// Credential generation: tokens carry the one they were issued under and
    /// die when it moves on (disable, rotation, deletion).
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub deleted: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A refused admin input: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub param: &'static str,
    pub message: String,
}

fn invalid(param: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        param,
        message: message.into(),
    }
}

/// Distinguishes an absent field (keep) from `null` (clear) in a PATCH of a limit.
fn present<'de, D: Deserializer<'de>, T: Integral<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize_integral(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub id: String,
    pub priority: Option<Priority>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub weight: Option<u32>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub rpm: Option<u64>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub tpm: Option<u64>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub max_concurrency: Option<u64>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub daily_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    pub priority: Option<Priority>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub weight: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub max_concurrency: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub daily_tokens: Option<Option<u64>>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// Generated when absent.
    pub id: Option<String>,
    pub tenant: String,
    pub scopes: Option<Vec<Scope>>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub rpm: Option<u64>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub tpm: Option<u64>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub max_concurrency: Option<u64>,
    #[serde(default, deserialize_with = "integer::deserialize")]
    pub daily_tokens: Option<u64>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientPatch {
    pub scopes: Option<Vec<Scope>>,
    #[serde(default, deserialize_with = "present")]
    pub rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub max_concurrency: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub daily_tokens: Option<Option<u64>>,
    pub disabled: Option<bool>,
}

pub fn check_id(param: &'static str, id: &str) -> Result<(), Invalid> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(invalid(param, format!("`{param}` {ID_RULE}")))
    }
}

fn limit(param: &'static str, v: Option<u64>) -> Result<Option<u64>, Invalid> {
    match v {
        Some(0) => Err(invalid(
            param,
            format!("`{param}` must be greater than 0 (null or absent for no limit)"),
        )),
        v => Ok(v),
    }
}

/// The largest tenant `weight` (the smallest is 1).
pub const MAX_WEIGHT: u32 = 1000;

fn weight(v: u32) -> Result<u32, Invalid> {
    if (1..=MAX_WEIGHT).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(
            "weight",
            format!("`weight` must be between 1 and {MAX_WEIGHT}"),
        ))
    }
}

fn scopes(v: Vec<Scope>) -> Result<Vec<Scope>, Invalid> {
    let mut out = Vec::new();
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    if out.is_empty() {
        return Err(invalid("scopes", "`scopes` must name at least one scope"));
    }
    Ok(out)
}

/// Applies a PATCH value: absent keeps, `null` clears, a number sets.
fn patch_limit(
    param: &'static str,
    current: Option<u64>,
    patch: Option<Option<u64>>,
) -> Result<Option<u64>, Invalid> {
    match patch {
        None => Ok(current),
        Some(v) => limit(param, v),
    }
}

impl NewTenant {
    pub fn into_record(self, now: u64) -> Result<TenantRecord, Invalid> {
        check_id("id", &self.id)?;
        Ok(TenantRecord {
            id: self.id,
            priority: self.priority.unwrap_or(Priority::Normal),
            weight: weight(self.weight.unwrap_or(1))?,
            limits: Limits {
                rpm: limit("rpm", self.rpm)?,
                tpm: limit("tpm", self.tpm)?,
                max_concurrency: limit("max_concurrency", self.max_concurrency)?,
                daily_tokens: limit("daily_tokens", self.daily_tokens)?,
            },
            deleted: false,
            created_at: now,
            updated_at: now,
        })
    }
}

impl TenantPatch {
    pub fn apply(self, t: &TenantRecord, now: u64) -> Result<TenantRecord, Invalid> {
        Ok(TenantRecord {
            priority: self.priority.unwrap_or(t.priority),
            weight: weight(self.weight.unwrap_or(t.weight))?,
            limits: Limits {
                rpm: patch_limit("rpm", t.limits.rpm, self.rpm)?,
                tpm: patch_limit("tpm", t.limits.tpm, self.tpm)?,
                max_concurrency: patch_limit(
                    "max_concurrency",
                    t.limits.max_concurrency,
                    self.max_concurrency,
                )?,
                daily_tokens: patch_limit(
                    "daily_tokens",
                    t.limits.daily_tokens,
                    self.daily_tokens,
                )?,
            },
            updated_at: now,
            ..t.clone()
        })
    }
}

impl NewClient {
    /// `previous`: the tombstone of a deleted client with this id, whose
    /// generation the new one must pass so no old token comes back to life.
    pub fn into_record(
        self,
        id: String,
        secret_hash: String,
        previous: Option<&ClientRecord>,
        now: u64,
    ) -> Result<ClientRecord, Invalid> {
        check_id("id", &id)?;
        check_id("tenant", &self.tenant)?;
        Ok(ClientRecord {
            id,
            tenant: self.tenant,
            scopes: scopes(self.scopes.unwrap_or_else(|| vec![Scope::Infer]))?,
            limits: Limits {
                rpm: limit("rpm", self.rpm)?,
                tpm: limit("tpm", self.tpm)?,
                max_concurrency: limit("max_concurrency", self.max_concurrency)?,
                daily_tokens: limit("daily_tokens", self.daily_tokens)?,
            },
            disabled: self.disabled.unwrap_or(false),
            secret_hash,
            generation: previous.map_or(0, |p| p.generation + 1),
            deleted: false,
            created_at: now,
            updated_at: now,
        })
    }
}

impl ClientPatch {
    pub fn apply(self, c: &ClientRecord, now: u64) -> Result<ClientRecord, Invalid> {
        let disabled = self.disabled.unwrap_or(c.disabled);
        Ok(ClientRecord {
            scopes: match self.scopes {
                Some(s) => scopes(s)?,
                None => c.scopes.clone(),
            },
            limits: Limits {
                rpm: patch_limit("rpm", c.limits.rpm, self.rpm)?,
                tpm: patch_limit("tpm", c.limits.tpm, self.tpm)?,
                max_concurrency: patch_limit(
                    "max_concurrency",
                    c.limits.max_concurrency,
                    self.max_concurrency,
                )?,
                daily_tokens: patch_limit(
                    "daily_tokens",
                    c.limits.daily_tokens,
                    self.daily_tokens,
                )?,
            },
            // Disabling kills the live tokens; enabling again does not revive them.
            generation: if disabled && !c.disabled {
                c.generation + 1
            } else {
                c.generation
            },
            disabled,
            updated_at: now,
            ..c.clone()
        })
    }
}

impl ClientRecord {
    /// A new secret: the old one and every token issued under it stop working.
    pub fn rotated(&self, secret_hash: String, now: u64) -> ClientRecord {
        ClientRecord {
            secret_hash,
            generation: self.generation + 1,
            updated_at: now,
            ..self.clone()
        }
    }

    pub fn tombstone(&self, now: u64) -> ClientRecord {
        ClientRecord {
            secret_hash: String::new(),
            generation: self.generation + 1,
            deleted: true,
            disabled: true,
            updated_at: now,
            ..self.clone()
        }
    }

    /// What an admin sees: never the secret, never its hash.
    pub fn view(&self) -> ClientView {
        ClientView {
            object: "client",
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            scopes: self.scopes.clone(),
            rpm: self.limits.rpm,
            tpm: self.limits.tpm,
            max_concurrency: self.limits.max_concurrency,
            daily_tokens: self.limits.daily_tokens,
            disabled: self.disabled,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

impl TenantRecord {
    pub fn tombstone(&self, now: u64) -> TenantRecord {
        TenantRecord {
            deleted: true,
            updated_at: now,
            ..self.clone()
        }
    }

    pub fn view(&self) -> TenantView {
        TenantView {
            object: "tenant",
            id: self.id.clone(),
            priority: self.priority,
            weight: self.weight,
            rpm: self.limits.rpm,
            tpm: self.limits.tpm,
            max_concurrency: self.limits.max_concurrency,
            daily_tokens: self.limits.daily_tokens,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A tenant as the admin API shows it. Limits are `null` when unlimited;
/// times are Unix seconds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantView {
    /// `tenant`
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: String,
    pub priority: Priority,
    pub weight: u32,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A client as the admin API shows it: never its secret, nor the secret's
/// hash. Limits are `null` when the tenant's apply.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClientView {
    /// `client`
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub disabled: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientRecord {
        NewClient {
            id: None,
            tenant: "acme".into(),
            scopes: Some(vec![Scope::Infer, Scope::Infer, Scope::Dev]),
            rpm: Some(10),
            tpm: None,
            max_concurrency: None,
            daily_tokens: None,
            disabled: None,
        }
        .into_record("c1".into(), "$argon2id$x".into(), None, 100)
        .unwrap()
    }

    #[test]
    fn mass_assignment_of_unlisted_fields_is_refused() {
        for body in [
            r#"{"secret_hash":"$argon2id$v=19$x"}"#,
            r#"{"gen":0}"#,
            r#"{"id":"other"}"#,
            r#"{"tenant":"globex"}"#,
            r#"{"secret":"mine"}"#,
        ] {
            let e = serde_json::from_str::<ClientPatch>(body).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{body}: {e}");
        }
        let e = serde_json::from_str::<NewClient>(
            r#"{"tenant":"acme","secret_hash":"$argon2id$v=19$x"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("secret_hash"), "{e}");
        assert!(serde_json::from_str::<TenantPatch>(r#"{"deleted":false}"#).is_err());
    }

    #[test]
    fn patches_keep_absent_fields_clear_nulls_and_check_values() {
        let c = client();
        assert_eq!(c.scopes, [Scope::Infer, Scope::Dev], "deduplicated");
        let p: ClientPatch = serde_json::from_str(r#"{"tpm":500}"#).unwrap();
        let c2 = p.apply(&c, 200).unwrap();
        assert_eq!(
            (c2.limits.rpm, c2.limits.tpm, c2.updated_at),
            (Some(10), Some(500), 200)
        );
        let p: ClientPatch = serde_json::from_str(r#"{"rpm":null}"#).unwrap();
        assert_eq!(p.apply(&c2, 300).unwrap().limits.rpm, None);
        let p: ClientPatch = serde_json::from_str(r#"{"rpm":0}"#).unwrap();
        assert_eq!(p.apply(&c2, 300).unwrap_err().param, "rpm");
        let p: ClientPatch = serde_json::from_str(r#"{"scopes":[]}"#).unwrap();
        assert_eq!(p.apply(&c2, 300).unwrap_err().param, "scopes");
        assert!(serde_json::from_str::<ClientPatch>(r#"{"scopes":["root"]}"#).is_err());
        let t = NewTenant {
            id: "acme".into(),
            priority: None,
            weight: Some(0),
            rpm: None,
            tpm: None,
            max_concurrency: None,
            daily_tokens: None,
        };
        assert_eq!(t.into_record(1).unwrap_err().param, "weight");
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        let t: NewTenant =
            serde_json::from_str(r#"{"id":"acme","weight":17.0,"rpm":6e2}"#).unwrap();
        assert_eq!((t.weight, t.rpm), (Some(17), Some(600)));
        let p: TenantPatch =
            serde_json::from_str(r#"{"weight":2.0,"tpm":5.0,"rpm":null}"#).unwrap();
        assert_eq!(
            (p.weight, p.tpm, p.rpm, p.daily_tokens),
            (Some(2), Some(Some(5)), Some(None), None)
        );
        let p: ClientPatch = serde_json::from_str(r#"{"daily_tokens":1000.0}"#).unwrap();
        assert_eq!(p.daily_tokens, Some(Some(1000)));
        for body in [
            r#"{"id":"acme","weight":17.5}"#,
            r#"{"id":"acme","rpm":-1.0}"#,
        ] {
            let e = serde_json::from_str::<NewTenant>(body).unwrap_err();
            assert!(e.to_string().contains("expected an integer"), "{body}: {e}");
        }
        assert!(serde_json::from_str::<ClientPatch>(r#"{"tpm":0.5}"#).is_err());
    }

    #[test]
    fn disabling_rotating_and_deleting_move_the_generation_on() {
        let c = client();
        let off = ClientPatch {
            disabled: Some(true),
            ..Default::default()
        }
        .apply(&c, 1)
        .unwrap();
        assert_eq!((off.disabled, off.generation), (true, c.generation + 1));
        let on = ClientPatch {
            disabled: Some(false),
            ..Default::default()
        }
        .apply(&off, 2)
        .unwrap();
        assert_eq!(
            on.generation, off.generation,
            "enabling again revives no old token"
        );
        let rotated = on.rotated("$argon2id$new".into(), 3);
        assert_eq!(rotated.generation, on.generation + 1);
        let gone = rotated.tombstone(4);
        assert!(gone.deleted && gone.secret_hash.is_empty());
        let again = NewClient {
            id: None,
            tenant: "acme".into(),
            scopes: None,
            rpm: None,
            tpm: None,
            max_concurrency: None,
            daily_tokens: None,
            disabled: None,
        }
        .into_record("c1".into(), "$argon2id$y".into(), Some(&gone), 5)
        .unwrap();
        assert!(
            again.generation > gone.generation,
            "a recreated id starts past its old tokens"
        );
    }

    #[test]
    fn views_never_show_the_secret_hash() {
        let v = serde_json::to_string(&client().view()).unwrap();
        assert!(
            !v.contains("argon2") && !v.contains("secret") && !v.contains("gen"),
            "{v}"
        );
    }
}
