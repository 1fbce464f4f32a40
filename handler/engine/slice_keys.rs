//! The window's keys per key slice, for table files tagged with the slice they hold
//! ([`SliceTag`]): a table loaded in slices has every key in the files of one slice, so each
//! file is looked for that slice's keys alone (a key probed in one file instead of every
//! file), and a file whose slice the window has no key of is not read.

use std::collections::HashMap;
use std::sync::Arc;

use crdb_delta_core::apply::SliceTag;
use crdb_delta_core::format::types::ColumnType;
use crdb_delta_core::plan::KeyProbe;

use crate::delta::FileEntry;

pub struct SliceKeys {
    /// Slice count → the window's keys of each slice (`None`: no key of it).
    by_count: HashMap<u32, Vec<Option<Arc<KeyProbe>>>>,
    key: Vec<String>,
    types: Vec<ColumnType>,
}

impl SliceKeys {
    /// For the slice counts the tags of `files` name, under the table's key `key` of `types`;
    /// `split(of)` gives the window's keys of each of `of` slices.
    pub fn new(
        files: &[FileEntry],
        key: &[String],
        types: &[ColumnType],
        split: impl Fn(u32) -> Vec<Option<KeyProbe>>,
    ) -> Self {
        let mut by_count = HashMap::new();
        for f in files {
            if let Some(t) = f.slice.as_ref().filter(|t| t.holds_for(key, types)) {
                by_count
                    .entry(t.of)
                    .or_insert_with(|| split(t.of).into_iter().map(|p| p.map(Arc::new)).collect());
            }
        }
        Self {
            by_count,
            key: key.to_vec(),
            types: types.to_vec(),
        }
    }

    fn tag<'a>(&self, f: &'a FileEntry) -> Option<&'a SliceTag> {
        f.slice
            .as_ref()
            .filter(|t| t.holds_for(&self.key, &self.types))
    }

    /// Whether `f`'s tag applies: it holds one slice's keys of the table's key.
    pub fn tagged(&self, f: &FileEntry) -> bool {
        self.tag(f).is_some()
    }

    /// The window's keys `f` can hold: its slice's when tagged (`None`: none), `all` otherwise.
    pub fn keys(&self, f: &FileEntry, all: &Arc<KeyProbe>) -> Option<Arc<KeyProbe>> {
        match self
            .tag(f)
            .and_then(|t| Some((t, self.by_count.get(&t.of)?)))
        {
            Some((t, slices)) => slices.get(t.index as usize).cloned().flatten(),
            None => Some(all.clone()),
        }
    }
}

/// Tags the new files of slice `index` of `of` (`new_files`, holding only its keys) among `adds`
/// with that slice, when the table's key `key` of `types` can be sliced alike by a lookup.
pub fn tag_new_files(
    adds: &mut [deltalake_core::kernel::Add],
    new_files: &[String],
    key: &[String],
    types: &[ColumnType],
    index: u32,
    of: u32,
) {
    for a in adds.iter_mut().filter(|a| new_files.contains(&a.path)) {
        if let Some(tag) = SliceTag::new(key, types, index, of, &a.path) {
            a.tags
                .get_or_insert_with(Default::default)
                .insert(SliceTag::NAME.to_owned(), Some(tag.value()));
        }
    }
}
