//! Tests of [`bidirectional`] over in-memory pipes: `client` and `server` are the far ends of
//! two `tokio::io::duplex` pairs whose near ends the copy joins.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::task::JoinHandle;

use super::*;
use crate::records::Direction;

/// Bounds every wait of these tests.
const WAIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn record() -> Arc<ConnRecord> {
    Arc::new(ConnRecord::new(
        Direction::Inbound,
        SocketAddr::from(([127, 0, 0, 1], 40000)),
        None,
        None,
        None,
        "allow",
        "",
    ))
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

/// Starts copying between the near ends of two pipes; returns the far ends and the copy.
fn start(
    pipe: usize,
    idle: Duration,
    record: &Arc<ConnRecord>,
) -> (
    DuplexStream,
    DuplexStream,
    JoinHandle<Result<(), CopyError>>,
) {
    let (client, near_client) = duplex(pipe);
    let (near_server, server) = duplex(pipe);
    let record = record.clone();
    let copy =
        tokio::spawn(async move { bidirectional(near_client, near_server, idle, &record).await });
    (client, server, copy)
}

/// Writes all of `data` and half-closes while reading to EOF; returns what was read.
async fn exchange<S: AsyncRead + AsyncWrite>(stream: S, data: Vec<u8>) -> io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async move {
        w.write_all(&data).await?;
        w.shutdown().await
    };
    let read = async move {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    };
    let ((), out) = tokio::try_join!(write, read)?;
    Ok(out)
}

#[tokio::test]
async fn megabytes_both_ways_at_once_arrive_intact_and_are_counted() {
    let rec = record();
    let (client, server, copy) = start(64 * 1024, Duration::from_secs(60), &rec);
    let up = pattern(1, 5 * 1024 * 1024 + 123);
    let down = pattern(2, 3 * 1024 * 1024 + 7);
    let (got_down, got_up) = within("both transfers", async {
        tokio::join!(exchange(client, up.clone()), exchange(server, down.clone()))
    })
    .await;
    assert_same("client to server", &got_up.unwrap(), &up);
    assert_same("server to client", &got_down.unwrap(), &down);
    within("the copy to end", copy).await.unwrap().unwrap();
    assert_eq!(rec.bytes_sent.load(Ordering::Relaxed), up.len() as u64);
    assert_eq!(
        rec.bytes_received.load(Ordering::Relaxed),
        down.len() as u64
    );
}

impl Endpoint for DuplexStream {}

impl<T: AsyncRead + AsyncWrite + Unpin> Endpoint for WriteSizes<T> {}

/// One CONNECT stream of an HTTP/2 connection over an in-memory pipe (default 64 KiB windows,
/// so flow control holds the sender back): its client end and its server end. Tasks of their
/// own drive both connections.
async fn tunnel_stream() -> (H2Stream, H2Stream) {
    let (near, far) = duplex(256 * 1024);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(far).await.unwrap();
        let (request, mut respond) = conn.accept().await.unwrap().unwrap();
        let send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        H2Stream::new(send, request.into_body())
    });
    let (client, conn) = h2::client::handshake(near).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("198.18.0.1:80")
        .body(())
        .unwrap();
    let (response, send) = client.send_request(request, false).unwrap();
    let response = within("the CONNECT answer", response).await.unwrap();
    let server_end = within("the CONNECT stream", server).await.unwrap();
    (H2Stream::new(send, response.into_body()), server_end)
}

#[tokio::test]
async fn megabytes_through_a_tunnel_stream_both_ways_arrive_intact_counted_and_half_closed() {
    // The copy joins the server end of a CONNECT stream and an app pipe: the direction from the
    // stream writes its DATA frames as they are, the one to it reads into the chunks it sends.
    let (client_end, server_end) = tunnel_stream().await;
    let (app, near_app) = duplex(64 * 1024);
    let rec = record();
    let copy = tokio::spawn({
        let rec = rec.clone();
        async move { bidirectional(server_end, near_app, Duration::from_secs(60), &rec).await }
    });
    let up = pattern(7, 5 * 1024 * 1024 + 99);
    let down = pattern(8, 3 * 1024 * 1024 + 5);
    let (got_up, got_down) = within("both transfers", async {
        tokio::join!(
            exchange(app, down.clone()),
            exchange(client_end, up.clone())
        )
    })
    .await;
    assert_same("stream to app", &got_up.unwrap(), &up);
    assert_same("app to stream", &got_down.unwrap(), &down);
    within("the copy to end", copy).await.unwrap().unwrap();
    assert_eq!(rec.bytes_sent.load(Ordering::Relaxed), up.len() as u64);
    assert_eq!(
        rec.bytes_received.load(Ordering::Relaxed),
        down.len() as u64
    );
}

