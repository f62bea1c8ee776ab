//! A Qdrant stand-in: Qdrant's gRPC protocol (the `Collections` and `Points` services that
//! `qdrant-client` generates, on one port like Qdrant's 6334) over an exact in-memory index, so
//! that `recsys_vectors::QdrantStore` runs its real client code in every test run.
//!
//! What it implements, with Qdrant's documented semantics:
//! - collections: exists, create (one unnamed dense vector; `Cosine` or `Dot`), delete, list;
//!   creating an existing one is `INVALID_ARGUMENT`, using a missing one `NOT_FOUND`, with
//!   Qdrant's messages;
//! - points: upsert (replaces by id; ids are integers or UUIDs; a whole request is refused when
//!   one vector has the wrong dimension, `INVALID_ARGUMENT`), delete by ids or filter (absent ids
//!   ignored), get, count, and query `nearest` to a dense vector with filter, limit (default
//!   10), offset, score threshold and payload/vector selectors. `Cosine` collections store
//!   vectors normalised, as Qdrant does, so scores are cosines and stored vectors come back
//!   unit length;
//! - filters: `must`, `should`, `must_not` over `has_id`, nested filters and field matches
//!   (keyword, integer, bool, any-of, except) on top-level payload keys (an array matches when
//!   an element does).
//!
//! What it is not: no HNSW (search is exact, so it cannot show an approximate index's recall),
//! no persistence, snapshots, named or sparse vectors, quantisation or cluster. Every other RPC,
//! query kind or condition answers `UNIMPLEMENTED` naming itself, so a new use in recsys fails
//! loudly here instead of passing against a guess.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use q::collections_server::{Collections, CollectionsServer};
use q::points_server::{Points, PointsServer};
use qdrant_client::qdrant as q;
use tonic::{Request, Response, Status};

/// A point id: Qdrant's integers and UUIDs are distinct ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Id {
    Num(u64),
    Uuid(String),
}

fn id_of(p: &q::PointId) -> Result<Id, Status> {
    match &p.point_id_options {
        Some(q::point_id::PointIdOptions::Num(n)) => Ok(Id::Num(*n)),
        Some(q::point_id::PointIdOptions::Uuid(u)) => {
            // Qdrant parses UUIDs; the canonical form is lower case.
            let canonical = u.to_ascii_lowercase();
            let valid = canonical.len() == 36
                && canonical.char_indices().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => c == '-',
                    _ => c.is_ascii_hexdigit(),
                });
            if valid {
                Ok(Id::Uuid(canonical))
            } else {
                Err(Status::invalid_argument(format!(
                    "Unable to parse UUID: {u}"
                )))
            }
        }
        None => Err(Status::invalid_argument("Wrong input: point id is missing")),
    }
}

fn point_id(id: &Id) -> q::PointId {
    q::PointId {
        point_id_options: Some(match id {
            Id::Num(n) => q::point_id::PointIdOptions::Num(*n),
            Id::Uuid(u) => q::point_id::PointIdOptions::Uuid(u.clone()),
        }),
    }
}

struct Stored {
    vector: Vec<f32>,
    payload: HashMap<String, q::Value>,
    version: u64,
}

struct Collection {
    dim: usize,
    distance: q::Distance,
    points: BTreeMap<Id, Stored>,
}

impl Collection {
    /// `v` as stored and compared: unit length for cosine.
    fn prepare(&self, v: Vec<f32>) -> Result<Vec<f32>, Status> {
        if v.len() != self.dim {
            return Err(Status::invalid_argument(format!(
                "Wrong input: Vector dimension error: expected dim: {}, got {}",
                self.dim,
                v.len()
            )));
        }
        Ok(match self.distance {
            q::Distance::Cosine => {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter().map(|x| x / norm).collect()
                } else {
                    v
                }
            }
            _ => v,
        })
    }
}

#[derive(Default)]
struct State {
    collections: HashMap<String, Collection>,
    operations: u64,
}

