//! The GPUs `greenscale up` places replicas on: detected through NVML (the driver's library,
//! loaded at run time, so the binary runs where there is none) or declared, and shared by
//! every pool — a replica starts only where its memory fits, and idle replicas of other
//! pools are evicted to make room for one with work waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use greenscale_core::status::{GpuHold, GpuNeed, GpuSource, GpuStatus, ReplicaState};

use crate::placement::{Budget, Candidate, GpuDevice};
use crate::pool::Pool;

/// Reads the GPUs' own energy figures.
pub trait EnergyMeter: Send + Sync {
    /// Device `index`'s energy counter, joules (since the driver loaded); `None` when it
    /// cannot be read.
    fn joules(&self, index: u32) -> Option<f64>;
    /// Device `index`'s power draw now, watts.
    fn watts(&self, index: u32) -> Option<f64>;
}

/// NVML's counters: total energy consumption (millijoules, Volta and later) and power
/// usage (milliwatts).
struct NvmlMeter(nvml_wrapper::Nvml);

impl EnergyMeter for NvmlMeter {
    fn joules(&self, index: u32) -> Option<f64> {
        let device = self.0.device_by_index(index).ok()?;
        let mj = device.total_energy_consumption().ok()?;
        Some(mj as f64 / 1000.0)
    }

    fn watts(&self, index: u32) -> Option<f64> {
        let device = self.0.device_by_index(index).ok()?;
        Some(f64::from(device.power_usage().ok()?) / 1000.0)
    }
}

/// What the driver reports: the GPUs, and their energy meter where every one has a
/// readable energy counter.
pub struct Detected {
    /// The devices; empty where NVML cannot be loaded (no NVIDIA driver) or reports none.
    pub devices: Vec<GpuDevice>,
    /// Their energy counters, if readable.
    pub meter: Option<Arc<dyn EnergyMeter>>,
}

/// The machine's GPUs as the driver reports them.
pub fn detect() -> Detected {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "no NVML: no GPUs detected");
            return Detected {
                devices: Vec::new(),
                meter: None,
            };
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    let devices: Vec<GpuDevice> = (0..count)
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
        .collect();
    let meter = NvmlMeter(nvml);
    let readable = !devices.is_empty() && devices.iter().all(|d| meter.joules(d.index).is_some());
    Detected {
        devices,
        meter: readable.then(|| Arc::new(meter) as Arc<dyn EnergyMeter>),
    }
}

/// Where a replica's energy is counted from: per device, its share of the device (the
/// memory it holds over the device's) and the counter when it was placed.
type EnergyMark = Vec<(u32, f64, f64)>;

/// The GPU budget shared by the pools of one `greenscale up`.
pub struct Gpus {
    budget: Mutex<Budget>,
    pools: Mutex<Vec<Weak<Pool>>>,
    turn: Duration,
    grid_g_per_kwh: Option<f64>,
    /// Pools with work that found no room, and since when: room goes to the one that has
    /// waited longest, not to whichever pool decides first when memory frees.
    waiting: Mutex<Vec<(String, Instant)>>,
    /// The GPUs' energy counters, when the driver has them.
    meter: Option<Arc<dyn EnergyMeter>>,
    /// Each placed replica's energy mark (with a meter).
    marks: Mutex<HashMap<String, EnergyMark>>,
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
    /// `grid_g_per_kwh`, the grid's carbon intensity, gives the emissions figures; with a
    /// `meter`, each replica's energy is read from the GPUs' counters instead of estimated.
    pub fn new(
        devices: Vec<GpuDevice>,
        turn: Duration,
        grid_g_per_kwh: Option<f64>,
        meter: Option<Arc<dyn EnergyMeter>>,
    ) -> Arc<Gpus> {
        Arc::new(Gpus {
            budget: Mutex::new(Budget::new(devices)),
            pools: Mutex::default(),
            turn,
            grid_g_per_kwh,
            waiting: Mutex::default(),
            meter,
            marks: Mutex::default(),
        })
    }

