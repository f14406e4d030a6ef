//! An executor that records every job it runs: the stand-in for n8n and Kommo where a test
//! drives the engine through its library API.

#![allow(dead_code)]

use std::sync::Mutex;

use async_trait::async_trait;
use conversa_actors::{Dispatch, Effect, ExecError, Executor, Job};

#[derive(Default)]
pub struct Recorder {
    jobs: Mutex<Vec<Job>>,
}

#[async_trait]
impl Executor for Recorder {
    async fn execute(&self, job: &Job) -> Result<(), ExecError> {
        self.jobs.lock().unwrap().push(job.clone());
        Ok(())
    }
}

impl Recorder {
    pub fn jobs(&self) -> Vec<Job> {
        self.jobs.lock().unwrap().clone()
    }

    pub fn dispatches(&self) -> Vec<Dispatch> {
        self.jobs()
            .into_iter()
            .filter_map(|j| match j.effect {
                Effect::Dispatch(d) => Some(d),
                _ => None,
            })
            .collect()
    }
}

/// Polls `check` every 10 ms until it holds, failing after `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
