//! What only the SQLite backend promises: several queues (the pools of one `greenscale up`)
//! sharing one database file, all writing at once, never fail for it.

use std::sync::Arc;
use std::time::Duration;

use greenscale_core::{Consumer, JobSpec, Producer, QueueConfig};
use greenscale_queue::SqliteQueue;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pools_sharing_one_database_write_at_once_without_busy_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.db");
    let queues: Vec<Arc<SqliteQueue>> = ["a", "b", "c"]
        .iter()
        .map(|list| Arc::new(SqliteQueue::open(&db, list, QueueConfig::default()).unwrap()))
        .collect();
    let mut tasks = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..100 {
                q.enqueue(JobSpec::from_prompt(format!("job {n}"))).await?;
                q.lease(&format!("w{i}"), 1, Duration::ZERO).await?;
                q.heartbeat(&format!("w{i}"), &[]).await?;
                q.maintain().await?;
            }
            Ok::<_, greenscale_core::QueueError>(())
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("no queue operation fails while others write");
    }
}