    /// Whether energy is read from the GPUs' counters (else estimated from board power).
    pub fn measures_energy(&self) -> bool {
        self.meter.is_some()
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, HashMap<String, EnergyMark>> {
        self.marks.lock().expect("GPU energy marks lock")
    }

    /// Starts counting `replica`'s energy where it was just placed.
    fn mark(&self, budget: &Budget, replica: &str) {
        let Some(meter) = &self.meter else {
            return;
        };
        let mut mark = EnergyMark::new();
        for (d, holds) in budget.devices() {
            for h in holds.iter().filter(|h| h.replica == replica) {
                let Some(joules) = meter.joules(d.index) else {
                    return;
                };
                mark.push((d.index, h.memory as f64 / d.memory as f64, joules));
            }
        }
        self.marks().insert(replica.to_string(), mark);
    }

    /// The energy `replica` used since it was placed, joules, read from the counters: its
    /// share of each device's energy over that time. `None` without a meter.
    pub(crate) fn measured_joules(&self, replica: &str) -> Option<f64> {
        let meter = self.meter.as_ref()?;
        let marks = self.marks();
        let mark = marks.get(replica)?;
        mark.iter()
            .map(|&(index, share, start)| Some(share * (meter.joules(index)? - start).max(0.0)))
            .sum()
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
            self.mark(&budget, replica);
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
        let mut budget = self.budget();
        let placed = budget.reserve_on(pool, replica, need, devices);
        if placed {
            self.mark(&budget, replica);
        }
        placed
    }

    /// `pool` no longer waits for room.
    pub(crate) fn stop_waiting(&self, pool: &str) {
        self.waiting().retain(|(p, _)| p != pool);
    }

    /// Gives back what `replica` held, and tells every pool that memory is free. Returns
    /// the energy it used while placed, joules, when the counters tell.
    pub(crate) fn release(&self, replica: &str) -> Option<f64> {
        let used = self.measured_joules(replica);
        self.marks().remove(replica);
        self.budget().release(replica);
        for p in self.pools() {
            p.capacity_changed();
        }
        used
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
                    power_w: self.meter.as_ref().and_then(|m| m.watts(d.index)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters the test sets by hand.
    #[derive(Default)]
    struct FakeMeter(Mutex<HashMap<u32, f64>>);

    impl FakeMeter {
        fn set(&self, index: u32, joules: f64) {
            self.0.lock().unwrap().insert(index, joules);
        }
    }

    impl EnergyMeter for FakeMeter {
        fn joules(&self, index: u32) -> Option<f64> {
            self.0.lock().unwrap().get(&index).copied()
        }
        fn watts(&self, _: u32) -> Option<f64> {
            Some(61.5)
        }
    }

    #[test]
    fn a_replica_s_energy_is_its_share_of_its_gpu_s_counter_while_it_is_placed() {
        let meter = Arc::new(FakeMeter::default());
        meter.set(0, 10_000.0);
        let device = GpuDevice {
            index: 0,
            name: "test".into(),
            memory: 1 << 30,
            source: GpuSource::Detected,
            power_w: Some(300),
        };
        let gpus = Gpus::new(
            vec![device],
            Duration::from_secs(30),
            None,
            Some(meter.clone()),
        );
        assert!(gpus.measures_energy());
        let quarter = GpuNeed {
            devices: 1,
            memory_bytes: Some(256 << 20),
        };
        assert!(gpus.reserve_on("a", "a-1", quarter, &[0]));
        // The device used 400 J meanwhile: a quarter of it is the replica's.
        meter.set(0, 10_400.0);
        assert_eq!(gpus.measured_joules("a-1"), Some(100.0));
        assert_eq!(gpus.release("a-1"), Some(100.0));
        // Gone: nothing more is counted for it, and the GPU's draw is what the driver says.
        meter.set(0, 20_000.0);
        assert_eq!(gpus.measured_joules("a-1"), None);
        assert_eq!(gpus.release("a-1"), None);
        let status = gpus.status();
        assert_eq!(status[0].power_w, Some(61.5));
        assert!(status[0].held.is_empty());
        // Without a meter, nothing is measured.
        let plain = Gpus::new(Vec::new(), Duration::from_secs(30), None, None);
        assert!(!plain.measures_energy());
        assert_eq!(plain.measured_joules("a-1"), None);
    }
}
