//! Where files, batches and webhook deliveries live: an object store (a folder, or an
//! S3-compatible bucket) shared by every gateway of a deployment.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Opens the object store named by `location`: `s3://bucket/prefix` (credentials, region
/// and endpoint from the usual `AWS_*` variables, e.g. `AWS_ENDPOINT` for MinIO), or a
/// folder (`file:///path` or a plain path; created when missing).
pub fn open_object_store(location: &str) -> Result<Arc<dyn ObjectStore>, String> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{location:?} names no bucket (s3://BUCKET/PREFIX)"));
        }
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| format!("cannot use the bucket {bucket:?}: {e}"))?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        });
    }
    if location.contains("://") && !location.starts_with("file://") {
        return Err(format!(
            "{location:?} is neither s3://BUCKET/PREFIX nor a folder (file:///PATH or a path)"
        ));
    }
    let dir = location.strip_prefix("file://").unwrap_or(location);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the folder {dir:?}: {e}"))?;
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| format!("cannot use the folder {dir:?}: {e}"))?;
    Ok(Arc::new(local))
}

/// Typed access to the object store, every failure an [`ApiError`] (503: storage
/// unavailable) that names the object.
#[derive(Clone)]
pub(crate) struct Store(pub(crate) Arc<dyn ObjectStore>);

fn unavailable(path: &str, e: object_store::Error) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        format!("the object store failed on {path}: {e}"),
    );
    err.retry_after = Some(5);
    err
}

impl Store {
    /// The bytes of `path`, `None` when it does not exist.
    pub(crate) async fn get(&self, path: &str) -> Result<Option<Bytes>, ApiError> {
        match self.0.get(&Path::from(path)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| unavailable(path, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable(path, e)),
        }
    }

    /// `path` read as JSON; `None` when it does not exist. A damaged object is an error.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ApiError> {
        let Some(bytes) = self.get(path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("the stored object {path} is damaged: {e}"),
            )
        })
    }

    /// Writes `bytes` to `path` at once (readers see the old or the new object, whole).
    pub(crate) async fn put(&self, path: &str, bytes: Bytes) -> Result<(), ApiError> {
        self.0
            .put(&Path::from(path), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| unavailable(path, e))
    }

    /// Writes `value` as JSON to `path`.
    pub(crate) async fn put_json<T: Serialize>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(value).expect("stored values serialize");
        self.put(path, bytes.into()).await
    }

    /// Writes `value` to `path` unless something is there already; `false` when it was.
    pub(crate) async fn create_json<T: Serialize>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<bool, ApiError> {
        let bytes = serde_json::to_vec(value).expect("stored values serialize");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .0
            .put_opts(&Path::from(path), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(unavailable(path, e)),
        }
    }

    /// Removes `path`; a missing object is not an error.
    pub(crate) async fn delete(&self, path: &str) -> Result<(), ApiError> {
        match self.0.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(path, e)),
        }
    }

    /// The names (last path segment) of the objects directly under `folder`.
    pub(crate) async fn names(&self, folder: &str) -> Result<Vec<String>, ApiError> {
        let prefix = Path::from(folder);
        let listed: Vec<_> = self
            .0
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| unavailable(folder, e))?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }
}
