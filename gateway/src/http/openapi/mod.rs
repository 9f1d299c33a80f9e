//! `GET /openapi.json`: the OpenAPI 3.1 description of this gateway's API.
//!
//! The document is derived from the code: operations from the handlers'
//! `#[utoipa::path]` attributes, bodies from the wire types' `ToSchema`.
//! Then [`build`] fits it to what this gateway enforces, from the same
//! constants its checks use: ranges and lengths, the rules that tie two
//! fields together, the served model, the vLLM extras the operator allows,
//! and the error answers every authenticated or body-carrying route can
//! give. It is built once at start and served as is.
//!
//! - `rules`: the bounds and cross-field rules, from the checks' constants
//! - this file: the derived document, and how it is fitted and served

use actix_web::{HttpResponse, web};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tollgate_shared::config::{Config, ID_PATTERN};
use tollgate_shared::openai::VLLM_EXTRA_FIELDS;
use utoipa::OpenApi;

use super::{ALIASES, admin, audit_api, dashboard, fleet, health, inference, jwks, metrics};
use super::{oauth, usage};
use crate::app::Gateway;
use crate::audit::MAX_LIMIT;
use rules::{bounds, schema_rules};

mod rules;

const DESCRIPTION: &str = "\
Tollgate is an OpenAI-compatible gateway in front of vLLM. Get an access token \
from `POST /oauth/token` (OAuth 2.0 client credentials) and send it as \
`Authorization: Bearer …`; each operation names the scope it needs (`infer`, \
`admin`, `dev`). Errors on `/v1/*` use OpenAI's shape \
`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`; the token endpoints answer \
RFC 6749 §5.2 errors `{\"error\", \"error_description\"}`.\n\n\
Inference bodies are refused with 400 also for what a schema cannot say of \
every value: a key repeated in one object (`duplicate_key`), nesting deeper \
than 32 levels, a NUL character in any string, more prompt characters in all \
than `guardrails.max_prompt_chars`, a prompt plus `max_tokens` beyond the \
model's context (`context_length_exceeded`), or a prompt the operator's deny \
patterns refuse (`prompt_rejected`). A body larger than `gateway.max_body_bytes` \
is refused with 413.";

#[derive(OpenApi)]
#[openapi(
    info(title = "Tollgate", description = DESCRIPTION),
    paths(
        oauth::token,
        oauth::revoke,
        jwks::jwks,
        inference::models,
        inference::chat_completions,
        inference::completions,
        inference::generate,
        usage::own,
        usage::admin,
        admin::list_tenants,
        admin::create_tenant,
        admin::get_tenant,
        admin::patch_tenant,
        admin::delete_tenant,
        admin::list_clients,
        admin::create_client,
        admin::get_client,
        admin::patch_client,
        admin::delete_client,
        admin::rotate_secret,
        audit_api::audit,
        fleet::queues,
        fleet::workers,
        dashboard::stats,
        health::healthz,
        health::readyz,
        metrics::metrics,
        dashboard::page,
        dashboard::script,
        dashboard::style,
        document,
    ),
    tags(
        (name = "auth", description = "OAuth 2.0 client credentials, revocation, keys"),
        (name = "inference", description = "the OpenAI-compatible API (scope `infer`)"),
        (name = "usage", description = "the caller's own usage"),
        (name = "admin", description = "tenants, clients, audit, usage, the fleet (scope `admin`)"),
        (name = "operations", description = "health, metrics, the dashboard, this document"),
    )
)]
struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "this document", body = Object)),
)]
pub async fn document(gw: web::Data<Gateway>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(gw.openapi.clone())
}

