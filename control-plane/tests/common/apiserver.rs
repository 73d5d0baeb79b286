//! A fake Kubernetes API server on `127.0.0.1:0` (HTTP/1.1, no TLS) that replays the recorded
//! TokenReview exchanges of `testdata/tokenreview` and keeps the control plane's CA
//! Secret in memory.
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: finds the recorded request with the
//!   same `spec.token` and answers its recorded response with HTTP 201. Some recordings share a
//!   token (`valid`/`forbidden`, `pod-bound`/`pod-deleted`); the fake's mode decides:
//!   [`FakeApiServer::set_forbidden`] answers every review with the recorded HTTP 403, and
//!   [`FakeApiServer::set_pod_deleted`] answers the pod-bound token with `pod-deleted`. The
//!   recorded requests asked for `["trellis-ca"]` and every recorded token was minted for that
//!   audience alone, so a real API server answers a request asking for *more* audiences (e.g.
//!   `trellis-ca,istio-ca`) the same way (it reports the token's audiences that were asked for);
//!   the fake replays those too. A request that leaves out a recorded audience cannot be
//!   replayed and gets HTTP 400, so a control plane that forgot the audience fails loudly.
//!   Unknown tokens get what a real API server says: a failed review (`invalid bearer token`).
//! - Tokens the test mints with [`FakeApiServer::mint`] (no recording exists for them, e.g. for
//!   audience `istio-ca`) are answered by the fake itself, shaped like the `valid` recording:
//!   authenticated when the token's audiences meet the request's, reporting the ones that do;
//!   otherwise the API server's audience error.
//! - `GET|PUT /api/v1/namespaces/trellis-system/secrets/<name>` and `POST .../secrets`: a
//!   Secret store with 404 until created, 409 on a second create, and resourceVersion checks
//!   on replace.
//! - `GET` of the cluster-wide collections the control plane reflects (pods, namespaces,
//!   services, endpointslices, authorizationpolicies): list and watch from
//!   [`FakeApiServer::collections`], which tests fill and edit (`collections.rs`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::collections::Collections;

/// The namespace the control plane runs in (its default `--namespace`).
pub const NAMESPACE: &str = "trellis-system";
const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SECRETS: &str = "/api/v1/namespaces/trellis-system/secrets";

/// One recorded TokenReview exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The case name (`valid`, `wrong-audience`, ...).
    pub name: String,
    /// The recorded request body.
    pub request: Value,
    /// The recorded response body.
    pub response: Value,
}

impl Exchange {
    /// The token the request carried.
    pub fn token(&self) -> &str {
        self.request["spec"]["token"].as_str().unwrap_or_default()
    }

    /// `status.error` of the recorded response, or the `message` of a `Status` answer.
    pub fn error_text(&self) -> &str {
        self.response["status"]["error"]
            .as_str()
            .or_else(|| self.response["message"].as_str())
            .unwrap_or_default()
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/tokenreview")
}

/// Every recorded exchange.
pub fn exchanges() -> Vec<Exchange> {
    let dir = fixture_dir();
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("list the fixture directory").path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(name) = file.strip_suffix(".request.json") else {
            continue;
        };
        let read = |p: PathBuf| -> Value {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        out.push(Exchange {
            name: name.to_owned(),
            request: read(path.clone()),
            response: read(dir.join(format!("{name}.response.json"))),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        out.len() >= 7,
        "expected the seven recorded TokenReview cases"
    );
    out
}

/// The recorded exchange `name`.
pub fn exchange(name: &str) -> Exchange {
    exchanges()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

/// What the fake knows and has seen.
#[derive(Debug, Default)]
struct State {
    /// The recordings.
    exchanges: Vec<Exchange>,
    /// Answer every review with the recorded 403.
    forbidden: AtomicBool,
    /// Answer the pod-bound token with the `pod-deleted` recording.
    pod_deleted: AtomicBool,
    /// TokenReview requests received.
    reviews: AtomicUsize,
    /// `spec.audiences` of the last TokenReview request.
    last_audiences: Mutex<Value>,
    /// Minted tokens: token → (ServiceAccount username, the token's audiences).
    minted: Mutex<HashMap<String, (String, Vec<String>)>>,
    /// Secrets by name.
    secrets: Mutex<HashMap<String, Value>>,
    /// Names of the Secrets created or replaced, one entry per successful write.
    secret_writes: Mutex<Vec<String>>,
    /// The last resourceVersion handed out.
    resource_version: AtomicU64,
    /// Listed and watched collections.
    collections: Arc<Collections>,
    /// Ends open watches when the fake stops.
    stop: CancellationToken,
}

/// Cluster-wide collection paths the fake lists and watches, and their kinds.
pub const COLLECTIONS: &[(&str, &str)] = &[
    ("/api/v1/pods", "Pod"),
    ("/api/v1/namespaces", "Namespace"),
    ("/api/v1/services", "Service"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice"),
    (
        "/apis/trellis.dev/v1alpha1/authorizationpolicies",
        "AuthorizationPolicy",
    ),
];

/// A running fake API server; stops when dropped.
#[derive(Debug)]
pub struct FakeApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared with the connection tasks.
    state: Arc<State>,
    /// The accept loop.
    task: JoinHandle<()>,
    /// Closes every open connection (a dropped fake is unreachable, pooled connections too).
    stop: CancellationToken,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts serving on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("its address");
        let stop = CancellationToken::new();
        let state = Arc::new(State {
            exchanges: exchanges(),
            stop: stop.clone(),
            ..State::default()
        });
        let shared = state.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = stopped.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            state,
            task,
            stop,
        }
    }

    /// A Kubernetes client that talks to this server.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr)
            .parse()
            .expect("a valid URL");
        kube::Client::try_from(kube::Config::new(url)).expect("a kube client")
    }

    /// The listed and watched collections (see [`COLLECTIONS`]).
    pub fn collections(&self) -> &Collections {
        &self.state.collections
    }

    /// Answer every TokenReview with HTTP 403 (the control plane lacks RBAC), or not.
    pub fn set_forbidden(&self, forbidden: bool) {
        self.state.forbidden.store(forbidden, Ordering::SeqCst);
    }

    /// Pretend the pod the pod-bound token is bound to was deleted, or not.
    pub fn set_pod_deleted(&self, deleted: bool) {
        self.state.pod_deleted.store(deleted, Ordering::SeqCst);
    }

    /// TokenReview requests received so far.
    pub fn tokenreview_requests(&self) -> usize {
        self.state.reviews.load(Ordering::SeqCst)
    }

    /// `spec.audiences` of the last TokenReview request (`null` before any).
    pub fn last_review_audiences(&self) -> Value {
        self.state
            .last_audiences
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `token` a valid token of the ServiceAccount `namespace/name` for `audiences`, as
    /// `kubectl create token --audience` would (answered by the fake, not from a recording).
    pub fn mint(&self, token: &str, namespace: &str, name: &str, audiences: &[&str]) {
        let username = format!("system:serviceaccount:{namespace}:{name}");
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        self.state
            .minted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), (username, audiences));
    }

