//! The serving state and every recommendation operation, over the configured catalog, vector
//! store, event log and lake (ALS models). Session state (feed and next-song queues, short-term
//! vectors, recent plays) is kept with the seed's TTLs in the catalog's session store (MongoDB in
//! production, the embedded catalog by default), so it survives a restart and replicas share it.
//! A user's read-modify-write of their session is serialised within a server by a striped lock;
//! two replicas serving the same user at the same instant can overwrite each other's last
//! change (last write wins), as with the seed's Redis values.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use recsys_catalog::{Catalog, Song, User, UserStats};
use recsys_core::Store;
use recsys_ingest::{Action, EventLog};
use recsys_proto::v1::ListenEvent;
use recsys_vectors::VectorStore;
use tracing::info;

use crate::model::Model;
use crate::rank::{Weights, fuse, popularity_sample, random_subset};
use serde::{Deserialize, Serialize};

use crate::session::{FEED, NEXT_SONGS, Pick, Queue, QueuePolicy, SHORT_TERM_TTL, Source};
use crate::vectors::{LONG_WEIGHT, record_play, session_vector};
use crate::{ServeError, invalid};

/// Lyrics neighbours kept per song (the seed's search cap): enough for any pool after the
/// session's exclusions.
const NEIGHBOURS: usize = 500;
/// Songs of the popularity list the fallback samples from (more than a session and a listening
/// history usually exclude).
const POPULAR: usize = 5000;
/// How long recent plays are kept for fold-in and `exclude_heard`.
const PLAYS_TTL: Duration = Duration::from_secs(24 * 3600);

/// Tunables of serving.
#[derive(Debug, Clone)]
pub struct Options {
    pub weights: Weights,
    /// Songs whose lyrics neighbours are cached.
    pub neighbour_cache: usize,
    /// How long the popularity list is reused before it is read again.
    pub popularity_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            weights: Weights::default(),
            neighbour_cache: 4096,
            popularity_ttl: Duration::from_secs(60),
        }
    }
}

/// The stores serving reads and writes.
#[derive(Clone)]
pub struct Stores {
    pub lake: Store,
    pub catalog: Arc<dyn Catalog>,
    pub vectors: Arc<dyn VectorStore>,
    pub log: Arc<dyn EventLog>,
}

/// Session locks: a user's session is read, changed and written under one of these.
const USER_LOCKS: usize = 64;

/// A short-term vector, in the factor space of one model version.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ShortTerm {
    version: String,
    vector: Vec<f32>,
}

/// A user's plays seen by the servers (track id → weight), and the factor folded in from them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Plays {
    weights: HashMap<String, f32>,
    folded: Option<ShortTerm>,
}

/// The kinds of session values, their key prefixes and lifetimes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Feed,
    Next,
    /// The ids a feed or next-songs session generated (written on refills only).
    FeedSeen,
    NextSeen,
    Short,
    Plays,
}

impl Kind {
    fn key(self, user: &str) -> String {
        let prefix = match self {
            Kind::Feed => "feed",
            Kind::Next => "next",
            Kind::FeedSeen => "feed-seen",
            Kind::NextSeen => "next-seen",
            Kind::Short => "short",
            Kind::Plays => "plays",
        };
        format!("{prefix}:{user}")
    }

    fn ttl(self) -> Duration {
        match self {
            Kind::Feed | Kind::FeedSeen => FEED.ttl,
            Kind::Next | Kind::NextSeen => NEXT_SONGS.ttl,
            Kind::Short => SHORT_TERM_TTL,
            Kind::Plays => PLAYS_TTL,
        }
    }

    const ALL: [Kind; 6] = [
        Kind::Feed,
        Kind::Next,
        Kind::FeedSeen,
        Kind::NextSeen,
        Kind::Short,
        Kind::Plays,
    ];

    /// Where the generated ids of a queue kind are kept.
    fn seen(self) -> Kind {
        match self {
            Kind::Next => Kind::NextSeen,
            _ => Kind::FeedSeen,
        }
    }
}

/// A session value as stored: JSON.
fn encode<T: Serialize>(kind: Kind, user: &str, value: &T) -> (String, String, Duration) {
    let text = serde_json::to_string(value).expect("session values serialise");
    (kind.key(user), text, kind.ttl())
}

/// A stored session value; one this version cannot read counts as absent (a new session).
fn decode<T: for<'de> Deserialize<'de>>(text: Option<String>) -> Option<T> {
    serde_json::from_str(&text?).ok()
}

