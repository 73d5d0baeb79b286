//! A fake Kubernetes API server on 127.0.0.1 (HTTP/1.1, no TLS) that the control plane under
//! test runs against in `--mode kubernetes`, as it would against a real cluster:
//!
//! - list and watch of the collections the control plane reflects (pods, namespaces, services,
//!   endpointslices, authorizationpolicies), paginated with `limit`/`continue` as kube-rs's
//!   watcher reads them (500 per page), then `ADDED`/`MODIFIED`/`DELETED` events after the
//!   list's resourceVersion; a watch from a version older than the kept events gets `410 Gone`
//!   and lists again, as from a real server;
//! - `POST .../tokenreviews`: tokens of the form `bench/<namespace>/<service account>/<pod>`
//!   are authenticated as that pod's ServiceAccount for audience `trellis-ca` (any other token
//!   is not authenticated);
//! - the control plane's CA Secret (`GET`/`POST`/`PUT` in `trellis-system`).
//!
//! Objects are serialized once when stored; lists and watches send those bytes. The bench
//! drives the cluster through [`Cluster::put`] and [`Cluster::delete`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Cluster-wide collections the control plane lists and watches, with their kinds.
pub const PODS: &str = "/api/v1/pods";
/// See [`PODS`].
pub const NAMESPACES: &str = "/api/v1/namespaces";
/// See [`PODS`].
pub const SERVICES: &str = "/api/v1/services";
/// See [`PODS`].
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
/// See [`PODS`].
pub const POLICIES: &str = "/apis/trellis.dev/v1alpha1/authorizationpolicies";
/// See [`PODS`]: the published trust bundles (`trellis-ca-root-cert`), the only ConfigMaps here.
pub const CONFIGMAPS: &str = "/api/v1/configmaps";
const COLLECTIONS: [(&str, &str); 6] = [
    (PODS, "Pod"),
    (NAMESPACES, "Namespace"),
    (SERVICES, "Service"),
    (SLICES, "EndpointSlice"),
    (POLICIES, "AuthorizationPolicy"),
    (CONFIGMAPS, "ConfigMap"),
];
const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SECRETS: &str = "/api/v1/namespaces/trellis-system/secrets";
/// Events kept per collection; a watch from further back gets 410 Gone.
const EVENTS_KEPT: usize = 100_000;
/// Longest a watch stays open unless the client asks for less.
const WATCH_LIMIT: Duration = Duration::from_secs(300);

/// The token a pod presents: what [`Cluster`]'s TokenReview accepts for it.
pub fn token_for(namespace: &str, service_account: &str, pod: &str) -> String {
    format!("bench/{namespace}/{service_account}/{pod}")
}

/// One collection: objects as stored (JSON bytes) and the events that made them.
#[derive(Debug, Default)]
struct Collection {
    /// Current objects by (namespace, name).
    objects: BTreeMap<(String, String), Bytes>,
    /// Recent events (resourceVersion, one JSON line), oldest first.
    events: VecDeque<(u64, Bytes)>,
}

/// The fake cluster's state: collections (one resourceVersion counter for all, as etcd has),
/// Secrets, and counters.
#[derive(Debug)]
pub struct Cluster {
    /// (last resourceVersion, collections by path).
    inner: Mutex<(u64, HashMap<&'static str, Collection>)>,
    /// The latest resourceVersion, for open watches to wait on.
    latest: watch::Sender<u64>,
    /// Secrets of `trellis-system` by name.
    secrets: Mutex<HashMap<String, Value>>,
    /// TokenReviews answered.
    reviews: AtomicU64,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            inner: Mutex::new((1, HashMap::new())),
            latest: watch::channel(1).0,
            secrets: Mutex::default(),
            reviews: AtomicU64::new(0),
        }
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&meta["namespace"]), text(&meta["name"]))
}

