//! OpenTelemetry traces: the real binary exports OTLP (http/protobuf) to a receiver on a loopback
//! port, which decodes what arrives. The caller's `traceparent` is the parent; the request, the
//! batch and each upstream call are spans, the calls with the GenAI conventions; no title
//! appears unless `HNC_TRACE_CONTENT=true`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::helpers::{json_of, sigterm, start_binary_with};

type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver: every span of every export request, decoded.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(spans): State<Received>, body: Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut spans = spans.lock().unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans);
                    }
                }
                axum::http::StatusCode::OK
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    hn_classifier::tasks::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    Some(match value.value.as_ref()? {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TITLE: &str = "Zstandard compression lands in the Linux kernel";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Runs one traced batch through the binary and returns the spans the receiver got.
async fn traced_batch(extra_env: &[(&str, &str)]) -> Vec<Span> {
    let (url, received) = receiver().await;
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_SERVICE_NAME", "hnc-under-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    env.extend_from_slice(extra_env);
    let (child, addr) = start_binary_with(&["--simulate", "--sim-latency-ms", "0"], &env);
    let answer = json_of(
        reqwest::Client::new()
            .post(format!("http://{addr}/classify-batch"))
            .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
            .json(&json!({"titles": [TITLE, "Show HN: a tiny OTLP receiver"]})),
    )
    .await;
    assert_eq!(answer["errors"], 0);
    sigterm(&child);
    let mut child = child;
    hn_classifier::tasks::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    // The exporter flushed on shutdown; give the receiver's handler a moment.
    for _ in 0..50 {
        if received.lock().unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    received.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_traced_under_the_callers_trace_with_genai_spans_and_no_titles() {
    let spans = traced_batch(&[]).await;

    let request = spans
        .iter()
        .find(|s| attribute(s, "http.route").as_deref() == Some("/classify-batch"))
        .unwrap_or_else(|| panic!("a request span among {spans:#?}"));
    assert_eq!(hex(&request.trace_id), TRACE_ID, "the caller's trace");
    assert_eq!(
        hex(&request.parent_span_id),
        "00f067aa0ba902b7",
        "the caller's span is the parent"
    );
    assert_eq!(
        attribute(request, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attribute(request, "http.response.status_code").as_deref(),
        Some("200")
    );

    let batch = spans
        .iter()
        .find(|s| s.name == "batch")
        .expect("a batch span");
    assert_eq!(batch.parent_span_id, request.span_id);
    let calls: Vec<&Span> = spans
        .iter()
        .filter(|s| attribute(s, "gen_ai.operation.name").is_some())
        .collect();
    assert_eq!(calls.len(), 2, "one span per upstream call");
    for call in &calls {
        assert_eq!(hex(&call.trace_id), TRACE_ID);
        assert_eq!(
            attribute(call, "gen_ai.request.model").as_deref(),
            Some("gpt-5.4-nano")
        );
        assert_eq!(
            attribute(call, "gen_ai.response.model").as_deref(),
            Some("gpt-5.4-nano")
        );
        assert!(attribute(call, "gen_ai.response.id").is_some_and(|id| id.starts_with("resp_")));
        assert!(attribute(call, "gen_ai.usage.input_tokens").is_some_and(|t| t != "0"));
        assert!(attribute(call, "gen_ai.usage.output_tokens").is_some());
        assert_eq!(attribute(call, "hnc.attempt").as_deref(), Some("1"));
    }
    let everything = format!("{spans:?}");
    assert!(
        !everything.contains("Zstandard"),
        "a title leaked into a span"
    );
    assert!(!everything.contains("sim-key"), "a key leaked into a span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titles_are_traced_only_when_asked() {
    let spans = traced_batch(&[("HNC_TRACE_CONTENT", "true")]).await;
    let with_title = spans
        .iter()
        .filter_map(|s| attribute(s, "hnc.titles"))
        .any(|t| t.contains("Zstandard"));
    assert!(
        with_title,
        "HNC_TRACE_CONTENT=true puts the titles on the call spans"
    );
}
