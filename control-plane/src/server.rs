//! Assembling and running the control plane: CA state → CA → attestor → gRPC over TLS + metrics.
//!
//! Owns: the start-up order (everything that can fail does so before a port serves), the
//! listeners, and graceful shutdown. Tests call [`start`] with `127.0.0.1:0` addresses.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use trellis_ca::{TrustBundle, certs_from_pem};
use trellis_proto::identity::identity_server::IdentityServer;
use trellis_proto::istio::istio_certificate_service_server::IstioCertificateServiceServer;

use crate::attest::{Attestor, JoinTokens, RELOAD_INTERVAL, TokenReviewer};
use crate::ca_live::reconcile::Source;
use crate::ca_live::{LiveCa, LiveClientVerifier};
use crate::ca_store::{CaStore, DirStore, Origin, Published, SecretStore, load_or_init};
use crate::certify::Certifier;
use crate::config::{Config, Mode};
use crate::grpc::{
    DiscoveryServer, DiscoveryService, IdentityService, IstioCaService, MAX_MESSAGE_BYTES,
};
use crate::metrics::{self, Metrics};
use crate::node_agent::NodeAgents;
use crate::rate_limit::RateLimiter;
use crate::serving_cert::ServingCert;
use crate::tls_listener;

/// Why the control plane did not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Kubernetes mode needs a client.
    #[error("--mode kubernetes needs a Kubernetes client (in-cluster config or KUBECONFIG)")]
    NoKubernetesClient,
    /// CA state could not be loaded or stored.
    #[error("CA state: {0}")]
    Store(#[from] crate::ca_store::StoreError),
    /// The CA material is unusable.
    #[error("CA: {0}")]
    Ca(#[from] trellis_ca::CaLoadError),
    /// An extra root file is unusable.
    #[error("--extra-root {path}: {reason}")]
    ExtraRoot {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The mesh file is unusable.
    #[error("--mesh-file: {0}")]
    MeshFile(#[from] crate::mesh::file::MeshFileError),
    /// The join-token file is unusable.
    #[error("--join-tokens: {0}")]
    JoinTokens(#[from] crate::attest::JoinTokenError),
    /// The serving certificate could not be made.
    #[error(transparent)]
    ServingCert(#[from] crate::serving_cert::ServingCertError),
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A port could not be bound.
    #[error("cannot listen on {addr} ({flag}): {reason}")]
    Bind {
        /// The flag that named the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        reason: String,
    },
}

/// A running control plane.
#[derive(Debug)]
pub struct Running {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where metrics listen.
    pub metrics_addr: SocketAddr,
    /// Where `/status` listens, if it does.
    pub status_addr: Option<SocketAddr>,
    /// The trust bundle workloads should use (at start; [`Running::live`] has the current one).
    pub bundle: TrustBundle,
    /// How the CA was obtained.
    pub origin: Origin,
    /// The CA in use (it changes with rotation steps).
    pub live: Arc<LiveCa>,
    /// The proxies watching discovery.
    pub watchers: Arc<crate::grpc::Watchers>,
    /// Cancels every task.
    shutdown: CancellationToken,
    /// The gRPC server task.
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// Stops accepting, lets in-flight calls finish for up to `grace`, then returns.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        match tokio::time::timeout(grace, self.grpc).await {
            Ok(Ok(Ok(()))) => info!("gRPC server drained"),
            Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
            Err(_) => warn!(
                ?grace,
                "in-flight calls did not finish within the grace period"
            ),
        }
    }

    /// A token that stops the control plane when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the control plane. `kube` is required in Kubernetes mode and unused in local mode.
pub async fn start(config: &Config, kube: Option<kube::Client>) -> Result<Running, StartError> {
    let args = &config.args;
    let td = &config.trust_domain;
    let now = SystemTime::now();

    // 1. CA state and the CA.
    let (store, published) = match args.mode {
        Mode::Local => {
            let dir = args.state_dir.as_deref().unwrap_or(Path::new("."));
            let published = match &args.state_dir {
                Some(d) => Published::in_state_dir(d),
                None => Published::Nowhere,
            };
            (CaStore::Dir(DirStore::new(dir)), published)
        }
        Mode::Kubernetes => {
            let client = kube.clone().ok_or(StartError::NoKubernetesClient)?;
            let store = CaStore::Secret(Box::new(SecretStore::new(
                client.clone(),
                &args.namespace,
                &args.ca_secret,
            )));
            (store, Published::ConfigMaps(client))
        }
    };
    let (material, origin) = load_or_init(
        &store,
        args.cacerts_dir.as_deref(),
        &published,
        args.accept_new_root,
        td,
        now,
    )
    .await?;
    let mut extra_roots = Vec::new();
    for path in &args.extra_roots {
        let bad = |reason: String| StartError::ExtraRoot {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        extra_roots.extend(certs_from_pem(&pem).map_err(|e| bad(e.to_string()))?);
    }
    let metrics = Arc::new(Metrics::new(now, now));
    let live = Arc::new(LiveCa::start(
        td.clone(),
        material,
        args.max_ttl,
        extra_roots,
        metrics.clone(),
        now,
    )?);
    let ca = live.current();
    info!(
        location = %store.location(),
        ?origin,
        trust_domain = %td,
        roots = ca.bundle().roots().len(),
        issuer_not_after = %humantime::format_rfc3339_seconds(ca.issuer_not_after()),
        "certificate authority ready"
    );
    warn_if_published_differs(&published, ca.bundle()).await;

    // 2. Attestation.
    let attestor = match args.mode {
        Mode::Local => {
            let path = args
                .join_tokens
                .as_deref()
                .unwrap_or(Path::new("join-tokens"));
            Attestor::Local(JoinTokens::load(
                path,
                td.clone(),
                config.own_id.clone(),
                args.state_dir.as_deref(),
            )?)
        }
        Mode::Kubernetes => {
            let client = kube.clone().ok_or(StartError::NoKubernetesClient)?;
            let audiences = args.token_audiences.iter().map(|a| a.trim().to_owned());
            Attestor::Kubernetes(
                TokenReviewer::new(client, td.clone(), args.token_cache_ttl)
                    .with_audiences(audiences.collect()),
            )
        }
    };

    // 3. Listeners: bind before serving anything, so a taken port fails the start.
    let grpc_listener = bind("--listen", args.listen).await?;
    let metrics_listener = bind("--metrics-listen", args.metrics_listen).await?;
    let grpc_addr = local_addr("--listen", &grpc_listener, args.listen)?;
    let metrics_addr = local_addr("--metrics-listen", &metrics_listener, args.metrics_listen)?;
    let status_listener = match args.status_listen {
        Some(addr) => {
            let listener = bind("--status-listen", addr).await?;
            let bound = local_addr("--status-listen", &listener, addr)?;
            Some((listener, bound))
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    // The cluster's pods, filled by the cluster source (step 5): node agents' nodes.
    let (pods, pods_writer) = crate::mesh::kubernetes::pod_index();
    let mut certifier = Certifier::new(
        live.clone(),
        attestor,
        RateLimiter::new(args.rate_limit_per_second, args.rate_limit_burst),
        metrics.clone(),
        args.default_ttl,
    );
    if args.mode == Mode::Kubernetes && !config.node_agents.is_empty() {
        info!(node_agents = ?config.node_agents, "node agents may ask for identities of pods on their node");
        certifier = certifier.with_node_agents(NodeAgents::new(
            config.node_agents.clone(),
            td.clone(),
            Some(pods),
        ));
    }
    let certifier = Arc::new(certifier);
    spawn_join_token_reloader(certifier.clone(), shutdown.clone());
    // Keep the CA store, the published bundle and (Kubernetes mode) the webhook's serving
    // certificate and caBundle in agreement with the CA in use.
    let source = match (args.cacerts_dir.as_deref(), store) {
        (Some(dir), _) => Source::PlugIn(DirStore::read_only(dir)),
        (None, CaStore::Dir(d)) => Source::Dir(d),
        (None, CaStore::Secret(s)) => Source::Secret(s),
    };
    tokio::spawn(crate::ca_live::reconcile::run(
        live.clone(),
        source,
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::ca_live::publish::run(
        live.clone(),
        published,
        args.namespace.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    if let (Mode::Kubernetes, Some(client), false) =
        (args.mode, kube.clone(), args.injector_secret.is_empty())
    {
        let targets = crate::injector_cert::InjectorCertTargets {
            namespace: args.namespace.clone(),
            service: args.injector_service.clone(),
            secret: args.injector_secret.clone(),
            webhook: args.injector_webhook.clone(),
        };
        tokio::spawn(crate::injector_cert::run(
            client,
            live.clone(),
            targets,
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    // 4. TLS: our own SVID; clients may come without a certificate (they are here to get one);
    //    a certificate that is presented is checked against the live bundle.
    let serving = Arc::new(ServingCert::issue(
        &ca,
        &config.own_id,
        &config.server_names,
    )?);
    serving.spawn_renewal(
        live.clone(),
        config.own_id.clone(),
        config.server_names.clone(),
        shutdown.clone(),
    );
    let mut tls = ServerConfig::builder_with_provider(trellis_ca::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(LiveClientVerifier::new(live.bundles())))
        .with_cert_resolver(serving);
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let incoming = tls_listener::incoming(
        grpc_listener,
        TlsAcceptor::from(Arc::new(tls)),
        tls_listener::HandshakeLimits::from_args(args),
        metrics.clone(),
        shutdown.clone(),
    );

    // 5. The mesh model: the cluster or the mesh file (an empty mesh if neither), published in
    //    versions; and the trust bundle, both streamed to proxies by discovery.
    let (publisher, views) = crate::mesh::Publisher::new(crate::mesh::MeshModel {
        trust_domain: td.clone(),
        default_mtls: args.mtls_mode,
        ..crate::mesh::MeshModel::default()
    });
    match (args.mode, &args.mesh_file, kube.clone()) {
        (Mode::Local, Some(path), _) => {
            // Refuse to start on a broken file; later breakage keeps the last good model.
            publisher.publish(crate::mesh::file::load(path, td)?);
            tokio::spawn(crate::mesh::file::watch_file(
                path.clone(),
                td.clone(),
                publisher,
                shutdown.clone(),
            ));
        }
        (Mode::Kubernetes, _, Some(client)) => {
            // Before any stream can open: Watch streams wait until every kind was listed.
            publisher.set_waiting_for(crate::mesh::kubernetes::cluster::KINDS.to_vec());
            tokio::spawn(crate::mesh::kubernetes::watch_cluster(
                client,
                td.clone(),
                args.mtls_mode,
                args.discovery_debounce,
                publisher,
                pods_writer,
                shutdown.clone(),
            ));
        }
        _ => {
            // No source: an empty mesh. Keep the publisher alive, or every Watch stream would
            // end after its first update (a closed channel means "no more changes").
            let stop = shutdown.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                drop(publisher);
            });
        }
    }
    let views_for_dump = views.clone();
    let discovery_service = DiscoveryService::new(views.clone(), live.bundles(), shutdown.clone())
        .with_metrics(metrics.clone());
    let watchers = discovery_service.watchers();
    let status_addr = status_listener.map(|(listener, addr)| {
        let source = crate::status::StatusSource {
            watchers: watchers.clone(),
            views,
        };
        tokio::spawn(crate::status::serve(listener, source, shutdown.clone()));
        addr
    });
    let discovery = DiscoveryServer::new(discovery_service);

    // 6. gRPC services.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IdentityServer<IdentityService>>()
        .await;
    health_reporter
        .set_serving::<IstioCertificateServiceServer<IstioCaService>>()
        .await;
    let identity = IdentityServer::new(IdentityService::new(certifier.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let istio = IstioCertificateServiceServer::new(IstioCaService::new(certifier))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let grpc_shutdown = shutdown.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(Duration::from_secs(30))
            .concurrency_limit_per_connection(256)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(identity)
            .add_service(istio)
            .add_service(discovery)
            .serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned())
            .instrument(info_span!("grpc", addr = %grpc_addr)),
    );
    let dump = Arc::new(crate::config_dump::ConfigDump::new(
        config,
        live.clone(),
        views_for_dump,
        watchers.clone(),
    ));
    tokio::spawn(metrics::serve(
        metrics_listener,
        metrics,
        dump,
        shutdown.clone(),
    ));
    info!(
        grpc = %grpc_addr,
        metrics = %metrics_addr,
        id = %config.own_id,
        server_names = %config.server_names,
        "control plane serving"
    );

    Ok(Running {
        grpc_addr,
        metrics_addr,
        status_addr,
        bundle: ca.bundle().clone(),
        origin,
        live,
        watchers,
        shutdown,
        grpc,
    })
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    trellis_listener::bind(addr).map_err(|e| StartError::Bind {
        flag,
        addr,
        reason: e.to_string(),
    })
}

fn local_addr(
    flag: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|e| StartError::Bind {
        flag,
        addr,
        reason: e.to_string(),
    })
}

/// Warns when the bundle published by an earlier run names roots the CA in use does not trust
/// (an old backup of the CA restored, say): proxies holding certificates of those roots will
/// be refused. Starting is still right: the stored CA is the one the operator chose.
async fn warn_if_published_differs(published: &Published, bundle: &TrustBundle) {
    match published.read().await {
        Ok(found) => {
            let unknown: Vec<String> = found
                .roots
                .iter()
                .filter(|r| !bundle.contains(r))
                .map(|r| crate::ca_live::change::describe(r))
                .collect();
            if !unknown.is_empty() {
                warn!(published = %found.places.join(", "), roots = ?unknown, "the published trust bundle names roots the CA in use does not trust; proxies with certificates under them will be refused, and the published bundle is replaced with the current one");
            }
        }
        Err(e) => warn!(error = %e, "cannot read the published trust bundle"),
    }
}

fn spawn_join_token_reloader(certifier: Arc<Certifier>, shutdown: CancellationToken) {
    if !matches!(certifier.attestor(), Attestor::Local(_)) {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Attestor::Local(tokens) = certifier.attestor() {
                match tokens.reload_if_changed() {
                    Ok(true) => info!(tokens = tokens.len(), "join-token file reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        warn!(error = %e, "join-token file not reloaded; the previous tokens stay in force")
                    }
                }
            }
        }
    });
}