/// The document for a gateway with `config`, as served.
pub fn build(config: &Config) -> Bytes {
    let (doc, missing) = fitted(config);
    if !missing.is_empty() {
        tracing::warn!(?missing, "the OpenAPI document lacks fields its rules name");
    }
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

/// The fitted document, and the `schema.property` names a rule found no
/// field for (none, unless a wire type and this file disagree).
fn fitted(config: &Config) -> (Value, Vec<String>) {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["info"]["version"] = env!("CARGO_PKG_VERSION").into();
    doc["components"]["securitySchemes"] = security_schemes();
    let mut missing = Vec::new();
    for (schema, property, rule) in bounds() {
        match property_mut(&mut doc, schema, property) {
            Some(p) => merge(p, rule),
            None => missing.push(format!("{schema}.{property}")),
        }
    }
    for (schema, rule) in schema_rules() {
        match doc["components"]["schemas"].get_mut(schema) {
            Some(s) => merge(s, rule),
            None => missing.push(schema.to_owned()),
        }
    }
    parameter_rules(&mut doc);
    optional_headers_are_not_null(&mut doc);
    served_model(&mut doc, &config.gateway.model);
    drop_unallowed_extras(&mut doc, &config.guardrails.allow_fields);
    add_aliases(&mut doc);
    add_common_errors(&mut doc);
    (doc, missing)
}

fn security_schemes() -> Value {
    json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token (a JWT) from `POST /oauth/token`, the OAuth 2.0 client credentials grant. Operations name the scope they need as the requirement's roles: `infer` (the inference API and the caller's own usage), `admin` (tenants, clients, the audit trail, everyone's usage, the fleet) or `dev` (per-stage timings on inference answers)."
        },
        "client_basic": {
            "type": "http",
            "scheme": "basic",
            "description": "Client authentication at the token endpoints: the client id and secret (RFC 6749 §2.3.1). The form fields `client_id` and `client_secret` are the alternative."
        }
    })
}

fn property_mut<'a>(doc: &'a mut Value, schema: &str, property: &str) -> Option<&'a mut Value> {
    doc.get_mut("components")?
        .get_mut("schemas")?
        .get_mut(schema)?
        .get_mut("properties")?
        .get_mut(property)
}

/// Adds `rule`'s keys to `schema`, replacing `oneOf` (a shape is restated
/// whole) and merging `allOf`.
fn merge(schema: &mut Value, rule: Value) {
    let (Some(target), Value::Object(rule)) = (schema.as_object_mut(), rule) else {
        return;
    };
    for (key, value) in rule {
        match (key.as_str(), target.get_mut(&key), value) {
            ("allOf", Some(Value::Array(have)), Value::Array(more)) => have.extend(more),
            (_, Some(Value::Object(have)), Value::Object(more)) if key != "oneOf" => {
                have.extend(more)
            }
            (_, _, value) => {
                target.insert(key, value);
            }
        }
    }
}

/// Path ids follow the id rule (any other is no such resource: 404), and
/// audit pages hold 1 to `MAX_LIMIT` records.
fn parameter_rules(doc: &mut Value) {
    each_parameter(doc, |p| match (p["in"].as_str(), p["name"].as_str()) {
        (Some("path"), Some("id")) => merge(&mut p["schema"], json!({"pattern": ID_PATTERN})),
        (Some("query"), Some("limit")) => merge(
            &mut p["schema"],
            json!({"minimum": 1, "maximum": MAX_LIMIT}),
        ),
        _ => {}
    });
}

/// Calls `f` on every parameter of every operation.
fn each_parameter(doc: &mut Value, mut f: impl FnMut(&mut Value)) {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    for item in paths.values_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            let params = op.get_mut("parameters").and_then(Value::as_array_mut);
            for p in params.into_iter().flatten() {
                f(p);
            }
        }
    }
}

/// A header is absent or has a value: `null` is not one to send.
fn optional_headers_are_not_null(doc: &mut Value) {
    each_parameter(doc, |p| {
        if p["in"] != "header" {
            return;
        }
        let inner = p["schema"]["oneOf"]
            .as_array()
            .and_then(|alts| alts.iter().find(|a| a["type"] != "null").cloned());
        if let Some(inner) = inner {
            p["schema"] = inner;
        }
    });
}