/// The stand-in's data; cloning shares it (a restarted server keeps its points).
#[derive(Clone, Default)]
pub struct QdrantStandIn {
    state: Arc<RwLock<State>>,
}

/// A serving stand-in; stopped when dropped. It runs on a runtime of its own, so that stopping
/// it ends every connection at once, as a Qdrant process that stops does.
pub struct Running {
    /// `http://127.0.0.1:PORT`, as `QdrantOptions::url` takes it.
    pub url: String,
    pub addr: SocketAddr,
    data: QdrantStandIn,
    runtime: Option<tokio::runtime::Runtime>,
}

impl QdrantStandIn {
    /// Serves this data on `addr` (port 0: any free port) until the result is stopped or
    /// dropped.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("qdrant-stand-in")
            .enable_all()
            .build()?;
        let service = Service(self.clone());
        runtime.spawn(async move {
            let served = async {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                // As Qdrant's own server does: without it, small replies wait for the client's
                // delayed ACK (Nagle), tens of milliseconds each.
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |socket| socket.and_then(|s| s.set_nodelay(true).map(|()| s)),
                );
                tonic::transport::Server::builder()
                    .add_service(CollectionsServer::new(service.clone()))
                    .add_service(PointsServer::new(service))
                    .serve_with_incoming(incoming)
                    .await
                    .map_err(std::io::Error::other)
            };
            if let Err(e) = served.await {
                eprintln!("Qdrant stand-in on {addr}: {e}");
            }
        });
        Ok(Running {
            url: format!("http://{addr}"),
            addr,
            data: self.clone(),
            runtime: Some(runtime),
        })
    }
}

impl Running {
    /// A stand-in on a free loopback port with no collections.
    pub async fn start() -> std::io::Result<Running> {
        QdrantStandIn::default()
            .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
    }

    /// Stops serving (its listener and every connection close: clients see the server gone)
    /// and returns the data, which [`QdrantStandIn::serve`] can serve again on the same address.
    pub fn stop(self) -> QdrantStandIn {
        // Dropping `self` shuts its runtime down.
        self.data.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Clone)]
struct Service(QdrantStandIn);

fn not_found(name: &str) -> Status {
    Status::not_found(format!("Not found: Collection `{name}` doesn't exist!"))
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented by recsys's Qdrant stand-in"
    ))
}

