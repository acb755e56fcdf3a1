//! Webhooks: when a job or batch that named a `webhook_url` ends, GreenScale POSTs its
//! record there, signed as the Standard Webhooks specification says (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`
//! with the tenant's `whsec_` secret).
//!
//! A delivery is written to the object store when the job or batch is submitted, so it
//! survives restarts; a failed try is retried with doubling waits, and after the last one
//! the delivery is dead-lettered with the reason. Calls to loopback, link-local, private
//! and other non-public addresses are refused unless the allow list names them, checked
//! again at every connection (a name that later resolves elsewhere gains nothing).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Gateway;
use crate::auth::Caller;
use crate::batch::batches::{StoredBatch, is_terminal, record_path};
use crate::batch::{BatchState, state};
use crate::error::{ApiError, ErrorBody};
use crate::jobs::JobView;

/// How webhooks are signed and delivered.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The key each tenant's signing secret is derived from (keep it secret; every
    /// gateway of a deployment needs the same one).
    pub signing_key: Vec<u8>,
    /// Addresses webhooks may call although they are not public (e.g. `10.0.0.0/8`).
    pub allow: Vec<IpNet>,
    /// Wait before the first retry; each further one waits twice as long (at most 1 h).
    pub retry_base: Duration,
    /// Tries before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Longest a receiver may take to answer one try.
    pub timeout: Duration,
}

impl WebhookConfig {
    /// The defaults with `signing_key`: retries after 5 s, 10 s, 20 s ... for 8 tries in
    /// all, 10 s per try, public addresses only.
    pub fn new(signing_key: Vec<u8>) -> Self {
        WebhookConfig {
            signing_key,
            allow: Vec::new(),
            retry_base: Duration::from_secs(5),
            max_attempts: 8,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Where the signing key made at random is kept in the object store.
const SIGNING_KEY_PATH: &str = "webhook-signing-key";

/// The signing key kept in `store`, made at random (32 bytes) by the first gateway that
/// asks; every later call, from any gateway, reads the same one.
pub async fn stored_signing_key(
    store: &Arc<dyn object_store::ObjectStore>,
) -> Result<Vec<u8>, String> {
    let store = crate::batch::store::Store(store.clone());
    let mut fresh = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
        .map_err(|_| "no random bytes".to_string())?;
    store
        .create_json(SIGNING_KEY_PATH, &BASE64.encode(fresh))
        .await
        .map_err(|e| e.message.clone())?;
    let kept: String = store
        .get_json(SIGNING_KEY_PATH)
        .await
        .map_err(|e| e.message.clone())?
        .ok_or("the key vanished after it was written")?;
    BASE64
        .decode(kept)
        .map_err(|e| format!("the stored key is damaged: {e}"))
}

/// HMAC-SHA256 of `data` with `key`.
fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, data).as_ref().to_vec()
}

/// The signing secret of `tenant` (`whsec_` and base64 of 32 bytes), derived from the
/// gateway's signing key so that every gateway sharing the key signs alike.
pub fn tenant_secret(signing_key: &[u8], tenant: &str) -> String {
    let bytes = hmac(
        signing_key,
        format!("greenscale webhook secret for {tenant}").as_bytes(),
    );
    format!("whsec_{}", BASE64.encode(bytes))
}

/// The `webhook-signature` value of `body` sent as message `id` at `timestamp` (Unix
/// seconds) with `secret` (`whsec_...`).
pub fn signature(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = BASE64
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secrets made by tenant_secret are base64");
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!("v1,{}", BASE64.encode(hmac(&key, &signed)))
}

/// True for an address on the public internet: not loopback, link-local, private,
/// shared (CGNAT), unspecified, multicast, broadcast or documentation space. An IPv4
/// address inside IPv6 is judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link-local
        }
    }
}

fn allowed(ip: IpAddr, allow: &[IpNet]) -> bool {
    is_public(ip) || allow.iter().any(|n| n.contains(&ip))
}

