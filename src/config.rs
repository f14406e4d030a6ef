//! Configuration: one typed struct read from environment variables and matching CLI flags.
//!
//! Every setting has a default that works on a fresh machine (`cargo run`: embedded store under
//! `./data`, loopback only). `conversa --help` lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use conversa_actors::{EngineConfig, Policy};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "conversa",
    version,
    about = "Stateful engine between Kommo CRM, n8n and sellers"
)]
pub struct Config {
    /// Address to listen on (the Docker image sets 0.0.0.0).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// Redis URL (e.g. redis://127.0.0.1:6379). Unset: the embedded store under DATA_DIR.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// A Redis Cluster instead of one server: some of its nodes, comma-separated
    /// (redis://10.0.0.1:6379,redis://10.0.0.2:6379). Set this or REDIS_URL, not both.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',')]
    pub redis_cluster_urls: Vec<String>,

    /// Redis Sentinel instead of one server: the sentinels, comma-separated
    /// (redis://10.0.0.1:26379,redis://10.0.0.2:26379); the master is the one they name
    /// REDIS_SENTINEL_MASTER. Set this, REDIS_URL or REDIS_CLUSTER_URLS: one of them.
    #[arg(long, env = "REDIS_SENTINEL_URLS", value_delimiter = ',')]
    pub redis_sentinel_urls: Vec<String>,

    /// The name the sentinels know the master by (`sentinel monitor <name> ...`).
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,

    /// The password of the master and replicas behind Sentinel (their `requirepass`). The
    /// sentinels' own password, if any, goes in REDIS_SENTINEL_URLS (redis://:password@host).
    #[arg(long, env = "REDIS_SENTINEL_MASTER_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_master_password: Option<String>,

    /// With REDIS_SENTINEL_MASTER_PASSWORD: the ACL user to log in to the master as.
    #[arg(long, env = "REDIS_SENTINEL_MASTER_USERNAME")]
    pub redis_sentinel_master_username: Option<String>,

    /// Directory of the embedded store (used when REDIS_URL is unset).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// How many replicas must hold each save before it is acknowledged (Redis WAIT): 1 or more
    /// keeps acknowledged writes through a failover, at the cost of a replica round trip per
    /// save. 0: the master's acknowledgement is enough.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Connect and response timeout for Redis commands, in milliseconds. A timeout answers 503.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,

    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// The Kommo account served (its numeric id); 0 when not configured.
    #[arg(long, env = "KOMMO_ACCOUNT_ID", default_value_t = 0)]
    pub kommo_account_id: u64,

    /// Operator and control endpoints require `Authorization: Bearer <API_KEY>` when set.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Allow listening on a non-loopback address without API_KEY (not recommended).
    #[arg(long, env = "ALLOW_INSECURE", default_value_t = false, value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_insecure: bool,

    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// The longest a request may take before it is answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// The longest the server waits for a complete request head, in seconds: a connection that
    /// sends nothing, trickles its headers, or sits idle between two requests is closed then.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Connections served at once; beyond it a connection gets an immediate 503 and is closed.
    /// Lowered at start when the open-file limit cannot hold it.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Kommo's API base, e.g. `https://sua-conta.kommo.com/api/v4/`. Unset: no Kommo calls
    /// (replies and notes wait in the outbox).
    #[arg(long, env = "KOMMO_API_URL")]
    pub kommo_api_url: Option<String>,

    /// OAuth client of the Kommo integration.
    #[arg(long, env = "KOMMO_CLIENT_ID")]
    pub kommo_client_id: Option<String>,

    #[arg(long, env = "KOMMO_CLIENT_SECRET", hide_env_values = true)]
    pub kommo_client_secret: Option<String>,

    /// Where Kommo sends the user back after authorising (this service's `/oauth/callback`).
    #[arg(long, env = "KOMMO_REDIRECT_URI")]
    pub kommo_redirect_uri: Option<String>,

    /// Seeds the stored tokens (a long-lived token works too); the store wins afterwards.
    #[arg(long, env = "KOMMO_ACCESS_TOKEN", hide_env_values = true)]
    pub kommo_access_token: Option<String>,

