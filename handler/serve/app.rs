//! What each function does with one invocation.
//!
//! Status codes: 200 whenever a retry cannot change the outcome (skipped, refused, malformed,
//! lease held elsewhere); 500 only for failures a redelivery can fix (storage or engine
//! errors), since any non-2xx fails the invocation and makes Event Grid or the queue deliver
//! again (host-protocol.md §2, §6).

use std::time::{Duration, Instant};

use crate::functions::Trigger;
use crate::functions::events::{BlobEvent, Disposition, Scope, parse_events};
use crate::functions::host::{HttpResponse, InvocationRequest, InvocationResponse};
use bytes::Bytes;
use chrono::Utc;
use crdb_delta_core::Hlc;
use crdb_delta_core::format::names::ObjectName;
use object_store::ObjectStoreExt as _;
use serde_json::json;
use warp::http::StatusCode;

use super::fan_out::{OUTPUT_BINDING, TableMessage};
use super::status;
use super::store::{Acquire, ErrorRecord, Marker, RunRecord, Store};
use super::warm_up::WarmUps;
use super::{ServeError, Settings, container_prefix, scope_of};
use crate::checkpoint::{Checkpoints, InFlight};
use crate::engine::{SyncOptions, SyncReport, sync};
use crate::storage::Location;

/// The handler's state, shared by all invocations.
pub struct App {
    pub settings: Settings,
    pub source: Location,
    pub target: Location,
    pub store: Store,
    /// `None` for a folder source: events cannot name it.
    scope: Option<Scope>,
    /// `container/prefix` of the target: every event below it is one of our own writes.
    own: Vec<String>,
    pub(super) opts: SyncOptions,
    /// Fan-out: tables this process applies at once (`tables_at_once`), however many
    /// `ApplyTable` invocations the host runs side by side: each gets a slot and a share of
    /// the window, so memory stays bounded as without fan-out.
    pub(super) apply_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Invocations in flight: due checkpoints are written between them.
    in_flight: std::sync::Arc<InFlight>,
    /// Tables' key indexes learned ahead of their RESOLVED, never beside an apply.
    pub(super) warm_ups: std::sync::Arc<WarmUps>,
}

/// The outcome of one event or run, as a log line for the host, and the table messages of a
/// fanned-out RESOLVED.
type Outcome = Result<(String, Vec<TableMessage>), ServeError>;

