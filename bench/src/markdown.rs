//! The report as Markdown: targets first, then one table per measurement.
//!
//! Owns: [`render`]. Figures come from `report`; nothing is computed here but formatting.

use std::fmt::Write as _;

use crate::report::{Report, thousands};

fn f(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.decimals$}"))
}

/// The whole report.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let e = &r.environment;
    let p = &r.plan;
    let _ = writeln!(
        o,
        "# Trellis proxy benchmark ({} run, {})\n",
        p.mode, e.date
    );
    let _ = writeln!(
        o,
        "Machine: {} × {} cores, Linux {}, load average {} at the start and {} at the end. Compared: \
         Trellis {} (proxy binary built {}), {}, {}. Everything on 127.0.0.1.\n",
        e.cpu,
        e.cores,
        e.kernel,
        e.load_before,
        e.load_after,
        e.trellis,
        e.proxy_built,
        e.haproxy,
        e.nginx
    );
    let _ = writeln!(
        o,
        "Method: {} repetitions; in each, every measurement runs on every route in turn. Latency: open loop \
         at fixed rates over {} keep-alive connections, {:.1} s warm-up excluded, {:.1} s recorded, coordinated \
         omission corrected; *added* = route − direct in the same repetition. Figures are medians over repetitions \
         (peak RSS: the highest). See bench/README.md.\n",
        p.repetitions,
        p.connections,
        p.warmup.as_secs_f64(),
        p.measure.as_secs_f64()
    );

    let _ = writeln!(o, "## Targets (Trellis vs HAProxy, same run)\n");
    let _ = writeln!(
        o,
        "| target | Trellis | HAProxy | ratio | requirement | result |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---|---|");
    for t in &r.targets {
        let result = match t.pass {
            Some(true) => "**PASS**",
            Some(false) => "**MISS**",
            None => "n/a",
        };
        let note = if t.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", t.note)
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {result}{note} |",
            t.name,
            f(t.trellis, 1),
            f(t.haproxy, 1),
            f(t.ratio, 2),
            t.requirement
        );
    }
    o.push('\n');

    if !r.ab.is_empty() {
        let _ = writeln!(
            o,
            "## A/B: `trellis-b` (B) against `trellis` (A), alternating in this run\n"
        );
        let _ = writeln!(o, "| figure | A | B | B ÷ A |");
        let _ = writeln!(o, "|---|---:|---:|---:|");
        for t in &r.ab {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                t.name,
                f(t.haproxy, 1),
                f(t.trellis, 1),
                f(t.ratio, 3)
            );
        }
        o.push('\n');
    }

    for (i, &rate) in p.rates.iter().enumerate() {
        let _ = writeln!(o, "## Latency at {} req/s (µs)\n", thousands(rate));
        let _ = writeln!(
            o,
            "| route | p50 | p90 | p99 | p99.9 | max | added p50 | added p90 | added p99 | added p99.9 | CPU ms / 1k req | requests | errors |"
        );
        let _ = writeln!(
            o,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for route in &r.routes {
            let Some(l) = route.latency.get(i) else {
                continue;
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                route.route,
                f(l.us[0], 1),
                f(l.us[1], 1),
                f(l.us[2], 1),
                f(l.us[3], 1),
                f(l.us[4], 0),
                f(l.added_us[0], 1),
                f(l.added_us[1], 1),
                f(l.added_us[2], 1),
                f(l.added_us[3], 1),
                f(l.cpu_ms_per_1k, 1),
                l.completed,
                l.errors
            );
        }
        o.push('\n');
    }

    idle_table(r, &mut o);
    let _ = writeln!(
        o,
        "## New connections (fresh TCP connection per request, {} concurrent, closed loop, {:.1} s)\n",
        p.conn_concurrency,
        p.conn_duration.as_secs_f64()
    );
    let _ = writeln!(o, "| route | connections/s | p50 µs | p99 µs | errors |");
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    for route in &r.routes {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            route.route,
            f(route.conns_per_s, 0),
            f(route.conn_p50_us, 0),
            f(route.conn_p99_us, 0),
            route.conn_errors
        );
    }
    o.push('\n');

    let _ = writeln!(
        o,
        "## Single-stream throughput ({} MiB each way, MB/s)\n",
        p.stream_bytes >> 20
    );
    let _ = writeln!(
        o,
        "| route | upload | download | proxies' CPU s per GB | failed transfers |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    for route in &r.routes {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            route.route,
            f(route.upload_mbps, 0),
            f(route.download_mbps, 0),
            f(route.stream_cpu_s_per_gb, 2),
            route.stream_errors
        );
    }
    let _ = writeln!(
        o,
        "\nCPU per GB: user + system time of both proxies of the route over the upload and the \
         download together, per 10⁹ bytes moved: a single stream's speed is bounded by one core, \
         so this is the cost behind the MB/s, and less noisy."
    );
    o.push('\n');

    let _ = writeln!(
        o,
        "## Proxy processes: peak RSS (MiB), CPU per 1,000 requests (ms), context switches per request\n"
    );
    let mut head = "| route | side |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for &rate in &p.rates {
        let _ = write!(
            head,
            " peak RSS @ {0} | CPU @ {0} | switches/req @ {0} |",
            thousands(rate)
        );
        rule.push_str("---:|---:|---:|");
    }
    let _ = writeln!(o, "{head}\n{rule}");
    for route in &r.routes {
        for px in &route.proxies {
            let _ = write!(o, "| {} | {} |", route.route, px.side);
            for ((_, rss, cpu), (_, sw)) in px.per_rate.iter().zip(&px.switches_per_request) {
                let _ = write!(o, " {} | {} | {} |", f(*rss, 1), f(*cpu, 1), f(*sw, 2));
            }
            o.push('\n');
        }
    }
    o.push_str(
        "\nnginx: master + 2 workers summed; HAProxy: one process, 2 threads; Trellis: one process, one thread (its default). \
         HAProxy and nginx in TCP mode open one TLS connection between the proxies per application connection \
         (sessions resumed); Trellis carries every application connection as an HTTP/2 stream on one pooled mTLS \
         connection. nginx's client side does not verify the server certificate (it cannot check a SPIFFE-only \
         certificate); HAProxy verifies the chain but not the SPIFFE ID; Trellis verifies both.\n\n",
    );

    let _ = writeln!(o, "## Completeness\n");
    if r.complete {
        let _ = writeln!(
            o,
            "Complete: every route carried traffic in every measurement."
        );
    } else {
        let _ = writeln!(o, "**INCOMPLETE:**");
        for pr in &r.problems {
            let _ = writeln!(o, "- {pr}");
        }
    }
    for w in &r.warnings {
        let _ = writeln!(o, "- warning: {w}");
    }
    o
}

