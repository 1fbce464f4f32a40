//! The Azure Functions custom-handler protocol, pure: the host's invocation request and
//! response shapes ([`host`]) and the Event Grid / CloudEvents BlobCreated events inside them
//! ([`events`]). Serving them is [`crate::serve`]'s job.

pub mod events;
pub mod host;

/// The functions this handler serves (one folder each in `function_app/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Event Grid BlobCreated, delivered directly.
    BlobCreated,
    /// Event Grid BlobCreated through a Storage queue.
    BlobQueue,
    /// The timer: apply whatever is buffered, then table upkeep.
    CatchUp,
    /// HTTP: where each table stands.
    Status,
    /// A queue message naming one table of one RESOLVED (fan-out): apply that table.
    ApplyTable,
}

impl Trigger {
    pub const ALL: [Trigger; 5] = [
        Trigger::BlobCreated,
        Trigger::BlobQueue,
        Trigger::CatchUp,
        Trigger::Status,
        Trigger::ApplyTable,
    ];

    /// The function's name (its folder, and the path the host posts to).
    pub fn name(self) -> &'static str {
        match self {
            Self::BlobCreated => "BlobCreated",
            Self::BlobQueue => "BlobQueue",
            Self::CatchUp => "CatchUp",
            Self::Status => "Status",
            Self::ApplyTable => "ApplyTable",
        }
    }

    /// From the path the host posts to; function names are case-insensitive in Azure.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::Trigger;

    #[test]
    fn triggers_are_found_by_name_in_any_case() {
        for t in Trigger::ALL {
            assert_eq!(Trigger::from_name(t.name()), Some(t));
            assert_eq!(Trigger::from_name(&t.name().to_lowercase()), Some(t));
        }
        assert_eq!(Trigger::from_name("Nope"), None);
    }
}