impl Cluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<&'static str, Collection>)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces `object` in the collection at `path` (an `ADDED` or `MODIFIED` event).
    pub fn put(&self, path: &'static str, mut object: Value) {
        let key = key_of(&object);
        let mut guard = self.lock();
        let (rv, all) = &mut *guard;
        *rv += 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let c = all.entry(path).or_default();
        let kind = if c.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let bytes = Bytes::from(object.to_string());
        c.objects.insert(key, bytes.clone());
        push_event(c, *rv, kind, &bytes);
        self.latest.send_replace(*rv);
    }

    /// Removes `namespace/name` from the collection at `path` (a `DELETED` event).
    pub fn delete(&self, path: &'static str, namespace: &str, name: &str) {
        let mut guard = self.lock();
        let (rv, all) = &mut *guard;
        let c = all.entry(path).or_default();
        let Some(last) = c.objects.remove(&(namespace.to_owned(), name.to_owned())) else {
            return;
        };
        *rv += 1;
        push_event(c, *rv, "DELETED", &last);
        self.latest.send_replace(*rv);
    }

    /// A namespaced ConfigMap call (`GET`/`PUT` of `name`, `POST` to the collection), kept in
    /// the cluster-wide [`CONFIGMAPS`] collection (which lists and watches them).
    fn configmap(&self, method: &Method, ns: &str, name: &str, body: &[u8]) -> (u16, Value) {
        let current = {
            let guard = self.lock();
            guard
                .1
                .get(CONFIGMAPS)
                .and_then(|c| c.objects.get(&(ns.to_owned(), name.to_owned())).cloned())
        };
        let current: Option<Value> = current.and_then(|b| serde_json::from_slice(&b).ok());
        match (method, current) {
            (&Method::GET, Some(object)) => (200, object),
            (&Method::GET, None) => (404, not_found(&format!("configmaps \"{name}\" not found"))),
            (&Method::POST | &Method::PUT, _) => {
                let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                    return (400, status(400, "BadRequest", "the body is not JSON"));
                };
                object["metadata"]["namespace"] = json!(ns);
                let name = key_of(&object).1;
                let current = self
                    .lock()
                    .1
                    .get(CONFIGMAPS)
                    .is_some_and(|c| c.objects.contains_key(&(ns.to_owned(), name.clone())))
                    .then_some(());
                if *method == Method::POST && current.is_some() {
                    let message = format!("configmaps \"{name}\" already exists");
                    return (409, status(409, "AlreadyExists", &message));
                }
                self.put(CONFIGMAPS, object);
                let guard = self.lock();
                let stored = guard
                    .1
                    .get(CONFIGMAPS)
                    .and_then(|c| c.objects.get(&(ns.to_owned(), name.clone())))
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                (if current.is_some() { 200 } else { 201 }, stored)
            }
            _ => (404, not_found("no such configmaps call")),
        }
    }

    /// TokenReviews answered so far.
    pub fn reviews(&self) -> u64 {
        self.reviews.load(Ordering::Relaxed)
    }

    /// `data[key]` of the Secret `name` in `trellis-system`, decoded.
    pub fn secret_data(&self, name: &str, key: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        let text = secrets.get(name)?["data"][key].as_str()?.to_owned();
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }

    /// One page of the list of `path`: `limit` objects from the `continue` offset.
    fn list(&self, path: &str, kind: &str, limit: Option<usize>, offset: usize) -> Bytes {
        let guard = self.lock();
        let (rv, all) = &*guard;
        let empty = Collection::default();
        let c = all.get(path).unwrap_or(&empty);
        let take = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut body = Vec::with_capacity(4096);
        body.extend_from_slice(
            format!(r#"{{"kind":"{kind}List","apiVersion":"v1","items":["#).as_bytes(),
        );
        for (i, object) in c.objects.values().skip(offset).take(take).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(object);
        }
        let next = offset.saturating_add(take);
        let more = if next < c.objects.len() {
            format!(r#","continue":"{next}""#)
        } else {
            String::new()
        };
        body.extend_from_slice(
            format!(r#"],"metadata":{{"resourceVersion":"{rv}"{more}}}}}"#).as_bytes(),
        );
        Bytes::from(body)
    }

    /// Events of `path` after resourceVersion `after`; `None` if some were dropped already.
    fn events_after(&self, path: &str, after: u64) -> Option<Vec<(u64, Bytes)>> {
        let guard = self.lock();
        let Some(c) = guard.1.get(path) else {
            return Some(Vec::new());
        };
        if let Some((oldest, _)) = c.events.front()
            && *oldest > after + 1
            && c.events.len() >= EVENTS_KEPT
        {
            return None;
        }
        let start = c.events.partition_point(|(rv, _)| *rv <= after);
        Some(c.events.range(start..).cloned().collect())
    }

    fn review(&self, body: &[u8]) -> (u16, Value) {
        self.reviews.fetch_add(1, Ordering::Relaxed);
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return (400, status(400, "BadRequest", "the body is not JSON"));
        };
        let spec = request["spec"].clone();
        let token = spec["token"].as_str().unwrap_or_default();
        let parts: Vec<&str> = token.split('/').collect();
        let status = match parts.as_slice() {
            ["bench", ns, sa, pod] => json!({
                "authenticated": true,
                "user": {
                    "username": format!("system:serviceaccount:{ns}:{sa}"),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/pod-name": [pod]},
                },
                "audiences": spec["audiences"].clone(),
            }),
            _ => json!({"user": {}, "error": "invalid bearer token"}),
        };
        let answer = json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        });
        (201, answer)
    }

    fn secret(&self, method: &Method, name: Option<&str>, body: &[u8]) -> (u16, Value) {
        let mut secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        let parsed = serde_json::from_slice::<Value>(body);
        match (method, name) {
            (&Method::GET, Some(name)) => match secrets.get(name) {
                Some(s) => (200, s.clone()),
                None => (404, not_found(&format!("secrets \"{name}\" not found"))),
            },
            (&Method::POST, None) | (&Method::PUT, Some(_)) => {
                let Ok(mut secret) = parsed else {
                    return (400, status(400, "BadRequest", "the body is not JSON"));
                };
                let (_, key) = key_of(&secret);
                let exists = secrets.contains_key(&key);
                if *method == Method::POST && exists {
                    let message = format!("secrets \"{key}\" already exists");
                    return (409, status(409, "AlreadyExists", &message));
                }
                let rv = {
                    let mut guard = self.lock();
                    guard.0 += 1;
                    guard.0
                };
                secret["metadata"]["resourceVersion"] = json!(rv.to_string());
                secrets.insert(key, secret.clone());
                (if exists { 200 } else { 201 }, secret)
            }
            _ => (404, not_found("no such secrets call")),
        }
    }
}

