//! One file per mode: what each writes for a window (see [`super::ModeWriter`]).

pub mod append_only;
pub mod scd2;
pub mod update_delete;

pub use append_only::AppendOnly;
pub use scd2::Scd2;
pub use update_delete::UpdateDelete;