/// A user's long-term vector: the model's factor, else one folded in from recent plays.
fn long_term(model: &Model, user: &str, plays: Option<&Plays>) -> Option<(Vec<f32>, &'static str)> {
    if let Some(f) = model.user(user) {
        return Some((f.to_vec(), "als"));
    }
    let folded = plays?.folded.as_ref()?;
    (folded.version == model.version).then(|| (folded.vector.clone(), "fold-in"))
}

/// The short-term vector, when it belongs to the model being served.
fn short_term(model: &Model, short: Option<&ShortTerm>) -> Option<Vec<f32>> {
    short
        .filter(|s| s.version == model.version)
        .map(|s| s.vector.clone())
}

/// Counts a play and, for a user the model does not know, folds in a factor from the plays.
fn add_play(model: Option<&Model>, plays: &mut Plays, user: &str, song: &str, weight: f32) {
    *plays.weights.entry(song.to_string()).or_default() += weight;
    let Some(model) = model.filter(|m| m.user(user).is_none()) else {
        return;
    };
    let ratings: Vec<(u32, f32)> = plays
        .weights
        .iter()
        .filter_map(|(id, w)| model.item(id).map(|i| (i, *w)))
        .filter(|(_, w)| *w > 0.0)
        .collect();
    plays.folded = model.fold.fold_in(&ratings).map(|vector| ShortTerm {
        version: model.version.clone(),
        vector,
    });
}

/// Lyrics neighbours by song, first in first out.
#[derive(Default)]
struct NeighbourCache {
    map: HashMap<String, Arc<Vec<(String, f32)>>>,
    order: std::collections::VecDeque<String>,
}

/// The popularity list: `(id, plays_7d)`, most played first.
type Popular = Arc<Vec<(String, i64)>>;

/// Songs to show, in order, with why each was picked.
#[derive(Debug, Clone)]
pub struct Listing {
    pub songs: Vec<(Song, Pick)>,
    pub has_more: bool,
}

/// What `GetUser` shows.
#[derive(Debug, Clone)]
pub struct UserView {
    pub user: User,
    pub long_term: Option<(Vec<f32>, &'static str)>,
    pub short_term: Option<Vec<f32>>,
    pub model_version: String,
}

pub struct Recommender {
    stores: Stores,
    options: Options,
    model: RwLock<Option<Arc<Model>>>,
    locks: Vec<tokio::sync::Mutex<()>>,
    neighbours: Mutex<NeighbourCache>,
    popular: Mutex<Option<(Instant, Popular)>>,
    /// The `models/STORES_CHANGED` token the servable songs and caches were derived after.
    stores_seen: Mutex<Option<String>>,
}

fn not_found(what: &'static str, id: &str) -> ServeError {
    ServeError::NotFound {
        what,
        id: id.to_string(),
    }
}

/// `limit` with 0 meaning `default`, at most `max`.
pub fn limit(
    field: &'static str,
    value: u32,
    default: usize,
    max: usize,
) -> Result<usize, ServeError> {
    match value as usize {
        0 => Ok(default),
        n if n > max => Err(invalid(field, format!("{n} is more than {max}"))),
        n => Ok(n),
    }
}

fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, ServeError> {
    let v = value.trim();
    if v.is_empty() {
        Err(invalid(field, "must not be empty"))
    } else {
        Ok(v)
    }
}

impl Recommender {
    /// Serving over `stores`, with the model `models/als/CURRENT` names (if one was trained).
    pub async fn open(stores: Stores, options: Options) -> Result<Recommender, ServeError> {
        let rec = Recommender {
            stores,
            options,
            model: RwLock::new(None),
            locks: (0..USER_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            neighbours: Mutex::default(),
            popular: Mutex::new(None),
            stores_seen: Mutex::new(None),
        };
        *rec.stores_seen.lock().expect("stores lock") =
            recsys_core::models::stores_changed(&rec.stores.lake).await?;
        rec.reload().await?;
        Ok(rec)
    }

    /// The stores this server reads and writes.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The model being served.
    pub fn model(&self) -> Option<Arc<Model>> {
        self.model.read().expect("model lock").clone()
    }

    /// Loads the version `models/als/CURRENT` names when it is not the one being served;
    /// requests keep using the old model until the new one is ready. Returns the new version.
    pub async fn reload(&self) -> Result<Option<String>, ServeError> {
        let Some(version) = recsys_core::models::current_als(&self.stores.lake).await? else {
            return Ok(None);
        };
        if self.model().is_some_and(|m| m.version == version) {
            return Ok(None);
        }
        let t = Instant::now();
        let model = Model::load(&self.stores.lake, &version, self.stores.catalog.as_ref()).await?;
        info!(
            version = %version,
            items = model.item_ids.len(),
            servable_items = model.servable(),
            rank = model.k,
            seconds = t.elapsed().as_secs_f64(),
            "serving ALS model"
        );
        *self.model.write().expect("model lock") = Some(Arc::new(model));
        Ok(Some(version))
    }

    /// Derives again what serving took from the catalog and vector store (the model's
    /// servable songs; the caches of lyrics neighbours and popular songs) when
    /// `models/STORES_CHANGED` holds a token this server has not seen: clean & sync removed
    /// songs, or embeddings added vectors. Returns whether it did.
    pub async fn refresh_stores(&self) -> Result<bool, ServeError> {
        let token = recsys_core::models::stores_changed(&self.stores.lake).await?;
        if *self.stores_seen.lock().expect("stores lock") == token {
            return Ok(false);
        }
        if let Some(model) = self.model() {
            let servable = model.refresh_servable(self.stores.catalog.as_ref()).await?;
            info!(version = %model.version, servable_items = servable, "servable songs refreshed");
        }
        *self.neighbours.lock().expect("cache lock") = NeighbourCache::default();
        *self.popular.lock().expect("popular lock") = None;
        *self.stores_seen.lock().expect("stores lock") = token;
        Ok(true)
    }

    /// The lock of `user`'s session.
    fn lock(&self, user: &str) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        &self.locks[h.finish() as usize % self.locks.len()]
    }

