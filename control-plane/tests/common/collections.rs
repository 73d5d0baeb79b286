//! List and watch for the fake API server: collections of objects at their cluster-wide paths
//! (`/api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`, `/api/v1/secrets`, …) that
//! a test fills and edits, served the way kube-rs's watcher reads them — a list with a
//! resourceVersion, then a watch stream of `ADDED` / `MODIFIED` / `DELETED` events after it,
//! which stays open and carries later edits as they happen. Lists and watches can be narrowed
//! by namespace, `metadata.name` field selector and `key=value` label selector ([`Filter`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Longest a watch stays open unless the client asks for less.
const WATCH_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Collection {
    /// Current objects by (namespace, name).
    objects: BTreeMap<(String, String), Value>,
    /// Every event, with the resourceVersion it made.
    events: Vec<(u64, Value)>,
}

/// Every collection, with one resourceVersion counter for all (as etcd has).
#[derive(Debug)]
pub struct Collections {
    /// Collections by path.
    by_path: Mutex<(u64, HashMap<String, Collection>)>,
    /// The latest resourceVersion, for watchers to wait on.
    latest: watch::Sender<u64>,
}

impl Default for Collections {
    fn default() -> Self {
        Self {
            by_path: Mutex::new((100, HashMap::new())),
            latest: watch::channel(100).0,
        }
    }
}

/// Which objects a list or watch returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this namespace (a namespaced path).
    pub namespace: Option<String>,
    /// `fieldSelector=metadata.name=<name>`.
    pub name: Option<String>,
    /// `labelSelector=k=v,k2=v2` (equality only).
    pub labels: Vec<(String, String)>,
}

impl Filter {
    /// Whether `object` passes.
    pub fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| meta["namespace"].as_str() == Some(ns));
        let name_ok = self
            .name
            .as_deref()
            .is_none_or(|n| meta["name"].as_str() == Some(n));
        let labels_ok = self
            .labels
            .iter()
            .all(|(k, v)| meta["labels"][k].as_str() == Some(v.as_str()));
        ns_ok && name_ok && labels_ok
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

impl Collections {
    /// Adds or replaces `object` in the collection at `path` (ADDED or MODIFIED).
    pub fn put(&self, path: &str, mut object: Value) {
        let mut guard = self.by_path.lock().unwrap_or_else(PoisonError::into_inner);
        let (rv, all) = &mut *guard;
        *rv += 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let c = all.entry(path.to_owned()).or_default();
        let kind = if c.objects.contains_key(&key_of(&object)) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.events
            .push((*rv, json!({"type": kind, "object": object.clone()})));
        c.objects.insert(key_of(&object), object);
        self.latest.send_replace(*rv);
    }

    /// Removes the object `namespace/name` from the collection at `path` (DELETED).
    pub fn delete(&self, path: &str, namespace: &str, name: &str) {
        let mut guard = self.by_path.lock().unwrap_or_else(PoisonError::into_inner);
        let (rv, all) = &mut *guard;
        let c = all.entry(path.to_owned()).or_default();
        let Some(mut object) = c.objects.remove(&(namespace.to_owned(), name.to_owned())) else {
            return;
        };
        *rv += 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.events
            .push((*rv, json!({"type": "DELETED", "object": object})));
        self.latest.send_replace(*rv);
    }

    /// Applies a recorded watch event (`{"type": …, "object": …}`) to the collection at `path`.
    pub fn replay(&self, path: &str, event: &Value) {
        let object = event["object"].clone();
        match event["type"].as_str() {
            Some("DELETED") => {
                let (ns, name) = key_of(&object);
                self.delete(path, &ns, &name);
            }
            _ => self.put(path, object),
        }
    }

    /// The object `namespace/name` of the collection at `path`.
    pub fn get(&self, path: &str, namespace: &str, name: &str) -> Option<Value> {
        self.by_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .get(path)?
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Whether a collection is served at `path`.
    pub fn serves(&self, path: &str) -> bool {
        self.by_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .contains_key(path)
    }

    /// The list answer for `path`.
    pub fn list(&self, path: &str, kind: &str) -> Value {
        self.list_filtered(path, kind, &Filter::default())
    }

    /// The list answer for `path`, only the objects `filter` passes.
    pub fn list_filtered(&self, path: &str, kind: &str, filter: &Filter) -> Value {
        let guard = self.by_path.lock().unwrap_or_else(PoisonError::into_inner);
        let (rv, all) = &*guard;
        let items: Vec<Value> = all
            .get(path)
            .map(|c| {
                c.objects
                    .values()
                    .filter(|o| filter.matches(o))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "kind": format!("{kind}List"),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        })
    }

    /// Events after `after`, with the last resourceVersion looked at (events the filter
    /// drops move it on too).
    fn events_after(&self, path: &str, after: u64, filter: &Filter) -> (u64, Vec<Value>) {
        let guard = self.by_path.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = after;
        let mut out = Vec::new();
        if let Some(c) = guard.1.get(path) {
            for (rv, event) in c.events.iter().filter(|(rv, _)| *rv > after) {
                seen = *rv;
                if filter.matches(&event["object"]) {
                    out.push(event.clone());
                }
            }
        }
        (seen, out)
    }

    /// A watch stream of the collection at `path` after resourceVersion `after`, open for
    /// `timeout` (capped) or until `stop`.
    pub fn watch(
        self: &std::sync::Arc<Self>,
        path: String,
        after: u64,
        timeout: Option<Duration>,
        stop: CancellationToken,
    ) -> StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>> {
        self.watch_filtered(path, Filter::default(), after, timeout, stop)
    }

    /// Like [`Collections::watch`], only the objects `filter` passes.
    pub fn watch_filtered(
        self: &std::sync::Arc<Self>,
        path: String,
        filter: Filter,
        after: u64,
        timeout: Option<Duration>,
        stop: CancellationToken,
    ) -> StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>> {
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        let mut latest = self.latest.subscribe();
        let limit = timeout.unwrap_or(WATCH_LIMIT).min(WATCH_LIMIT);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + limit;
            let mut seen = after;
            loop {
                let (last, events) = me.events_after(&path, seen, &filter);
                seen = last;
                for event in events {
                    let line = Bytes::from(format!("{event}\n"));
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
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}
