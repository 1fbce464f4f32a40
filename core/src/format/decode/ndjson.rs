//! NDJSON data files (format spec §3): `wrapped` and `bare` envelopes, one message per line.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::ops::Range;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};
use serde_json::value::RawValue;

use super::json_fields::{After, Member, Members, Raw};
use super::json_scan::{self, ScanError};
use super::{
    BatchStream, DecodeError, DecodeOptions, SliceFilter, SliceRows, kept_rows, ndjson_memo,
};
use crate::format::batch::{self, MetaBuilder, Op};
use crate::format::column::ColumnBuilder;
use crate::format::hlc::Hlc;
use crate::format::keys::KeyEvidence;
use crate::format::types::ColumnType;
use crate::format::values;

/// Streams an NDJSON changefeed file as change batches.
pub struct NdjsonDecoder<R> {
    file: String,
    reader: R,
    line_no: u64,
    batch_size: usize,
    primary_key: Option<Vec<String>>,
    types: BTreeMap<String, ColumnType>,
    configured: BTreeMap<String, ColumnType>,
    /// Data columns in order of first appearance (JSON objects are sorted by name, §3.4).
    order: Vec<String>,
    /// `order`, sorted: whether a message brings a new column, without a scan per name.
    known: Vec<String>,
    /// The lines of one batch, one after another (one buffer reused, not a string per line).
    text: String,
    evidence: KeyEvidence,
    /// A configured key column with a reserved name: every message is refused.
    reserved_key: Option<String>,
    max_line_bytes: usize,
    /// Decompressed bytes read so far.
    input_bytes: u64,
    /// A `bare` envelope message was read (set while parsing, which borrows `self` shared).
    bare: std::cell::Cell<bool>,
    /// Other slices' rows are not built into columns (see [`NdjsonDecoder::slice_keep`]).
    slice: Option<SliceFilter>,
    /// Rows left out under `slice`.
    skipped: u64,
    /// Under `slice`, the lines' slices and batches an earlier pass over the file learnt
    /// ([`DecodeOptions::slice_rows`]): only the lines kept are parsed.
    known_slices: Option<Arc<SliceRows>>,
    /// Under `slice`, without them: the lines' slices and batches being learnt, for the
    /// interval's later slices ([`BatchStream::slice_rows`]); dropped on an error.
    found: Option<SliceRows>,
    /// `found` (or `known_slices`) once the whole file was read.
    slices_done: Option<Arc<SliceRows>>,
    /// Lines and batches read so far (blank lines not counted): where `known_slices` is.
    lines_read: usize,
    batches_read: usize,
    /// Row members a message had in the last batch: the next batch's [`Store`] is sized by it.
    members_per_line: usize,
    /// Emit each change's `before` as a row ([`DecodeOptions::before`]).
    before: bool,
    done: bool,
}

/// Lines are gathered into a batch until it holds this many bytes (or `batch_size` lines).
const BATCH_TEXT_BYTES: usize = 16 << 20;

/// A failed read of line `line`, named.
fn read_error(file: &str, line: u64, e: std::io::Error) -> DecodeError {
    let message = if e.kind() == std::io::ErrorKind::InvalidData {
        "not UTF-8 (or a corrupt compressed stream)".to_owned()
    } else {
        e.to_string()
    };
    DecodeError::Line {
        file: file.to_owned(),
        line,
        message,
    }
}

/// One line read.
enum Line {
    End,
    /// Empty or white space only: not a message, not counted.
    Blank,
    /// Where its text (line end left out) stands in the batch's text; empty for a line passed
    /// over ([`NdjsonDecoder::skip_line`]).
    Text(Range<usize>),
}

/// One message, borrowing from its line; its members and key items stand in its batch's
/// [`Store`].
struct Message<'a> {
    line: u64,
    op: Op,
    updated: Hlc,
    mvcc: Option<Hlc>,
    /// The row's members in [`Store::rows`].
    after: Range<usize>,
    /// The `key` array's items in [`Store::keys`].
    key: Range<usize>,
    key_raw: Option<&'a str>,
    /// The `before` object's members in [`Store::rows`], kept only under
    /// [`DecodeOptions::before`].
    before: Option<Range<usize>>,
}

/// A batch's parsed members, every message's in one buffer (not three `Vec`s a message).
struct Store<'a> {
    /// Rows' members (`after`, a bare envelope's columns, `before`), one run per object.
    rows: Vec<Member<'a>>,
    /// Items of the messages' `key` arrays.
    keys: Vec<Raw<'a>>,
    /// The message being parsed: its top level's members (reused line after line).
    top: Vec<Member<'a>>,
}

impl<'a> Store<'a> {
    /// Room for `lines` messages of `members` row members each, as the last batch had.
    fn with_capacity(lines: usize, members: usize) -> Self {
        Self {
            rows: Vec::with_capacity(lines * members),
            keys: Vec::with_capacity(lines),
            top: Vec::with_capacity(8),
        }
    }

    fn after(&self, m: &Message<'a>) -> &[Member<'a>] {
        &self.rows[m.after.clone()]
    }

    fn key(&self, m: &Message<'a>) -> &[Raw<'a>] {
        &self.keys[m.key.clone()]
    }
}

