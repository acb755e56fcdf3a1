//! Tenants and priority classes: who a job belongs to, how urgent it is, and the share and
//! quotas each tenant has. The queue backends enforce these; the rule they share is stated
//! here, in [`FairClock`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// The tenant of jobs that name none (entries pushed straight onto the queue, bare API keys).
pub const DEFAULT_TENANT: &str = "default";

/// Checks a tenant name: 1 to 64 letters, digits, `-`, `_` or `.` (it is part of queue key
/// names and metric labels).
pub fn validate_tenant(name: &str) -> Result<(), InvalidInput> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput(format!(
            "tenant {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A job's priority class: a worker always leases from the highest non-empty class.
/// `interactive` is 0 (the default), `batch` is -10; any whole number from -100 to 100 may be
/// given. Classes below zero are deferrable: their backlog alone does not wake a pool from
/// zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority(pub i32);

impl Priority {
    /// Work someone waits for; the default.
    pub const INTERACTIVE: Priority = Priority(0);
    /// Work that may wait for warm capacity.
    pub const BATCH: Priority = Priority(-10);
    /// The allowed range of numbers.
    pub const RANGE: std::ops::RangeInclusive<i32> = -100..=100;

    /// True for classes whose backlog may wait for warm capacity (below `interactive`).
    pub fn is_deferrable(self) -> bool {
        self.0 < 0
    }

    /// Reads `interactive`, `batch` or a whole number in [`Priority::RANGE`].
    pub fn parse(text: &str) -> Result<Priority, InvalidInput> {
        match text.trim() {
            "interactive" => Ok(Priority::INTERACTIVE),
            "batch" => Ok(Priority::BATCH),
            t => t
                .parse::<i32>()
                .ok()
                .map(Priority)
                .filter(|p| Priority::RANGE.contains(&p.0))
                .ok_or_else(|| {
                    InvalidInput(format!(
                        "priority {t:?} must be \"interactive\", \"batch\" or a whole number from -100 to 100"
                    ))
                }),
        }
    }

    /// The name of the class: `interactive`, `batch`, or the number.
    pub fn name(self) -> String {
        match self {
            Priority::INTERACTIVE => "interactive".into(),
            Priority::BATCH => "batch".into(),
            Priority(n) => n.to_string(),
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.0)
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Number(i64),
            Name(String),
        }
        let text = match Form::deserialize(d)? {
            Form::Number(n) => n.to_string(),
            Form::Name(s) => s,
        };
        Priority::parse(&text).map_err(|e| serde::de::Error::custom(e.0))
    }
}

/// One tenant's share and quotas, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Its share of leases within a class, relative to other tenants' (default 1).
    #[serde(default = "one")]
    pub weight: f64,
    /// The most of its jobs running at once; more wait in the queue.
    #[serde(default)]
    pub max_running: Option<u32>,
    /// The most of its jobs queued at once; more are refused (HTTP 429).
    #[serde(default)]
    pub max_queued: Option<u64>,
    /// Tokens (prompt and generated) its jobs may use per minute; past it, new jobs are
    /// refused until the minute ends.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

fn one() -> f64 {
    1.0
}

impl Default for TenantSettings {
    fn default() -> Self {
        TenantSettings {
            weight: 1.0,
            max_running: None,
            max_queued: None,
            tokens_per_minute: None,
        }
    }
}

impl TenantSettings {
    /// Checks the numbers: a weight above zero and quotas of at least one.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if !(self.weight.is_finite() && self.weight > 0.0 && self.weight <= 1e6) {
            return Err(InvalidInput(format!(
                "weight {} must be above 0 (and at most 1000000)",
                self.weight
            )));
        }
        if self.max_running == Some(0) || self.max_queued == Some(0) {
            return Err("max_running and max_queued must be at least 1".into());
        }
        if self.tokens_per_minute == Some(0) {
            return Err("tokens_per_minute must be at least 1".into());
        }
        Ok(())
    }
}

/// Every configured tenant's settings; tenants not named here get the defaults.
pub type Tenants = BTreeMap<String, TenantSettings>;

