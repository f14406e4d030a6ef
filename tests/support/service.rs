//! Runs the real `conversa` binary for a test: a free port, the given environment, logs in a
//! temp file, readiness polled with a deadline, and `kill -9` / restart on demand.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::fake_kommo::customer_message;

/// The `N8N_CALLBACK_TOKEN` a test service gets unless the test sets one.
pub const CALLBACK_TOKEN: &str = "test-n8n-callback-token";

pub struct Service {
    child: Option<Child>,
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    _logdir: tempfile::TempDir,
    pub client: reqwest::Client,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Service {
    /// Starts the binary with `env` (on top of HOST/PORT/LOG_FORMAT) and waits until
    /// `/health` answers. `{port}` in a value stands for the service's own port (for
    /// `PUBLIC_URL`).
    pub async fn start(env: &[(&str, &str)]) -> Service {
        Self::start_on(free_port(), env).await
    }

    /// [`Service::start`] on a port chosen beforehand (a `PUBLIC_URL` written before start).
    pub async fn start_on(port: u16, env: &[(&str, &str)]) -> Service {
        let logdir = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.replace("{port}", &port.to_string())))
            .collect();
        // n8n needs to know where to call back, as a real deployment must say.
        let has = |name: &str, env: &[(String, String)]| env.iter().any(|(k, _)| k == name);
        if has("N8N_WEBHOOK_URL", &env) && !has("PUBLIC_URL", &env) {
            env.push(("PUBLIC_URL".into(), format!("http://127.0.0.1:{port}")));
        }
        // The test plays n8n answering with the callback token (a reply needs proof); tests of
        // the proof itself send their own requests.
        if !has("N8N_CALLBACK_TOKEN", &env) {
            env.push(("N8N_CALLBACK_TOKEN".into(), CALLBACK_TOKEN.into()));
        }
        let mut service = Service {
            child: None,
            port,
            env,
            log: logdir.path().join("conversa.log"),
            _logdir: logdir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        service.spawn();
        service.wait_ready().await;
        service
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_conversa"))
            .env("HOST", "127.0.0.1")
            .env("PORT", self.port.to_string())
            .env("LOG_FORMAT", "json")
            .env_remove("REDIS_URL")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start conversa");
        self.child = Some(child);
    }

    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("conversa exited with {status}:\n{}", self.log());
            }
            if let Ok(r) = self.client.get(self.url("/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "conversa not ready in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().ok().and_then(|s| s.code())
    }

    /// Starts it again with the same environment and port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GET, the body as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// GET with `Authorization: Bearer <key>`.
    pub async fn get_with_key(&self, path: &str, key: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        self.get_text("/metrics").await
    }

    /// POSTs a form-encoded body as Kommo's webhook client does (its `User-Agent` included).
    pub async fn post_form(&self, path: &str, body: String) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("user-agent", "amoCRM-WebHook-client/1.0")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A customer writes `text` ([`customer_message`]): the webhook must answer 200; its answer.
    pub async fn customer_says(&self, contact: u64, id: &str, text: &str) -> Value {
        let body = customer_message(contact, id, text);
        let (status, answer) = self.post_form("/webhooks/kommo", body).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// POSTs `body` as JSON; to `/send-response` with the callback token, as n8n would.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let mut request = self.client.post(self.url(path)).json(&body);
        if path.starts_with("/send-response") {
            let token = self
                .env
                .iter()
                .find(|(k, _)| k == "N8N_CALLBACK_TOKEN")
                .map_or(CALLBACK_TOKEN, |(_, v)| v.as_str());
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}
