//! The load generator: every loop here is bounded in count and in time.
//!
//! * [`latency`] — open loop at a fixed rate over keep-alive connections. Request *i* is due at
//!   `start + i / rate` whatever happened before (request *i* goes on connection *i mod C*).
//!   Latency is measured from when the request was due if the connection was still busy with
//!   an earlier, late response (the wait is the system's fault: coordinated omission
//!   corrected), and from when it was actually written if the connection was idle (tokio's
//!   timer wakes up to 1 ms late; that lag is the generator's, not the route's).
//! * [`connection_rate`] — closed loop, `concurrency` workers, each opening a fresh TCP
//!   connection per request and closing it after the response.
//! * [`upload`] / [`download`] — one stream moving a fixed number of bytes.
//!
//! Owns: timing and counting. What a route is, and what to report, live elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::backend::{CHUNK, DOWNLOAD, REQUEST, RESPONSE, UPLOAD};

/// A latency histogram in nanoseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // Constant bounds that satisfy the crate's rules (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// One request/response exchange on an open connection.
pub(crate) async fn exchange(s: &mut TcpStream, buf: &mut [u8; 128]) -> anyhow::Result<()> {
    s.write_all(REQUEST).await?;
    let resp = &mut buf[..RESPONSE.len()];
    s.read_exact(resp).await?;
    if resp != RESPONSE {
        bail!("unexpected response {:?}", String::from_utf8_lossy(resp));
    }
    Ok(())
}

