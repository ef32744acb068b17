//! `--plot DIR`: SVG charts of one run, written by hand (no plotting
//! dependency): latency percentiles per transport and per payload size, and
//! throughput by payload size and by worker count. Every chart carries the
//! machine (CPU, cores, kernel) and the mode in its caption.

use std::fmt::Write as _;
use std::path::Path;

use crate::common::{format_bytes, format_nanos, format_rate, BoxResult, Latency, Machine, Mode, Throughput};
use crate::oneway::OneWay;
use crate::topics::Topics;

/// What the charts are drawn from; sections not measured stay empty.
#[derive(Default)]
pub struct Data {
    pub latency: Vec<Latency>,
    pub throughput: Vec<Throughput>,
    pub oneway: Option<OneWay>,
    pub topics: Option<Topics>,
}

/// Writes every chart there is data for into `dir`; returns the file names.
pub fn write_all(dir: &Path, machine: &Machine, mode: Mode, data: &Data) -> BoxResult<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let caption = format!("{} · shmpool-bench {} mode", machine.describe(), mode.name());
    let mut charts: Vec<(&str, String)> = Vec::new();
    if !data.latency.is_empty() {
        let series: Vec<Series> = data.latency.iter().map(percentile_series).collect();
        let panel = Panel { title: "Task round trip".to_owned(), series };
        charts.push(("latency.svg", percentile_chart("Round-trip latency percentiles", &[panel], &caption)));
    }
    if !data.throughput.is_empty() {
        let bars: Vec<(String, f64, String)> = data
            .throughput
            .iter()
            .map(|row| {
                (
                    format!("{} ({})", row.name, row.delivery.name()),
                    row.tasks_per_second(),
                    format_rate(row.tasks_per_second()),
                )
            })
            .collect();
        charts.push((
            "throughput.svg",
            bar_chart("Task throughput by transport, delivery and workers (tasks/s, log scale)", &bars, &caption),
        ));
    }
    if let Some(oneway) = &data.oneway {
        let mut sizes: Vec<usize> = oneway.latency.iter().map(|row| row.bytes).collect();
        sizes.dedup();
        let panels: Vec<Panel> = sizes
            .iter()
            .map(|&bytes| Panel {
                title: format_bytes(bytes),
                series: oneway
                    .latency
                    .iter()
                    .filter(|row| row.bytes == bytes)
                    .map(|row| Series { name: row.transport.clone(), ..percentile_series(&row.latency) })
                    .collect(),
            })
            .collect();
        if !panels.is_empty() {
            charts.push((
                "oneway-latency.svg",
                percentile_chart("One-way latency percentiles by payload size", &panels, &caption),
            ));
        }
        let bars: Vec<(String, f64, String)> = oneway
            .throughput
            .iter()
            .map(|row| {
                let label = format!("{} · {}", format_bytes(row.bytes), row.transport);
                (label, row.messages_per_second, format_rate(row.messages_per_second))
            })
            .collect();
        if !bars.is_empty() {
            charts.push((
                "oneway-throughput.svg",
                bar_chart("One-way throughput by payload size (messages/s, log scale)", &bars, &caption),
            ));
        }
    }
    if let Some(topics) = &data.topics {
        charts.extend(topics_charts(topics, &caption));
    }
    let mut written = Vec::new();
    for (name, svg) in charts {
        std::fs::write(dir.join(name), svg)?;
        written.push(name.to_owned());
    }
    Ok(written)
}

/// The topics section's charts: latency percentiles per size (one line per
/// transport and subscriber count), throughput per subscriber, and the
/// work-queue rows.
fn topics_charts(topics: &Topics, caption: &str) -> Vec<(&'static str, String)> {
    let subs = |n: usize| format!("{n} sub{}", if n == 1 { "" } else { "s" });
    let mut charts = Vec::new();
    let panels: Vec<Panel> = crate::topics::SIZES
        .iter()
        .map(|&bytes| Panel {
            title: format_bytes(bytes),
            series: topics
                .latency
                .iter()
                .filter(|row| row.bytes == bytes)
                .map(|row| Series {
                    name: format!("{} · {}", row.transport.name(), subs(row.subscribers)),
                    ..percentile_series(&row.latency)
                })
                .collect(),
        })
        .filter(|panel| !panel.series.is_empty())
        .collect();
    if !panels.is_empty() {
        charts.push((
            "topics-latency.svg",
            percentile_chart("Topics: one-way latency percentiles, 1 publisher to N subscribers", &panels, caption),
        ));
    }
    let bars: Vec<(String, f64, String)> = topics
        .throughput
        .iter()
        .map(|row| {
            let label = format!("{} · {} · {}", format_bytes(row.bytes), subs(row.subscribers), row.transport.name());
            (label, row.messages_per_second, format_rate(row.messages_per_second))
        })
        .collect();
    if !bars.is_empty() {
        charts.push((
            "topics-throughput.svg",
            bar_chart("Topics: messages each subscriber receives per second (log scale)", &bars, caption),
        ));
    }
    let bars: Vec<(String, f64, String)> = topics
        .queue
        .iter()
        .filter_map(|row| {
            let f = row.figures.as_ref()?;
            Some((row.kind.name().to_owned(), f.items_per_second, format_rate(f.items_per_second)))
        })
        .collect();
    if !bars.is_empty() {
        charts.push((
            "queue-throughput.svg",
            bar_chart("Work queue: 1 producer, 2 consumer processes (items/s, log scale)", &bars, caption),
        ));
    }
    charts
}