/// What a tenant has in the queue right now and how its runs ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStats {
    /// The tenant.
    pub tenant: String,
    /// Jobs waiting (including those waiting for a retry).
    pub queued: u64,
    /// Jobs held by workers.
    pub running: u64,
    /// Tokens its jobs used in the current minute.
    pub tokens_this_minute: u64,
    /// How its runs ended: `succeeded`, `failed`, `dead`, `cancelled`, `expired`, `retry`.
    pub outcomes: BTreeMap<String, u64>,
}

/// Which quota refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `max_queued`.
    Queued,
    /// `tokens_per_minute`.
    Tokens,
}

impl Quota {
    /// The setting's name, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Queued => "max_queued",
            Quota::Tokens => "tokens_per_minute",
        }
    }
}

/// The fairness rule every backend implements: start-time fair queuing with unit cost, per
/// priority class.
///
/// Each class has a virtual clock `V`, the tag of the job leased last. A tenant's next job is
/// tagged, when it becomes the head of the tenant's queue in the class, with
/// `max(V, F)` where `F` is the tenant's finish tag (the previous head's tag plus
/// `1 / weight`); a lease takes the lowest tag among tenants that are below their
/// `max_running` (ties: the tenant whose name sorts first, byte by byte). So a tenant with weight 2 gets
/// two leases for every one of a tenant with weight 1 while both have work, a tenant that
/// was idle starts at the current clock (no credit saved up, no debt), and a tenant's own
/// jobs stay in order.
///
/// This type is the rule in memory: the model the backends are tested against, and the
/// order the simulator serves in.
#[derive(Debug, Default, Clone)]
pub struct FairClock {
    /// Per class: the virtual clock and each tenant's finish tag.
    classes: HashMap<Priority, (f64, HashMap<String, f64>)>,
}

impl FairClock {
    /// The tag a tenant's new head job gets in `class`.
    pub fn head_tag(&self, class: Priority, tenant: &str) -> f64 {
        self.classes.get(&class).map_or(0.0, |(v, finish)| {
            finish.get(tenant).copied().unwrap_or(0.0).max(*v)
        })
    }

    /// Records that the head job of `tenant` with tag `tag` was leased: the class clock moves
    /// to `tag` and the tenant's finish tag to `tag + 1 / weight`. Returns the finish tag
    /// (its next head's tag while it stays backlogged).
    pub fn leased(&mut self, class: Priority, tenant: &str, tag: f64, weight: f64) -> f64 {
        let (v, finish) = self.classes.entry(class).or_default();
        *v = tag;
        let next = tag + 1.0 / weight;
        finish.insert(tenant.to_string(), next);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_read_names_and_numbers() {
        assert_eq!(Priority::parse("batch").unwrap(), Priority::BATCH);
        assert_eq!(Priority::parse("7").unwrap(), Priority(7));
        assert!(Priority::parse("101").is_err() && Priority::parse("soon").is_err());
        let p: Priority = serde_json::from_str("\"interactive\"").unwrap();
        assert_eq!(p, Priority::INTERACTIVE);
        let p: Priority = serde_json::from_str("-3").unwrap();
        assert!(p.is_deferrable());
        assert_eq!(serde_json::to_string(&Priority::BATCH).unwrap(), "-10");
    }

    #[test]
    fn tenant_names_are_checked() {
        assert!(validate_tenant("team-a.prod_1").is_ok());
        assert!(validate_tenant("").is_err() && validate_tenant("a b").is_err());
        assert!(validate_tenant("a:b").is_err());
    }

    #[test]
    fn the_clock_interleaves_by_weight() {
        // A (weight 2) and B (weight 1) both backlogged: A gets two of every three leases.
        let mut clock = FairClock::default();
        let c = Priority::INTERACTIVE;
        let (mut a, mut b) = (clock.head_tag(c, "a"), clock.head_tag(c, "b"));
        let mut order = String::new();
        for _ in 0..9 {
            if a <= b {
                a = clock.leased(c, "a", a, 2.0);
                order.push('a');
            } else {
                b = clock.leased(c, "b", b, 1.0);
                order.push('b');
            }
        }
        assert_eq!(order.matches('a').count(), 6, "{order}");
        // A tenant idle until now starts at the clock, not at zero.
        assert!(clock.head_tag(c, "late") >= a.min(b) - 1.0);
    }
}
