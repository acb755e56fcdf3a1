//! The GPU budget of one machine: which replica holds how much memory on which device,
//! where a new replica fits, and which idle replicas to evict when none does. Pure: the
//! pools call it under their own lock and act on its answers.

use greenscale_core::status::{GpuNeed, GpuSource};

/// One accelerator: its index and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// Device index (what `CUDA_VISIBLE_DEVICES` names).
    pub index: u32,
    /// Device name (`declared` for a declared one).
    pub name: String,
    /// Memory, bytes.
    pub memory: u64,
    /// Detected or declared.
    pub source: GpuSource,
    /// Board power, watts, if declared: what energy is estimated from.
    pub power_w: Option<u32>,
}

/// Memory a replica holds on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The pool.
    pub pool: String,
    /// The replica.
    pub replica: String,
    /// Bytes held.
    pub memory: u64,
}

/// The devices and what is placed on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    devices: Vec<(GpuDevice, Vec<Hold>)>,
}

/// An idle replica that could be evicted, with what evicting it is expected to cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The replica.
    pub replica: String,
    /// Expected loss of evicting it (lower goes first): its pool's next cold start,
    /// weighted by how soon that pool is likely to need it again.
    pub loss: f64,
}

impl Budget {
    /// A budget over `devices`, nothing placed yet.
    pub fn new(devices: Vec<GpuDevice>) -> Self {
        Budget {
            devices: devices.into_iter().map(|d| (d, Vec::new())).collect(),
        }
    }

    /// Whether there are GPU limits at all.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The devices and their holds.
    pub fn devices(&self) -> impl Iterator<Item = (&GpuDevice, &[Hold])> {
        self.devices.iter().map(|(d, h)| (d, h.as_slice()))
    }

    fn free(device: &GpuDevice, holds: &[Hold], ignoring: &[String]) -> u64 {
        let held: u64 = holds
            .iter()
            .filter(|h| !ignoring.contains(&h.replica))
            .map(|h| h.memory)
            .sum();
        device.memory.saturating_sub(held)
    }

    /// Where `need` fits if the replicas in `ignoring` were gone: device indices and the
    /// bytes to hold on each. Best fit: the devices left with the least free memory.
    fn fit_ignoring(&self, need: GpuNeed, ignoring: &[String]) -> Option<Vec<(u32, u64)>> {
        let mut fitting: Vec<(u64, u32, u64)> = self
            .devices
            .iter()
            .filter_map(|(d, holds)| {
                let free = Self::free(d, holds, ignoring);
                let want = need.memory_bytes.unwrap_or(d.memory);
                (want <= free && (need.memory_bytes.is_some() || free == d.memory))
                    .then(|| (free - want, d.index, want))
            })
            .collect();
        if need.devices == 0 || (fitting.len() as u32) < need.devices {
            return None;
        }
        fitting.sort();
        Some(
            fitting
                .into_iter()
                .take(need.devices as usize)
                .map(|(_, index, want)| (index, want))
                .collect(),
        )
    }

    /// Whether `need` could ever fit here (on empty devices).
    pub fn could_fit(&self, need: GpuNeed) -> bool {
        Budget::new(self.devices.iter().map(|(d, _)| d.clone()).collect())
            .fit_ignoring(need, &[])
            .is_some()
    }

    /// Places `replica` of `pool` where `need` fits; returns its device indices, or `None`
    /// when it fits nowhere now.
    pub fn reserve(&mut self, pool: &str, replica: &str, need: GpuNeed) -> Option<Vec<u32>> {
        let placed = self.fit_ignoring(need, &[])?;
        for &(index, memory) in &placed {
            let (_, holds) = self
                .devices
                .iter_mut()
                .find(|(d, _)| d.index == index)
                .expect("fit_ignoring returns known devices");
            holds.push(Hold {
                pool: pool.to_string(),
                replica: replica.to_string(),
                memory,
            });
        }
        Some(placed.into_iter().map(|(i, _)| i).collect())
    }

    /// Places `replica` of `pool` on exactly `devices` (a sleeper waking where its process
    /// lives) if `need` fits on each of them now; whether it did.
    pub fn reserve_on(
        &mut self,
        pool: &str,
        replica: &str,
        need: GpuNeed,
        devices: &[u32],
    ) -> bool {
        let fits = devices.iter().all(|&index| {
            self.devices.iter().any(|(d, holds)| {
                d.index == index
                    && need.memory_bytes.unwrap_or(d.memory) <= Self::free(d, holds, &[])
            })
        });
        if !fits {
            return false;
        }
        for (d, holds) in &mut self.devices {
            if devices.contains(&d.index) {
                holds.push(Hold {
                    pool: pool.to_string(),
                    replica: replica.to_string(),
                    memory: need.memory_bytes.unwrap_or(d.memory),
                });
            }
        }
        true
    }