    #[arg(long, env = "KOMMO_REFRESH_TOKEN", hide_env_values = true)]
    pub kommo_refresh_token: Option<String>,

    /// Kommo calls per second for this account (at most 7, Kommo's limit), all engine nodes on
    /// one Redis together.
    #[arg(long, env = "KOMMO_MAX_RPS", default_value_t = 7)]
    pub kommo_max_rps: u32,

    /// Kommo requests in flight at once (the rate limit above still applies).
    #[arg(long, env = "KOMMO_MAX_CONCURRENCY", default_value_t = 4)]
    pub kommo_max_concurrency: usize,

    /// How replies reach the customer: `salesbot` (lead field + Salesbot run, needs the two
    /// ids below) or `note` (a note on the lead only: a dry run). Unset: `salesbot` when both
    /// ids are set, `note` otherwise.
    #[arg(long, env = "REPLY_CHANNEL", value_enum)]
    pub reply_channel: Option<crate::reply::Strategy>,

    /// The lead text field the Salesbot prints.
    #[arg(long, env = "KOMMO_REPLY_FIELD_ID")]
    pub kommo_reply_field_id: Option<u64>,

    /// The Salesbot whose one step sends that field to the customer.
    #[arg(long, env = "KOMMO_REPLY_BOT_ID")]
    pub kommo_reply_bot_id: Option<u64>,

    /// Leave notes on the lead for decisions a seller should see (takeover, release, ...).
    #[arg(long, env = "LEAD_NOTES", default_value_t = true, action = clap::ArgAction::Set)]
    pub lead_notes: bool,

    /// The language of those notes: `pt` (Portuguese) or `en` (English).
    #[arg(long, env = "NOTE_LANGUAGE", value_enum, default_value_t = crate::notes::Language::Pt)]
    pub note_language: crate::notes::Language,

    /// The time zone of the times in those notes (an IANA name).
    #[arg(long, env = "NOTE_TIME_ZONE", default_value = "America/Sao_Paulo", value_parser = crate::notes::parse_time_zone)]
    pub note_time_zone: jiff::tz::TimeZone,

    /// The Kommo account's subdomain; when set, webhooks from another account are refused.
    #[arg(long, env = "KOMMO_SUBDOMAIN")]
    pub kommo_subdomain: Option<String>,

    /// How often the account's webhooks are read, to register conversa's again when Kommo
    /// disabled or lost it (needs PUBLIC_URL and WEBHOOK_SECRET); 0 = never.
    #[arg(long, env = "WEBHOOK_WATCH_SECS", default_value_t = 300)]
    pub webhook_watch_secs: u64,

    /// How often Kommo's events are read for customer messages whose webhook never came (gap
    /// detection; needs Kommo); 0 = never.
    #[arg(long, env = "GAP_CHECK_SECS", default_value_t = 60)]
    pub gap_check_secs: u64,

    /// How long a customer message may wait for its webhook before it counts as missed.
    #[arg(long, env = "GAP_GRACE_SECS", default_value_t = 120)]
    pub gap_grace_secs: u64,

    /// After a restart, how far back gap detection looks at most.
    #[arg(long, env = "GAP_LOOKBACK_MINUTES", default_value_t = 60)]
    pub gap_lookback_minutes: u64,

