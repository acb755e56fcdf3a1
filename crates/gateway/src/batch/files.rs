//! `/v1/files`: upload, list, read and delete files, as OpenAI's Files API does. A file
//! belongs to the caller's tenant; another tenant's file is "not found".

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Extension, Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{BatchState, new_id, state, unix_s};
use crate::Gateway;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

/// A stored file, as OpenAI's Files API describes one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileObject {
    /// `file-...`.
    pub id: String,
    /// Always `file`.
    pub object: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// The name it was uploaded with.
    pub filename: String,
    /// `batch` (uploaded input) or `batch_output` (a batch's output or error file).
    pub purpose: String,
    /// Always `processed`.
    pub status: String,
}

/// A file's metadata as stored: the object and its tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredFile {
    #[serde(flatten)]
    pub(crate) file: FileObject,
    pub(crate) tenant: String,
}

/// A page of files.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    /// Always `list`.
    pub object: String,
    /// The files, newest first.
    pub data: Vec<FileObject>,
    /// Whether more follow the last one.
    pub has_more: bool,
}

/// The answer to a delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileDeleted {
    /// The file's id.
    pub id: String,
    /// Always `file`.
    pub object: String,
    /// Always true.
    pub deleted: bool,
}

/// Filters of the file list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct FileQuery {
    /// Only files with this purpose.
    pub purpose: Option<String>,
    /// At most this many (1 to 10,000; default 10,000).
    pub limit: Option<usize>,
    /// Files after this id (the previous page's last).
    pub after: Option<String>,
}

fn meta_path(id: &str) -> String {
    format!("files/{id}.json")
}

fn content_path(id: &str) -> String {
    format!("files/{id}.data")
}

/// Stores `bytes` as file `id` of `tenant` and returns it.
pub(crate) async fn save(
    s: &BatchState,
    id: String,
    tenant: &str,
    filename: String,
    purpose: &str,
    bytes: Bytes,
) -> Result<FileObject, ApiError> {
    let file = FileObject {
        id,
        object: "file".into(),
        bytes: bytes.len() as u64,
        created_at: unix_s(),
        filename,
        purpose: purpose.into(),
        status: "processed".into(),
    };
    // Content first: a listed file always has its content.
    s.store.put(&content_path(&file.id), bytes).await?;
    let stored = StoredFile {
        file: file.clone(),
        tenant: tenant.into(),
    };
    s.store.put_json(&meta_path(&file.id), &stored).await?;
    Ok(file)
}

/// The file `id` if `caller` may see it.
pub(crate) async fn visible(
    s: &BatchState,
    caller: &Caller,
    id: &str,
) -> Result<StoredFile, ApiError> {
    let not_found = || ApiError::not_found(format!("no file with id {id:?}"));
    if id.contains('/') || id.contains("..") {
        return Err(not_found());
    }
    s.store
        .get_json::<StoredFile>(&meta_path(id))
        .await?
        .filter(|f| caller.may_see(&f.tenant))
        .ok_or_else(not_found)
}

/// The content of file `id` (which the caller may see).
pub(crate) async fn content(s: &BatchState, id: &str) -> Result<Bytes, ApiError> {
    s.store
        .get(&content_path(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("the content of file {id:?} is gone")))
}

