//! The Azure Functions custom-handler protocol, pure: the host's invocation request and
//! response shapes ([`host`]) and the Event Grid / CloudEvents BlobCreated events inside them
//! ([`events`]). Serving them is [`crate::serve`]'s job.

pub mod events;
pub mod host;
