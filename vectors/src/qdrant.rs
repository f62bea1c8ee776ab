//! The Qdrant vector store: collection `lyrics` (cosine, HNSW m=16, ef_construct=200), point id =
//! UUIDv5 of the track id (Qdrant ids are integers or UUIDs), payload track id / title / artist.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::vector_output::Vector as VectorKind;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, DeletePointsBuilder, Distance, Filter,
    GetPointsBuilder, HnswConfigDiffBuilder, PointStruct, PointsIdsList, QueryPointsBuilder,
    UpsertPointsBuilder, Value, VectorParamsBuilder,
};
use qdrant_client::{Qdrant, QdrantError};
use uuid::Uuid;

use crate::{COLLECTION, Hit, Payload, Point, VectorError, VectorStore, check_dim};

/// How to reach Qdrant.
#[derive(Debug, Clone)]
pub struct QdrantOptions {
    /// gRPC endpoint, e.g. `http://qdrant:6334`.
    pub url: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Collection name (default `lyrics`).
    pub collection: String,
}

impl QdrantOptions {
    pub fn new(url: impl Into<String>) -> Self {
        QdrantOptions {
            url: url.into(),
            api_key: None,
            timeout: Duration::from_secs(10),
            collection: COLLECTION.into(),
        }
    }
}

pub struct QdrantStore {
    client: Qdrant,
    url: String,
    collection: String,
    dim: usize,
}

/// The point id of a track: UUIDv5 of the track id in the URL namespace.
pub fn point_id(track_id: &str) -> String {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("recsys:track:{track_id}").as_bytes(),
    )
    .to_string()
}

impl QdrantStore {
    /// Connects and creates the collection when it does not exist.
    pub async fn connect(options: &QdrantOptions, dim: usize) -> Result<Self, VectorError> {
        let err = |e: QdrantError| VectorError::Qdrant {
            url: options.url.clone(),
            reason: e.to_string(),
        };
        let mut builder = Qdrant::from_url(&options.url)
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .skip_compatibility_check();
        if let Some(key) = &options.api_key {
            builder = builder.api_key(key.clone());
        }
        let store = QdrantStore {
            client: builder.build().map_err(err)?,
            url: options.url.clone(),
            collection: options.collection.clone(),
            dim,
        };
        let exists = store
            .client
            .collection_exists(&store.collection)
            .await
            .map_err(err)?;
        if !exists {
            store
                .client
                .create_collection(
                    CreateCollectionBuilder::new(&store.collection)
                        .vectors_config(VectorParamsBuilder::new(dim as u64, Distance::Cosine))
                        .hnsw_config(HnswConfigDiffBuilder::default().m(16).ef_construct(200)),
                )
                .await
                .map_err(err)?;
        }
        Ok(store)
    }

    fn err(&self, e: QdrantError) -> VectorError {
        VectorError::Qdrant {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    fn ids(track_ids: &[String]) -> PointsIdsList {
        PointsIdsList {
            ids: track_ids.iter().map(|t| point_id(t).into()).collect(),
        }
    }
}

fn payload_of(map: &HashMap<String, Value>) -> Option<Payload> {
    let field = |k: &str| map.get(k).and_then(|v| v.as_str()).map(|s| s.to_string());
    Some(Payload {
        track_id: field("track_id")?,
        title: field("title").unwrap_or_default(),
        artist: field("artist").unwrap_or_default(),
    })
}

#[async_trait]
impl VectorStore for QdrantStore {
    fn describe(&self) -> String {
        format!("Qdrant {} collection `{}`", self.url, self.collection)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    async fn upsert(&self, points: &[Point]) -> Result<(), VectorError> {
        if points.is_empty() {
            return Ok(());
        }
        let mut structs = Vec::with_capacity(points.len());
        for p in points {
            check_dim(self, p.vector.len())?;
            let payload: HashMap<String, Value> = [
                ("track_id", &p.payload.track_id),
                ("title", &p.payload.title),
                ("artist", &p.payload.artist),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v.clone())))
            .collect();
            structs.push(PointStruct::new(
                point_id(&p.payload.track_id),
                p.vector.clone(),
                payload,
            ));
        }
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, structs).wait(true))
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn delete(&self, track_ids: &[String]) -> Result<(), VectorError> {
        if track_ids.is_empty() {
            return Ok(());
        }
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(Self::ids(track_ids))
                    .wait(true),
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn vector(&self, track_id: &str) -> Result<Option<Vec<f32>>, VectorError> {
        let response = self
            .client
            .get_points(
                GetPointsBuilder::new(&self.collection, vec![point_id(track_id).into()])
                    .with_vectors(true),
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|p| p.vectors?.get_vector())
            .find_map(|v| match v {
                VectorKind::Dense(d) => Some(d.data),
                _ => None,
            }))
    }

    async fn search(
        &self,
        vector: &[f32],
        limit: usize,
        exclude: &[String],
    ) -> Result<Vec<Hit>, VectorError> {
        check_dim(self, vector.len())?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut query = QueryPointsBuilder::new(&self.collection)
            .query(vector.to_vec())
            .limit(limit as u64)
            .with_payload(true);
        if !exclude.is_empty() {
            query = query.filter(Filter::must_not([Condition::has_id(
                exclude.iter().map(|t| point_id(t)),
            )]));
        }
        let response = self.client.query(query).await.map_err(|e| self.err(e))?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|p| {
                Some(Hit {
                    payload: payload_of(&p.payload)?,
                    score: p.score,
                })
            })
            .collect())
    }

    async fn count(&self) -> Result<u64, VectorError> {
        let response = self
            .client
            .count(CountPointsBuilder::new(&self.collection).exact(true))
            .await
            .map_err(|e| self.err(e))?;
        Ok(response.result.map_or(0, |r| r.count))
    }
}
