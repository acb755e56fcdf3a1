//! The GPUs `greenscale up` places replicas on: detected through NVML (the driver's library,
//! loaded at run time, so the binary runs where there is none) or declared, and shared by
//! every pool — a replica starts only where its memory fits, and idle replicas of other
//! pools are evicted to make room for one with work waiting.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use greenscale_core::status::{GpuHold, GpuNeed, GpuSource, GpuStatus, ReplicaState};

use crate::placement::{Budget, Candidate, GpuDevice};
use crate::pool::Pool;

/// The machine's GPUs as the driver reports them; empty where NVML cannot be loaded (no
/// NVIDIA driver) or reports no device.
pub fn detect() -> Vec<GpuDevice> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "no NVML: no GPUs detected");
            return Vec::new();
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|i| {
            let device = nvml.device_by_index(i).ok()?;
            let memory = device.memory_info().ok()?.total;
            Some(GpuDevice {
                index: i,
                name: device.name().unwrap_or_else(|_| "GPU".into()),
                memory,
                source: GpuSource::Detected,
                // The enforced power limit: what the board may draw, in milliwatts.
                power_w: device.enforced_power_limit().ok().map(|mw| mw / 1000),
            })
        })
        .collect()
}

/// The GPU budget shared by the pools of one `greenscale up`.
pub struct Gpus {
    budget: Mutex<Budget>,
    pools: Mutex<Vec<Weak<Pool>>>,
    turn: Duration,
    grid_g_per_kwh: Option<f64>,
    /// Pools with work that found no room, and since when: room goes to the one that has
    /// waited longest, not to whichever pool decides first when memory frees.
    waiting: Mutex<Vec<(String, Instant)>>,
}

/// Where a replica may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On these devices (reserved for it).
    On(Vec<u32>),
    /// Nowhere now: room is being made (evictions under way) or others are busy.
    Wait,
}

impl Gpus {
    /// A budget over `devices`. A pool with work that has found no room for `turn` gets
    /// busy replicas of other pools drained for it (the starvation bound);
    /// `grid_g_per_kwh`, the grid's carbon intensity, gives the emissions figures.
    pub fn new(devices: Vec<GpuDevice>, turn: Duration, grid_g_per_kwh: Option<f64>) -> Arc<Gpus> {
        Arc::new(Gpus {
            budget: Mutex::new(Budget::new(devices)),
            pools: Mutex::default(),
            turn,
            grid_g_per_kwh,
            waiting: Mutex::default(),
        })
    }

    /// How long a pool with work waits for room while others are busy.
    pub fn turn(&self) -> Duration {
        self.turn
    }

    /// The grid carbon intensity, gCO2e per kWh, if configured.
    pub fn grid_intensity(&self) -> Option<f64> {
        self.grid_g_per_kwh
    }

    /// The board power `replica` accounts for, watts (see [`Budget::power_of`]).
    pub fn power_of(&self, replica: &str) -> Option<f64> {
        self.budget().power_of(replica)
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().expect("GPU budget lock")
    }

    /// Whether `need` fits on these GPUs at all (an empty machine).
    pub fn could_fit(&self, need: GpuNeed) -> bool {
        self.budget().could_fit(need)
    }

    /// Makes `pool` one of those sharing the budget (evictable, and told when memory frees).
    pub fn register(&self, pool: &Arc<Pool>) {
        self.pools
            .lock()
            .expect("GPU pools lock")
            .push(Arc::downgrade(pool));
    }

    fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .expect("GPU pools lock")
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<(String, Instant)>> {
        self.waiting.lock().expect("GPU waiting lock")
    }

    /// Places `replica` of `pool`, which has wanted a replica since `since`. Room goes first
    /// to a pool with work that has waited longer. When it fits nowhere and `make_room`
    /// (the pool has work waiting), idle replicas of other pools are evicted, least
    /// expected loss first; with `turn_over` (it has waited past its turn), busy ones are
    /// drained too — their jobs finish first, none is cut.
    pub(crate) fn place(
        &self,
        pool: &Pool,
        replica: &str,
        need: GpuNeed,
        since: Instant,
        make_room: bool,
        turn_over: bool,
    ) -> Placement {
        let name = &pool.config().name;
        let mut budget = self.budget();
        let ahead = self.waiting().iter().any(|(p, s)| p != name && *s < since);
        if !ahead && let Some(devices) = budget.reserve(name, replica, need) {
            self.stop_waiting(name);
            return Placement::On(devices);
        }
        if !make_room {
            return Placement::Wait;
        }
        {
            let mut waiting = self.waiting();
            if !waiting.iter().any(|(p, _)| p == name) {
                waiting.push((name.clone(), since));
            }
        }
        if ahead {
            return Placement::Wait;
        }
        let others: Vec<Arc<Pool>> = self
            .pools()
            .into_iter()
            .filter(|p| p.config().name != pool.config().name)
            .collect();
        let mut candidates: Vec<(Candidate, Arc<Pool>)> = others
            .iter()
            .flat_map(|p| {
                p.eviction_candidates(turn_over)
                    .into_iter()
                    .map(move |c| (c, p.clone()))
            })
            .collect();
        candidates.sort_by(|a, b| a.0.replica.cmp(&b.0.replica));
        let plain: Vec<Candidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
        if let Some(evict) = budget.evictions(need, &plain) {
            drop(budget);
            for replica_name in evict {
                if let Some((_, owner)) = candidates.iter().find(|(c, _)| c.replica == replica_name)
                {
                    owner.evict(&replica_name, &pool.config().name);
                }
            }
        }
        Placement::Wait
    }

    /// Reserves room for `replica` of `pool` on exactly `devices` (see
    /// [`Budget::reserve_on`]); whether it fit. Pools waiting longer come first.
    pub(crate) fn reserve_on(
        &self,
        pool: &str,
        replica: &str,
        need: GpuNeed,
        devices: &[u32],
    ) -> bool {
        if self.waiting().iter().any(|(p, _)| p != pool) {
            return false;
        }
        self.budget().reserve_on(pool, replica, need, devices)
    }

    /// `pool` no longer waits for room.
    pub(crate) fn stop_waiting(&self, pool: &str) {
        self.waiting().retain(|(p, _)| p != pool);
    }

    /// Gives back what `replica` held, and tells every pool that memory is free.
    pub(crate) fn release(&self, replica: &str) {
        self.budget().release(replica);
        for p in self.pools() {
            p.capacity_changed();
        }
    }

    /// Each GPU and what is placed on it, with the holders' states.
    pub fn status(&self) -> Vec<GpuStatus> {
        let budget = self.budget();
        let states: Vec<(String, ReplicaState)> = self
            .pools()
            .iter()
            .flat_map(|p| p.replica_states())
            .collect();
        budget
            .devices()
            .map(|(d, holds)| {
                let held: u64 = holds.iter().map(|h| h.memory).sum();
                GpuStatus {
                    index: d.index,
                    name: d.name.clone(),
                    source: d.source,
                    memory_bytes: d.memory,
                    free_bytes: d.memory.saturating_sub(held),
                    held: holds
                        .iter()
                        .map(|h| GpuHold {
                            pool: h.pool.clone(),
                            replica: h.replica.clone(),
                            state: states
                                .iter()
                                .find(|(r, _)| *r == h.replica)
                                .map(|(_, s)| *s)
                                .unwrap_or(ReplicaState::Starting),
                            memory_bytes: h.memory,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