impl<R: BufRead> NdjsonDecoder<R> {
    pub fn new(file: &str, reader: R, opts: &DecodeOptions) -> Self {
        let mut order: Vec<String> = opts.primary_key.clone().unwrap_or_default();
        order.dedup();
        let mut known = order.clone();
        known.sort();
        known.dedup();
        let (known_slices, found) = match &opts.slice_rows {
            Some(s) if s.fits_lines(opts) => (Some(s.clone()), None),
            _ => (None, SliceRows::new_lines(opts)),
        };
        let bare = known_slices
            .as_ref()
            .and_then(|s| s.lines())
            .is_some_and(|l| l.bare);
        Self {
            file: file.to_owned(),
            reader,
            line_no: 0,
            batch_size: opts.batch_size.max(1),
            primary_key: opts.primary_key.clone(),
            types: opts.columns.clone(),
            configured: opts.columns.clone(),
            order,
            known,
            text: String::new(),
            evidence: KeyEvidence::default(),
            reserved_key: opts
                .primary_key
                .iter()
                .flatten()
                .find(|c| batch::is_reserved(c))
                .cloned(),
            max_line_bytes: opts.max_line_bytes.max(1),
            input_bytes: 0,
            bare: std::cell::Cell::new(bare),
            slice: opts.slice,
            skipped: 0,
            known_slices,
            found,
            slices_done: None,
            lines_read: 0,
            batches_read: 0,
            members_per_line: 0,
            before: opts.before,
            done: false,
        }
    }

    fn line_error(&self, line: u64, message: impl Into<String>) -> DecodeError {
        DecodeError::Line {
            file: self.file.clone(),
            line,
            message: message.into(),
        }
    }

    /// Reads the next batch of lines into `self.text`: each line's number and range there,
    /// without its line end; blank lines are skipped.
    fn read_lines(&mut self) -> Result<Vec<(u64, Range<usize>)>, DecodeError> {
        let mut lines = Vec::with_capacity(self.batch_size.min(1 << 16));
        self.text.clear();
        while lines.len() < self.batch_size && self.text.len() < BATCH_TEXT_BYTES {
            match self.read_line()? {
                Line::End => {
                    self.done = true;
                    break;
                }
                Line::Blank => {}
                Line::Text(at) => lines.push((self.line_no, at)),
            }
        }
        Ok(lines)
    }

    /// Reads the next line onto `self.text`: where it stands there, without its line end.
    fn read_line(&mut self) -> Result<Line, DecodeError> {
        let start = self.text.len();
        // One byte past the limit tells an over-long line from one exactly at it.
        let limit = self.max_line_bytes as u64 + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_line(&mut self.text)
            .map_err(|e| read_error(&self.file, self.line_no + 1, e))?;
        if n == 0 {
            return Ok(Line::End);
        }
        self.input_bytes += n as u64;
        self.line_no += 1;
        let line = &self.text[start..];
        if n as u64 >= limit && !line.ends_with('\n') {
            return Err(self.line_error(
                self.line_no,
                format!(
                    "longer than {} bytes (max_line_bytes; CockroachDB writes no row that large)",
                    self.max_line_bytes
                ),
            ));
        }
        if line.trim().is_empty() {
            self.text.truncate(start);
            return Ok(Line::Blank);
        }
        let end = start + line.trim_end_matches(['\n', '\r']).len();
        Ok(Line::Text(start..end))
    }

    /// Passes over the next line without keeping it (a line the slices known say is not kept:
    /// it was checked when they were learnt), finding its end by SIMD search in the reader's
    /// buffer rather than copying and checking it as UTF-8.
    fn skip_line(&mut self) -> Result<Line, DecodeError> {
        let (mut n, mut blank, mut odd) = (0usize, true, Vec::new());
        loop {
            let buf = self
                .reader
                .fill_buf()
                .map_err(|e| read_error(&self.file, self.line_no + 1, e))?;
            if buf.is_empty() {
                break;
            }
            let (piece, end) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            if blank && !piece.iter().all(u8::is_ascii_whitespace) {
                // Blank only if its other bytes are Unicode white space (`str::trim`'s rule).
                blank = piece.iter().all(|b| b.is_ascii_whitespace() || *b >= 0x80);
                if blank {
                    odd.extend_from_slice(piece);
                }
            }
            let len = piece.len();
            self.reader.consume(len);
            n += len;
            if end {
                break;
            }
        }
        if n == 0 {
            return Ok(Line::End);
        }
        self.input_bytes += n as u64;
        self.line_no += 1;
        let blank = blank
            && (odd.is_empty() || std::str::from_utf8(&odd).is_ok_and(|t| t.trim().is_empty()));
        Ok(if blank { Line::Blank } else { Line::Text(0..0) })
    }

    /// A batch's lines under slices known: the batch's `kept` lines (blank ones not counted)
    /// read as [`Self::read_lines`] reads them, the others passed over.
    fn read_known_lines(&mut self, kept: &[bool]) -> Result<Vec<(u64, Range<usize>)>, DecodeError> {
        let mut lines = Vec::with_capacity(kept.iter().filter(|k| **k).count());
        self.text.clear();
        let mut at = 0;
        while at < kept.len() {
            let line = if kept[at] {
                self.read_line()?
            } else {
                self.skip_line()?
            };
            match line {
                Line::End => return Err(self.changed(self.line_no + 1)),
                Line::Blank => {}
                Line::Text(r) => {
                    if kept[at] {
                        lines.push((self.line_no, r));
                    }
                    at += 1;
                }
            }
        }
        Ok(lines)
    }

