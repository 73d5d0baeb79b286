//! HTTP GET from inside a pod, with python3's standard library (curl is not assumed):
//! [`http_get`] and [`wait_http_ok`]. Proxy environment variables are ignored: a request goes
//! where its URL says.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Result, SandboxError};
use crate::netns::Cmd;
use crate::pod::Pod;
use crate::process::tail;

/// Default time limit of one GET.
pub const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two attempts of [`wait_http_ok`].
const RETRY: Duration = Duration::from_millis(100);

/// Prints the status on the first line, then the body; exit 2 with the error on stderr when
/// there is no HTTP answer at all.
const GET_PY: &str = r#"
import sys, urllib.request, urllib.error
url, timeout = sys.argv[1], float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(url, timeout=timeout) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
sys.stdout.buffer.write(b"%d\n" % status + body)
"#;

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (lossy UTF-8).
    pub body: String,
}

/// The python3 to run: the system's (`/usr/bin/python3`, readable by every user), else
/// whatever `python3` is on `PATH`.
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// GETs `url` from inside `pod`, as `uid` (root if `None`), waiting at most `timeout` for the
/// answer. Any HTTP status is an answer; no answer (refused, reset, timed out) is an error.
pub fn http_get(pod: &Pod, url: &str, uid: Option<u32>, timeout: Duration) -> Result<HttpResponse> {
    let cmd = Cmd::new(python())
        .args(["-c", GET_PY, url, &timeout.as_secs_f64().to_string()])
        .uid(uid)
        .timeout(timeout + Duration::from_secs(5));
    let output = pod.exec(&cmd)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(SandboxError::Failed {
            command: format!("[{}] GET {url}", pod.name()),
            status: output.status,
            stderr: tail(&String::from_utf8_lossy(&output.stderr), 2000).to_owned(),
        });
    }
    let (status, body) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    let status = status.trim().parse().map_err(|_| SandboxError::Parse {
        what: format!("[{}] GET {url}", pod.name()),
        reason: format!("no status line in {:?}", tail(&stdout, 200)),
    })?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

/// GETs `url` from inside `pod` (as root) until it answers 200, for at most `timeout`.
pub fn wait_http_ok(pod: &Pod, url: &str, timeout: Duration) -> Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = left.clamp(Duration::from_millis(200), Duration::from_secs(2));
        let last = match http_get(pod, url, None, per_try) {
            Ok(r) if r.status == 200 => return Ok(r),
            Ok(r) => format!("HTTP {}: {}", r.status, tail(&r.body, 300)),
            Err(e) => e.to_string(),
        };
        if Instant::now() + RETRY >= deadline {
            return Err(SandboxError::Deadline {
                what: format!("[{}] GET {url} answering 200", pod.name()),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(RETRY);
    }
}