fn refused(url: &str, why: String) -> ApiError {
    ApiError::invalid(format!("webhook_url {url:?} is refused: {why}"))
}

/// Checks a `webhook_url` when it is submitted: http or https, and every address its host
/// has is public or allowed.
pub(crate) async fn check_url(config: &WebhookConfig, url: &str) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| refused(url, format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refused(url, "only http and https are called".into()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| refused(url, "it names no host".into()))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let ips: Vec<IpAddr> = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| refused(url, format!("its host does not resolve ({e})")))?
            .map(|a| a.ip())
            .collect(),
    };
    if let Some(ip) = ips.iter().find(|ip| !allowed(**ip, &config.allow)) {
        return Err(refused(
            url,
            format!(
                "{ip} is not a public address (loopback, link-local or private); \
                 name it in --webhook-allow to call it"
            ),
        ));
    }
    Ok(())
}

/// Resolves a receiver's name to the addresses webhooks may call, so a connection never
/// reaches a refused one.
struct GuardedResolver(Arc<Vec<IpNet>>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allowed(a.ip(), &allow))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What a delivery reports on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Subject {
    /// A job, by id.
    Job(String),
    /// A batch, by id.
    Batch(String),
}

/// One webhook delivery, pending or dead-lettered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// The message id (`webhook-id`), the same on every try.
    pub id: String,
    /// The tenant whose secret signs it.
    pub tenant: String,
    /// Where it is sent.
    pub url: String,
    /// What it reports on.
    pub subject: Subject,
    /// When it was recorded, Unix milliseconds.
    pub created_at_ms: u64,
    /// Tries made.
    pub attempts: u32,
    /// When the next try is due, Unix milliseconds.
    pub next_at_ms: u64,
    /// Why the latest try failed.
    pub last_error: Option<String>,
}

fn pending_path(id: &str) -> String {
    format!("webhooks-pending/{id}.json")
}

fn dead_path(id: &str) -> String {
    format!("webhooks-dead/{id}.json")
}

fn claim_path(id: &str, attempt: u32) -> String {
    format!("webhook-claims/{id}.{attempt}")
}

/// The delivery id of `subject`: one per job or batch.
fn delivery_id(subject: &Subject) -> String {
    match subject {
        Subject::Job(id) | Subject::Batch(id) => format!("msg_{id}"),
    }
}

/// Records that `subject` is to be reported to `url` when it ends (once, however often
/// this is called).
pub(crate) async fn schedule(
    s: &BatchState,
    subject: Subject,
    tenant: &str,
    url: String,
) -> Result<(), ApiError> {
    let d = Delivery {
        id: delivery_id(&subject),
        tenant: tenant.into(),
        url,
        subject,
        created_at_ms: crate::dashboard::unix_ms(),
        attempts: 0,
        next_at_ms: 0,
        last_error: None,
    };
    s.store.create_json(&pending_path(&d.id), &d).await?;
    Ok(())
}

/// Drops the delivery scheduled for `subject` (its job was never stored).
pub(crate) async fn unschedule(s: &BatchState, subject: &Subject) -> Result<(), ApiError> {
    s.store.delete(&pending_path(&delivery_id(subject))).await
}

/// How long a delivery's job or batch may take to appear before the delivery is given up.
const SUBJECT_GRACE_MS: u64 = 60_000;

/// Deliveries tried at once.
const SENDING: usize = 8;

