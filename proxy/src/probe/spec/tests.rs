use super::*;

fn key(container: &str, kind: ProbeKind) -> ProbeKey {
    ProbeKey {
        container: container.to_owned(),
        kind,
    }
}

#[test]
fn paths_name_a_container_and_a_probe_kind() {
    let cases: &[(&str, Option<(&str, ProbeKind)>)] = &[
        ("/app-health/web/livez", Some(("web", ProbeKind::Liveness))),
        (
            "/app-health/web/readyz",
            Some(("web", ProbeKind::Readiness)),
        ),
        (
            "/app-health/db-1/startupz",
            Some(("db-1", ProbeKind::Startup)),
        ),
        ("/app-health/web/ready", None),
        ("/app-health/web/readyz/x", None),
        ("/app-health//readyz", None),
        ("/app-health/Web/readyz", None),
        ("/app-health/web", None),
        ("/ready", None),
    ];
    for (path, expected) in cases {
        let got = ProbeKey::from_path(path);
        assert_eq!(got, expected.map(|(c, k)| key(c, k)), "{path}");
        if let Some(k) = got {
            assert_eq!(k.to_string(), *path, "round trip");
        }
    }
}

#[test]
fn every_action_kind_parses_with_kubernetes_field_names() {
    let probes = parse(
        r#"{
        "/app-health/web/readyz": {"httpGet": {"path": "healthz?full=1", "port": 8443, "scheme": "HTTPS",
            "host": "10.1.2.3", "httpHeaders": [{"name": "Host", "value": "web.local"}, {"name": "X-A", "value": "1"}]},
            "timeoutSeconds": 3, "periodSeconds": 10},
        "/app-health/web/livez": {"tcpSocket": {"port": 8080}},
        "/app-health/db/startupz": {"grpc": {"port": 9090, "service": "db"}}
    }"#,
    )
    .unwrap();
    assert_eq!(probes.len(), 3);
    let ready = probes.get(&key("web", ProbeKind::Readiness)).unwrap();
    assert_eq!(ready.timeout, Duration::from_secs(3));
    let Action::Http(h) = &ready.action else {
        panic!("{ready:?}")
    };
    assert_eq!(h.scheme, Scheme::Https);
    assert_eq!(h.port, 8443);
    assert_eq!(h.path.as_str(), "/healthz?full=1");
    assert_eq!(h.host.as_deref(), Some("10.1.2.3"));
    assert_eq!(h.headers.len(), 2);
    let live = probes.get(&key("web", ProbeKind::Liveness)).unwrap();
    assert_eq!(live.timeout, DEFAULT_TIMEOUT);
    assert_eq!(
        live.action,
        Action::Tcp(TcpSocket {
            host: None,
            port: 8080
        })
    );
    assert_eq!(
        probes.get(&key("db", ProbeKind::Startup)).unwrap().action,
        Action::Grpc(Grpc {
            port: 9090,
            service: "db".into()
        })
    );
}

#[test]
fn an_empty_value_means_no_probes() {
    assert!(parse("").unwrap().is_empty());
    assert!(parse("{}").unwrap().is_empty());
}

#[test]
fn bad_probes_are_refused_naming_the_container_and_the_probe() {
    let cases: &[(&str, &str)] = &[
        ("[1]", "expected a JSON object"),
        (
            r#"{"/ready": {"tcpSocket": {"port": 1}}}"#,
            "key \"/ready\"",
        ),
        (
            r#"{"/app-health/web/livez": {"tcpSocket": {"port": "http"}}}"#,
            "livenessProbe of container \"web\" (/app-health/web/livez): port \"http\" is a name the injector did not resolve",
        ),
        (
            r#"{"/app-health/web/readyz": {"httpGet": {"port": 70000}}}"#,
            "readinessProbe of container \"web\"",
        ),
        (
            r#"{"/app-health/web/readyz": {"httpGet": {"port": 0}}}"#,
            "port 0: expected 1 to 65535",
        ),
        (
            r#"{"/app-health/web/readyz": {"httpGet": {"port": 80, "scheme": "FTP"}}}"#,
            "scheme \"FTP\"",
        ),
        (
            r#"{"/app-health/web/readyz": {"httpGet": {"port": 80, "path": "/a b"}}}"#,
            "path \"/a b\"",
        ),
        (
            r#"{"/app-health/web/readyz": {"httpGet": {"port": 80, "httpHeaders": [{"name": "a b", "value": "x"}]}}}"#,
            "\"a b\" is not a header name",
        ),
        (
            r#"{"/app-health/web/readyz": {"httpGet": {"port": 80, "host": "a/b"}}}"#,
            "host \"a/b\"",
        ),
        (
            r#"{"/app-health/web/startupz": {"tcpSocket": {"port": 80}, "grpc": {"port": 81}}}"#,
            "startupProbe of container \"web\" (/app-health/web/startupz): expected exactly one of",
        ),
        (
            r#"{"/app-health/web/startupz": {"exec": {"command": ["true"]}}}"#,
            "expected exactly one of",
        ),
        (
            r#"{"/app-health/web/livez": {"tcpSocket": {"port": 80}, "timeoutSeconds": 0}}"#,
            "timeoutSeconds 0",
        ),
    ];
    for (json, expected) in cases {
        let err = parse(json).unwrap_err().to_string();
        assert!(err.contains(expected), "{json}: {err}");
    }
}

#[test]
fn the_dump_shows_probes_without_header_values() {
    let probes = parse(
        r#"{"/app-health/web/readyz": {"httpGet": {"path": "/h", "port": 80,
            "httpHeaders": [{"name": "Authorization", "value": "Bearer secret"}]}}}"#,
    )
    .unwrap();
    let dump = serde_json::to_string(&probes).unwrap();
    assert_eq!(
        dump,
        r#"{"/app-health/web/readyz":"HTTP GET <pod IP>:80/h (headers authorization), timeout 1s"}"#
    );
    assert!(!dump.contains("secret"));
}