/// Records the size of every write offered to the wrapped stream.
struct WriteSizes<T> {
    inner: T,
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteSizes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteSizes<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.sizes.lock().unwrap().push(buf.len());
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_bulk_direction_grows_its_buffer_up_to_buf_max() {
    // 200 KiB waiting before the copy starts: every read fills its buffer until the end.
    let total = 200 * 1024;
    let data = pattern(3, total);
    let (mut client, near_client) = duplex(256 * 1024);
    let (near_server, mut server) = duplex(256 * 1024);
    client.write_all(&data).await.unwrap();
    client.shutdown().await.unwrap();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let near_server = WriteSizes {
        inner: near_server,
        sizes: sizes.clone(),
    };
    let rec = record();
    let copy = bidirectional(near_client, near_server, Duration::from_secs(60), &rec);
    let read = async {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        server.shutdown().await.unwrap();
        got
    };
    let (res, got) = within("the copy", async { tokio::join!(copy, read) }).await;
    res.unwrap();
    assert_same("client to server", &got, &data);
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(
        sizes[..5],
        [BUF_START, 2 * BUF_START, 4 * BUF_START, BUF_MAX, BUF_MAX],
        "reads that fill the buffer double it up to BUF_MAX: {sizes:?}"
    );
    assert!(sizes.iter().all(|&n| n <= BUF_MAX), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), total, "{sizes:?}");
}

#[tokio::test]
async fn one_full_read_then_silence_grows_the_buffer_only_once() {
    let (mut client, near_client) = duplex(256 * 1024);
    let (near_server, mut server) = duplex(256 * 1024);
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let near_server = WriteSizes {
        inner: near_server,
        sizes: sizes.clone(),
    };
    let rec = record();
    let copy = tokio::spawn({
        let rec = rec.clone();
        async move { bidirectional(near_client, near_server, Duration::from_secs(60), &rec).await }
    });
    // One message of exactly BUF_START bytes: one read that fills the buffer, then nothing.
    let message = pattern(5, BUF_START);
    client.write_all(&message).await.unwrap();
    let mut got = vec![0u8; BUF_START];
    within("the message", server.read_exact(&mut got))
        .await
        .unwrap();
    assert_same("message", &got, &message);
    // Traffic the other way wakes the copy; each time the quiet direction finds nothing to
    // read. That is no bulk transfer: its buffer must not keep doubling.
    for _ in 0..4 {
        server.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        within("a reply byte", client.read_exact(&mut b))
            .await
            .unwrap();
    }
    // Now plenty arrives at once: the next read shows the buffer's size.
    let bulk = pattern(6, 200 * 1024);
    client.write_all(&bulk).await.unwrap();
    let mut got = vec![0u8; bulk.len()];
    within("the bulk", server.read_exact(&mut got))
        .await
        .unwrap();
    assert_same("bulk", &got, &bulk);
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes[0], BUF_START, "{sizes:?}");
    assert_eq!(
        sizes[1],
        2 * BUF_START,
        "one full read earns one doubling, however often the copy is polled: {sizes:?}"
    );
    drop((client, server));
    let _ = within("the copy to end", copy).await.unwrap();
}

