//! Least-loaded routing among workers that share one queue in one process (the replicas of
//! a pool under `greenscale up`): one worker leases at a time, and the turn goes to the
//! waiting worker running the fewest jobs (first come first among equals).

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::Notify;

/// The turnstile shared by the workers of one pool.
#[derive(Debug, Default)]
pub struct LeaseTurns {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    taken: bool,
    /// Waiting workers as (jobs running, arrival order).
    waiting: BTreeSet<(u64, u64)>,
    next_ticket: u64,
}

/// The right to lease; the next worker's turn begins when it is dropped.
pub struct Turn<'a> {
    turns: &'a LeaseTurns,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.state.lock().expect("turns lock").taken = false;
        self.turns.changed.notify_waiters();
    }
}

/// A place in the line, given up if the waiting worker stops waiting.
struct Place<'a> {
    turns: &'a LeaseTurns,
    key: (u64, u64),
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let removed = self
            .turns
            .state
            .lock()
            .expect("turns lock")
            .waiting
            .remove(&self.key);
        if removed {
            self.turns.changed.notify_waiters();
        }
    }
}

impl LeaseTurns {
    /// Waits for this worker's turn; a worker running `in_flight` jobs goes after every
    /// waiting worker that runs fewer.
    pub async fn take(&self, in_flight: u64) -> Turn<'_> {
        let key = {
            let mut st = self.state.lock().expect("turns lock");
            st.next_ticket += 1;
            let key = (in_flight, st.next_ticket);
            st.waiting.insert(key);
            key
        };
        let place = Place { turns: self, key };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock().expect("turns lock");
                if !st.taken && st.waiting.first() == Some(&key) {
                    st.waiting.remove(&key);
                    st.taken = true;
                    std::mem::forget(place);
                    return Turn { turns: self };
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_least_loaded_waiting_worker_goes_next() {
        let turns = Arc::new(LeaseTurns::default());
        let first = turns.take(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, load) in [("busy", 3), ("idle", 0), ("half", 1)] {
            let (turns, order) = (turns.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = turns.take(load).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["idle", "half", "busy"]);
    }

    #[tokio::test]
    async fn a_worker_that_stops_waiting_does_not_block_the_line() {
        let turns = Arc::new(LeaseTurns::default());
        let first = turns.take(0).await;
        let gone = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_millis(20), turns.take(0)).await;
            })
        };
        gone.await.unwrap();
        let next = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _turn = turns.take(5).await;
            })
        };
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the line moves on")
            .unwrap();
    }
}
