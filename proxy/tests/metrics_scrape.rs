//! Scrapes a real control plane and real proxies over HTTP: names follow Prometheus
//! conventions, counters with known label values are there at 0 before anything happened,
//! traffic shows up as bytes and durations by direction, discovery and CA metrics move, every
//! metric the chart's alert rules use exists, and both `/config_dump`s show the policy in force
//! and no secret.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/trellis/files/alerts.yaml"
);

/// GET `path` on `addr` (HTTP/1.1, connection closed after): (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    within(WAIT, "an HTTP answer", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    })
    .await
}

/// The value of the series `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The names of every sample (the part before labels and value).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

/// Where an exposition breaks Prometheus naming conventions (empty: none).
fn convention_problems(text: &str) -> Vec<String> {
    let names = sample_names(text);
    let mut problems = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split(' ');
        let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let ours = ["trellis_proxy_", "trellis_control_plane_", "process_"]
            .iter()
            .any(|p| name.starts_with(p))
            || name == "trellis_build";
        if !ours {
            problems.push(format!(
                "{name}: not trellis_<part>_*, trellis_build_info or process_*"
            ));
        }
        for bad in [
            "_ms",
            "_millis",
            "_milliseconds",
            "_minutes",
            "_hours",
            "_kb",
            "_mb",
            "_total",
        ] {
            if name.contains(bad) {
                problems.push(format!(
                    "{name}: contains {bad} (base units, _total only on samples)"
                ));
            }
        }
        let unit_ok = name.ends_with("_seconds") || name.ends_with("_bytes");
        let timed = ["duration", "latency", "expiry", "time"]
            .iter()
            .any(|w| name.contains(w));
        match kind {
            "counter" if !names.contains(&format!("{name}_total")) => {
                problems.push(format!("{name}: a counter without a {name}_total sample"));
            }
            "histogram" if !unit_ok => {
                problems.push(format!("{name}: a histogram not in _seconds or _bytes"));
            }
            "info" if !names.contains(&format!("{name}_info")) => {
                problems.push(format!("{name}: an info metric without {name}_info"));
            }
            _ => {}
        }
        if timed && !name.ends_with("_seconds") {
            problems.push(format!("{name}: a time or duration not in _seconds"));
        }
        if name.contains("bytes") && !name.ends_with("_bytes") {
            problems.push(format!("{name}: bytes not as the _bytes unit suffix"));
        }
    }
    problems
}

