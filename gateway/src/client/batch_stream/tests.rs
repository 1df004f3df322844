use super::*;
use crate::client::retry::{Failure, classify};

fn failures(end: End) -> Vec<Failure> {
    unanswered(end).take(3).map(|status| classify(&status)).collect()
}

#[test]
fn after_a_clean_end_no_unanswered_batch_was_applied() {
    assert_eq!(failures(End::Clean), vec![Failure::NotSent; 3]);
}

#[test]
fn a_batch_the_counter_failed_unapplied_leaves_the_rest_unread() {
    let mut status = Status::unavailable("store down");
    WriteOutcome::NotApplied.mark(&mut status);
    assert_eq!(failures(End::Failed(status)), vec![Failure::NotSent; 3]);
}

#[test]
fn a_stream_that_never_reached_the_counter_leaves_every_batch_on_it_unread() {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let no_connection = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
    assert_eq!(failures(End::Failed(no_connection)), vec![Failure::NotSent; 3]);
    let cut = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
    assert_eq!(failures(End::Failed(cut)), vec![Failure::Unknown; 3], "taken, then cut: unknown");
}

/// An older counter: tonic answers a method it does not serve
/// `UNIMPLEMENTED`, here a server with only the health service.
async fn older_counter() -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        Some((listener.accept().await.map(|(stream, _)| stream), listener))
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect_lazy()
}

fn client_on(channel: &Channel) -> CounterClient {
    CounterServiceClient::new(crate::client::whole_body::WholeBody(channel.clone()))
}

async fn without_the_stream<K: Streamed>(request: impl Fn() -> K::Request) {
    let channel = older_counter().await;
    let client = || client_on(&channel);

    let streams = BatchStreams::<K>::new(1, Duration::from_secs(5));
    assert!(streams.supported());
    // The stream is answered UNIMPLEMENTED, and the same batch goes on
    // as a unary call, which this server does not serve either: the
    // error is the unary call's.
    let Err(status) = streams.send(|| channel.clone(), client, request()).await else { panic!("not served") };
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(!status.message().contains(K::METHOD), "the batch was sent again as a unary call: {status:?}");
    assert!(!streams.supported(), "later batches go as unary calls");
    let Err(unary) = streams.send(|| panic!("no stream is opened"), client, request()).await else {
        panic!("not served")
    };
    assert_eq!(unary.code(), Code::Unimplemented, "the unary call reached the server: {unary:?}");
    // What the stream's refusal said, for the call stack.
    let Err(stream) = streams.call(|| channel.clone(), request()).await else { panic!("not served") };
    assert!(stream.message().contains(K::METHOD), "{stream:?}");
    assert_eq!(classify(&stream), Failure::NotSent, "nothing was read: safe to send again");
}

#[tokio::test]
async fn a_counter_without_the_streams_gets_the_batch_as_a_unary_call_at_once_and_after() {
    without_the_stream::<IncrementBatches>(BatchIncrementRequest::default).await;
    without_the_stream::<ReadBatches>(BatchGetRequest::default).await;
}

#[tokio::test]
async fn a_stream_is_tried_again_once_the_recheck_interval_passed() {
    let channel = older_counter().await;
    let mut streams = BatchStreams::<IncrementBatches>::new(1, Duration::from_secs(5));
    streams.recheck_after = Duration::from_secs(3600);
    let opened = AtomicU64::new(0);
    let channel_counted = || {
        opened.fetch_add(1, Ordering::Relaxed);
        channel.clone()
    };
    let send = || streams.send(channel_counted, || client_on(&channel), BatchIncrementRequest::default());
    assert!(send().await.is_err(), "this counter serves neither the stream nor the unary call");
    assert!(send().await.is_err());
    assert_eq!(opened.load(Ordering::Relaxed), 1, "within the interval: unary calls only");
    // The interval passed: the next batch tries a stream again.
    streams.recheck_at_ms.store(0, Ordering::Relaxed);
    assert!(!streams.supported(), "still refused until a stream answers");
    let Err(status) = send().await else { panic!("not served") };
    assert_eq!(status.code(), Code::Unimplemented, "resent as a unary call: {status:?}");
    assert_eq!(opened.load(Ordering::Relaxed), 2, "one stream tried");
    assert!(!streams.supported(), "refused again: back to unary calls");
    assert!(send().await.is_err());
    assert_eq!(opened.load(Ordering::Relaxed), 2, "and no stream until the next interval");
}

#[test]
fn after_a_transport_failure_the_outcomes_are_unknown() {
    let reset = Status::unavailable("connection reset");
    assert_eq!(failures(End::Failed(reset)), vec![Failure::Unknown; 3]);
    let refused = Status::invalid_argument("operations[3]: bad counter_type");
    assert_eq!(failures(End::Failed(refused)), vec![Failure::Refused, Failure::Unknown, Failure::Unknown]);
}
