//! The process's open-files limit: the box, the reference cloud and `hallrelay loadtest` each
//! hold one descriptor per connection, far more than the usual default of 1,024.

/// Raises the soft limit on open files towards `wanted` (up to the hard limit), so that
/// `max_connections` is what bounds connections, not a default of 1,024 descriptors. Says so
/// when the hard limit is lower.
pub fn raise_open_files(wanted: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft >= wanted {
        return;
    }
    let target = wanted.min(hard);
    if target > soft {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(%error, "cannot raise the open-files limit");
            return;
        }
    }
    if target < wanted {
        tracing::warn!(
            limit = target,
            wanted,
            "the open-files limit is below what max_connections needs"
        );
    }
}
