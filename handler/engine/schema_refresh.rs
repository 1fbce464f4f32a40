//! Reading a table's keys and exact types from CockroachDB again when its files show a schema
//! id (table descriptor version) newer than the one its schema was read at: after `ADD COLUMN
//! amount DECIMAL(12,2)` the new column gets `decimal(12,2)`, not a type guessed from its first
//! values and then fixed in the Delta table for good.
//!
//! Which tables is decided in the core ([`plan::stale_schemas`]) from the listing and the
//! `schema_id` each table's entry in `<target>/_crdb_delta/schema.json` records. With a
//! connection configured, those tables are read before anything is applied, schema.json is
//! rewritten with what was read (and the ids), and the run goes on under the new config. A read
//! that fails stops the run before any commit; the next run tries again.

use std::collections::BTreeMap;

use crdb_delta_core::plan::{self, Object};

use super::{SyncError, SyncOptions};
use crate::config::{Config, TableConfig, load_target_schema, save_target_schema};
use crate::crdb::{CrdbError, TableName, client, schema::merge_tables};
use crate::storage::Location;

/// The config a run goes on with, and the tables read (with the schema id their files showed).
pub struct Refreshed {
    pub config: Config,
    pub tables: BTreeMap<String, u64>,
}

/// Reads the schemas of the tables whose files show a newer schema id, when a connection is
/// configured; `None` when there is nothing to read (or no connection: then only a warning for
/// tables read before, whose new columns' types will be inferred).
pub async fn refresh(
    target: &Location,
    objects: &[Object],
    opts: &SyncOptions,
) -> Result<Option<Refreshed>, SyncError> {
    let read_at = |t: &str| opts.config.tables.get(t).and_then(|c| c.schema_id);
    let stale = plan::stale_schemas(objects, &read_at);
    if stale.is_empty() {
        return Ok(None);
    }
    let Some(url) = &opts.crdb_url else {
        for (table, id) in &stale {
            if let Some(at) = read_at(table) {
                tracing::warn!(%table, schema_id = id, read_at = at, "the table's schema changed since it was read; without CRDB_DELTA_CRDB_URL (sync --crdb-url) new columns' types are inferred from their values");
            }
        }
        return Ok(None);
    };
    let conn = client::connect(url.expose()).await?;
    let mut read = BTreeMap::new();
    let mut unknown = Vec::new();
    for (table, id) in &stale {
        let name = TableName::parse(table)?;
        match conn.read_tables(std::slice::from_ref(&name)).await {
            Ok(mut t) => {
                let config = TableConfig {
                    schema_id: Some(*id),
                    ..t.remove(0).table_config()
                };
                read.insert(table.clone(), config);
            }
            // Dropped (or renamed) since: its files are still applied, with what the config
            // has; the id is recorded so later runs do not ask again.
            Err(CrdbError::UnknownTable { .. }) => {
                tracing::warn!(%table, url = %conn.url, "table not found in CockroachDB: its files are applied with the types configured or inferred");
                unknown.push((table.clone(), *id));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut doc = merge_tables(load_target_schema(target).await?.unwrap_or_default(), read);
    for (table, id) in unknown {
        doc.tables.entry(table).or_default().schema_id = Some(id);
    }
    let base = opts.explicit.as_ref().unwrap_or(&opts.config);
    let config = base.over_schema(&doc);
    // Checked before it is written: a document `sync` would refuse must not replace one it took.
    config.validate()?;
    let written = save_target_schema(target, &doc).await?;
    for (table, id) in &stale {
        tracing::info!(%table, schema_id = id, file = %written, "schema read from CockroachDB");
    }
    Ok(Some(Refreshed {
        config,
        tables: stale,
    }))
}
