//! Kommo connection endpoints (original paths where the original had them):
//!
//! * `GET /oauth/authorize` — redirects the admin to Kommo to authorise the integration;
//! * `GET /oauth/callback` — Kommo sends the admin back with a code; it is exchanged for
//!   tokens, which are stored (public: Kommo calls it; the `state` parameter, an HMAC made by
//!   `/oauth/authorize`, valid 10 minutes and for one callback, is what protects it);
//! * `GET /test-kommo-connectivity` — token state, account, latency;
//! * `GET /test-integration` — Kommo, store and n8n reachability in one JSON;
//! * `POST /create-test-note/{lead_id}` — writes a note on a lead.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::http::QueryParams;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::auth::secret_matches;
use crate::kommo::client::Account;
use crate::kommo::client::KommoClient;
use crate::kommo::oauth::TokenState;
pub use crate::n8n::N8nCheck;
use crate::state::AppState;

/// How long an authorisation started by `/oauth/authorize` may take.
const STATE_TTL_SECS: u64 = 10 * 60;
/// Store value holding the states already used (with when they were made), pruned as they
/// expire: a state is good for one callback.
const USED_STATES_KEY: &str = "oauth:used-states";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(authorize))
        .routes(routes!(callback))
        .routes(routes!(connectivity))
        .routes(routes!(integration))
        .routes(routes!(test_note))
}

/// `GET /oauth/callback`: the tokens are stored.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ok": true, "token_state": {"state": "ok"}}))]
pub struct OAuthDone {
    pub ok: bool,
    pub token_state: TokenState,
}

/// Kommo's reachability: token state, the account Kommo says we are, latency.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"configured": true, "ok": true, "token_state": {"state": "ok"},
    "account": {"id": 29876543, "name": "Minha Empresa", "subdomain": "minhaempresa"},
    "latency_ms": 182.4}))]
pub struct KommoCheck {
    pub configured: bool,
    pub ok: bool,
    pub token_state: TokenState,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub account: Option<Account>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub latency_ms: Option<f64>,
}

/// The store's reachability.
#[derive(Serialize, ToSchema)]
pub struct StorePing {
    pub ok: bool,
    /// `redis` or `embedded`.
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// Kommo, the store and n8n in one answer.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ok": false,
    "kommo": {"configured": false, "ok": false, "token_state": {"state": "not_configured"}},
    "store": {"ok": true, "backend": "embedded", "latency_ms": 0.04},
    "n8n": {"configured": false, "ok": false}}))]
pub struct IntegrationCheck {
    /// All three are reachable.
    pub ok: bool,
    pub kommo: KommoCheck,
    pub store: StorePing,
    pub n8n: N8nCheck,
}

/// The test note was written.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ok": true, "lead_id": 878244, "note_id": 4242}))]
pub struct TestNote {
    pub ok: bool,
    pub lead_id: u64,
    pub note_id: u64,
}

fn not_configured() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "kommo_not_configured",
        "Kommo is not configured (KOMMO_API_URL)",
    )
}