/// Opens `n` keep-alive connections and sends one request on each (not measured).
pub async fn open_connections(
    addr: SocketAddr,
    n: usize,
    limit: Duration,
) -> anyhow::Result<Vec<TcpStream>> {
    let deadline = Instant::now() + limit;
    let mut conns = Vec::with_capacity(n);
    let mut buf = [0u8; 128];
    for _ in 0..n {
        let mut s = timeout_at(deadline, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        s.set_nodelay(true)?;
        timeout_at(deadline, exchange(&mut s, &mut buf))
            .await
            .context("first request timed out")??;
        conns.push(s);
    }
    Ok(conns)
}

/// What one open-loop run measured (requests due within the measured window only).
#[derive(Debug)]
pub struct LatencyRun {
    /// Latencies of the requests that completed.
    pub hist: Histogram<u64>,
    /// Requests due in the window.
    pub expected: u64,
    /// Requests that failed or were never sent because their connection broke.
    pub errors: u64,
    /// When the last response came back.
    pub finished: Instant,
}

/// Drives `conns` at `rate` requests per second from `start`; requests due before
/// `start + warmup` are not recorded; none is due after `start + warmup + measure`. Every
/// exchange must end by `start + warmup + measure + grace`.
pub async fn latency(
    conns: Vec<TcpStream>,
    rate: u32,
    start: Instant,
    warmup: Duration,
    measure: Duration,
    grace: Duration,
) -> LatencyRun {
    let n = conns.len().max(1) as f64;
    let period = Duration::from_secs_f64(n / f64::from(rate));
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let hard = end + grace;
    let mut tasks = JoinSet::new();
    for (i, s) in conns.into_iter().enumerate() {
        let first = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tasks.spawn(connection_loop(s, first, period, measure_from, end, hard));
    }
    let mut run = LatencyRun {
        hist: histogram(),
        expected: 0,
        errors: 0,
        finished: Instant::now(),
    };
    while let Some(res) = tasks.join_next().await {
        if let Ok((h, expected, errors)) = res {
            let _ = run.hist.add(&h);
            run.expected += expected;
            run.errors += errors;
        }
    }
    run.finished = Instant::now();
    run
}

/// One connection's share of the schedule: due times `first + k * period` before `end`.
async fn connection_loop(
    mut s: TcpStream,
    first: Instant,
    period: Duration,
    measure_from: Instant,
    end: Instant,
    hard: Instant,
) -> (Histogram<u64>, u64, u64) {
    let mut hist = histogram();
    let (mut expected, mut errors) = (0u64, 0u64);
    let mut buf = [0u8; 128];
    let mut prev_done = Instant::now();
    let mut broken = false;
    let mut due = first;
    while due < end {
        let measured = due >= measure_from;
        expected += u64::from(measured);
        if broken {
            errors += u64::from(measured);
            due += period;
            continue;
        }
        if due > Instant::now() {
            sleep_until(due).await;
        }
        let sent = Instant::now();
        // Busy when due: the route held us up, count from the due time. Idle: count from now.
        let reference = if prev_done > due { due } else { sent };
        match timeout_at(hard, exchange(&mut s, &mut buf)).await {
            Ok(Ok(())) => {
                let done = Instant::now();
                prev_done = done;
                if measured {
                    hist.saturating_record(duration_ns(done - reference));
                }
            }
            _ => {
                broken = true;
                errors += u64::from(measured);
            }
        }
        due += period;
    }
    (hist, expected, errors)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the new-connection loop measured.
#[derive(Debug)]
pub struct ConnRun {
    /// Connect + request + response times.
    pub hist: Histogram<u64>,
    /// Connections that carried a full exchange.
    pub completed: u64,
    /// Connections that failed.
    pub errors: u64,
    /// Wall time of the loop.
    pub elapsed: Duration,
}

/// `concurrency` workers open connections for `duration` or until `max` have been tried.
pub async fn connection_rate(
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
    max: u64,
) -> ConnRun {
    let started = Instant::now();
    let end = started + duration;
    let hard = end + Duration::from_secs(5);
    let tried = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let tried = tried.clone();
        tasks.spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut bad) = (0u64, 0u64);
            let mut buf = [0u8; 128];
            while Instant::now() < end && tried.fetch_add(1, Ordering::Relaxed) < max {
                let t0 = Instant::now();
                let one = async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    exchange(&mut s, &mut buf).await
                };
                match timeout_at(hard, one).await {
                    Ok(Ok(())) => {
                        hist.saturating_record(duration_ns(t0.elapsed()));
                        ok += 1;
                    }
                    _ => {
                        bad += 1;
                        // A refused or reset connection returns at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (hist, ok, bad)
        });
    }
    let mut run = ConnRun {
        hist: histogram(),
        completed: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(res) = tasks.join_next().await {
        if let Ok((h, ok, bad)) = res {
            let _ = run.hist.add(&h);
            run.completed += ok;
            run.errors += bad;
        }
    }
    run.elapsed = started.elapsed();
    run
}

/// Sends `bytes` through one connection to the sink; returns MB/s (10^6 bytes per second),
/// timed from connect to the sink's acknowledgement.
pub async fn upload(addr: SocketAddr, bytes: u64, limit: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut head = [UPLOAD; 9];
        head[1..].copy_from_slice(&bytes.to_le_bytes());
        s.write_all(&head).await?;
        let buf = vec![0x5a_u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let k = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            s.write_all(&buf[..k]).await?;
            left -= k as u64;
        }
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack).await?;
        if u64::from_le_bytes(ack) != bytes {
            bail!(
                "sink acknowledged {} bytes, sent {bytes}",
                u64::from_le_bytes(ack)
            );
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, work)
        .await
        .with_context(|| format!("upload of {bytes} bytes took more than {limit:?}"))??;
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Receives `bytes` through one connection from the source; returns MB/s, timed from connect
/// to the last byte.
pub async fn download(addr: SocketAddr, bytes: u64, limit: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut head = [DOWNLOAD; 9];
        head[1..].copy_from_slice(&bytes.to_le_bytes());
        s.write_all(&head).await?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                bail!("source closed after {got} of {bytes} bytes");
            }
            got += n as u64;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, work)
        .await
        .with_context(|| format!("download of {bytes} bytes took more than {limit:?}"))??;
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}
