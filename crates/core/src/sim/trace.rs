//! Request traces: the formats the simulator reads.
//!
//! - `azure-llm`: Azure LLM inference trace CSV, `TIMESTAMP,ContextTokens,GeneratedTokens`.
//! - `azure-functions`: Azure Functions 2019 per-minute counts, one row per function
//!   (each row is its own pool); a minute's arrivals are spread inside the minute with a
//!   seeded random generator.
//! - `jsonl`: one JSON object per line with `timestamp` (ms from the start),
//!   `input_length`, `output_length` (the Mooncake format).
//! - `plain`: one arrival time in seconds per line, optionally `,service_seconds`.

use rand::{Rng, SeedableRng};
use serde_json::Value;

/// One request: when it arrives and how long it runs once started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Job {
    /// Arrival, seconds from the start of the trace.
    pub arrival: f64,
    /// Service time, seconds.
    pub service: f64,
    /// A batch job's deadline (seconds from the start of the trace): it is of the batch
    /// class and must start by then. `None` for interactive jobs.
    pub deadline: Option<f64>,
}

/// A model pool's requests, sorted by arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// The pool's name (for multi-pool traces, the function's hash).
    pub name: String,
    /// Its jobs, by arrival.
    pub jobs: Vec<Job>,
}

/// A whole trace: one pool, or many that scale independently.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    /// The pools.
    pub pools: Vec<Pool>,
}

impl Trace {
    /// Total jobs over all pools.
    pub fn jobs(&self) -> usize {
        self.pools.iter().map(|p| p.jobs.len()).sum()
    }
}

/// The trace formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Decide from the content.
    Auto,
    /// Azure LLM inference CSV.
    AzureLlm,
    /// Azure Functions per-minute counts.
    AzureFunctions,
    /// Mooncake-style JSON lines.
    Jsonl,
    /// Arrival seconds per line.
    Plain,
}

impl std::str::FromStr for Format {
    type Err = crate::InvalidInput;
    fn from_str(s: &str) -> Result<Self, crate::InvalidInput> {
        Ok(match s {
            "auto" => Format::Auto,
            "azure-llm" => Format::AzureLlm,
            "azure-functions" => Format::AzureFunctions,
            "jsonl" => Format::Jsonl,
            "plain" => Format::Plain,
            other => {
                return Err(crate::InvalidInput(format!(
                    "unknown trace format {other:?} (auto, azure-llm, azure-functions, jsonl, plain)"
                )));
            }
        })
    }
}

/// How service times are derived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceModel {
    /// Prompt tokens processed per second.
    pub prefill_tps: f64,
    /// Tokens generated per second.
    pub decode_tps: f64,
    /// Service time for formats without tokens or times, seconds.
    pub default_service: f64,
    /// Seed for spreading per-minute counts.
    pub seed: u64,
}

impl Default for ServiceModel {
    fn default() -> Self {
        ServiceModel {
            prefill_tps: 5000.0,
            decode_tps: 50.0,
            default_service: 2.0,
            seed: 1,
        }
    }
}

impl ServiceModel {
    fn service_for(&self, prompt: f64, output: f64) -> f64 {
        prompt / self.prefill_tps + output / self.decode_tps
    }
}

/// A malformed line: where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TraceError {
    /// 1-based line number (0 for the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

fn bad(line: usize, reason: impl Into<String>) -> TraceError {
    TraceError {
        line,
        reason: reason.into(),
    }
}

/// Guesses the format from the first non-empty line.
pub fn detect(text: &str) -> Format {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let first = first.trim_start_matches('\u{feff}').trim();
    if first.starts_with("TIMESTAMP") {
        Format::AzureLlm
    } else if first.contains("HashFunction") || first.contains("HashApp") {
        Format::AzureFunctions
    } else if first.starts_with('{') {
        Format::Jsonl
    } else {
        Format::Plain
    }
}

/// Parses a trace. Never panics on bad input: the first malformed line is reported.
pub fn parse(text: &str, format: Format, model: &ServiceModel) -> Result<Trace, TraceError> {
    let format = if format == Format::Auto {
        detect(text)
    } else {
        format
    };
    let trace = match format {
        Format::AzureLlm => single(parse_azure_llm(text, model)?),
        Format::AzureFunctions => parse_azure_functions(text, model)?,
        Format::Jsonl => single(parse_jsonl(text, model)?),
        Format::Plain | Format::Auto => single(parse_plain(text, model)?),
    };
    if trace.jobs() == 0 {
        return Err(bad(0, "the trace has no requests"));
    }
    Ok(trace)
}

fn single(mut jobs: Vec<Job>) -> Trace {
    normalize(&mut jobs);
    Trace {
        pools: vec![Pool {
            name: "trace".into(),
            jobs,
        }],
    }
}

