//! `/config_dump` on the metrics port, for loopback callers only (`kubectl port-forward` or
//! `kubectl exec`; Prometheus and other pods get 403): the flags in force, the CA's public
//! side, the mesh model being published and every open Watch stream.
//!
//! Owns: what the dump shows and what it never shows. Secrets are not redacted after the fact
//! but never gathered: the dump names files and Secrets (the join-token file, the CA Secret,
//! `cacerts`) and shows certificates by subject, fingerprint and expiry — no PEM, no key, no
//! token.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::ca_live::LiveCa;
use crate::config::Config;
use crate::grpc::Watchers;
use crate::mesh::MeshView;

/// What `/config_dump` reads.
#[derive(Debug)]
pub struct ConfigDump {
    /// The flags, rendered once at start.
    flags: Value,
    /// The CA in use.
    live: Arc<LiveCa>,
    /// The mesh being published.
    views: watch::Receiver<Arc<MeshView>>,
    /// Open Watch streams.
    watchers: Arc<Watchers>,
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn paths(p: &[std::path::PathBuf]) -> Vec<String> {
    p.iter().map(|p| p.display().to_string()).collect()
}

/// The flags in force, with file and Secret names only.
pub fn flags(config: &Config) -> Value {
    let a = &config.args;
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    json!({
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "listen": a.listen.to_string(),
        "metrics_listen": a.metrics_listen.to_string(),
        "trust_domain": config.trust_domain.to_string(),
        "own_id": config.own_id.to_string(),
        "server_names": config.server_names.to_string(),
        "namespace": a.namespace,
        "node_agents": config.node_agents.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "state_dir": path(&a.state_dir),
        "ca_secret": a.ca_secret,
        "cacerts_dir": path(&a.cacerts_dir),
        "accept_new_root": a.accept_new_root,
        "extra_roots": paths(&a.extra_roots),
        "join_tokens_file": path(&a.join_tokens),
        "mesh_file": path(&a.mesh_file),
        "mtls_mode": format!("{:?}", a.mtls_mode).to_uppercase(),
        "token_audiences": a.token_audiences,
        "token_cache_ttl": humantime::format_duration(a.token_cache_ttl).to_string(),
        "default_ttl": humantime::format_duration(a.default_ttl).to_string(),
        "max_ttl": humantime::format_duration(a.max_ttl).to_string(),
        "rate_limit_per_second": a.rate_limit_per_second,
        "rate_limit_burst": a.rate_limit_burst,
        "injector_secret": a.injector_secret,
        "injector_service": a.injector_service,
        "injector_webhook": a.injector_webhook,
        "max_pending_handshakes_per_source": a.max_pending_handshakes_per_source,
        "max_pending_handshakes": a.max_pending_handshakes,
        "handshake_timeout": humantime::format_duration(a.handshake_timeout).to_string(),
        "shutdown_grace": humantime::format_duration(a.shutdown_grace).to_string(),
    })
}

/// The mesh model as proxies receive it: policies, Services, workloads, mTLS modes.
pub fn mesh(view: &MeshView) -> Value {
    let m = &view.model;
    let policies: Vec<Value> = m
        .policies
        .iter()
        .map(|p| {
            json!({
                "name": format!("{}/{}", p.namespace, p.name),
                "match_labels": p.match_labels,
                "ports": p.ports,
                "allow": p.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "allow_unauthenticated": p.allow_unauthenticated,
                "mode": format!("{:?}", p.mode).to_lowercase(),
            })
        })
        .collect();
    let services: Vec<Value> = m
        .services
        .values()
        .map(|s| {
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| {
                    let endpoints: Vec<Value> = p
                        .endpoints
                        .iter()
                        .map(|e| json!({"addr": e.addr().to_string(), "ready": e.ready}))
                        .collect();
                    json!({"name": p.name, "port": p.port, "endpoints": endpoints})
                })
                .collect();
            let addresses: Vec<String> = s.addresses.iter().map(ToString::to_string).collect();
            json!({"name": s.key(), "addresses": addresses, "ports": ports})
        })
        .collect();
    let workloads: Vec<Value> = m
        .workloads
        .values()
        .map(|w| {
            json!({
                "id": w.id(&m.trust_domain).map(|id| id.to_string()),
                "ip": w.ip.to_string(),
                "port": w.port,
                "tunnel": w.tunnel.to_string(),
            })
        })
        .collect();
    let namespace_mtls: serde_json::Map<String, Value> = m
        .namespace_mtls
        .iter()
        .map(|(ns, mode)| (ns.clone(), json!(format!("{mode:?}").to_uppercase())))
        .collect();
    json!({
        "epoch": view.epoch,
        "version": view.version,
        "default_mtls": format!("{:?}", m.default_mtls).to_uppercase(),
        "namespace_mtls": namespace_mtls,
        "policies": policies,
        "services": services,
        "workloads": workloads,
    })
}

impl ConfigDump {
    /// A dump of `config` (rendered now) and of the live state it reads at each request.
    pub fn new(
        config: &Config,
        live: Arc<LiveCa>,
        views: watch::Receiver<Arc<MeshView>>,
        watchers: Arc<Watchers>,
    ) -> Self {
        Self {
            flags: flags(config),
            live,
            views,
            watchers,
        }
    }

    /// The dump now.
    pub fn render(&self) -> Value {
        let state = self.live.state();
        let roots: Vec<Value> = state
            .ca
            .bundle()
            .summaries()
            .iter()
            .map(|r| json!({"subject": r.subject, "sha256": r.sha256, "not_after": time(r.not_after)}))
            .collect();
        let view = self.views.borrow().clone();
        let mut proxies: Vec<Value> = self
            .watchers
            .snapshot()
            .iter()
            .map(|w| {
                json!({
                    "id": w.id.to_string(),
                    "node": w.node,
                    "peer": w.peer.to_string(),
                    "proxy_version": w.proxy_version,
                    "connected_at": time(w.connected_at),
                    "sent": {"epoch": w.sent.0, "version": w.sent.1},
                    "acked": {"epoch": w.acked.0, "version": w.acked.1},
                    "in_sync": w.acked == w.sent,
                    "resyncs": w.resyncs,
                })
            })
            .collect();
        proxies.sort_by_key(|p| p["id"].as_str().unwrap_or_default().to_owned());
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "flags": self.flags,
            "ca": {
                "revision": state.revision,
                "issuer_not_after": time(state.ca.issuer_not_after()),
                "roots": roots,
            },
            "mesh": mesh(&view),
            "proxies": proxies,
        })
    }
}