    /// Secret the Kommo webhook URL must carry (`?token=` or `/webhooks/kommo/{secret}`).
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Practice areas that may start proactive conversations, comma-separated (compared
    /// ignoring case and accents). Unset: every area.
    #[arg(long, env = "ELIGIBLE_AREAS", value_delimiter = ',')]
    pub eligible_areas: Vec<String>,

    /// Fictitious sellers for tests and demos, as a JSON list of
    /// `{"name", "contact_id"?, "phone"?, "areas"?}`.
    #[arg(long, env = "FICTITIOUS_SELLERS")]
    pub fictitious_sellers: Option<String>,

    /// The own WhatsApp of Kommo-synced sellers, so their commands are recognised: a JSON map
    /// `{"<Kommo user id>": {"contact_id": 99999, "phone": "+55 11 98765-4321"}}`. What
    /// `POST /vendedores/{id}/whatsapp` stored wins.
    #[arg(long, env = "SELLER_WHATSAPP")]
    pub seller_whatsapp: Option<String>,

    /// How long the list of real sellers (Kommo users) is fresh, in seconds.
    #[arg(long, env = "SELLERS_TTL_SECS", default_value_t = 300)]
    pub sellers_ttl_secs: u64,

    /// A contact actor idle this long is passivated (its timers keep running).
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 600)]
    pub idle_timeout_secs: u64,

    /// Quiet time after a customer message before the burst goes to n8n; 0 = at once.
    #[arg(long, env = "DEBOUNCE_MS", default_value_t = 4000)]
    pub debounce_ms: u64,

    /// Upper bound of the debounce wait while the customer keeps typing.
    #[arg(long, env = "DEBOUNCE_MAX_MS", default_value_t = 15000)]
    pub debounce_max_ms: u64,

    /// A seller's hold returns to the bot this long after their last message; 0 = never.
    /// Fractions are allowed (0.5 = 30 s).
    #[arg(long, env = "HUMAN_LEASE_MINUTES", default_value_t = 120.0)]
    pub human_lease_minutes: f64,

    /// How long before the lease expires the seller gets a reminder note, in minutes; 0 = none.
    #[arg(long, env = "LEASE_NUDGE_MINUTES", default_value_t = 10.0)]
    pub lease_nudge_minutes: f64,

    /// A seller writing in the customer's chat (not an echo of a bot reply) takes the
    /// conversation over by itself.
    #[arg(long, env = "AUTO_TAKEOVER_ON_HUMAN_REPLY", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_takeover_on_human_reply: bool,

    /// A bot conversation with no customer message and no pending work ends after this many
    /// hours (back to `idle`); 0 = never. Fractions are allowed.
    #[arg(long, env = "CONVERSATION_IDLE_HOURS", default_value_t = 24.0)]
    pub conversation_idle_hours: f64,

    /// A dispatch or reply still waiting in the outbox this many minutes after it was queued is
    /// dropped with a note instead of reaching n8n or the customer late; 0 = no limit.
    #[arg(long, env = "MAX_EFFECT_AGE_MINUTES", default_value_t = 60.0)]
    pub max_effect_age_minutes: f64,

    /// Pause between the parts of a multi-part reply, in milliseconds (the Salesbot must send
    /// one part before the next overwrites the reply field).
    #[arg(long, env = "REPLY_PART_DELAY_MS", default_value_t = 1500)]
    pub reply_part_delay_ms: u64,

    /// How long `POST /send-response` waits for the reply channel before answering
    /// `delivered: false, reason: "queued"` (the reply stays in the outbox).
    #[arg(long, env = "REPLY_WAIT_MS", default_value_t = 5000)]
    pub reply_wait_ms: u64,

    /// The most customer messages a conversation keeps unanswered; older ones fall off.
    #[arg(long, env = "MAX_PENDING_MESSAGES", default_value_t = 50)]
    pub max_pending_messages: usize,

    /// The longest customer message kept, in bytes; a longer text is cut and marked " […]".
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 8 * 1024)]
    pub max_message_bytes: usize,

    /// The most bytes of unanswered customer messages a conversation keeps (a dispatch
    /// carries them all); the oldest fall off beyond it.
    #[arg(long, env = "MAX_PENDING_BYTES", default_value_t = 64 * 1024)]
    pub max_pending_bytes: usize,

    /// The hard cap of one contact's stored state, in bytes: a larger snapshot is trimmed
    /// (oldest messages, ids, notes and timeline entries let go, and recorded).
    #[arg(long, env = "MAX_SNAPSHOT_BYTES", default_value_t = 1024 * 1024)]
    pub max_snapshot_bytes: usize,

    /// How long n8n may take to settle a scheduling request before the bot takes over again.
    #[arg(long, env = "SCHEDULING_TIMEOUT_MINUTES", default_value_t = 30.0)]
    pub scheduling_timeout_minutes: f64,

    /// How often the store's timer index is swept (start-up recovery, other nodes' timers).
    #[arg(long, env = "TIMER_SWEEP_MS", default_value_t = 2000)]
    pub timer_sweep_ms: u64,

    /// How long a node reserves an outbox entry it executes; after a crash another takes over.
    #[arg(long, env = "OUTBOX_CLAIM_SECS", default_value_t = 30)]
    pub outbox_claim_secs: u64,

    /// The longest one attempt of an effect (n8n call, Kommo call) may take.
    #[arg(long, env = "EFFECT_TIMEOUT_SECS", default_value_t = 20)]
    pub effect_timeout_secs: u64,

    /// A failing effect is dead-lettered this long after it was queued.
    #[arg(long, env = "DEAD_LETTER_AFTER_MINUTES", default_value_t = 1440)]
    pub dead_letter_after_minutes: u64,

    /// First retry delay of a failed effect; it doubles per attempt up to `RETRY_MAX_SECS`.
    #[arg(long, env = "RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,

    /// Longest delay between two attempts of a failing effect: after an outage of n8n or Kommo,
    /// the longest wait for delivery once it is back.
    #[arg(long, env = "RETRY_MAX_SECS", default_value_t = 300)]
    pub retry_max_secs: u64,

    /// The n8n workflow's production webhook URL. Unset: dispatches wait in the outbox.
    #[arg(long, env = "N8N_WEBHOOK_URL")]
    pub n8n_webhook_url: Option<String>,

    /// Dispatches sent to n8n at once; a burst waits its turn instead of opening a connection
    /// per contact.
    #[arg(long, env = "N8N_MAX_CONCURRENCY", default_value_t = 16)]
    pub n8n_max_concurrency: usize,

    /// The largest dispatch body sent to n8n, in bytes (its parts are bounded on their own;
    /// beyond it the history, then the oldest messages, are left out and counted).
    #[arg(long, env = "MAX_DISPATCH_BYTES", default_value_t = 128 * 1024)]
    pub max_dispatch_bytes: usize,

    /// Signs every dispatch body (`X-Conversa-Signature: sha256=<hex HMAC-SHA256>`).
    #[arg(long, env = "N8N_SHARED_SECRET", hide_env_values = true)]
    pub n8n_shared_secret: Option<String>,

    /// n8n's callback (`POST /send-response`) is accepted with
    /// `Authorization: Bearer <N8N_CALLBACK_TOKEN>`, or with the dispatch's own `reply_token`
    /// (in the `callback_url` conversa sends).
    #[arg(long, env = "N8N_CALLBACK_TOKEN", hide_env_values = true)]
    pub n8n_callback_token: Option<String>,

    /// This service's public base URL; n8n calls back `PUBLIC_URL/send-response`.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,

    /// This node's name in logs and outbox claims.
    #[arg(long, env = "NODE_NAME", default_value = "conversa")]
    pub node_name: String,

    /// Without a subcommand, conversa serves.
    #[command(subcommand)]
    pub command: Option<crate::cli::Command>,
}