fn kommo(app: &AppState) -> Result<&KommoClient, ApiError> {
    app.kommo().map(|k| k.as_ref()).ok_or_else(not_configured)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cookie that binds an OAuth `state` to the browser that started the flow.
const STATE_COOKIE: &str = "conversa_oauth";

/// `<unix seconds>.<browser nonce>.<hex HMAC-SHA256(client_secret, seconds.nonce)>`:
/// verifiable without storage; the nonce is also the value of the [`STATE_COOKIE`] set on the
/// browser that asked for it.
fn make_state(secret: &str, at: u64, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{at}.{nonce}").as_bytes());
    format!("{at}.{nonce}.{}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `state` was made here, less than [`STATE_TTL_SECS`] ago, for the browser whose
/// cookie holds `cookie_nonce`.
fn state_is_valid(secret: &str, state: &str, now: u64, cookie_nonce: Option<&str>) -> bool {
    let mut parts = state.splitn(3, '.');
    let (Some(at), Some(nonce), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(at) = at.parse::<u64>() else {
        return false;
    };
    now.saturating_sub(at) <= STATE_TTL_SECS
        && cookie_nonce.is_some_and(|c| secret_matches(nonce, c))
        && secret_matches(&make_state(secret, at, nonce), state)
}

/// The nonce in the request's [`STATE_COOKIE`], if any.
fn cookie_nonce(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == STATE_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Records `state` as used; `false` when it already was. The list holds only valid states
/// (HMACs of `/oauth/authorize`), each for [`STATE_TTL_SECS`]: it stays small.
async fn claim_state(app: &AppState, state: &str) -> Result<bool, ApiError> {
    static ONE_WRITER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE_WRITER.lock().await;
    let store = app.engine().store();
    let mut used: Vec<(String, u64)> = match store.get_value(USED_STATES_KEY).await? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => Vec::new(),
    };
    let now = now_secs();
    used.retain(|(_, at)| now.saturating_sub(*at) <= STATE_TTL_SECS);
    if used.iter().any(|(s, _)| s == state) {
        return Ok(false);
    }
    let made = state
        .split_once('.')
        .and_then(|(at, _)| at.parse().ok())
        .unwrap_or(now);
    used.push((state.to_owned(), made));
    let bytes = serde_json::to_vec(&used).map_err(|e| ApiError::unavailable(e.to_string()))?;
    store.put_value(USED_STATES_KEY, &bytes).await?;
    Ok(true)
}

/// Start the Kommo authorization
///
/// Redirects the admin to Kommo to authorise the integration (OAuth authorization code flow);
/// Kommo sends them back to `/oauth/callback`.
#[utoipa::path(
    get,
    path = "/oauth/authorize",
    tag = "kommo",
    responses(
        (status = 303, description = "Redirect to Kommo's authorization page",
         headers(("location" = String, description = "Kommo's authorization URL"))),
        (status = 503, description = "Kommo or OAuth is not configured", body = ApiError, examples(
            ("kommo_not_configured" = (value = json!({"error": "kommo_not_configured", "message": "Kommo is not configured (KOMMO_API_URL)"}))),
            ("oauth_not_configured" = (value = json!({"error": "oauth_not_configured", "message": "set KOMMO_CLIENT_ID, KOMMO_CLIENT_SECRET and KOMMO_REDIRECT_URI"}))),
        )),
    ),
)]
async fn authorize(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let kommo = kommo(&app)?;
    let secret = &kommo.tokens().settings().client_secret;
    if kommo.tokens().settings().client_id.is_empty() || secret.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "oauth_not_configured",
            "set KOMMO_CLIENT_ID, KOMMO_CLIENT_SECRET and KOMMO_REDIRECT_URI",
        ));
    }
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let nonce = hex::encode(nonce);
    let state = make_state(secret, now_secs(), &nonce);
    // Lax: the cookie comes back on Kommo's top-level redirect to the callback, and only then.
    let secure = if kommo
        .tokens()
        .settings()
        .redirect_uri
        .starts_with("https://")
    {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{STATE_COOKIE}={nonce}; Path=/oauth; Max-Age={STATE_TTL_SECS}; HttpOnly; SameSite=Lax{secure}"
    );
    Ok((
        [(axum::http::header::SET_COOKIE, cookie)],
        Redirect::to(&kommo.tokens().authorize_url(&state)),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    /// The authorization code to exchange for tokens.
    code: Option<String>,
    /// The `state` made by `/oauth/authorize` (an HMAC, valid 10 minutes, for one callback).
    state: Option<String>,
    /// Set by Kommo when the admin refused.
    error: Option<String>,
}

/// OAuth callback
///
/// Kommo sends the admin back here with a code; it is exchanged for tokens, which are stored.
/// Public (Kommo calls it): the `state` parameter, made by `/oauth/authorize`, protects it.
#[utoipa::path(
    get,
    path = "/oauth/callback",
    tag = "kommo",
    params(CallbackQuery),
    responses(
        (status = 200, description = "Tokens stored", body = OAuthDone),
        (status = 400, description = "Kommo reported an error, or no `code`", body = ApiError,
         example = json!({"error": "bad_request", "message": "missing `code`", "field": "code"})),
        (status = 401, description = "Missing, forged or expired `state`", body = ApiError,
         example = json!({"error": "unauthorized", "message": "missing, forged or expired `state`: start again at /oauth/authorize"})),
        (status = 502, description = "Kommo refused the code", body = ApiError,
         example = json!({"error": "oauth_failed", "message": "token endpoint answered 400: invalid_grant"})),
        (status = 503, description = "Kommo is not configured", body = ApiError,
         example = json!({"error": "kommo_not_configured", "message": "Kommo is not configured (KOMMO_API_URL)"})),
    ),
)]
async fn callback(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    QueryParams(q): QueryParams<CallbackQuery>,
) -> Result<Json<OAuthDone>, ApiError> {
    let kommo = kommo(&app)?;
    let code = authorized_code(&app, kommo, &headers, q).await?;
    kommo
        .tokens()
        .exchange_code(&code)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "oauth_failed", e.to_string()))?;
    Ok(Json(OAuthDone {
        ok: true,
        token_state: kommo.tokens().state(),
    }))
}