/// Connections at scale: memory per proxy and the fleet's latency.
fn idle_table(r: &Report, o: &mut String) {
    let p = &r.plan;
    if !p.runs("idle") {
        return;
    }
    let _ = writeln!(
        o,
        "## Connections at scale ({} application connections open at once, each one request every {:.0} s; fresh proxies, Trellis on a pair of its own)\n",
        thousands(p.idle.connections as u32),
        p.idle.interval.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "| route | side | RSS before (MiB) | RSS open (MiB) | KiB per connection | p50 µs | p99 µs | added p99 µs | errors |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for route in &r.routes {
        if let Some(why) = &route.idle_skipped {
            let _ = writeln!(o, "| {} | not measured: {why} | | | | | | | |", route.route);
        }
        let Some(i) = &route.idle else { continue };
        let latency = format!(
            "{:.1} | {:.1} | {} | {}",
            i.p50_us,
            i.p99_us,
            f(i.added_p99_us, 1),
            i.errors
        );
        if i.proxies.is_empty() {
            let _ = writeln!(o, "| {} | — | — | — | — | {latency} |", route.route);
        }
        for x in &i.proxies {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} | {:.1} | {:.2} | {latency} |",
                route.route, x.side, x.rss_before_mib, x.rss_open_mib, x.kib_per_connection
            );
        }
    }
    o.push_str(
        "\nKiB per connection: (RSS open − RSS before) ÷ connections, per proxy process; the latency is that of the fleet's own requests (added = route − direct).\n\n",
    );
}