    fn parse<'a>(
        &self,
        line: u64,
        text: &'a str,
        store: &mut Store<'a>,
    ) -> Result<Message<'a>, DecodeError> {
        let bad = |m: String| self.line_error(line, m);
        let Store { rows, keys, top } = store;
        let after = json_scan::envelope_into(text, top, rows).map_err(|e: ScanError| {
            let what = if e.eof {
                "truncated JSON message"
            } else {
                "malformed JSON message"
            };
            bad(format!("{what}: {e}"))
        })?;
        let hlc = |v: Option<Raw<'_>>, what: &str| -> Result<Option<Hlc>, DecodeError> {
            match v.map(|r| r.get()) {
                None | Some("null") => Ok(None),
                Some(raw) => {
                    let s = values::json_string(raw)
                        .map_err(|_| bad(format!("`{what}` is not a string")))?;
                    Hlc::parse_decimal(&s)
                        .map(Some)
                        .map_err(|e| bad(format!("`{what}`: {e}")))
                }
            }
        };
        let (op, after, meta) = if let Some(after) = after {
            // Wrapped envelope.
            let before = top
                .field("before")
                .map(|b| b.get() != "null")
                .unwrap_or(false);
            match after {
                After::Null => (Op::Delete, rows.len()..rows.len(), None),
                After::Row(at) => (if before { Op::Update } else { Op::Create }, at, None),
                After::Other => return Err(bad("`after` is not an object".into())),
            }
        } else if let Some(meta) = top.field("__crdb__") {
            // Bare envelope: columns at top level, metadata under `__crdb__`. Deletes cannot be told
            // from updates (format spec §3.3), so every row is an upsert.
            let meta = json_scan::object(meta.get())
                .map_err(|e| bad(format!("`__crdb__` is not an object: {e}")))?;
            let start = rows.len();
            rows.extend(top.iter().filter(|(n, _)| n != "__crdb__").cloned());
            self.bare.set(true);
            (Op::Create, start..rows.len(), Some(meta))
        } else if top.contains_key("resolved") {
            return Err(bad("a resolved message inside a data file".into()));
        } else {
            return Err(bad(
                "neither a wrapped (`after`) nor a bare (`__crdb__`) changefeed message".into(),
            ));
        };
        let fields: &[Member<'a>] = meta.as_deref().unwrap_or(&top[..]);
        let updated = hlc(fields.field("updated"), "updated")?;
        let mvcc = hlc(fields.field("mvcc_timestamp"), "mvcc_timestamp")?;
        let updated = updated.or(mvcc).ok_or_else(|| {
            bad(
                "message has no `updated` timestamp: create the changefeed WITH updated, resolved"
                    .into(),
            )
        })?;
        let key_raw = fields.field("key").map(|k| k.get());
        let key = match key_raw {
            None | Some("null") => keys.len()..keys.len(),
            Some(k) => {
                json_scan::array_into(k, keys).map_err(|_| bad("`key` is not an array".into()))?
            }
        };
        if op == Op::Delete && key.is_empty() {
            return Err(bad("delete without a `key`".into()));
        }
        // Bare envelope: a top-level `before` is a column like any other.
        let before = meta.is_none().then(|| top.field("before")).flatten();
        self.check_names(line, &rows[after.clone()], before)?;
        self.check_depths(line, &rows[after.clone()], &keys[key.clone()])?;
        // Kept as a row of its own when asked for (scd2); `null` (no previous row) is none.
        let before = match before.filter(|b| self.before && b.get() != "null") {
            Some(b) => {
                let at = json_scan::object_into(b.get(), rows)
                    .map_err(|e| bad(format!("`before` is not an object: {e}")))?;
                self.check_depths(line, &rows[at.clone()], &[])?;
                Some(at)
            }
            None => None,
        };
        Ok(Message {
            line,
            op,
            updated,
            mvcc,
            after,
            key,
            key_raw,
            before,
        })
    }

    /// Refuses source columns with names crdb-delta reserves ([`batch::RESERVED_PREFIX`]): in
    /// `after` (or the bare envelope's top level), in `before`, and among the key columns the
    /// `key` array fills.
    fn check_names(
        &self,
        line: u64,
        after: &[Member<'_>],
        before: Option<Raw<'_>>,
    ) -> Result<(), DecodeError> {
        let reserved = |column: &str| DecodeError::ReservedColumn {
            file: self.file.clone(),
            at: format!("line {line}"),
            column: column.to_owned(),
        };
        if let Some(c) = after.keys().find(|c| batch::is_reserved(c)) {
            return Err(reserved(c));
        }
        if let Some(c) = &self.reserved_key {
            return Err(reserved(c));
        }
        // `before` is otherwise never parsed: only when the prefix occurs in it at all.
        if let Some(b) = before.filter(|b| b.get().contains(batch::RESERVED_PREFIX)) {
            let cols: BTreeMap<Cow<'_, str>, serde::de::IgnoredAny> = serde_json::from_str(b.get())
                .map_err(|e| self.line_error(line, format!("`before` is not an object: {e}")))?;
            if let Some(c) = cols.keys().find(|c| batch::is_reserved(c)) {
                return Err(reserved(c));
            }
        }
        Ok(())
    }

    /// Refuses column values nested deeper than [`values::MAX_JSON_DEPTH`] before anything
    /// walks them recursively (type inference, JSONB rendering), naming the column. The depth
    /// was counted by the scanner.
    fn check_depths(
        &self,
        line: u64,
        after: &[Member<'_>],
        key: &[Raw<'_>],
    ) -> Result<(), DecodeError> {
        let too_deep = |raw: &Raw<'_>| raw.depth() > values::MAX_JSON_DEPTH;
        let column = if let Some((name, _)) = after.iter().find(|(_, v)| too_deep(v)) {
            name.to_string()
        } else if let Some(i) = key.iter().position(too_deep) {
            match &self.primary_key {
                Some(k) if i < k.len() => k[i].clone(),
                _ => format!("key[{i}]"),
            }
        } else {
            return Ok(());
        };
        Err(DecodeError::Value {
            file: self.file.clone(),
            at: format!("line {line}"),
            column,
            message: values::ValueError::TooDeep.to_string(),
        })
    }

    /// One column of a batch, typed as learnt so far. A column seen only as NULL has no type
    /// yet: an Arrow `Null` column, which the window leaves out of a new table until a value
    /// types it (instead of making it `string` for good).
    fn column(
        &self,
        name: &str,
        messages: &[Message<'_>],
        store: &Store<'_>,
    ) -> Result<(Field, ArrayRef), DecodeError> {
        let Some(ty) = self.types.get(name) else {
            return Ok((
                Field::new(name, DataType::Null, true),
                arrow_array::new_null_array(&DataType::Null, messages.len()),
            ));
        };
        let values: Vec<_> =
            column_values(name, self.primary_key.as_deref(), messages, store).collect();
        // A value's text is at most its JSON text.
        let bytes = values
            .iter()
            .filter_map(|(_, r)| r.map(|r| r.get().len()))
            .sum();
        let mut b = ColumnBuilder::with_bytes(ty, messages.len(), bytes);
        for (m, raw) in values {
            let appended = match raw {
                Some(raw) if raw.is_plain_string() => b.append_plain_json_string(raw.get()),
                Some(raw) => b.append_json(raw.get()),
                None => {
                    b.append_null();
                    Ok(())
                }
            };
            appended.map_err(|message| DecodeError::Value {
                file: self.file.clone(),
                at: format!("line {}", m.line),
                column: name.to_owned(),
                message: message.to_string(),
            })?;
        }
        Ok((Field::new(name, ty.arrow_type(), true), b.finish()))
    }

    /// Each message's slice under [`DecodeOptions::slice`] (`None`: outside the interval). The
    /// key columns are built as the batch builds them, so [`crate::apply::slice_of`] sees what
    /// the window will see. `None` without a filter, or when a key value does not convert: the
    /// whole batch is then built, and names it.
    fn slices(&self, messages: &[Message<'_>], store: &Store<'_>) -> Option<Vec<Option<u32>>> {
        let filter = self.slice?;
        let keys: Vec<ArrayRef> = self
            .primary_key
            .as_deref()?
            .iter()
            .map(|k| self.column(k, messages, store).ok().map(|(_, a)| a))
            .collect::<Option<_>>()?;
        let slices = messages
            .iter()
            .enumerate()
            .map(|(r, m)| {
                let inside = filter.lo.is_none_or(|lo| m.updated > lo) && m.updated <= filter.hi;
                inside.then(|| crate::apply::slice_of(&keys, r, filter.of))
            })
            .collect();
        Some(slices)
    }

    /// Learns column types from JSON values; configured types never change.
    fn learn_types(&mut self, messages: &[Message<'_>], store: &Store<'_>) {
        for name in &self.order {
            if self.configured.contains_key(name) {
                continue;
            }
            let mut ty = self.types.get(name).cloned();
            // Text and JSONB accept every value: nothing to learn from more of them.
            if matches!(ty, Some(ColumnType::Text | ColumnType::Json)) {
                continue;
            }
            let before = ty.clone();
            for (_, raw) in column_values(name, self.primary_key.as_deref(), messages, store) {
                let Some(raw) = raw.map(Raw::get) else {
                    continue;
                };
                let Some(seen) = infer(raw) else {
                    continue;
                };
                ty = Some(match ty {
                    None => seen,
                    Some(cur) if accepts(&cur, &seen, raw) => cur,
                    Some(cur) => cur.widen(&seen),
                });
            }
            if ty != before
                && let Some(ty) = ty
            {
                self.types.insert(name.clone(), ty);
            }
        }
    }

    /// The messages of a batch's `lines` (each change followed by its `before` when asked for),
    /// their members in `store`.
    fn messages<'a>(
        &mut self,
        text: &'a str,
        lines: &[(u64, Range<usize>)],
        store: &mut Store<'a>,
    ) -> Result<Vec<Message<'a>>, DecodeError> {
        let mut messages = lines
            .iter()
            .map(|(n, r)| self.parse(*n, &text[r.clone()], store))
            .collect::<Result<Vec<_>, _>>()?;
        self.members_per_line = store.rows.len().div_ceil(lines.len().max(1));
        if self.before {
            let key = self.primary_key.as_deref().unwrap_or_default();
            messages = with_befores(messages, key, store);
        }
        Ok(messages)
    }

    fn decode_batch(
        &mut self,
        text: &str,
        lines: &[(u64, Range<usize>)],
    ) -> Result<RecordBatch, DecodeError> {
        let mut store = Store::with_capacity(lines.len(), self.members_per_line);
        let messages = self.messages(text, lines, &mut store)?;
        for m in &messages {
            for name in store.after(m).keys() {
                if let Err(at) = self.known.binary_search_by(|c| c.as_str().cmp(name)) {
                    self.known.insert(at, name.to_owned());
                    self.order.push(name.to_owned());
                }
            }
            if matches!(m.op, Op::Create | Op::Update) {
                let after = store.after(m).iter_raw().map(|(k, v)| (k, v.get()));
                self.evidence
                    .observe_json(after, store.key(m).iter().map(|k| k.get()));
            }
        }
        self.evidence.observe_columns(&self.order);
        self.learn_types(&messages, &store);

        // Every line was parsed, and its columns and types learnt, whatever its slice: each
        // slice's batches carry the same columns and types.
        let slices = self.slices(&messages, &store);
        if let Some(found) = &mut self.found {
            match &slices {
                Some(slices) => {
                    // A line's slice is its change's (a `before` shares its key).
                    for (m, s) in messages.iter().zip(slices) {
                        if m.op != Op::Before {
                            found.push(*s);
                        }
                    }
                    if let Some(batches) = found.lines_mut() {
                        batches.push(lines.len(), &self.order, &self.types);
                    }
                }
                None => self.found = None,
            }
        }
        let keep = slices
            .zip(self.slice)
            .map(|(s, f)| kept_rows(s.into_iter(), f.index));
        let messages = match keep {
            Some(keep) if keep.iter().any(|k| !k) => {
                let kept: Vec<_> = messages
                    .into_iter()
                    .zip(keep)
                    .filter_map(|(m, k)| k.then_some(m))
                    .collect();
                // Rows of changes: a `before` is not one.
                let changes = kept.iter().filter(|m| m.op != Op::Before).count();
                self.skipped += (lines.len() - changes) as u64;
                kept
            }
            _ => messages,
        };
        self.build(messages, &store)
    }

    /// The next batch under slices an earlier pass learnt ([`Self::known_slices`]): the
    /// batch's lines that [`kept_rows`] keeps are read and parsed, the others passed over; its
    /// columns and types are the ones that pass had at the batch's end. Past the last batch,
    /// only blank lines may follow.
    fn next_known(&mut self, known: &SliceRows) -> Option<Result<RecordBatch, DecodeError>> {
        // Known slices fit only a decoder under a filter (`SliceRows::fits_lines`).
        let (batches, filter) = (known.lines()?, self.slice?);
        let Some(batch) = batches.batches.get(self.batches_read) else {
            self.done = true;
            let end = loop {
                match self.skip_line() {
                    Ok(Line::Blank) => {}
                    Ok(Line::End) => break self.finish(),
                    Ok(Line::Text(_)) => break Err(self.changed(self.line_no)),
                    Err(e) => break Err(e),
                }
            };
            return end.err().map(Err);
        };
        let rows = self.lines_read..self.lines_read + batch.lines;
        if rows.end > known.len() {
            self.done = true;
            return Some(Err(self.changed(self.line_no + 1)));
        }
        let slices = rows.map(|r| known.slice(r));
        let kept = kept_rows(slices, filter.index);
        let result = self.read_known_lines(&kept).and_then(|lines| {
            // Taken out while the batch borrows from it, then put back to be reused.
            let text = std::mem::take(&mut self.text);
            let result = self.decode_known_batch(batch, &batches.order, &text, &lines);
            self.text = text;
            result
        });
        self.lines_read += batch.lines;
        self.batches_read += 1;
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }

    /// A batch of `batch.lines` lines under known slices, of which `lines` were kept: those
    /// parsed, its columns (the first of `order`) and types the batch's.
    fn decode_known_batch(
        &mut self,
        batch: &ndjson_memo::Batch,
        order: &[String],
        text: &str,
        lines: &[(u64, Range<usize>)],
    ) -> Result<RecordBatch, DecodeError> {
        let mut store = Store::with_capacity(lines.len(), self.members_per_line);
        let messages = self.messages(text, lines, &mut store)?;
        self.skipped += (batch.lines - lines.len()) as u64;
        self.order.clear();
        self.order.extend_from_slice(&order[..batch.columns]);
        self.types.clone_from(&batch.types);
        self.build(messages, &store)
    }

    /// The error for a file that does not read as it did in an earlier pass.
    fn changed(&self, line: u64) -> DecodeError {
        self.line_error(
            line,
            "the file reads differently than in an earlier pass over this interval (changed since?)",
        )
    }

    /// The end of the file, read without error: the slices learnt (or given) are complete, and
    /// those given must have been used up.
    fn finish(&mut self) -> Result<(), DecodeError> {
        if let Some(known) = &self.known_slices {
            let all = known.lines().map_or(0, |b| b.batches.len());
            if self.batches_read != all || self.lines_read != known.len() {
                return Err(self.changed(self.line_no));
            }
            self.slices_done = Some(known.clone());
        }
        if let Some(mut found) = self.found.take() {
            if let Some(batches) = found.lines_mut() {
                batches.bare = self.bare.get();
            }
            self.slices_done = Some(Arc::new(found));
        }
        Ok(())
    }

    /// A batch's columns from its messages, with the metadata columns.
    fn build(
        &self,
        messages: Vec<Message<'_>>,
        store: &Store<'_>,
    ) -> Result<RecordBatch, DecodeError> {
        let data = self
            .order
            .iter()
            .map(|name| self.column(name, &messages, store))
            .collect::<Result<Vec<_>, _>>()?;
        let mut meta = MetaBuilder::new(messages.len());
        for m in &messages {
            meta.append(m.op, m.updated, m.mvcc, m.key_raw, &self.file, m.line);
        }
        batch::assemble(data, meta.finish())
            .map_err(|e| self.line_error(messages[0].line, e.to_string()))
    }
}

impl<R: BufRead> Iterator for NdjsonDecoder<R> {
    type Item = Result<RecordBatch, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(known) = self.known_slices.clone() {
            return self.next_known(&known);
        }
        let lines = match self.read_lines() {
            Ok(lines) => lines,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        if lines.is_empty() {
            return self.finish().err().map(Err);
        }
        // Taken out while the batch borrows from it, then put back to be reused.
        let text = std::mem::take(&mut self.text);
        let result = self.decode_batch(&text, &lines);
        self.text = text;
        match result {
            Err(e) => {
                self.done = true;
                self.found = None;
                Some(Err(e))
            }
            Ok(_) if self.done => Some(self.finish().and(result)),
            Ok(_) => Some(result),
        }
    }
}

impl<R: BufRead + Send> BatchStream for NdjsonDecoder<R> {
    fn key_evidence(&self) -> &KeyEvidence {
        &self.evidence
    }
    fn column_types(&self) -> &BTreeMap<String, ColumnType> {
        &self.types
    }
    fn input_bytes(&self) -> u64 {
        self.input_bytes
    }
    fn bare_envelope(&self) -> bool {
        self.bare.get()
    }
    fn rows_skipped(&self) -> u64 {
        self.skipped
    }
    fn slice_rows(&self) -> Option<Arc<SliceRows>> {
        self.slices_done.clone()
    }
}

/// Each message followed by its `before` as a message of its own ([`Op::Before`]): same line,
/// key and timestamps, the `before` object's members as its columns but the key's, which come
/// from the message's `key` (as a delete's do): a `before` belongs to its change's key.
fn with_befores<'a>(
    messages: Vec<Message<'a>>,
    key: &[String],
    store: &mut Store<'a>,
) -> Vec<Message<'a>> {
    let mut out = Vec::with_capacity(messages.len() * 2);
    for mut m in messages {
        let before = m.before.take().map(|at| {
            if !key.iter().any(|k| store.rows[at.clone()].contains_key(k)) {
                return at;
            }
            // The members but the key's, as a run of their own.
            let start = store.rows.len();
            for i in at {
                if !key.iter().any(|k| store.rows[i].0 == k.as_str()) {
                    let member = store.rows[i].clone();
                    store.rows.push(member);
                }
            }
            start..store.rows.len()
        });
        let before = before.map(|fields| Message {
            line: m.line,
            op: Op::Before,
            updated: m.updated,
            mvcc: m.mvcc,
            after: fields,
            key: m.key.clone(),
            key_raw: m.key_raw,
            before: None,
        });
        out.push(m);
        out.extend(before);
    }
    out
}

/// One column's value in each message: from `after`, or for a key column missing there (a
/// family without it, a delete), from the `key` array when the key is known.
fn column_values<'m, 'a>(
    name: &'m str,
    primary_key: Option<&[String]>,
    messages: &'m [Message<'a>],
    store: &'m Store<'a>,
) -> impl Iterator<Item = (&'m Message<'a>, Option<Raw<'a>>)> + 'm {
    let key_pos = primary_key.and_then(|k| k.iter().position(|c| c == name));
    // Rows of a file share their members: where the name was in the last row is the first guess.
    let mut hint = 0;
    messages.iter().map(move |m| {
        let raw = store
            .after(m)
            .field_hinted(name, &mut hint)
            .or_else(|| key_pos.and_then(|i| store.key(m).get(i).copied()));
        (m, raw)
    })
}

/// The type a JSON value suggests (format spec §3.6; README "Type mapping").
fn infer(raw: &str) -> Option<ColumnType> {
    let raw = raw.trim();
    Some(match raw.as_bytes().first()? {
        b'n' => return None,
        b't' | b'f' => ColumnType::Boolean,
        // NaN/±Infinity strings are what FLOAT columns send for those values: no evidence of text.
        b'"' if matches!(raw, "\"NaN\"" | "\"Infinity\"" | "\"-Infinity\"") => return None,
        b'"' => ColumnType::Text,
        b'{' => ColumnType::Json,
        b'[' => {
            let items: Vec<&RawValue> = serde_json::from_str(raw).ok()?;
            let mut item: Option<ColumnType> = None;
            for i in &items {
                if let Some(t) = infer(i.get()) {
                    item = Some(match item {
                        None => t,
                        Some(cur) if accepts(&cur, &t, i.get()) => cur,
                        Some(cur) => cur.widen(&t),
                    });
                }
            }
            match item {
                Some(ColumnType::Json | ColumnType::List(_)) => ColumnType::Json,
                Some(t) => ColumnType::List(Box::new(t)),
                // An empty (or all-null) array says nothing about its element type.
                None => return None,
            }
        }
        _ if raw.contains(['.', 'e', 'E']) => ColumnType::Float64,
        _ if raw.parse::<i64>().is_ok() => ColumnType::Int64,
        // Integers beyond 64 bits (DECIMAL, unconstrained): exact text.
        _ => ColumnType::Text,
    })
}

/// Whether a column of type `cur` can take a value that suggested `seen`.
fn accepts(cur: &ColumnType, seen: &ColumnType, raw: &str) -> bool {
    cur == seen
        || matches!(cur, ColumnType::Text | ColumnType::Json)
        || (*cur == ColumnType::Float64 && *seen == ColumnType::Int64)
        || (matches!(cur, ColumnType::Float64 | ColumnType::Float32)
            && matches!(raw.trim(), "\"NaN\"" | "\"Infinity\"" | "\"-Infinity\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::batch::{KEY, OP, SOURCE_ROW, UPDATED};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Float64Type, Int64Type};

    fn decode(text: &str, opts: &DecodeOptions) -> Result<Vec<RecordBatch>, DecodeError> {
        NdjsonDecoder::new("t.ndjson", std::io::Cursor::new(text.to_owned()), opts).collect()
    }

    #[test]
    fn wrapped_messages() {
        let text = concat!(
            r#"{"after": {"id": 1, "name": "Petee H", "score": 1.5}, "key": [1], "updated": "1576704616208701300.0000000000"}"#,
            "\n",
            r#"{"after": null, "key": [5], "updated": "1576704616208701300.0000000001"}"#,
            "\n",
            r#"{"after": {"id": 2, "name": null, "score": 2}, "before": {"id": 2, "name": "x", "score": 1}, "key": [2], "mvcc_timestamp": "1576704616208701300.0000000003", "updated": "1576704616208701300.0000000002"}"#,
            "\n"
        );
        let opts = DecodeOptions {
            primary_key: Some(vec!["id".into()]),
            ..Default::default()
        };
        let b = &decode(text, &opts).unwrap()[0];
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        assert_eq!(col("id").as_primitive::<Int64Type>().values(), &[1, 5, 2]);
        assert!(col("name").is_null(1) && col("name").is_null(2));
        assert_eq!(col("score").as_primitive::<Float64Type>().value(2), 2.0);
        let ops: Vec<_> = col(OP)
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap().to_owned())
            .collect();
        assert_eq!(ops, ["c", "d", "u"]);
        let upd = col(UPDATED);
        let upd = upd.as_primitive::<Decimal128Type>();
        assert_eq!(
            Hlc::from_decimal_i128(upd.value(1)).unwrap(),
            Hlc::new(1_576_704_616_208_701_300, 1)
        );
        assert_eq!(col(KEY).as_string::<i32>().value(1), "[5]");
        assert_eq!(
            col(SOURCE_ROW).as_primitive::<Int64Type>().values(),
            &[1, 2, 3]
        );
    }

    /// A string without escapes is copied from the line as it stands; one with escapes is
    /// decoded. Both end the same in every kind of column, and a bad value is still refused.
    #[test]
    fn strings_with_and_without_escapes_decode_alike() {
        let line = |id: i32, s: &str| {
            format!(
                r#"{{"after": {{"d": {s}, "id": {id}, "j": {s}, "t": {s}}}, "key": [{id}], "updated": "1.0000000000"}}"#
            )
        };
        let text = [line(1, r#""2024-05-03""#), line(2, r#""2024-05\u002d03""#)].join("\n");
        let opts = DecodeOptions {
            primary_key: Some(vec!["id".into()]),
            columns: [
                ("d", ColumnType::Date),
                ("j", ColumnType::Json),
                ("t", ColumnType::Text),
            ]
            .into_iter()
            .map(|(n, t)| (n.to_owned(), t))
            .collect(),
            ..Default::default()
        };
        let b = &decode(&text, &opts).unwrap()[0];
        for name in ["d", "j", "t"] {
            let c = b.column_by_name(name).unwrap();
            let row = |r| arrow_cast::display::array_value_to_string(c, r).unwrap();
            assert_eq!(row(0), row(1), "{name}");
        }
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_string::<i32>()
                .value(0)
                .to_owned()
        };
        assert_eq!(col("t"), "2024-05-03");
        assert_eq!(col("j"), r#""2024-05-03""#, "JSONB keeps its quotes");

        let bad = line(3, r#""not a date""#);
        let err = decode(&bad, &opts).unwrap_err().to_string();
        assert_eq!(
            err,
            "t.ndjson: line 1: column `d`: `not a date` is not a date (YYYY-MM-DD)"
        );
    }

    #[test]
    fn bare_messages_and_key_fill_for_families() {
        let text = concat!(
            r#"{"__crdb__": {"key": ["washington dc", 7], "updated": "10.0000000000"}, "owner": "Ashley"}"#,
            "\n"
        );
        let opts = DecodeOptions {
            primary_key: Some(vec!["city".into(), "id".into()]),
            ..Default::default()
        };
        let b = &decode(text, &opts).unwrap()[0];
        assert_eq!(
            b.column_by_name("city")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "washington dc"
        );
        assert_eq!(
            b.column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            7
        );
        assert_eq!(
            b.column_by_name("owner")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "Ashley"
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let ok = r#"{"after": {"id": 1}, "key": [1], "updated": "1.0000000000"}"#;
        for (bad, needle) in [
            (
                r#"{"after": {"id": 1}, "key": [1], "updated": "1.00000"#,
                "line 2: truncated JSON",
            ),
            (
                r#"{"after": {"id": 1}, "key": [1]}"#,
                "line 2: message has no `updated`",
            ),
            (r#"{"something": 1}"#, "line 2: neither a wrapped"),
            (
                r#"{"after": {"id": "x"}, "key": [1], "updated": "1.0000000000"}"#,
                "line 2: column `id`",
            ),
            (
                r#"{"after": {"id": 2}, "key": [2], "updated": "yesterday"}"#,
                "line 2: `updated`",
            ),
        ] {
            // With a configured type a value that does not fit is an error (inference would widen).
            let opts = DecodeOptions {
                columns: [("id".to_owned(), ColumnType::Int64)].into(),
                ..Default::default()
            };
            let err = decode(&format!("{ok}\n{bad}\n"), &opts).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("t.ndjson: ") && msg.contains(needle),
                "{msg}"
            );
        }
    }

    #[test]
    fn batches_are_bounded_and_types_widen() {
        let mut text = String::new();
        for i in 0..10 {
            let v = if i < 5 {
                format!("{i}")
            } else {
                format!("{i}.5")
            };
            text += &format!(
                r#"{{"after": {{"k": {i}, "v": {v}}}, "key": [{i}], "updated": "{i}.0000000000"}}"#
            );
            text.push('\n');
        }
        let opts = DecodeOptions {
            batch_size: 4,
            ..Default::default()
        };
        let batches = decode(&text, &opts).unwrap();
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        assert_eq!(
            batches[0].column_by_name("v").unwrap().data_type(),
            &arrow_schema::DataType::Int64
        );
        assert_eq!(
            batches[1].column_by_name("v").unwrap().data_type(),
            &arrow_schema::DataType::Float64
        );
    }

    /// A pass given the lines' slices another pass learnt parses only the lines it keeps, yet
    /// yields the very batches of a pass that parsed them all: each batch's columns and types
    /// as learnt up to it (`v` widens in the second batch, `w` appears in the third), the same
    /// rows, the same rows skipped. Slices learnt under another interval or batch size are not
    /// used; a file that no longer reads as it did is refused, naming it.
    #[test]
    fn known_line_slices_parse_only_kept_lines_and_yield_the_same_batches() {
        let line = |i: u32| {
            let v = if i < 4 {
                format!("{i}")
            } else {
                format!("{i}.5")
            };
            let w = if i >= 8 { r#", "w": "x""# } else { "" };
            format!(
                r#"{{"after": {{"k": {i}, "v": {v}{w}}}, "key": [{i}], "updated": "{}.0000000000"}}"#,
                1 + i % 3
            ) + "\n"
        };
        // Blank lines (white space, Unicode's too) are no messages, passed over or not.
        let blanks = ["\n", " \t\r\n", "\u{2003}\u{a0}\n", ""];
        let text: String = (0..11).map(|i| line(i) + blanks[i as usize % 4]).collect();
        let filter = |index, lo| SliceFilter {
            index,
            of: 3,
            lo,
            hi: Hlc::new(2, 0),
        };
        let opts = |f, known: Option<Arc<SliceRows>>| DecodeOptions {
            batch_size: 4,
            primary_key: Some(vec!["k".into()]),
            slice: Some(f),
            slice_rows: known,
            ..Default::default()
        };
        let pass = |text: &str, opts: &DecodeOptions| {
            let mut d = NdjsonDecoder::new("t.ndjson", std::io::Cursor::new(text.to_owned()), opts);
            let batches = d.by_ref().collect::<Result<Vec<_>, _>>();
            (batches, d.rows_skipped(), d.slice_rows())
        };
        let (_, _, found) = pass(&text, &opts(filter(2, None), None));
        let found = found.expect("a whole file's slices");
        assert_eq!(found.len(), 11);
        for index in 0..3 {
            let (plain, skipped, _) = pass(&text, &opts(filter(index, None), None));
            let (known, skipped_known, used) =
                pass(&text, &opts(filter(index, None), Some(found.clone())));
            let (plain, known) = (plain.unwrap(), known.unwrap());
            assert_eq!(known, plain, "slice {index}");
            assert!(skipped > 0 && skipped_known == skipped, "slice {index}");
            assert!(Arc::ptr_eq(&used.unwrap(), &found));
            let types: Vec<_> = known
                .iter()
                .map(|b| {
                    format!(
                        "{:?}",
                        b.schema()
                            .fields()
                            .iter()
                            .map(|f| f.data_type())
                            .collect::<Vec<_>>()
                    )
                })
                .collect();
            assert_ne!(types[0], types[1], "v widens");
            assert_ne!(types[1], types[2], "w appears");
        }
        // Learnt up to another RESOLVED, or read in other batches: learnt again.
        let other = opts(filter(0, Some(Hlc::new(1, 0))), Some(found.clone()));
        let other_batches = DecodeOptions {
            batch_size: 5,
            ..opts(filter(0, None), Some(found.clone()))
        };
        for other in [other, other_batches] {
            let (batches, _, again) = pass(&text, &other);
            assert!(batches.is_ok() && !Arc::ptr_eq(&again.unwrap(), &found));
        }
        // One line fewer, or one more: refused, naming the file.
        for changed in [
            (0..10).map(line).collect::<String>(),
            text.clone() + &line(11),
            text.clone() + "\u{2003}x\n",
        ] {
            let (batches, _, kept) = pass(&changed, &opts(filter(0, None), Some(found.clone())));
            let err = batches.unwrap_err().to_string();
            assert!(
                err.starts_with("t.ndjson: line ") && err.contains("reads differently"),
                "{err}"
            );
            assert!(kept.is_none());
        }
    }
}