/// Sends due deliveries until the gateway shuts down.
pub(crate) async fn run(g: Gateway) {
    let s = g
        .batches
        .clone()
        .expect("webhooks run with the Batch API on");
    let cfg = s.config.webhooks.clone();
    let client = match reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver(Arc::new(cfg.allow.clone()))))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; webhooks are not sent");
            return;
        }
    };
    let tick = cfg
        .retry_base
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut shutdown = g.shutdown.clone();
    loop {
        match s.store.names("webhooks-pending").await {
            Ok(names) => {
                futures::stream::iter(names)
                    .for_each_concurrent(SENDING, |name| {
                        let (g, s, client) = (&g, &s, &client);
                        async move {
                            let id = name.trim_end_matches(".json");
                            if let Err(e) = attempt(g, s, client, id).await {
                                tracing::warn!(delivery = %id, error = %e, "webhook step failed");
                            }
                        }
                    })
                    .await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the pending webhooks"),
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
    }
}

/// What a delivery's subject says now.
enum Payload {
    /// It ended: the body to send.
    Ready(Vec<u8>),
    /// It has not ended yet.
    NotYet,
    /// It does not exist (why, in words).
    Missing(String),
}

/// The body to send for `d`, once its subject has ended; `Err` when it cannot be read now.
async fn payload(g: &Gateway, s: &BatchState, d: &Delivery) -> Result<Payload, ApiError> {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (kind, data) = match &d.subject {
        Subject::Job(id) => match g.routes.job(id).await? {
            Some(rec) if rec.status.is_terminal() => (
                format!("job.{}", rec.status),
                serde_json::to_value(JobView::from(rec)).expect("views serialize"),
            ),
            Some(_) => return Ok(Payload::NotYet),
            None => {
                return Ok(Payload::Missing(format!(
                    "job {id:?} does not exist (any more)"
                )));
            }
        },
        Subject::Batch(id) => match s.store.get_json::<StoredBatch>(&record_path(id)).await? {
            Some(b) if is_terminal(&b.batch.status) => (
                format!("batch.{}", b.batch.status),
                serde_json::to_value(&b.batch).expect("batches serialize"),
            ),
            Some(_) => return Ok(Payload::NotYet),
            None => return Ok(Payload::Missing(format!("batch {id:?} does not exist"))),
        },
    };
    let body = serde_json::json!({"type": kind, "timestamp": timestamp, "data": data});
    Ok(Payload::Ready(
        serde_json::to_vec(&body).expect("payloads serialize"),
    ))
}

/// Makes one try of delivery `id` if it is due and its subject has ended.
async fn attempt(
    g: &Gateway,
    s: &BatchState,
    client: &reqwest::Client,
    id: &str,
) -> Result<(), ApiError> {
    let cfg = &s.config.webhooks;
    let Some(mut d) = s.store.get_json::<Delivery>(&pending_path(id)).await? else {
        return Ok(());
    };
    let now = crate::dashboard::unix_ms();
    if d.next_at_ms > now {
        return Ok(());
    }
    let body = match payload(g, s, &d).await {
        Ok(Payload::Ready(body)) => body,
        Ok(Payload::NotYet) => return Ok(()),
        // The delivery is recorded just before its job: give the job time to appear.
        Ok(Payload::Missing(why)) => {
            if now.saturating_sub(d.created_at_ms) > SUBJECT_GRACE_MS {
                return dead_letter(s, d, why).await;
            }
            return Ok(());
        }
        Err(e) => {
            tracing::debug!(delivery = %id, error = %e, "cannot read the webhook's subject yet");
            return Ok(());
        }
    };
    // One gateway per try: the first to claim it sends it.
    let claim = claim_path(id, d.attempts);
    if !s.store.create_json(&claim, &now).await? {
        let stale = s
            .store
            .get_json::<u64>(&claim)
            .await?
            .is_none_or(|at| now.saturating_sub(at) > 3 * cfg.timeout.as_millis() as u64);
        if stale {
            s.store.delete(&claim).await?; // its sender died; the next tick tries again
        }
        return Ok(());
    }
    let timestamp = now / 1000;
    let secret = tenant_secret(&cfg.signing_key, &d.tenant);
    let sent = client
        .post(&d.url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(&secret, &d.id, timestamp, &body),
        )
        .body(body)
        .send()
        .await;
    d.attempts += 1;
    let failure = match sent {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => {
            let status = r.status();
            let text: String = r
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            Some(format!("the receiver answered {status}: {text}"))
        }
        Err(e) => Some(format!("cannot reach the receiver: {e}")),
    };
    let outcome = match &failure {
        None => "delivered",
        Some(_) if d.attempts >= cfg.max_attempts => "dead_lettered",
        Some(_) => "failed",
    };
    g.metrics.webhook_try(outcome);
    let result = match failure {
        None => {
            tracing::info!(delivery = %d.id, url = %d.url, attempts = d.attempts, "webhook delivered");
            s.store.delete(&pending_path(&d.id)).await
        }
        Some(why) if d.attempts >= cfg.max_attempts => dead_letter(s, d, why).await,
        Some(why) => {
            let wait = cfg.retry_base.saturating_mul(1 << (d.attempts - 1).min(20));
            let wait = wait.min(Duration::from_secs(3600));
            tracing::info!(delivery = %d.id, attempts = d.attempts, retry_in_ms = wait.as_millis() as u64, why, "webhook failed; will retry");
            d.next_at_ms = now + wait.as_millis() as u64;
            d.last_error = Some(why);
            s.store.put_json(&pending_path(&d.id), &d).await
        }
    };
    s.store.delete(&claim).await?;
    result
}

/// Moves a delivery to the dead letters with `why`.
async fn dead_letter(s: &BatchState, mut d: Delivery, why: String) -> Result<(), ApiError> {
    tracing::warn!(delivery = %d.id, url = %d.url, attempts = d.attempts, why, "webhook dead-lettered");
    d.last_error = Some(why);
    s.store.put_json(&dead_path(&d.id), &d).await?;
    s.store.delete(&pending_path(&d.id)).await
}

/// The caller's webhook signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecret {
    /// The tenant.
    pub tenant: String,
    /// `whsec_...`: verify `webhook-signature` with it as Standard Webhooks says.
    pub secret: String,
}