    /// Session values of one kind for several users, in order.
    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        kind: Kind,
        users: &[&str],
    ) -> Result<Vec<Option<T>>, ServeError> {
        let keys: Vec<String> = users.iter().map(|u| kind.key(u)).collect();
        let values = self.stores.catalog.sessions(&keys).await?;
        Ok(values.into_iter().map(decode).collect())
    }

    /// Session values of several kinds for one user, in one read.
    async fn read_user(
        &self,
        user: &str,
        kinds: &[Kind],
    ) -> Result<Vec<Option<String>>, ServeError> {
        let keys: Vec<String> = kinds.iter().map(|k| k.key(user)).collect();
        Ok(self.stores.catalog.sessions(&keys).await?)
    }

    /// The user's recent plays and short-term vector (one read).
    async fn vector_state(
        &self,
        user: &str,
    ) -> Result<(Option<Plays>, Option<ShortTerm>), ServeError> {
        let mut got = self.read_user(user, &[Kind::Plays, Kind::Short]).await?;
        let short = decode(got.pop().flatten());
        let plays = decode(got.pop().flatten());
        Ok((plays, short))
    }

    /// 0.7·long-term + 0.3·short-term (either alone when the other is missing); whether a
    /// long-term vector exists.
    async fn session_vector(
        &self,
        model: &Model,
        user: &str,
    ) -> Result<(Option<Vec<f32>>, bool), ServeError> {
        let (plays, short) = self.vector_state(user).await?;
        let long = long_term(model, user, plays.as_ref());
        let short = short_term(model, short.as_ref());
        let has_long = long.is_some();
        Ok((
            session_vector(
                long.as_ref().map(|(v, _)| v.as_slice()),
                short.as_deref(),
                LONG_WEIGHT,
            ),
            has_long,
        ))
    }

    /// Fails with NOT_FOUND unless the model or the catalog knows the user.
    async fn known_user(&self, user: &str) -> Result<(), ServeError> {
        if self.model().is_some_and(|m| m.user(user).is_some()) {
            return Ok(());
        }
        match self.stores.catalog.user(user).await? {
            Some(_) => Ok(()),
            None => Err(not_found("user_id", user)),
        }
    }

    async fn known_song(&self, field: &'static str, song: &str) -> Result<Song, ServeError> {
        self.stores
            .catalog
            .song(song)
            .await?
            .ok_or_else(|| not_found(field, song))
    }

