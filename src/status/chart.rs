//! The status page's chart: an inline SVG bar chart of the counts of the last
//! [`CHART_WINDOWS`] windows, placed by their start (a window missing from the history is a
//! gap), and the open window's count so far at the right.

use std::fmt::Write;

use super::history::Reported;
use super::html::{clock_label, grouped, long_time, View};
use crate::clock::rfc3339_secs;

/// Windows the chart spans, before the open one.
pub const CHART_WINDOWS: u64 = 60;

/// Chart geometry, in SVG user units.
const CHART_W: f64 = 1000.0;
const CHART_H: f64 = 280.0;
const PAD_LEFT: f64 = 56.0;
const PAD_RIGHT: f64 = 34.0;
const PAD_TOP: f64 = 14.0;
const PAD_BOTTOM: f64 = 40.0;
const PLOT_W: f64 = CHART_W - PAD_LEFT - PAD_RIGHT;
const PLOT_H: f64 = CHART_H - PAD_TOP - PAD_BOTTOM;
/// The y of the axis (a count of 0).
const BASE: f64 = PAD_TOP + PLOT_H;
/// One slot per window of the span, and one for the open window.
const SLOT_W: f64 = PLOT_W / (CHART_WINDOWS + 1) as f64;
const BAR_W: f64 = SLOT_W * 0.72;
// A bar at least one unit wide stays visible.
const _: () = assert!(BAR_W >= 1.0);

/// Where counts and window starts land on the chart.
struct Scale {
    /// Start of the window in the leftmost slot.
    first: u64,
    /// `--interval`, in seconds.
    interval: u64,
    /// The count at the top of the plot: a multiple of `step` at least the highest bar.
    top: u64,
    /// Between two grid lines: 1, 2 or 5 times a power of ten.
    step: u64,
}

impl Scale {
    fn new(first: u64, interval: u64, max: u64) -> Scale {
        let step = nice_step(max.div_ceil(4).max(1));
        Scale {
            first,
            interval,
            top: max.div_ceil(step).max(1).saturating_mul(step),
            step,
        }
    }

    /// A bar's height for `count`, at most the plot's.
    fn height(&self, count: u64) -> f64 {
        (count as f64 / self.top as f64 * PLOT_H).min(PLOT_H)
    }

    /// The left edge of the bar of the window starting at `start`.
    fn x_of(&self, start: u64) -> f64 {
        let slot = (start.saturating_sub(self.first) / self.interval) as f64;
        PAD_LEFT + slot * SLOT_W + (SLOT_W - BAR_W) / 2.0
    }
}

/// The chart's section.
pub fn render(v: &View<'_>) -> String {
    let interval = v.info.interval();
    let first = v
        .open_start
        .saturating_sub(CHART_WINDOWS.saturating_mul(interval));
    let shown: Vec<&Reported> = v
        .history
        .iter()
        .filter(|r| r.window_start >= first && r.window_start < v.open_start)
        .collect();
    let max = shown
        .iter()
        .map(|r| r.unique_count)
        .chain([v.counts.window_unique_ids])
        .max()
        .unwrap_or(0);
    let scale = Scale::new(first, interval, max);
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<section class=\"panel\"><h2>Distinct ids per window \
         <span class=\"legend\"><span class=\"sw\" style=\"background:var(--bar)\"></span>\
         reported<span class=\"sw\" style=\"background:var(--open)\"></span>open, so far\
         </span></h2>\
         <svg id=\"chart\" viewBox=\"0 0 {CHART_W} {CHART_H}\" role=\"img\" \
         aria-label=\"Distinct ids per window, last {CHART_WINDOWS} windows\" \
         data-windows=\"{}\" data-top=\"{}\" data-plot-height=\"{PLOT_H}\">",
        shown.len(),
        scale.top,
    );
    grid(&mut out, &scale);
    time_axis(&mut out, &scale);
    if shown.is_empty() {
        let _ = write!(
            out,
            "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">\
             no window reported yet</text>",
            PAD_LEFT + PLOT_W / 2.0,
            PAD_TOP + PLOT_H / 2.0
        );
    }
    for r in &shown {
        window_bar(&mut out, &scale, r);
    }
    open_bar(&mut out, &scale, v);
    out.push_str("</svg></section>");
    out
}

