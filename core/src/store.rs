//! The one object-storage abstraction every step reads and writes through.
//!
//! A store is addressed by a *location*: a local folder (`./data`, `/srv/lake`) or an S3 URL
//! (`s3://bucket/prefix`, MinIO included). Jobs never touch `std::fs` for lake data, so the same
//! job runs unchanged against either.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use url::Url;

/// Connection settings for S3-compatible storage. Every field is also an environment variable, so
/// compose files stay short. Local folders ignore all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
pub struct S3Options {
    /// S3 endpoint, e.g. `http://minio:9000` (empty: AWS).
    #[arg(long = "s3-endpoint", env = "RECSYS_S3_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// S3 access key id.
    #[arg(
        long = "s3-access-key-id",
        env = "AWS_ACCESS_KEY_ID",
        global = true,
        hide_env_values = true
    )]
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(
        long = "s3-secret-access-key",
        env = "AWS_SECRET_ACCESS_KEY",
        global = true,
        hide_env_values = true
    )]
    pub secret_access_key: Option<String>,
    /// S3 region.
    #[arg(long = "s3-region", env = "AWS_REGION", global = true)]
    pub region: Option<String>,
    /// Allow plain `http://` endpoints (MinIO in a private network).
    #[arg(long = "s3-allow-http", env = "RECSYS_S3_ALLOW_HTTP", global = true)]
    pub allow_http: bool,
    /// Address buckets as `bucket.host` instead of `host/bucket` (MinIO wants path style, the default).
    #[arg(
        long = "s3-virtual-hosted",
        env = "RECSYS_S3_VIRTUAL_HOSTED",
        global = true
    )]
    pub virtual_hosted: bool,
}