/// The shortest `API_KEY` and `WEBHOOK_SECRET` accepted beyond loopback.
pub const MIN_SECRET_CHARS: usize = 16;

impl Config {
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        let host = self.host.trim_matches(|c| c == '[' || c == ']');
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| anyhow::anyhow!("HOST must be an IP address, got {:?}", self.host))?;
        Ok(SocketAddr::new(ip, self.port))
    }

    /// The reply channel really in use: `REPLY_CHANNEL` when set, else `salesbot` when both
    /// ids are set and `note` otherwise; `None` without Kommo.
    pub fn reply_strategy(&self) -> Option<crate::reply::Strategy> {
        use crate::reply::Strategy;
        self.kommo_api_url.as_ref()?;
        Some(match self.reply_channel {
            Some(s) => s,
            None if self.kommo_reply_field_id.is_some() && self.kommo_reply_bot_id.is_some() => {
                Strategy::Salesbot
            }
            None => Strategy::Note,
        })
    }

    /// Refuses a configuration that cannot work, naming the variable.
    pub fn check_consistency(&self) -> anyhow::Result<()> {
        if self.gap_check_secs > 0 {
            for (name, value) in [
                ("GAP_CHECK_SECS", self.gap_check_secs),
                ("GAP_GRACE_SECS", self.gap_grace_secs),
            ] {
                if value > 86_400 {
                    anyhow::bail!("{name}={value}: at most 86400 (a day)");
                }
            }
            let reach = self.gap_lookback_minutes.saturating_mul(60);
            if reach <= self.gap_grace_secs + self.gap_check_secs {
                anyhow::bail!(
                    "GAP_LOOKBACK_MINUTES={} must reach further back than GAP_GRACE_SECS + GAP_CHECK_SECS ({} s), or gap detection reads nothing; set GAP_CHECK_SECS=0 to switch it off",
                    self.gap_lookback_minutes,
                    self.gap_grace_secs + self.gap_check_secs
                );
            }
        }
        let salesbot = self.reply_strategy() == Some(crate::reply::Strategy::Salesbot)
            || self.reply_channel == Some(crate::reply::Strategy::Salesbot);
        if salesbot {
            for (name, value) in [
                ("KOMMO_REPLY_FIELD_ID", self.kommo_reply_field_id),
                ("KOMMO_REPLY_BOT_ID", self.kommo_reply_bot_id),
            ] {
                if value.is_none() {
                    anyhow::bail!(
                        "REPLY_CHANNEL=salesbot needs {name}: set it (see `.env.example`) or set REPLY_CHANNEL=note"
                    );
                }
            }
        }
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let given: Vec<&str> = [
            ("REDIS_URL", set(&self.redis_url)),
            (
                "REDIS_CLUSTER_URLS",
                !listed(&self.redis_cluster_urls).is_empty(),
            ),
            (
                "REDIS_SENTINEL_URLS",
                !listed(&self.redis_sentinel_urls).is_empty(),
            ),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        for (name, values) in [
            ("REDIS_CLUSTER_URLS", &self.redis_cluster_urls),
            ("REDIS_SENTINEL_URLS", &self.redis_sentinel_urls),
        ] {
            // Empty is unset; commas with nothing between them are a mistake.
            if values.len() > 1 && listed(values).is_empty() {
                anyhow::bail!(
                    "{name} lists no address: give redis://host:port entries, comma-separated"
                );
            }
        }
        if given.len() > 1 {
            anyhow::bail!(
                "{} are all set: set one (REDIS_URL for one Redis server, REDIS_CLUSTER_URLS for a Redis Cluster, REDIS_SENTINEL_URLS for Redis Sentinel)",
                given.join(" and ")
            );
        }
        let sentinel = given == ["REDIS_SENTINEL_URLS"];
        if set(&self.redis_sentinel_master_password) && !sentinel {
            anyhow::bail!(
                "REDIS_SENTINEL_MASTER_PASSWORD is for Redis Sentinel (REDIS_SENTINEL_URLS); with REDIS_URL or REDIS_CLUSTER_URLS the password goes in the URL: redis://:password@host:port"
            );
        }
        if set(&self.redis_sentinel_master_username) && !set(&self.redis_sentinel_master_password) {
            anyhow::bail!(
                "REDIS_SENTINEL_MASTER_USERNAME needs REDIS_SENTINEL_MASTER_PASSWORD (the user's password)"
            );
        }
        if set(&self.n8n_webhook_url) && !set(&self.public_url) {
            anyhow::bail!(
                "N8N_WEBHOOK_URL needs PUBLIC_URL: n8n calls back PUBLIC_URL/send-response with the reply"
            );
        }
        Ok(())
    }

    /// Where the Redis store is; `None`: the embedded store.
    pub fn redis_topology(&self) -> Option<crate::store::redis::RedisTopology> {
        use crate::store::redis::RedisTopology;
        let nodes = listed(&self.redis_cluster_urls);
        if !nodes.is_empty() {
            return Some(RedisTopology::Cluster(nodes));
        }
        let sentinels = listed(&self.redis_sentinel_urls);
        if !sentinels.is_empty() {
            let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
            return Some(RedisTopology::Sentinel {
                sentinels,
                master: self.redis_sentinel_master.trim().to_owned(),
                master_auth: given(&self.redis_sentinel_master_password).map(|password| {
                    crate::store::redis::connection::MasterAuth {
                        username: given(&self.redis_sentinel_master_username),
                        password,
                    }
                }),
            });
        }
        self.redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| RedisTopology::Single(u.to_owned()))
    }

    /// Public routes that answer without a credential although `API_KEY` protects the others.
    pub fn unauthenticated_public_routes(&self) -> Vec<&'static str> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if !set(&self.api_key) {
            return Vec::new();
        }
        let mut open = Vec::new();
        // n8n's callback is never open: without N8N_CALLBACK_TOKEN it needs a reply token.
        if !set(&self.webhook_secret) {
            open.push("/webhooks/kommo (WEBHOOK_SECRET unset)");
        }
        open
    }

    /// Refuses to expose the API beyond loopback without a key, unless explicitly allowed.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        let addr = self.listen_addr()?;
        if addr.ip().is_loopback() {
            return Ok(());
        }
        let key = self.api_key.as_deref().map(str::trim).unwrap_or("");
        let secret = self.webhook_secret.as_deref().map(str::trim).unwrap_or("");
        let problem = if key.is_empty() {
            Some("without API_KEY: set API_KEY (16 characters or more)".to_owned())
        } else if key.chars().count() < MIN_SECRET_CHARS {
            Some(format!(
                "with an API_KEY of {} characters: use {MIN_SECRET_CHARS} or more (e.g. `openssl rand -hex 24`)",
                key.chars().count()
            ))
        } else if secret.is_empty() {
            Some("without WEBHOOK_SECRET: anyone could post Kommo webhooks (set WEBHOOK_SECRET and put it in the webhook URL)".to_owned())
        } else if secret.chars().count() < MIN_SECRET_CHARS {
            Some(format!(
                "with a WEBHOOK_SECRET of {} characters: use {MIN_SECRET_CHARS} or more",
                secret.chars().count()
            ))
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(problem) if self.allow_insecure => {
                tracing::warn!(%addr, "listening beyond loopback {problem} (ALLOW_INSECURE=1)");
                Ok(())
            }
            Some(problem) => anyhow::bail!(
                "refusing to listen on {addr} {problem}; or ALLOW_INSECURE=1 to accept the risk"
            ),
        }
    }

    /// The WhatsApp of Kommo-synced sellers from `SELLER_WHATSAPP`.
    pub fn seller_whatsapp(
        &self,
    ) -> anyhow::Result<std::collections::HashMap<u64, crate::sellers::WhatsApp>> {
        let Some(raw) = self
            .seller_whatsapp
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(Default::default());
        };
        let map: std::collections::HashMap<String, crate::sellers::WhatsApp> =
            serde_json::from_str(raw).map_err(|e| {
                anyhow::anyhow!(
                    "SELLER_WHATSAPP must be a JSON map {{\"<Kommo user id>\": {{\"contact_id\": .., \"phone\": ..}}}}: {e}"
                )
            })?;
        map.into_iter()
            .map(|(user, mut w)| {
                let user: u64 = user.trim().parse().map_err(|_| {
                    anyhow::anyhow!("SELLER_WHATSAPP: {user:?} is not a Kommo user id")
                })?;
                w.phone = w
                    .phone
                    .map(|p| crate::sellers::normalize_phone(&p))
                    .filter(|p| !p.is_empty());
                Ok((user, w))
            })
            .collect()
    }

    /// The fictitious sellers of `FICTITIOUS_SELLERS`.
    pub fn fictitious(&self) -> anyhow::Result<Vec<crate::sellers::Seller>> {
        let Some(raw) = self
            .fictitious_sellers
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(Vec::new());
        };
        let items: Vec<serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| anyhow::anyhow!("FICTITIOUS_SELLERS must be a JSON list: {e}"))?;
        items
            .into_iter()
            .enumerate()
            .map(|(i, mut item)| {
                if let Some(obj) = item.as_object_mut() {
                    obj.insert("source".into(), "ficticio".into());
                    if let Some(nome) = obj.remove("nome") {
                        obj.entry("name").or_insert(nome);
                    }
                }
                serde_json::from_value(item)
                    .map_err(|e| anyhow::anyhow!("FICTITIOUS_SELLERS[{i}]: {e}"))
            })
            .collect()
    }

    /// What is configured, with every secret reduced to whether it is set.
    pub fn summary(&self, store_backend: &str) -> Summary {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        Summary {
            store: store_backend.to_owned(),
            kommo_account_id: self.kommo_account_id,
            kommo_subdomain: self.kommo_subdomain.clone(),
            n8n_webhook_url: self.n8n_webhook_url.as_deref().map(crate::redact::url),
            kommo_api_url: self.kommo_api_url.as_deref().map(crate::redact::url),
            reply_channel: self
                .reply_strategy()
                .map_or("not configured", crate::reply::Strategy::as_str),
            unauthenticated_routes: self.unauthenticated_public_routes(),
            public_url: self.public_url.as_deref().map(crate::redact::url),
            api_key: set(&self.api_key),
            webhook_secret: set(&self.webhook_secret),
            n8n_callback_token: set(&self.n8n_callback_token),
            n8n_shared_secret: set(&self.n8n_shared_secret),
            debounce_ms: self.debounce_ms,
            human_lease_minutes: self.human_lease_minutes,
        }
    }

    pub fn policy(&self) -> Policy {
        Policy {
            debounce_ms: self.debounce_ms,
            debounce_max_ms: self.debounce_max_ms.max(self.debounce_ms),
            human_lease_ms: (self.human_lease_minutes > 0.0)
                .then_some((self.human_lease_minutes * 60_000.0) as u64),
            lease_nudge_ms: (self.lease_nudge_minutes.max(0.0) * 60_000.0) as u64,
            notes: self.lead_notes,
            auto_takeover_on_human_reply: self.auto_takeover_on_human_reply,
            scheduling_timeout_ms: (self.scheduling_timeout_minutes.max(0.0) * 60_000.0) as u64,
            dead_letter_after_ms: self.dead_letter_after_minutes * 60_000,
            retry_base_ms: self.retry_base_ms.max(1),
            retry_max_ms: (self.retry_max_secs * 1000).max(self.retry_base_ms.max(1)),
            conversation_idle_ms: (self.conversation_idle_hours > 0.0)
                .then_some((self.conversation_idle_hours * 3_600_000.0) as u64),
            max_effect_age_ms: (self.max_effect_age_minutes > 0.0)
                .then_some((self.max_effect_age_minutes * 60_000.0) as u64),
            reply_part_delay_ms: self.reply_part_delay_ms,
            max_pending_messages: self.max_pending_messages.max(1),
            max_message_bytes: self.max_message_bytes.max(64),
            max_pending_bytes: self
                .max_pending_bytes
                .max(self.max_message_bytes.max(64) + 256),
            max_snapshot_bytes: self.max_snapshot_bytes.max(64 * 1024),
            ..Policy::default()
        }
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            policy: self.policy(),
            node_name: self.node_name.clone(),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            claim_lease: Duration::from_secs(self.outbox_claim_secs.max(1)),
            execute_timeout: Duration::from_secs(self.effect_timeout_secs.max(1)),
            sweep_interval: Duration::from_millis(self.timer_sweep_ms.max(10)),
            ..EngineConfig::default()
        }
    }
}

