//! The OpenAPI document, generated from the code.
//!
//! Every handler carries a `#[utoipa::path(...)]` annotation and is registered with
//! `OpenApiRouter::routes(routes!(handler))`, which adds the route to the axum router *and* the
//! operation to the document in one call: the router and the document cannot disagree (see
//! [`crate::app::router_and_doc`]). On top of the annotations, [`finish`] applies what is true of
//! every operation by construction of the middleware:
//!
//! * the `api_key` bearer scheme and a `401` on every path [`is_public`] does not list — the
//!   same function the middleware asks, so the document says exactly what is enforced;
//! * `413 payload_too_large` on every operation with a body, `415 unsupported_media_type` on
//!   every JSON-only body, and a `default` error response (408, 500...) with the `ApiError`
//!   shape everywhere.
//!
//! Served at `GET /openapi.json`; `GET /docs` is Swagger UI from assets compiled into the
//! binary (`utoipa-swagger-ui` with `vendored`: nothing is fetched at build or run time).

use axum::Router;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder, SecurityRequirement};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::error::ApiError;
use crate::http::layers::is_public;
use crate::state::AppState;

/// The operator API key (`API_KEY`), as `Authorization: Bearer <key>`.
pub const API_KEY: &str = "api_key";
/// n8n's callback token (`N8N_CALLBACK_TOKEN`), as `Authorization: Bearer <token>`.
pub const N8N_CALLBACK: &str = "n8n_callback";
/// A dispatch's own reply token, as the `reply_token` query parameter of its `callback_url`.
pub const REPLY_TOKEN: &str = "reply_token";
/// The Kommo webhook secret (`WEBHOOK_SECRET`) as the `token` query parameter.
pub const WEBHOOK_TOKEN: &str = "webhook_token";

/// Where the document and the UI are served.
pub const OPENAPI_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

const DESCRIPTION: &str = "\
The stateful engine between **Kommo CRM** (WhatsApp conversations), **n8n** (the AI workflows) \
and the **sellers**. Every contact's conversation is one serialized, durable state machine.

The flows, with curl, configuration and guarantees are in the project's README.md \
(section *HTTP API*); this document is generated from the code and lists every route the \
service has.

**Authentication.** With `API_KEY` set, every operation marked with the `api_key` scheme needs \
`Authorization: Bearer $API_KEY`; a missing or wrong key answers `401` \
`{\"error\": \"unauthorized\"}`. The probes, these docs, the Kommo webhook (`webhook_token`: \
`?token=$WEBHOOK_SECRET`, or the secret as the last path segment), n8n's callback \
(`reply_token`: the `?reply_token=` of the dispatch's `callback_url`, or `n8n_callback`: \
`Authorization: Bearer $N8N_CALLBACK_TOKEN`) and the OAuth callback have their own secrets.

**Errors** are always JSON, the `ApiError` schema: \
`{\"error\": \"bad_request\", \"message\": \"...\", \"field\": \"command\"}`. \
`503 {\"error\": \"store_unavailable\"}` when the store cannot be reached or did not answer in \
time: the change is not known to be applied (a write the store was slow to take may still land), \
and retrying the same request is always safe. `413 payload_too_large`, `415 \
unsupported_media_type`, `408 timeout`, `405 method_not_allowed`, `414 uri_too_long`, `431 \
headers_too_large`, `500 internal` come from the middleware with the same shape; beyond \
`MAX_CONNECTIONS` a connection gets `503 too_many_connections`.";

#[derive(OpenApi)]
#[openapi(
    info(title = "conversa", description = DESCRIPTION),
    modifiers(&SecuritySchemes),
    components(schemas(ApiError), responses(crate::error::StoreUnavailable)),
    tags(
        (name = "probes", description = "Liveness, readiness, version, statistics, metrics"),
        (name = "webhooks", description = "Kommo webhooks in, and n8n's callback with the AI's reply"),
        (name = "conversations", description = "Conversations, their phase and timeline; pausing the bot"),
        (name = "sellers", description = "Seller commands and the sellers directory"),
        (name = "flows", description = "Proactive conversations and scheduling requests"),
        (name = "kommo", description = "The Kommo connection: OAuth, connectivity checks, test note"),
        (name = "docs", description = "This document and its interactive UI"),
    )
)]
struct ApiDoc;

