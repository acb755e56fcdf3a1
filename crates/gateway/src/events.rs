//! One subscription to the queue's job events, shared by every waiting request: each
//! request that waits on a job has a small mailbox, filled by the one task that reads the
//! queue's event stream. A mailbox holds no buffer until an event arrives for it, so a
//! request held while the pool wakes costs a map entry, not a channel. The hub also wakes
//! every mailbox when the gateway starts draining or stops, so a waiting request needs no
//! watch of its own on those.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use greenscale_core::{JobEvent, Queue};
use tokio::sync::{Notify, watch};

/// Events a mailbox holds before its reader counts as fallen behind. Tokens arrive one
/// event per generated piece (joined when the worker's publishing falls behind); a reader
/// that falls further behind stops streaming and gets the rest of the text from the job
/// record when the job ends.
const CAPACITY: usize = 64;

/// The events of one job for one waiting request.
#[derive(Default)]
struct Mailbox {
    state: Mutex<Letters>,
    ready: Notify,
}

#[derive(Default)]
struct Letters {
    events: VecDeque<JobEvent>,
    /// Events were lost: the reader fell behind, or the event stream broke.
    lost: bool,
}

impl Mailbox {
    fn deliver(&self, event: JobEvent) {
        let mut letters = self.state.lock().expect("mailbox lock");
        if letters.events.len() >= CAPACITY {
            letters.events.clear();
            letters.lost = true;
        } else if !letters.lost {
            letters.events.push_back(event);
        }
        drop(letters);
        self.ready.notify_one();
    }

    fn lose(&self) {
        self.state.lock().expect("mailbox lock").lost = true;
        self.ready.notify_one();
    }
}

/// What a subscriber finds in its mailbox.
#[derive(Debug, PartialEq)]
pub enum Letter {
    /// The job's next event.
    Event(JobEvent),
    /// Events were lost (the reader fell behind, or the event stream broke): re-read the
    /// record. Said once; nothing more is handed out after it.
    Lost,
}

type Mailboxes = Arc<Mutex<HashMap<String, Vec<Arc<Mailbox>>>>>;

/// Routes job events from the queue to the requests waiting on those jobs.
#[derive(Clone, Default)]
pub struct EventHub {
    mailboxes: Mailboxes,
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

    /// Wakes every waiting request whenever `signal` changes (the gateway's drain and stop),
    /// so each looks at it again.
    pub fn alert_on(&self, mut signal: watch::Receiver<bool>) {
        let hub = self.clone();
        tokio::spawn(async move {
            while signal.changed().await.is_ok() {
                for boxes in hub.mailboxes.lock().expect("hub lock").values() {
                    boxes.iter().for_each(|b| b.ready.notify_one());
                }
            }
        });
    }

    fn follow(&self, queue: Arc<dyn Queue>) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut broke = false;
            loop {
                match queue.events().await {
                    Ok(mut stream) => {
                        if broke {
                            // What was published while no stream was open is lost:
                            // every waiting request reads its job's record.
                            for boxes in hub.mailboxes.lock().expect("hub lock").values() {
                                boxes.iter().for_each(|b| b.lose());
                            }
                        }
                        while let Some((id, event)) = stream.next().await {
                            hub.deliver(&id, event);
                        }
                        tracing::warn!(
                            "job event stream ended (broken, or fell behind); subscribing again"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to job events; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                broke = true;
            }
        });
    }

    /// Hands an event to every request waiting on its job.
    fn deliver(&self, job_id: &str, event: JobEvent) {
        let boxes = self
            .mailboxes
            .lock()
            .expect("hub lock")
            .get(job_id)
            .cloned();
        for b in boxes.into_iter().flatten() {
            b.deliver(event.clone());
        }
    }

    /// Events of one job from now on, until the subscription is dropped.
    pub fn subscribe(&self, job_id: &str) -> Subscription {
        let mailbox = Arc::new(Mailbox::default());
        self.mailboxes
            .lock()
            .expect("hub lock")
            .entry(job_id.to_string())
            .or_default()
            .push(mailbox.clone());
        Subscription {
            mailbox,
            ended: false,
            job_id: job_id.to_string(),
            mailboxes: self.mailboxes.clone(),
        }
    }
}

/// A request's view of one job's events.
pub struct Subscription {
    mailbox: Arc<Mailbox>,
    /// Set once events were lost: nothing more is read.
    ended: bool,
    job_id: String,
    mailboxes: Mailboxes,
}

impl Subscription {
    /// What is in the mailbox now, if anything. After [`Letter::Lost`] it stays empty, so
    /// what a caller forwarded stays a gap-free prefix of the job's text.
    pub fn try_next(&mut self) -> Option<Letter> {
        if self.ended {
            return None;
        }
        let mut letters = self.mailbox.state.lock().expect("mailbox lock");
        if letters.lost {
            drop(letters);
            self.ended = true;
            return Some(Letter::Lost);
        }
        letters.events.pop_front().map(Letter::Event)
    }

    /// Waits until something may be new: a letter, or the gateway's drain or stop (see
    /// [`EventHub::alert_on`]). A wake-up since the last look is kept, so none is missed.
    pub async fn wait(&self) {
        self.mailbox.ready.notified().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut mailboxes = self.mailboxes.lock().expect("hub lock");
        if let Some(boxes) = mailboxes.get_mut(&self.job_id) {
            boxes.retain(|b| !Arc::ptr_eq(b, &self.mailbox));
            if boxes.is_empty() {
                mailboxes.remove(&self.job_id);
            }
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
        for i in 0..CAPACITY + 5 {
            hub.deliver(
                "job",
                JobEvent::Token {
                    text: i.to_string(),
                },
            );
        }
        // The oldest events are gone: it says so once...
        assert_eq!(sub.try_next(), Some(Letter::Lost));
        // ...and never hands out a later piece that would leave a gap in the text.
        hub.deliver(
            "job",
            JobEvent::Token {
                text: "late".into(),
            },
        );
        assert_eq!(sub.try_next(), None, "handed out a piece after a gap");
    }

    #[tokio::test]
    async fn a_finished_request_leaves_nothing_behind() {
        let hub = EventHub::default();
        let first = hub.subscribe("job");
        let second = hub.subscribe("job");
        drop(first);
        assert_eq!(hub.mailboxes.lock().unwrap()["job"].len(), 1);
        drop(second);
        assert!(hub.mailboxes.lock().unwrap().is_empty());
    }
}
