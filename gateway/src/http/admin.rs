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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tollgate_shared::config::valid_id;
use utoipa::{IntoParams, ToSchema};

use super::audit_api::admin;
use super::oauth::record;
use crate::app::Gateway;
use crate::auth::Caller;
use crate::auth::manage::{self, Shown, scope_list};
use crate::auth::model::{
    ClientPatch, ClientRecord, ClientView, NewClient, NewTenant, TenantPatch, TenantView,
};
use crate::error::ApiError;
use tollgate_shared::openai::ErrorEnvelope;

/// Admin bodies are small; anything bigger is not one.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body of exactly the accepted fields; the refused field is named.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    if !crate::validate::is_object(bytes) {
        return Err(ApiError::invalid(
            "invalid request body: expected a JSON object",
        ));
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

/// A list answer: `{"object": "list", "data": [...]}`.
#[derive(Serialize, ToSchema)]
pub struct List<T> {
    /// `list`
    #[schema(value_type = String)]
    pub object: &'static str,
    pub data: Vec<T>,
}

pub fn list<T>(data: Vec<T>) -> List<T> {
    List {
        object: "list",
        data,
    }
}

/// The answer to a deletion.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    /// `tenant` or `client`
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: String,
    pub deleted: bool,
}

/// A client with its new secret: the answer to a creation or a rotation,
/// the only time the secret is shown.
#[derive(Serialize, ToSchema)]
pub struct ClientWithSecret {
    #[serde(flatten)]
    pub client: ClientView,
    pub client_secret: String,
}

/// An answer that carries a secret: never cached anywhere.
fn with_secret(status: StatusCode, shown: &Shown<ClientRecord>) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((PRAGMA, "no-cache"))
        .json(ClientWithSecret {
            client: shown.record.view(),
            client_secret: shown.secret.clone(),
        })
}

/// A change as the audit record's detail tells it.
fn shown<T: Serialize>(view: &T) -> String {
    serde_json::to_string(view).unwrap_or_default()
}

#[utoipa::path(
    get,
    path = "/v1/admin/tenants",
    tag = "admin",
    responses((status = 200, description = "every tenant", body = List<TenantView>)),
    security(("bearer" = ["admin"])),
)]
pub async fn list_tenants(
    req: HttpRequest,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    Ok(HttpResponse::Ok().json(list(
        gw.registry.tenants().iter().map(|t| t.view()).collect(),
    )))
}

#[utoipa::path(
    get,
    path = "/v1/admin/tenants/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "the tenant's id")),
    responses(
        (status = 200, description = "the tenant", body = TenantView),
        (status = 404, description = "no such tenant", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn get_tenant(
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

#[utoipa::path(
    post,
    path = "/v1/admin/tenants",
    tag = "admin",
    request_body = NewTenant,
    responses(
        (status = 201, description = "created", body = TenantView),
        (status = 409, description = "a tenant with this id exists", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn create_tenant(
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

#[utoipa::path(
    patch,
    path = "/v1/admin/tenants/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "the tenant's id")),
    request_body = TenantPatch,
    responses(
        (status = 200, description = "changed", body = TenantView),
        (status = 404, description = "no such tenant", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn patch_tenant(
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
        format!("tenant {} changed: {}", t.id, shown(&t.view())),
    );
    Ok(HttpResponse::Ok().json(t.view()))
}

#[utoipa::path(
    delete,
    path = "/v1/admin/tenants/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "the tenant's id")),
    responses(
        (status = 200, description = "deleted", body = Deleted),
        (status = 404, description = "no such tenant", body = ErrorEnvelope),
        (status = 409, description = "the tenant still has clients", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn delete_tenant(
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
    Ok(HttpResponse::Ok().json(Deleted {
        object: "tenant",
        id: t.id,
        deleted: true,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClientFilter {
    /// Only the clients of this tenant.
    tenant: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/clients",
    tag = "admin",
    params(ClientFilter),
    responses((status = 200, description = "the clients", body = List<ClientView>)),
    security(("bearer" = ["admin"])),
)]
pub async fn list_clients(
    req: HttpRequest,
    q: web::Query<ClientFilter>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    let clients = gw.registry.clients(q.tenant.as_deref());
    Ok(HttpResponse::Ok().json(list(clients.iter().map(|c| c.view()).collect())))
}

fn find_client(gw: &Gateway, id: &str) -> Result<ClientRecord, ApiError> {
    path_id(id, "client")?;
    gw.registry
        .clients(None)
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("no client `{id}`")))
}

#[utoipa::path(
    get,
    path = "/v1/admin/clients/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "the client's id")),
    responses(
        (status = 200, description = "the client", body = ClientView),
        (status = 404, description = "no such client", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn get_client(
    req: HttpRequest,
    id: web::Path<String>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    Ok(HttpResponse::Ok().json(find_client(&gw, &id)?.view()))
}

#[utoipa::path(
    post,
    path = "/v1/admin/clients",
    tag = "admin",
    request_body = NewClient,
    responses(
        (status = 201, description = "created; the secret is shown this once", body = ClientWithSecret),
        (status = 409, description = "a client with this id exists, or its tenant does not", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn create_client(
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

#[utoipa::path(
    patch,
    path = "/v1/admin/clients/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "the client's id")),
    request_body = ClientPatch,
    responses(
        (status = 200, description = "changed; `disabled: true` kills its live tokens", body = ClientView),
        (status = 404, description = "no such client", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn patch_client(
    req: HttpRequest,
    id: web::Path<String>,
    raw: Bytes,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&req, &gw)?;
    path_id(&id, "client")?;
    let patch: ClientPatch = body(&raw)?;
    let (before, after) = manage::patch_client(&gw.registry, &id, patch).await?;
    let mut detail = format!("client {} changed: {}", after.id, shown(&after.view()));
    if after.disabled && !before.disabled {
        detail.push_str("; disabled, its live tokens are refused");
    }
    changed(&req, &gw, &caller, &after.tenant, detail);
    Ok(HttpResponse::Ok().json(after.view()))
}

#[utoipa::path(
    delete,
    path = "/v1/admin/clients/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "the client's id")),
    responses(
        (status = 200, description = "deleted; its live tokens are refused", body = Deleted),
        (status = 404, description = "no such client", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn delete_client(
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
    Ok(HttpResponse::Ok().json(Deleted {
        object: "client",
        id: c.id,
        deleted: true,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/admin/clients/{id}/rotate-secret",
    tag = "admin",
    params(("id" = String, Path, description = "the client's id")),
    responses(
        (status = 200, description = "a new secret, shown this once; the old one and its tokens stop working", body = ClientWithSecret),
        (status = 404, description = "no such client", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn rotate_secret(
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