    /// The most played songs of the last 7 days, `(id, plays_7d)`, re-read every
    /// `popularity_ttl`.
    async fn popular(&self) -> Result<Popular, ServeError> {
        if let Some((at, list)) = self.popular.lock().expect("popular lock").as_ref()
            && at.elapsed() < self.options.popularity_ttl
        {
            return Ok(list.clone());
        }
        let top = self.stores.catalog.top_songs(POPULAR).await?;
        let list = Arc::new(
            top.into_iter()
                .map(|s| (s.stats.id, s.stats.plays_7d))
                .collect::<Vec<_>>(),
        );
        *self.popular.lock().expect("popular lock") = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// `n` songs sampled ∝ ln(plays_7d + 2) from the top of the popularity list, skipping
    /// `excluded`.
    async fn popularity(
        &self,
        n: usize,
        excluded: &HashSet<String>,
    ) -> Result<Vec<(String, Pick)>, ServeError> {
        if n == 0 {
            return Ok(vec![]);
        }
        let popular = self.popular().await?;
        let pool = (n + 40).max(n * 3 / 2);
        let candidates: Vec<(String, i64)> = popular
            .iter()
            .filter(|(id, _)| !excluded.contains(id))
            .take(pool)
            .cloned()
            .collect();
        Ok(popularity_sample(&candidates, n, &mut rand::rng())
            .into_iter()
            .map(|id| (id, Pick::new(Source::Popularity, 0.0)))
            .collect())
    }

    /// The seed's personalised feed batch: a random subset of the top ALS pool (quota `n` with a
    /// long-term vector, `n / 2` with only a short-term one), filled up by popularity.
    async fn personalised(
        &self,
        user: &str,
        n: usize,
        excluded: &HashSet<String>,
    ) -> Result<Vec<(String, Pick)>, ServeError> {
        let mut picks = Vec::with_capacity(n);
        if let Some(model) = self.model() {
            let (vector, has_long) = self.session_vector(&model, user).await?;
            if let Some(v) = vector {
                let quota = if has_long { n } else { n / 2 };
                let pool = if quota <= 50 {
                    quota * 3
                } else {
                    quota * 6 / 5
                }
                .max(20);
                let top = als_candidates(model.clone(), v, pool, excluded).await?;
                picks.extend(
                    random_subset(&top, quota, &mut rand::rng())
                        .into_iter()
                        .map(|(i, s)| {
                            (
                                model.item_ids[i as usize].clone(),
                                Pick::new(Source::Als, s),
                            )
                        }),
                );
            }
        }
        let mut excluded = excluded.clone();
        excluded.extend(picks.iter().map(|(id, _)| id.clone()));
        let fill = self.popularity(n - picks.len(), &excluded).await?;
        picks.extend(fill);
        Ok(picks)
    }

    /// The song's nearest lyrics (cosine), best first, without the song itself; empty when the
    /// vector store has no vector for it.
    async fn neighbours(&self, song: &str) -> Result<Arc<Vec<(String, f32)>>, ServeError> {
        if let Some(hit) = self.neighbours.lock().expect("cache lock").map.get(song) {
            return Ok(hit.clone());
        }
        let Some(v) = self.stores.vectors.vector(song).await? else {
            return Ok(Arc::new(vec![]));
        };
        let hits = self
            .stores
            .vectors
            .search(&v, NEIGHBOURS, &[song.to_string()])
            .await?;
        let list = Arc::new(
            hits.into_iter()
                .map(|h| (h.payload.track_id, h.score))
                .collect::<Vec<_>>(),
        );
        let mut cache = self.neighbours.lock().expect("cache lock");
        if cache.map.insert(song.to_string(), list.clone()).is_none() {
            cache.order.push_back(song.to_string());
        }
        while cache.order.len() > self.options.neighbour_cache {
            if let Some(old) = cache.order.pop_front() {
                cache.map.remove(&old);
            }
        }
        Ok(list)
    }

    /// The seed's hybrid: ALS neighbours of the user's session vector and lyrics neighbours of
    /// the current song, each min-max normalised, fused with the configured weights.
    async fn hybrid(
        &self,
        user: &str,
        current: &str,
        n: usize,
        excluded: &HashSet<String>,
    ) -> Result<Vec<(String, Pick)>, ServeError> {
        let pool = if n <= 50 { n * 3 } else { n * 3 / 2 }.max(15);
        let mut als = Vec::new();
        if let Some(model) = self.model()
            && let (Some(v), _) = self.session_vector(&model, user).await?
        {
            als = als_candidates(model.clone(), v, pool, excluded)
                .await?
                .into_iter()
                .map(|(i, s)| (model.item_ids[i as usize].clone(), s))
                .collect();
        }
        let lyrics: Vec<(String, f32)> = self
            .neighbours(current)
            .await?
            .iter()
            .filter(|(id, _)| !excluded.contains(id))
            .take(pool)
            .cloned()
            .collect();
        Ok(fuse(&als, &lyrics, self.options.weights, n)
            .into_iter()
            .map(|f| {
                let pick = Pick::fused(&f);
                (f.id, pick)
            })
            .collect())
    }

    /// Catalog songs for `picks`, in order (songs the catalog lost meanwhile are dropped).
    async fn hydrate(&self, picks: Vec<(String, Pick)>) -> Result<Vec<(Song, Pick)>, ServeError> {
        let ids: Vec<String> = picks.iter().map(|(id, _)| id.clone()).collect();
        let mut songs: HashMap<String, Song> = self
            .stores
            .catalog
            .songs(&ids)
            .await?
            .into_iter()
            .map(|s| (s.stats.id.clone(), s))
            .collect();
        Ok(picks
            .into_iter()
            .filter_map(|(id, pick)| songs.remove(&id).map(|s| (s, pick)))
            .collect())
    }

    /// One page of a session queue: refills it with `generate` when it runs low (never a song
    /// the session served), pops `limit` and stores the queue again.
    async fn page<F, Fut>(
        &self,
        kind: Kind,
        policy: &QueuePolicy,
        user: &str,
        limit: usize,
        refresh: bool,
        generate: F,
    ) -> Result<Listing, ServeError>
    where
        F: FnOnce(usize, HashSet<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(String, Pick)>, ServeError>>,
    {
        let (picks, has_more) = {
            let _session = self.lock(user).lock().await;
            let mut queue: Queue = if refresh {
                Queue::default()
            } else {
                self.read(kind, &[user])
                    .await?
                    .pop()
                    .flatten()
                    .unwrap_or_default()
            };
            let want = queue.wanted(policy);
            let mut writes = Vec::with_capacity(2);
            if want > 0 {
                // The generated set is read and written only here (a refill every few pages).
                if !refresh
                    && let Some(seen) = self.read(kind.seen(), &[user]).await?.pop().flatten()
                {
                    queue.set_seen(seen);
                }
                let picks = generate(want, queue.seen().clone()).await?;
                queue.push(picks, policy);
                writes.push(encode(kind.seen(), user, queue.seen()));
            }
            let page = queue.pop(limit, policy);
            writes.push(encode(kind, user, &queue));
            self.stores.catalog.put_sessions(&writes).await?;
            page
        };
        Ok(Listing {
            songs: self.hydrate(picks).await?,
            has_more,
        })
    }

    /// Songs `user` played: in the model's data, and as the server saw since.
    async fn heard(&self, user: &str) -> Result<HashSet<String>, ServeError> {
        let plays: Option<Plays> = self.read(Kind::Plays, &[user]).await?.pop().flatten();
        let mut heard: HashSet<String> = plays
            .map(|p| p.weights.into_keys().collect())
            .unwrap_or_default();
        if let Some(model) = self.model() {
            heard.extend(
                model
                    .heard(user)
                    .iter()
                    .map(|&i| model.item_ids[i as usize].clone()),
            );
        }
        Ok(heard)
    }

    pub async fn home_feed(
        &self,
        user: &str,
        limit: u32,
        refresh: bool,
        exclude_heard: bool,
    ) -> Result<Listing, ServeError> {
        let user = required("user_id", user)?;
        let limit = self::limit("limit", limit, 32, FEED.cap)?;
        self.known_user(user).await?;
        let heard = if exclude_heard {
            self.heard(user).await?
        } else {
            HashSet::new()
        };
        self.page(
            Kind::Feed,
            &FEED,
            user,
            limit,
            refresh,
            |n, mut seen| async move {
                seen.extend(heard);
                self.personalised(user, n, &seen).await
            },
        )
        .await
    }

    pub async fn next_songs(
        &self,
        user: &str,
        current: &str,
        limit: u32,
        refresh: bool,
    ) -> Result<Listing, ServeError> {
        let user = required("user_id", user)?;
        let current = required("current_song_id", current)?;
        let limit = self::limit("limit", limit, 32, NEXT_SONGS.cap)?;
        self.known_user(user).await?;
        self.known_song("current_song_id", current).await?;
        self.page(
            Kind::Next,
            &NEXT_SONGS,
            user,
            limit,
            refresh,
            |n, mut seen| async move {
                seen.insert(current.to_string());
                let picks = self.hybrid(user, current, n, &seen).await?;
                if picks.is_empty() {
                    self.popularity(n, &seen).await
                } else {
                    Ok(picks)
                }
            },
        )
        .await
    }

    /// short ← decay·short + (1 − decay)·song factor; returns the new vector and its model
    /// version (none when the model has no factor for the song). The play also counts for
    /// fold-in and `exclude_heard`.
    pub async fn record_play(
        &self,
        user: &str,
        song: &str,
        decay: Option<f32>,
    ) -> Result<Option<(Vec<f32>, String)>, ServeError> {
        let user = required("user_id", user)?;
        let song = required("song_id", song)?;
        let decay = decay.unwrap_or(crate::vectors::DEFAULT_DECAY);
        if !(0.0..1.0).contains(&decay) {
            return Err(invalid("decay", format!("{decay} is not in [0, 1)")));
        }
        self.known_user(user).await?;
        self.known_song("song_id", song).await?;
        let model = self.model();
        let _session = self.lock(user).lock().await;
        let (plays, short) = self.vector_state(user).await?;
        let mut plays = plays.unwrap_or_default();
        add_play(model.as_deref(), &mut plays, user, song, 1.0);
        let mut writes = vec![encode(Kind::Plays, user, &plays)];
        let updated = model.as_ref().and_then(|m| {
            let item = m.item(song)?;
            let old = short_term(m, short.as_ref());
            let vector = record_play(old.as_deref(), m.item_factor(item), decay);
            Some((vector, m.version.clone()))
        });
        if let Some((vector, version)) = &updated {
            let short = ShortTerm {
                version: version.clone(),
                vector: vector.clone(),
            };
            writes.push(encode(Kind::Short, user, &short));
        }
        self.stores.catalog.put_sessions(&writes).await?;
        Ok(updated)
    }

    /// Counts a play of the user (fold-in and `exclude_heard`).
    async fn played(&self, user: &str, song: &str, weight: f32) -> Result<(), ServeError> {
        let model = self.model();
        let _session = self.lock(user).lock().await;
        let mut plays: Plays = self
            .read(Kind::Plays, &[user])
            .await?
            .pop()
            .flatten()
            .unwrap_or_default();
        add_play(model.as_deref(), &mut plays, user, song, weight);
        self.stores
            .catalog
            .put_sessions(&[encode(Kind::Plays, user, &plays)])
            .await?;
        Ok(())
    }

    pub async fn similar_songs(
        &self,
        song: &str,
        limit: u32,
    ) -> Result<Vec<(Song, Pick)>, ServeError> {
        let song = required("song_id", song)?;
        let limit = self::limit("limit", limit, 10, NEIGHBOURS)?;
        self.known_song("song_id", song).await?;
        let picks = self
            .neighbours(song)
            .await?
            .iter()
            .take(limit)
            .map(|(id, s)| (id.clone(), Pick::new(Source::Lyrics, *s)))
            .collect();
        self.hydrate(picks).await
    }

    pub async fn search(
        &self,
        query: &str,
        limit: u32,
        skip: u32,
    ) -> Result<recsys_catalog::Page<Song>, ServeError> {
        let query = required("query", query)?;
        let limit = self::limit("limit", limit, 20, 100)?;
        self.stores
            .catalog
            .search_songs(query, limit, skip as usize)
            .await
            .map_err(|e| match e {
                recsys_catalog::CatalogError::Invalid(reason) => invalid("query", reason),
                other => other.into(),
            })
    }

    /// The song, its ALS factor (when asked for) and whether it has a lyrics vector.
    pub async fn song(
        &self,
        song: &str,
        with_factor: bool,
    ) -> Result<(Song, Option<Vec<f32>>, bool), ServeError> {
        let id = required("song_id", song)?;
        let song = self.known_song("song_id", id).await?;
        let factor = with_factor
            .then(|| self.model())
            .flatten()
            .and_then(|m| m.item(id).map(|i| m.item_factor(i).to_vec()));
        let has_vector = self.stores.vectors.vector(id).await?.is_some();
        Ok((song, factor, has_vector))
    }

    pub async fn user(&self, user: &str) -> Result<UserView, ServeError> {
        let id = required("user_id", user)?;
        let model = self.model();
        let stored = self.stores.catalog.user(id).await?;
        let user = match stored {
            Some(u) => u,
            None if model.as_ref().is_some_and(|m| m.user(id).is_some()) => new_user(id, None),
            None => return Err(not_found("user_id", id)),
        };
        let (plays, short) = self.vector_state(id).await?;
        Ok(view(user, model.as_deref(), plays.as_ref(), short.as_ref()))
    }

    pub async fn list_users(&self, limit: u32, after: &str) -> Result<Vec<UserView>, ServeError> {
        let limit = self::limit("limit", limit, 5, 1000)?;
        let after = Some(after.trim()).filter(|a| !a.is_empty());
        let users = self.stores.catalog.list_users(after, limit).await?;
        let model = self.model();
        let ids: Vec<&str> = users.iter().map(|u| u.stats.id.as_str()).collect();
        let plays: Vec<Option<Plays>> = self.read(Kind::Plays, &ids).await?;
        let short: Vec<Option<ShortTerm>> = self.read(Kind::Short, &ids).await?;
        Ok(users
            .into_iter()
            .zip(plays.iter().zip(&short))
            .map(|(u, (p, s))| view(u, model.as_deref(), p.as_ref(), s.as_ref()))
            .collect())
    }

    pub async fn create_user(&self, name: &str) -> Result<UserView, ServeError> {
        let name = required("name", name)?;
        if name.chars().count() > 200 {
            return Err(invalid("name", "longer than 200 characters"));
        }
        let user = new_user(&uuid::Uuid::new_v4().to_string(), Some(name.to_string()));
        self.stores
            .catalog
            .upsert_users(std::slice::from_ref(&user))
            .await?;
        Ok(view(user, self.model().as_deref(), None, None))
    }

    /// Removes the user from the catalog and forgets their sessions (their logged events stay in
    /// the event log, as history).
    pub async fn delete_user(&self, user: &str) -> Result<(), ServeError> {
        let id = required("user_id", user)?;
        if self.stores.catalog.delete_users(&[id.to_string()]).await? == 0 {
            return Err(not_found("user_id", id));
        }
        let keys: Vec<String> = Kind::ALL.iter().map(|k| k.key(id)).collect();
        self.stores.catalog.delete_sessions(&keys).await?;
        Ok(())
    }

    /// Logs the event through the event log (as the ingest service does); a listen or complete
    /// counts as a play of the user.
    pub async fn log_event(&self, message: ListenEvent) -> Result<(), tonic::Status> {
        let event = recsys_ingest::server::log_one(self.stores.log.as_ref(), message).await?;
        let weight = match event.action {
            Action::Complete => 1.0,
            Action::Listen => 0.5,
            Action::Skip => 0.0,
        };
        if weight > 0.0 {
            self.played(&event.user_id, &event.track_id, weight)
                .await
                .map_err(tonic::Status::from)?;
        }
        Ok(())
    }
}

/// What `GetUser` shows of `user`, given their session values.
fn view(
    user: User,
    model: Option<&Model>,
    plays: Option<&Plays>,
    short: Option<&ShortTerm>,
) -> UserView {
    let (long, short) = match model {
        Some(m) => (long_term(m, &user.stats.id, plays), short_term(m, short)),
        None => (None, None),
    };
    UserView {
        user,
        long_term: long,
        short_term: short,
        model_version: model.map(|m| m.version.clone()).unwrap_or_default(),
    }
}

/// The model's `pool` best servable items for `v` outside `excluded`, scanned on the blocking
/// pool (a pass over every item factor).
async fn als_candidates(
    model: Arc<Model>,
    v: Vec<f32>,
    pool: usize,
    excluded: &HashSet<String>,
) -> Result<Vec<(u32, f32)>, ServeError> {
    let skip: HashSet<u32> = excluded.iter().filter_map(|id| model.item(id)).collect();
    tokio::task::spawn_blocking(move || model.candidates(&v, pool, |i| skip.contains(&i)))
        .await
        .map_err(|e| ServeError::Task(e.to_string()))
}

fn new_user(id: &str, name: Option<String>) -> User {
    let now_ms = recsys_catalog::now_ms();
    User {
        stats: UserStats {
            id: id.to_string(),
            plays: 0,
            distinct_tracks: 0,
            distinct_artists: 0,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            active_days: 0,
        },
        name,
        latent: None,
    }
}
