//! The one place that makes a DataFusion session "recsys-capable": our functions, our plan codec,
//! and an object-store registry that can reach the lake. The client, the scheduler's session
//! builder and the executor's function registry and runtime all come from here, so a plan built
//! on one side always decodes and runs on the other.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use std::any::Any;

use datafusion::common::exec_datafusion_err;
use datafusion::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use recsys_core::S3Options;
use url::Url;

use crate::codec::RecsysPhysicalCodec;

/// Settings every recsys job carries to the scheduler and executors (`SET recsys.… = …`): where
/// the lake's S3 store is and how to address it, never a credential. Executors and the
/// scheduler take S3 credentials from their own environment or flags (see [`lake_s3`]), so no
/// secret travels in a job's plan or session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecsysOptions {
    /// S3 endpoint (MinIO: `http://minio:9000`).
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// Allow `http://` S3 endpoints.
    pub s3_allow_http: bool,
    /// Virtual-hosted-style bucket addressing (path style otherwise).
    pub s3_virtual_hosted: bool,
}

impl ConfigExtension for RecsysOptions {
    const PREFIX: &'static str = "recsys";
}

// Written out rather than with `extensions_options!`, whose entries lack the `recsys.` prefix
// and so would not survive Ballista's key-value trip to the executors.
impl ExtensionOptions for RecsysOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let text = || Some(value.to_string()).filter(|v| !v.is_empty());
        let flag = || {
            value.parse::<bool>().map_err(|_| {
                DataFusionError::Configuration(format!(
                    "recsys.{key} must be true or false, got `{value}`"
                ))
            })
        };
        match key {
            "s3_endpoint" => self.s3_endpoint = text(),
            "s3_region" => self.s3_region = text(),
            "s3_allow_http" => self.s3_allow_http = flag()?,
            "s3_virtual_hosted" => self.s3_virtual_hosted = flag()?,
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "unknown option recsys.{key}"
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        let entry = |key: &str, value: Option<String>, description: &'static str| ConfigEntry {
            key: format!("{}.{key}", Self::PREFIX),
            value,
            description,
        };
        vec![
            entry("s3_endpoint", self.s3_endpoint.clone(), "S3 endpoint"),
            entry("s3_region", self.s3_region.clone(), "S3 region"),
            entry(
                "s3_allow_http",
                Some(self.s3_allow_http.to_string()),
                "allow http:// S3 endpoints",
            ),
            entry(
                "s3_virtual_hosted",
                Some(self.s3_virtual_hosted.to_string()),
                "virtual-hosted-style S3 requests",
            ),
        ]
    }
}

impl RecsysOptions {
    /// The non-secret part of `s3`: what a job may carry.
    pub fn from_s3(s3: &S3Options) -> Self {
        RecsysOptions {
            s3_endpoint: s3.endpoint.clone(),
            s3_region: s3.region.clone(),
            s3_allow_http: s3.allow_http,
            s3_virtual_hosted: s3.virtual_hosted,
        }
    }
}

/// The S3 settings a process uses for a job: its `own` (its environment or flags: the only
/// source of credentials), with the job's non-secret options where its own leave a setting
/// open. An executor configured with its own endpoint (e.g. `http://minio:9000` inside compose)
/// keeps it whatever endpoint the submitting client used.
pub fn lake_s3(own: &S3Options, job: &RecsysOptions) -> S3Options {
    S3Options {
        endpoint: own.endpoint.clone().or_else(|| job.s3_endpoint.clone()),
        access_key_id: own.access_key_id.clone(),
        secret_access_key: own.secret_access_key.clone(),
        region: own.region.clone().or_else(|| job.s3_region.clone()),
        allow_http: own.allow_http || job.s3_allow_http,
        virtual_hosted: own.virtual_hosted || job.s3_virtual_hosted,
    }
}

