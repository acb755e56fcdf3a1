//! One subscription to the queue's job events, shared by every waiting request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use greenscale_core::{JobEvent, Queue};
use tokio::sync::broadcast;

/// Events buffered per job. Tokens arrive in batches (every 20 ms at most), so this is
/// plenty; a receiver that falls behind re-reads the job record. Each slot is allocated up
/// front for every waiting request, so it is kept small.
const CAPACITY: usize = 32;

type Senders = Arc<Mutex<HashMap<String, broadcast::Sender<JobEvent>>>>;

/// Routes job events from the queue to the requests waiting on those jobs.
#[derive(Clone, Default)]
pub struct EventHub {
    senders: Senders,
}

impl EventHub {
    /// Starts the hub: one event stream from each queue, re-opened when it breaks.
    pub fn start(queues: Vec<Arc<dyn Queue>>) -> Self {
        let hub = EventHub::default();
        for queue in queues {
            hub.follow(queue);
        }
        hub
    }

    fn follow(&self, queue: Arc<dyn Queue>) {
        let senders = self.senders.clone();
        tokio::spawn(async move {
            loop {
                match queue.events().await {
                    Ok(mut stream) => {
                        while let Some((id, event)) = stream.next().await {
                            let tx = senders.lock().expect("hub lock").get(&id).cloned();
                            if let Some(tx) = tx {
                                let _ = tx.send(event);
                            }
                        }
                        tracing::warn!("job event stream ended; reconnecting");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to job events; retrying")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Events of one job from now on, until the subscription is dropped.
    pub fn subscribe(&self, job_id: &str) -> Subscription {
        let mut senders = self.senders.lock().expect("hub lock");
        let rx = senders
            .entry(job_id.to_string())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Subscription {
            rx: Some(rx),
            job_id: job_id.to_string(),
            senders: self.senders.clone(),
        }
    }
}

/// A request's view of one job's events.
pub struct Subscription {
    rx: Option<broadcast::Receiver<JobEvent>>,
    job_id: String,
    senders: Senders,
}

impl Subscription {
    /// The next event; `None` when events were lost (the caller re-reads the record).
    pub async fn next(&mut self) -> Option<JobEvent> {
        self.rx.as_mut()?.recv().await.ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut senders = self.senders.lock().expect("hub lock");
        if senders
            .get(&self.job_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            senders.remove(&self.job_id);
        }
    }
}
