//! The worker runtime: lease jobs, run them on a backend with bounded concurrency,
//! heartbeat, record outcomes, and drain on shutdown.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenscale_core::{Finished, JobEvent, JobStatus, LeasedJob, Outcome, WorkerQueue};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::backend::ModelBackend;
use crate::finisher::Finisher;
use crate::turns::LeaseTurns;

/// Settings of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique id of this worker (shown on job records).
    pub id: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// On shutdown, how long in-flight jobs may take before they are handed back.
    pub grace: Duration,
    /// How often the lease is renewed (a third of the lease is a good value).
    pub heartbeat_every: Duration,
    /// How often this worker reclaims expired leases and promotes due retries.
    pub maintain_every: Duration,
    /// Shared with the other workers of a pool in this process: they then lease one job at
    /// a time, the least loaded first (see [`LeaseTurns`]).
    pub turns: Option<Arc<LeaseTurns>>,
    /// The models this worker serves, announced with every heartbeat (a gateway lists them
    /// in `/v1/models`).
    pub models: Vec<String>,
}

/// How long a worker waits for a job while holding a pool's lease turn, before it lets a
/// less loaded worker have the turn.
const TURN_LEASE_WAIT: Duration = Duration::from_millis(100);

impl WorkerConfig {
    /// Defaults for a worker with the given id and a queue lease of `lease`.
    pub fn new(id: impl Into<String>, lease: Duration) -> Self {
        WorkerConfig {
            id: id.into(),
            concurrency: 4,
            grace: Duration::from_secs(25),
            heartbeat_every: (lease / 3).max(Duration::from_millis(50)),
            maintain_every: Duration::from_secs(1),
            turns: None,
            models: Vec::new(),
        }
    }
}

/// Counts of what a worker did, reported when it stops.
#[derive(Debug, Default)]
pub struct WorkerReport {
    /// Jobs that succeeded.
    pub succeeded: AtomicU64,
    /// Jobs that failed permanently or were dead-lettered.
    pub failed: AtomicU64,
    /// Runs that failed transiently and were scheduled for retry.
    pub retried: AtomicU64,
    /// Jobs handed back unfinished at shutdown.
    pub handed_back: AtomicU64,
    /// Jobs running now.
    pub in_flight: AtomicU64,
    /// Finished runs (any outcome) and their total run time, microseconds: the measured
    /// service time is their ratio.
    pub runs: AtomicU64,
    /// Total run time of finished runs, microseconds.
    pub run_time_us: AtomicU64,
}

/// A job this worker runs, and the signal that stops it when it is cancelled.
struct HeldJob {
    job: LeasedJob,
    stop: Arc<Notify>,
}

type Held = Arc<Mutex<HashMap<String, HeldJob>>>;

/// Runs a worker until `shutdown` completes, then stops leasing, lets in-flight jobs finish
/// within `grace`, hands back the rest and deregisters. Queue outages are waited out.
/// What it does is counted in `report` as it happens.
pub async fn run_worker<B: ModelBackend>(
    queue: Arc<dyn WorkerQueue>,
    backend: Arc<B>,
    config: WorkerConfig,
    report: Arc<WorkerReport>,
    shutdown: impl Future<Output = ()>,
) -> Arc<WorkerReport> {
    let mut worker = Worker {
        finisher: Finisher::start(queue.clone(), config.id.clone()),
        held: Arc::default(),
        slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
        recording: Arc::new(Semaphore::new(config.concurrency.max(1))),
        tasks: JoinSet::new(),
        outage: None,
        queue,
        backend,
        config,
        report,
    };
    let background = worker.start_background();
    tracing::info!(worker = %worker.config.id, concurrency = worker.config.concurrency, "worker started");
    tokio::pin!(shutdown);
    while let Some((permit, jobs)) = worker.lease(shutdown.as_mut()).await {
        worker.run(permit, jobs);
    }
    worker.drain(background).await
}

/// One worker's run-time state: what it holds, its free slots and its job tasks.
struct Worker<B> {
    queue: Arc<dyn WorkerQueue>,
    backend: Arc<B>,
    config: WorkerConfig,
    report: Arc<WorkerReport>,
    /// Records outcomes, several per round trip when runs end together.
    finisher: Finisher,
    held: Held,
    slots: Arc<Semaphore>,
    /// Outcomes being recorded; a run gives its slot back as it ends while fewer than
    /// `concurrency` are, so the next job's model call overlaps the recording.
    recording: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// Since when leasing fails (the queue is unreachable).
    outage: Option<Instant>,
}