    /// The Secret `name` in the control plane's namespace, as stored.
    pub fn secret(&self, name: &str) -> Option<Value> {
        self.state
            .secrets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Stores a Secret directly (what `helm install` would have created).
    pub fn put_secret(&self, name: &str, data: Option<Value>) {
        let mut secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "type": "Opaque",
        });
        if let Some(data) = data {
            secret["data"] = data;
        }
        self.state.stamp(&mut secret);
        self.state
            .secrets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), secret);
    }

    /// Creates and replaces of the Secret `name` the control plane made.
    pub fn secret_writes(&self, name: &str) -> usize {
        self.state
            .secret_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|n| *n == name)
            .count()
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    if method == Method::GET
        && let Some((_, kind)) = COLLECTIONS.iter().find(|(p, _)| *p == path)
    {
        return Ok(list_or_watch(&state, &path, kind, &query));
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(reply(400, status(400, "BadRequest", &e.to_string()))),
    };
    let secret_name = path
        .strip_prefix(SECRETS)
        .and_then(|rest| rest.strip_prefix('/'));
    let (code, answer) = match (&method, path.as_str(), secret_name) {
        (&Method::POST, TOKENREVIEWS, _) => state.review(&body),
        (&Method::POST, SECRETS, _) => state.create_secret(&body),
        (&Method::GET, _, Some(name)) => state.get_secret(name),
        (&Method::PUT, _, Some(name)) => state.replace_secret(name, &body),
        _ => (
            404,
            status(
                404,
                "NotFound",
                &format!("the fake API server has no {method} {path}"),
            ),
        ),
    };
    Ok(reply(code, answer))
}

