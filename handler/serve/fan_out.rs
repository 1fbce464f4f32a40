//! Fan-out (`CRDB_DELTA_FAN_OUT`): a RESOLVED's tables applied one queue message each, by
//! whichever instance takes it, so the app's scale-out — not one process — bounds throughput.
//!
//! 1. **Dispatch.** The invocation that sees a RESOLVED (or the timer) fixes the tables it
//!    covers in `fanout/<resolved>/plan.json` (a conditional create: duplicate and concurrent
//!    dispatches agree) and answers the host with one [`TableMessage`] per table through the
//!    `tables` queue output binding.
//! 2. **Apply.** `ApplyTable` takes the table's own lease (`locks/<table>`), runs the engine on
//!    that table alone up to the RESOLVED without a record, and notes the table's version at it
//!    in `fanout/<resolved>/done/<table>.json`.
//! 3. **Record.** The apply that then finds every planned table done writes the multi-table
//!    `_crdb_delta_resolved` record (exactly once: its `txn`), consumes the RESOLVED's buffer
//!    markers and ends the fan-outs up to it.
//!
//! A duplicate message finds its table at the RESOLVED and notes the same version again; a
//! crash leaves the message to be delivered again (or the timer dispatches again); a table
//! that another message already took past the RESOLVED notes nothing, and that RESOLVED is
//! simply not recorded (a later one is).

use std::collections::BTreeMap;

use crdb_delta_core::Hlc;
use crdb_delta_core::format::names::ObjectName;
use futures::TryStreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::ServeError;
use super::app::{App, LeaseWait, clip, holder, lease_wait};
use super::store::{Acquire, Lease, STATE_DIR, Store};
use crate::engine::RESOLVED_LOG;
use crate::engine::fan_out::{self, RecordRow};
use crate::engine::faults::fault;
use crate::functions::host::InvocationRequest;
use crate::records::PartitionName;

/// The output binding the messages go to (`function_app/*/function.json`).
pub const OUTPUT_BINDING: &str = "tables";

/// One table of one RESOLVED to apply: a queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMessage {
    pub table: String,
    /// `wall.logical`, as the RESOLVED's name has it.
    pub resolved: String,
    /// Table upkeep after the apply (the timer's dispatches), under the same lease and budget.
    #[serde(default)]
    pub upkeep: bool,
}

/// What a dispatch fixed for one RESOLVED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub tables: Vec<String>,
    pub partition: Option<PartitionName>,
}

impl From<fan_out::Cover> for Plan {
    fn from(c: fan_out::Cover) -> Self {
        Self {
            tables: c.tables,
            partition: c.partition,
        }
    }
}

impl Store {
    fn fan_out_dir(&self, resolved: Hlc) -> Result<Path, ServeError> {
        self.state_path(&format!("fanout/{resolved}"))
    }

    /// The plan of `resolved`, if dispatched and not ended.
    pub async fn plan(&self, resolved: Hlc) -> Result<Option<Plan>, ServeError> {
        let path = self.fan_out_dir(resolved)?.clone().join("plan.json");
        self.get_json(&path).await
    }

