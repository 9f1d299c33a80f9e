//! The registry in memory and shared through a real `redis-server` by two
//! instances, as two gateway replicas share it.

use std::time::{Duration, Instant};

use tollgate_shared::config::{
    ClientConfig, ClientCredential, Limits, Priority, Scope, TenantConfig,
};
use tollgate_shared::secret::Secret;
use tollgate_shared::store::Redis;
use tollgate_shared::testing::RedisServer;

use super::*;
use crate::auth::manage;
use crate::auth::model::{ClientPatch, NewClient, NewTenant};

fn config() -> (Vec<TenantConfig>, Vec<ClientConfig>) {
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
            limits: Limits {
                rpm: Some(30),
                ..Limits::default()
            },
            disabled: false,
        },
        ClientConfig {
            id: "off".into(),
            credential: ClientCredential::Hash(
                secret::hash("another secret!!", &mut Memory::new()).unwrap(),
            ),
            tenant: "acme".into(),
            scopes: vec![Scope::Infer],
            limits: Limits::default(),
            disabled: true,
        },
    ];
    (tenants, clients)
}

fn memory() -> Registry {
    let (t, c) = config();
    Registry::new(&t, &c, None, 1).unwrap()
}

/// A credential check in one of the registry's slots, as the token endpoint runs it.
fn check(r: &Registry, id: &str, presented: &str) -> Option<Client> {
    let mut slot = r.hashing.try_take().unwrap();
    r.check_secret(id, presented, slot.memory())
}

fn new_client(tenant: &str) -> NewClient {
    serde_json::from_value(serde_json::json!({"tenant": tenant, "scopes": ["infer", "dev"]}))
        .unwrap()
}

#[test]
fn authenticates_only_the_right_secret_of_an_active_client() {
    let r = memory();
    assert_eq!(
        check(&r, "c1", "correct horse battery")
            .unwrap()
            .tenant
            .as_ref(),
        "acme"
    );
    assert!(check(&r, "c1", "wrong").is_none());
    assert!(check(&r, "nobody", "correct horse battery").is_none());
    assert!(check(&r, "off", "another secret!!").is_none());
    // What the rate limiter reads.
    assert_eq!(r.client("c1").unwrap().limits.rpm, Some(30));
    assert_eq!(r.tenant("acme").unwrap().weight, 2);
}

#[tokio::test]
async fn admission_follows_revocation_disabling_and_rotation() {
    let r = memory();
    assert!(r.admit("c1", "acme", 0, "j1").is_ok());
    assert_eq!(
        r.admit("c1", "globex", 0, "j1").unwrap_err(),
        Refused::ClientInactive
    );
    r.revoke("j1", u64::MAX, 10).await.unwrap();
    assert_eq!(
        r.admit("c1", "acme", 0, "j1").unwrap_err(),
        Refused::Revoked
    );
    assert!(r.admit("c1", "acme", 0, "j2").is_ok());
    let off = ClientPatch {
        disabled: Some(true),
        ..Default::default()
    };
    manage::patch_client(&r, "c1", off).await.unwrap();
    assert_eq!(
        r.admit("c1", "acme", 0, "j2").unwrap_err(),
        Refused::ClientInactive
    );
    let on = ClientPatch {
        disabled: Some(false),
        ..Default::default()
    };
    manage::patch_client(&r, "c1", on).await.unwrap();
    assert_eq!(
        r.admit("c1", "acme", 0, "j2").unwrap_err(),
        Refused::ClientInactive,
        "enabled again, but tokens from before the disable stay dead"
    );
    assert!(r.admit("c1", "acme", 1, "j3").is_ok());
    let shown = manage::rotate_secret(&r, "c1").await.unwrap();
    assert!(check(&r, "c1", "correct horse battery").is_none());
    assert!(check(&r, "c1", &shown.secret).is_some());
    assert_eq!(
        r.admit("c1", "acme", 1, "j3").unwrap_err(),
        Refused::ClientInactive
    );
    assert!(r.admit("c1", "acme", 2, "j4").is_ok());
}

#[tokio::test]
async fn tenants_with_clients_cannot_be_deleted_and_deletions_stay_deleted() {
    let r = memory();
    let e = manage::delete_tenant(&r, "acme").await.unwrap_err();
    assert!(matches!(e, ApiError::Conflict(_)), "{e:?}");
    manage::delete_client(&r, "c1").await.unwrap();
    manage::delete_client(&r, "off").await.unwrap();
    assert!(r.client("c1").is_none());
    assert!(check(&r, "c1", "correct horse battery").is_none());
    manage::delete_tenant(&r, "acme").await.unwrap();
    assert!(r.tenant("acme").is_none());
    assert!(matches!(
        manage::delete_tenant(&r, "acme").await.unwrap_err(),
        ApiError::ResourceNotFound(_)
    ));
    let e = manage::create_client(&r, new_client("acme"))
        .await
        .err()
        .unwrap();
    // A client of a deleted tenant clashes with the registry's state.
    assert!(matches!(e, ApiError::Conflict(_)), "{e:?}");
}

async fn shared(server: &RedisServer) -> Registry {
    let (t, c) = config();
    let r = Registry::new(&t, &c, Some(Redis::new(&server.config("t:")).unwrap()), 1).unwrap();
    assert!(!r.fresh(), "not trusted before the first sync");
    r.sync().await.unwrap();
    assert!(r.fresh());
    r
}

#[tokio::test]
async fn two_replicas_share_changes_and_revocations_through_redis() {
    let server = RedisServer::start();
    let (a, b) = (shared(&server).await, shared(&server).await);
    assert!(
        check(&b, "c1", "correct horse battery").is_some(),
        "seeded once, read by both"
    );

    let tenant: NewTenant =
        serde_json::from_value(serde_json::json!({"id": "globex", "priority": "low"})).unwrap();
    manage::create_tenant(&a, tenant.clone()).await.unwrap();
    assert!(
        matches!(
            manage::create_tenant(&b, tenant).await.unwrap_err(),
            ApiError::Conflict(_)
        ),
        "B writes against Redis, not its possibly stale view"
    );
    b.sync().await.unwrap();
    let created = manage::create_client(&b, new_client("globex"))
        .await
        .unwrap();
    a.sync().await.unwrap();
    let id = created.record.id.as_str();
    assert!(check(&a, id, &created.secret).is_some());

    let now = crate::auth::jwt::now_secs();
    a.revoke("jti-1", now + 600, now).await.unwrap();
    assert!(
        b.admit(id, "globex", 0, "jti-1").is_ok(),
        "B has not synced yet"
    );
    b.sync().await.unwrap();
    assert_eq!(
        b.admit(id, "globex", 0, "jti-1").unwrap_err(),
        Refused::Revoked
    );
    let ttl: i64 = server_ttl(&server, "t:{reg}:revoked:jti-1").await;
    assert!(ttl > 0, "a revoked jti lives in Redis with a TTL");
}

async fn server_ttl(server: &RedisServer, key: &str) -> i64 {
    let r = Redis::new(&server.config("")).unwrap();
    r.query(redis::cmd("TTL").arg(key)).await.unwrap()
}

#[tokio::test]
async fn an_unreachable_redis_fails_closed_and_a_restart_reseeds() {
    let mut server = RedisServer::start();
    let r = shared(&server).await;
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = r.sync().await;
        if r.admit("c1", "acme", 0, "j").err() == Some(Refused::Unavailable) {
            break;
        }
        assert!(Instant::now() < deadline, "never went unavailable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.sync().await.is_err() {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        r.admit("c1", "acme", 0, "j").is_ok(),
        "config entries seeded again"
    );
}
