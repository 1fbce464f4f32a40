//! CockroachDB-only outputs (`SHOW CREATE TABLE` with families, `crdb_sql_type` values,
//! `SHOW CHANGEFEED JOB`) parsed from examples copied from CockroachDB's documentation
//! (`tests/data/crdb/README.md` names each source).

use crdb_delta::crdb::changefeed::JobStatus;
use crdb_delta::crdb::schema::{ColumnRow, Family, TableSchema, parse_families, sql_type};
use crdb_delta_core::Hlc;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/data/crdb/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A psql-style table as the docs print it → (header, rows of cells). A row whose first cell
/// is empty continues the previous row's cells (multi-line values, such as create_statement).
fn table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let cells = |l: &str| -> Vec<String> { l.split('|').map(|c| c.trim().to_owned()).collect() };
    let header = cells(lines.next().unwrap());
    let mut rows: Vec<Vec<String>> = Vec::new();
    for l in lines {
        if l.trim_start().starts_with(['-', '+']) || l.starts_with('(') {
            continue;
        }
        // Values keep their own indentation: split once per column, trim only the padding.
        let parts: Vec<&str> = l.splitn(header.len(), '|').collect();
        let first = parts[0].trim();
        if first.is_empty() && !rows.is_empty() {
            let last = rows.last_mut().unwrap();
            for (i, p) in parts.iter().enumerate().skip(1) {
                last[i].push('\n');
                last[i].push_str(p.strip_prefix(' ').unwrap_or(p).trim_end());
            }
        } else {
            rows.push(
                parts
                    .iter()
                    .map(|p| p.strip_prefix(' ').unwrap_or(p).trim_end().to_owned())
                    .map(|p| {
                        if p.trim().is_empty() {
                            String::new()
                        } else {
                            p
                        }
                    })
                    .collect(),
            );
        }
    }
    (header, rows)
}

fn create_statement(name: &str) -> String {
    let (header, rows) = table(&fixture(name));
    let i = header.iter().position(|h| h == "create_statement").unwrap();
    rows[0][i].clone()
}

#[test]
fn show_create_table_families_from_the_docs() {
    let stmt = create_statement("show_create_table_families.txt");
    assert!(
        stmt.starts_with("CREATE TABLE test (\n    id INT8 NOT NULL,"),
        "{stmt}"
    );
    let f = parse_families(&stmt).unwrap();
    assert_eq!(
        f,
        vec![
            Family {
                name: "f1".into(),
                columns: vec!["id".into(), "last_accessed".into()]
            },
            Family {
                name: "f2".into(),
                columns: vec!["data".into()]
            },
        ]
    );
    // Two families: family 0 (`f1`) is named for sync, and the changefeed needs
    // split_column_families.
    let rows: Vec<ColumnRow> = [
        ("id", "INT8"),
        ("last_accessed", "TIMESTAMP"),
        ("data", "BYTES"),
    ]
    .iter()
    .map(|(n, t)| ColumnRow {
        name: (*n).into(),
        crdb_sql_type: Some((*t).into()),
        ..ColumnRow::default()
    })
    .collect();
    let s = TableSchema::new("test", &rows, vec!["id".into()], f, true).unwrap();
    let c = s.table_config();
    assert_eq!(c.primary_family.as_deref(), Some("f1"));
    assert_eq!(c.columns["data"], "BYTES");

    // One family printed as FAMILY "primary": nothing to name.
    let f = parse_families(&create_statement(
        "show_create_table_users_primary_family.txt",
    ))
    .unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].name, "primary");
    assert_eq!(
        f[0].columns,
        ["id", "city", "name", "address", "credit_card"]
    );

    // The current form prints no FAMILY clause for a single family; a COMMENT ON statement
    // follows the table.
    let stmt = create_statement("show_create_table_users_comment.txt");
    assert!(stmt.contains("COMMENT ON TABLE users"), "{stmt}");
    assert!(parse_families(&stmt).unwrap().is_empty());

    // Family 0 is the first listed, even when it does not hold the key.
    let f = parse_families(&fixture("create_table_office_plants.sql")).unwrap();
    assert_eq!(
        f.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["dog_friendly", "plant"]
    );
}

#[test]
fn crdb_sql_types_from_the_docs_are_accepted() {
    for (file, want) in [
        (
            "show_columns_timestamptz.txt",
            [("a", "INT8"), ("b", "TIMESTAMPTZ")],
        ),
        // Fractional-second precision does not change the Delta type: dropped.
        (
            "show_columns_timestamp_precision.txt",
            [("a", "INT8"), ("b", "TIMESTAMP")],
        ),
    ] {
        let (header, rows) = table(&fixture(file));
        let name = header.iter().position(|h| h == "column_name").unwrap();
        let ty = header.iter().position(|h| h == "data_type").unwrap();
        let hidden = header.iter().position(|h| h == "is_hidden").unwrap();
        let got: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                let row = ColumnRow {
                    name: r[name].trim().to_owned(),
                    crdb_sql_type: Some(r[ty].trim().to_owned()),
                    hidden: r[hidden].trim() == "true",
                    ..ColumnRow::default()
                };
                (row.name.clone(), sql_type(&row).unwrap())
            })
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(got, want, "{file}");
    }
}

#[test]
fn show_changefeed_job_from_the_docs() {
    let (header, rows) = table(&fixture("show_changefeed_job.txt"));
    assert_eq!(rows.len(), 1);
    let row: Vec<(String, Option<String>)> = header
        .iter()
        .zip(&rows[0])
        .map(|(h, v)| {
            (
                h.clone(),
                Some(v.trim().to_owned()).filter(|v| !v.is_empty()),
            )
        })
        .collect();
    let job = JobStatus::from_row(&row).unwrap();
    assert_eq!(job.job_id, "1053639803034894337");
    assert_eq!(job.status, "running");
    assert_eq!(
        job.running_status.as_deref(),
        Some("running: resolved=1741616141.951323000,0")
    );
    assert_eq!(
        job.high_water,
        Some(Hlc::parse_decimal("1741616141951323000.0000000000").unwrap())
    );
    // readable_high_water_timestamptz says the same instant.
    assert_eq!(
        job.high_water.unwrap().to_datetime().to_rfc3339(),
        "2025-03-10T14:15:41.951323+00:00"
    );
    assert_eq!(job.full_table_names, ["online_retail.public.customers"]);
    assert_eq!(job.error, None);
    assert_eq!(job.format.as_deref(), Some("json"));
    // The sink URI's query (credentials) never reaches our output.
    assert_eq!(job.sink_uri.as_deref(), Some("gs://bucket-name?<redacted>"));
    let now = job.high_water.unwrap().to_datetime() + chrono::TimeDelta::seconds(3);
    let applied = Hlc::parse_decimal("1741616131951323000.0000000000").unwrap();
    assert_eq!(
        job.lag_line(&[("customers".into(), Some(applied))], now),
        "changefeed job 1053639803034894337 running, high-water 2025-03-10T14:15:41.951Z \
         (3.0 s ago); Delta applied RESOLVED 2025-03-10T14:15:31.951Z (oldest of 1 table); lag 10.0 s"
    );
}
