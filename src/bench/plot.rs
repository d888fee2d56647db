//! The bench chart: end-to-end goodput and CPU per GiB for each mode, and
//! the iperf3 reference beside them, as SVG; modes named on the x axis.

use std::path::Path;

use anyhow::Context;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::BenchReport;

type Axes<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<Groups, RangedCoordf64>>;

/// An x axis of named bar groups: group i spans i..i+1, and its name is the
/// label under its middle.
#[derive(Clone)]
struct Groups {
    names: Vec<String>,
}

impl Ranged for Groups {
    type ValueType = f64;
    type FormatOption = NoDefaultFormatting;

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.names.len().max(1) as f64
    }

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range().end;
        limit.0 + (value / span * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        (0..self.names.len()).map(|i| i as f64 + 0.5).collect()
    }
}

impl ValueFormatter<f64> for Groups {
    fn format(value: &f64) -> String {
        format!("{value}")
    }

    fn format_ext(&self, value: &f64) -> String {
        self.names.get(value.floor().max(0.0) as usize).cloned().unwrap_or_default()
    }
}

/// Axes for labelled bar groups from 0 to `ymax`, no grid: group i spans
/// i..i+1 on x and is named under its middle.
fn bar_axes<'a>(
    area: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    caption: &str,
    ydesc: &str,
    names: &[String],
    ymax: f64,
) -> anyhow::Result<Axes<'a>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(55)
        .build_cartesian_2d(Groups { names: names.to_vec() }, 0f64..ymax)
        .context("chart axes")?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(names.len())
        .x_desc("mode")
        .y_desc(ydesc)
        .draw()
        .context("chart axes")?;
    Ok(chart)
}

pub fn draw(r: &BenchReport, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).context("drawing the chart")?;
    let title = format!(
        "xdpblast bench: {} file, {} run(s) per mode, MTU {}, {} CPUs, kernel {}",
        crate::report::human_bytes(r.file_bytes),
        r.runs,
        r.host.mtu,
        r.host.cpus,
        r.host.kernel
    );
    let root = root.titled(&title, ("sans-serif", 18)).context("chart title")?;
    let (left, right) = root.split_horizontally(600);
    // The iperf3 reference (no file, nothing verified) stands last, in grey.
    let rows: Vec<(&super::ModeResult, RGBColor)> =
        r.results.iter().map(|m| (m, BLUE)).chain(r.reference.iter().map(|m| (m, RGBColor(128, 128, 128)))).collect();
    let names: Vec<String> = rows.iter().map(|(m, _)| m.mode.clone()).collect();

    let gmax = rows.iter().map(|(m, _)| m.e2e_goodput_bps.max / 1e9).fold(0.0, f64::max).max(0.1) * 1.15;
    let mut g = bar_axes(
        &left,
        "Verified goodput, end to end (median; whiskers min-max; grey: iperf3 -Z, no file)",
        "Gbit/s, command start to verified exit",
        &names,
        gmax,
    )?;
    for (i, (m, color)) in rows.iter().enumerate() {
        let x = i as f64;
        g.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.2, 0.0), (x + 0.8, m.e2e_goodput_bps.median / 1e9)],
            color.mix(0.6).filled(),
        )))
        .context("goodput bar")?;
        g.draw_series(std::iter::once(PathElement::new(
            vec![(x + 0.5, m.e2e_goodput_bps.min / 1e9), (x + 0.5, m.e2e_goodput_bps.max / 1e9)],
            BLACK.stroke_width(2),
        )))
        .context("goodput whisker")?;
        let label = format!("{:.2}", m.e2e_goodput_bps.median / 1e9);
        let style = ("sans-serif", 11).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
        g.draw_series(std::iter::once(Text::new(label, (x + 0.5, m.e2e_goodput_bps.max / 1e9 + gmax * 0.01), style)))
            .context("goodput label")?;
    }

    let cmax = rows
        .iter()
        .map(|(m, _)| m.sender_cpu_s_per_gib.max(m.receiver_cpu_s_per_gib).max(m.system_cpu_s_per_gib))
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.15;
    let mut c = bar_axes(
        &right,
        "CPU per GiB: sender (red), receiver (green), whole system (black)",
        "CPU seconds per GiB",
        &names,
        cmax,
    )?;
    let series = [(0usize, RED), (1, GREEN), (2, BLACK)];
    for (i, (m, _)) in rows.iter().enumerate() {
        let vals = [m.sender_cpu_s_per_gib, m.receiver_cpu_s_per_gib, m.system_cpu_s_per_gib];
        for (k, color) in series {
            let x0 = i as f64 + 0.15 + k as f64 * 0.24;
            c.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + 0.22, vals[k])], color.mix(0.6).filled())))
                .context("cpu bar")?;
        }
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
