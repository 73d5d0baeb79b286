//! The tunnel listener against an HTTP/2 client driven by hand (a peer that asks for the wrong
//! things on a valid mTLS connection), and byte streams through a real proxy pair: bulk both
//! ways at once, half-close.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_proxy::records::{ConnRecord, Direction};
use trellis_proxy::tunnel::REASON_HEADER;

const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
/// Bounds a bulk transfer (debug builds, two cores).
const BULK_WAIT: Duration = Duration::from_secs(90);

/// Sends `req` on a new stream of the connection and waits for the response head.
async fn ask(
    send: &SendRequest<Bytes>,
    req: Request<()>,
    end_of_stream: bool,
) -> (Response<RecvStream>, SendStream<Bytes>) {
    within(WAIT, "a response", async {
        let mut ready = send.clone().ready().await.unwrap();
        let (response, stream) = ready.send_request(req, end_of_stream).unwrap();
        (response.await.unwrap(), stream)
    })
    .await
}

fn connect_to(authority: &str) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .body(())
        .unwrap()
}

fn reason(response: &Response<RecvStream>) -> String {
    response
        .headers()
        .get(REASON_HEADER)
        .unwrap_or_else(|| panic!("no {REASON_HEADER} on {}", response.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Reads DATA until `n` bytes have arrived, returning the window as it goes.
async fn read_n(body: &mut RecvStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let data = within(WAIT, "DATA", body.data())
            .await
            .expect("stream ended early")
            .unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        got.extend_from_slice(&data);
    }
    got
}

/// Reads DATA until the end of the stream.
async fn read_to_end(body: &mut RecvStream) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        got.extend_from_slice(&data);
    }
    got
}

#[tokio::test]
async fn bad_connects_are_refused_on_their_stream_and_the_tunnel_carries_on() {
    let cp = ControlPlane::start(&[]).await;
    let app = echo_app().await;
    let backend = proxy(&cp, TOKENS[1].0, &[]).await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let tls = client_tls(&cp, TOKENS[0].0).await;
    let (send, driver) = tunnel_connection(tunnel, tls).await;

    // a) Not a CONNECT.
    let get = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{app}/"))
        .body(())
        .unwrap();
    let (response, _) = ask(&send, get, true).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(reason(&response).contains("only CONNECT"), "{response:?}");

    // b) A name, not ip:port.
    let (response, _) = ask(&send, connect_to("backend:80"), false).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(reason(&response).contains("not ip:port"), "{response:?}");

    // c) An address of another pod: the tunnel is no open relay.
    let (response, _) = ask(&send, connect_to("198.18.0.99:80"), false).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        reason(&response).contains("outside this pod"),
        "{response:?}"
    );

    // d) The app's address, but the tunnel's own port.
    let proxy_port = SocketAddr::new(app.ip(), trellis_proxy::ports::TUNNEL);
    let (response, _) = ask(&send, connect_to(&proxy_port.to_string()), false).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        reason(&response).contains("belongs to the proxy"),
        "{response:?}"
    );

    // e) The same connection still serves a good CONNECT, both ways, to the end.
    assert!(
        !driver.is_finished(),
        "refusals must not end the connection"
    );
    let (response, mut stream) = ask(&send, connect_to(&app.to_string()), false).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(REASON_HEADER).is_none());
    let mut body = response.into_body();
    let message = b"hello over a hand-made tunnel stream";
    stream
        .send_data(Bytes::from_static(message), false)
        .unwrap();
    assert_eq!(read_n(&mut body, message.len()).await, message);
    stream.send_data(Bytes::new(), true).unwrap(); // END_STREAM: the app sees EOF...
    let rest = within(
        WAIT,
        "END_STREAM from the app's side",
        read_to_end(&mut body),
    )
    .await;
    assert!(rest.is_empty(), "nothing more was sent, got {rest:?}"); // ...and closes.
    assert!(!driver.is_finished(), "the connection outlives its streams");

    // f) Each refusal is on record as a deny for this client's identity.
    let log = backend.ctx.log.recent(100);
    let inbound: Vec<&Arc<ConnRecord>> = log
        .iter()
        .filter(|r| r.direction == Direction::Inbound)
        .collect();
    assert_eq!(inbound.len(), 5, "{inbound:#?}");
    let expect = [
        ("deny", None, "only CONNECT"),
        ("deny", None, "not ip:port"),
        (
            "deny",
            Some("198.18.0.99:80".parse().unwrap()),
            "outside this pod",
        ),
        ("deny", Some(proxy_port), "belongs to the proxy"),
        ("allow", Some(app), ""),
    ];
    for (rec, (decision, dst, why)) in inbound.iter().zip(expect) {
        assert_eq!(rec.decision, decision, "{rec:?}");
        assert_eq!(rec.peer_id.as_deref(), Some(FRONTEND), "{rec:?}");
        assert_eq!(rec.dst, dst, "{rec:?}");
        assert!(rec.reason.contains(why), "{rec:?}");
        let tls = rec.tls.as_ref().expect("tunnel records carry TLS facts");
        assert_eq!(tls.version, "TLSv1_3");
        assert_eq!(tls.alpn.as_deref(), Some("h2"));
    }
    assert_eq!(
        inbound
            .iter()
            .filter(|r| r.tls.as_ref().is_some_and(|t| !t.reused))
            .count(),
        1,
        "one handshake, five streams: {inbound:#?}"
    );
    let allowed = inbound[4];
    assert!(
        eventually(WAIT, || !allowed
            .open
            .load(std::sync::atomic::Ordering::Relaxed))
        .await,
        "the finished stream's record is closed"
    );
    assert_eq!(
        allowed
            .bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        message.len() as u64
    );
    assert_eq!(
        allowed
            .bytes_received
            .load(std::sync::atomic::Ordering::Relaxed),
        message.len() as u64
    );
    backend.shutdown().await;
}