/// The metric names (trellis_*, process_*) in the `expr` of every rule of the chart's alerts.
fn alert_metric_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(ALERTS).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|t| t.starts_with("trellis_") || t.starts_with("process_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Polls the async `f` until it returns true or [`WAIT`] passes.
async fn until<F: Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn mesh_file(path: &Path, app: SocketAddr) {
    let text = format!(
        "workloads:\n  - {{namespace: shop, serviceAccount: backend, ip: 127.0.0.1, port: {port}, labels: {{app: backend}}}}\n\
         policies:\n  - apiVersion: trellis.dev/v1alpha1\n    kind: AuthorizationPolicy\n    metadata: {{name: backend-allow, namespace: shop}}\n    spec: {{selector: {{matchLabels: {{app: backend}}}}, ports: [{port}], allow: [\"ns/shop/sa/frontend\"]}}\n",
        port = app.port()
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_convention_check_names_what_is_wrong() {
    let good = "# TYPE trellis_proxy_refusals counter\ntrellis_proxy_refusals_total 0\n\
                # TYPE trellis_proxy_x_duration_seconds histogram\n\
                # TYPE trellis_build info\ntrellis_build_info{v=\"1\"} 1\n";
    assert_eq!(convention_problems(good), Vec::<String>::new());
    let table = [
        ("# TYPE trellis_proxy_latency_ms gauge\n", "_ms"),
        (
            "# TYPE trellis_proxy_cert_expiry gauge\n",
            "not in _seconds",
        ),
        ("# TYPE trellis_proxy_x histogram\n", "histogram"),
        (
            "# TYPE trellis_proxy_opened counter\ntrellis_proxy_opened 1\n",
            "_total sample",
        ),
        (
            "# TYPE trellis_proxy_bytes_in counter\ntrellis_proxy_bytes_in_total 1\n",
            "_bytes",
        ),
        ("# TYPE other_thing gauge\n", "not trellis_"),
    ];
    for (text, want) in table {
        let problems = convention_problems(text);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{text}: {problems:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_follow_conventions_start_at_zero_count_traffic_and_cover_the_alert_rules()
{
    let app = echo_app().await;
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    mesh_file(&mesh, app);
    let cp = ControlPlane::start(&[&format!("--mesh-file={}", mesh.display())]).await;
    let cp_metrics = cp.running.metrics_addr;

    // Before any proxy: the CA's and discovery's counters are there, at 0.
    let (status, before) = get(cp_metrics, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "trellis_control_plane_certificates_issued_total",
        "trellis_control_plane_certificates_refused_total{reason=\"rate_limited\"}",
        "trellis_control_plane_certificates_refused_total{reason=\"impersonation_not_on_node\"}",
        "trellis_control_plane_connections_refused_total{reason=\"handshake_timeout\"}",
        "trellis_control_plane_discovery_pushes_total{kind=\"full\"}",
        "trellis_control_plane_discovery_pushes_total{kind=\"incremental\"}",
        "trellis_control_plane_discovery_resyncs_total",
        "trellis_control_plane_discovery_connected_proxies",
    ] {
        assert_eq!(sample(&before, series), Some(0.0), "{series} in\n{before}");
    }
    assert!(
        before.contains("trellis_build_info{component=\"control-plane\",version=\""),
        "{before}"
    );

    let backend = proxy(&cp, TOKENS[1].0, &[]).await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let frontend = proxy(
        &cp,
        TOKENS[0].0,
        &[
            format!("--outbound=127.0.0.1:0={app}"),
            format!("--workload={app}=spiffe://cluster.local/ns/shop/sa/backend@{tunnel}"),
        ],
    )
    .await;
    let listen = frontend.addrs.explicit_outbound[0];
    let (front_admin, back_admin) = (frontend.addrs.admin.unwrap(), backend.addrs.admin.unwrap());
    assert!(
        eventually(WAIT, || !backend.ctx.state.borrow().policy.rules.is_empty()).await,
        "the backend never received its policy"
    );

    // Before any traffic: bytes, durations, renewals and the watched refusals are at 0.
    let (_, fresh) = get(front_admin, "/metrics").await;
    for series in [
        "trellis_proxy_sent_bytes_total{direction=\"outbound\"}",
        "trellis_proxy_received_bytes_total{direction=\"inbound\"}",
        "trellis_proxy_connection_duration_seconds_count{direction=\"outbound\"}",
        "trellis_proxy_certificate_renewals_total{result=\"error\"}",
        "trellis_proxy_refusals_total{direction=\"inbound\",reason=\"policy\"}",
        "trellis_proxy_refusals_total{direction=\"inbound-plain\",reason=\"plaintext\"}",
    ] {
        assert_eq!(sample(&fresh, series), Some(0.0), "{series} in\n{fresh}");
    }

    let msg = b"twelve bytes";
    assert_eq!(roundtrip(listen, msg).await.unwrap(), msg);
    let n = msg.len() as f64;
    for (admin, direction) in [(front_admin, "outbound"), (back_admin, "inbound")] {
        let counted = until(|| async move {
            let (_, text) = get(admin, "/metrics").await;
            let dir = format!("{{direction=\"{direction}\"}}");
            sample(&text, &format!("trellis_proxy_sent_bytes_total{dir}")) == Some(n)
                && sample(&text, &format!("trellis_proxy_received_bytes_total{dir}")) == Some(n)
                && sample(
                    &text,
                    &format!("trellis_proxy_connection_duration_seconds_count{dir}"),
                ) == Some(1.0)
        })
        .await;
        assert!(counted, "{direction}: {}", get(admin, "/metrics").await.1);
    }

    // The control plane sees two proxies in sync, and counted their certificates and pushes.
    let synced = until(|| async {
        let (_, text) = get(cp_metrics, "/metrics").await;
        sample(&text, "trellis_control_plane_discovery_connected_proxies") == Some(2.0)
            && sample(&text, "trellis_control_plane_discovery_proxies_out_of_sync") == Some(0.0)
    })
    .await;
    let (_, cp_text) = get(cp_metrics, "/metrics").await;
    assert!(synced, "{cp_text}");
    let at_least = |series: &str, min: f64| {
        let v = sample(&cp_text, series);
        assert!(
            v.is_some_and(|v| v >= min),
            "{series} = {v:?}, expected >= {min}"
        );
    };
    at_least("trellis_control_plane_certificates_issued_total", 2.0);
    at_least("trellis_control_plane_certify_duration_seconds_count", 2.0);
    at_least(
        "trellis_control_plane_discovery_pushes_total{kind=\"full\"}",
        2.0,
    );
    at_least(
        "trellis_control_plane_discovery_push_duration_seconds_count",
        2.0,
    );

    let (_, front_text) = get(front_admin, "/metrics").await;
    let (_, back_text) = get(back_admin, "/metrics").await;
    for (who, text) in [
        ("control plane", &cp_text),
        ("frontend", &front_text),
        ("backend", &back_text),
    ] {
        assert_eq!(
            convention_problems(text),
            Vec::<String>::new(),
            "{who}:\n{text}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(sample_names(text).contains(name), "{who}: no {name}");
        }
    }
    assert!(front_text.contains("trellis_build_info{component=\"proxy\",version=\""));

    // Every metric the alert rules use is exposed by one of them.
    let exposed: BTreeSet<String> = [&cp_text, &front_text, &back_text]
        .iter()
        .flat_map(|t| sample_names(t))
        .collect();
    let used = alert_metric_names();
    assert!(used.len() >= 8, "the rules name too few metrics: {used:?}");
    let missing: Vec<_> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "alert rules use metrics nobody exposes: {missing:?}"
    );

    // The proxy's /config_dump shows the policy in force; the control plane's the mesh and the
    // proxies, and no key or token.
    let (status, dump) = get(back_admin, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let rule = &dump["policy_rules"][0];
    assert_eq!(rule["policy"], "shop/backend-allow", "{dump:#}");
    assert_eq!(rule["allow"][0], FRONTEND, "{dump:#}");
    assert_eq!(rule["ports"][0], app.port(), "{dump:#}");
    assert!(dump["services"].is_array(), "{dump:#}");
    let (status, text) = get(cp_metrics, "/config_dump").await;
    assert_eq!(status, 200, "{text}");
    for secret in [
        "PRIVATE KEY",
        "BEGIN",
        TOKENS[0].0,
        TOKENS[1].0,
        TOKENS[2].0,
    ] {
        assert!(
            !text.contains(secret),
            "the control plane's dump shows {secret:?}:\n{text}"
        );
    }
    let cp_dump: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        cp_dump["mesh"]["policies"][0]["name"], "shop/backend-allow",
        "{cp_dump:#}"
    );
    assert_eq!(
        cp_dump["proxies"].as_array().map(Vec::len),
        Some(2),
        "{cp_dump:#}"
    );
    assert!(
        cp_dump["flags"]["join_tokens_file"].is_string(),
        "{cp_dump:#}"
    );
    assert_eq!(
        cp_dump["ca"]["roots"].as_array().map(Vec::len),
        Some(1),
        "{cp_dump:#}"
    );

    frontend.shutdown().await;
    backend.shutdown().await;
    cp.running.shutdown(Duration::from_secs(1)).await;
}
