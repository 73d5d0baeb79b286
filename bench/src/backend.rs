//! The application every route ends at, run as its own process (`trellis-bench backend`) on a
//! single-threaded runtime so it neither shares the load generator's thread nor takes more
//! than one core:
//!
//! * an HTTP/1.1 server with keep-alive and one fixed small response ([`RESPONSE`]) for every
//!   request (requests have no body; pipelined requests are answered in order);
//! * a TCP sink/source for throughput: the client sends `U` + N (u64 LE) then N bytes, and the
//!   server answers N (u64 LE) once it has read them all; or `D` + N, and the server sends N
//!   bytes and closes.
//!
//! Owns: the wire formats both sides use ([`REQUEST`], [`RESPONSE`], [`UPLOAD`], [`DOWNLOAD`]).

use std::net::SocketAddr;
use std::sync::LazyLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The request the load generator sends.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
/// The backend's one response.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!";
/// Sink command: the client uploads.
pub const UPLOAD: u8 = b'U';
/// Source command: the client downloads.
pub const DOWNLOAD: u8 = b'D';
/// Chunk size for the sink and source.
pub const CHUNK: usize = 256 * 1024;

/// Responses written in one go when several requests arrived together.
const BATCH: usize = 64;
static RESPONSES: LazyLock<Vec<u8>> = LazyLock::new(|| RESPONSE.repeat(BATCH));

/// Serves HTTP on `http` and the sink/source on `stream` until killed.
pub fn run(http: SocketAddr, stream: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let http = TcpListener::bind(http).await?;
        let stream = TcpListener::bind(stream).await?;
        tokio::spawn(accept(stream, |s| async move {
            let _ = serve_stream(s).await;
        }));
        accept(http, |s| async move {
            let _ = serve_http(s).await;
        })
        .await;
        Ok(())
    })
}

async fn accept<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handler(s));
            }
            // Out of descriptors or similar: back off a little instead of spinning.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// Counts complete request heads (`\r\n\r\n`) in `bytes`, carrying the partial match in `state`.
pub fn count_requests(state: &mut u8, bytes: &[u8]) -> usize {
    const END: &[u8; 4] = b"\r\n\r\n";
    let mut count = 0;
    for &b in bytes {
        *state = if END.get(usize::from(*state)) == Some(&b) {
            *state + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
        if *state == 4 {
            count += 1;
            *state = 0;
        }
    }
    count
}

async fn serve_http(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut state = 0u8;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut due = count_requests(&mut state, &buf[..n]);
        while due > 0 {
            let k = due.min(BATCH);
            s.write_all(&RESPONSES[..k * RESPONSE.len()]).await?;
            due -= k;
        }
    }
}

async fn serve_stream(mut s: TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await?;
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[1..]);
    let total = u64::from_le_bytes(n);
    let mut buf = vec![0u8; CHUNK];
    match head[0] {
        UPLOAD => {
            let mut left = total;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let got = s.read(&mut buf[..want]).await?;
                if got == 0 {
                    return Ok(());
                }
                left -= got as u64;
            }
            s.write_all(&total.to_le_bytes()).await?;
            // Wait for the client to close, so the last bytes are not reset.
            let _ = s.read(&mut buf).await;
        }
        DOWNLOAD => {
            let mut left = total;
            while left > 0 {
                let k = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                s.write_all(&buf[..k]).await?;
                left -= k as u64;
            }
            s.shutdown().await?;
            let _ = s.read(&mut buf).await;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_counted_across_reads() {
        let mut st = 0;
        assert_eq!(count_requests(&mut st, REQUEST), 1);
        let two = [REQUEST, REQUEST].concat();
        let (a, b) = two.split_at(REQUEST.len() - 2);
        // The first head's final "\r\n" arrives with the second read.
        assert_eq!(count_requests(&mut st, a), 0);
        assert_eq!(count_requests(&mut st, b), 2);
        assert_eq!(count_requests(&mut st, b"\r\r\n\r\n"), 1);
        assert_eq!(count_requests(&mut st, b"\r\n\n\r\n"), 0);
    }
}
