//! Structured logs (JSON lines for machines or pretty text for people, filtered by `RUST_LOG`),
//! and OpenTelemetry traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: the `opentelemetry` SDK with
//! `tracing-opentelemetry`, honouring the standard `OTEL_*` variables (protocol `http/protobuf`
//! or `grpc`, headers, timeout, service name and resource attributes, sampler, batch span
//! processor delays). Unset, no exporter exists and the per-call spans are not even created.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written (`HNC_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

static TRACING: AtomicBool = AtomicBool::new(false);
static TRACE_CONTENT: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: per-call spans are only made then.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Whether titles may appear in spans (`HNC_TRACE_CONTENT=true`); never by default.
pub fn trace_content() -> bool {
    TRACE_CONTENT.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("OpenTelemetry: the last spans could not be exported: {error}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL {0:?} is not one of http/protobuf and grpc")]
    Protocol(String),
    #[error("could not build the OTLP exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Installs the global subscriber: logs, and traces when OTLP is configured. Call once, first.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => logs.compact().boxed(),
    };
    let provider = otlp_provider()?;
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("hn-classifier"))
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(traces)
        .init();
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
        let content = std::env::var("HNC_TRACE_CONTENT").is_ok_and(|v| v == "true" || v == "1");
        TRACE_CONTENT.store(content, Ordering::Relaxed);
        tracing::info!(trace_content = content, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The tracer provider the `OTEL_*` variables describe, or `None` when no endpoint is set.
fn otlp_provider() -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v == "true");
    let endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if disabled || endpoint.is_none() {
        return Ok(None);
    }
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    // The builders read the endpoint, headers and timeout from the OTEL_* variables themselves.
    let exporter = match protocol.as_str() {
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()?,
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?,
        other => return Err(TelemetryError::Protocol(other.to_owned())),
    };
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("hn-classifier");
    }
    // The sampler (OTEL_TRACES_SAMPLER, _ARG) and the batch processor's delays (OTEL_BSP_*)
    // are read from the environment by the SDK's defaults.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok(Some(provider))
}

/// Makes the caller's W3C `traceparent` (and `tracestate`) the parent of `span`, and records
/// the trace id on it (`trace_id`), so log lines carry it.
pub fn adopt_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let propagator = TraceContextPropagator::new();
    let parent = propagator.extract(&HeaderCarrier(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// The trace id of the current span, when traces are exported.
pub fn current_trace_id() -> Option<String> {
    tracing_enabled().then(|| {
        tracing::Span::current()
            .context()
            .span()
            .span_context()
            .trace_id()
            .to_string()
    })
}

struct HeaderCarrier<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
