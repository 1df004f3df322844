//! Traces: OpenTelemetry over OTLP/gRPC (Jaeger ingests it directly), W3C
//! trace context in and out, and the switch that keeps tracing free when no
//! endpoint is set.
//!
//! Spans are the `tracing` spans of the services, turned into OpenTelemetry
//! spans by `tracing-opentelemetry` and exported by a batch processor on its
//! own thread with a bounded queue: a slow or absent collector drops spans,
//! it never blocks or slows a request. Without `OTEL_EXPORTER_OTLP_ENDPOINT`
//! no exporter exists and the services create no per-request spans at all.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;

use crate::logging::BoxedLayer;
use crate::reload::SettingFile;
use crate::tls;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported; request paths skip all span work when not.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Trace settings, by their standard OpenTelemetry variable names.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// OTLP/gRPC collector, e.g. `http://jaeger:4317` or `https://…` (TLS). Unset: no traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// `https://` collector: PEM CA its certificate must chain to (default: the system's roots).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_certificate: Option<PathBuf>,

    /// `https://` collector: PEM client certificate, for collectors that require one.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", requires = "otlp_client_key")]
    pub otlp_client_certificate: Option<PathBuf>,

    /// PEM private key of `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_KEY", requires = "otlp_client_certificate")]
    pub otlp_client_key: Option<PathBuf>,

    /// `service.name` of the spans (default: the binary's name).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// Sampler; the `parentbased_*` ones follow a sampled caller.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_enum, default_value_t = SamplerKind::ParentBasedTraceIdRatio)]
    pub sampler: SamplerKind,

    /// Share of new traces sampled by the `*traceidratio` samplers.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 0.1, value_parser = ratio)]
    pub sampler_arg: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    #[value(name = "always_on")]
    AlwaysOn,
    #[value(name = "always_off")]
    AlwaysOff,
    #[value(name = "traceidratio")]
    TraceIdRatio,
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
    }
}

/// The head sampling decision for a request whose caller's context says
/// `parent_sampled` (`None`: no caller trace), given a uniform `draw` in
/// [0, 1). Made once where a request enters (HTTP or gRPC); spans are only
/// created for sampled requests, so the unsampled majority costs nothing.
pub fn decide(kind: SamplerKind, ratio: f64, parent_sampled: Option<bool>, draw: f64) -> bool {
    let by_ratio = draw < ratio;
    match (kind, parent_sampled) {
        (SamplerKind::AlwaysOn, _) => true,
        (SamplerKind::AlwaysOff, _) => false,
        (SamplerKind::TraceIdRatio, _) => by_ratio,
        (SamplerKind::ParentBasedAlwaysOn, parent) => parent.unwrap_or(true),
        (SamplerKind::ParentBasedAlwaysOff, parent) => parent.unwrap_or(false),
        (SamplerKind::ParentBasedTraceIdRatio, parent) => parent.unwrap_or(by_ratio),
    }
}

static HEAD: OnceLock<SamplerKind> = OnceLock::new();
/// The sampling ratio in force, as `f64` bits: changed live by the settings
/// file ([`set_ratio`]).
static RATIO: AtomicU64 = AtomicU64::new(0);

/// Changes the share of new traces sampled, at once (`OTEL_TRACES_SAMPLER_ARG`
/// re-read from the settings file). Out-of-range values are clamped.
pub fn set_ratio(ratio: f64) {
    RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// The sampling ratio in force.
pub fn sampling_ratio() -> f64 {
    f64::from_bits(RATIO.load(Ordering::Relaxed))
}

/// Whether the caller's sampled flag counts: trusted callers (a gateway
/// calling a counter) decide for the callee; untrusted ones (any client of
/// the public port) could otherwise have every request traced by sending
/// `-01`, so their flag is ignored and this service's own sampler decides
/// (still continuing the caller's trace id when it samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Trusted,
    Untrusted,
}

