//! One subscription to the queue's job events, shared by every waiting request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use greenscale_core::{JobEvent, Queue};
use tokio::sync::broadcast;

/// Events buffered per job. Tokens arrive one event per generated piece (joined when the
/// worker's publishing falls behind); a receiver that falls further behind than this stops
/// streaming and gets the rest of the text from the job record when the job ends. Each slot
/// is allocated up front for every waiting request, so it is kept small.
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
    /// The next event. `None`, once, when events were lost (this receiver fell behind) or
    /// the hub closed: the caller re-reads the record, and this subscription never yields
    /// again, so what a caller forwarded stays a gap-free prefix of the job's text.
    pub async fn next(&mut self) -> Option<JobEvent> {
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        match rx.recv().await {
            Ok(event) => Some(event),
            Err(_) => {
                self.rx = None;
                None
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_that_fell_behind_stops_instead_of_skipping_text() {
        let hub = EventHub::default();
        let mut sub = hub.subscribe("job");
        let tx = hub.senders.lock().unwrap().get("job").cloned().unwrap();
        for i in 0..CAPACITY + 5 {
            tx.send(JobEvent::Token {
                text: i.to_string(),
            })
            .unwrap();
        }
        // The oldest events are gone: it says so once...
        assert_eq!(sub.next().await, None);
        // ...and never hands out a later piece that would leave a gap in the text.
        tx.send(JobEvent::Token {
            text: "late".into(),
        })
        .unwrap_or(0);
        let later = tokio::time::timeout(Duration::from_millis(50), sub.next()).await;
        assert!(later.is_err(), "yielded {later:?} after a gap");
    }
}
