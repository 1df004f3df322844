//! An OTLP/gRPC trace receiver, in process: the **test double for Jaeger**
//! (or any OpenTelemetry collector), built from `opentelemetry-proto`'s
//! generated service. Services under test export to [`OtlpReceiver::endpoint`];
//! tests wait for the spans they expect, woken by each export.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::{Notify, oneshot};

/// One received span, flattened for assertions (ids in lowercase hex).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: HashMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    arrived: Notify,
}

struct Collector(Arc<Received>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                        .collect(),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                });
            }
        }
        self.0.spans.lock().unwrap_or_else(|p| p.into_inner()).extend(received);
        self.0.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The running receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    https: bool,
    received: Arc<Received>,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Listens on a free loopback port.
    pub async fn start() -> OtlpReceiver {
        Self::start_with(None).await
    }

    /// Listens on a free loopback port, over TLS with `certs`' server certificate.
    pub async fn start_tls(certs: &crate::TestCerts) -> OtlpReceiver {
        Self::start_with(Some(certs)).await
    }

    async fn start_with(certs: Option<&crate::TestCerts>) -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Received::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let server =
            tonic::transport::Server::builder().add_service(TraceServiceServer::new(Collector(received.clone())));
        let stopped = async {
            let _ = stopped.await;
        };
        match certs {
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::spawn(server.serve_with_incoming_shutdown(incoming, stopped));
            }
            Some(certs) => {
                let incoming = crate::tls::TlsListener::new(listener, certs).incoming();
                tokio::spawn(server.serve_with_incoming_shutdown(incoming, stopped));
            }
        }
        OtlpReceiver { addr, https: certs.is_some(), received, _stop: stop }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the services under test.
    pub fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (woken by each export) until `done` holds for the spans
    /// received so far, or `timeout` passes; returns them either way.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an export in between still wakes us.
            let arrived = self.received.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.spans();
            }
        }
    }
}
