//! What can be checked of the deployment files without a Docker engine: the compose file
//! parses and wires conversa, Redis (with the project's redis.conf and a volume for the AOF)
//! and n8n with health checks and restart policies, reads every setting from `.env`, pins every
//! image, keeps n8n off the internet and puts Caddy (HTTPS) in front under a profile; the
//! Dockerfile pins its bases, caches dependencies, strips the binary, is told its commit and
//! runs as a non-root user; `.env` never enters the build context; `.env.example` documents
//! every variable the binary reads.

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
            .contains("http://n8n:5678/webhook/")
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
fn the_compose_file_reads_env_pins_images_and_exposes_only_conversa() {
    let docs = YamlLoader::load_from_str(&root("docker-compose.yml")).expect("valid YAML");
    let services = &docs[0]["services"];
    // Every setting reaches conversa from `.env` (KOMMO_REPLY_FIELD_ID, KOMMO_REPLY_BOT_ID, ...).
    let env_file = &services["conversa"]["env_file"];
    let files: Vec<&str> = env_file
        .as_vec()
        .expect("env_file is a list")
        .iter()
        .filter_map(|f| f.as_str().or_else(|| f["path"].as_str()))
        .collect();
    assert_eq!(files, [".env"]);
    // `environment:` must not shadow `.env` with empty defaults.
    for (key, value) in services["conversa"]["environment"].as_hash().unwrap() {
        let value = value.as_str().unwrap_or("");
        assert!(
            !value.ends_with(":-}"),
            "{key:?} would override .env with an empty value"
        );
    }
    for (name, service) in services.as_hash().unwrap() {
        let name = name.as_str().unwrap();
        if let Some(image) = service["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            let pinned =
                tag.contains('.') && tag.chars().next().is_some_and(|c| c.is_ascii_digit());
            assert!(
                pinned || image == "conversa:local",
                "{name}: {image} is not pinned to a version"
            );
        }
        for port in service["ports"].as_vec().into_iter().flatten() {
            let port = port.as_str().unwrap();
            if name != "caddy" {
                assert!(
                    port.starts_with("127.0.0.1:"),
                    "{name} publishes {port} beyond loopback"
                );
            }
        }
    }
    let caddy = &services["caddy"];
    assert_eq!(caddy["profiles"][0].as_str(), Some("https"));
    let caddyfile = root("deploy/Caddyfile");
    assert!(caddyfile.contains("reverse_proxy conversa:8000"));
    let routes: Vec<&str> = caddyfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(!routes.join("\n").contains("n8n"), "n8n is not published");
    for volume in ["conversa-data", "redis-data", "n8n-data", "caddy-data"] {
        assert!(!docs[0]["volumes"][volume].is_badvalue(), "volume {volume}");
    }
    assert_eq!(
        services["conversa"]["build"]["args"]["GIT_COMMIT"].as_str(),
        Some("${GIT_COMMIT:-unknown}")
    );
}

#[test]
fn env_files_stay_out_of_the_build_context() {
    let ignore = root(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    assert!(lines.contains(&".env"), "{ignore}");
    assert!(lines.contains(&".git"));
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    let dockerfile = root("Dockerfile");
    let bases: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    for base in &bases {
        let is_stage = bases
            .iter()
            .any(|_| dockerfile.contains(&format!(" AS {base}")));
        if !is_stage {
            let tag = base.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(tag.contains('.'), "base {base} is not pinned to a version");
        }
    }
    assert!(bases.len() >= 2, "{bases:?}");
    assert!(
        dockerfile.contains("cargo chef cook"),
        "dependencies cached"
    );
    assert!(
        dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"),
        "stripped"
    );
    assert!(dockerfile.contains("ARG GIT_COMMIT"), "told its commit");
    assert!(root("build.rs").contains("GIT_COMMIT"));
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

/// Every `NAME=value` line of `text` that is not a comment, with its value (what precedes a
/// ` #` comment, trimmed).
fn assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.split(" #").next().unwrap().trim();
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// `.env` is read by dotenvy, where a quote opens a quoted value: a quote in a trailing comment
/// once made it skip the lines after it without a word. The example, and the example with
/// every placeholder filled in as a user does (comment kept), read back every line.
#[test]
fn env_example_reads_back_every_line_as_written_and_as_filled_in() {
    let example = root(".env.example");
    let filled: String = example
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return format!("{line}\n");
            };
            match rest.split_once('=') {
                Some((name, tail))
                    if !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') =>
                {
                    // A placeholder may show a default before its comment: the user's value
                    // replaces it, the comment stays.
                    let comment = tail.find('#').map_or("", |i| &tail[i..]);
                    format!("{name}=value-of-{name}   {comment}\n")
                }
                _ => format!("{line}\n"),
            }
        })
        .collect();
    for (what, text) in [("as written", example.clone()), ("filled in", filled)] {
        let want = assignments(&text);
        assert!(want.len() >= 20, "{what}: {want:?}");
        if let Some(name) = not_read_back(&text) {
            panic!("{what}: {name} is not read back as written");
        }
    }
    // The check catches the trap it is for: a quote in a trailing comment.
    assert_eq!(
        not_read_back("A=1        # the node's name\nB=2\nC=3 # it's\n").as_deref(),
        Some("B"),
        "the line after the quote is swallowed"
    );
}

/// The first assignment of `text` dotenvy does not read back with its written value.
fn not_read_back(text: &str) -> Option<String> {
    let read: Vec<(String, String)> = dotenvy::from_read_iter(text.as_bytes())
        .map_while(Result::ok)
        .collect();
    assignments(text).into_iter().find_map(|(name, value)| {
        let got = read.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
        (got != Some(&value)).then_some(name)
    })
}