/// What a body's type alone cannot say: keys that are aliases of each other (one of a pair),
/// "at least one of", "not blank". Each rule is added to the served document's schema as
/// `allOf` [the type's schema, the rule], so the document accepts exactly what the handlers
/// accept. (Applied to the JSON: utoipa's schema model has no `not`.)
pub fn request_rules(doc: &mut serde_json::Value) {
    use crate::kommo::id::ID_OR_BLANK_PATTERN as ID_OR_BLANK;
    use serde_json::json;
    let not_blank = json!({"not": {"type": "string", "pattern": "^\\s*$"}});
    let one_of_pair = |a: &str, b: &str| json!({"not": {"required": [a, b]}});
    let present =
        |key: &str| json!({"required": [key], "properties": {key: {"not": {"type": "null"}}}});
    let rules = [
        (
            "AddSeller",
            json!({"allOf": [
                one_of_pair("name", "nome"),
                one_of_pair("phone", "telefone"),
                one_of_pair("areas", "areas_atuacao"),
                one_of_pair("areas", "area_atuacao"),
                one_of_pair("areas_atuacao", "area_atuacao"),
                {"anyOf": [
                    {"required": ["name"], "properties": {"name": {"type": "string", "pattern": "\\S"}}},
                    {"required": ["nome"], "properties": {"nome": {"type": "string", "pattern": "\\S"}}},
                ]},
            ]}),
        ),
        (
            "AttachWhatsApp",
            json!({"anyOf": [
                present("contact_id"),
                {"required": ["phone"], "properties": {"phone": {"allOf": [{"not": {"type": "null"}}, not_blank]}}},
            ]}),
        ),
        (
            "Callback",
            json!({"anyOf": [
                {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "pattern": "\\S"}}},
                {"type": "object", "required": ["messages"], "properties": {"messages": {"contains": {"anyOf": [
                    {"type": "string", "pattern": "\\S"},
                    {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "pattern": "\\S"}}},
                ]}}}},
                {"type": "object", "required": ["scheduling"], "properties": {"scheduling": {"type": "object"}}},
            ]}),
        ),
        (
            "CommandBody",
            json!({"allOf": [
                {"anyOf": [present("message"), present("mensagem")]},
                {"not": {"allOf": [present("message"), present("mensagem")]}},
                {"properties": {
                    "message": {"pattern": crate::flows::commands::PATTERN},
                    "mensagem": {"pattern": crate::flows::commands::PATTERN},
                }},
            ]}),
        ),
        (
            "SchedulingRequest",
            json!({"anyOf": [present("contact_id"), present("talk_id"), present("lead_id")]}),
        ),
        // A webhook has at least one entity with something below it; `account[id]` follows
        // the id rule (blank is absent); a form key is at most 11 brackets deep.
        (
            "KommoWebhookJson",
            json!({"type": "object",
            "not": {"additionalProperties": {"not": {"anyOf": [
                {"type": "object", "not": {"additionalProperties": {"type": "null"}}},
                {"type": "array", "contains": {"not": {"type": "null"}}},
            ]}}},
            "properties": {"account": {"anyOf": [
                {"not": {"type": "object"}},
                {"properties": {"id": {"anyOf": [
                    {"type": ["null", "object", "array"]},
                    {"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_u64},
                    {"type": "string", "pattern": ID_OR_BLANK},
                ]}}},
            ]}}}),
        ),
        (
            "KommoWebhookForm",
            json!({"type": "object",
            "additionalProperties": {"type": "string"},
            "maxProperties": crate::kommo::webhook::MAX_PAIRS,
            "propertyNames": {"not": {"pattern": "^[^\\[]*(\\[[^\\]]*\\]){12}"}},
            "not": {"propertyNames": {"not": {"pattern": "^[^\\[]+\\[[^\\]]*\\]"}}},
            "patternProperties": {"^account\\[id\\]($|[^\\[]|\\[[^\\]]*$)": {"type": "string", "pattern": ID_OR_BLANK}}}),
        ),
    ];
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for (name, mut rule) in rules {
        open_properties(&mut rule);
        if let Some(schema) = schemas.remove(name) {
            schemas.insert(name.to_owned(), json!({"allOf": [schema, rule]}));
        }
    }
}

/// A rule speaks of some keys only: the others are left to the type's schema (JSON Schema's
/// default, said out loud for readers of the document that assume closed objects).
fn open_properties(rule: &mut serde_json::Value) {
    match rule {
        serde_json::Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), serde_json::Value::Bool(true));
            }
            map.values_mut().for_each(open_properties);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(open_properties),
        _ => {}
    }
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            API_KEY,
            bearer("`API_KEY`: every operator endpoint, when the key is set"),
        );
        components.add_security_scheme(
            N8N_CALLBACK,
            bearer("`N8N_CALLBACK_TOKEN`: n8n's callback `/send-response` (instead of the reply token)"),
        );
        components.add_security_scheme(
            REPLY_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "reply_token",
                "The dispatch's reply token, as conversa put it in the `callback_url` it sent \
                 to n8n; it proves the reply answers that dispatch of that contact",
            ))),
        );
        components.add_security_scheme(
            WEBHOOK_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "`WEBHOOK_SECRET` as `?token=`, when the secret is set (or use \
                 `/webhooks/kommo/{secret}`)",
            ))),
        );
    }
}