/// One line of a percentile chart: nanoseconds at p50, p90, p99, p99.9, max.
struct Series {
    name: String,
    values: Vec<f64>,
}

fn percentile_series(latency: &Latency) -> Series {
    Series {
        name: latency.name.clone(),
        values: latency.percentiles().iter().map(|(_, d)| d.as_secs_f64() * 1e9).collect(),
    }
}

struct Panel {
    title: String,
    series: Vec<Series>,
}

const PALETTE: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";

/// A base-10 logarithmic scale from `lo` to `hi` mapped onto `[a, b]`.
struct LogScale {
    lo: f64,
    hi: f64,
    a: f64,
    b: f64,
}

impl LogScale {
    /// Covers `values` with whole decades.
    fn covering(values: impl Iterator<Item = f64>, a: f64, b: f64) -> LogScale {
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            (lo, hi) = (1.0, 10.0);
        }
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf(hi.log10().ceil().max(lo.log10() + 1.0));
        LogScale { lo, hi, a, b }
    }

    fn at(&self, v: f64) -> f64 {
        let t = (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10());
        self.a + t * (self.b - self.a)
    }

    fn decades(&self) -> impl Iterator<Item = f64> + '_ {
        let (first, last) = (self.lo.log10().round() as i32, self.hi.log10().round() as i32);
        (first..=last).map(|e| 10f64.powi(e))
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn svg_open(width: f64, height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"16\" y=\"26\" {FONT} font-size=\"17\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    )
}

fn caption_line(svg: &mut String, y: f64, caption: &str) {
    let _ = writeln!(svg, "<text x=\"16\" y=\"{y}\" {FONT} font-size=\"11\" fill=\"#555\">{}</text>", escape(caption));
}

/// Panels side by side, each with percentiles on x and log latency on y, one
/// line per series; one legend below for all panels (series matched by name).
fn percentile_chart(title: &str, panels: &[Panel], caption: &str) -> String {
    let (panel_w, panel_h, left, top) = (330.0, 300.0, 70.0, 50.0);
    let mut names: Vec<&str> = Vec::new();
    for series in panels.iter().flat_map(|p| &p.series) {
        if !names.contains(&series.name.as_str()) {
            names.push(&series.name);
        }
    }
    let width = left + panels.len() as f64 * (panel_w + 70.0) + 20.0;
    let legend_top = top + panel_h + 50.0;
    let height = legend_top + 18.0 * names.len() as f64 + 40.0;
    let mut svg = svg_open(width.max(720.0), height, title);
    let labels = ["p50", "p90", "p99", "p99.9", "max"];
    for (i, panel) in panels.iter().enumerate() {
        let x0 = left + i as f64 * (panel_w + 70.0);
        let y = LogScale::covering(panel.series.iter().flat_map(|s| s.values.iter().copied()), top + panel_h, top);
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" {FONT} font-size=\"13\" text-anchor=\"middle\">{}</text>",
            x0 + panel_w / 2.0,
            top - 8.0,
            escape(&panel.title)
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{x0}\" y=\"{top}\" width=\"{panel_w}\" height=\"{panel_h}\" fill=\"none\" stroke=\"#999\"/>"
        );
        for decade in y.decades() {
            let py = y.at(decade);
            let _ = writeln!(
                svg,
                "<line x1=\"{x0}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#e5e5e5\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" {FONT} font-size=\"10\" text-anchor=\"end\">{}</text>",
                x0 + panel_w,
                x0 - 4.0,
                py + 3.0,
                format_nanos(decade)
            );
        }
        let step = panel_w / labels.len() as f64;
        let px = |k: usize| x0 + step * (k as f64 + 0.5);
        for (k, label) in labels.iter().enumerate() {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" {FONT} font-size=\"10\" text-anchor=\"middle\">{label}</text>",
                px(k),
                top + panel_h + 14.0
            );
        }
        for series in &panel.series {
            let color = PALETTE[names.iter().position(|n| *n == series.name).unwrap_or(0) % PALETTE.len()];
            let points: Vec<String> =
                series.values.iter().enumerate().map(|(k, v)| format!("{:.1},{:.1}", px(k), y.at(*v))).collect();
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                points.join(" ")
            );
            for point in &points {
                let (cx, cy) = point.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(svg, "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"2.5\" fill=\"{color}\"/>");
            }
        }
    }
    for (k, name) in names.iter().enumerate() {
        let ly = legend_top + 18.0 * k as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{left}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{}\"/>\n\
             <text x=\"{}\" y=\"{ly:.1}\" {FONT} font-size=\"12\">{}</text>",
            ly - 5.0,
            PALETTE[k % PALETTE.len()],
            left + 20.0,
            escape(name)
        );
    }
    caption_line(&mut svg, height - 14.0, caption);
    svg + "</svg>\n"
}