/// Resolves `file://` and `s3://bucket` URLs to stores, building S3 clients on first use from
/// the job's [`RecsysOptions`].
#[derive(Debug)]
pub struct LakeObjectStoreRegistry {
    s3: S3Options,
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl LakeObjectStoreRegistry {
    pub fn new(s3: S3Options) -> Self {
        LakeObjectStoreRegistry {
            s3,
            stores: RwLock::new(HashMap::new()),
        }
    }

    fn key(url: &Url) -> String {
        format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""))
    }
}

impl ObjectStoreRegistry for LakeObjectStoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.stores
            .write()
            .expect("registry lock")
            .insert(Self::key(url), store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = Self::key(url);
        if let Some(store) = self.stores.read().expect("registry lock").get(&key) {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "" | "file" => Arc::new(LocalFileSystem::new()),
            "s3" => {
                let bucket = url
                    .host_str()
                    .ok_or_else(|| exec_datafusion_err!("no bucket in `{url}`"))?;
                recsys_core::store::build_s3(bucket, &self.s3)
                    .map_err(|e| exec_datafusion_err!("cannot open `{key}`: {e}"))?
            }
            other => {
                return Err(exec_datafusion_err!(
                    "unsupported object store scheme `{other}` in `{url}`"
                ));
            }
        };
        Ok(self
            .stores
            .write()
            .expect("registry lock")
            .entry(key)
            .or_insert(store)
            .clone())
    }
}

/// The session configuration of every recsys session: Ballista defaults, our option namespace and
/// our codecs.
pub fn session_config(options: RecsysOptions) -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_option_extension(options)
        .with_ballista_logical_extension_codec(logical_codec())
        .with_ballista_physical_extension_codec(physical_codec())
}

/// The config producer installed on schedulers and executors (options arrive with each job).
pub fn default_session_config() -> SessionConfig {
    session_config(RecsysOptions::default())
}

/// A runtime whose object-store registry reaches the lake of `config`'s job with this process's
/// `own` S3 settings (see [`lake_s3`]); temporary files go to `work_dir`.
pub fn runtime_env(
    config: &SessionConfig,
    own: &S3Options,
    work_dir: Option<&str>,
) -> Result<Arc<RuntimeEnv>> {
    let job = config
        .options()
        .extensions
        .get::<RecsysOptions>()
        .cloned()
        .unwrap_or_default();
    let mut builder = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(LakeObjectStoreRegistry::new(lake_s3(own, &job))));
    if let Some(dir) = work_dir {
        builder = builder.with_temp_file_path(dir);
    }
    Ok(Arc::new(builder.build()?))
}

/// A full session state: DataFusion's and Ballista's functions plus ours, the lake runtime with
/// this process's `own` S3 settings. Clients plan jobs with it; schedulers build sessions with it.
pub fn session_state(config: SessionConfig, own: &S3Options) -> Result<SessionState> {
    let runtime = runtime_env(&config, own, None)?;
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    register_functions(&mut state)?;
    Ok(state)
}

/// Registers every project UDF on `state`.
pub fn register_functions(state: &mut SessionState) -> Result<()> {
    for udf in crate::udf::all() {
        state.register_udf(udf)?;
    }
    Ok(())
}

/// The function registry executors resolve plan functions in.
pub fn function_registry() -> Result<BallistaFunctionRegistry> {
    Ok(BallistaFunctionRegistry::from(&session_state(
        default_session_config(),
        &S3Options::default(),
    )?))
}

pub fn physical_codec() -> Arc<dyn PhysicalExtensionCodec> {
    Arc::new(RecsysPhysicalCodec::new(Arc::new(
        BallistaPhysicalExtensionCodec::default(),
    )))
}

pub fn logical_codec() -> Arc<dyn LogicalExtensionCodec> {
    Arc::new(BallistaLogicalExtensionCodec::default())
}