/// The document before the routes are added: info, tags, security schemes.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /docs`: Swagger UI, from the assets compiled into the binary, reading `/openapi.json`.
/// (`/docs` redirects to `/docs/`; the assets are under `/docs/`.)
pub fn docs_ui() -> Router<AppState> {
    let config = Config::new([OPENAPI_PATH])
        // The public validator badge would call validator.swagger.io: the UI stays offline.
        .validator_url("none")
        .persist_authorization(true)
        .display_request_duration(true)
        .filter(true)
        .try_it_out_enabled(false);
    Router::from(SwaggerUi::new(DOCS_PATH).config(config))
}

/// `GET /docs`, served by Swagger UI's own router (not `routes!`), described here.
fn docs_operation() -> PathItem {
    let html = ContentBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("text/html"),
        ))
        .build();
    let operation = OperationBuilder::new()
        .tag("docs")
        .operation_id(Some("docs"))
        .summary(Some("Interactive documentation"))
        .description(Some(
            "This page: Swagger UI, from assets compiled into the binary (nothing is loaded \
             from the internet). `/docs` redirects to `/docs/`; it reads `/openapi.json`.",
        ))
        .response(
            "303",
            ResponseBuilder::new()
                .description("Redirect to `/docs/`")
                .header(
                    "location",
                    HeaderBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .description(Some("`/docs/`"))
                        .build(),
                ),
        )
        .response(
            "200",
            ResponseBuilder::new()
                .description("`/docs/`: the Swagger UI page")
                .content("text/html", html),
        )
        .build();
    PathItem::new(HttpMethod::Get, operation)
}

/// Applies what holds for every operation by construction (see the module docs).
pub fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    doc.paths
        .paths
        .entry(DOCS_PATH.to_owned())
        .or_insert_with(docs_operation);
    let mut used = Vec::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = is_public(&concrete(path));
        for (_, op) in operations_mut(item) {
            let responses = &mut op.responses.responses;
            let mut add = |status: &str, name: &'static str| {
                if !responses.contains_key(status) {
                    responses.insert(status.to_owned(), RefOr::Ref(Ref::from_response_name(name)));
                    used.push(name);
                }
            };
            if !public {
                add("401", "Unauthorized");
            }
            if let Some(body) = &op.request_body {
                add("413", "PayloadTooLarge");
                let json_only = match body {
                    RefOr::T(body) => {
                        body.content.len() == 1 && body.content.contains_key("application/json")
                    }
                    RefOr::Ref(_) => false,
                };
                if json_only {
                    add("415", "UnsupportedMediaType");
                }
            }
            add("default", "OtherError");
            if !public {
                op.security = Some(vec![SecurityRequirement::new(
                    API_KEY,
                    Vec::<String>::new(),
                )]);
            }
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    for name in used {
        components
            .responses
            .entry(name.to_owned())
            .or_insert_with(|| RefOr::T(common_response(name)));
    }
    doc
}

/// The path with every `{param}` replaced by `1`: what a request to it looks like.
pub fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "1"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every operation of a path item with its method, in a fixed order.
pub fn operations_mut(item: &mut PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, item.get.as_mut()),
        (HttpMethod::Put, item.put.as_mut()),
        (HttpMethod::Post, item.post.as_mut()),
        (HttpMethod::Delete, item.delete.as_mut()),
        (HttpMethod::Options, item.options.as_mut()),
        (HttpMethod::Head, item.head.as_mut()),
        (HttpMethod::Patch, item.patch.as_mut()),
        (HttpMethod::Trace, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.map(|op| (method, op)))
    .collect()
}

fn error_response(description: &str, example: serde_json::Value) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ApiError")))
                .example(Some(example))
                .build(),
        )
        .build()
}

fn common_response(name: &str) -> Response {
    match name {
        "Unauthorized" => error_response(
            "Missing or wrong `Authorization: Bearer $API_KEY`",
            serde_json::json!({"error": "unauthorized", "message": "missing `Authorization: Bearer <token>`"}),
        ),
        "PayloadTooLarge" => error_response(
            "The body is larger than `MAX_BODY_BYTES`",
            serde_json::json!({"error": "payload_too_large", "message": "request body too large"}),
        ),
        "UnsupportedMediaType" => error_response(
            "The body is not `content-type: application/json`",
            serde_json::json!({"error": "unsupported_media_type", "message": "Expected request with `Content-Type: application/json`"}),
        ),
        _ => error_response(
            "Any other error, with the same JSON shape: `408 timeout`, `500 internal` (e.g. the \
             contact's actor failed; other contacts are unaffected)...",
            serde_json::json!({"error": "internal", "message": "internal error"}),
        ),
    }
}
