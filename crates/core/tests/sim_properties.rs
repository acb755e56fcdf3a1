//! Properties of the policies and the simulator on random, synthetic and real traces.

use greenscale_core::policy::{Decision, Observation, POLICY_NAMES, Policy, Spec};
use greenscale_core::sim::{self, Job, Pool, ServiceModel, SimConfig, Trace, synthetic};
use proptest::prelude::*;

/// Wraps a policy and checks every decision it makes.
struct Checked {
    inner: Box<dyn Policy>,
    greenscale: bool,
}

impl Checked {
    fn check(&self, obs: &Observation, d: Decision) -> Decision {
        assert!(
            d.desired <= obs.max_replicas,
            "{} wanted {} > max {}",
            self.inner.name(),
            d.desired,
            obs.max_replicas
        );
        if self.greenscale {
            let need = obs.in_flight.div_ceil(obs.concurrency as u64) as u32;
            assert!(
                d.desired >= need.max(obs.busy),
                "greenscale went below in-flight need: {d:?} {obs:?}"
            );
        }
        assert!(!d.reason.to_string().is_empty());
        d
    }
}

impl Policy for Checked {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn decide(&mut self, obs: &Observation) -> Decision {
        let d = self.inner.decide(obs);
        self.check(obs, d)
    }
    fn on_arrival(&mut self, obs: &Observation) -> Option<Decision> {
        let d = self.inner.on_arrival(obs)?;
        Some(self.check(obs, d))
    }
}

fn jobs_strategy() -> impl Strategy<Value = Vec<Job>> {
    proptest::collection::vec((0.0f64..600.0, 0.1f64..20.0), 1..120).prop_map(|v| {
        let mut jobs: Vec<Job> = v
            .into_iter()
            .map(|(arrival, service)| Job {
                arrival,
                service,
                deadline: None,
            })
            .collect();
        jobs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
        jobs
    })
}

fn spec_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("greenscale".to_string()),
        (0u32..2000).prop_map(|c| format!("greenscale:cold_cost={c}")),
        Just("keda-seed".to_string()),
        Just("keda-default".to_string()),
        // KEDA's cooldown must outlast a job (20 s at most here), or it scales to zero under
        // every run of it and the job never finishes (see the keda tests).
        Just("keda:poll=2s,cooldown=25s,list_length=3,max=3".to_string()),
        Just("knative".to_string()),
        Just("keepalive:45s".to_string()),
        Just("histogram".to_string()),
        Just("llama-swap:ttl=30s".to_string()),
        Just("ollama".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_job_is_served_exactly_once_within_limits(
        jobs in jobs_strategy(),
        spec in spec_strategy(),
        concurrency in 1u32..6,
        max_replicas in 1u32..8,
        cold_start in 0.5f64..60.0,
    ) {
        let cfg = SimConfig { cold_start, concurrency, max_replicas, ..SimConfig::default() };
        let parsed = Spec::parse(&spec).unwrap();
        let mut checked = Checked {
            inner: parsed.build(),
            greenscale: parsed.name() == "greenscale",
        };
        let out = sim::simulate_pool(&jobs, &mut checked, &cfg, false);
        prop_assert_eq!(out.jobs as usize, jobs.len());
        prop_assert_eq!(out.waits.len(), jobs.len());
        prop_assert!(out.peak_replicas <= max_replicas);
        prop_assert!(out.waits.iter().all(|w| *w >= 0.0));
        prop_assert!(out.gpu_seconds > 0.0);
        if parsed.name() == "greenscale" {
            prop_assert_eq!(out.interrupted, 0);
        }
    }
}

#[test]
fn same_seed_same_report() {
    let cfg = SimConfig::default();
    for shape in synthetic::SHAPES {
        let trace = Trace {
            pools: vec![Pool {
                name: shape.to_string(),
                jobs: synthetic::by_name(shape, 11).unwrap(),
            }],
        };
        let oracle = sim::oracle(&trace, &cfg);
        for name in POLICY_NAMES {
            let spec = Spec::parse(name).unwrap();
            let a = sim::simulate(&trace, &spec, &cfg, oracle);
            let b = sim::simulate(&trace, &spec, &cfg, oracle);
            assert_eq!(a, b, "{shape} {name}");
            assert_eq!(
                a.0.jobs as usize,
                trace.jobs(),
                "{shape} {name}: every job served"
            );
        }
    }
}

#[test]
fn multi_pool_traces_sum_per_pool_results() {
    let text = "HashFunction,HashApp,HashOwner,minute_1,minute_2,minute_3,minute_4\n\
                a,x,o,3,0,0,5\nb,x,o,0,10,0,0\nc,x,o,0,0,0,0\n";
    let trace = sim::trace::parse(text, sim::Format::Auto, &ServiceModel::default()).unwrap();
    assert_eq!(trace.pools.len(), 3);
    let cfg = SimConfig::default();
    let oracle = sim::oracle(&trace, &cfg);
    let spec = Spec::parse("greenscale").unwrap();
    let (report, _) = sim::simulate(&trace, &spec, &cfg, oracle);
    assert_eq!(report.jobs, 18);
    let mut total = 0.0;
    for pool in &trace.pools {
        let mut p = spec.build();
        total += sim::simulate_pool(&pool.jobs, p.as_mut(), &cfg, false).gpu_seconds;
    }
    assert!((report.gpu_seconds - total).abs() < 1e-6);
}

/// The shared real traces (beside the project, as in CI).
fn real_trace(name: &str) -> Trace {
    let path = format!(
        "{}/../../../shared/traces/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    sim::trace::parse(&text, sim::Format::Auto, &ServiceModel::default()).unwrap()
}

#[test]
fn real_traces_every_policy_serves_every_job() {
    let cfg = SimConfig::default();
    for name in [
        "AzureLLMInferenceTrace_code.csv",
        "AzureLLMInferenceTrace_conv.csv",
    ] {
        let trace = real_trace(name);
        let oracle = sim::oracle(&trace, &cfg);
        assert!(oracle > 0.0);
        for policy in POLICY_NAMES {
            let (r, timeline) = sim::simulate(&trace, &Spec::parse(policy).unwrap(), &cfg, oracle);
            assert_eq!(r.jobs as usize, trace.jobs(), "{name} {policy}");
            assert!(r.peak_replicas <= cfg.max_replicas);
            assert!(!timeline.is_empty());
            if *policy == "greenscale" {
                assert_eq!(r.interrupted, 0, "{name}");
            }
        }
    }
}