/// The secret that signs the caller's webhooks.
#[utoipa::path(get, path = "/v1/webhooks/secret",
    responses((status = 200, body = WebhookSecret), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn secret(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<WebhookSecret>, ApiError> {
    let s = state(&g)?;
    Ok(axum::Json(WebhookSecret {
        secret: tenant_secret(&s.config.webhooks.signing_key, &caller.tenant),
        tenant: caller.tenant,
    }))
}

/// The list of dead-lettered deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Always `list`.
    pub object: String,
    /// The deliveries; `last_error` says why each was given up.
    pub data: Vec<Delivery>,
}

/// The caller's webhook deliveries that were given up, with the reason.
#[utoipa::path(get, path = "/v1/webhooks/dead",
    responses((status = 200, body = DeliveryList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn dead(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<DeliveryList>, ApiError> {
    let s = state(&g)?;
    let mut data = Vec::new();
    for name in s.store.names("webhooks-dead").await? {
        if let Some(d) = s
            .store
            .get_json::<Delivery>(&dead_path(name.trim_end_matches(".json")))
            .await?
            && caller.may_see(&d.tenant)
        {
            data.push(d);
        }
    }
    Ok(axum::Json(DeliveryList {
        object: "list".into(),
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_refused_unless_allowed() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip} must not count as public");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        let allow: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(allowed("127.0.0.1".parse().unwrap(), &allow));
        assert!(!allowed("10.0.0.1".parse().unwrap(), &allow));
    }

    #[test]
    fn secrets_differ_by_tenant_and_sign_id_timestamp_and_body() {
        let a = tenant_secret(b"key", "a");
        assert!(a.starts_with("whsec_"));
        assert_ne!(a, tenant_secret(b"key", "b"));
        assert_ne!(a, tenant_secret(b"other key", "a"));
        let sig = signature(&a, "msg_1", 1_700_000_000, b"{}");
        assert!(sig.starts_with("v1,"));
        assert_ne!(sig, signature(&a, "msg_1", 1_700_000_001, b"{}"));
        assert_ne!(sig, signature(&a, "msg_2", 1_700_000_000, b"{}"));
        assert_ne!(sig, signature(&a, "msg_1", 1_700_000_000, b"{ }"));
    }
}