/// Sorts by arrival and shifts so the first arrival is at 0.
fn normalize(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    if let Some(first) = jobs.first().map(|j| j.arrival) {
        for j in jobs.iter_mut() {
            j.arrival -= first;
        }
    }
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_start_matches('\u{feff}').trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn number(line: usize, what: &str, text: &str) -> Result<f64, TraceError> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| bad(line, format!("{what} {text:?} is not a number")))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad(
            line,
            format!("{what} {text:?} must be a non-negative number"),
        ));
    }
    Ok(v)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC).
fn parse_timestamp(line: usize, text: &str) -> Result<f64, TraceError> {
    let err = || {
        bad(
            line,
            format!("timestamp {text:?} is not YYYY-MM-DD HH:MM:SS[.fff]"),
        )
    };
    let (date, time) = text.trim().split_once([' ', 'T']).ok_or_else(err)?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(mo)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(err());
    };
    let mut t = time.trim_end_matches('Z').split(':');
    let (Some(h), Some(mi), Some(s), None) = (t.next(), t.next(), t.next(), t.next()) else {
        return Err(err());
    };
    let h: i64 = h.parse().map_err(|_| err())?;
    let mi: i64 = mi.parse().map_err(|_| err())?;
    let s: f64 = s.parse().map_err(|_| err())?;
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || !(0.0..61.0).contains(&s)
    {
        return Err(err());
    }
    Ok(days_from_civil(y, mo, day) as f64 * 86_400.0 + (h * 3600 + mi * 60) as f64 + s)
}

fn parse_azure_llm(text: &str, model: &ServiceModel) -> Result<Vec<Job>, TraceError> {
    let mut it = lines(text);
    let (hl, header) = it.next().ok_or_else(|| bad(0, "empty file"))?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let find = |name: &str| {
        cols.iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .ok_or_else(|| bad(hl, format!("header has no {name} column")))
    };
    let (ti, ci, gi) = (
        find("TIMESTAMP")?,
        find("ContextTokens")?,
        find("GeneratedTokens")?,
    );
    let mut jobs = Vec::new();
    for (n, l) in it {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() != cols.len() {
            return Err(bad(
                n,
                format!("expected {} fields, found {}", cols.len(), f.len()),
            ));
        }
        let arrival = parse_timestamp(n, f[ti])?;
        let prompt = number(n, "ContextTokens", f[ci])?;
        let output = number(n, "GeneratedTokens", f[gi])?;
        jobs.push(Job {
            arrival,
            service: model.service_for(prompt, output),
            deadline: None,
        });
    }
    Ok(jobs)
}

fn parse_jsonl(text: &str, model: &ServiceModel) -> Result<Vec<Job>, TraceError> {
    let mut jobs = Vec::new();
    for (n, l) in lines(text) {
        let v: Value =
            serde_json::from_str(l).map_err(|e| bad(n, format!("not valid JSON: {e}")))?;
        let field = |k: &str| -> Result<f64, TraceError> {
            match v.get(k) {
                Some(x) => x
                    .as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| bad(n, format!("{k} must be a non-negative number"))),
                None => Err(bad(n, format!("missing {k}"))),
            }
        };
        let arrival = field("timestamp")? / 1000.0;
        let service = model.service_for(field("input_length")?, field("output_length")?);
        jobs.push(Job {
            arrival,
            service,
            deadline: None,
        });
    }
    Ok(jobs)
}

fn parse_plain(text: &str, model: &ServiceModel) -> Result<Vec<Job>, TraceError> {
    let mut jobs = Vec::new();
    for (n, l) in lines(text) {
        let (a, s) = match l.split_once(',') {
            Some((a, s)) => (a, Some(s)),
            None => (l, None),
        };
        let arrival = number(n, "arrival time", a)?;
        let service = match s {
            Some(s) => number(n, "service time", s)?,
            None => model.default_service,
        };
        jobs.push(Job {
            arrival,
            service,
            deadline: None,
        });
    }
    Ok(jobs)
}

