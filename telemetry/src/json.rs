//! The JSON line format shared by every binary: one object per line, flat, so a log pipeline
//! (or `jq`) finds every field at the top level:
//!
//! ```json
//! {"timestamp":"2025-01-01T12:00:00.000000Z","level":"INFO","target":"trellis_proxy::context",
//!  "span":"tunnel","message":"connection refused","peer.addr":"198.18.0.2:40112",
//!  "peer.id":"spiffe://cluster.local/ns/shop/sa/intruder","reason":"policy"}
//! ```
//!
//! `timestamp` (RFC 3339, UTC), `level`, `target` and `message` are always there; `span` (the
//! innermost span's name) when the event happened inside one. Then come the fields of every
//! enclosing span, outermost first, and the event's own fields, an inner one replacing an outer
//! one of the same name. A field that would shadow one of the five fixed names is written as
//! `field.<name>`.
//!
//! Owns: [`FlatJson`], the event formatter. Span fields are stored by tracing-subscriber's
//! `JsonFields` (set up in [`crate::install`]).

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The names every line starts with, in this order.
pub const FIXED_FIELDS: [&str; 5] = ["timestamp", "level", "target", "span", "message"];

/// Formats an event as one flat JSON object (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;

        let mut fields = Map::new();
        let mut span = None;
        if let Some(scope) = ctx.event_scope() {
            for s in scope.from_root() {
                let extensions = s.extensions();
                if let Some(stored) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(object)) = serde_json::from_str::<Value>(stored)
                {
                    fields.extend(object);
                }
                span = Some(s.name());
            }
        }
        let mut visitor = FieldVisitor(Map::new());
        event.record(&mut visitor);
        fields.extend(visitor.0);
        let message = fields.remove("message").unwrap_or(Value::Null);

        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(span) = span {
            line.insert("span".into(), span.into());
        }
        line.insert("message".into(), message);
        let mut out = String::with_capacity(256);
        out.push('{');
        let mut first = true;
        let mut push = |key: &str, value: &Value| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&Value::from(key).to_string());
            out.push(':');
            out.push_str(&value.to_string());
        };
        for key in FIXED_FIELDS {
            if let Some(value) = line.get(key) {
                push(key, value);
            }
        }
        for (key, value) in &fields {
            if FIXED_FIELDS.contains(&key.as_str()) {
                push(&format!("field.{key}"), value);
            } else {
                push(key, value);
            }
        }
        out.push('}');
        writeln!(writer, "{out}")
    }
}

/// Collects an event's fields as JSON values (numbers and booleans stay typed).
struct FieldVisitor(Map<String, Value>);

impl Visit for FieldVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}