/// One end sends a little and half-closes; the other must see EOF, and can still send a
/// megabyte back afterwards; only then does the copy end.
async fn half_close_then_reply(client_closes_first: bool) {
    let rec = record();
    let (client, server, copy) = start(16 * 1024, Duration::from_secs(60), &rec);
    let (mut closer, mut replier) = if client_closes_first {
        (client, server)
    } else {
        (server, client)
    };
    let request = b"the whole request".to_vec();
    closer.write_all(&request).await.unwrap();
    closer.shutdown().await.unwrap();

    let mut seen = Vec::new();
    within("the half-close to arrive", replier.read_to_end(&mut seen))
        .await
        .unwrap();
    assert_eq!(seen, request);
    assert!(
        !copy.is_finished(),
        "one direction closed; the copy must keep the other open"
    );

    let reply = pattern(4, 1024 * 1024);
    let send_reply = async {
        for chunk in reply.chunks(10_000) {
            replier.write_all(chunk).await.unwrap();
        }
        replier.shutdown().await.unwrap();
    };
    let read_reply = async {
        let mut got = Vec::new();
        closer.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = within("the reply", async { tokio::join!(send_reply, read_reply) }).await;
    assert_same("reply after the half-close", &got, &reply);
    within("the copy to end", copy).await.unwrap().unwrap();

    let (from_client, from_server) = if client_closes_first {
        (request.len(), reply.len())
    } else {
        (reply.len(), request.len())
    };
    assert_eq!(rec.bytes_sent.load(Ordering::Relaxed), from_client as u64);
    assert_eq!(
        rec.bytes_received.load(Ordering::Relaxed),
        from_server as u64
    );
}

#[tokio::test]
async fn a_client_half_close_reaches_the_server_and_the_reply_still_flows() {
    half_close_then_reply(true).await;
}

#[tokio::test]
async fn a_server_half_close_reaches_the_client_and_the_upload_still_flows() {
    half_close_then_reply(false).await;
}

#[tokio::test]
async fn the_idle_timeout_fires_when_nothing_moves() {
    let rec = record();
    let idle = Duration::from_millis(300);
    let started = std::time::Instant::now();
    // The far ends stay open (held here) but silent.
    let (_client, _server, copy) = start(1024, idle, &rec);
    let res = within("the idle timeout", copy).await.unwrap();
    assert!(
        matches!(res, Err(CopyError::Idle(d)) if d == idle),
        "{res:?}"
    );
    assert!(
        started.elapsed() >= idle,
        "fired early: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn traffic_holds_off_the_idle_timeout() {
    let rec = record();
    let idle = Duration::from_millis(400);
    let (mut client, mut server, copy) = start(1024, idle, &rec);
    // A byte every 50 ms for three idle periods, each read on the far side before the next.
    for i in 0..24u8 {
        client.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        within("a byte", server.read_exact(&mut b)).await.unwrap();
        assert_eq!(b[0], i);
        assert!(
            !copy.is_finished(),
            "the copy ended while bytes were moving"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = std::time::Instant::now();
    let res = within("the idle timeout", copy).await.unwrap();
    assert!(matches!(res, Err(CopyError::Idle(_))), "{res:?}");
    assert!(
        quiet.elapsed() >= idle / 2,
        "idle counted from the start, not the last byte"
    );
    assert_eq!(rec.bytes_sent.load(Ordering::Relaxed), 24);
}

#[tokio::test]
async fn an_end_that_vanishes_ends_the_copy_with_an_error() {
    let rec = record();
    let (mut client, server, copy) = start(1024, Duration::from_secs(60), &rec);
    drop(server);
    // The server's side reads as EOF, passed on to the client as EOF...
    let mut got = Vec::new();
    within("EOF from the vanished server", client.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got.is_empty());
    // ...and writing towards it fails, which ends the copy with an I/O error.
    let _ = client.write_all(&[0u8; 4096]).await;
    let res = within("the copy to fail", copy).await.unwrap();
    assert!(matches!(res, Err(CopyError::Io(_))), "{res:?}");
}

#[tokio::test]
async fn bytes_of_a_connection_still_open_are_reported_at_its_idle_checks() {
    let (mut client, near_client) = duplex(64 * 1024);
    let (near_server, mut server) = duplex(64 * 1024);
    let rec = record();
    let reported = Arc::new(AtomicU64::new(0));
    let copy = tokio::spawn({
        let (rec, reported) = (rec.clone(), reported.clone());
        async move {
            let report = || {
                let sent = rec.bytes_sent.load(Ordering::Relaxed);
                reported.store(sent, Ordering::Relaxed);
            };
            // Idle checks every 500 ms; the connection stays open 2 s without traffic.
            bidirectional_reporting(
                near_client,
                near_server,
                Duration::from_secs(2),
                &rec,
                &report,
            )
            .await
        }
    });
    client.write_all(b"still open").await.unwrap();
    let mut got = [0u8; 10];
    within("the message", server.read_exact(&mut got))
        .await
        .unwrap();
    within("a report while the connection is open", async {
        while reported.load(Ordering::Relaxed) != 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!copy.is_finished(), "reported while the copy still runs");
    drop((client, server));
    let _ = within("the copy ends", copy).await;
}

/// Polls `way` once from `r` to `w`: whether it is still pending.
async fn poll_once(way: &mut OneWay, r: &mut DuplexStream, w: &mut DuplexStream) -> bool {
    let (counter, activity) = (AtomicU64::new(0), AtomicU64::new(0));
    let meter = Meter {
        counter: &counter,
        activity: &activity,
        epoch: Instant::now(),
    };
    std::future::poll_fn(|cx| Poll::Ready(way.poll_copy(cx, r, w, &meter).is_pending())).await
}

#[tokio::test]
async fn a_direction_waiting_for_bytes_holds_no_buffer_and_one_holding_bytes_keeps_them() {
    let (mut app, mut near_read) = duplex(64 * 1024);
    // A pipe of 4 bytes: the writer side blocks after 4.
    let (mut near_write, mut peer) = duplex(4);
    let mut way = OneWay::new();
    app.write_all(b"hello, world").await.unwrap();
    // Read 12 bytes, wrote 4, the writer is full: the bytes stay in the buffer.
    assert!(poll_once(&mut way, &mut near_read, &mut near_write).await);
    assert!(way.holds_buffer(), "unwritten bytes were given back");
    let mut got = [0u8; 12];
    let reader = async {
        peer.read_exact(&mut got).await.unwrap();
    };
    let copier = async {
        // Poll until the direction has written everything and waits for more bytes.
        for _ in 0..100 {
            if !poll_once(&mut way, &mut near_read, &mut near_write).await || !way.holds_buffer() {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    within("the bytes to pass", async { tokio::join!(reader, copier) }).await;
    assert_eq!(&got, b"hello, world");
    assert!(poll_once(&mut way, &mut near_read, &mut near_write).await);
    assert!(!way.holds_buffer(), "an idle direction keeps its buffer");
}
