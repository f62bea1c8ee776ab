//! The catalog of songs and users that lyrics enrichment, clean & sync and serving read and write.
//!
//! It depends on `recsys-core` only: it must not depend on the batch jobs (it reads the ETL's
//! Parquet output through the lake), on embedding, the vector store or serving.
//!
//! One trait, [`Catalog`], two implementations with the same semantics:
//! - [`MongoCatalog`]: MongoDB (database `music_recsys`, collections `songs`, `users`,
//!   `job_metadata`), bulk upserts by `_id`, indexes for every query below;
//! - [`EmbeddedCatalog`]: a crash-safe [redb](https://www.redb.org) file in the data folder, with
//!   its own secondary indexes (search terms, top by `plays_7d`, lyrics status).
//!
//! Text search is the same algorithm on both ([`text`]): songs whose title and artist contain
//! every word of the query, ranked by where the words matched, then by plays.
//!
//! Times are UTC milliseconds since the epoch (what a BSON date holds).

pub mod embedded;
pub mod jobs;
pub mod load;
pub mod mongo;
pub mod text;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedCatalog;
pub use mongo::{MongoCatalog, MongoOptions};

/// A song's play statistics and names, as the ETL computes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SongStats {
    /// Track id: the MusicBrainz id, or the stable derived id (see `recsys_core::ids`).
    pub id: String,
    pub track_name: String,
    pub artist_name: String,
    pub artist_id: String,
    /// Plays over the whole history.
    pub plays: i64,
    /// Plays in the last 7 days of the data.
    pub plays_7d: i64,
    /// Distinct users who played it.
    pub listeners: i64,
    pub first_played_ms: Option<i64>,
    pub last_played_ms: Option<i64>,
    /// Seconds, when some event reported it.
    pub duration_s: Option<f64>,
}

/// A song's play counts, as the orchestrator's counts job sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayCounts {
    pub id: String,
    /// Plays over the whole history.
    pub plays: i64,
    /// Plays in the 7-day window.
    pub plays_7d: i64,
}

/// Where lyrics enrichment got with a song.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LyricsStatus {
    Found,
    Missing,
    Instrumental,
    /// The source failed for good (retries exhausted): fetched again by the next run.
    Error,
}

impl LyricsStatus {
    pub const ALL: [LyricsStatus; 4] = [
        LyricsStatus::Found,
        LyricsStatus::Missing,
        LyricsStatus::Instrumental,
        LyricsStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LyricsStatus::Found => "found",
            LyricsStatus::Missing => "missing",
            LyricsStatus::Instrumental => "instrumental",
            LyricsStatus::Error => "error",
        }
    }
}

impl fmt::Display for LyricsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LyricsStatus {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self, CatalogError> {
        LyricsStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                CatalogError::Invalid(format!(
                    "unknown lyrics status `{s}` (expected found, missing, instrumental or error)"
                ))
            })
    }
}

/// A song's lyrics and how they were obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lyrics {
    pub status: LyricsStatus,
    pub plain: Option<String>,
    pub synced: Option<String>,
}

/// A catalog song: ETL statistics plus lyrics once enrichment has seen it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Song {
    pub stats: SongStats,
    pub lyrics: Option<Lyrics>,
}

/// A user's listening statistics, as the ETL computes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserStats {
    pub id: String,
    pub plays: i64,
    pub distinct_tracks: i64,
    pub distinct_artists: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Distinct UTC days with a play.
    pub active_days: i64,
}

/// A user's ALS latent vector and the model version it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentVector {
    pub model_version: String,
    pub vector: Vec<f32>,
}

/// A catalog user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub stats: UserStats,
    /// Display name (users created by the app); `None` on upsert keeps the stored one.
    #[serde(default)]
    pub name: Option<String>,
    /// `None` on upsert keeps the stored vector (a model may not exist yet).
    pub latent: Option<LatentVector>,
}

/// One page of a listing, and whether more follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// Counts for `recsys catalog stats`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CatalogStats {
    pub songs: u64,
    pub users: u64,
    pub users_with_vector: u64,
    /// Songs lyrics enrichment has not seen yet.
    pub lyrics_pending: u64,
    /// Songs per lyrics status, in [`LyricsStatus::ALL`] order.
    pub lyrics: Vec<(LyricsStatus, u64)>,
}

impl CatalogStats {
    /// Songs whose lyrics status is `status`.
    pub fn with_lyrics(&self, status: LyricsStatus) -> u64 {
        self.lyrics
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("embedded catalog {path}: {source}")]
    Embedded {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error(
        "embedded catalog {path} is open in another process (`recsys serve` or `recsys \
         orchestrate`?): the embedded stores allow one process at a time; serve and run the jobs \
         in one (`recsys orchestrate --serve`), or share a MongoDB catalog (--mongo)"
    )]
    InUse { path: String },
    /// `uri` never holds credentials.
    #[error("MongoDB {uri}: {source}")]
    Mongo {
        uri: String,
        #[source]
        source: Box<mongodb::error::Error>,
    },
    #[error("catalog {catalog}: document `{id}`: {reason}")]
    Document {
        catalog: String,
        id: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] recsys_core::StoreError),
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("load stopped: {0}")]
    Stopped(String),
}