/// Installs our session builder, config producer and codecs on a scheduler, which reaches the
/// lake with its `own` S3 settings. With a `lake`, every session it builds has the lake's
/// tables ([`crate::tables`]) as its default schema, for SQL from Flight SQL clients; those
/// sessions' jobs carry the scheduler's non-secret S3 options to the executors.
pub fn configure_scheduler(
    config: &mut ballista_scheduler::config::SchedulerConfig,
    own: &S3Options,
    lake: Option<recsys_core::Store>,
) {
    let own = own.clone();
    let with_lake = lake.is_some();
    let producer_own = own.clone();
    config.override_config_producer = Some(Arc::new(move || {
        let config = session_config(RecsysOptions::from_s3(&producer_own));
        if with_lake {
            config
                .with_default_catalog_and_schema("datafusion", crate::tables::SCHEMA)
                .with_information_schema(true)
        } else {
            config
        }
    }));
    config.override_session_builder = Some(Arc::new(move |c| {
        let state = session_state(c, &own)?;
        match &lake {
            Some(lake) => with_lake_tables(state, lake.clone()),
            None => Ok(state),
        }
    }));
    config.override_logical_codec = Some(logical_codec());
    config.override_physical_codec = Some(physical_codec());
}

/// `state` with the lake's tables registered as schema [`crate::tables::SCHEMA`] of its default
/// catalog.
fn with_lake_tables(state: SessionState, lake: recsys_core::Store) -> Result<SessionState> {
    let tables = Arc::new(crate::tables::LakeSchema::new(lake, state.clone()));
    let name = state.config().options().catalog.default_catalog.clone();
    let catalog = state
        .catalog_list()
        .catalog(&name)
        .ok_or_else(|| DataFusionError::Plan(format!("no catalog `{name}` in the session")))?;
    catalog.register_schema(crate::tables::SCHEMA, tables)?;
    Ok(state)
}

/// Installs our functions, codecs and lake runtime on an executor, which reaches the lake with
/// its `own` S3 settings.
pub fn configure_executor(
    config: &mut ballista_executor::executor_process::ExecutorProcessConfig,
    own: &S3Options,
) -> Result<()> {
    let work_dir = config.work_dir.clone();
    let own = own.clone();
    config.override_config_producer = Some(Arc::new(default_session_config));
    config.override_runtime_producer = Some(Arc::new(move |session| {
        runtime_env(session, &own, work_dir.as_deref())
    }));
    config.override_function_registry = Some(Arc::new(function_registry()?));
    config.override_logical_codec = Some(logical_codec());
    config.override_physical_codec = Some(physical_codec());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballista_core::extension::SessionConfigHelperExt;

    #[test]
    fn options_travel_as_key_values_without_credentials() {
        let client = S3Options {
            endpoint: Some("http://minio:9000".into()),
            access_key_id: Some("client-key".into()),
            secret_access_key: Some("client-secret".into()),
            allow_http: true,
            ..Default::default()
        };
        let sent = session_config(RecsysOptions::from_s3(&client)).to_key_value_pairs();
        assert!(
            !format!("{sent:?}").contains("client-"),
            "credentials in the job's settings: {sent:?}"
        );
        let received = default_session_config().update_from_key_value_pair(&sent);
        let job = received
            .options()
            .extensions
            .get::<RecsysOptions>()
            .unwrap();
        let executor = S3Options {
            access_key_id: Some("executor-key".into()),
            secret_access_key: Some("executor-secret".into()),
            ..Default::default()
        };
        let used = lake_s3(&executor, job);
        assert_eq!(used.endpoint.as_deref(), Some("http://minio:9000"));
        assert!(used.allow_http);
        assert_eq!(used.secret_access_key.as_deref(), Some("executor-secret"));
        let own_endpoint = S3Options {
            endpoint: Some("http://minio.internal:9000".into()),
            ..executor
        };
        assert_eq!(
            lake_s3(&own_endpoint, job).endpoint.as_deref(),
            Some("http://minio.internal:9000")
        );
    }

    #[test]
    fn functions_are_registered() {
        let state = session_state(default_session_config(), &S3Options::default()).unwrap();
        for name in [crate::udf::TRACK_ID, crate::udf::ARTIST_ID] {
            assert!(state.scalar_functions().contains_key(name), "{name}");
        }
    }
}