/// Errors opening or addressing a store. Every variant names the location it is about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store location `{location}`: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("cannot open store `{location}`: {source}")]
    Open {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot create local folder `{}`: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A location in object storage: the store client, the URL that names it for DataFusion
/// (`file://` or `s3://bucket`) and the root path inside it.
#[derive(Debug, Clone)]
pub struct Store {
    location: String,
    base_url: Url,
    root: Path,
    inner: Arc<dyn ObjectStore>,
    options: S3Options,
}

impl Store {
    /// Opens `location` (a local folder, created when missing, or `s3://bucket/prefix`).
    pub fn open(location: &str, options: &S3Options) -> Result<Store, StoreError> {
        let invalid = |reason: String| StoreError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        if location.contains("://") {
            let url = Url::parse(location).map_err(|e| invalid(e.to_string()))?;
            match url.scheme() {
                "s3" | "s3a" => {
                    let bucket = url
                        .host_str()
                        .filter(|b| !b.is_empty())
                        .ok_or_else(|| invalid("missing bucket name".into()))?;
                    let base_url = Url::parse(&format!("s3://{bucket}/"))
                        .map_err(|e| invalid(e.to_string()))?;
                    let inner = build_s3(bucket, options).map_err(|source| StoreError::Open {
                        location: location.to_string(),
                        source,
                    })?;
                    Ok(Store {
                        location: location.to_string(),
                        base_url,
                        root: Path::from(url.path().trim_matches('/')),
                        inner,
                        options: options.clone(),
                    })
                }
                "file" => {
                    let path = url
                        .to_file_path()
                        .map_err(|_| invalid("not a local path".into()))?;
                    Self::open_local(location, path, options)
                }
                other => Err(invalid(format!(
                    "unsupported scheme `{other}` (use a folder or s3://bucket/prefix)"
                ))),
            }
        } else {
            Self::open_local(location, PathBuf::from(location), options)
        }
    }

    fn open_local(location: &str, path: PathBuf, options: &S3Options) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&path).map_err(|source| StoreError::CreateDir {
            path: path.clone(),
            source,
        })?;
        let abs = std::fs::canonicalize(&path)
            .map_err(|source| StoreError::CreateDir { path, source })?;
        let root = Path::from_absolute_path(&abs).map_err(|e| StoreError::InvalidLocation {
            location: location.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Store {
            location: abs.display().to_string(),
            base_url: Url::parse("file:///").expect("static url"),
            root,
            inner: Arc::new(LocalFileSystem::new()),
            options: options.clone(),
        })
    }

    /// The same store, rooted at `rel` below this root.
    pub fn child(&self, rel: &str) -> Store {
        Store {
            location: format!(
                "{}/{}",
                self.location.trim_end_matches('/'),
                rel.trim_matches('/')
            ),
            root: self.path(rel),
            ..self.clone()
        }
    }

    /// The object path of `rel` below this root (`""` is the root itself).
    pub fn path(&self, rel: &str) -> Path {
        let mut path = self.root.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// The full URL of `rel`, as DataFusion tables want it (`file:///abs/data/clean/`).
    pub fn url(&self, rel: &str) -> String {
        let mut url = format!("{}{}", self.base_url, self.path(rel));
        if rel.ends_with('/') && !url.ends_with('/') {
            url.push('/');
        }
        url
    }

    /// `file:///` or `s3://bucket/`: the key under which DataFusion registers this store.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// The human-readable location this store was opened from (absolute for local folders).
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    /// The folder of a local store (`None` for S3).
    pub fn local_dir(&self) -> Option<PathBuf> {
        (self.base_url.scheme() == "file").then(|| PathBuf::from(format!("/{}", self.root)))
    }

    pub fn options(&self) -> &S3Options {
        &self.options
    }

    /// An object-store error about `rel`, naming its full URL.
    pub fn error(&self, rel: &str, source: object_store::Error) -> StoreError {
        StoreError::Io {
            url: self.url(rel),
            source,
        }
    }

    /// Path of `full` relative to this store's root, for display.
    pub fn relative(&self, full: &str) -> String {
        let root = self.root.as_ref();
        full.strip_prefix(root)
            .unwrap_or(full)
            .trim_start_matches('/')
            .to_string()
    }
}

/// Builds the client for one bucket (used by [`Store::open`] and by the DataFusion registry on
/// every executor, from the same options).
pub fn build_s3(
    bucket: &str,
    options: &S3Options,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(options.region.clone().unwrap_or_else(|| "us-east-1".into()))
        .with_allow_http(options.allow_http)
        .with_virtual_hosted_style_request(options.virtual_hosted);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(key) = &options.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    Ok(Arc::new(builder.build()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_urls() {
        let dir = std::env::temp_dir().join(format!("recsys-store-{}", std::process::id()));
        let store = Store::open(dir.to_str().unwrap(), &S3Options::default()).unwrap();
        let abs = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(
            store.url("clean/listens/"),
            format!("file://{}/clean/listens/", abs.display())
        );
        assert_eq!(
            store.path("a/b").as_ref(),
            format!("{}/a/b", abs.display()).trim_start_matches('/')
        );
        assert_eq!(
            store.relative(store.path("sorted/x.parquet").as_ref()),
            "sorted/x.parquet"
        );
        let child = store.child("raw");
        assert_eq!(child.path("f.tsv"), store.path("raw/f.tsv"));
        assert_eq!(child.local_dir(), Some(abs.join("raw")));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn s3_locations() {
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            allow_http: true,
            ..Default::default()
        };
        let store = Store::open("s3://lake/prod/v1", &opts).unwrap();
        assert_eq!(store.base_url().as_str(), "s3://lake/");
        assert_eq!(store.url("sorted/"), "s3://lake/prod/v1/sorted/");
        assert_eq!(store.local_dir(), None);
        assert!(matches!(
            Store::open("s3:///nobucket", &opts),
            Err(StoreError::InvalidLocation { .. })
        ));
        assert!(matches!(
            Store::open("gs://x/y", &opts),
            Err(StoreError::InvalidLocation { .. })
        ));
    }
}
