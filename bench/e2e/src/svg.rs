//! The latency SVG: grouped bars on a log scale, drawn by hand (no plotting
//! crate for one chart).
use std::fmt::Write as _;

use crate::{
    cli::RR4_CONNECTIONS,
    report::{fmt_num, Results},
};

/// The percentiles drawn, in `Latency::percentiles` order (max is left out:
/// one outlier would squash the scale).
const DRAWN: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

impl Results {
    /// Grouped bars on a log scale: one panel per workload, one group per
    /// percentile, one bar per variant.
    pub fn svg(&self) -> String {
        const COLORS: [&str; 3] = ["#4477aa", "#ee6677", "#228833"];
        let variants = ["direct", "nftables", "dispatchd"];
        // A workload no variant measured (a --workloads subset, older
        // results) gets no panel.
        let panels: Vec<(&str, String)> = [
            (
                "connections",
                "new connections (connect, 64 B echo, close)".to_owned(),
            ),
            ("rr", "requests on persistent connections (64 B)".to_owned()),
            (
                "rr4",
                format!("requests on {RR4_CONNECTIONS} persistent connections (64 B)"),
            ),
        ]
        .into_iter()
        .filter(|(key, _)| variants.iter().any(|v| self.latency_of(key, v).is_some()))
        .collect();
        let all: Vec<f64> = self
            .latency_us
            .values()
            .flat_map(|l| {
                l.percentiles()
                    .into_iter()
                    .take(DRAWN.len())
                    .map(|(_, v)| v)
            })
            .filter(|&x| x > 0.0)
            .collect();
        let lo = all.iter().copied().fold(f64::MAX, f64::min).max(1.0);
        let hi = all.iter().copied().fold(1.0, f64::max);
        let (lo_exp, hi_exp) = (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        let (w, ph, top, left) = (760.0, 260.0, 50.0, 70.0);
        let pw = w - left - 20.0;
        let height = top + panels.len() as f64 * (ph + 60.0) + 30.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">"
        );
        let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">Client-side latency (µs, log scale) — lower is better</text>",
            w / 2.0
        );
        for (i, v) in variants.iter().enumerate() {
            let x = left + i as f64 * 130.0;
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"32\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"42\">{v}</text>",
                COLORS[i],
                x + 16.0
            );
        }
        for (pi, (key, title)) in panels.iter().enumerate() {
            let y0 = top + 20.0 + pi as f64 * (ph + 60.0);
            let ybase = y0 + ph;
            let ypos = |v: f64| {
                let f = (v.max(10f64.powf(lo_exp)).log10() - lo_exp) / (hi_exp - lo_exp);
                ybase - f * ph
            };
            let _ = writeln!(
                s,
                "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
                y0 - 6.0
            );
            let mut e = lo_exp;
            while e <= hi_exp {
                let v = 10f64.powf(e);
                let y = ypos(v);
                let _ = writeln!(
                    s,
                    "<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                    left + pw,
                    left - 6.0,
                    y + 4.0,
                    fmt_num(v)
                );
                e += 1.0;
            }
            let group_w = pw / DRAWN.len() as f64;
            let bar_w = group_w * 0.8 / variants.len() as f64;
            for (p, label) in DRAWN.iter().enumerate() {
                let gx = left + p as f64 * group_w + group_w * 0.1;
                for (vi, v) in variants.iter().enumerate() {
                    let Some(l) = self.latency_of(key, v) else {
                        continue;
                    };
                    let (name, value) = l.percentiles()[p];
                    let x = gx + vi as f64 * bar_w;
                    let y = ypos(value);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{v} {} {} µs</title></rect>",
                        bar_w - 2.0,
                        ybase - y,
                        COLORS[vi],
                        name,
                        value
                    );
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                        x + (bar_w - 2.0) / 2.0,
                        y - 3.0,
                        fmt_num(value)
                    );
                }
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    gx + group_w * 0.4,
                    ybase + 16.0,
                    label
                );
            }
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" y1=\"{ybase}\" x2=\"{}\" y2=\"{ybase}\" stroke=\"black\"/>",
                left + pw
            );
        }
        s.push_str("</svg>\n");
        s
    }
}
