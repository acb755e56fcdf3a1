//! Outcomes recorded together: a run that ends while other outcomes are being recorded
//! waits for that call and goes with the next, so a busy worker records many outcomes in
//! one round trip ([`Consumer::finish_all`](greenscale_core::Consumer::finish_all)) and
//! an idle one records each at once, with no timer in between.

use std::sync::Arc;

use greenscale_core::{Finished, LeasedJob, Outcome, QueueError, WorkerQueue};
use tokio::sync::{mpsc, oneshot};

/// The most outcomes recorded in one call.
const MAX_BATCH: usize = 128;

type Reply = oneshot::Sender<Result<Finished, QueueError>>;

/// Hands outcomes to the task that records them for one worker.
#[derive(Clone)]
pub(crate) struct Finisher {
    tx: mpsc::UnboundedSender<(LeasedJob, Outcome, Reply)>,
}

impl Finisher {
    /// Starts the recording task of `worker`; it ends when the last handle is dropped.
    pub(crate) fn start(queue: Arc<dyn WorkerQueue>, worker: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(LeasedJob, Outcome, Reply)>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (done, replies): (Vec<_>, Vec<_>) = batch
                    .drain(..)
                    .map(|(job, outcome, reply)| ((job, outcome), reply))
                    .unzip();
                match queue.finish_all(&worker, &done).await {
                    Ok(finished) => {
                        for (reply, f) in replies.into_iter().zip(finished) {
                            let _ = reply.send(Ok(f));
                        }
                    }
                    Err(e) => {
                        let message = match e {
                            QueueError::Unavailable(m) => m,
                            other => other.to_string(),
                        };
                        for reply in replies {
                            let _ = reply.send(Err(QueueError::Unavailable(message.clone())));
                        }
                    }
                }
            }
        });
        Finisher { tx }
    }

    /// Records `outcome` of `job`, with whatever other outcomes are ready then.
    pub(crate) async fn finish(
        &self,
        job: &LeasedJob,
        outcome: Outcome,
    ) -> Result<Finished, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((job.clone(), outcome, reply))
            .map_err(|_| QueueError::Unavailable("the worker is stopping".into()))?;
        answer
            .await
            .map_err(|_| QueueError::Unavailable("the worker is stopping".into()))?
    }
}
