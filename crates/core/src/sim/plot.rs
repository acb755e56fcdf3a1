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

    fn axes(&self, svg: &mut String, label: &str) {
        let _ = write!(
            svg,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            self.x, self.y, self.w, self.h
        );
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="12">{} (max {:.0})</text>"##,
            self.x,
            self.y - 6.0,
            escape(label),
            self.v_max
        );
    }
}

/// Replicas and queue depth over time, one line per policy.
pub fn timeline_svg(title: &str, series: &[(String, Vec<Sample>)]) -> String {
    let (w, h) = (960.0, 560.0);
    let t_max = series
        .iter()
        .flat_map(|(_, s)| s.last().map(|x| x.t))
        .fold(1.0, f64::max);
    let r_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|x| x.replicas as f64))
        .fold(1.0, f64::max);
    let q_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|x| x.pending as f64))
        .fold(1.0, f64::max);
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
        y: 300.0,
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
    top.axes(&mut svg, "replicas");
    bottom.axes(&mut svg, "queue depth (jobs waiting)");
    for (i, (name, samples)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
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
    let _ = write!(
        svg,
        r##"<text x="60" y="530" font-size="12">time (s), 0 to {t_max:.0}</text></svg>"##
    );
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
    let x_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.08;
    let y_max = points.iter().map(|p| p.2).fold(1.0, f64::max) * 1.08;
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
    panel.axes(&mut svg, y_label);
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
    let _ = write!(
        svg,
        r##"<text x="80" y="520" font-size="12">{} (0 to {x_max:.0})</text></svg>"##,
        escape(x_label)
    );
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
        let svg = timeline_svg("a <b>", &[("p<1>".into(), s)]);
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
}