impl App {
    pub fn new(settings: Settings) -> Result<Self, ServeError> {
        let source = Location::open(&settings.source)?;
        let target = Location::open(&settings.target)?;
        let scope = scope_of(&source, settings.account.as_deref())?;
        let own = container_prefix(&target).into_iter().collect();
        let in_flight = std::sync::Arc::new(InFlight::default());
        let configured = SyncOptions::from_config(settings.config.clone());
        let opts = SyncOptions {
            mode: settings.mode,
            // The process lives for many invocations: key indexes are learned at once.
            key_cache: configured.key_cache.clone().learning_from_first_step(),
            // One run per RESOLVED event: a file straddling RESOLVEDs is read once.
            carry_cache: Some(crate::engine::carry::CarryCache::default()),
            // An interval applied in slices over several invocations keeps its slice cache,
            // sized from the temporary folder's disk unless the config sizes it.
            slice_caches: Some(crate::engine::slice_cache::SliceCaches::default()),
            slice_cache_auto: settings.config.slice_cache_bytes.is_none(),
            table_cache: Some(crate::engine::table_cache::TableCache::default()),
            explicit: Some(settings.config.clone()),
            crdb_url: settings.crdb_url.clone(),
            // An invocation answers once its commits are in; checkpoints are written after.
            checkpoints: Checkpoints::behind(in_flight.clone()),
            ..configured
        };
        tracing::info!(source = %source.display, target = %target.display, scope = ?scope, "handler configured");
        Ok(Self {
            apply_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                opts.tables_at_once.max(1),
            )),
            store: Store::new(target.clone()),
            settings,
            source,
            target,
            scope,
            own,
            opts,
            in_flight,
            warm_ups: Default::default(),
        })
    }

    /// Handles `POST /<function>`; never panics on input.
    pub async fn invoke(
        &self,
        function: &str,
        invocation: &str,
        body: Result<Bytes, super::BodyError>,
    ) -> (StatusCode, InvocationResponse) {
        let _busy = self.in_flight.enter();
        let span = tracing::info_span!("invocation", function, invocation);
        let _enter = span.enter();
        let started = Instant::now();
        let refused = |msg: String| {
            tracing::warn!(function, invocation, "{msg}");
            (StatusCode::OK, InvocationResponse::new().with_log(msg))
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => return refused(format!("request refused: {e}")),
        };
        let req = match InvocationRequest::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return refused(format!("request refused: {e}")),
        };
        drop(_enter);
        let Some(trigger) = Trigger::from_name(function) else {
            let names: Vec<&str> = Trigger::ALL.iter().map(|t| t.name()).collect();
            let msg = format!(
                "no function `{function}` in this handler ({})",
                names.join(", ")
            );
            tracing::error!(function, invocation, "{msg}");
            return (
                StatusCode::NOT_FOUND,
                InvocationResponse::new().with_log(msg),
            );
        };
        if matches!(trigger, Trigger::BlobQueue | Trigger::ApplyTable)
            && let Some(n) = req.dequeue_count()
        {
            tracing::info!(function, invocation, dequeue_count = n, "queue message");
        }
        let out = match trigger {
            Trigger::BlobCreated => self.events(&req, "event", invocation).await,
            Trigger::BlobQueue => self.events(&req, "message", invocation).await,
            Trigger::CatchUp => {
                if let Ok(t) = req.timer("timer")
                    && t.is_past_due
                {
                    tracing::info!(function, invocation, "timer is past due");
                }
                if self.settings.fan_out {
                    self.catch_up_fanned(invocation).await
                } else {
                    self.run(invocation, None).await.map(|l| (l, Vec::new()))
                }
            }
            Trigger::ApplyTable => self
                .apply_table(&req, invocation)
                .await
                .map(|l| (l, Vec::new())),
            Trigger::Status => return self.status(&req).await,
        };
        let ms = started.elapsed().as_millis() as u64;
        match out {
            Ok((lines, messages)) => {
                tracing::info!(
                    function,
                    invocation,
                    ms,
                    messages = messages.len(),
                    "invocation done"
                );
                let mut r = InvocationResponse::new();
                r.logs = lines;
                if !messages.is_empty() {
                    // The host writes one queue message per element (host-protocol.md).
                    r.outputs.insert(
                        OUTPUT_BINDING.to_owned(),
                        serde_json::to_value(&messages).unwrap_or_default(),
                    );
                }
                (StatusCode::OK, r)
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(function, invocation, ms, error = %message, "invocation failed; the trigger retries it");
                self.record_error(invocation, &message).await;
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    InvocationResponse::new().with_log(format!("failed (retried): {message}")),
                )
            }
        }
    }

    pub(super) async fn record_error(&self, invocation: &str, message: &str) {
        let rec = ErrorRecord {
            at: Utc::now().to_rfc3339(),
            invocation: invocation.to_owned(),
            message: message.to_owned(),
        };
        if let Err(e) = self.store.update_state(|s| s.last_error = Some(rec)).await {
            tracing::warn!(error = %e, "could not record the error in state.json");
        }
    }

    /// BlobCreated / BlobQueue: every event of the payload; fails (for a retry) if any failed.
    async fn events(
        &self,
        req: &InvocationRequest,
        binding: &str,
        invocation: &str,
    ) -> Result<(Vec<String>, Vec<TableMessage>), ServeError> {
        let refused = |msg: String| {
            tracing::warn!(invocation, "{msg}");
            Ok((vec![msg], Vec::new()))
        };
        let value = match req.binding(binding) {
            Ok(v) => v,
            Err(e) => return refused(format!("request refused: {e}")),
        };
        let events = match parse_events(value) {
            Ok(e) => e,
            Err(e) => return refused(format!("payload refused: {e}")),
        };
        let mut lines = Vec::new();
        let mut messages = Vec::new();
        let mut first_error = None;
        for ev in events {
            match ev {
                Err(e) => {
                    let e = e.to_string();
                    let e = clip(&e);
                    tracing::warn!(invocation, error = %e, "event refused");
                    lines.push(format!("event refused: {e}"));
                }
                Ok(ev) => match self.event(&ev, invocation).await {
                    Ok((line, m)) => {
                        lines.push(line);
                        messages.extend(m);
                    }
                    Err(e) => {
                        lines.push(format!("event {}: {e}", ev.id));
                        first_error.get_or_insert(e);
                    }
                },
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((lines, messages)),
        }
    }

    async fn event(&self, ev: &BlobEvent, invocation: &str) -> Outcome {
        // No blob has a longer name: refuse before the subject reaches any log or reply.
        if ev.subject.len() > MAX_SUBJECT_BYTES || ev.id.len() > MAX_SUBJECT_BYTES {
            let msg = format!(
                "event {} refused: subject of {} bytes, longer than any blob's",
                clip(&ev.id),
                ev.subject.len()
            );
            tracing::warn!(invocation, "{msg}");
            return Ok((msg, Vec::new()));
        }
        let own: Vec<&str> = self.own.iter().map(String::as_str).collect();
        // Our own Delta and buffer writes raise events too: dropped before any other work.
        if ev.is_own_write(&own) {
            tracing::debug!(invocation, subject = %ev.subject, "own write; skipped");
            return Ok((format!("own write skipped: {}", ev.subject), Vec::new()));
        }
        if let Disposition::Skip(reason) = ev.disposition() {
            tracing::info!(invocation, id = %ev.id, subject = %ev.subject, %reason, "event skipped");
            return Ok((format!("event {} skipped: {reason}", ev.id), Vec::new()));
        }
        let Some(scope) = &self.scope else {
            let msg = format!(
                "event {} refused: the source is a folder, events cannot name it",
                ev.id
            );
            tracing::warn!(invocation, "{msg}");
            return Ok((msg, Vec::new()));
        };
        let rel = match scope.relative(ev) {
            Ok(r) => r,
            Err(e) => {
                let e = e.to_string();
                let e = clip(&e);
                tracing::warn!(invocation, error = %e, "event refused");
                return Ok((format!("event refused: {e}"), Vec::new()));
            }
        };
        let name = match ObjectName::parse_relative(&rel) {
            Ok((n, _)) => n,
            Err(e) => {
                let e = e.to_string();
                let e = clip(&e);
                tracing::warn!(invocation, id = %clip(&ev.id), error = %e, "not a changefeed file; refused");
                return Ok((format!("event {} refused: {e}", clip(&ev.id)), Vec::new()));
            }
        };
        self.store
            .buffer(&Marker {
                path: rel.clone(),
                size: ev.content_length,
                event_id: ev.id.clone(),
                received_at: Utc::now().to_rfc3339(),
            })
            .await?;
        match name {
            ObjectName::Data(d) => {
                tracing::info!(invocation, table = d.topic.table(), file = %rel, "buffered");
                self.warm_up(d.topic.table());
                Ok((format!("buffered {rel}"), Vec::new()))
            }
            ObjectName::Resolved(r) if self.settings.fan_out => {
                tracing::info!(invocation, resolved = %r, "RESOLVED: fanning its tables out");
                self.dispatch(r, None, false, invocation).await
            }
            ObjectName::Resolved(r) => {
                tracing::info!(invocation, resolved = %r, "RESOLVED: applying");
                self.run(invocation, Some(r))
                    .await
                    .map(|l| (l.join("; "), Vec::new()))
            }
        }
    }

    /// Applies every table up to `until` (a RESOLVED, or the newest listed when `None`) under
    /// the lease.
    ///
    /// If another invocation holds the lease, a RESOLVED invocation waits (polling) until its
    /// RESOLVED has been applied by the holder (its marker consumed), or the lease is free or
    /// expired (a crashed holder: taken over), and answers 500 — redelivered later — only if
    /// neither happened within a lease term. Nothing depends on a later event. A timer run
    /// (`until` None) answers 200 at once: the next tick comes anyway.
    pub async fn run(
        &self,
        invocation: &str,
        until: Option<Hlc>,
    ) -> Result<Vec<String>, ServeError> {
        let holder = holder(invocation);
        let mut lines = Vec::new();
        let mut until = until;
        let mut wait = LeaseWait::new(self.settings.lease);
        loop {
            let lease = match self.store.acquire(&holder, self.settings.lease).await? {
                Acquire::Held {
                    holder,
                    expires_in_ms,
                } => {
                    let Some(asked) = until else {
                        let msg = format!(
                            "apply lease held by {holder} (expires in {} s): it applies up to the newest buffered RESOLVED",
                            expires_in_ms / 1000
                        );
                        tracing::info!(invocation, "{msg}");
                        lines.push(msg);
                        return Ok(lines);
                    };
                    if !self.is_buffered(asked).await? {
                        let msg = format!("RESOLVED {asked} applied by the lease holder {holder}");
                        tracing::info!(invocation, "{msg}");
                        lines.push(msg);
                        return Ok(lines);
                    }
                    wait.poll(holder, |holder| {
                        tracing::info!(invocation, %holder, expires_in_ms, resolved = %asked, "apply lease held; waiting for the holder or the lease's expiry");
                    })
                    .await?;
                    continue;
                }
                Acquire::Acquired(l) => l,
            };
            let (asked, line, complete) = self.apply_held(lease, invocation, until).await?;
            lines.push(line);
            if !complete {
                // The time budget ran out with RESOLVEDs left: a retry continues (nothing else
                // would until the next event or timer tick).
                return Err(ServeError::Incomplete {
                    applied: asked.map_or("nothing".into(), |h| h.to_string()),
                });
            }
            // A RESOLVED announced while we held the lease, whose invocation then waited.
            let newest = newest_resolved(&self.store.buffered().await?);
            match (newest, asked) {
                (Some(n), Some(a)) if n > a => until = Some(n),
                _ => return Ok(lines),
            }
        }
    }

    /// Starts learning `table`'s key indexes ahead of its RESOLVED ([`super::warm_up`]), where
    /// this process will apply it: not with fan-out (any instance may take a table's message),
    /// nor when `warm_up` or the key index is off.
    fn warm_up(&self, table: &str) {
        let config = &self.opts.config;
        if self.settings.fan_out
            || !config.warm_up.unwrap_or(true)
            || !self.opts.key_cache.enabled()
            || config
                .only_tables
                .as_ref()
                .is_some_and(|t| !t.contains(table))
        {
            return;
        }
        let (target, opts, name) = (self.target.clone(), self.opts.clone(), table.to_owned());
        self.warm_ups.start(table, async move {
            if let Err(e) = crate::engine::warm::warm(&target, &name, &opts).await {
                tracing::warn!(table = %name, error = %e, "key index warm-up failed; the table's step reads its key columns itself");
            }
        });
    }

    /// Whether the marker of RESOLVED `r` is still buffered (not yet consumed by an apply).
    async fn is_buffered(&self, r: Hlc) -> Result<bool, ServeError> {
        Ok(self
            .store
            .buffered()
            .await?
            .iter()
            .any(|b| b.name == ObjectName::Resolved(r)))
    }

    /// One engine run with the lease held (renewed meanwhile), then the buffer cleanup.
    /// Returns the RESOLVED asked for and a log line.
    async fn apply_held(
        &self,
        mut lease: super::store::Lease,
        invocation: &str,
        until: Option<Hlc>,
    ) -> Result<(Option<Hlc>, String, bool), ServeError> {
        let _applying = self.warm_ups.applying();
        let out = async {
            let buffered = self.store.buffered().await?;
            // The newest RESOLVED announced so far: one run covers every waiting RESOLVED.
            let until = until.map(|u| newest_resolved(&buffered).map_or(u, |n| n.max(u)));
            let mut opts = self.configured().await?;
            opts.until = until;
            let report = self.sync_held(&mut opts, &mut lease).await?;
            // CatchUp with time left: table upkeep, still under the lease (never beside an
            // apply of ours) and within the same budget.
            let mut upkept = 0;
            if until.is_none() && report.complete && opts.config.upkeep.unwrap_or(true) {
                let deadline = opts.deadline.unwrap_or_else(std::time::Instant::now);
                let mut paths: Vec<&str> = report.tables.values().map(|t| t.target.as_str()).collect();
                paths.push(crate::engine::RESOLVED_LOG);
                for p in paths {
                    if std::time::Instant::now() >= deadline {
                        break;
                    }
                    if self.upkeep_held(&mut lease, p, &opts, invocation).await {
                        upkept += 1;
                    }
                }
            }
            // Markers of RESOLVEDs the run did not reach (time budget) stay for the retry.
            let asked = if report.complete {
                until.or(report.resolved)
            } else {
                report.resolved
            };
            let removed = self.cleanup(&report, asked, None).await?;
            self.record_run(invocation, &report).await;
            for (t, r) in &report.tables {
                tracing::info!(invocation, table = %t, resolved = ?r.resolved.map(|h| h.to_string()), version = ?r.version, commits = r.commits, events = r.events, inserted = r.inserted, updated = r.updated, deleted = r.deleted, files_read = r.files_read, files_from_slice_cache = r.files_from_slice_cache, files_from_slice_spill = r.files_from_slice_spill, seconds = r.seconds, "table applied");
            }
            let refused: String = report.refused.iter().map(|r| format!("; REFUSED {r}")).collect();
            let upkeep = if upkept > 0 { format!("; upkeep of {upkept} table(s)") } else { String::new() };
            // Table files a step found in the key index instead of reading their key columns.
            let (read, indexed) = report.tables.values().fold((0, 0), |(r, i), t| {
                (r + t.table_files_read, i + t.table_files_indexed)
            });
            let index = if read > 0 { format!("; {indexed} of {read} table file(s) looked up in the key index") } else { String::new() };
            let line = format!(
                "applied up to {} ({} step(s), {} events, {} tables, {:.2} s); {removed} buffer marker(s) consumed{refused}{upkeep}{index}",
                report.resolved.map_or("nothing".into(), |h| h.to_string()),
                report.steps,
                report.events,
                report.tables.len(),
                report.seconds
            );
            Ok::<_, ServeError>((asked, line, report.complete))
        }
        .await;
        lease.release().await;
        out
    }

    /// One engine run within the apply budget, holding `lease` meanwhile.
    pub(super) async fn sync_held(
        &self,
        opts: &mut SyncOptions,
        lease: &mut super::store::Lease,
    ) -> Result<SyncReport, ServeError> {
        opts.deadline = Some(Instant::now() + self.settings.apply_budget);
        let work = sync(&self.source, &self.target, opts);
        Ok(lease.hold(self.settings.lease, work).await?)
    }

    /// Upkeep of one Delta table (`path` below the target) while holding `lease`: logged, never
    /// an error (upkeep is not worth failing an invocation for: the next tick tries again).
    pub(super) async fn upkeep_held(
        &self,
        lease: &mut super::store::Lease,
        path: &str,
        opts: &SyncOptions,
        invocation: &str,
    ) -> bool {
        let upkeep = upkeep_options(opts);
        let work = crate::maintain::maintain_table(&self.target, path, &upkeep);
        match lease.hold(self.settings.lease, work).await {
            Ok(u) => {
                tracing::info!(invocation, table = %u.table, files_compacted = u.files_compacted, rows_purged = u.rows_purged, log_files_deleted = u.log_files_deleted, files_vacuumed = u.files_vacuumed, checkpoint_interval_set = u.checkpoint_interval_set, "upkeep");
                true
            }
            Err(e) => {
                tracing::warn!(invocation, table = path, error = %e, "upkeep failed");
                false
            }
        }
    }

    /// The options of a run, with the target's schema.json read again (as every run does:
    /// `crdb-delta schema --target` output applies without a redeploy, and its options —
    /// window, slices, … — count as the app settings' own would).
    pub(super) async fn configured(&self) -> Result<SyncOptions, ServeError> {
        let config = crate::config::with_target_schema(&self.settings.config, &self.target).await?;
        Ok(self.opts.reconfigured(config))
    }

    /// Deletes the markers of RESOLVED files at or below `asked` and of data files every row of
    /// which is applied (name timestamp ≤ the table's RESOLVED and before its `pendingFrom`).
    /// `only`: a run of that table alone, which leaves other tables' markers alone.
    pub(super) async fn cleanup(
        &self,
        report: &SyncReport,
        asked: Option<Hlc>,
        only: Option<&str>,
    ) -> Result<usize, ServeError> {
        let buffered = self.store.buffered().await?;
        let mut done = Vec::new();
        for b in &buffered {
            if let (Some(t), ObjectName::Data(d)) = (only, &b.name)
                && d.topic.table() != t
            {
                continue;
            }
            let consumed = match &b.name {
                ObjectName::Resolved(r) => asked.is_some_and(|a| *r <= a),
                // The run's report says where each table is: no need to read its log again.
                ObjectName::Data(d) => report.tables.get(d.topic.table()).is_some_and(|t| {
                    let progress = crdb_delta_core::plan::Progress {
                        applied: t.resolved,
                        pending_from: t.pending_from.clone(),
                        slices: None,
                    };
                    crdb_delta_core::plan::consumed(&b.name, &progress)
                }),
            };
            if consumed {
                done.push(&b.marker);
                continue;
            }
            // A marker of a table the run did not see: an event for a blob that does not exist
            // (a hostile or stale event) would otherwise linger as a phantom table in Status.
            if let ObjectName::Data(d) = &b.name
                && !report.tables.contains_key(d.topic.table())
            {
                match self
                    .source
                    .store
                    .head(&self.source.child(&b.relative)?)
                    .await
                {
                    Err(object_store::Error::NotFound { .. }) => {
                        tracing::warn!(file = %clip(&b.relative), "buffered event names a blob that does not exist; marker dropped");
                        done.push(&b.marker);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(file = %clip(&b.relative), error = %e, "could not check a buffered blob")
                    }
                }
            }
        }
        self.store.unbuffer(&done).await
    }

    pub(super) async fn record_run(&self, invocation: &str, report: &SyncReport) {
        let run = RunRecord {
            invocation: invocation.to_owned(),
            at: Utc::now().to_rfc3339(),
            resolved: report.resolved.map(|h| h.to_string()),
            steps: report.steps,
            events: report.events,
            seconds: report.seconds,
        };
        let names: Vec<String> = report.tables.keys().cloned().collect();
        let complete = report.complete;
        let mut refused: Vec<String> = report
            .refused
            .iter()
            .map(|r| format!("refused: {r}"))
            .collect();
        refused.extend(report.late.iter().map(|l| format!("late file: {l}")));
        let r = self
            .store
            .update_state(|s| {
                for n in names {
                    if !s.tables.contains(&n) {
                        s.tables.push(n);
                    }
                }
                s.tables.sort();
                s.last_run = Some(run);
                // A successful run ends the error state Status shows; a refused RESOLVED or a
                // late file (a second changefeed?) is one.
                if !refused.is_empty() {
                    s.last_error = Some(ErrorRecord {
                        at: Utc::now().to_rfc3339(),
                        invocation: invocation.to_owned(),
                        message: refused.join("; "),
                    });
                } else if complete {
                    s.last_error = None;
                }
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record the run in state.json");
        }
    }

    async fn status(&self, req: &InvocationRequest) -> (StatusCode, InvocationResponse) {
        let text = req
            .http_request("req")
            .ok()
            .and_then(|r| {
                r.query_param("format")
                    .map(|f| f.eq_ignore_ascii_case("text"))
            })
            .unwrap_or(false);
        let http = self.status_response(text).await;
        // The HTTP caller sees the error; the invocation itself succeeded (nothing to retry).
        (
            StatusCode::OK,
            InvocationResponse::new().with_http("res", &http),
        )
    }

    /// The Status document as an HTTP response (JSON, or text lines): what the `Status`
    /// function answers through the host, and `GET /Status` on the handler itself locally.
    pub async fn status_response(&self, text: bool) -> HttpResponse {
        let report = status::status(
            &self.store,
            &self.source,
            &self.target,
            &self.settings.config,
        )
        .await;
        match (report.map(|d| (serde_json::to_value(&d), d)), text) {
            (Ok((_, doc)), true) => HttpResponse::text(200, doc.to_string()),
            (Ok((Ok(v), _)), false) => HttpResponse::json(200, &v),
            (Ok((Err(e), _)), false) => HttpResponse::json(500, &json!({ "error": e.to_string() })),
            (Err(e), _) => HttpResponse::json(500, &json!({ "error": e.to_string() })),
        }
    }
}

/// Who holds a lease: the instance, the process and the invocation.
pub(super) fn holder(invocation: &str) -> String {
    format!(
        "{}/{}/{invocation}",
        std::env::var("WEBSITE_INSTANCE_ID")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "local".into()),
        std::process::id()
    )
}