/// The catalog every later step uses. Implementations keep the same semantics; the behavioural
/// suite in `tests/suite.rs` runs against each.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Where the catalog is, for messages (never with credentials).
    fn describe(&self) -> String;

    /// Inserts or updates songs by id: statistics and names are replaced, lyrics are kept.
    async fn upsert_songs(&self, songs: &[SongStats]) -> Result<(), CatalogError>;

    /// Inserts or updates users by id: statistics are replaced; the latent vector only when
    /// given.
    async fn upsert_users(&self, users: &[User]) -> Result<(), CatalogError>;

    async fn song(&self, id: &str) -> Result<Option<Song>, CatalogError>;

    async fn user(&self, id: &str) -> Result<Option<User>, CatalogError>;

    /// The songs of `ids` that exist, in the order asked (one round trip, not one per id),
    /// without their lyrics' texts (`plain` and `synced` are `None`, the status is kept): what
    /// listings show. [`Catalog::song`] has the texts.
    async fn songs(&self, ids: &[String]) -> Result<Vec<Song>, CatalogError>;

    /// The users of `ids` that exist, in the order asked (one round trip, not one per id).
    async fn users(&self, ids: &[String]) -> Result<Vec<User>, CatalogError>;

    /// Users by id, after id `after`.
    async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, CatalogError>;

    /// Songs matching every word of `query` (see [`text`]), best first, without their lyrics'
    /// texts (as [`Catalog::songs`]).
    async fn search_songs(
        &self,
        query: &str,
        limit: usize,
        skip: usize,
    ) -> Result<Page<Song>, CatalogError>;

    /// The `limit` songs with the most plays in the last 7 days (ties: most plays, then id),
    /// without their lyrics' texts (as [`Catalog::songs`]).
    async fn top_songs(&self, limit: usize) -> Result<Vec<Song>, CatalogError>;

    /// Records songs' lyrics `(id, lyrics)`; returns how many of the songs exist (unknown ids
    /// are skipped).
    async fn set_lyrics(&self, updates: &[(String, Lyrics)]) -> Result<u64, CatalogError>;

    /// Removes songs by id with every index entry; returns how many existed.
    async fn delete_songs(&self, ids: &[String]) -> Result<u64, CatalogError>;

    /// Removes users by id; returns how many existed.
    async fn delete_users(&self, ids: &[String]) -> Result<u64, CatalogError>;

    /// Songs with lyrics status `status` (`None`: not looked up yet), by id, after id `after`.
    async fn songs_by_lyrics_status(
        &self,
        status: Option<LyricsStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Song>, CatalogError>;

    async fn stats(&self) -> Result<CatalogStats, CatalogError>;

    /// Serving sessions (queues, short-term vectors, recent plays: what Redis held in the seed), as
    /// text (JSON): the live values of `keys`, in order (`None`: absent or expired).
    async fn sessions(&self, keys: &[String]) -> Result<Vec<Option<String>>, CatalogError>;

    /// Writes session values `(key, value, ttl)`: each expires `ttl` after this write. Written
    /// for speed: the embedded catalog syncs them to disk with the first write a second or more
    /// after its last sync, and when it closes (a crash loses the writes since the last sync;
    /// a clean stop loses none).
    async fn put_sessions(
        &self,
        entries: &[(String, String, Duration)],
    ) -> Result<(), CatalogError>;

    /// Forgets sessions by key.
    async fn delete_sessions(&self, keys: &[String]) -> Result<(), CatalogError>;

    /// Sets the play counts of songs (values, never increments: a repeated call changes
    /// nothing). A song missing from the catalog is created, with only its id and counts, when
    /// `create`, else left out. Returns how many songs were set.
    async fn set_play_counts(
        &self,
        counts: &[PlayCounts],
        create: bool,
    ) -> Result<u64, CatalogError>;

    /// A job's saved position (e.g. how far a load got), if any.
    async fn checkpoint(&self, key: &str) -> Result<Option<String>, CatalogError>;

    /// Saves (or, with `None`, clears) a job's position.
    async fn set_checkpoint(&self, key: &str, value: Option<&str>) -> Result<(), CatalogError>;

    /// Sets `key` to `new` (`None`: removes it) only if its value is `expected` now (`None`:
    /// absent); whether it did. Atomic, also between processes sharing the catalog: the job
    /// leases ([`jobs::acquire_lease`]) rest on it.
    async fn swap_checkpoint(
        &self,
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool, CatalogError>;
}

/// Every song with lyrics status `status` (`None`: not looked up yet) in id order, fetched
/// `page` at a time. Pages follow the last id seen, so a song whose status changes while the
/// stream runs is not visited twice.
pub fn songs_with_lyrics_status(
    catalog: &dyn Catalog,
    status: Option<LyricsStatus>,
    page: usize,
) -> impl futures::Stream<Item = Result<Song, CatalogError>> + '_ {
    use futures::{StreamExt, stream};
    let page = page.max(1);
    stream::unfold(Some(None::<String>), move |cursor| async move {
        let after = cursor?;
        match catalog
            .songs_by_lyrics_status(status, after.as_deref(), page)
            .await
        {
            Ok(songs) => {
                let next = (songs.len() == page)
                    .then(|| songs.last().map(|s| Some(s.stats.id.clone())))
                    .flatten();
                Some((stream::iter(songs.into_iter().map(Ok)).left_stream(), next))
            }
            Err(e) => Some((stream::iter(vec![Err(e)]).right_stream(), None)),
        }
    })
    .flatten()
}

/// Opens the catalog the configuration selects: MongoDB when `mongo` is set, else the embedded
/// store at `path`.
pub async fn open(
    mongo: Option<&MongoOptions>,
    path: &std::path::Path,
) -> Result<Box<dyn Catalog>, CatalogError> {
    Ok(match mongo {
        Some(options) => Box::new(MongoCatalog::connect(options).await?),
        None => Box::new(EmbeddedCatalog::open(path).await?),
    })
}

/// Milliseconds since the epoch, by this machine's clock.
pub fn now_ms() -> i64 {
    recsys_core::time::now_micros() / 1000
}

/// Milliseconds from microseconds, rounding down (also before 1970).
pub fn micros_to_millis(us: i64) -> i64 {
    us.div_euclid(1000)
}