    /// The board power `replica` accounts for, watts: on each device it holds, the device's
    /// power in the share of its memory the replica holds. `None` unless every such device
    /// has a declared power.
    pub fn power_of(&self, replica: &str) -> Option<f64> {
        let mut total = 0.0;
        let mut any = false;
        for (d, holds) in &self.devices {
            for h in holds.iter().filter(|h| h.replica == replica) {
                total += f64::from(d.power_w?) * h.memory as f64 / d.memory as f64;
                any = true;
            }
        }
        any.then_some(total)
    }

    /// Gives back what `replica` holds.
    pub fn release(&mut self, replica: &str) {
        for (_, holds) in &mut self.devices {
            holds.retain(|h| h.replica != replica);
        }
    }

    /// Which of `candidates` to evict so that `need` fits: the fewest, taken in order of
    /// least loss, and only those whose memory helps. `None` when evicting all of them
    /// would still not make room.
    pub fn evictions(&self, need: GpuNeed, candidates: &[Candidate]) -> Option<Vec<String>> {
        let mut order: Vec<&Candidate> = candidates.iter().collect();
        order.sort_by(|a, b| a.loss.total_cmp(&b.loss).then(a.replica.cmp(&b.replica)));
        let mut chosen: Vec<String> = Vec::new();
        if self.fit_ignoring(need, &chosen).is_some() {
            return Some(chosen);
        }
        for c in order {
            chosen.push(c.replica.clone());
            if self.fit_ignoring(need, &chosen).is_some() {
                // Keep only the evictions the fit needs (an earlier one may have freed a
                // device that the fit does not use).
                let mut needed = chosen.clone();
                for r in chosen.iter().rev() {
                    let without: Vec<String> = needed.iter().filter(|x| *x != r).cloned().collect();
                    if self.fit_ignoring(need, &without).is_some() {
                        needed = without;
                    }
                }
                return Some(needed);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpus(sizes: &[u64]) -> Budget {
        Budget::new(
            sizes
                .iter()
                .enumerate()
                .map(|(i, &g)| GpuDevice {
                    index: i as u32,
                    name: "declared".into(),
                    memory: g * GIB,
                    source: GpuSource::Declared,
                    power_w: Some(300),
                })
                .collect(),
        )
    }

    fn need(devices: u32, gib: Option<u64>) -> GpuNeed {
        GpuNeed {
            devices,
            memory_bytes: gib.map(|g| g * GIB),
        }
    }

    fn cand(replica: &str, loss: f64) -> Candidate {
        Candidate {
            replica: replica.into(),
            loss,
        }
    }

    #[test]
    fn replicas_fit_best_first_and_never_beyond_a_device() {
        let mut b = gpus(&[80, 40]);
        // 30 GiB goes to the smaller device (least left over), then to the larger one.
        assert_eq!(b.reserve("a", "a-1", need(1, Some(30))), Some(vec![1]));
        assert_eq!(b.reserve("a", "a-2", need(1, Some(30))), Some(vec![0]));
        assert_eq!(b.reserve("b", "b-1", need(1, Some(60))), None);
        assert_eq!(b.reserve("b", "b-1", need(1, Some(50))), Some(vec![0]));
        assert_eq!(b.reserve("c", "c-1", need(1, Some(11))), None);
        b.release("a-1");
        assert_eq!(b.reserve("c", "c-1", need(1, Some(11))), Some(vec![1]));
        assert!(!b.could_fit(need(1, Some(81))));
        assert!(b.could_fit(need(2, Some(40))));
    }

    #[test]
    fn a_replica_accounts_for_its_share_of_the_board_power() {
        let mut b = gpus(&[24, 24]);
        b.reserve("a", "a-1", need(1, Some(6)));
        b.reserve("b", "b-1", need(2, None));
        assert_eq!(b.power_of("a-1"), Some(75.0), "a quarter of a 300 W board");
        assert_eq!(b.power_of("nobody"), None);
        b.release("a-1");
        assert_eq!(
            b.power_of("b-1"),
            None,
            "b needs two whole devices: not placed"
        );
    }

    #[test]
    fn a_whole_device_need_takes_only_an_empty_device() {
        let mut b = gpus(&[24, 24]);
        assert_eq!(b.reserve("a", "a-1", need(1, Some(1))), Some(vec![0]));
        assert_eq!(b.reserve("b", "b-1", need(1, None)), Some(vec![1]));
        assert_eq!(b.reserve("c", "c-1", need(1, None)), None);
        assert_eq!(b.reserve("d", "d-1", need(2, Some(1))), None);
    }

    #[test]
    fn evictions_take_the_least_loss_first_and_only_what_the_fit_needs() {
        let mut b = gpus(&[24, 24]);
        b.reserve("a", "a-1", need(1, Some(20))); // device 0
        b.reserve("b", "b-1", need(1, Some(20))); // device 1
        // Either eviction makes room: the cheaper one goes.
        let e = b.evictions(need(1, Some(20)), &[cand("a-1", 30.0), cand("b-1", 3.0)]);
        assert_eq!(e, Some(vec!["b-1".to_string()]));
        // Two devices needed: both go.
        let e = b.evictions(need(2, Some(20)), &[cand("a-1", 30.0), cand("b-1", 3.0)]);
        assert_eq!(e.map(|v| v.len()), Some(2));
        // Only busy replicas (no candidates): no room can be made.
        assert_eq!(b.evictions(need(1, Some(20)), &[]), None);
        // It fits already: nothing to evict.
        assert_eq!(
            b.evictions(need(1, Some(4)), &[cand("a-1", 1.0)]),
            Some(vec![])
        );
    }

    #[test]
    fn an_eviction_that_does_not_help_is_not_made() {
        let mut b = gpus(&[24, 24]);
        b.reserve("a", "a-1", need(1, Some(10))); // device 0, 14 left
        b.reserve("b", "b-1", need(1, Some(20))); // device 1, 4 left
        b.reserve("c", "c-1", need(1, Some(12))); // device 0, 2 left
        // 20 GiB: evicting a-1 (cheapest) alone leaves 12 on device 0 — not enough; then
        // b-1 frees device 1, which is enough alone: a-1 is kept.
        let e = b.evictions(need(1, Some(20)), &[cand("a-1", 1.0), cand("b-1", 2.0)]);
        assert_eq!(e, Some(vec!["b-1".to_string()]));
    }

    /// What the pools do in the model: a job arrives at one, or its job ends.
    #[derive(Debug, Clone)]
    enum Op {
        Arrive(usize),
        Finish(usize),
    }

    proptest! {
        /// Random arrivals to several pools sharing a budget: a replica with a job is never
        /// evicted, no device ever holds more than its memory, and evicting what
        /// `evictions` names always makes room.
        #[test]
        fn evictions_never_take_a_busy_replica_and_always_make_room(
            devices in proptest::collection::vec(1u64..=4, 1..3),
            needs in proptest::collection::vec(1u64..=3, 3),
            ops in proptest::collection::vec(
                prop_oneof![(0usize..3).prop_map(Op::Arrive), (0usize..3).prop_map(Op::Finish)],
                1..60,
            ),
        ) {
            let mut b = gpus(&devices);
            // Per pool: whether it has a replica, and whether that replica runs a job.
            let mut replica: [Option<bool>; 3] = [None; 3];
            let mut generation = [0u32; 3];
            let name = |p: usize, g: u32| format!("p{p}-{g}");
            for op in ops {
                match op {
                    Op::Finish(p) => {
                        if let Some(busy) = replica[p].as_mut() {
                            *busy = false;
                        }
                    }
                    Op::Arrive(p) if replica[p].is_some() => replica[p] = Some(true),
                    Op::Arrive(p) => {
                        let need = need(1, Some(needs[p]));
                        if !b.could_fit(need) {
                            continue;
                        }
                        let idle: Vec<Candidate> = (0..3)
                            .filter(|&q| q != p && replica[q] == Some(false))
                            .map(|q| cand(&name(q, generation[q]), needs[q] as f64))
                            .collect();
                        if let Some(evict) = b.evictions(need, &idle) {
                            for r in &evict {
                                let q = (0..3).find(|&q| replica[q].is_some() && name(q, generation[q]) == *r);
                                let q = q.expect("evictions name only candidates");
                                prop_assert_eq!(replica[q], Some(false), "a busy replica was evicted");
                                b.release(r);
                                replica[q] = None;
                                generation[q] += 1;
                            }
                            prop_assert!(b.reserve(&format!("p{p}"), &name(p, generation[p]), need).is_some(), "room was not made");
                            replica[p] = Some(true);
                        }
                    }
                }
                for (d, holds) in b.devices() {
                    prop_assert!(holds.iter().map(|h| h.memory).sum::<u64>() <= d.memory);
                }
            }
        }
    }
}