impl<B: ModelBackend> Worker<B> {
    /// The heartbeat, maintenance and cancellation loops; aborted when the worker stops.
    fn start_background(&self) -> [tokio::task::JoinHandle<()>; 3] {
        [
            tokio::spawn(heartbeat_loop(
                self.queue.clone(),
                self.config.id.clone(),
                self.config.models.clone(),
                self.config.heartbeat_every,
            )),
            tokio::spawn(maintain_loop(
                self.queue.clone(),
                self.config.maintain_every,
            )),
            tokio::spawn(cancel_loop(self.queue.clone(), self.held.clone())),
        ]
    }

    /// Waits for a free slot and leases jobs for it (for every free slot when alone; one per
    /// turn when sharing a pool), waiting out queue outages. `None` once `shutdown` is done.
    async fn lease(
        &mut self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<(OwnedSemaphorePermit, Vec<LeasedJob>)> {
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.as_mut() => return None,
                permit = self.slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            while self.tasks.try_join_next().is_some() {}
            let (want, wait, _turn) = match &self.config.turns {
                None => (
                    1 + self.slots.available_permits(),
                    Duration::from_secs(1),
                    None,
                ),
                Some(turns) => {
                    let turn = tokio::select! {
                        biased;
                        _ = shutdown.as_mut() => return None,
                        t = turns.take(self.report.in_flight.load(Ordering::Relaxed)) => t,
                    };
                    (1, TURN_LEASE_WAIT, Some(turn))
                }
            };
            let leased = tokio::select! {
                biased;
                _ = shutdown.as_mut() => return None,
                r = self.queue.lease(&self.config.id, want, wait) => r,
            };
            match leased {
                Ok(jobs) => {
                    if let Some(since) = self.outage.take() {
                        self.recover(since, &jobs).await;
                    }
                    return Some((first, jobs));
                }
                Err(e) => {
                    if self.outage.is_none() {
                        tracing::warn!(error = %e, "cannot lease jobs; retrying until the queue is back");
                        self.outage = Some(Instant::now());
                    }
                    drop(first);
                    tokio::select! {
                        _ = shutdown.as_mut() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
    }

    /// After an outage: a lease whose reply was lost left entries this worker does not know
    /// it holds (it holds what it runs and `leased`); hands them back.
    async fn recover(&self, since: Instant, leased: &[LeasedJob]) {
        tracing::info!(
            after_ms = since.elapsed().as_millis() as u64,
            "queue reachable again"
        );
        let mut holding: Vec<String> = self
            .held
            .lock()
            .expect("held jobs lock")
            .values()
            .map(|h| h.job.token.clone())
            .collect();
        holding.extend(leased.iter().map(|j| j.token.clone()));
        match self.queue.reclaim_unknown(&self.config.id, &holding).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                jobs = n,
                "handed back jobs leased while the queue was unreachable"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not check for leases lost in the outage; they return when the lease expires")
            }
        }
    }

    /// Runs each leased job in its own task, holding a slot: `first` for the first, one
    /// free slot each for the others (never more jobs are leased than slots are free).
    fn run(&mut self, first: OwnedSemaphorePermit, jobs: Vec<LeasedJob>) {
        let mut first = Some(first);
        for job in jobs {
            let permit = match first.take() {
                Some(p) => p,
                None => self
                    .slots
                    .clone()
                    .try_acquire_owned()
                    .expect("never leases more jobs than free slots"),
            };
            let stop = Arc::new(Notify::new());
            self.held.lock().expect("held jobs lock").insert(
                job.spec.job_id.clone(),
                HeldJob {
                    job: job.clone(),
                    stop: stop.clone(),
                },
            );
            let (queue, finisher, backend, held, report, worker, recording) = (
                self.queue.clone(),
                self.finisher.clone(),
                self.backend.clone(),
                self.held.clone(),
                self.report.clone(),
                self.config.id.clone(),
                self.recording.clone(),
            );
            report.in_flight.fetch_add(1, Ordering::Relaxed);
            self.tasks.spawn(async move {
                let run = Run {
                    queue: &*queue,
                    finisher: &finisher,
                    worker: &worker,
                    report: &report,
                };
                run_one(run, &*backend, &job, &stop, Slot { permit, recording }).await;
                held.lock()
                    .expect("held jobs lock")
                    .remove(&job.spec.job_id);
            });
        }
    }

    /// Stops: lets in-flight jobs finish within the grace, hands back the rest, ends the
    /// background loops and deregisters.
    async fn drain(mut self, background: [tokio::task::JoinHandle<()>; 3]) -> Arc<WorkerReport> {
        let (queue, config, report) = (self.queue.clone(), &self.config, &self.report);
        let running = self.held.lock().expect("held jobs lock").len();
        tracing::info!(
            in_flight = running,
            grace_s = config.grace.as_secs_f64(),
            "stopping: no new jobs, letting in-flight jobs finish"
        );
        let tasks = &mut self.tasks;
        let drained = tokio::time::timeout(config.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            report.in_flight.store(0, Ordering::Relaxed);
            let unfinished: Vec<LeasedJob> = self
                .held
                .lock()
                .expect("held jobs lock")
                .drain()
                .map(|(_, h)| h.job)
                .collect();
            for job in unfinished {
                match retry_queue_op(|| queue.release(&config.id, &job), 10).await {
                    Ok(()) => {
                        report.handed_back.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(job_id = %job.spec.job_id, "grace period over: job handed back to the queue");
                    }
                    Err(e) => {
                        tracing::error!(job_id = %job.spec.job_id, error = %e, "could not hand the job back; it returns when this worker's lease expires")
                    }
                }
            }
        }
        for task in background {
            task.abort();
        }
        if let Err(e) = retry_queue_op(|| queue.deregister(&config.id), 10).await {
            tracing::error!(error = %e, "could not deregister; anything held returns when the lease expires");
        }
        tracing::info!(
            succeeded = report.succeeded.load(Ordering::Relaxed),
            failed = report.failed.load(Ordering::Relaxed),
            retried = report.retried.load(Ordering::Relaxed),
            handed_back = report.handed_back.load(Ordering::Relaxed),
            "worker stopped"
        );
        self.report
    }
}

/// What one run reports to: the queue, the outcome recorder, the worker and its counts.
struct Run<'a> {
    queue: &'a dyn WorkerQueue,
    finisher: &'a Finisher,
    worker: &'a str,
    report: &'a WorkerReport,
}

/// A run's slot, and the outcomes being recorded that it gives it back against.
struct Slot {
    permit: OwnedSemaphorePermit,
    recording: Arc<Semaphore>,
}

async fn run_one<B: ModelBackend>(
    run: Run<'_>,
    backend: &B,
    job: &LeasedJob,
    stop: &Notify,
    slot: Slot,
) {
    let Run {
        queue,
        finisher,
        worker,
        report,
    } = run;
    let started = Instant::now();
    let streaming = job.spec.streams();
    let id = job.spec.job_id.as_str();
    let run = async {
        if streaming {
            let event = JobEvent::Started {
                worker_id: worker.to_string(),
                attempt: job.attempt,
            };
            publish_quietly(queue, id, &event).await;
            run_streaming(queue, backend, job).await
        } else {
            backend.run(&job.spec, &|_| {}).await
        }
    };
    let outcome = tokio::select! {
        outcome = run => outcome,
        _ = stop.notified() => {
            tracing::info!(job_id = %id, "job cancelled while running; stopped it");
            // The record is final already; this only releases the lease.
            Outcome::Failed(greenscale_core::JobError {
                kind: greenscale_core::ErrorKind::UpstreamRejected,
                message: "cancelled while running".into(),
                transient: false,
                retry_after: None,
            })
        }
    };
    let run_time = started.elapsed();
    let run_ms = run_time.as_millis() as u64;
    report.runs.fetch_add(1, Ordering::Relaxed);
    report
        .run_time_us
        .fetch_add(run_time.as_micros() as u64, Ordering::Relaxed);
    let error = match &outcome {
        Outcome::Failed(e) => Some(e.clone()),
        Outcome::Succeeded(_) => None,
    };
    // The model is done with the job: its slot goes to the next one while this outcome is
    // recorded, unless `concurrency` outcomes are being recorded already (the queue is
    // slow); then the slot waits, so a slow queue slows the leasing.
    let recording = slot
        .recording
        .acquire_owned()
        .await
        .expect("semaphore is never closed");
    // No longer running: counted out before the slot is free, so whoever leases with it
    // (a pool's lease turns go to the least loaded worker) sees this worker's load as it is.
    report.in_flight.fetch_sub(1, Ordering::Relaxed);
    drop(slot.permit);
    // The answer is only safe once recorded: keep trying while the queue is down.
    let mut delay = Duration::from_millis(100);
    let finished = loop {
        match finisher.finish(job, outcome.clone()).await {
            Ok(f) => break f,
            Err(e) => {
                tracing::warn!(job_id = %job.spec.job_id, error = %e, "cannot record the outcome yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    };
    // The queue published the end of a job that notifies as it recorded it, unless the
    // job was final already: then its waiting client hears of that from here.
    if job.spec.notifies() && finished == Finished::AlreadyFinal {
        let status = match queue.job(id).await {
            Ok(Some(rec)) => rec.status,
            _ => JobStatus::Cancelled,
        };
        let event = JobEvent::Finished {
            status,
            error: error.as_ref().map(|e| e.message.clone()),
            record: None,
        };
        publish_quietly(queue, id, &event).await;
    }
    drop(recording);
    match (finished, error) {
        (Finished::Succeeded, _) => {
            report.succeeded.fetch_add(1, Ordering::Relaxed);
            tracing::info!(job_id = %id, attempt = job.attempt, run_ms, "job succeeded");
        }
        (Finished::RetryScheduled, Some(e)) => {
            report.retried.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job_id = %id, attempt = job.attempt, kind = %e.kind.as_str(), error = %e.message, "job failed; retry scheduled");
        }
        (Finished::Failed | Finished::Dead, Some(e)) => {
            report.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job_id = %id, attempt = job.attempt, kind = %e.kind.as_str(), error = %e.message, outcome = ?finished, "job failed");
        }
        (f, _) => {
            tracing::info!(job_id = %id, outcome = ?f, "job already had a final status; outcome discarded")
        }
    }
}

/// Once a second, stops the runs of held jobs whose records say they were cancelled.
async fn cancel_loop(queue: Arc<dyn WorkerQueue>, held: Held) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ids: Vec<String> = held
            .lock()
            .expect("held jobs lock")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            if let Ok(Some(rec)) = queue.job(&id).await
                && rec.status == JobStatus::Cancelled
                && let Some(h) = held.lock().expect("held jobs lock").get(&id)
            {
                h.stop.notify_one();
            }
        }
    }
}