/// Whether to trace a request arriving with `parent` (see [`decide`]).
pub fn sample(parent: &Context, caller: Caller) -> bool {
    let Some(&kind) = HEAD.get().filter(|_| enabled()) else { return false };
    let ratio = sampling_ratio();
    let span = parent.span();
    let context = span.span_context();
    let parent_sampled = (context.is_valid() && caller == Caller::Trusted).then(|| context.is_sampled());
    // From a trusted caller's trace id when there is one, so every service
    // taking the same ratio decision on a trace agrees (as the spec's
    // TraceIdRatioBased does); a fresh random number otherwise — an
    // untrusted caller could pick trace ids that always pass the ratio.
    let bits = if context.is_valid() && caller == Caller::Trusted {
        let id = context.trace_id().to_bytes();
        u64::from_be_bytes([id[8], id[9], id[10], id[11], id[12], id[13], id[14], id[15]])
    } else {
        u64::from_be_bytes(RandomIdGenerator::default().new_span_id().to_bytes())
    };
    let draw = bits as f64 / (u64::MAX as f64 + 1.0);
    decide(kind, ratio, parent_sampled, draw)
}

/// A `traceparent` saying "not sampled", for calls made on behalf of an
/// unsampled request: the callee then does not start a trace of its own.
pub fn unsampled_traceparent() -> http::HeaderValue {
    let ids = RandomIdGenerator::default();
    let value = format!("00-{}-{}-00", ids.new_trace_id(), ids.new_span_id());
    http::HeaderValue::from_str(&value).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("OTLP exporter for {endpoint}: {source}")]
    Build { endpoint: String, source: opentelemetry_otlp::ExporterBuildError },
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Tls { endpoint: String, reason: String },
}

/// The gRPC channel to an `https://` collector: rustls with the CA and
/// client certificate settings (read at startup).
fn tls_channel(args: &TelemetryArgs, endpoint: &str) -> Result<tonic::transport::Channel, ExporterError> {
    let fail = |reason: String| ExporterError::Tls { endpoint: crate::redact::userinfo(endpoint).into_owned(), reason };
    let ca = args.otlp_certificate.as_ref().map(|ca| SettingFile::new("OTEL_EXPORTER_OTLP_CERTIFICATE", ca));
    if ca.is_none() && !endpoint.starts_with("https://") {
        return Err(fail("client certificate settings are set, but the endpoint is not https://".into()));
    }
    let identity = args.otlp_client_certificate.as_ref().zip(args.otlp_client_key.as_ref()).map(|(cert, key)| {
        (
            SettingFile::new("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
            SettingFile::new("OTEL_EXPORTER_OTLP_CLIENT_KEY", key),
        )
    });
    let config = tls::client(tls::ClientFiles { ca, identity }, tls::ALPN_H2).map_err(|err| fail(err.to_string()))?;
    let upstream = tls::UpstreamTls { config: std::sync::Arc::new(config), server_name: None };
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|err| fail(err.to_string()))?
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tls::Connector::new(upstream));
    Ok(channel)
}

/// The tracer provider; [`Tracing::shutdown`] exports what is queued.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Flushes queued spans (bounded by the export timeout) and stops.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("trace export shutdown: {err}");
        }
    }
}

/// Spans waiting for export at most; beyond it new spans are dropped.
const QUEUE: usize = 8192;

/// Builds the exporter and provider when an endpoint is set (must run
/// inside the Tokio runtime: the gRPC channel lives on it). Returns the
/// provider and the `tracing` layer feeding it.
pub fn build(
    args: &TelemetryArgs,
    default_name: &str,
    version: &str,
) -> Result<Option<(Tracing, BoxedLayer)>, ExporterError> {
    let Some(endpoint) = &args.otlp_endpoint else { return Ok(None) };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5));
    let tls_settings = args.otlp_certificate.is_some() || args.otlp_client_certificate.is_some();
    if endpoint.starts_with("https://") || tls_settings {
        exporter = exporter.with_channel(tls_channel(args, endpoint)?);
    }
    let exporter = exporter
        .build()
        .map_err(|source| ExporterError::Build { endpoint: crate::redact::userinfo(endpoint).into_owned(), source })?;
    // OTEL_BSP_* variables tune the processor; only the queue gets a larger
    // default than the SDK's 2048, for bursts at high request rates.
    let mut batch = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batch = batch.with_max_queue_size(QUEUE);
    }
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch.build()).build();
    let name = args.service_name.clone().unwrap_or_else(|| default_name.to_string());
    let mut attributes = vec![KeyValue::new("service.version", version.to_string())];
    for (variable, attribute) in [("POD_NAME", "k8s.pod.name"), ("POD_NAMESPACE", "k8s.namespace.name")] {
        if let Ok(value) = std::env::var(variable) {
            attributes.push(KeyValue::new(attribute, value));
        }
    }
    let resource = Resource::builder().with_service_name(name.clone()).with_attributes(attributes).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        // Sampling happens at the edges ([`sample`]); what reaches the SDK is kept.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    // Only what the spans say themselves: no source locations, thread or
    // target attributes, busy/idle timing or context activation on each
    // poll (nothing else here reads the active OpenTelemetry context) —
    // each costs allocations or clock reads per span or per poll.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(name))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .boxed();
    let _ = HEAD.set(args.sampler);
    set_ratio(args.sampler_arg);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((Tracing { provider }, layer)))
}

