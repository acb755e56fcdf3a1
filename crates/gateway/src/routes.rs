//! Where jobs go: one queue for a standalone gateway, or one queue per pool (chosen by the
//! job's `model`) under `greenscale up`. Reads that are not about one pool (a job by id,
//! the job list, counts) look across all of them.

use std::sync::Arc;

use greenscale_core::{
    Cancelled, JobPage, JobRecord, JobSpec, JobStatus, Queue, QueueError, QueueStats, TenantStats,
    Tenants, cursor_after,
};

use crate::error::ApiError;

/// Called when a job was stored in a pool's queue (the autoscaler's push signal).
pub type ArrivalHook = Arc<dyn Fn() + Send + Sync>;

/// One pool's queue.
#[derive(Clone)]
pub struct Route {
    /// The model name that selects it.
    pub name: String,
    /// Its queue.
    pub queue: Arc<dyn Queue>,
    /// Told about every job stored through this gateway.
    pub on_arrival: Option<ArrivalHook>,
}

/// The queues this gateway submits to.
#[derive(Clone)]
pub struct Routes {
    routes: Arc<Vec<Route>>,
    /// A standalone gateway sends every model to its one queue (the workers choose).
    any_model: bool,
}

impl Routes {
    /// One queue for every model.
    pub fn single(queue: Arc<dyn Queue>) -> Self {
        Routes {
            routes: Arc::new(vec![Route {
                name: String::new(),
                queue,
                on_arrival: None,
            }]),
            any_model: true,
        }
    }

    /// One queue per pool; a job naming no model goes to the first. Panics without pools.
    pub fn pools(routes: Vec<Route>) -> Self {
        assert!(!routes.is_empty(), "at least one pool");
        Routes {
            routes: Arc::new(routes),
            any_model: false,
        }
    }

