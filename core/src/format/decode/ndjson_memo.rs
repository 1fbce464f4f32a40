//! What a pass over an NDJSON file learnt batch by batch, kept with its lines' key slices
//! ([`super::SliceRows`]) for the interval's later slices. Every line must be parsed once to
//! learn the file's columns and types; a later pass given these parses only the lines it keeps
//! and takes each batch's columns and types from here, so every slice's batches still carry the
//! same ones (the line's JSON checks passed in the pass that learnt them).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Reading;
use crate::format::types::ColumnType;

/// One batch as the learning pass read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Its lines (blank lines not counted): a later pass reads the same batches, and checks.
    pub(crate) lines: usize,
    /// Columns known at its end: the first this many of [`Batches::order`].
    pub(crate) columns: usize,
    /// Column types at its end (shared with the batch before while unchanged).
    pub(crate) types: Arc<BTreeMap<String, ColumnType>>,
}

/// An NDJSON file's batches, and what they were learnt under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batches {
    /// What the learning pass read the file as: its key (what the lines' slices hash), the
    /// types it was given (a pass given others would learn others), the batch size and longest
    /// line (what ends a batch).
    reading: Reading,
    pub(crate) batches: Vec<Batch>,
    /// Data columns in order of first appearance.
    pub(crate) order: Vec<String>,
    /// A message in the `bare` envelope was read.
    pub(crate) bare: bool,
}

impl Batches {
    pub(crate) fn new(reading: Reading) -> Self {
        Self {
            reading,
            batches: Vec::new(),
            order: Vec::new(),
            bare: false,
        }
    }

    pub(crate) fn fits(&self, reading: &Reading) -> bool {
        &self.reading == reading
    }

    /// The next batch: its line count, the columns and types known at its end.
    pub(crate) fn push(
        &mut self,
        lines: usize,
        order: &[String],
        types: &BTreeMap<String, ColumnType>,
    ) {
        if order.len() > self.order.len() {
            self.order.extend_from_slice(&order[self.order.len()..]);
        }
        let types = match self.batches.last() {
            Some(last) if *last.types == *types => last.types.clone(),
            _ => Arc::new(types.clone()),
        };
        self.batches.push(Batch {
            lines,
            columns: order.len(),
            types,
        });
    }

    /// Bytes held, roughly: a batch's record, and each distinct type map's entries.
    pub(crate) fn bytes(&self) -> u64 {
        let names: usize = self.order.iter().map(|c| c.len() + 24).sum();
        let mut maps = 0;
        let mut last: Option<&Arc<BTreeMap<String, ColumnType>>> = None;
        for b in &self.batches {
            if !last.is_some_and(|l| Arc::ptr_eq(l, &b.types)) {
                maps += b.types.keys().map(|c| c.len() + 64).sum::<usize>();
            }
            last = Some(&b.types);
        }
        (names + maps + self.batches.len() * std::mem::size_of::<Batch>()) as u64
    }
}