fn parse_azure_functions(text: &str, model: &ServiceModel) -> Result<Trace, TraceError> {
    let mut it = lines(text);
    let (hl, header) = it.next().ok_or_else(|| bad(0, "empty file"))?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let is_minute = |c: &str| {
        c.strip_prefix("minute_")
            .unwrap_or(c)
            .parse::<u32>()
            .is_ok()
    };
    let first_minute = cols
        .iter()
        .position(|c| is_minute(c))
        .ok_or_else(|| bad(hl, "header has no per-minute columns (minute_1, ...)"))?;
    let name_col = cols.iter().position(|c| *c == "HashFunction").unwrap_or(0);
    let mut pools = Vec::new();
    for (n, l) in it {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() != cols.len() {
            return Err(bad(
                n,
                format!("expected {} fields, found {}", cols.len(), f.len()),
            ));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            model.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut jobs = Vec::new();
        for (minute, cell) in f[first_minute..].iter().enumerate() {
            let count = cell.trim().parse::<u32>().map_err(|_| {
                bad(
                    n,
                    format!(
                        "count {cell:?} in minute {} is not a whole number",
                        minute + 1
                    ),
                )
            })?;
            let start = jobs.len();
            for _ in 0..count {
                jobs.push(Job {
                    arrival: minute as f64 * 60.0 + rng.random_range(0.0..60.0),
                    service: model.default_service,
                    deadline: None,
                });
            }
            jobs[start..].sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
        }
        pools.push(Pool {
            name: f[name_col].to_string(),
            jobs,
        });
    }
    Ok(Trace { pools })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_llm_offsets_and_service_times() {
        let t = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                 2023-11-16 23:59:59.5000000,5000,50\n\
                 2023-11-17 00:00:01.0000000,0,100\n";
        let trace = parse(t, Format::Auto, &ServiceModel::default()).unwrap();
        let jobs = &trace.pools[0].jobs;
        assert_eq!(
            jobs[0],
            Job {
                arrival: 0.0,
                service: 2.0,
                deadline: None,
            }
        );
        assert!((jobs[1].arrival - 1.5).abs() < 1e-6, "across midnight");
        assert!((jobs[1].service - 2.0).abs() < 1e-9);
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let m = ServiceModel::default();
        let e = parse("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 10:00:00,1,1\n2023-11-16 25:00:00,1,1\n", Format::Auto, &m).unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 10:00:00,x,1\n",
            Format::Auto,
            &m,
        )
        .unwrap_err();
        assert!(e.reason.contains("ContextTokens"), "{e}");
        let e = parse("{\"timestamp\": 1}\n", Format::Jsonl, &m).unwrap_err();
        assert!(e.reason.contains("input_length"), "{e}");
        let e = parse("1\n2\nthree\n", Format::Plain, &m).unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("1,-2\n", Format::Plain, &m).unwrap_err();
        assert!(e.reason.contains("non-negative"), "{e}");
        assert!(parse("", Format::Plain, &m).is_err());
        let e = parse(
            "HashOwner,HashApp,HashFunction,Trigger,1,2\na,b,c,http,1\n",
            Format::Auto,
            &m,
        )
        .unwrap_err();
        assert!(e.reason.contains("fields"), "{e}");
    }

    #[test]
    fn jsonl_and_plain() {
        let m = ServiceModel::default();
        let t = parse("{\"timestamp\": 1000, \"input_length\": 5000, \"output_length\": 0}\n{\"timestamp\": 3000, \"input_length\": 0, \"output_length\": 50}\n", Format::Auto, &m).unwrap();
        assert_eq!(
            t.pools[0].jobs[1],
            Job {
                arrival: 2.0,
                service: 1.0,
                deadline: None,
            }
        );
        let t = parse("# comment\n5\n2.5,7\n", Format::Auto, &m).unwrap();
        assert_eq!(
            t.pools[0].jobs,
            vec![
                Job {
                    arrival: 0.0,
                    service: 7.0,
                    deadline: None,
                },
                Job {
                    arrival: 2.5,
                    service: 2.0,
                    deadline: None,
                }
            ]
        );
    }

    #[test]
    fn azure_functions_rows_are_pools_spread_repeatably() {
        let m = ServiceModel::default();
        let text = "HashFunction,HashApp,HashOwner,minute_1,minute_2,minute_3\nf1,a,o,2,0,1\nf2,a,o,0,0,0\nf3,a,o,0,5,0\n";
        let t = parse(text, Format::Auto, &m).unwrap();
        assert_eq!(t.pools.len(), 3);
        assert_eq!(t.pools[0].name, "f1");
        assert_eq!(t.pools[0].jobs.len(), 3);
        assert!(t.pools[0].jobs[..2].iter().all(|j| j.arrival < 60.0));
        assert!(t.pools[0].jobs[2].arrival >= 120.0);
        assert!(
            t.pools[2]
                .jobs
                .iter()
                .all(|j| (60.0..120.0).contains(&j.arrival))
        );
        assert_eq!(
            parse(text, Format::Auto, &m).unwrap(),
            t,
            "same seed, same arrivals"
        );
        let other = parse(text, Format::Auto, &ServiceModel { seed: 2, ..m }).unwrap();
        assert_ne!(other, t);
    }
}