/// Upload a file (multipart: `file` and `purpose`, which must be `batch`).
#[utoipa::path(post, path = "/v1/files",
    request_body(content_type = "multipart/form-data", description = "fields `file` and `purpose` (`batch`)"),
    responses((status = 200, body = FileObject), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<axum::Json<FileObject>, ApiError> {
    let s = state(&g)?;
    let limit = s.config.max_file_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the file is larger than the limit of {limit} bytes (set by --max-file-bytes)"),
        )
    };
    let mut multipart =
        multipart.map_err(|e| ApiError::invalid(format!("expected a multipart form: {e}")))?;
    let (mut purpose, mut file) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(ApiError::invalid(format!("cannot read the form: {e}"))),
        };
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let data = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::invalid(format!("cannot read the form field {name:?}: {e}"))
            }
        })?;
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(&data).trim().to_string()),
            "file" => file = Some((filename.unwrap_or_else(|| "upload.jsonl".into()), data)),
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::invalid("the form has no \"purpose\" field"))?;
    if purpose != "batch" {
        return Err(ApiError::invalid(format!(
            "purpose {purpose:?} is not supported; GreenScale stores files for \"batch\""
        )));
    }
    let (filename, data) =
        file.ok_or_else(|| ApiError::invalid("the form has no \"file\" field"))?;
    if data.len() > limit {
        return Err(too_large());
    }
    if data.is_empty() {
        return Err(ApiError::invalid("the file is empty"));
    }
    let file = save(s, new_id("file-"), &caller.tenant, filename, &purpose, data).await?;
    tracing::info!(file = %file.id, tenant = %caller.tenant, bytes = file.bytes, "file stored");
    Ok(axum::Json(file))
}

/// The caller's files, newest first.
#[utoipa::path(get, path = "/v1/files", params(FileQuery),
    responses((status = 200, body = FileList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<FileQuery>,
) -> Result<axum::Json<FileList>, ApiError> {
    let s = state(&g)?;
    let mut files = Vec::new();
    for name in s.store.names("files").await? {
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if let Some(f) = s.store.get_json::<StoredFile>(&meta_path(id)).await?
            && caller.may_see(&f.tenant)
            && q.purpose.as_ref().is_none_or(|p| *p == f.file.purpose)
        {
            files.push(f.file);
        }
    }
    files.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let has_more = paginate(&mut files, q.after.as_deref(), q.limit, |f| &f.id);
    Ok(axum::Json(FileList {
        object: "list".into(),
        data: files,
        has_more,
    }))
}

/// Keeps the page of `items` after the one with id `after`, at most `limit` long; true
/// when more followed.
pub(crate) fn paginate<T>(
    items: &mut Vec<T>,
    after: Option<&str>,
    limit: Option<usize>,
    id: impl Fn(&T) -> &String,
) -> bool {
    if let Some(after) = after
        && let Some(i) = items.iter().position(|x| id(x) == after)
    {
        items.drain(..=i);
    }
    let limit = limit.unwrap_or(10_000).clamp(1, 10_000);
    let has_more = items.len() > limit;
    items.truncate(limit);
    has_more
}

/// One file's metadata.
#[utoipa::path(get, path = "/v1/files/{id}", params(("id" = String, Path, description = "file id")),
    responses((status = 503, description = "the object store is unavailable", body = ErrorBody), (status = 200, body = FileObject), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<FileObject>, ApiError> {
    let s = state(&g)?;
    Ok(axum::Json(visible(s, &caller, &id).await?.file))
}

/// One file's content.
#[utoipa::path(get, path = "/v1/files/{id}/content", params(("id" = String, Path, description = "file id")),
    responses((status = 503, description = "the object store is unavailable", body = ErrorBody), (status = 200, description = "the file's bytes", content_type = "application/octet-stream"),
              (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_content(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let s = state(&g)?;
    visible(s, &caller, &id).await?;
    let bytes = content(s, &id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Delete a file. The input file of a batch that is still running cannot be deleted.
#[utoipa::path(delete, path = "/v1/files/{id}", params(("id" = String, Path, description = "file id")),
    responses((status = 503, description = "the object store is unavailable", body = ErrorBody), (status = 200, body = FileDeleted), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<FileDeleted>, ApiError> {
    let s = state(&g)?;
    visible(s, &caller, &id).await?;
    if let Some(batch) = super::batches::running_with_input(s, &id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("file {id:?} is the input of batch {batch:?}, which is still running"),
        ));
    }
    s.store.delete(&meta_path(&id)).await?;
    s.store.delete(&content_path(&id)).await?;
    Ok(axum::Json(FileDeleted {
        id,
        object: "file".into(),
        deleted: true,
    }))
}