/// Horizontal bars on a log scale, one per (label, value, value text);
/// shmpool's bars are drawn in the first colour, the peers' in grey.
fn bar_chart(title: &str, bars: &[(String, f64, String)], caption: &str) -> String {
    let (label_w, bar_w, top, bar_h) = (430.0, 420.0, 50.0, 20.0);
    let height = top + bars.len() as f64 * (bar_h + 6.0) + 60.0;
    let width = label_w + bar_w + 110.0;
    let mut svg = svg_open(width, height, title);
    let x = LogScale::covering(bars.iter().map(|b| b.1), label_w, label_w + bar_w);
    let bottom = top + bars.len() as f64 * (bar_h + 6.0);
    for decade in x.decades() {
        let px = x.at(decade);
        let _ = writeln!(
            svg,
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{top}\" y2=\"{bottom}\" stroke=\"#e5e5e5\"/>\n\
             <text x=\"{px:.1}\" y=\"{}\" {FONT} font-size=\"10\" text-anchor=\"middle\">{}</text>",
            bottom + 14.0,
            format_rate(decade)
        );
    }
    for (k, (label, value, text)) in bars.iter().enumerate() {
        let y = top + k as f64 * (bar_h + 6.0);
        let color = if label.contains("shmpool") { PALETTE[0] } else { "#9a9a9a" };
        let end = x.at(*value);
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" {FONT} font-size=\"11\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{color}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\">{}</text>",
            label_w - 6.0,
            y + 14.0,
            escape(label),
            (end - label_w).max(1.0),
            end + 4.0,
            y + 14.0,
            escape(text)
        );
    }
    caption_line(&mut svg, height - 14.0, caption);
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::common::Delivery;

    fn latency(name: &str, p50_ns: u64) -> Latency {
        let mut histogram = crate::common::histogram();
        for k in 1..=1000 {
            histogram.record(p50_ns * k / 500).expect("in range");
        }
        Latency::from_histogram(name, &histogram)
    }

    #[test]
    fn log_scale_maps_decades_to_the_ends() {
        let scale = LogScale::covering([150.0, 42_000.0].into_iter(), 0.0, 300.0);
        assert_eq!((scale.lo, scale.hi), (100.0, 100_000.0));
        assert!((scale.at(100.0) - 0.0).abs() < 1e-9);
        assert!((scale.at(100_000.0) - 300.0).abs() < 1e-9);
        assert!((scale.at(10_000.0) - 200.0).abs() < 1e-9);
        assert_eq!(scale.decades().count(), 4);
    }

    #[test]
    fn charts_name_every_series_and_the_machine() {
        let dir = std::env::temp_dir().join(format!("shmpool-bench-plot-test-{}", std::process::id()));
        let machine = Machine { cpu: "Test CPU <x>".to_owned(), cores: 2, kernel: "6.1".to_owned() };
        let data = Data {
            latency: vec![latency("shmpool", 1_000), latency("pipe & co", 10_000)],
            throughput: vec![Throughput {
                name: "shmpool, map".to_owned(),
                delivery: Delivery::Batched,
                workers: 1,
                tasks: 1_000,
                elapsed: Duration::from_millis(1),
            }],
            oneway: None,
            topics: None,
        };
        let written = write_all(&dir, &machine, Mode::Quick, &data).expect("charts are written");
        assert_eq!(written, ["latency.svg", "throughput.svg"]);
        let svg = std::fs::read_to_string(dir.join("latency.svg")).expect("readable");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("pipe &amp; co") && svg.contains("Test CPU &lt;x&gt;, 2 cores, Linux 6.1"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let bars = std::fs::read_to_string(dir.join("throughput.svg")).expect("readable");
        assert!(bars.contains("1.00 M/s"), "{bars}");
        std::fs::remove_dir_all(&dir).expect("removed");
    }
}
