//! A minimal OTLP/gRPC trace collector for `make bench-tracing`: accepts
//! every export, counts the spans, keeps none. It stands in for a working
//! Jaeger so the cost of exporting can be told apart from the cost of a
//! collector that is down.
//!
//!   otlp-sink 127.0.0.1:4317   (prints the span count when stopped)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4317".into()).parse()?;
    let count = Arc::new(AtomicU64::new(0));
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { if let Some(t) = term.as_mut() { t.recv().await; } } => {}
        }
    };
    println!("otlp-sink listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink(count.clone())))
        .serve_with_shutdown(addr, stop)
        .await?;
    println!("otlp-sink received {} spans", count.load(Ordering::Relaxed));
    Ok(())
}