    /// The pool names, in order.
    pub fn names(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.name.clone()).collect()
    }

    fn route(&self, model: Option<&str>) -> Result<&Route, ApiError> {
        let first = &self.routes[0];
        let Some(model) = model else { return Ok(first) };
        if self.any_model {
            return Ok(first);
        }
        self.routes.iter().find(|r| r.name == model).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "no pool serves model {model:?}; available: {}",
                    self.names().join(", ")
                ),
            )
        })
    }

    /// Refuses a model no pool serves (404, naming those that exist).
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        self.route(model).map(|_| ())
    }

    /// What workers announced they serve: on the one queue of a standalone gateway (with
    /// pools, the pool names are the models and nothing more is announced).
    pub async fn served_models(&self) -> Result<Vec<String>, ApiError> {
        if !self.any_model {
            return Ok(Vec::new());
        }
        Ok(self.routes[0].queue.served_models().await?)
    }

    fn arrived(route: &Route) {
        if let Some(hook) = &route.on_arrival {
            hook();
        }
    }

    /// The route for `spec`; with pools, a job naming no model is marked with the pool's.
    fn route_job(&self, spec: &mut JobSpec) -> Result<&Route, ApiError> {
        let route = self.route(spec.model.as_deref())?;
        if !self.any_model && spec.model.is_none() {
            spec.model = Some(route.name.clone());
        }
        Ok(route)
    }

    /// Stores a job in its pool's queue.
    pub async fn enqueue(&self, mut spec: JobSpec) -> Result<String, ApiError> {
        let route = self.route_job(&mut spec)?;
        let id = route.queue.enqueue(spec).await?;
        Self::arrived(route);
        Ok(id)
    }

    /// Stores a job unless one with its id exists; returns the id and whether it is new.
    pub async fn store(&self, mut spec: JobSpec) -> Result<(String, bool), ApiError> {
        let route = self.route_job(&mut spec)?;
        let (id, new) = route.queue.store(spec, None).await?;
        if new {
            Self::arrived(route);
        }
        Ok((id, new))
    }

    /// Stores a job unless `key` was used before; returns the id and whether it is new.
    pub async fn enqueue_idempotent(
        &self,
        mut spec: JobSpec,
        key: &str,
    ) -> Result<(String, bool), ApiError> {
        let route = self.route_job(&mut spec)?;
        let (id, new) = route.queue.enqueue_idempotent(spec, key).await?;
        if new {
            Self::arrived(route);
        }
        Ok((id, new))
    }

    /// A job's record, from whichever pool holds it.
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, ApiError> {
        for r in self.routes.iter() {
            if let Some(rec) = r.queue.job(id).await? {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// Cancels a job in the pool that holds it.
    pub async fn cancel(&self, id: &str, running_too: bool) -> Result<Cancelled, ApiError> {
        if self.routes.len() > 1 {
            let Some(rec) = self.job(id).await? else {
                return Ok(Cancelled::NotFound);
            };
            let model = rec.spec.as_ref().and_then(|s| s.model.as_deref());
            let route = self.route(model).unwrap_or(&self.routes[0]);
            return Ok(route.queue.cancel(id, running_too).await?);
        }
        Ok(self.routes[0].queue.cancel(id, running_too).await?)
    }

    /// Stores the tenants' settings in every pool's queue.
    pub async fn set_tenants(&self, tenants: &Tenants) -> Result<(), QueueError> {
        for r in self.routes.iter() {
            r.queue.set_tenants(tenants).await?;
        }
        Ok(())
    }

    /// Every tenant's counts, summed over the pools' queues.
    pub async fn tenants(&self) -> Result<Vec<TenantStats>, QueueError> {
        let mut all: std::collections::BTreeMap<String, TenantStats> = Default::default();
        for r in self.routes.iter() {
            for t in r.queue.tenants().await? {
                let sum = all.entry(t.tenant.clone()).or_insert_with(|| TenantStats {
                    tenant: t.tenant.clone(),
                    ..TenantStats::default()
                });
                sum.queued += t.queued;
                sum.running += t.running;
                sum.tokens_this_minute += t.tokens_this_minute;
                for (k, v) in t.outcomes {
                    *sum.outcomes.entry(k).or_default() += v;
                }
            }
        }
        Ok(all.into_values().collect())
    }

    /// Job records, newest first, across pools (every backend orders by enqueue time and id
    /// and shares one cursor format, so pages merge).
    pub async fn list_jobs(
        &self,
        tenant: Option<&str>,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, ApiError> {
        if self.routes.len() == 1 {
            return Ok(self.routes[0]
                .queue
                .list_jobs(tenant, status, limit, cursor)
                .await?);
        }
        let mut jobs = Vec::new();
        let mut more = false;
        for r in self.routes.iter() {
            let page = r.queue.list_jobs(tenant, status, limit, cursor).await?;
            more |= page.next_cursor.is_some();
            jobs.extend(page.jobs);
        }
        jobs.sort_by(|a, b| {
            (b.enqueued_at_ms.unwrap_or(0), &b.id).cmp(&(a.enqueued_at_ms.unwrap_or(0), &a.id))
        });
        more |= jobs.len() > limit;
        jobs.truncate(limit);
        let next_cursor = if more {
            jobs.last().map(cursor_after)
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }

    /// Counts of each pool's queue, in pool order (a standalone gateway's one queue is
    /// named after its first model by the caller).
    pub async fn stats_by_pool(&self) -> Result<Vec<(String, QueueStats)>, ApiError> {
        let mut out = Vec::new();
        for r in self.routes.iter() {
            out.push((r.name.clone(), r.queue.stats().await?));
        }
        Ok(out)
    }

    /// Counts summed over pools.
    pub async fn stats(&self) -> Result<QueueStats, ApiError> {
        let mut total = QueueStats::default();
        for r in self.routes.iter() {
            let s = r.queue.stats().await?;
            total.pending += s.pending;
            total.in_flight += s.in_flight;
            total.delayed += s.delayed;
            total.dead_letter += s.dead_letter;
            total.live_workers += s.live_workers;
        }
        Ok(total)
    }

    /// Outcome counters summed over pools.
    pub async fn counters(&self) -> Result<Vec<(String, u64)>, ApiError> {
        let mut total: std::collections::BTreeMap<String, u64> = Default::default();
        for r in self.routes.iter() {
            for (name, n) in r.queue.counters().await? {
                *total.entry(name).or_default() += n;
            }
        }
        Ok(total.into_iter().collect())
    }

    /// Every pool's queue (for the event hub).
    pub(crate) fn queues(&self) -> Vec<Arc<dyn Queue>> {
        self.routes.iter().map(|r| r.queue.clone()).collect()
    }
}
