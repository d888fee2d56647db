//! The bench chart: end-to-end goodput and CPU per GiB for each mode, as SVG.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::BenchReport;

type Axes<'a> = ChartContext<
    'a,
    SVGBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Axes for `n` labelled bar groups from 0 to `ymax`, no grid.
fn bar_axes<'a>(
    area: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    caption: &str,
    ydesc: &str,
    n: usize,
    ymax: f64,
) -> anyhow::Result<Axes<'a>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .context("chart axes")?;
    chart.configure_mesh().disable_mesh().x_labels(0).y_desc(ydesc).draw().context("chart axes")?;
    Ok(chart)
}

pub fn draw(r: &BenchReport, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).context("drawing the chart")?;
    let (left, right) = root.split_horizontally(520);
    let n = r.results.len();

    let gmax = r.results.iter().map(|m| m.e2e_goodput_bps.max / 1e9).fold(0.0, f64::max).max(0.1) * 1.15;
    let mut g = bar_axes(
        &left,
        "End-to-end verified goodput (Gbit/s, command start to verified exit; median, whiskers min-max)",
        "Gbit/s",
        n,
        gmax,
    )?;
    for (i, m) in r.results.iter().enumerate() {
        let x = i as f64;
        g.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.2, 0.0), (x + 0.8, m.e2e_goodput_bps.median / 1e9)],
            BLUE.mix(0.6).filled(),
        )))
        .context("goodput bar")?;
        g.draw_series(std::iter::once(PathElement::new(
            vec![(x + 0.5, m.e2e_goodput_bps.min / 1e9), (x + 0.5, m.e2e_goodput_bps.max / 1e9)],
            BLACK.stroke_width(2),
        )))
        .context("goodput whisker")?;
        let label = format!("{} {:.2}", m.mode, m.e2e_goodput_bps.median / 1e9);
        let style = ("sans-serif", 11).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
        g.draw_series(std::iter::once(Text::new(label, (x + 0.5, m.e2e_goodput_bps.max / 1e9 + gmax * 0.01), style)))
            .context("goodput label")?;
    }

    let cmax = r
        .results
        .iter()
        .map(|m| m.sender_cpu_s_per_gib.max(m.receiver_cpu_s_per_gib).max(m.system_cpu_s_per_gib))
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.15;
    let mut c =
        bar_axes(&right, "CPU s/GiB: sender (red), receiver (green), whole system (black)", "CPU s/GiB", n, cmax)?;
    let series = [(0usize, RED), (1, GREEN), (2, BLACK)];
    for (i, m) in r.results.iter().enumerate() {
        let vals = [m.sender_cpu_s_per_gib, m.receiver_cpu_s_per_gib, m.system_cpu_s_per_gib];
        for (k, color) in series {
            let x0 = i as f64 + 0.15 + k as f64 * 0.24;
            c.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + 0.22, vals[k])], color.mix(0.6).filled())))
                .context("cpu bar")?;
        }
        let top = vals.iter().copied().fold(0.0, f64::max);
        let style = ("sans-serif", 11).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
        c.draw_series(std::iter::once(Text::new(m.mode.clone(), (i as f64 + 0.5, top + cmax * 0.01), style)))
            .context("cpu label")?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