/// The timer's table upkeep, as the config sets it.
fn upkeep_options(opts: &SyncOptions) -> crate::maintain::MaintainOptions {
    crate::maintain::MaintainOptions {
        target_file_size: opts.target_file_size,
        retain: std::time::Duration::from_secs(
            opts.config
                .retain_hours
                .unwrap_or(crate::maintain::DEFAULT_RETAIN_HOURS)
                .saturating_mul(3600),
        ),
        ..Default::default()
    }
}

fn newest_resolved(buffered: &[super::store::Buffered]) -> Option<Hlc> {
    buffered
        .iter()
        .filter_map(|b| match b.name {
            ObjectName::Resolved(r) => Some(r),
            ObjectName::Data(_) => None,
        })
        .max()
}

/// Longest event subject accepted: `/blobServices/default/containers/<63>/blobs/<1024>`.
const MAX_SUBJECT_BYTES: usize = 1200;

/// Untrusted text for a log line or reply: at most 256 characters, the length said.
pub(super) fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 256;
    match s.char_indices().nth(MAX) {
        None => s.into(),
        Some((i, _)) => format!("{}…({} bytes)", &s[..i], s.len()).into(),
    }
}

/// An invocation waiting for a lease another one holds: at most a lease term (then the lease
/// has expired if its holder crashed, and is taken over), said once.
pub(super) struct LeaseWait {
    since: Instant,
    limit: Duration,
    logged: bool,
}

impl LeaseWait {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            since: Instant::now(),
            limit: lease_wait(ttl),
            logged: false,
        }
    }

    /// Sleeps one poll; `LeaseBusy` (retryable) once the wait is longer than a lease term.
    /// `first`: the log line of the first wait.
    pub(super) async fn poll(
        &mut self,
        holder: String,
        first: impl FnOnce(&str),
    ) -> Result<(), ServeError> {
        let waited = self.since.elapsed();
        if waited > self.limit {
            return Err(ServeError::LeaseBusy {
                holder,
                waited_s: waited.as_secs(),
            });
        }
        if !self.logged {
            first(&holder);
            self.logged = true;
        }
        tokio::time::sleep(LEASE_POLL).await;
        Ok(())
    }
}

/// How often a waiting RESOLVED invocation looks at the lease and its marker.
pub(super) const LEASE_POLL: Duration = Duration::from_millis(500);

/// How long a RESOLVED invocation waits for a held lease: one full term, so a crashed holder's
/// lease has expired by then and is taken over.
pub fn lease_wait(ttl: Duration) -> Duration {
    ttl + Duration::from_secs(2)
}