/// Makes `span` continue `parent`'s trace and records its trace id as the
/// span's `trace_id` field (declared empty), which log lines then carry.
pub fn adopt(span: &tracing::Span, parent: Context) {
    let _ = span.set_parent(parent);
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id);
    }
}

/// Records a gRPC status code on an RPC span (`rpc.grpc.status_code`); any
/// code but OK (0) marks the span failed.
pub fn record_grpc_status(span: &tracing::Span, code: i32) {
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The remote parent carried by `traceparent`/`tracestate` headers.
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `span`'s context as `traceparent`/`tracestate` into `headers`.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// `span`'s OpenTelemetry identity, for links between batched work.
pub fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Links `batch` and each of `members` both ways: the batch lists what it
/// carried, and each member's trace points at the batch that served it.
pub fn link_batch<'a>(batch: &tracing::Span, members: impl IntoIterator<Item = &'a tracing::Span>) {
    let batch_context = span_context(batch);
    for member in members {
        let member_context = span_context(member);
        if member_context.is_valid() {
            batch.add_link(member_context);
            member.add_link(batch_context.clone());
        }
    }
}

/// The trace id of `span` in hex, for log lines; `None` when unsampled/off.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span_context(span);
    context.is_valid().then(|| context.trace_id().to_string())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_decisions_follow_the_sampler_and_the_caller() {
        use SamplerKind::*;
        assert!(decide(AlwaysOn, 0.0, Some(false), 0.9));
        assert!(!decide(AlwaysOff, 1.0, Some(true), 0.0));
        assert!(decide(TraceIdRatio, 0.5, Some(false), 0.4), "ignores the caller");
        assert!(!decide(TraceIdRatio, 0.5, Some(true), 0.6));
        // Parent-based: a sampled caller is followed even at ratio 0, an
        // unsampled one is not traced even at ratio 1.
        assert!(decide(ParentBasedTraceIdRatio, 0.0, Some(true), 0.99));
        assert!(!decide(ParentBasedTraceIdRatio, 1.0, Some(false), 0.0));
        assert!(decide(ParentBasedTraceIdRatio, 0.1, None, 0.05));
        assert!(!decide(ParentBasedTraceIdRatio, 0.1, None, 0.15));
        assert!(decide(ParentBasedAlwaysOn, 0.0, None, 0.5));
        assert!(!decide(ParentBasedAlwaysOff, 1.0, None, 0.0));
    }

    #[test]
    fn ratios_outside_zero_to_one_are_refused() {
        assert_eq!(ratio("0.25"), Ok(0.25));
        assert!(ratio("1.5").is_err());
        assert!(ratio("-0.1").is_err());
        assert!(ratio("lots").is_err());
    }

    #[test]
    fn traceparent_round_trips_through_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let context = extract(&headers);
        let span = context.span();
        let remote = span.span_context();
        assert_eq!(remote.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(remote.is_sampled() && remote.is_remote());
        let mut out = http::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut out));
        assert_eq!(out["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let garbage =
            http::HeaderMap::from_iter([(http::header::HeaderName::from_static("traceparent"), "zz".parse().unwrap())]);
        assert!(!extract(&garbage).span().span_context().is_valid(), "a malformed header starts a new trace");
    }
}
