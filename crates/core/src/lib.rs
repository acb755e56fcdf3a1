//! GreenScale's core: the job model, the queue contract and the rules every backend shares,
//! the scaling policies, the trace simulator and the pool status every reader shares.
//! Nothing here does I/O.

pub mod duration;
pub mod error;
pub mod job;
pub mod metrics;
pub mod policy;
pub mod queue;
pub mod sim;
pub mod size;
pub mod status;
pub mod tenant;

pub use duration::parse_duration;
pub use error::InvalidInput;
pub use job::{
    ChatMessage, ErrorKind, JobEvent, JobRecord, JobSpec, JobStatus, Limits, Malformed, Usage,
    new_job_id, parse_entry, unix_ms,
};
pub use queue::{
    Admin, AfterFailure, Cancelled, Completion, Consumer, DeadLetter, EventBus, EventStream,
    Finished, JobError, JobPage, LeasedJob, Maintenance, Outcome, Producer, Queue, QueueConfig,
    QueueError, QueueStats, Reader, WorkerQueue, cursor_after, parse_cursor,
};
pub use size::{format_bytes, parse_bytes};
pub use tenant::{
    DEFAULT_TENANT, FairClock, Priority, Quota, TenantSettings, TenantStats, Tenants,
    validate_tenant,
};