fn push_event(c: &mut Collection, rv: u64, kind: &str, object: &Bytes) {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(format!(r#"{{"type":"{kind}","object":"#).as_bytes());
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    c.events.push_back((rv, Bytes::from(line)));
    if c.events.len() > EVENTS_KEPT {
        c.events.pop_front();
    }
}

/// A `metav1.Status` failure.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn not_found(message: &str) -> Value {
    status(404, "NotFound", message)
}

/// The fake API server; stops serving when dropped.
#[derive(Debug)]
pub struct ApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its cluster.
    pub cluster: Arc<Cluster>,
    /// Ends the accept loop and every connection.
    stop: CancellationToken,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ApiServer {
    /// Serves `cluster` on 127.0.0.1 (a free port), on a thread of its own: in a cluster the
    /// API server does not share a scheduler with the pods, and on the bench's runtime its
    /// answers (TokenReviews, watch events) queued behind 2,000 simulated proxies' tasks.
    pub async fn start(cluster: Arc<Cluster>) -> anyhow::Result<Self> {
        // The accept queue of a real API server (Go asks for the system's maximum): the
        // standard library's 128 dropped the control plane's burst of TokenReview connections
        // in a restart storm, each retried by TCP after a second or more.
        let listener = trellis_listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.into_std()?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let (shared, stopped) = (cluster.clone(), stop.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || runtime.block_on(serve(listener, shared, stopped)))?;
        Ok(Self {
            addr,
            cluster,
            stop,
        })
    }

    /// A kubeconfig naming this server (for the control plane's `KUBECONFIG`).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster: {{server: \"http://{}\"}}\n\
             users:\n- name: bench\n  user: {{token: bench-control-plane}}\ncontexts:\n\
             - name: bench\n  context: {{cluster: bench, user: bench, namespace: trellis-system}}\n\
             current-context: bench\n",
            self.addr
        )
    }
}