/// Only the served model is accepted (or none: it is the default).
fn served_model(doc: &mut Value, model: &str) {
    for schema in ["ChatCompletionRequest", "CompletionRequest"] {
        if let Some(p) = property_mut(doc, schema, "model") {
            p["enum"] = json!([model, null]);
        }
    }
}

/// vLLM's extras are refused unless `guardrails.allow_fields` names them:
/// the others are not part of this gateway's API.
fn drop_unallowed_extras(doc: &mut Value, allowed: &[String]) {
    for schema in ["ChatCompletionRequest", "CompletionRequest"] {
        if let Some(Value::Object(props)) =
            doc["components"]["schemas"][schema].get_mut("properties")
        {
            props.retain(|name, _| {
                !VLLM_EXTRA_FIELDS.contains(&name.as_str()) || allowed.iter().any(|a| a == name)
            });
        }
    }
}

/// Each alias serves what its path serves (operation ids kept unique).
fn add_aliases(doc: &mut Value) {
    for (alias, path) in ALIASES {
        let Some(mut item) = doc["paths"].get(*path).cloned() else {
            continue;
        };
        if let Some(ops) = item.as_object_mut() {
            for op in ops.values_mut() {
                if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                    op["operationId"] = format!("{id}_alias").into();
                }
                op["description"] = format!("An alias of `{path}`.").into();
            }
        }
        doc["paths"][*alias] = item;
    }
}

fn error_ref(schema: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{schema}")})
}

/// Adds the answers every route of a kind can give: 401, 403 and 503
/// (`auth_unavailable`) where a bearer token is read, 400 where a body or
/// a query string is, 413 where a body is. A status the operation already
/// names with another body gets both bodies.
fn add_common_errors(doc: &mut Value) {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    for item in paths.values_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for op in ops.values_mut() {
            let bearer = op["security"]
                .as_array()
                .is_some_and(|reqs| reqs.iter().any(|r| r.get("bearer").is_some()));
            let json_body = op["requestBody"]["content"]
                .get("application/json")
                .is_some();
            let query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            let mut add =
                |status: &str, what: &str| add_error(op, status, what, error_ref("ErrorEnvelope"));
            if bearer {
                add(
                    "401",
                    "a missing, malformed, expired, revoked or badly signed token",
                );
                add("403", "the token lacks the scope");
                add(
                    "503",
                    "access control is unavailable for now (`auth_unavailable`)",
                );
            }
            if json_body || query {
                add("400", "an invalid request (`invalid_request_error`)");
            }
            if json_body {
                add("413", "the body is larger than this service accepts");
            }
        }
    }
}

fn add_error(op: &mut Value, status: &str, what: &str, schema: Value) {
    let responses = &mut op["responses"];
    match responses.get_mut(status) {
        None => {
            responses[status] = json!({
                "description": what,
                "content": {"application/json": {"schema": schema}},
            });
        }
        Some(existing) => {
            let have = &mut existing["content"]["application/json"]["schema"];
            if *have == Value::Null {
                *have = schema;
            } else if *have != schema && have.get("oneOf").is_none() {
                *have = json!({"oneOf": [have.take(), schema]});
            }
        }
    }
}

/// The (method, path) pairs a document describes, methods upper-case, sorted.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().map(Map::keys).into_iter().flatten() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

/// The (method, path) pairs the gateway serves (`ROUTES`), as [`operations`] lists them.
pub fn served() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = super::ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        tollgate_shared::config::validate(
            tollgate_shared::config::RawConfig::default(),
            tollgate_shared::config::Role::Embedded,
        )
        .unwrap()
    }

    #[test]
    fn every_rule_names_a_field_that_exists() {
        let (_, missing) = fitted(&config());
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn the_document_describes_exactly_the_served_routes() {
        let (doc, _) = fitted(&config());
        assert_eq!(operations(&doc), served());
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
