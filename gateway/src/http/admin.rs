//! The registry's admin API (scope `admin`): `/v1/admin/tenants` and
//! `/v1/admin/clients`, each with `GET/PATCH/DELETE .../{id}`, and
//! `POST /v1/admin/clients/{id}/rotate-secret`. Bodies name only the fields
//! an admin may set; anything else (a `secret_hash`, say) is refused with 400.
//! A client's secret is in the answer to its creation or rotation, once.
//! Every change leaves an `admin_change` audit record.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, PRAGMA};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tollgate_shared::config::valid_id;

use super::audit_api::admin;
use super::oauth::record;
use crate::app::Gateway;
use crate::auth::Caller;
use crate::auth::manage::{self, Shown, scope_list};
use crate::auth::model::{ClientPatch, ClientRecord, NewClient, NewTenant, TenantPatch};
use crate::error::ApiError;

/// Admin bodies are small; anything bigger is not one.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    let na = || web::to(super::method_not_allowed);
    cfg.service(
        web::resource("/v1/admin/tenants")
            .route(web::get().to(list_tenants))
            .route(web::post().to(create_tenant))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/admin/tenants/{id}")
            .route(web::get().to(get_tenant))
            .route(web::patch().to(patch_tenant))
            .route(web::delete().to(delete_tenant))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/admin/clients")
            .route(web::get().to(list_clients))
            .route(web::post().to(create_client))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/admin/clients/{id}")
            .route(web::get().to(get_client))
            .route(web::patch().to(patch_client))
            .route(web::delete().to(delete_client))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/admin/clients/{id}/rotate-secret")
            .route(web::post().to(rotate_secret))
            .default_service(na()),
    );
}

/// A JSON body of exactly the accepted fields; the refused field is named.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        // serde names the offending field between backticks: "unknown field `secret_hash`, ...".
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("unknown field"))
            .map(str::to_owned);
        match field {
            Some(f) => {
                ApiError::invalid_param(&f.clone(), format!("`{f}` cannot be set here: {message}"))
            }
            None => ApiError::invalid(format!("invalid request body: {message}")),
        }
    })
}

fn path_id(id: &str, kind: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::ResourceNotFound(format!(
            "no {kind} `{}`",
            id.chars().take(64).collect::<String>()
        )))
    }
}

/// Records an admin change: who made it (`client_id`) and what it was (`detail`).
fn changed(req: &HttpRequest, gw: &Gateway, caller: &Caller, tenant: &str, detail: String) {
    let mut r = record("admin_change", req);
    r.client_id = Some(caller.client_id.to_string());
    r.tenant = Some(tenant.to_owned());
    r.status = Some(200);
    r.detail = Some(detail);
    gw.audit.record(r);
    tracing::info!(by = %caller.client_id, tenant, "admin change");
}

fn list(data: Vec<serde_json::Value>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": data}))
}

/// An answer that carries a secret: never cached anywhere.
fn with_secret(status: StatusCode, shown: &Shown<ClientRecord>) -> HttpResponse {
    let mut v = shown.record.view();
    v["client_secret"] = shown.secret.clone().into();
    HttpResponse::build(status)
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((PRAGMA, "no-cache"))
        .json(v)
}

async fn list_tenants(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    Ok(list(
        gw.registry.tenants().iter().map(|t| t.view()).collect(),
    ))
}

async fn get_tenant(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    path_id(&id, "tenant")?;
    let t = gw
        .registry
        .tenants()
        .into_iter()
        .find(|t| t.id == *id)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("no tenant `{id}`")))?;
    Ok(HttpResponse::Ok().json(t.view()))
}

async fn create_tenant(
    req: HttpRequest,
    raw: Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&req, &gw)?;
    let new: NewTenant = body(&raw)?;
    let t = manage::create_tenant(&gw.registry, new).await?;
    changed(
        &req,
        &gw,
        &caller,
        &t.id,
        format!(
            "tenant {} created: priority {} weight {}",
            t.id,
            t.priority.as_str(),
            t.weight
        ),
    );
    Ok(HttpResponse::Created().json(t.view()))
}

async fn patch_tenant(
    req: HttpRequest,
    id: web::Path<String>,
    raw: Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&req, &gw)?;
    path_id(&id, "tenant")?;
    let patch: TenantPatch = body(&raw)?;
    let t = manage::patch_tenant(&gw.registry, &id, patch).await?;
    changed(
        &req,
        &gw,
        &caller,
        &t.id,
        format!("tenant {} changed: {}", t.id, t.view()),
    );
    Ok(HttpResponse::Ok().json(t.view()))
}

async fn delete_tenant(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&req, &gw)?;
    path_id(&id, "tenant")?;
    let t = manage::delete_tenant(&gw.registry, &id).await?;
    changed(
        &req,
        &gw,
        &caller,
        &t.id,
        format!("tenant {} deleted", t.id),
    );
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"object": "tenant", "id": t.id, "deleted": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFilter {
    tenant: Option<String>,
}

async fn list_clients(
    req: HttpRequest,
    q: web::Query<ClientFilter>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    let clients = gw.registry.clients(q.tenant.as_deref());
    Ok(list(clients.iter().map(|c| c.view()).collect()))
}

fn find_client(gw: &Gateway, id: &str) -> Result<ClientRecord, ApiError> {
    path_id(id, "client")?;
    gw.registry
        .clients(None)
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("no client `{id}`")))
}

async fn get_client(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    Ok(HttpResponse::Ok().json(find_client(&gw, &id)?.view()))
}

async fn create_client(
    req: HttpRequest,
    raw: Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&req, &gw)?;
    let new: NewClient = body(&raw)?;
    let shown = manage::create_client(&gw.registry, new).await?;
    let c = &shown.record;
    changed(
        &req,
        &gw,
        &caller,
        &c.tenant,
        format!("client {} created: scopes {}", c.id, scope_list(&c.scopes)),
    );
    Ok(with_secret(StatusCode::CREATED, &shown))
}

async fn patch_client(
    req: HttpRequest,
    id: web::Path<String>,
    raw: Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&req, &gw)?;
    path_id(&id, "client")?;
    let patch: ClientPatch = body(&raw)?;
    let (before, after) = manage::patch_client(&gw.registry, &id, patch).await?;
    let mut detail = format!("client {} changed: {}", after.id, after.view());
    if after.disabled && !before.disabled {
        detail.push_str("; disabled, its live tokens are refused");
    }
    changed(&req, &gw, &caller, &after.tenant, detail);
    Ok(HttpResponse::Ok().json(after.view()))
}

async fn delete_client(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&req, &gw)?;
    path_id(&id, "client")?;
    let c = manage::delete_client(&gw.registry, &id).await?;
    changed(
        &req,
        &gw,
        &caller,
        &c.tenant,
        format!("client {} deleted", c.id),
    );
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"object": "client", "id": c.id, "deleted": true})))
}

async fn rotate_secret(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&req, &gw)?;
    path_id(&id, "client")?;
    let shown = manage::rotate_secret(&gw.registry, &id).await?;
    let c = &shown.record;
    changed(
        &req,
        &gw,
        &caller,
        &c.tenant,
        format!(
            "client {} secret rotated; its live tokens are refused",
            c.id
        ),
    );
    Ok(with_secret(StatusCode::OK, &shown))
}