/// What is configured, for `/ready` and the start-up log: every secret reduced to whether it
/// is set, URLs without their credentials.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Configured)]
pub struct Summary {
    /// `redis` or `embedded`.
    pub store: String,
    pub kommo_account_id: u64,
    pub kommo_subdomain: Option<String>,
    pub n8n_webhook_url: Option<String>,
    pub kommo_api_url: Option<String>,
    /// `salesbot`, `note` or `not configured`.
    #[schema(value_type = String)]
    pub reply_channel: &'static str,
    /// Routes that answer without a credential although `API_KEY` protects the others.
    #[schema(value_type = Vec<String>)]
    pub unauthenticated_routes: Vec<&'static str>,
    pub public_url: Option<String>,
    pub api_key: bool,
    pub webhook_secret: bool,
    pub n8n_callback_token: bool,
    pub n8n_shared_secret: bool,
    pub debounce_ms: u64,
    pub human_lease_minutes: f64,
}

/// The non-blank entries of a comma-separated list.
fn listed(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::RedisTopology;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("conversa").chain(args.iter().copied()))
            .expect("valid flags")
    }

    #[test]
    fn the_store_is_one_redis_a_cluster_or_embedded() {
        assert_eq!(parse(&[]).redis_topology(), None);
        assert_eq!(
            parse(&["--redis-url", "redis://10.0.0.1:6379"]).redis_topology(),
            Some(RedisTopology::Single("redis://10.0.0.1:6379".into()))
        );
        assert_eq!(
            parse(&[
                "--redis-cluster-urls",
                "redis://10.0.0.1:6379, redis://10.0.0.2:6379"
            ])
            .redis_topology(),
            Some(RedisTopology::Cluster(vec![
                "redis://10.0.0.1:6379".into(),
                "redis://10.0.0.2:6379".into()
            ]))
        );
        let both = parse(&[
            "--redis-url",
            "redis://10.0.0.1:6379",
            "--redis-cluster-urls",
            "redis://10.0.0.2:6379",
        ]);
        let refused = both.check_consistency().unwrap_err().to_string();
        assert!(
            refused.contains("REDIS_URL and REDIS_CLUSTER_URLS are all set"),
            "{refused}"
        );
        assert_eq!(
            parse(&[
                "--redis-sentinel-urls",
                "redis://10.0.0.1:26379,redis://10.0.0.2:26379",
                "--redis-sentinel-master",
                "conversa",
            ])
            .redis_topology(),
            Some(RedisTopology::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26379".into()
                ],
                master: "conversa".into(),
                master_auth: None,
            })
        );
        let guarded = parse(&[
            "--redis-sentinel-urls",
            "redis://:sentinel-pw@10.0.0.1:26379",
            "--redis-sentinel-master-password",
            "master-pw",
            "--redis-sentinel-master-username",
            "conversa",
        ]);
        guarded
            .check_consistency()
            .expect("a Sentinel set with passwords");
        let Some(RedisTopology::Sentinel { master_auth, .. }) = guarded.redis_topology() else {
            panic!("a Sentinel topology");
        };
        let auth = master_auth.expect("the master's login");
        assert_eq!(
            (auth.username.as_deref(), auth.password.as_str()),
            (Some("conversa"), "master-pw")
        );
        assert!(!format!("{auth:?}").contains("master-pw"), "{auth:?}");
        let stray = parse(&[
            "--redis-url",
            "redis://10.0.0.1:6379",
            "--redis-sentinel-master-password",
            "master-pw",
        ]);
        let refused = stray.check_consistency().unwrap_err().to_string();
        assert!(
            refused.contains("REDIS_SENTINEL_MASTER_PASSWORD is for Redis Sentinel"),
            "{refused}"
        );
        let blank = parse(&["--redis-cluster-urls", ",,"]);
        let refused = blank.check_consistency().unwrap_err().to_string();
        assert!(
            refused.contains("REDIS_CLUSTER_URLS lists no address"),
            "{refused}"
        );
        let two = parse(&[
            "--redis-cluster-urls",
            "redis://10.0.0.2:6379",
            "--redis-sentinel-urls",
            "redis://10.0.0.1:26379",
        ]);
        let refused = two.check_consistency().unwrap_err().to_string();
        assert!(
            refused.contains("REDIS_CLUSTER_URLS and REDIS_SENTINEL_URLS"),
            "{refused}"
        );
    }
}