/// Runs a job whose tokens are published as they arrive: each piece the model streams is
/// published at once, as its own event, so clients get one chunk per token and the first
/// token never waits. Only when publishing falls behind the model (a piece arrives while the
/// previous publish is still in flight) are the waiting pieces joined into one event, so the
/// extra delay is bounded by one publish.
async fn run_streaming<B: ModelBackend>(
    queue: &dyn WorkerQueue,
    backend: &B,
    job: &LeasedJob,
) -> Outcome {
    let (tx, mut pieces) = tokio::sync::mpsc::unbounded_channel::<String>();
    let on_token = move |piece: &str| {
        let _ = tx.send(piece.to_string());
    };
    let run = backend.run(&job.spec, &on_token);
    tokio::pin!(run);
    let id = job.spec.job_id.as_str();
    let outcome = loop {
        tokio::select! {
            biased;
            Some(first) = pieces.recv() => publish_pieces(queue, id, first, &mut pieces).await,
            outcome = &mut run => break outcome,
        }
    };
    // The run is over, so every piece it produced is already in the channel.
    if let Ok(first) = pieces.try_recv() {
        publish_pieces(queue, id, first, &mut pieces).await;
    }
    outcome
}

/// Publishes `first` joined with whatever pieces are already waiting behind it.
async fn publish_pieces(
    queue: &dyn WorkerQueue,
    id: &str,
    mut text: String,
    waiting: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    while let Ok(more) = waiting.try_recv() {
        text.push_str(&more);
    }
    if !text.is_empty() {
        publish_quietly(queue, id, &JobEvent::Token { text }).await;
    }
}

/// Events are a convenience for live clients; the record is the truth, so a failed publish
/// is logged and the job goes on.
async fn publish_quietly(queue: &dyn WorkerQueue, id: &str, event: &JobEvent) {
    if let Err(e) = queue.publish(id, event).await {
        tracing::debug!(job_id = %id, error = %e, "could not publish a job event");
    }
}

async fn retry_queue_op<F, Fut>(mut op: F, tries: u32) -> Result<(), greenscale_core::QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), greenscale_core::QueueError>>,
{
    let mut last = None;
    for _ in 0..tries {
        match op().await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.expect("at least one try"))
}

/// Heartbeats from the start, so the worker and its models are seen before its first lease.
async fn heartbeat_loop(
    queue: Arc<dyn WorkerQueue>,
    worker: String,
    models: Vec<String>,
    every: Duration,
) {
    let mut failing = false;
    loop {
        match queue.heartbeat(&worker, &models).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("heartbeat recovered");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "heartbeat failed; retrying");
            }
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

async fn maintain_loop(queue: Arc<dyn WorkerQueue>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = queue.maintain().await {
            tracing::debug!(error = %e, "queue maintenance failed; will try again");
        }
    }
}