/// The code of a callback that answers an authorisation this browser started here, less than
/// [`STATE_TTL_SECS`] ago, and that no callback used before.
async fn authorized_code(
    app: &AppState,
    kommo: &KommoClient,
    headers: &axum::http::HeaderMap,
    q: CallbackQuery,
) -> Result<String, ApiError> {
    if let Some(error) = q.error {
        return Err(ApiError::bad_field("error", format!("Kommo said: {error}")));
    }
    let secret = &kommo.tokens().settings().client_secret;
    let nonce = cookie_nonce(headers);
    if !q
        .state
        .as_deref()
        .is_some_and(|s| state_is_valid(secret, s, now_secs(), nonce.as_deref()))
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, forged or expired `state`, or another browser than the one that started: start again at /oauth/authorize",
        ));
    }
    let code = q
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_field("code", "missing `code`"))?;
    let state = q.state.as_deref().unwrap_or_default();
    if !claim_state(app, state).await? {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this `state` was already used: start again at /oauth/authorize",
        ));
    }
    Ok(code)
}

/// Kommo connectivity
///
/// Token state, the account Kommo says we are, and how long it took. Always 200: `ok` says
/// whether Kommo answered.
#[utoipa::path(
    get,
    path = "/test-kommo-connectivity",
    tag = "kommo",
    responses((status = 200, description = "Kommo's reachability", body = KommoCheck)),
)]
async fn connectivity(State(app): State<AppState>) -> Json<KommoCheck> {
    Json(kommo_check(&app).await)
}

async fn kommo_check(app: &AppState) -> KommoCheck {
    let Some(kommo) = app.kommo() else {
        return KommoCheck {
            configured: false,
            ok: false,
            token_state: TokenState::NotConfigured,
            account: None,
            error: None,
            latency_ms: None,
        };
    };
    let started = Instant::now();
    let account = kommo.account().await;
    let latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    let token_state = kommo.tokens().state();
    match account {
        Ok(a) => KommoCheck {
            configured: true,
            ok: true,
            token_state,
            account: Some(a),
            error: None,
            latency_ms,
        },
        Err(e) => KommoCheck {
            configured: true,
            ok: false,
            token_state,
            account: None,
            error: Some(e.to_string()),
            latency_ms,
        },
    }
}

/// Integration check
///
/// Kommo, the store and n8n in one answer. Always 200: `ok` says whether all three answered.
#[utoipa::path(
    get,
    path = "/test-integration",
    tag = "kommo",
    responses((status = 200, description = "Reachability of Kommo, the store and n8n", body = IntegrationCheck)),
)]
async fn integration(State(app): State<AppState>) -> Json<IntegrationCheck> {
    let kommo = kommo_check(&app).await;
    let started = Instant::now();
    let backend = app.engine().store().backend().to_owned();
    let store = match app.engine().store().ping().await {
        Ok(()) => StorePing {
            ok: true,
            backend,
            latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            error: None,
        },
        Err(e) => StorePing {
            ok: false,
            backend,
            latency_ms: None,
            error: Some(e.to_string()),
        },
    };
    let n8n = n8n_check(&app).await;
    Json(IntegrationCheck {
        ok: kommo.ok && store.ok && n8n.ok,
        kommo,
        store,
        n8n,
    })
}