/// An app that ignores what it is sent and writes a chunk every 20 ms until a write fails;
/// reports each connection's end on the channel.
async fn chatty_app() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<std::io::Error>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let err = loop {
                    if let Err(e) = s.write_all(b"tick ").await {
                        break e;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                let _ = tx.send(err);
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_stream_the_client_resets_is_torn_down_and_the_tunnel_carries_on() {
    let cp = ControlPlane::start(&[]).await;
    let (app, mut ended) = chatty_app().await;
    let backend = proxy(&cp, TOKENS[1].0, &[]).await;
    let tls = client_tls(&cp, TOKENS[0].0).await;
    let (send, driver) = tunnel_connection(backend.addrs.tunnel.unwrap(), tls).await;

    let (response, mut stream) = ask(&send, connect_to(&app.to_string()), false).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(read_n(&mut body, 5).await, b"tick ");
    stream.send_reset(h2::Reason::CANCEL);

    // The app does not react to EOF; its connection must still be closed under it.
    let err = within(WAIT, "the app's connection to be torn down", ended.recv())
        .await
        .unwrap();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
    let log = backend.ctx.log.recent(10);
    let rec = log
        .iter()
        .find(|r| r.direction == Direction::Inbound && r.decision == "allow")
        .unwrap()
        .clone();
    assert!(
        eventually(WAIT, || !rec
            .open
            .load(std::sync::atomic::Ordering::Relaxed))
        .await,
        "the reset stream's record stays open"
    );

    // Another stream on the same connection works.
    assert!(
        !driver.is_finished(),
        "a stream reset must not end the connection"
    );
    let (response, _stream) = ask(&send, connect_to(&app.to_string()), false).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(read_n(&mut body, 5).await, b"tick ");
    backend.shutdown().await;
}

#[tokio::test]
async fn a_stream_shut_down_once_refuses_further_writes_at_once() {
    use trellis_proxy::tunnel::stream::H2Stream;
    let cp = ControlPlane::start(&[]).await;
    let app = echo_app().await;
    let backend = proxy(&cp, TOKENS[1].0, &[]).await;
    let tls = client_tls(&cp, TOKENS[0].0).await;
    let (send, _driver) = tunnel_connection(backend.addrs.tunnel.unwrap(), tls).await;
    let (response, stream) = ask(&send, connect_to(&app.to_string()), false).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut io = H2Stream::new(stream, response.into_body());

    io.write_all(b"last words").await.unwrap();
    within(WAIT, "the first shutdown", io.shutdown())
        .await
        .unwrap();
    // Shutting down again is harmless, and writing after it is an error: neither may wait.
    within(WAIT, "a second shutdown", io.shutdown())
        .await
        .unwrap();
    let write = within(WAIT, "a write after shutdown", io.write(b"more")).await;
    assert!(write.is_err(), "{write:?}");
    // The read half is unaffected.
    let mut echoed = Vec::new();
    within(WAIT, "the echo", io.read_to_end(&mut echoed))
        .await
        .unwrap();
    assert_eq!(echoed, b"last words");
    backend.shutdown().await;
}

/// `len` pseudo-random bytes (xorshift), different for every `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Compares without printing megabytes on failure.
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

/// The admitted record of `direction` in `running`'s log, once it is closed.
async fn closed_record(
    running: &trellis_proxy::run::Running,
    direction: Direction,
) -> Arc<ConnRecord> {
    let find = || {
        running
            .ctx
            .log
            .recent(10)
            .into_iter()
            .find(|r| r.direction == direction && r.decision == "allow")
    };
    assert!(
        eventually(WAIT, || find().is_some_and(|r| !r
            .open
            .load(std::sync::atomic::Ordering::Relaxed)))
        .await,
        "no closed {direction:?} record"
    );
    find().unwrap()
}

#[tokio::test]
async fn megabytes_cross_the_pair_both_ways_at_once_intact_and_in_order() {
    let cp = ControlPlane::start(&[]).await;
    let app = echo_app().await;
    let (frontend, backend, listen) = pair(&cp, app, BACKEND).await;
    let data = pattern(7, 8 * 1024 * 1024 + 4321);

    let (mut r, mut w) = TcpStream::connect(listen).await.unwrap().into_split();
    let write = async {
        // Writes of uneven sizes, so frame and record boundaries fall anywhere.
        let mut rest = &data[..];
        let mut size = 1usize;
        while !rest.is_empty() {
            let n = size.min(rest.len());
            w.write_all(&rest[..n]).await.unwrap();
            rest = &rest[n..];
            size = size * 7 % 200_003 + 1;
        }
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut got = Vec::with_capacity(data.len());
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = within(BULK_WAIT, "the echoed transfer", async {
        tokio::join!(write, read)
    })
    .await;
    assert_same("echo through the pair", &got, &data);

    let n = data.len() as u64;
    for (side, direction) in [
        (&frontend, Direction::Outbound),
        (&backend, Direction::Inbound),
    ] {
        let rec = closed_record(side, direction).await;
        let sent = rec.bytes_sent.load(std::sync::atomic::Ordering::Relaxed);
        let received = rec
            .bytes_received
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((sent, received), (n, n), "{direction:?} counters");
    }
    frontend.shutdown().await;
    backend.shutdown().await;
}

/// An app that answers only once the request has ended: reads to EOF, then sends back the
/// request reversed and closes.
async fn answer_after_eof_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                if s.read_to_end(&mut request).await.is_err() {
                    return;
                }
                request.reverse();
                let _ = s.write_all(&request).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_half_close_crosses_the_tunnel_and_the_reply_still_arrives() {
    let cp = ControlPlane::start(&[]).await;
    let app = answer_after_eof_app().await;
    let (frontend, backend, listen) = pair(&cp, app, BACKEND).await;
    let request = pattern(8, 300 * 1024);

    let mut s = TcpStream::connect(listen).await.unwrap();
    within(WAIT, "the request", s.write_all(&request))
        .await
        .unwrap();
    // Only the half-close tells the app the request is complete.
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    within(WAIT, "the reply", s.read_to_end(&mut reply))
        .await
        .unwrap();
    let mut want = request.clone();
    want.reverse();
    assert_same("reply after the half-close", &reply, &want);

    let rec = closed_record(&frontend, Direction::Outbound).await;
    assert_eq!(
        rec.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
        request.len() as u64
    );
    assert_eq!(
        rec.bytes_received
            .load(std::sync::atomic::Ordering::Relaxed),
        request.len() as u64
    );
    frontend.shutdown().await;
    backend.shutdown().await;
}

/// An app that reads each connection to its end and reports how it ended: the bytes, or the
/// error (a reset).
async fn reporting_app() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<std::io::Result<usize>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = tx.send(s.read_to_end(&mut got).await);
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn an_aborted_upload_reaches_the_far_app_as_a_reset_not_as_an_end() {
    let cp = ControlPlane::start(&[]).await;
    let (app, mut ended) = reporting_app().await;
    let (frontend, backend, listen) = pair(&cp, app, BACKEND).await;

    // Complete upload: the far app sees a clean end after every byte.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(&pattern(9, 10_000)).await.unwrap();
    s.shutdown().await.unwrap();
    let done = within(WAIT, "the far app to see the end", ended.recv())
        .await
        .unwrap();
    assert_eq!(done.unwrap(), 10_000);
    drop(s);

    // Aborted upload: the client resets its connection half-way.
    let s = TcpStream::connect(listen).await.unwrap();
    let mut s = s;
    s.write_all(&pattern(10, 10_000)).await.unwrap();
    s.set_zero_linger().unwrap();
    drop(s); // RST
    let aborted = within(WAIT, "the far app to see the abort", ended.recv())
        .await
        .unwrap();
    let err = aborted.expect_err("an aborted upload must not read as complete");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
    frontend.shutdown().await;
    backend.shutdown().await;
}
