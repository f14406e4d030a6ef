//! What can be checked of the deployment files without a Docker engine: the compose file
//! parses and wires conversa, Redis (with the project's redis.conf and a volume for the AOF)
//! and n8n with health checks and restart policies; the Dockerfile is multi-stage and runs as
//! a non-root user; `.env.example` documents every variable the binary reads.

use std::collections::BTreeSet;

use yaml_rust2::{Yaml, YamlLoader};

fn root(file: &str) -> String {
    std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_compose_file_wires_conversa_redis_and_n8n() {
    let docs = YamlLoader::load_from_str(&root("docker-compose.yml")).expect("valid YAML");
    let services = &docs[0]["services"];
    for name in ["conversa", "redis", "n8n"] {
        let s = &services[name];
        assert!(!s.is_badvalue(), "service {name}");
        assert!(
            s["healthcheck"]["test"].as_vec().is_some(),
            "{name} has a health check"
        );
        assert_eq!(
            s["restart"].as_str(),
            Some("unless-stopped"),
            "{name} restarts"
        );
    }
    let conversa = &services["conversa"]["environment"];
    assert_eq!(conversa["REDIS_URL"].as_str(), Some("redis://redis:6379"));
    assert_eq!(conversa["HOST"].as_str(), Some("0.0.0.0"));
    assert!(
        conversa["API_KEY"]
            .as_str()
            .is_some_and(|v| v.contains(":?")),
        "API_KEY required"
    );
    assert!(
        conversa["WEBHOOK_SECRET"]
            .as_str()
            .is_some_and(|v| v.contains(":?")),
        "WEBHOOK_SECRET required (the binary refuses a non-loopback bind without it)"
    );
    assert!(
        conversa["N8N_WEBHOOK_URL"]
            .as_str()
            .unwrap()
            .starts_with("http://n8n:5678/")
    );
    let redis = &services["redis"];
    let command: Vec<&str> = redis["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(command.contains(&"/usr/local/etc/redis/redis.conf"));
    let volumes: Vec<&str> = redis["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        volumes.iter().any(|v| v.starts_with("./redis.conf:")),
        "{volumes:?}"
    );
    assert!(
        volumes.iter().any(|v| v.starts_with("redis-data:/data")),
        "AOF on a volume"
    );
    assert!(!docs[0]["volumes"]["redis-data"].is_badvalue());
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    let dockerfile = root("Dockerfile");
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM")),
        2
    );
    assert!(dockerfile.contains("COPY --from=build"));
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root"))
    );
    assert!(dockerfile.contains("HEALTHCHECK"));
}

#[test]
fn env_example_documents_every_variable_the_binary_reads() {
    let config = root("src/config.rs");
    let read: BTreeSet<String> = config
        .split("env = \"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect();
    assert!(read.len() > 30, "{read:?}");
    let example = root(".env.example");
    let documented: BTreeSet<String> = example
        .lines()
        .map(|l| l.trim_start_matches("# ").trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .filter(|k| {
            k.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    let missing: Vec<_> = read.difference(&documented).collect();
    assert!(missing.is_empty(), "not in .env.example: {missing:?}");
}
