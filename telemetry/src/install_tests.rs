use std::io;

use serde_json::Value;

use super::*;
use crate::capture::LogBuffer as Buffer;

fn settings(filter: &str, format: LogFormat) -> LogSettings {
    LogSettings {
        filter: filter.to_owned(),
        format,
        ansi: false,
    }
}

#[test]
fn json_lines_carry_the_shared_field_names_flat() {
    let buffer = Buffer::default();
    let (dispatch, _) = subscriber(&settings("info", LogFormat::Json), buffer.clone()).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        let outer = tracing::info_span!("tunnel", peer.addr = "198.18.0.2:40112", dst = "x");
        let _outer = outer.enter();
        let inner = tracing::info_span!("inbound", dst = "198.18.0.3:8080");
        let _inner = inner.enter();
        tracing::info!(
            peer.id = "spiffe://cluster.local/ns/shop/sa/intruder",
            count = 3_u64,
            level = "shadowed",
            "connection refused"
        );
    });
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], module_path!());
    assert_eq!(line["span"], "inbound");
    assert_eq!(line["message"], "connection refused");
    assert_eq!(line["peer.addr"], "198.18.0.2:40112");
    assert_eq!(
        line["peer.id"],
        "spiffe://cluster.local/ns/shop/sa/intruder"
    );
    assert_eq!(line["dst"], "198.18.0.3:8080", "the inner span wins");
    assert_eq!(line["count"], 3, "numbers stay numbers");
    assert_eq!(line["field.level"], "shadowed");
    let keys: Vec<&str> = lines[0]
        .trim_start_matches('{')
        .split(",\"")
        .take(5)
        .map(|k| k.trim_matches('"').split('"').next().unwrap_or(""))
        .collect();
    assert_eq!(keys, crate::json::FIXED_FIELDS, "fixed fields come first");
}

#[test]
fn text_lines_name_level_target_and_span_fields() {
    let buffer = Buffer::default();
    let (dispatch, _) = subscriber(&settings("info", LogFormat::Text), buffer.clone()).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        let span = tracing::info_span!("tunnel", peer.addr = "198.18.0.2:40112");
        let _g = span.enter();
        tracing::info!(reason = "policy", "connection refused");
    });
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    for part in [
        " INFO ",
        "tunnel{peer.addr=\"198.18.0.2:40112\"}",
        "connection refused",
        "reason=\"policy\"",
    ] {
        assert!(lines[0].contains(part), "{part} missing in {}", lines[0]);
    }
}

#[test]
fn the_handle_changes_the_filter_of_a_running_subscriber() {
    let buffer = Buffer::default();
    let (dispatch, handle) =
        subscriber(&settings("info", LogFormat::Text), buffer.clone()).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::debug!("hidden at info");
        assert_eq!(handle.set("debug").unwrap(), "debug");
        tracing::debug!("shown at debug");
        let err = handle.set("verbose").unwrap_err();
        assert!(err.to_string().contains("names no level"), "{err}");
        assert_eq!(
            handle.filter().unwrap(),
            "debug",
            "a refused filter changes nothing"
        );
        handle.set("warn").unwrap();
        tracing::info!("hidden at warn");
    });
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("shown at debug"), "{lines:?}");
}

#[test]
fn a_bad_start_filter_is_refused_with_what_is_expected() {
    let err = subscriber(&settings("loud", LogFormat::Text), io::sink).unwrap_err();
    assert!(err.to_string().contains("expected a level"), "{err}");
}

#[test]
fn a_handle_outliving_its_subscriber_says_so() {
    let (dispatch, handle) = subscriber(&settings("info", LogFormat::Text), io::sink).unwrap();
    drop(dispatch);
    assert!(matches!(handle.set("debug"), Err(LogError::Gone)));
}

#[test]
fn a_bad_log_flag_is_named_and_installs_nothing() {
    let args = LogArgs {
        filter: Some("debgu".into()),
        ..LogArgs::default()
    };
    let err = init(&args).unwrap_err();
    assert!(err.to_string().starts_with("--log (TRELLIS_LOG"), "{err}");
    assert!(
        !tracing::dispatcher::has_been_set(),
        "nothing was installed"
    );
}
