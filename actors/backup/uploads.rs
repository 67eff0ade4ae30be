//! Open S3 multipart uploads under our prefix — the two calls opendal 0.55 does not have:
//! ListMultipartUploads and AbortMultipartUpload. A process killed mid-artifact leaves its
//! upload open: invisible to every listing of objects, but its parts are stored (and billed)
//! until someone aborts it. [`super::storage::Storage::cleanup`] does that on the next run.
//!
//! The requests go to the same place opendal's go (the endpoint, or AWS's for the region;
//! path-style `endpoint/bucket/key`), signed with SigV4 by reqsign with the same static keys
//! — both crates are opendal's own, so nothing new is built. Errors name the endpoint and
//! bucket, never a key.

use std::time::Duration;

use reqsign::{AwsCredential, AwsV4Signer};
use serde::Deserialize;

use super::storage::S3Settings;
use crate::redact;

/// One multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OpenUpload {
    /// The object key relative to the storage's prefix: `<id>/volumes/x.tar.zst.age`.
    pub name: String,
    /// S3's id of the upload (not a secret: it only works with the keys).
    upload_id: String,
}

/// A call that failed: what it was, and why, for [`super::storage::StorageError`].
#[derive(Debug)]
pub(super) struct UploadsError {
    pub op: &'static str,
    /// The endpoint could not be reached at all (as opposed to an answer refusing the call).
    pub unreachable: bool,
    /// The HTTP status of a refusal.
    pub status: Option<u16>,
    pub reason: String,
}

/// ListMultipartUploads and AbortMultipartUpload for one bucket and prefix.
pub(super) struct Uploads {
    client: reqwest::Client,
    signer: AwsV4Signer,
    credential: AwsCredential,
    /// `https://endpoint/bucket`: path-style, as opendal addresses the bucket.
    bucket_url: url::Url,
    /// The key prefix of everything we store, with its trailing `/` (empty: the root).
    prefix: String,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("bucket_url", &redact::url(self.bucket_url.as_str()))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// S3's answer to ListMultipartUploads (the fields we read).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ListResult {
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    #[serde(rename = "Upload")]
    uploads: Vec<Upload>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
}

impl Uploads {
    /// For the bucket and prefix of `s`; `timeout` bounds each request. Fails only on an
    /// endpoint that is not a URL.
    pub fn new(s: &S3Settings, timeout: Duration) -> Result<Uploads, String> {
        let endpoint = if s.endpoint.is_empty() {
            format!("https://s3.{}.amazonaws.com", s.region)
        } else {
            s.endpoint.trim_end_matches('/').to_owned()
        };
        let mut bucket_url = url::Url::parse(&endpoint)
            .map_err(|e| format!("endpoint {}: {e}", redact::url(&endpoint)))?;
        bucket_url
            .path_segments_mut()
            .map_err(|()| format!("endpoint {} cannot hold a path", redact::url(&endpoint)))?
            .pop_if_empty()
            .push(&s.bucket);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let prefix = s.prefix.trim_matches('/');
        Ok(Uploads {
            client,
            signer: AwsV4Signer::new("s3", &s.region),
            credential: AwsCredential {
                access_key_id: s.access_key_id.expose().to_owned(),
                secret_access_key: s.secret_access_key.expose().to_owned(),
                ..AwsCredential::default()
            },
            bucket_url,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// Every open upload under the prefix, page by page.
    pub async fn list(&self) -> Result<Vec<OpenUpload>, UploadsError> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = self.bucket_url.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_key_only("uploads");
                if !self.prefix.is_empty() {
                    q.append_pair("prefix", &self.prefix);
                }
                if let Some((key, id)) = &markers {
                    q.append_pair("key-marker", key);
                    q.append_pair("upload-id-marker", id);
                }
            }
            let body = self.send("list uploads", reqwest::Method::GET, url).await?;
            let page: ListResult = quick_xml::de::from_str(&body).map_err(|e| UploadsError {
                op: "list uploads",
                unreachable: false,
                status: None,
                reason: format!("the answer does not parse: {e}"),
            })?;
            found.extend(page.uploads.into_iter().filter_map(|u| {
                Some(OpenUpload {
                    name: u.key.strip_prefix(&self.prefix)?.to_owned(),
                    upload_id: u.upload_id,
                })
            }));
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id))
                    if markers.as_ref() != Some(&(key.clone(), id.clone())) =>
                {
                    markers = Some((key, id));
                }
                _ => return Ok(found),
            }
        }
    }

    /// Aborts one upload: its parts are deleted. One already gone (completed or aborted by
    /// someone else since the listing) is not an error.
    pub async fn abort(&self, upload: &OpenUpload) -> Result<(), UploadsError> {
        let mut url = self.bucket_url.clone();
        let key = format!("{}{}", self.prefix, upload.name);
        url.path_segments_mut()
            .map_err(|()| UploadsError {
                op: "abort upload",
                unreachable: false,
                status: None,
                reason: "the endpoint cannot hold a path".into(),
            })?
            .extend(key.split('/'));
        url.query_pairs_mut()
            .append_pair("uploadId", &upload.upload_id);
        match self
            .send("abort upload", reqwest::Method::DELETE, url)
            .await
        {
            Err(UploadsError {
                status: Some(404), ..
            }) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Signs and sends one request without a body; answers the body of a 2xx answer.
    async fn send(
        &self,
        op: &'static str,
        method: reqwest::Method,
        url: url::Url,
    ) -> Result<String, UploadsError> {
        let failed = |unreachable, status, reason: String| UploadsError {
            op,
            unreachable,
            status,
            reason: redact::text(&reason),
        };
        let mut request = reqwest::Request::new(method, url);
        self.signer
            .sign(&mut request, &self.credential)
            .map_err(|e| failed(false, None, format!("signing failed: {e}")))?;
        let answer = self
            .client
            .execute(request)
            .await
            .map_err(|e| failed(true, None, e.without_url().to_string()))?;
        let status = answer.status();
        let body = answer
            .text()
            .await
            .map_err(|e| failed(true, None, e.without_url().to_string()))?;
        if !status.is_success() {
            // S3's error document: its code is what an operator acts on (NoSuchBucket,
            // AccessDenied, …); the rest may echo the request.
            let code = body
                .split_once("<Code>")
                .and_then(|(_, rest)| rest.split_once("</Code>"))
                .map_or("", |(code, _)| code);
            return Err(failed(
                false,
                Some(status.as_u16()),
                format!("{status} {code}").trim().to_owned(),
            ));
        }
        Ok(body)
    }
}
