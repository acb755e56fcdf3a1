//! Small, dependency-free SVG charts for simulation results.

use std::fmt::Write;

use super::Sample;

const PALETTE: &[&str] = &[
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Keeps at most `max` points, taking the largest value of each bucket so peaks survive.
fn downsample(samples: &[Sample], max: usize, value: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    let step = samples.len().div_ceil(max.max(1)).max(1);
    samples
        .chunks(step)
        .map(|c| {
            let peak = c.iter().map(&value).fold(0.0, f64::max);
            (c[0].t, peak)
        })
        .collect()
}

/// Tick values for 0..max in round whole steps (1, 2 or 5 times a power of ten), about
/// `n` of them, ending at the first tick at or above `max`.
fn nice_ticks(max: f64, n: usize) -> Vec<f64> {
    let top = if max > 0.0 { max } else { 1.0 };
    let raw = top / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
        .max(1.0);
    let mut out = Vec::new();
    let mut v = 0.0;
    loop {
        out.push(v);
        if v >= top - 1e-9 {
            return out;
        }
        v += step;
    }
}

/// A tick value as text: whole numbers without decimals.
fn tick_text(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Seconds shown in a unit that suits the span: (divisor, unit name).
fn time_unit(span_s: f64) -> (f64, &'static str) {
    if span_s <= 600.0 {
        (1.0, "s")
    } else if span_s <= 3.0 * 3600.0 {
        (60.0, "min")
    } else {
        (3600.0, "h")
    }
}

struct Panel {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    t_max: f64,
    v_max: f64,
}

impl Panel {
    fn point(&self, t: f64, v: f64) -> (f64, f64) {
        (
            self.x + t / self.t_max.max(1e-9) * self.w,
            self.y + self.h - v / self.v_max.max(1e-9) * self.h,
        )
    }

    /// The frame, the value ticks on the left with `label`, and the x ticks below with
    /// `x_label`; x values are divided by `x_div` for their labels.
    fn axes(&self, svg: &mut String, label: &str, x_label: &str, x_div: f64) {
        let _ = write!(
            svg,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            self.x, self.y, self.w, self.h
        );
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="12">{}</text>"##,
            self.x,
            self.y - 6.0,
            escape(label)
        );
        for v in nice_ticks(self.v_max, 4) {
            let (_, y) = self.point(0.0, v);
            let _ = write!(
                svg,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#999"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                self.x - 4.0,
                self.x,
                self.x - 6.0,
                y + 4.0,
                tick_text(v)
            );
        }
        for v in nice_ticks(self.t_max / x_div, 6) {
            let (x, _) = self.point(v * x_div, 0.0);
            if x > self.x + self.w + 0.5 {
                continue;
            }
            let bottom = self.y + self.h;
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                bottom + 4.0,
                bottom + 16.0,
                tick_text(v)
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"##,
            self.x + self.w,
            self.y + self.h + 30.0,
            escape(x_label)
        );
    }
}

/// Replicas and queue depth over the trace's `span` seconds (what the report's table
/// covers), one line per policy, each panel on its own scale; a point is the peak of the
/// samples it stands for, so short bursts show.
pub fn timeline_svg(title: &str, series: &[(String, Vec<Sample>)], span: f64) -> String {
    let (w, h) = (960.0, 580.0);
    let t_max = span.max(1.0);
    let in_span = |s: &Sample| s.t <= t_max;
    let r_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().filter(|x| in_span(x)).map(|x| x.replicas as f64))
        .fold(1.0, f64::max);
    let q_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().filter(|x| in_span(x)).map(|x| x.pending as f64))
        .fold(1.0, f64::max);
    let r_max = *nice_ticks(r_max, 4).last().expect("ticks");
    let q_max = *nice_ticks(q_max, 4).last().expect("ticks");
    let (div, unit) = time_unit(t_max);
    let top = Panel {
        x: 60.0,
        y: 50.0,
        w: 760.0,
        h: 200.0,
        t_max,
        v_max: r_max,
    };
    let bottom = Panel {
        x: 60.0,
        y: 320.0,
        w: 760.0,
        h: 200.0,
        t_max,
        v_max: q_max,
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="60" y="24" font-size="16">{}</text>"##,
        escape(title)
    );
    let x_label = format!("time ({unit})");
    top.axes(&mut svg, "replicas", &x_label, div);
    bottom.axes(&mut svg, "queue depth (jobs waiting)", &x_label, div);
    for (i, (name, samples)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let end = samples.partition_point(|s| s.t <= t_max);
        let samples = &samples[..end];
        for (panel, pick) in [(&top, 0), (&bottom, 1)] {
            let points = downsample(samples, 1500, |s| {
                if pick == 0 {
                    s.replicas as f64
                } else {
                    s.pending as f64
                }
            });
            let mut d = String::new();
            let mut prev: Option<(f64, f64)> = None;
            for (t, v) in points {
                let (x, y) = panel.point(t, v);
                match prev {
                    None => {
                        let _ = write!(d, "M{x:.1},{y:.1}");
                    }
                    Some((_, py)) => {
                        let _ = write!(d, "H{x:.1}V{y:.1}");
                        let _ = py;
                    }
                }
                prev = Some((x, y));
            }
            let _ = write!(
                svg,
                r##"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.2" opacity="0.85"/>"##
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="836" y="{}" width="12" height="12" fill="{color}"/><text x="854" y="{}" font-size="12">{}</text>"##,
            56.0 + i as f64 * 20.0,
            66.0 + i as f64 * 20.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A scatter of (x, y) points with labels, e.g. GPU-seconds against cold-start waits.
pub fn scatter_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(String, f64, f64, bool)],
) -> String {
    let (w, h) = (960.0, 560.0);
    let x_max = *nice_ticks(points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.05, 6)
        .last()
        .expect("ticks");
    let y_max = *nice_ticks(points.iter().map(|p| p.2).fold(1.0, f64::max) * 1.05, 4)
        .last()
        .expect("ticks");
    let panel = Panel {
        x: 80.0,
        y: 50.0,
        w: 820.0,
        h: 440.0,
        t_max: x_max,
        v_max: y_max,
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="80" y="24" font-size="16">{}</text>"##,
        escape(title)
    );
    panel.axes(&mut svg, y_label, x_label, 1.0);
    let mut frontier: Vec<&(String, f64, f64, bool)> = points.iter().filter(|p| p.3).collect();
    frontier.sort_by(|a, b| a.1.total_cmp(&b.1));
    if frontier.len() > 1 {
        let mut d = String::new();
        for (i, p) in frontier.iter().enumerate() {
            let (x, y) = panel.point(p.1, p.2);
            let _ = write!(d, "{}{x:.1},{y:.1}", if i == 0 { "M" } else { "L" });
        }
        let _ = write!(
            svg,
            r##"<path d="{d}" fill="none" stroke="#1b9e77" stroke-width="1.5"/>"##
        );
    }
    for (label, xv, yv, on_frontier) in points {
        let (x, y) = panel.point(*xv, *yv);
        let color = if *on_frontier { "#1b9e77" } else { "#d95f02" };
        let _ = write!(
            svg,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            x + 6.0,
            y - 4.0,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_is_well_formed_and_escapes_names() {
        let s = vec![
            Sample {
                t: 0.0,
                replicas: 0,
                pending: 0,
            },
            Sample {
                t: 10.0,
                replicas: 2,
                pending: 5,
            },
        ];
        let svg = timeline_svg("a <b>", &[("p<1>".into(), s)], 10.0);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("p&lt;1&gt;") && !svg.contains("<b>"));
        let svg = scatter_svg(
            "f",
            "x",
            "y",
            &[("a".into(), 1.0, 2.0, true), ("b".into(), 2.0, 1.0, false)],
        );
        assert!(svg.contains("<circle"));
    }

    #[test]
    fn axes_have_round_ticks_with_units_and_the_plot_ends_at_the_span() {
        assert_eq!(nice_ticks(7.0, 4), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(nice_ticks(0.0, 4), vec![0.0, 1.0]);
        assert_eq!(nice_ticks(40.0, 4), vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        let s: Vec<Sample> = (0..=120)
            .map(|i| Sample {
                t: i as f64 * 30.0,
                replicas: (i % 3) as u32,
                // One short burst; and a value after the span, which is not drawn.
                pending: if i == 50 {
                    7
                } else if i == 120 {
                    500
                } else {
                    0
                },
            })
            .collect();
        let svg = timeline_svg("t", &[("p".into(), s)], 3000.0);
        assert!(svg.contains(">time (min)<"), "{svg}");
        assert!(svg.contains(">50<"), "a tick at 50 min: {svg}");
        // The queue scale is set by the burst inside the span (ticks up to 8), not by 500.
        assert!(svg.contains(">8<") && !svg.contains(">500<"), "{svg}");
    }
}