/// A list, or a watch stream when the query says `watch`.
fn list_or_watch(state: &Arc<State>, path: &str, kind: &str, query: &str) -> Response<Body> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let watching = param("watch").is_some_and(|v| v == "true" || v == "1");
    if !watching {
        return reply(200, state.collections.list(path, kind));
    }
    let after = param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = param("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs);
    let body = state
        .collections
        .watch(path.to_owned(), after, timeout, state.stop.clone());
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn reply(code: u16, body: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A `metav1.Status` failure, as the API server sends with 4xx answers.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

impl State {
    fn review(&self, body: &[u8]) -> (u16, Value) {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return (400, status(400, "BadRequest", "the body is not JSON"));
        };
        let recorded = |name: &str| self.exchanges.iter().find(|e| e.name == name);
        if self.forbidden.load(Ordering::SeqCst) {
            let forbidden = recorded("forbidden").expect("the forbidden recording");
            return (403, forbidden.response.clone());
        }
        *self
            .last_audiences
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = request["spec"]["audiences"].clone();
        let token = request["spec"]["token"].as_str().unwrap_or_default();
        if let Some(answer) = self.review_minted(token, &request) {
            return (201, answer);
        }
        let mut candidates: Vec<&Exchange> = self
            .exchanges
            .iter()
            .filter(|e| e.name != "forbidden" && e.token() == token)
            .collect();
        if candidates.len() > 1 {
            let wanted = if self.pod_deleted.load(Ordering::SeqCst) {
                "pod-deleted"
            } else {
                "pod-bound"
            };
            candidates.retain(|e| e.name == wanted);
        }
        match candidates.first() {
            None => (
                201,
                json!({
                    "kind": "TokenReview",
                    "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null},
                    "spec": request["spec"].clone(),
                    "status": {"user": {}, "error": "invalid bearer token"},
                }),
            ),
            Some(e) if !asks_for_all(&request, &e.request) => (
                400,
                status(
                    400,
                    "BadRequest",
                    &format!(
                        "spec.audiences {} leave out some of the recorded {}; the fake cannot replay",
                        request["spec"]["audiences"], e.request["spec"]["audiences"]
                    ),
                ),
            ),
            Some(e) => (201, e.response.clone()),
        }
    }

    /// The answer to a minted token, shaped like the `valid` (or `wrong-audience`) recording.
    fn review_minted(&self, token: &str, request: &Value) -> Option<Value> {
        let minted = self.minted.lock().unwrap_or_else(PoisonError::into_inner);
        let (username, audiences) = minted.get(token)?;
        let asked = audiences_of(request);
        let met: Vec<&String> = audiences.iter().filter(|a| asked.contains(a)).collect();
        let status = if met.is_empty() {
            json!({
                "user": {},
                "error": format!(
                    "[invalid bearer token, token audiences {audiences:?} is invalid for the target audiences {asked:?}]"
                ),
            })
        } else {
            let namespace = username.split(':').nth(2).unwrap_or_default();
            json!({
                "authenticated": true,
                "user": {
                    "username": username,
                    "uid": "00000000-0000-0000-0000-00000000beef",
                    "groups": [
                        "system:serviceaccounts",
                        format!("system:serviceaccounts:{namespace}"),
                        "system:authenticated",
                    ],
                },
                "audiences": met,
            })
        };
        Some(json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": request["spec"].clone(),
            "status": status,
        }))
    }

    /// Sets a new resourceVersion (and a uid on first store).
    fn stamp(&self, secret: &mut Value) {
        let version = self.resource_version.fetch_add(1, Ordering::SeqCst) + 1;
        secret["metadata"]["resourceVersion"] = json!(version.to_string());
        if secret["metadata"]["uid"].is_null() {
            secret["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{version:012}"));
        }
    }

    fn wrote(&self, name: String) {
        self.secret_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name);
    }

    fn get_secret(&self, name: &str) -> (u16, Value) {
        match self
            .secrets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            Some(secret) => (200, secret.clone()),
            None => (
                404,
                status(404, "NotFound", &format!("secrets \"{name}\" not found")),
            ),
        }
    }

    fn create_secret(&self, body: &[u8]) -> (u16, Value) {
        let Ok(mut secret) = serde_json::from_slice::<Value>(body) else {
            return (400, status(400, "BadRequest", "the body is not JSON"));
        };
        let Some(name) = secret["metadata"]["name"].as_str().map(str::to_owned) else {
            return (422, status(422, "Invalid", "metadata.name is required"));
        };
        let mut secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        if secrets.contains_key(&name) {
            return (
                409,
                status(
                    409,
                    "AlreadyExists",
                    &format!("secrets \"{name}\" already exists"),
                ),
            );
        }
        self.stamp(&mut secret);
        secrets.insert(name.clone(), secret.clone());
        self.wrote(name);
        (201, secret)
    }

    fn replace_secret(&self, name: &str, body: &[u8]) -> (u16, Value) {
        let Ok(mut secret) = serde_json::from_slice::<Value>(body) else {
            return (400, status(400, "BadRequest", "the body is not JSON"));
        };
        let mut secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(current) = secrets.get(name) else {
            return (
                404,
                status(404, "NotFound", &format!("secrets \"{name}\" not found")),
            );
        };
        if secret["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
            return (
                409,
                status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on secrets \"{name}\": the object has been modified"
                    ),
                ),
            );
        }
        self.stamp(&mut secret);
        secrets.insert(name.to_owned(), secret.clone());
        self.wrote(name.to_owned());
        (200, secret)
    }
}

/// The `spec.audiences` of a TokenReview request.
fn audiences_of(review: &Value) -> Vec<String> {
    review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `request` asks for every audience `recorded` asked for (and maybe more).
fn asks_for_all(request: &Value, recorded: &Value) -> bool {
    let asked = audiences_of(request);
    let recorded = audiences_of(recorded);
    !asked.is_empty() && recorded.iter().all(|a| asked.contains(a))
}
