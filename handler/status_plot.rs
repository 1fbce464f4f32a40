//! `status --plot lag.svg`: how far behind CockroachDB the target was at each RESOLVED, and the
//! changes applied for it, drawn from `_crdb_delta_resolved` (each RESOLVED's wall time and when
//! its record was written) and the tables' commit records (their figures). The drawing is pure
//! ([`lag_svg`]); reading the logs is the edge ([`lag_points`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use chrono::{DateTime, Utc};
use crdb_delta_core::Hlc;
use futures::StreamExt as _;

use crate::delta::{self, Target};
use crate::storage::Location;

/// One RESOLVED: its wall time, the seconds from it to the record of its commit, and the
/// changes applied for it over all tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagPoint {
    pub resolved_at: DateTime<Utc>,
    pub lag_seconds: f64,
    pub changes: u64,
}

/// How many of a table's newest commits are read for their figures.
const HISTORY_LIMIT: usize = 100_000;

/// Every RESOLVED recorded below `target`, oldest first (one point per RESOLVED: its tables
/// are recorded together). Empty when nothing was recorded yet.
pub async fn lag_points(target: &Location) -> Result<Vec<LagPoint>, delta::DeltaError> {
    let log = Target::new(target, crate::engine::RESOLVED_LOG)?;
    let Some(table) = log.open().await? else {
        return Ok(Vec::new());
    };
    let of = delta::DeltaError::of(crate::engine::RESOLVED_LOG);
    let mut points: BTreeMap<DateTime<Utc>, LagPoint> = BTreeMap::new();
    let mut resolveds: BTreeMap<Hlc, DateTime<Utc>> = BTreeMap::new();
    let mut tables: BTreeSet<String> = BTreeSet::new();
    for f in delta::files(&table, "resolved").await.map_err(of)? {
        for b in delta::read_live_file(&table, &f, 8192).await? {
            let (Some(hlc), Some(at), Some(rec), Some(path)) = (
                b.column_by_name("resolved"),
                b.column_by_name("resolved_at"),
                b.column_by_name("recorded_at"),
                b.column_by_name("table_path"),
            ) else {
                continue;
            };
            let (hlc, at, rec, path) = (
                hlc.as_string::<i32>(),
                at.as_primitive::<TimestampMicrosecondType>(),
                rec.as_primitive::<TimestampMicrosecondType>(),
                path.as_string::<i32>(),
            );
            for i in 0..b.num_rows() {
                let (Some(a), Some(r)) = (
                    DateTime::from_timestamp_micros(at.value(i)),
                    DateTime::from_timestamp_micros(rec.value(i)),
                ) else {
                    continue;
                };
                tables.insert(path.value(i).to_owned());
                if let Ok(h) = Hlc::parse_decimal(hlc.value(i)) {
                    resolveds.insert(h, a);
                }
                points.entry(a).or_insert(LagPoint {
                    resolved_at: a,
                    lag_seconds: (r - a).num_milliseconds() as f64 / 1000.0,
                    changes: 0,
                });
            }
        }
    }
    // Changes per RESOLVED: each table's commit records (a key slice counts for its interval).
    for path in tables {
        let t = Target::new(target, &path)?;
        let Some(tb) = t.open().await? else {
            continue;
        };
        let mut history = tb.history(Some(HISTORY_LIMIT));
        while let Some(info) = history.next().await {
            let info = info.map_err(delta::DeltaError::of(&path))?;
            let Some(rec) = crate::records::CommitRecord::from_commit_info(&info.info) else {
                continue;
            };
            let crate::records::Figures::Table(fig) = rec.figures else {
                continue;
            };
            let at = rec
                .progress
                .slices
                .map(|s| s.resolved)
                .or(rec.progress.applied);
            if let Some(p) = at
                .and_then(|h| resolveds.get(&h))
                .and_then(|a| points.get_mut(a))
            {
                p.changes += fig.events;
            }
        }
    }
    Ok(points.into_values().collect())
}

/// An SVG line chart over time (x: the RESOLVED's wall time): the lag, the seconds until the
/// RESOLVED's record (blue, left scale), and the changes applied for it (orange, right scale),
/// with the first and last times, the largest values and the point count as labels.
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
        r#"<polyline class="lag" fill="none" stroke="steelblue" stroke-width="1.5" points="{}"/>"#,
        coords.join(" ")
    );
    let most = points.iter().map(|p| p.changes).max().unwrap_or(0).max(1) as f64;
    let changes: Vec<String> = points
        .iter()
        .map(|p| {
            let v = H - PAD - p.changes as f64 / most * (H - 2.0 * PAD);
            format!("{:.1},{v:.1}", x(p))
        })
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline class="changes" fill="none" stroke="darkorange" stroke-width="1" points="{}"/>"#,
        changes.join(" ")
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" fill="darkorange">{most:.0} changes</text><text x="{}" y="{}" fill="steelblue">lag</text>"#,
        W - PAD + 4.0,
        PAD + 4.0,
        PAD + 4.0,
        PAD - 8.0
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
    fn the_chart_has_one_vertex_per_resolved_scaled_to_the_largest_value() {
        let at = |s: i64, lag: f64, changes: u64| LagPoint {
            resolved_at: DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap(),
            lag_seconds: lag,
            changes,
        };
        let svg = lag_svg(&[at(0, 2.0, 100), at(10, 8.0, 50), at(20, 4.0, 0)]);
        let line = |class: &str| -> Vec<(f64, f64)> {
            svg.split(&format!("class=\"{class}\""))
                .nth(1)
                .and_then(|r| r.split("points=\"").nth(1))
                .and_then(|r| r.split('"').next())
                .unwrap()
                .split(' ')
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        };
        let (lag, changes) = (line("lag"), line("changes"));
        assert_eq!((lag.len(), changes.len()), (3, 3));
        // Left to right in time; each line's largest value at the top of the plot area.
        assert!(lag[0].0 < lag[1].0 && lag[1].0 < lag[2].0, "{lag:?}");
        assert_eq!(lag[1].1, 50.0, "{lag:?}");
        assert_eq!((changes[0].1, changes[2].1), (50.0, 250.0), "{changes:?}");
        assert!(
            svg.contains("8.0 s") && svg.contains("100 changes"),
            "{svg}"
        );
        assert!(svg.contains("3 RESOLVEDs"), "{svg}");
        assert!(lag_svg(&[]).contains("nothing recorded yet"));
    }
}