    /// Stores `plan` unless one is there already; returns the one stored (a concurrent
    /// dispatcher's, if it came first).
    pub async fn create_plan(&self, resolved: Hlc, plan: &Plan) -> Result<Plan, ServeError> {
        let path = self.fan_out_dir(resolved)?.clone().join("plan.json");
        let body = serde_json::to_vec(plan).map_err(|e| ServeError::Other(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .location()
            .store
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(plan.clone()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Ok(self.get_json(&path).await?.unwrap_or_else(|| plan.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Notes a table's version at `resolved` (idempotent: it is the same version each time,
    /// or one of equal content after a compaction).
    pub async fn table_done(&self, resolved: Hlc, row: &RecordRow) -> Result<(), ServeError> {
        let path = self.done_path(resolved, &row.name)?;
        let body = serde_json::to_vec(row).map_err(|e| ServeError::Other(e.to_string()))?;
        self.location().store.put(&path, body.into()).await?;
        Ok(())
    }

    /// Deletes a table's note (gone already is fine).
    pub async fn forget_done(&self, resolved: Hlc, table: &str) -> Result<(), ServeError> {
        let path = self.done_path(resolved, table)?;
        match self.location().store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a table's version at `resolved` is noted.
    pub async fn is_table_done(&self, resolved: Hlc, table: &str) -> Result<bool, ServeError> {
        let path = self.done_path(resolved, table)?;
        match self.location().store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The tables noted done at `resolved`, by name.
    pub async fn done(&self, resolved: Hlc) -> Result<BTreeMap<String, RecordRow>, ServeError> {
        let dir = self.fan_out_dir(resolved)?.clone().join("done");
        let metas: Vec<_> = self.location().store.list(Some(&dir)).try_collect().await?;
        let mut out = BTreeMap::new();
        for m in metas {
            if let Some(row) = self.get_json::<RecordRow>(&m.location).await? {
                out.insert(row.name.clone(), row);
            }
        }
        Ok(out)
    }

    /// Deletes the fan-outs of `resolved` and every older RESOLVED: once it is recorded, every
    /// table is at it or past it, and nothing of theirs is left to note.
    pub async fn end_fan_outs(&self, resolved: Hlc) -> Result<usize, ServeError> {
        let dir = self.state_path("fanout")?;
        let store = &self.location().store;
        let ended = |p: &Path| {
            p.prefix_match(&dir)
                .and_then(|mut parts| parts.next())
                .and_then(|p| p.as_ref().parse::<Hlc>().ok())
                .is_some_and(|r| r <= resolved)
        };
        // Plans first, then a second listing for the notes: an apply that notes its table
        // and then still finds the plan noted it before the plan was deleted, so before the
        // second listing, which finds its note; one that finds the plan gone takes its note
        // back itself.
        let mut n = 0;
        for pass in [true, false] {
            let metas: Vec<_> = store.list(Some(&dir)).try_collect().await?;
            for m in metas {
                let plan = m.location.as_ref().ends_with("/plan.json");
                if plan != pass || !ended(&m.location) {
                    continue;
                }
                match store.delete(&m.location).await {
                    Ok(()) => n += 1,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(n)
    }

    fn done_path(&self, resolved: Hlc, table: &str) -> Result<Path, ServeError> {
        // One path segment whatever the name holds (percent-encoded).
        Ok(self
            .fan_out_dir(resolved)?
            .clone()
            .join("done")
            .join(PathPart::from(format!("{table}.json").as_str())))
    }

    /// The lease of one table's applies.
    pub fn table_lock(&self, table: &str) -> Result<Path, ServeError> {
        Ok(self.state_path("locks")?.join(PathPart::from(table)))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, ServeError> {
        match self.location().store.get(path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    ServeError::Other(format!("{STATE_DIR} object {path} is not readable: {e}"))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl App {
    /// Fixes the tables of `resolved` (once) and returns one message per table for the host to
    /// queue. A RESOLVED that covers no table yet has its marker consumed at once.
    /// `covered`: the tables of `resolved` when the caller has just listed them.
    pub(super) async fn dispatch(
        &self,
        resolved: Hlc,
        covered: Option<Plan>,
        upkeep: bool,
        invocation: &str,
    ) -> Result<(String, Vec<TableMessage>), ServeError> {
        let plan = match (self.store.plan(resolved).await?, covered) {
            (Some(p), _) => p,
            // The timer's listing never picks a RESOLVED it would refuse.
            (None, Some(plan)) => self.store.create_plan(resolved, &plan).await?,
            (None, None) => {
                let opts = self.configured().await?;
                // Refused as a run would refuse it; no message would apply anything.
                if let Some(reason) = fan_out::refused(resolved, &opts) {
                    tracing::error!(invocation, %resolved, %reason, "RESOLVED refused");
                    self.record_error(invocation, &reason).await;
                    return Ok((format!("REFUSED {reason}"), Vec::new()));
                }
                let cover =
                    fan_out::cover(&self.source, &self.target, &opts, Some(resolved)).await?;
                self.store.create_plan(resolved, &cover.into()).await?
            }
        };
        if plan.tables.is_empty() {
            self.consume_resolved(resolved).await?;
            let line = format!("RESOLVED {resolved} covers no table yet");
            tracing::info!(invocation, %resolved, "{line}");
            return Ok((line, Vec::new()));
        }
        let messages: Vec<TableMessage> = plan
            .tables
            .iter()
            .map(|t| TableMessage {
                table: t.clone(),
                resolved: resolved.to_string(),
                upkeep,
            })
            .collect();
        tracing::info!(invocation, %resolved, tables = messages.len(), upkeep, "tables fanned out");
        let line = format!(
            "RESOLVED {resolved}: {} table(s) fanned out ({})",
            messages.len(),
            clip(&plan.tables.join(", "))
        );
        Ok((line, messages))
    }

    /// The timer with fan-out: every table up to the newest listed RESOLVED, each with its
    /// upkeep, and the upkeep of the record table (under the apply lease of the whole target,
    /// which fanned-out applies do not take: records racing it are retried).
    pub(super) async fn catch_up_fanned(
        &self,
        invocation: &str,
    ) -> Result<(Vec<String>, Vec<TableMessage>), ServeError> {
        let opts = self.configured().await?;
        let cover = fan_out::cover(&self.source, &self.target, &opts, None).await?;
        let mut lines = Vec::new();
        let mut messages = Vec::new();
        if let Some(r) = cover.resolved {
            // The listing just made covers the newest RESOLVED: its plan, unless one is there.
            let (line, m) = self
                .dispatch(r, Some(cover.into()), true, invocation)
                .await?;
            lines.push(line);
            messages = m;
        }
        if opts.config.upkeep.unwrap_or(true) {
            let holder = holder(invocation);
            if let Acquire::Acquired(mut lease) =
                self.store.acquire(&holder, self.settings.lease).await?
            {
                let done = self
                    .upkeep_held(&mut lease, RESOLVED_LOG, &opts, invocation)
                    .await;
                lease.release().await;
                if done {
                    lines.push("upkeep of the record table".into());
                }
            }
        }
        Ok((lines, messages))
    }

    /// ApplyTable: one table up to one RESOLVED under the table's lease, then the record if
    /// every table of that RESOLVED is there. A malformed or stale message is answered 200
    /// (a retry cannot change it); a held lease, a spent budget or a failure 500 (retried).
    pub(super) async fn apply_table(
        &self,
        req: &InvocationRequest,
        invocation: &str,
    ) -> Result<Vec<String>, ServeError> {
        let refused = |msg: String| {
            tracing::warn!(invocation, "{msg}");
            Ok(vec![msg])
        };
        let msg = match req
            .decoded("message")
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::from_value::<TableMessage>(v).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => return refused(format!("message refused: {}", clip(&e))),
        };
        let Ok(resolved) = msg.resolved.parse::<Hlc>() else {
            return refused(format!(
                "message refused: RESOLVED `{}` is not wall.logical",
                clip(&msg.resolved)
            ));
        };
        // The plan is what makes a table name trusted (it came from changefeed file names).
        let Some(plan) = self.store.plan(resolved).await? else {
            let line =
                format!("RESOLVED {resolved} is recorded and its fan-out ended: nothing to do");
            tracing::info!(invocation, "{line}");
            return Ok(vec![line]);
        };
        if !plan.tables.contains(&msg.table) {
            return refused(format!(
                "message refused: table `{}` is not one RESOLVED {resolved} covers",
                clip(&msg.table)
            ));
        }
        let table = msg.table.as_str();
        // A slot of this process first (the host runs many ApplyTable invocations at once);
        // none within a lease term: answered 500, for the queue to deliver it again.
        let slots = self.opts.tables_at_once.max(1);
        let slot = match tokio::time::timeout(
            lease_wait(self.settings.lease),
            self.apply_slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(ServeError::Busy {
                    slots,
                    waited_s: lease_wait(self.settings.lease).as_secs(),
                });
            }
        };
        let holder = holder(invocation);
        let lock = self.store.table_lock(table)?;
        let mut wait = LeaseWait::new(self.settings.lease);
        let mut lines = Vec::new();
        loop {
            match self
                .store
                .acquire_at(lock.clone(), &holder, self.settings.lease)
                .await?
            {
                Acquire::Acquired(lease) => {
                    lines.push(
                        self.apply_table_held(lease, table, resolved, msg.upkeep, invocation)
                            .await?,
                    );
                    break;
                }
                Acquire::Held {
                    holder,
                    expires_in_ms,
                } => {
                    if self.store.is_table_done(resolved, table).await? {
                        let line = format!(
                            "table {table} applied up to {resolved} by the lease holder {holder}"
                        );
                        tracing::info!(invocation, "{line}");
                        lines.push(line);
                        break;
                    }
                    wait.poll(holder, |holder| {
                        tracing::info!(invocation, table, %holder, expires_in_ms, %resolved, "table lease held; waiting for the holder or the lease's expiry");
                    })
                    .await?;
                }
            }
        }
        drop(slot);
        if let Some(line) = self.try_record(resolved, &plan, invocation).await? {
            lines.push(line);
        }
        Ok(lines)
    }

    /// One table's run up to `resolved` with its lease held (renewed meanwhile): no record,
    /// its version at `resolved` noted, its consumed buffer markers removed.
    async fn apply_table_held(
        &self,
        mut lease: Lease,
        table: &str,
        resolved: Hlc,
        upkeep: bool,
        invocation: &str,
    ) -> Result<String, ServeError> {
        let _applying = self.warm_ups.applying();
        let out = async {
            // Recorded (and ended) while this message waited for the lease: a duplicate.
            if self.store.plan(resolved).await?.is_none() {
                return Ok(format!("RESOLVED {resolved} recorded meanwhile: nothing to do"));
            }
            let mut opts = self.configured().await?;
            opts.config.only_tables = Some([table.to_owned()].into());
            opts.until = Some(resolved);
            opts.record = false;
            // Its share of the window: the tables of this process share it, as a step's do.
            opts.max_window_bytes /= self.opts.tables_at_once.max(1) as u64;
            let report = self.sync_held(&mut opts, &mut lease).await?;
            let Some(t) = report.tables.get(table) else {
                // No file of it and no Delta table: quarantined (held), or not applied
                // (`only_tables`); the plan said otherwise, so the record waits for it.
                let line = format!("table {table}: nothing applied (quarantined?)");
                tracing::warn!(invocation, table, "{line}");
                return Ok(line);
            };
            if !report.complete {
                return Err(ServeError::Incomplete {
                    applied: t.resolved.map_or("nothing".into(), |h| h.to_string()),
                });
            }
            if let (Some(r), Some(version)) = (t.resolved, t.version)
                && r == resolved
            {
                let row = RecordRow {
                    name: table.to_owned(),
                    path: t.target.clone(),
                    version,
                };
                self.store.table_done(resolved, &row).await?;
                // Ended meanwhile by the apply that recorded it: the note would outlive the
                // fan-out (until a later one ends).
                if self.store.plan(resolved).await?.is_none() {
                    self.store.forget_done(resolved, table).await?;
                }
            }
            if upkeep && opts.config.upkeep.unwrap_or(true) {
                self.upkeep_held(&mut lease, &t.target, &opts, invocation).await;
            }
            let removed = self.cleanup(&report, None, Some(table)).await?;
            self.record_run(invocation, &report).await;
            tracing::info!(invocation, table, resolved = ?t.resolved.map(|h| h.to_string()), version = ?t.version, commits = t.commits, events = t.events, seconds = t.seconds, "table applied");
            Ok(format!(
                "table {table} at {} (version {}, {} events, {:.2} s); {removed} buffer marker(s) consumed",
                t.resolved.map_or("nothing".into(), |h| h.to_string()),
                t.version.map_or("none".into(), |v| v.to_string()),
                t.events,
                t.seconds
            ))
        }
        .await;
        lease.release().await;
        out
    }

    /// The record of `resolved` when every table of its plan is noted done: written, then the
    /// RESOLVED's markers consumed and the fan-outs up to it ended.
    async fn try_record(
        &self,
        resolved: Hlc,
        plan: &Plan,
        invocation: &str,
    ) -> Result<Option<String>, ServeError> {
        let done = self.store.done(resolved).await?;
        let rows: Option<Vec<RecordRow>> =
            plan.tables.iter().map(|t| done.get(t).cloned()).collect();
        let Some(rows) = rows else {
            tracing::debug!(invocation, %resolved, done = done.len(), tables = plan.tables.len(), "not every table is there yet");
            return Ok(None);
        };
        fault("before-fan-out-record");
        fan_out::record(
            &self.target,
            resolved,
            &rows,
            plan.partition,
            &self.opts.checkpoints,
        )
        .await?;
        self.consume_resolved(resolved).await?;
        let ended = self.store.end_fan_outs(resolved).await?;
        tracing::info!(invocation, %resolved, tables = rows.len(), ended, "RESOLVED recorded");
        Ok(Some(format!(
            "RESOLVED {resolved} recorded for {} table(s)",
            rows.len()
        )))
    }

    /// Deletes the buffer markers of RESOLVEDs up to `resolved`.
    async fn consume_resolved(&self, resolved: Hlc) -> Result<usize, ServeError> {
        let buffered = self.store.buffered().await?;
        let done: Vec<&Path> = buffered
            .iter()
            .filter(|b| matches!(b.name, ObjectName::Resolved(r) if r <= resolved))
            .map(|b| &b.marker)
            .collect();
        self.store.unbuffer(&done).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;

    fn h(wall: i64) -> Hlc {
        Hlc { wall, logical: 0 }
    }

    #[tokio::test]
    async fn plans_are_created_once_and_fan_outs_end_up_to_a_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Location::open(dir.path().to_str().unwrap()).unwrap());
        let a = Plan {
            tables: vec!["a".into(), "b".into()],
            partition: Some(PartitionName::Hourly),
        };
        let b = Plan {
            tables: vec!["c".into()],
            partition: None,
        };
        assert_eq!(store.create_plan(h(1), &a).await.unwrap(), a);
        // A second dispatcher gets the first one's plan.
        assert_eq!(store.create_plan(h(1), &b).await.unwrap(), a);
        assert_eq!(store.create_plan(h(2), &b).await.unwrap(), b);
        let row = |name: &str, version| RecordRow {
            name: name.into(),
            path: format!("t/{name}"),
            version,
        };
        store.table_done(h(1), &row("a", 3)).await.unwrap();
        store.table_done(h(1), &row("a", 3)).await.unwrap();
        store.table_done(h(1), &row("we/ird", 4)).await.unwrap();
        assert!(store.is_table_done(h(1), "we/ird").await.unwrap());
        assert!(!store.is_table_done(h(1), "b").await.unwrap());
        let done = store.done(h(1)).await.unwrap();
        assert_eq!(done.keys().collect::<Vec<_>>(), ["a", "we/ird"]);
        assert_eq!(done["a"], row("a", 3));
        // Ending RESOLVED 1 leaves RESOLVED 2's fan-out.
        assert_eq!(store.end_fan_outs(h(1)).await.unwrap(), 3);
        assert_eq!(store.plan(h(1)).await.unwrap(), None);
        assert_eq!(store.plan(h(2)).await.unwrap(), Some(b));
    }

    #[test]
    fn messages_are_strict_and_upkeep_is_optional() {
        let m: TableMessage =
            serde_json::from_str(r#"{"table":"t","resolved":"1.0000000000"}"#).unwrap();
        assert!(!m.upkeep);
        assert!(
            serde_json::from_str::<TableMessage>(r#"{"table":"t","resolved":"1","x":1}"#).is_err()
        );
    }
}