impl Service {
    fn read<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Collection) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let state = self.0.state.read().expect("stand-in lock");
        f(state.collections.get(name).ok_or_else(|| not_found(name))?)
    }

    /// Runs an update on collection `name`; Qdrant's answer to it.
    fn update(
        &self,
        name: &str,
        started: Instant,
        f: impl FnOnce(&mut Collection, u64) -> Result<(), Status>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        let mut state = self.0.state.write().expect("stand-in lock");
        let op = state.operations;
        let collection = state
            .collections
            .get_mut(name)
            .ok_or_else(|| not_found(name))?;
        f(collection, op)?;
        state.operations += 1;
        Ok(Response::new(q::PointsOperationResponse {
            result: Some(q::UpdateResult {
                operation_id: Some(op),
                status: q::UpdateStatus::Completed as i32,
            }),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }
}

/// The dense vector of an upserted point.
fn dense(vectors: Option<&q::Vectors>) -> Result<Vec<f32>, Status> {
    match vectors.and_then(|v| v.vectors_options.as_ref()) {
        Some(q::vectors::VectorsOptions::Vector(v)) => match &v.vector {
            Some(q::vector::Vector::Dense(d)) => Ok(d.data.clone()),
            Some(_) => Err(unimplemented("a sparse, multi-dense or inference vector")),
            #[allow(deprecated)]
            None => Ok(v.data.clone()),
        },
        Some(q::vectors::VectorsOptions::Vectors(_)) => Err(Status::invalid_argument(
            "Wrong input: named vectors are not configured for this collection",
        )),
        None => Err(Status::invalid_argument("Wrong input: point has no vector")),
    }
}

fn value_matches(value: &q::Value, m: &q::r#match::MatchValue) -> Result<bool, Status> {
    use q::r#match::MatchValue as M;
    use q::value::Kind as K;
    if let Some(K::ListValue(list)) = &value.kind {
        // An array matches when one of its elements does (except-matches: when none does).
        let mut any = false;
        for v in &list.values {
            any |= value_matches(v, m)?;
        }
        return Ok(any);
    }
    Ok(match (m, &value.kind) {
        (M::Keyword(k), Some(K::StringValue(s))) => k == s,
        (M::Integer(i), Some(K::IntegerValue(v))) => i == v,
        (M::Boolean(b), Some(K::BoolValue(v))) => b == v,
        (M::Keywords(ks), Some(K::StringValue(s))) => ks.strings.contains(s),
        (M::Integers(is), Some(K::IntegerValue(v))) => is.integers.contains(v),
        (M::ExceptKeywords(ks), Some(K::StringValue(s))) => !ks.strings.contains(s),
        (M::ExceptIntegers(is), Some(K::IntegerValue(v))) => !is.integers.contains(v),
        (
            M::Keyword(_)
            | M::Integer(_)
            | M::Boolean(_)
            | M::Keywords(_)
            | M::Integers(_)
            | M::ExceptKeywords(_)
            | M::ExceptIntegers(_),
            _,
        ) => false,
        _ => {
            return Err(unimplemented(
                "a full-text, phrase, prefix or substring match",
            ));
        }
    })
}

fn condition_holds(c: &q::Condition, id: &Id, point: &Stored) -> Result<bool, Status> {
    use q::condition::ConditionOneOf as C;
    match &c.condition_one_of {
        Some(C::HasId(h)) => {
            for p in &h.has_id {
                if id_of(p)? == *id {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Some(C::Filter(f)) => filter_holds(f, id, point),
        Some(C::Field(field)) => {
            let Some(q::Match {
                match_value: Some(m),
            }) = &field.r#match
            else {
                return Err(unimplemented(
                    "a field condition other than a match (range, geo, values count, …)",
                ));
            };
            match point.payload.get(&field.key) {
                Some(value) => value_matches(value, m),
                // Qdrant: a missing key matches no value, and every except-match.
                None => Ok(matches!(
                    m,
                    q::r#match::MatchValue::ExceptKeywords(_)
                        | q::r#match::MatchValue::ExceptIntegers(_)
                )),
            }
        }
        Some(_) => Err(unimplemented(
            "an is-empty, is-null, nested, has-vector or slice condition",
        )),
        None => Err(Status::invalid_argument("Wrong input: empty condition")),
    }
}

fn filter_holds(f: &q::Filter, id: &Id, point: &Stored) -> Result<bool, Status> {
    if f.min_should.is_some() {
        return Err(unimplemented("min_should"));
    }
    for c in &f.must {
        if !condition_holds(c, id, point)? {
            return Ok(false);
        }
    }
    for c in &f.must_not {
        if condition_holds(c, id, point)? {
            return Ok(false);
        }
    }
    if f.should.is_empty() {
        return Ok(true);
    }
    for c in &f.should {
        if condition_holds(c, id, point)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The points of `collection` that `filter` (if any) keeps, in id order.
fn filtered<'a>(
    collection: &'a Collection,
    filter: Option<&q::Filter>,
) -> Result<Vec<(&'a Id, &'a Stored)>, Status> {
    let mut kept = Vec::new();
    for (id, point) in &collection.points {
        if filter.map_or(Ok(true), |f| filter_holds(f, id, point))? {
            kept.push((id, point));
        }
    }
    Ok(kept)
}

fn payload_out(
    selector: Option<&q::WithPayloadSelector>,
    default: bool,
    payload: &HashMap<String, q::Value>,
) -> HashMap<String, q::Value> {
    use q::with_payload_selector::SelectorOptions as S;
    match selector.and_then(|s| s.selector_options.as_ref()) {
        None if default => payload.clone(),
        None | Some(S::Enable(false)) => HashMap::new(),
        Some(S::Enable(true)) => payload.clone(),
        Some(S::Include(keys)) => payload
            .iter()
            .filter(|(k, _)| keys.fields.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(S::Exclude(keys)) => payload
            .iter()
            .filter(|(k, _)| !keys.fields.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[allow(deprecated)] // `VectorOutput`'s old fields, left empty
fn vectors_out(selector: Option<&q::WithVectorsSelector>, v: &[f32]) -> Option<q::VectorsOutput> {
    use q::with_vectors_selector::SelectorOptions as S;
    let wanted = match selector.and_then(|s| s.selector_options.as_ref()) {
        Some(S::Enable(on)) => *on,
        // The unnamed vector is named "".
        Some(S::Include(names)) => names.names.iter().any(|n| n.is_empty()),
        None => false,
    };
    wanted.then(|| q::VectorsOutput {
        vectors_options: Some(q::vectors_output::VectorsOptions::Vector(q::VectorOutput {
            data: Vec::new(),
            indices: None,
            vectors_count: None,
            vector: Some(q::vector_output::Vector::Dense(q::DenseVector {
                data: v.to_vec(),
            })),
        })),
    })
}

/// The stub of an RPC the stand-in does not implement, in the shape `#[async_trait]` gives
/// the trait's methods (a macro inside an `#[async_trait]` impl is expanded after it).
macro_rules! not_served {
    ($($name:ident($req:ident) -> $resp:ident;)*) => {$(
        fn $name<'life0, 'async_trait>(
            &'life0 self,
            _request: Request<q::$req>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<q::$resp>, Status>>
                + Send + 'async_trait>,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async { Err(unimplemented(stringify!($name))) })
        }
    )*};
}

#[tonic::async_trait]
impl Collections for Service {
    async fn list(
        &self,
        _request: Request<q::ListCollectionsRequest>,
    ) -> Result<Response<q::ListCollectionsResponse>, Status> {
        let started = Instant::now();
        let state = self.0.state.read().expect("stand-in lock");
        let mut names: Vec<&String> = state.collections.keys().collect();
        names.sort();
        Ok(Response::new(q::ListCollectionsResponse {
            collections: names
                .into_iter()
                .map(|name| q::CollectionDescription { name: name.clone() })
                .collect(),
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn create(
        &self,
        request: Request<q::CreateCollection>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let params = match r.vectors_config.and_then(|c| c.config) {
            Some(q::vectors_config::Config::Params(p)) => p,
            Some(q::vectors_config::Config::ParamsMap(_)) => {
                return Err(unimplemented("named vectors"));
            }
            None => return Err(unimplemented("a collection without a dense vector")),
        };
        let distance = q::Distance::try_from(params.distance)
            .map_err(|_| Status::invalid_argument("Wrong input: unknown distance"))?;
        if !matches!(distance, q::Distance::Cosine | q::Distance::Dot) {
            return Err(unimplemented("a distance other than Cosine or Dot"));
        }
        if params.size == 0 {
            return Err(Status::invalid_argument(
                "Validation error in JSON body: [vectors.size: value 0 invalid, must be 1 or larger]",
            ));
        }
        let mut state = self.0.state.write().expect("stand-in lock");
        if state.collections.contains_key(&r.collection_name) {
            return Err(Status::invalid_argument(format!(
                "Wrong input: Collection `{}` already exists!",
                r.collection_name
            )));
        }
        state.collections.insert(
            r.collection_name,
            Collection {
                dim: params.size as usize,
                distance,
                points: BTreeMap::new(),
            },
        );
        Ok(Response::new(q::CollectionOperationResponse {
            result: true,
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn delete(
        &self,
        request: Request<q::DeleteCollection>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().collection_name;
        let removed = self
            .0
            .state
            .write()
            .expect("stand-in lock")
            .collections
            .remove(&name)
            .is_some();
        Ok(Response::new(q::CollectionOperationResponse {
            result: removed,
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn collection_exists(
        &self,
        request: Request<q::CollectionExistsRequest>,
    ) -> Result<Response<q::CollectionExistsResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().collection_name;
        let exists = self
            .0
            .state
            .read()
            .expect("stand-in lock")
            .collections
            .contains_key(&name);
        Ok(Response::new(q::CollectionExistsResponse {
            result: Some(q::CollectionExists { exists }),
            time: started.elapsed().as_secs_f64(),
        }))
    }

    not_served! {
        get(GetCollectionInfoRequest) -> GetCollectionInfoResponse;
        update(UpdateCollection) -> CollectionOperationResponse;
        update_aliases(ChangeAliases) -> CollectionOperationResponse;
        list_collection_aliases(ListCollectionAliasesRequest) -> ListAliasesResponse;
        list_aliases(ListAliasesRequest) -> ListAliasesResponse;
        collection_cluster_info(CollectionClusterInfoRequest) -> CollectionClusterInfoResponse;
        update_collection_cluster_setup(UpdateCollectionClusterSetupRequest) -> UpdateCollectionClusterSetupResponse;
        create_shard_key(CreateShardKeyRequest) -> CreateShardKeyResponse;
        delete_shard_key(DeleteShardKeyRequest) -> DeleteShardKeyResponse;
        list_shard_keys(ListShardKeysRequest) -> ListShardKeysResponse;
    }
}

#[tonic::async_trait]
impl Points for Service {
    async fn upsert(
        &self,
        request: Request<q::UpsertPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        if r.update_filter.is_some() || r.update_mode.is_some_and(|m| m != 0) {
            return Err(unimplemented(
                "a conditional upsert (update_filter, update_mode)",
            ));
        }
        self.update(&r.collection_name, started, |c, op| {
            // All or nothing: every point is checked before any is written.
            let mut prepared = Vec::with_capacity(r.points.len());
            for p in r.points {
                let id = id_of(p.id.as_ref().ok_or_else(|| {
                    Status::invalid_argument("Wrong input: point id is missing")
                })?)?;
                let vector = c.prepare(dense(p.vectors.as_ref())?)?;
                prepared.push((id, vector, p.payload));
            }
            for (id, vector, payload) in prepared {
                c.points.insert(
                    id,
                    Stored {
                        vector,
                        payload,
                        version: op,
                    },
                );
            }
            Ok(())
        })
    }

    async fn delete(
        &self,
        request: Request<q::DeletePoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        self.update(&r.collection_name, started, |c, _| {
            use q::points_selector::PointsSelectorOneOf as P;
            let gone: Vec<Id> = match r.points.and_then(|p| p.points_selector_one_of) {
                Some(P::Points(list)) => list.ids.iter().map(id_of).collect::<Result<_, _>>()?,
                Some(P::Filter(f)) => filtered(c, Some(&f))?
                    .into_iter()
                    .map(|(id, _)| id.clone())
                    .collect(),
                None => return Err(Status::invalid_argument("Wrong input: no points selected")),
            };
            for id in &gone {
                c.points.remove(id);
            }
            Ok(())
        })
    }

    async fn get(
        &self,
        request: Request<q::GetPoints>,
    ) -> Result<Response<q::GetResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let result = self.read(&r.collection_name, |c| {
            let mut found = Vec::new();
            for p in &r.ids {
                let id = id_of(p)?;
                if let Some(point) = c.points.get(&id) {
                    found.push(q::RetrievedPoint {
                        id: Some(point_id(&id)),
                        payload: payload_out(r.with_payload.as_ref(), true, &point.payload),
                        vectors: vectors_out(r.with_vectors.as_ref(), &point.vector),
                        shard_key: None,
                        order_value: None,
                    });
                }
            }
            Ok(found)
        })?;
        Ok(Response::new(q::GetResponse {
            result,
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn count(
        &self,
        request: Request<q::CountPoints>,
    ) -> Result<Response<q::CountResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let count = self.read(&r.collection_name, |c| {
            Ok(filtered(c, r.filter.as_ref())?.len() as u64)
        })?;
        Ok(Response::new(q::CountResponse {
            result: Some(q::CountResult { count }),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn query(
        &self,
        request: Request<q::QueryPoints>,
    ) -> Result<Response<q::QueryResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        if !r.prefetch.is_empty() || r.lookup_from.is_some() {
            return Err(unimplemented("prefetch and lookup_from"));
        }
        if r.using.as_deref().is_some_and(|u| !u.is_empty()) {
            return Err(Status::invalid_argument(
                "Wrong input: named vectors are not configured for this collection",
            ));
        }
        let result = self.read(&r.collection_name, |c| {
            use q::query::Variant as V;
            use q::vector_input::Variant as I;
            let query = match r.query.as_ref().and_then(|q| q.variant.as_ref()) {
                Some(V::Nearest(q::VectorInput {
                    variant: Some(I::Dense(d)),
                })) => Some(c.prepare(d.data.clone())?),
                // Without a query Qdrant lists points by id.
                None => None,
                Some(_) => {
                    return Err(unimplemented(
                        "a query other than nearest to a dense vector",
                    ));
                }
            };
            let mut scored: Vec<(f32, &Id, &Stored)> = filtered(c, r.filter.as_ref())?
                .into_iter()
                .map(|(id, p)| {
                    let score = query
                        .as_ref()
                        .map_or(0.0, |q| q.iter().zip(&p.vector).map(|(a, b)| a * b).sum());
                    (score, id, p)
                })
                .filter(|(score, _, _)| r.score_threshold.is_none_or(|t| *score >= t))
                .collect();
            if query.is_some() {
                // Best first; equal scores in id order.
                scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            }
            let (offset, limit) = (
                r.offset.unwrap_or(0) as usize,
                r.limit.unwrap_or(10) as usize,
            );
            Ok(scored
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(|(score, id, p)| q::ScoredPoint {
                    id: Some(point_id(id)),
                    payload: payload_out(r.with_payload.as_ref(), false, &p.payload),
                    score,
                    version: p.version,
                    vectors: vectors_out(r.with_vectors.as_ref(), &p.vector),
                    shard_key: None,
                    order_value: None,
                })
                .collect())
        })?;
        Ok(Response::new(q::QueryResponse {
            result,
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    not_served! {
        update_vectors(UpdatePointVectors) -> PointsOperationResponse;
        delete_vectors(DeletePointVectors) -> PointsOperationResponse;
        set_payload(SetPayloadPoints) -> PointsOperationResponse;
        overwrite_payload(SetPayloadPoints) -> PointsOperationResponse;
        delete_payload(DeletePayloadPoints) -> PointsOperationResponse;
        clear_payload(ClearPayloadPoints) -> PointsOperationResponse;
        create_field_index(CreateFieldIndexCollection) -> PointsOperationResponse;
        delete_field_index(DeleteFieldIndexCollection) -> PointsOperationResponse;
        create_vector_name(CreateVectorNameRequest) -> PointsOperationResponse;
        delete_vector_name(DeleteVectorNameRequest) -> PointsOperationResponse;
        search(SearchPoints) -> SearchResponse;
        search_batch(SearchBatchPoints) -> SearchBatchResponse;
        search_groups(SearchPointGroups) -> SearchGroupsResponse;
        scroll(ScrollPoints) -> ScrollResponse;
        recommend(RecommendPoints) -> RecommendResponse;
        recommend_batch(RecommendBatchPoints) -> RecommendBatchResponse;
        recommend_groups(RecommendPointGroups) -> RecommendGroupsResponse;
        discover(DiscoverPoints) -> DiscoverResponse;
        discover_batch(DiscoverBatchPoints) -> DiscoverBatchResponse;
        update_batch(UpdateBatchPoints) -> UpdateBatchResponse;
        query_batch(QueryBatchPoints) -> QueryBatchResponse;
        query_groups(QueryPointGroups) -> QueryGroupsResponse;
        facet(FacetCounts) -> FacetResponse;
        search_matrix_pairs(SearchMatrixPoints) -> SearchMatrixPairsResponse;
        search_matrix_offsets(SearchMatrixPoints) -> SearchMatrixOffsetsResponse;
    }
}
