//! Latency-by-percentile plots in the HdrHistogram style, as hand-written SVG: x is the
//! percentile on a log scale of 1 / (1 − p) (so 90 %, 99 %, 99.9 % are evenly spaced), y is the
//! latency on a log scale, one line per route.
//!
//! Owns: [`percentile_plot`].

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const W: f64 = 820.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn color(route: &str) -> &'static str {
    match route {
        "direct" => "#555555",
        "trellis" => "#1f77b4",
        "trellis-service" => "#17becf",
        "haproxy" => "#d62728",
        "nginx" => "#2ca02c",
        _ => "#9467bd",
    }
}

fn label_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{} ms", trim(us / 1000.0))
    } else {
        format!("{} µs", trim(us))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One SVG document: `series` are (route, latencies in ns).
pub fn percentile_plot(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let series: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let most = series.iter().map(|(_, h)| h.len()).max().unwrap_or(1);
    // Show percentiles down to about one sample: 10^-decades of the most samples.
    let decades = ((most as f64).log10().floor()).clamp(2.0, 6.0);
    let min_us = series
        .iter()
        .map(|(_, h)| h.min() as f64 / 1e3)
        .fold(f64::INFINITY, f64::min)
        .max(1.0);
    let max_us = series
        .iter()
        .map(|(_, h)| h.max() as f64 / 1e3)
        .fold(1.0, f64::max);
    let (y_lo, y_hi) = (
        min_us.log10().floor(),
        max_us.log10().ceil().max(min_us.log10().floor() + 1.0),
    );
    let px = |x: f64| LEFT + x / decades * (W - LEFT - RIGHT);
    let py = |us: f64| TOP + (y_hi - us.max(1e-3).log10()) / (y_hi - y_lo) * (H - TOP - BOTTOM);

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Grid: x at 0 %, 90 %, 99 %, …; y at 1, 2, 5 × each decade.
    for d in 0..=(decades as u32) {
        let x = px(f64::from(d));
        let label = match d {
            0 => "0%".to_owned(),
            1 => "90%".to_owned(),
            d => format!("{}%", percent_nines(d)),
        };
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    let mut decade = y_lo;
    while decade < y_hi + 0.5 {
        for m in [1.0, 2.0, 5.0] {
            let us = m * 10f64.powf(decade);
            if us.log10() > y_hi + 1e-9 {
                break;
            }
            let y = py(us);
            let stroke = if m == 1.0 { "#ccc" } else { "#eee" };
            let _ = writeln!(
                o,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                label_us(us)
            );
        }
        decade += 1.0;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (log scale)</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
    for (i, (name, h)) in series.iter().enumerate() {
        let mut points = String::new();
        for v in h.iter_quantiles(10) {
            let q = v.quantile_iterated_to();
            let x = if q >= 1.0 {
                decades
            } else {
                (1.0 / (1.0 - q)).log10().min(decades)
            };
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                px(x),
                py(v.value_iterated_to() as f64 / 1e3)
            );
            if x >= decades {
                break;
            }
        }
        let c = color(name);
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
        let ly = TOP + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(name)
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    o.push_str("</svg>\n");
    o
}

/// 2 → "99", 3 → "99.9", 4 → "99.99".
fn percent_nines(d: u32) -> String {
    if d <= 2 {
        "99".into()
    } else {
        format!("99.{}", "9".repeat(d as usize - 2))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_has_one_line_per_route_with_samples() {
        let mut a = crate::load::histogram();
        let mut b = crate::load::histogram();
        for i in 1..10_000u64 {
            a.saturating_record(50_000 + i * 10);
            b.saturating_record(80_000 + i * 20);
        }
        let empty = crate::load::histogram();
        let svg = percentile_plot("t", &[("direct", &a), ("trellis", &b), ("nginx", &empty)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("99.9%"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
