//! What an autoscaler and an operator rely on: metrics, readiness, the deployment files agreeing
//! with the code, several replicas sharing one provider limit, and a replica draining under load.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::StatusCode;
use clap::CommandFactory;
use futures::future::join_all;
use hn_classifier::cli::Cli;
use serde_json::{Value, json};

use crate::helpers::*;

fn manifest_path(file: &str) -> String {
    format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn metrics_count_requests_by_route_items_by_outcome_and_upstream_calls() {
    let app = spawn_simulated(&[]).await;
    app.classify(&["Rust 2.0 released", "   ", "A new GPU from Nvidia"])
        .await;
    get(&app.url("/no/such/page/12345")).await;
    get(&app.url("/classify-batch")).await;

    let (status, text) = get(&app.url("/metrics")).await;

    assert_eq!(status, StatusCode::OK);
    for line in [
        "http_server_requests_total{route=\"/classify-batch\",status=\"200\"} 1",
        "http_server_requests_total{route=\"/classify-batch\",status=\"405\"} 1",
        "http_server_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "classify_items_total{outcome=\"ok\"} 2",
        "classify_items_total{outcome=\"title_empty\"} 1",
        "upstream_requests_total{status=\"200\",upstream=\"simulator\"} 2",
        "upstream_benched{upstream=\"simulator\"} 0",
        "upstream_request_duration_seconds_count 2",
        "upstream_concurrency_limit 512",
        "upstream_in_flight 0",
        "classify_batches_in_flight 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(text.contains("upstream_tokens_total{kind=\"input\",model=\"gpt-5.4-nano\"}"));
    assert!(text.contains("upstream_cost_usd_total{model=\"gpt-5.4-nano\"}"));
    assert!(!text.contains("12345"), "raw paths never become labels");
    app.shutdown().await;
}

/// A dashboard or an alert on a documented metric sees it from start-up: no family waits for
/// its first count (404 and 405 were counted by the test above).
#[tokio::test]
async fn every_documented_metric_is_exposed_before_any_request() {
    let app = spawn_simulated(&[]).await;
    let (_, text) = get(&app.url("/metrics")).await;
    let documented = std::fs::read_to_string(manifest_path("docs/observability.md")).unwrap();
    let names: Vec<&str> = documented
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.contains('_'))
        .collect();
    assert!(names.len() >= 20, "the table was read: {names:?}");
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Families only known once they count (a status, a model, a client, a source) aside.
    let later = [
        "http_server_requests_total",
        "http_server_request_duration_seconds",
        "classify_client_items_total",
        "upstream_requests_total",
        "upstream_tokens_total",
        "upstream_cost_usd_total",
    ];
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !families.contains(**n) && !later.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "absent at start-up: {missing:?}\n{text}"
    );
    for line in [
        "upstream_retries_total{reason=\"upstream_rate_limited\"} 0",
        "redis_errors_total{op=\"budget_lease\"} 0",
        "redis_commands_total{op=\"cache_get\"} 0",
        "classify_answers_total{source=\"single_flight\"} 0",
        "classify_items_total{outcome=\"ok\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(text.contains("background_tasks "), "{text}");
    app.shutdown().await;
}

#[tokio::test]
async fn metrics_can_live_on_their_own_port() {
    let app = spawn_simulated(&["--metrics-listen", "127.0.0.1:0"]).await;
    let (status, _) = get(&app.url("/metrics")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not on the public port");
    let (status, text) = get(&format!("http://{}/metrics", app.metrics_addr.unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("upstream_concurrency_limit"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_refused_key_shows_in_health_details_and_readiness_stays_on() {
    let upstream = spawn_fake_upstream(|_, _| {
        openai_error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        )
    })
    .await;
    let app = spawn_against(&upstream, &[]).await;
    assert_eq!(get(&app.url("/readyz")).await.0, StatusCode::OK);

    let response = app.classify(&["anything"]).await;

    assert_eq!(
        response.results[0].error_code.as_deref(),
        Some("upstream_rejected")
    );
    // Every replica shares the key: readiness that followed it would take them all out.
    assert_eq!(get(&app.url("/readyz")).await.0, StatusCode::OK);
    let (status, body) = get(&app.url("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["upstream"], "unavailable", "{body}");
    assert_eq!(health["endpoints"][0]["state"], "benched", "{body}");
    let (_, metrics) = get(&app.url("/metrics")).await;
    assert!(
        metrics.contains("upstream_benched{upstream=\"default\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("service_ready 1"), "{metrics}");
    app.shutdown().await;
}

/// Every environment variable `serve` reads, from the command definition itself.
fn env_names_read_by_serve() -> BTreeSet<String> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve subcommand");
    serve
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn fly_toml_and_k8s_agree_with_the_code() {
    let known_env = env_names_read_by_serve();
    let app = spawn_simulated(&[]).await;
    let default_port = {
        let config = config(&[]);
        let defaults = hn_classifier::config::ServeConfig {
            listen: None,
            port: None,
            ..config
        };
        i64::from(defaults.listen_addr().port())
    };

    let fly: toml::Table = std::fs::read_to_string(manifest_path("fly.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let service = fly["http_service"].as_table().unwrap();
    assert_eq!(service["internal_port"].as_integer(), Some(default_port));
    for check in service["checks"].as_array().unwrap() {
        let path = check["path"].as_str().unwrap();
        assert_eq!(
            get(&app.url(path)).await.0,
            StatusCode::OK,
            "fly check {path}"
        );
    }
    for key in fly["env"].as_table().unwrap().keys() {
        assert!(
            known_env.contains(key),
            "fly.toml sets {key}, which the service does not read"
        );
    }

    let kustomization: Value = yaml(&manifest_path("k8s/kustomization.yaml"));
    let resources: Vec<Value> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| yaml(&manifest_path(&format!("k8s/{}", file.as_str().unwrap()))))
        .collect();
    let of_kind = |kind: &str| {
        resources
            .iter()
            .find(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };

    let container = &of_kind("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let http_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap();
    assert_eq!(http_port["containerPort"].as_i64(), Some(default_port));
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(
            get(&app.url(path)).await.0,
            StatusCode::OK,
            "{probe} {path}"
        );
    }
    let config_map = of_kind("ConfigMap");
    for key in config_map["data"].as_object().unwrap().keys() {
        assert!(
            known_env.contains(key),
            "the ConfigMap sets {key}, which the service does not read"
        );
    }
    let metrics_port = config_map["data"]["HNC_METRICS_LISTEN"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let declared_metrics = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .unwrap();
    assert_eq!(declared_metrics["containerPort"].to_string(), metrics_port);

    // The grace periods outlast the drain: the preStop wait, the drain delay, the shutdown
    // deadline, and 10 s for the cut answers and connections (src/server.rs `CUT_GRACE`, twice).
    let defaults = config(&[]);
    let setting = |key: &str, default: std::time::Duration| {
        config_map["data"][key]
            .as_str()
            .map_or(default.as_secs(), |s| s.parse().unwrap())
    };
    let drain = setting("HNC_DRAIN_DELAY_S", defaults.drain_delay)
        + setting("HNC_SHUTDOWN_TIMEOUT_S", defaults.shutdown_timeout)
        + 2 * hn_classifier::server::CUT_GRACE.as_secs();
    let pod = &of_kind("Deployment")["spec"]["template"]["spec"];
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + drain,
        "k8s grace {grace} s <= {pre_stop} + {drain} s"
    );
    let kill_timeout = fly["kill_timeout"].as_str().unwrap();
    let kill_timeout: u64 = kill_timeout.trim_end_matches('s').parse().unwrap();
    assert!(
        kill_timeout > drain,
        "fly kill_timeout {kill_timeout} s <= {drain} s"
    );

    let secret: Value = yaml(&manifest_path("k8s/secret.example.yaml"));
    for key in secret["stringData"].as_object().unwrap().keys() {
        assert!(
            known_env.contains(key),
            "the Secret sets {key}, which the service does not read"
        );
    }
    app.shutdown().await;
}

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap()
}

#[tokio::test]
async fn three_replicas_share_one_rate_limited_provider_without_an_item_error() {
    let sim = spawn_sim(&["--sim-rpm", "1200", "--sim-latency-ms", "20"]).await;
    let url = sim.base_url();
    let replicas = join_all((0..3).map(|_| {
        spawn_app(config(&[
            "--openai-base-url",
            &url,
            "--openai-api-key",
            "sk-shared",
        ]))
    }))
    .await;
    let titles = data_lines("hn_titles.txt")[..300].to_vec();

    // Round-robin: batch i goes to replica i % 3, all at once.
    let responses = join_all(
        titles
            .chunks(10)
            .enumerate()
            .map(|(i, batch)| replicas[i % 3].classify(batch)),
    )
    .await;

    let errors: usize = responses.iter().map(|r| r.errors).sum();
    let stats = sim.stats().snapshot(false);
    assert_eq!(errors, 0, "{stats:?}");
    assert_eq!(stats.by_status.get(&200), Some(&300));
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn a_replica_draining_mid_load_finishes_its_batches_and_the_client_moves_on() {
    let sim = spawn_sim(&["--sim-latency-ms", "100", "--sim-latency-sigma", "0"]).await;
    let url = sim.base_url();
    let mut replicas = join_all((0..3).map(|_| {
        spawn_app(config(&[
            "--openai-base-url",
            &url,
            "--openai-api-key",
            "k",
            "--request-concurrency",
            "2",
        ]))
    }))
    .await;
    let urls: Vec<String> = replicas.iter().map(|r| r.url("/classify-batch")).collect();
    let readyz = replicas[0].url("/readyz");
    let titles = data_lines("hn_titles.txt")[..240].to_vec();
    let client = reqwest::Client::new();

    // Each batch of 8 takes about 400 ms; a client that finds a replica draining (503, or the
    // port closed) sends the same batch to the next one.
    let send = |i: usize, batch: Vec<String>| {
        let (client, urls) = (client.clone(), urls.clone());
        async move {
            for attempt in 0..urls.len() {
                let target = &urls[(i + attempt) % urls.len()];
                match client
                    .post(target)
                    .json(&json!({ "titles": batch }))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => {
                        return r.json::<Value>().await.unwrap();
                    }
                    Ok(r) => assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE),
                    Err(e) => assert!(e.is_connect(), "{e}"),
                }
            }
            panic!("no replica took batch {i}");
        }
    };
    let load = join_all(titles.chunks(8).enumerate().map(|(i, b)| {
        let send = &send;
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
            send(i, b.to_vec()).await
        }
    }));
    let drain = async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        replicas[0].begin_shutdown();
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(&readyz).await.0
    };
    let (bodies, readiness_while_draining) = tokio::join!(load, drain);

    assert_eq!(readiness_while_draining, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bodies.len(), 30);
    for body in &bodies {
        assert_eq!(body["errors"], 0, "{body}");
        assert_eq!(body["num_items"], 8);
    }
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn the_autoscaler_scales_on_a_metric_the_service_exposes() {
    let app = spawn_simulated(&[]).await;
    app.classify(&["Rust 2.0 released"]).await;
    let (_, exposed) = get(&app.url("/metrics")).await;

    let hpa = yaml(&manifest_path("k8s/hpa.yaml"));
    let pods_metric = hpa["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "Pods")
        .expect("the HPA scales on a Pods metric");
    let name = pods_metric["pods"]["metric"]["name"].as_str().unwrap();
    assert!(
        exposed.lines().any(|l| l.starts_with(&format!("{name} "))),
        "{name} is not in /metrics"
    );
    let adapter = yaml(&manifest_path("k8s/prometheus-adapter/config.yaml"));
    let rules: Value =
        serde_norway::from_str(adapter["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let rule = &rules["rules"][0];
    assert!(rule["seriesQuery"].as_str().unwrap().starts_with(name));
    assert_eq!(
        rule["name"]["as"], name,
        "the adapter serves it under that name"
    );
    app.shutdown().await;
}

#[test]
fn every_kustomization_names_files_that_exist_and_settings_the_service_reads() {
    let known_env = env_names_read_by_serve();
    for dir in ["k8s", "k8s/components/redis", "k8s/overlays/redis"] {
        let kustomization = yaml(&manifest_path(&format!("{dir}/kustomization.yaml")));
        let mut paths: Vec<&str> = Vec::new();
        for list in ["resources", "components"] {
            if let Some(items) = kustomization[list].as_array() {
                paths.extend(items.iter().map(|p| p.as_str().unwrap()));
            }
        }
        if let Some(patches) = kustomization["patches"].as_array() {
            paths.extend(patches.iter().map(|p| p["path"].as_str().unwrap()));
        }
        assert!(!paths.is_empty(), "{dir} names nothing");
        for path in paths {
            let full = std::path::Path::new(&manifest_path(dir)).join(path);
            assert!(
                full.exists(),
                "{dir}/kustomization.yaml names {path}, which is missing"
            );
        }
    }
    let patch = yaml(&manifest_path("k8s/components/redis/configmap-patch.yaml"));
    assert_eq!(
        patch["metadata"]["name"], "hn-classifier",
        "patches the base's ConfigMap"
    );
    for key in patch["data"].as_object().unwrap().keys() {
        assert!(
            known_env.contains(key),
            "the Redis component sets {key}, which the service does not read"
        );
    }
}

#[test]
fn the_prometheus_rule_manifest_holds_the_rules_promtool_tests() {
    let rules = yaml(&manifest_path("deploy/prometheus/rules.yaml"));
    let manifest = yaml(&manifest_path("deploy/prometheus/prometheusrule.yaml"));
    assert_eq!(manifest["kind"], "PrometheusRule");
    assert_eq!(manifest["spec"]["groups"], rules["groups"]);
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_one_the_service_exposes() {
    let app = spawn_simulated(&["--cache-entries", "10"]).await;
    app.classify(&["Rust 2.0 released", "   "]).await;
    let (_, exposed) = get(&app.url("/metrics")).await;
    // Series the run made, and the families the registry declares (a labelled family with no
    // series yet, such as retries, is absent from the text until its first count).
    let declared = std::fs::read_to_string(manifest_path("src/metrics.rs")).unwrap();
    let mut families: BTreeSet<String> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    families.extend(
        declared
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_owned),
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_path("deploy/grafana/hn-classifier.json")).unwrap(),
    )
    .unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let rules = yaml(&manifest_path("deploy/prometheus/rules.yaml"));
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        queries.push(rule["expr"].as_str().unwrap().to_owned());
    }
    for query in &queries {
        // Label values ("..." in matchers) are not metric names.
        let unquoted: String = query.split('"').step_by(2).collect();
        let names = unquoted
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| t.contains('_') && *t != "histogram_quantile")
            .filter(|t| t.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
        for name in names {
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                families.contains(family),
                "{query} uses {name}, which the service does not expose"
            );
        }
    }
    app.shutdown().await;
}
