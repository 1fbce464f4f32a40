//! `status --plot lag.svg`: how far behind CockroachDB the target was at each RESOLVED, drawn
//! from `_crdb_delta_resolved` (each RESOLVED's wall time and when its record was written). The
//! drawing is pure ([`lag_svg`]); reading the record is the edge ([`lag_points`]).

use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use chrono::{DateTime, Utc};

use crate::delta::{self, Target};
use crate::storage::Location;

/// One RESOLVED: its wall time and the seconds from it to the record of its commit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagPoint {
    pub resolved_at: DateTime<Utc>,
    pub lag_seconds: f64,
}

/// Every RESOLVED recorded below `target`, oldest first (one point per RESOLVED: its tables
/// are recorded together). Empty when nothing was recorded yet.
pub async fn lag_points(target: &Location) -> Result<Vec<LagPoint>, delta::DeltaError> {
    let log =
        Target::new(target, crate::engine::RESOLVED_LOG).map_err(|e| delta::DeltaError::Table {
            table: crate::engine::RESOLVED_LOG.into(),
            message: e.to_string(),
        })?;
    let Some(table) = log.open().await? else {
        return Ok(Vec::new());
    };
    let of = delta::DeltaError::of(crate::engine::RESOLVED_LOG);
    let mut points: Vec<LagPoint> = Vec::new();
    for f in delta::files(&table, "resolved").await.map_err(of)? {
        for b in delta::read_live_file(&table, &f, 8192).await? {
            let (Some(at), Some(rec)) = (
                b.column_by_name("resolved_at"),
                b.column_by_name("recorded_at"),
            ) else {
                continue;
            };
            let (at, rec) = (
                at.as_primitive::<TimestampMicrosecondType>(),
                rec.as_primitive::<TimestampMicrosecondType>(),
            );
            for i in 0..b.num_rows() {
                let (Some(a), Some(r)) = (
                    DateTime::from_timestamp_micros(at.value(i)),
                    DateTime::from_timestamp_micros(rec.value(i)),
                ) else {
                    continue;
                };
                points.push(LagPoint {
                    resolved_at: a,
                    lag_seconds: (r - a).num_milliseconds() as f64 / 1000.0,
                });
            }
        }
    }
    points.sort_by_key(|p| p.resolved_at);
    points.dedup_by(|a, b| a.resolved_at == b.resolved_at);
    Ok(points)
}

/// An SVG line chart of the lag over time: x the RESOLVED's wall time, y the seconds until its
/// record, with the first and last times, the largest lag and the point count as labels.
pub fn lag_svg(points: &[LagPoint]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 300.0;
    const PAD: f64 = 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{PAD}" y="20">crdb-delta: lag behind CockroachDB at each RESOLVED ({} RESOLVEDs)</text>"#,
        points.len()
    );
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        let _ = writeln!(
            s,
            r#"<text x="{PAD}" y="{}">nothing recorded yet</text>"#,
            H / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    };
    let t0 = first.resolved_at.timestamp_millis() as f64;
    let span = (last.resolved_at.timestamp_millis() as f64 - t0).max(1.0);
    let max = points
        .iter()
        .map(|p| p.lag_seconds)
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let x = |p: &LagPoint| {
        PAD + (p.resolved_at.timestamp_millis() as f64 - t0) / span * (W - 2.0 * PAD)
    };
    let y = |v: f64| H - PAD - v.max(0.0) / max * (H - 2.0 * PAD);
    let _ = writeln!(
        s,
        r#"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="black"/>"#,
        b = H - PAD,
        r = W - PAD
    );
    let coords: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p), y(p.lag_seconds)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{}"/>"#,
        coords.join(" ")
    );
    let label = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let _ = writeln!(
        s,
        r#"<text x="{PAD}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>"#,
        H - PAD + 18.0,
        label(&first.resolved_at),
        W - PAD,
        H - PAD + 18.0,
        label(&last.resolved_at)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{max:.1} s</text><text x="{}" y="{}" text-anchor="end">0 s</text>"#,
        PAD - 4.0,
        PAD + 4.0,
        PAD - 4.0,
        H - PAD
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_one_vertex_per_resolved_scaled_to_the_largest_lag() {
        let at = |s: i64, lag: f64| LagPoint {
            resolved_at: DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap(),
            lag_seconds: lag,
        };
        let svg = lag_svg(&[at(0, 2.0), at(10, 8.0), at(20, 4.0)]);
        let points = svg
            .split("points=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        let v: Vec<(f64, f64)> = points
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(v.len(), 3);
        // Left to right in time; the largest lag at the top of the plot area.
        assert!(v[0].0 < v[1].0 && v[1].0 < v[2].0, "{v:?}");
        assert_eq!(v[1].1, 50.0, "{v:?}");
        assert!(
            svg.contains("8.0 s") && svg.contains("3 RESOLVEDs"),
            "{svg}"
        );
        assert!(lag_svg(&[]).contains("nothing recorded yet"));
    }
}
