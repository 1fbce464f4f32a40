//! Development tools, not part of a deployment: the simulator's command glue and the pump that
//! plays the Functions host for a local handler.

pub mod pump;
pub mod simulate;
