//! API keys: `Authorization: Bearer <key>`, compared in constant time. Each key belongs to
//! a tenant; an admin key sees every tenant's jobs.

use std::sync::Arc;

use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use greenscale_core::{DEFAULT_TENANT, InvalidInput, validate_tenant};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Who sent a request: the tenant of its key, and whether the key is an admin's. Handlers
/// find it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant its jobs belong to.
    pub tenant: String,
    /// True for an admin key (or when no keys are configured): sees every tenant's jobs.
    pub admin: bool,
}

impl Caller {
    /// True when the caller may see jobs of `tenant`.
    pub fn may_see(&self, tenant: &str) -> bool {
        self.admin || self.tenant == tenant
    }
}

#[derive(Clone)]
struct Key {
    secret: Vec<u8>,
    caller: Caller,
}

/// The accepted keys (none: no authentication; every request is the default tenant's,
/// with an admin's view).
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<Key>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.0.len())
    }
}

/// Reads `TENANT:KEY`, or a bare `KEY` (the default tenant's). A key that itself holds a
/// `:` must be given with its tenant.
fn tenant_and_key(text: &str) -> Result<(String, String), InvalidInput> {
    match text.split_once(':') {
        Some((tenant, key)) => {
            validate_tenant(tenant)?;
            Ok((tenant.to_string(), key.to_string()))
        }
        None => Ok((DEFAULT_TENANT.to_string(), text.to_string())),
    }
}

impl ApiKeys {
    /// Tenants' keys (`TENANT:KEY` or a bare key) and admin keys (`KEY`, or `TENANT:KEY`
    /// to name the tenant their own jobs belong to); empty entries are ignored.
    pub fn new(
        keys: impl IntoIterator<Item = String>,
        admin_keys: impl IntoIterator<Item = String>,
    ) -> Result<Self, InvalidInput> {
        let mut out = Vec::new();
        for (text, admin) in keys
            .into_iter()
            .map(|k| (k, false))
            .chain(admin_keys.into_iter().map(|k| (k, true)))
        {
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let (tenant, key) = tenant_and_key(text)?;
            if key.is_empty() {
                return Err(InvalidInput(format!(
                    "the key of tenant {tenant:?} is empty"
                )));
            }
            out.push(Key {
                secret: key.into_bytes(),
                caller: Caller { tenant, admin },
            });
        }
        Ok(ApiKeys(Arc::new(out)))
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller a presented key belongs to. Every key is compared, in constant time.
    pub fn caller(&self, presented: &[u8]) -> Option<Caller> {
        let mut found = None;
        for key in self.0.iter() {
            if bool::from(key.secret.as_slice().ct_eq(presented)) {
                found = Some(key.caller.clone());
            }
        }
        found
    }
}

/// Rejects requests without a valid key (when keys are configured) and records the
/// [`Caller`] in the request's extensions. It decides before the request goes on, so it
/// adds no state to a request that then waits (see [`require_key`]).
#[derive(Clone)]
pub struct RequireKey(pub ApiKeys);

impl<B> tower_http::validate_request::ValidateRequest<B> for RequireKey {
    type ResponseBody = axum::body::Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        let keys = &self.0;
        if keys.is_empty() {
            request.extensions_mut().insert(Caller {
                tenant: DEFAULT_TENANT.to_string(),
                admin: true,
            });
            return Ok(());
        }
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented.and_then(|key| keys.caller(key.as_bytes())) {
            Some(caller) => {
                request.extensions_mut().insert(caller);
                Ok(())
            }
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or invalid API key: send it as 'Authorization: Bearer <key>'",
            )
            .into_response()),
        }
    }
}

/// The layer that puts [`RequireKey`] in front of routes.
pub fn require_key(
    keys: ApiKeys,
) -> tower_http::validate_request::ValidateRequestHeaderLayer<RequireKey> {
    tower_http::validate_request::ValidateRequestHeaderLayer::custom(RequireKey(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly_and_name_their_tenant() {
        let keys = ApiKeys::new(
            [
                "alpha".to_string(),
                " team-b:beta ".to_string(),
                String::new(),
            ],
            ["root".to_string()],
        )
        .unwrap();
        let alpha = keys.caller(b"alpha").unwrap();
        assert_eq!((alpha.tenant.as_str(), alpha.admin), ("default", false));
        let beta = keys.caller(b"beta").unwrap();
        assert_eq!(beta.tenant, "team-b");
        assert!(beta.may_see("team-b") && !beta.may_see("default"));
        assert!(keys.caller(b"root").unwrap().may_see("team-b"));
        assert!(keys.caller(b"alph").is_none() && keys.caller(b"alphaa").is_none());
        assert!(keys.caller(b"").is_none() && keys.caller(b"team-b:beta").is_none());
        assert!(!format!("{keys:?}").contains("alpha"));
        assert!(ApiKeys::new(["bad tenant:k".to_string()], []).is_err());
        assert!(ApiKeys::new(["t:".to_string()], []).is_err());
    }
}