/// Horizontal grid lines every `step`, each labelled with its count.
fn grid(out: &mut String, scale: &Scale) {
    let mut tick = 0u64;
    loop {
        let y = BASE - scale.height(tick);
        let class = if tick == 0 { "axis" } else { "grid" };
        let _ = write!(
            out,
            "<line class=\"{class}\" x1=\"{PAD_LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            CHART_W - PAD_RIGHT,
            PAD_LEFT - 6.0,
            y + 4.0,
            compact(tick)
        );
        if tick >= scale.top {
            break;
        }
        tick = tick.saturating_add(scale.step);
    }
}

/// Time labels every tenth slot, the last one at the open window, and the axis title.
fn time_axis(out: &mut String, scale: &Scale) {
    for slot in (0..=CHART_WINDOWS).step_by(10) {
        let start = scale.first.saturating_add(slot * scale.interval);
        let x = scale.x_of(start) + BAR_W / 2.0;
        let _ = write!(
            out,
            "<line class=\"axis\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{BASE:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            BASE + 4.0,
            BASE + 17.0,
            clock_label(start, scale.interval)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">window start (UTC), \
         {} s windows</text>",
        PAD_LEFT + PLOT_W / 2.0,
        CHART_H - 6.0,
        scale.interval,
    );
}

/// One reported window's bar; a window of 0 ids is still a visible sliver on the axis.
fn window_bar(out: &mut String, scale: &Scale, r: &Reported) {
    let h = scale.height(r.unique_count).max(2.0);
    let _ = write!(
        out,
        "<rect class=\"win\" x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\" \
         data-start=\"{start}\" data-count=\"{count}\"><title>{label}: {grouped} distinct \
         ids</title></rect>",
        scale.x_of(r.window_start),
        BASE - h,
        BAR_W,
        start = rfc3339_secs(r.window_start),
        count = r.unique_count,
        label = long_time(r.window_start),
        grouped = grouped(r.unique_count),
    );
}

/// The open window's bar: its count so far.
fn open_bar(out: &mut String, scale: &Scale, v: &View<'_>) {
    let count = v.counts.window_unique_ids;
    let h = scale.height(count).max(2.0);
    let _ = write!(
        out,
        "<rect class=\"open\" x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\" \
         data-start=\"{}\" data-count=\"{count}\"><title>open window since {}: {} distinct \
         ids so far</title></rect>",
        scale.x_of(v.open_start),
        BASE - h,
        BAR_W,
        rfc3339_secs(v.open_start),
        long_time(v.open_start),
        grouped(count),
    );
}

/// An axis label: `950`, `1.5k`, `12k`, `3.2M`, `7G`.
fn compact(n: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (1_000_000_000_000_000, "P"),
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ];
    for (unit, suffix) in UNITS {
        if n >= unit {
            let whole = n / unit;
            let tenth = n % unit / (unit / 10);
            return if whole < 10 && tenth > 0 {
                format!("{whole}.{tenth}{suffix}")
            } else {
                format!("{whole}{suffix}")
            };
        }
    }
    n.to_string()
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `x`.
fn nice_step(x: u64) -> u64 {
    let mut power = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = power.saturating_mul(m);
            if step >= x || step == u64::MAX {
                return step.max(1);
            }
        }
        power = power.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_and_steps() {
        assert_eq!(compact(950), "950");
        assert_eq!(compact(1500), "1.5k");
        assert_eq!(compact(12_000), "12k");
        assert_eq!(compact(3_200_000), "3.2M");
        assert_eq!(nice_step(1), 1);
        assert_eq!(nice_step(3), 5);
        assert_eq!(nice_step(11), 20);
        assert_eq!(nice_step(u64::MAX), u64::MAX);
    }

    #[test]
    fn the_scale_tops_the_highest_bar_and_places_windows_by_start() {
        let scale = Scale::new(600, 60, 1234);
        // Four or so grid steps of a round size above the highest count.
        assert_eq!((scale.step, scale.top), (500, 1500));
        assert_eq!(scale.height(1500), PLOT_H);
        assert_eq!(scale.height(u64::MAX), PLOT_H, "never above the plot");
        assert_eq!(scale.height(0), 0.0);
        // One slot per interval; a missing window leaves its slot empty.
        let slot = scale.x_of(660) - scale.x_of(600);
        assert!((slot - SLOT_W).abs() < 1e-9);
        assert!((scale.x_of(780) - scale.x_of(600) - 3.0 * SLOT_W).abs() < 1e-9);
        // Nothing to show still has a scale.
        assert_eq!(Scale::new(0, 1, 0).top, 1);
    }
}