/// The accept loop, until `stopped`.
async fn serve(listener: std::net::TcpListener, cluster: Arc<Cluster>, stopped: CancellationToken) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let (stream, _) = tokio::select! {
            () = stopped.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (cluster, stopped) = (cluster.clone(), stopped.clone());
        tokio::spawn(async move {
            let stop = stopped.clone();
            let svc = service_fn(move |req| handle(cluster.clone(), stop.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = stopped.cancelled() => {}
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    cluster: Arc<Cluster>,
    stop: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    if method == Method::GET
        && let Some((path, kind)) = COLLECTIONS.iter().find(|(p, _)| *p == path)
    {
        return Ok(list_or_watch(&cluster, &stop, path, kind, &query));
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(reply(400, &status(400, "BadRequest", &e.to_string()))),
    };
    let secret_name = path
        .strip_prefix(SECRETS)
        .map(|r| r.trim_start_matches('/'));
    // /api/v1/namespaces/<ns>/configmaps[/<name>]
    let configmap = path
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|r| r.split_once("/configmaps"))
        .map(|(ns, rest)| (ns.to_owned(), rest.trim_start_matches('/').to_owned()));
    if let Some((ns, name)) = configmap {
        let (code, answer) = cluster.configmap(&method, &ns, &name, &body);
        return Ok(reply(code, &answer));
    }
    let (code, answer) = match (&method, path.as_str(), secret_name) {
        (&Method::POST, TOKENREVIEWS, _) => cluster.review(&body),
        (_, _, Some(name)) => cluster.secret(&method, Some(name).filter(|n| !n.is_empty()), &body),
        _ => (
            404,
            not_found(&format!("the fake API server has no {method} {path}")),
        ),
    };
    Ok(reply(code, &answer))
}

fn param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn list_or_watch(
    cluster: &Arc<Cluster>,
    stop: &CancellationToken,
    path: &'static str,
    kind: &str,
    query: &str,
) -> Response<Body> {
    let watching = param(query, "watch").is_some_and(|v| v == "true" || v == "1");
    if !watching {
        let limit = param(query, "limit").and_then(|v| v.parse().ok());
        let offset = param(query, "continue")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return bytes_reply(200, cluster.list(path, kind, limit, offset));
    }
    let after = param(query, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit = param(query, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(WATCH_LIMIT, Duration::from_secs)
        .min(WATCH_LIMIT);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let (cluster, stop) = (cluster.clone(), stop.clone());
    let mut latest = cluster.latest.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = after;
        loop {
            let Some(events) = cluster.events_after(path, seen) else {
                let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!("{gone}\n")))))
                    .await;
                return;
            };
            for (rv, line) in events {
                seen = rv;
                if tx.send(Ok(Frame::data(line))).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => return,
                changed = latest.changed() => if changed.is_err() { return },
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = Response::new(BodyExt::boxed(body));
    json_type(&mut response);
    response
}

fn json_type(response: &mut Response<Body>) {
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
}

fn bytes_reply(code: u16, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_type(&mut response);
    response
}

fn reply(code: u16, body: &Value) -> Response<Body> {
    bytes_reply(code, Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(ns: &str, name: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}})
    }

    #[test]
    fn lists_are_paginated_in_name_order_and_the_last_page_has_no_continue() {
        let cluster = Cluster::default();
        for name in ["c", "a", "b"] {
            cluster.put(PODS, object("ns", name));
        }
        let page = |offset| -> Value {
            serde_json::from_slice(&cluster.list(PODS, "Pod", Some(2), offset)).unwrap()
        };
        let first = page(0);
        let names: Vec<&str> = first["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(first["metadata"]["continue"], "2");
        let last = page(2);
        assert_eq!(last["items"].as_array().unwrap().len(), 1);
        assert!(last["metadata"]["continue"].is_null());
        assert_eq!(last["metadata"]["resourceVersion"], "4");
    }

    #[test]
    fn watches_get_the_events_after_their_version_in_order() {
        let cluster = Cluster::default();
        cluster.put(PODS, object("ns", "a"));
        cluster.put(PODS, object("ns", "a"));
        cluster.delete(PODS, "ns", "a");
        cluster.delete(PODS, "ns", "missing");
        let events = cluster.events_after(PODS, 2).unwrap();
        let kinds: Vec<String> = events
            .iter()
            .map(|(_, l)| serde_json::from_slice::<Value>(l).unwrap()["type"].to_string())
            .collect();
        assert_eq!(kinds, ["\"MODIFIED\"", "\"DELETED\""]);
        assert_eq!(cluster.events_after(PODS, 4).unwrap().len(), 0);
    }

    #[test]
    fn bench_tokens_are_authenticated_as_their_service_account_and_others_are_not() {
        let cluster = Cluster::default();
        let review = |token: &str| {
            let body = json!({"spec": {"token": token, "audiences": ["trellis-ca"]}});
            cluster.review(body.to_string().as_bytes()).1["status"].clone()
        };
        let ok = review(&token_for("ns-1", "svc-7", "svc-7-0"));
        assert_eq!(ok["authenticated"], true);
        assert_eq!(ok["user"]["username"], "system:serviceaccount:ns-1:svc-7");
        assert_eq!(ok["audiences"], json!(["trellis-ca"]));
        assert_eq!(
            ok["user"]["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["svc-7-0"])
        );
        assert!(review("someone-else").get("authenticated").is_none());
        assert_eq!(cluster.reviews(), 2);
    }
}