/// How long one n8n probe answers for: `/ready` takes no credential, so without this every
/// call would make an outbound request.
const N8N_PROBE_FRESH: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest a caller waits for a probe: only the very first one is waited for; later ones
/// run in the background while callers get the last answer (a health check has 3 s in all).
const N8N_FIRST_PROBE: std::time::Duration = std::time::Duration::from_secs(1);
/// A background probe's own bound.
const N8N_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether n8n answers (its `/healthz` on the webhook URL's host), probed at most once per
/// [`N8N_PROBE_FRESH`] whatever the number of callers, and never waited for more than
/// [`N8N_FIRST_PROBE`]: a stale answer is served while a new probe runs in the background.
pub async fn n8n_check(app: &AppState) -> N8nCheck {
    use std::sync::atomic::Ordering;
    let cache = &app.0.n8n_probe;
    let last = cache.last.lock().unwrap().clone();
    match last {
        Some((at, answer)) if at.elapsed() < N8N_PROBE_FRESH => answer,
        Some((_, answer)) => {
            if !cache.running.swap(true, Ordering::AcqRel) {
                let app = app.clone();
                tokio::spawn(async move {
                    let fresh = n8n_probe(&app, N8N_PROBE_TIMEOUT).await;
                    let cache = &app.0.n8n_probe;
                    *cache.last.lock().unwrap() = Some((Instant::now(), fresh));
                    cache.running.store(false, Ordering::Release);
                });
            }
            answer
        }
        None => {
            let _first = cache.first.lock().await;
            if let Some((_, answer)) = cache.last.lock().unwrap().clone() {
                return answer;
            }
            let answer = n8n_probe(app, N8N_FIRST_PROBE).await;
            *cache.last.lock().unwrap() = Some((Instant::now(), answer.clone()));
            answer
        }
    }
}

async fn n8n_probe(app: &AppState, bound: std::time::Duration) -> N8nCheck {
    let Some(url) = app.0.n8n_webhook_url.as_deref() else {
        return N8nCheck::default();
    };
    let unreachable = |error: String| N8nCheck {
        configured: true,
        error: Some(error),
        ..N8nCheck::default()
    };
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return unreachable("N8N_WEBHOOK_URL is not a URL".into());
    };
    let health = format!("{}://{}/healthz", parsed.scheme(), parsed.authority());
    let started = Instant::now();
    match app.0.http.get(&health).timeout(bound).send().await {
        Ok(r) => N8nCheck {
            configured: true,
            ok: true,
            status: Some(r.status().as_u16()),
            latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            error: None,
        },
        Err(e) => unreachable(crate::redact::client_error(e)),
    }
}

/// Write a test note
///
/// Writes a note on a lead, to check the Kommo connection end to end.
#[utoipa::path(
    post,
    path = "/create-test-note/{lead_id}",
    tag = "kommo",
    params(("lead_id" = String, Path, pattern = r"^[ \t\n\r]*0*[1-9][0-9]{0,14}[ \t\n\r]*$", description = "A Kommo lead id (1 to 15 digits)", example = "878244")),
    responses(
        (status = 201, description = "The note was written", body = TestNote),
        (status = 400, description = "`lead_id` is not a positive integer", body = ApiError,
         example = json!({"error": "bad_request", "message": "lead_id must be a positive integer", "field": "lead_id"})),
        (status = 502, description = "Kommo refused or failed", body = ApiError,
         example = json!({"error": "kommo_error", "message": "Kommo answered 404 for leads/878244/notes"})),
        (status = 503, description = "Kommo is not configured", body = ApiError,
         example = json!({"error": "kommo_not_configured", "message": "Kommo is not configured (KOMMO_API_URL)"})),
    ),
)]
async fn test_note(
    State(app): State<AppState>,
    Path(lead_id): Path<String>,
) -> Result<(StatusCode, Json<TestNote>), ApiError> {
    let lead_id = crate::http::path_id("lead_id", &lead_id)?;
    let kommo = kommo(&app)?;
    let note_id = kommo
        .add_note(
            lead_id,
            "Nota de teste do conversa: a integração com o Kommo funciona.",
        )
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "kommo_error", e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(TestNote {
            ok: true,
            lead_id,
            note_id,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_state_is_verifiable_expires_and_belongs_to_one_browser() {
        let s = make_state("secret", 1_000, "n0nce");
        let mine = Some("n0nce");
        assert!(state_is_valid("secret", &s, 1_000 + 60, mine));
        assert!(!state_is_valid("other", &s, 1_000 + 60, mine), "forged");
        assert!(
            !state_is_valid("secret", &s, 1_000 + STATE_TTL_SECS + 1, mine),
            "expired"
        );
        assert!(!state_is_valid("secret", &s, 1_060, None), "no cookie");
        assert!(
            !state_is_valid("secret", &s, 1_060, Some("other")),
            "another browser"
        );
        assert!(!state_is_valid(
            "secret",
            "1000.n0nce.deadbeef",
            1_001,
            mine
        ));
        assert!(!state_is_valid("secret", "garbage", 1_001, mine));
    }

    #[test]
    fn the_state_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; conversa_oauth=abc123; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_nonce(&h).as_deref(), Some("abc123"));
        assert_eq!(cookie_nonce(&axum::http::HeaderMap::new()), None);
    }
}
