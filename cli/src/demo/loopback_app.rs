//! The backends' app in loopback mode, where there are no pods to run `app.py` in: a small
//! HTTP server in this process, on its own thread and runtime, answering every request with
//! `<name> got <path>` — what a backend's sidecar delivers the callers' connections to.

use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

/// A running app: dropping it stops it (and waits for its thread).
#[derive(Debug)]
pub struct BackendApp {
    /// Its thread.
    thread: Option<JoinHandle<()>>,
    /// Set to stop it.
    stop: watch::Sender<bool>,
}

impl BackendApp {
    /// Serves on `listener` as `name` until dropped.
    pub fn start(name: &str, listener: TcpListener) -> anyhow::Result<BackendApp> {
        let (thread, stop) = serve_app(name.to_owned(), listener)?;
        Ok(BackendApp {
            thread: Some(thread),
            stop,
        })
    }
}

impl Drop for BackendApp {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The app: answers every request with `<name> got <path>`, on its own thread and runtime until
/// told to stop.
fn serve_app(
    name: String,
    listener: TcpListener,
) -> anyhow::Result<(JoinHandle<()>, watch::Sender<bool>)> {
    listener.set_nonblocking(true)?;
    let (stop, mut stopped) = watch::channel(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name(format!("demo-{name}-app"))
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => return,
                        accepted = listener.accept() => {
                            if let Ok((conn, _)) = accepted {
                                tokio::spawn(answer(conn, name.clone()));
                            }
                        }
                    }
                }
            });
        })?;
    Ok((thread, stop))
}

/// Reads one request head (at most 8 KiB, 5 s) and answers it as `name`.
async fn answer(mut conn: tokio::net::TcpStream, name: String) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    let body = format!("{name} got {path}\n");
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}
