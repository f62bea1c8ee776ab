//! The MongoDB catalog (database `music_recsys` by default).
//!
//! `songs` documents keep the seed's field names with real types (`plays_cumulative`,
//! `plays_7d` and `listeners` are integers, `duration` a double, times BSON dates) plus
//! `terms`, the words search matches ([`crate::text`]; a multikey index, so search behaves the
//! same on MongoDB, on wire-compatible servers without `$text`, and embedded). Upserts are
//! unordered `update` commands of up to [`MongoOptions::batch`] statements, each `$set` by `_id`
//! (lyrics fields are never touched by them), retried with backoff on network errors: they
//! are idempotent.

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use crate::text::{cap_candidates, query_words, rank, song_terms};
use crate::{
    Catalog, CatalogError, CatalogStats, LatentVector, Lyrics, LyricsStatus, Page, PlayCounts,
    Song, SongStats, User, UserStats,
};

/// Connection settings (every one also a flag and an environment variable of the CLI).
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// `mongodb://[user:password@]host[:port][,…]/[?options]`.
    pub uri: String,
    pub database: String,
    /// Connect and server-selection timeout.
    pub timeout: Duration,
    /// Attempts per write batch on network errors (the driver also retries once itself).
    pub retries: u32,
    /// Statements per bulk `update` command.
    pub batch: usize,
}

impl MongoOptions {
    pub fn new(uri: &str) -> MongoOptions {
        MongoOptions {
            uri: uri.to_string(),
            database: "music_recsys".to_string(),
            timeout: Duration::from_secs(10),
            retries: 3,
            batch: 1000,
        }
    }
}

/// `uri` without credentials: `mongodb://user:pw@host/` → `mongodb://***@host/`.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let hosts_end = rest.find('/').unwrap_or(rest.len());
    match rest[..hosts_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => uri.to_string(),
    }
}

pub struct MongoCatalog {
    db: Database,
    songs: Collection<Document>,
    users: Collection<Document>,
    meta: Collection<Document>,
    sessions: Collection<Document>,
    shown: String,
    options: MongoOptions,
}

impl MongoCatalog {
    /// Connects, checks the server answers, and creates the indexes (idempotent).
    pub async fn connect(options: &MongoOptions) -> Result<MongoCatalog, CatalogError> {
        let shown = format!("{} (database {})", redact(&options.uri), options.database);
        let err = |e: mongodb::error::Error| CatalogError::Mongo {
            uri: shown.clone(),
            source: Box::new(e),
        };
        let mut client_options = ClientOptions::parse(&options.uri).await.map_err(err)?;
        client_options.app_name = Some(format!("recsys {}", env!("CARGO_PKG_VERSION")));
        client_options.connect_timeout = Some(options.timeout);
        client_options.server_selection_timeout = Some(options.timeout);
        let client = Client::with_options(client_options).map_err(err)?;
        let db = client.database(&options.database);
        db.run_command(doc! { "ping": 1 }).await.map_err(err)?;
        let catalog = MongoCatalog {
            songs: db.collection("songs"),
            users: db.collection("users"),
            meta: db.collection("job_metadata"),
            sessions: db.collection("sessions"),
            db,
            shown: shown.clone(),
            options: options.clone(),
        };
        let index = |name: &str, keys: Document| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        catalog
            .songs
            .create_indexes([
                index("SongTermsIndex", doc! { "terms": 1 }),
                index(
                    "Plays7dDescIndex",
                    doc! { "plays_7d": -1, "plays_cumulative": -1, "_id": 1 },
                ),
                index(
                    "PlaysCumulativeDescIndex",
                    doc! { "plays_cumulative": -1, "_id": 1 },
                ),
                index("LyricsStatusIndex", doc! { "lyrics_status": 1, "_id": 1 }),
            ])
            .await
            .map_err(err)?;
        // Expired sessions go by MongoDB's TTL monitor (reads also skip them: it runs once a
        // minute).
        let ttl = IndexOptions::builder()
            .name("SessionTtlIndex".to_string())
            .expire_after(Duration::ZERO)
            .build();
        catalog
            .sessions
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "expires_at": 1 })
                    .options(ttl)
                    .build(),
            )
            .await
            .map_err(err)?;
        Ok(catalog)
    }

    fn err(&self, e: mongodb::error::Error) -> CatalogError {
        CatalogError::Mongo {
            uri: self.shown.clone(),
            source: Box::new(e),
        }
    }

    /// Deletes documents of `collection` by id, a batch per command; returns how many existed.
    async fn delete(&self, collection: &str, ids: &[String]) -> Result<u64, CatalogError> {
        let mut deleted = 0;
        for chunk in ids.chunks(self.options.batch.max(1)) {
            let command = doc! {
                "delete": collection,
                "deletes": [{ "q": { "_id": { "$in": chunk.to_vec() } }, "limit": 0 }],
                "ordered": false,
            };
            deleted += count_field(&self.write_command(command).await?, "n");
        }
        Ok(deleted)
    }

    /// Runs a write command, retrying network failures with exponential backoff.
    async fn write_command(&self, command: Document) -> Result<Document, CatalogError> {
        let mut attempt = 0;
        loop {
            match self.db.run_command(command.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(e) if attempt + 1 < self.options.retries && transient(&e) => {
                    attempt += 1;
                    let wait = Duration::from_millis(200 << attempt.min(6));
                    tracing::warn!(error = %e, attempt, ?wait, "catalog: retrying a write");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    /// Runs unordered updates `(_id, update)` on `collection` in batches (inserting missing
    /// documents when `upsert`); returns how many documents matched or were inserted.
    async fn update(
        &self,
        collection: &str,
        updates: Vec<(String, Document)>,
        upsert: bool,
    ) -> Result<u64, CatalogError> {
        let mut matched = 0;
        for chunk in updates.chunks(self.options.batch.max(1)) {
            let statements: Vec<Document> = chunk
                .iter()
                .map(|(id, u)| doc! { "q": { "_id": id }, "u": u.clone(), "upsert": upsert })
                .collect();
            let command = doc! { "update": collection, "updates": statements, "ordered": false };
            let reply = self.write_command(command).await?;
            if let Ok(errors) = reply.get_array("writeErrors")
                && let Some(Bson::Document(first)) = errors.first()
            {
                let index = first.get_i32("index").unwrap_or(0).max(0) as usize;
                return Err(CatalogError::Document {
                    catalog: self.shown.clone(),
                    id: chunk.get(index).map(|c| c.0.clone()).unwrap_or_default(),
                    reason: format!(
                        "{} of {} writes failed, first: {}",
                        errors.len(),
                        chunk.len(),
                        first.get_str("errmsg").unwrap_or("no message")
                    ),
                });
            }
            matched += count_field(&reply, "n");
        }
        Ok(matched)
    }

    /// Songs matching `filter`; without their lyrics' texts and search terms unless `texts`
    /// (listings show neither, and they are most of a document's bytes).
    async fn find_songs(
        &self,
        filter: Document,
        sort: Document,
        limit: usize,
        texts: bool,
    ) -> Result<Vec<Song>, CatalogError> {
        let projection = (!texts).then(|| {
            doc! { "terms": 0, "lrclib_plain_lyrics": 0, "lrclib_synced_lyrics": 0 }
        });
        let docs = self
            .find(&self.songs, filter, sort, limit, projection)
            .await?;
        docs.iter().map(|d| self.song_from(d)).collect()
    }

    /// The documents of `collection` matching `filter`, in `sort` order, at most `limit`, with
    /// the fields `projection` selects (all when `None`).
    async fn find(
        &self,
        collection: &Collection<Document>,
        filter: Document,
        sort: Document,
        limit: usize,
        projection: Option<Document>,
    ) -> Result<Vec<Document>, CatalogError> {
        let mut find = collection
            .find(filter)
            .sort(sort)
            .limit(limit.min(i64::MAX as usize) as i64);
        if let Some(projection) = projection {
            find = find.projection(projection);
        }
        find.await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))
    }

    fn invalid(&self, doc: &Document, reason: String) -> CatalogError {
        CatalogError::Document {
            catalog: self.shown.clone(),
            id: doc.get_str("_id").unwrap_or("?").to_string(),
            reason,
        }
    }

    fn song_from(&self, d: &Document) -> Result<Song, CatalogError> {
        let stats = SongStats {
            id: text(d, "_id"),
            track_name: text(d, "track_name"),
            artist_name: text(d, "artist_name"),
            artist_id: text(d, "artist_id"),
            plays: int(d, "plays_cumulative"),
            plays_7d: int(d, "plays_7d"),
            listeners: int(d, "listeners"),
            first_played_ms: millis(d, "first_played"),
            last_played_ms: millis(d, "last_played"),
            duration_s: number(d, "duration"),
        };
        let lyrics = match d.get("lyrics_status") {
            None | Some(Bson::Null) => None,
            Some(status) => {
                let status = status
                    .as_str()
                    .ok_or_else(|| self.invalid(d, "lyrics_status is not a string".into()))?
                    .parse::<LyricsStatus>()
                    .map_err(|e| self.invalid(d, e.to_string()))?;
                Some(Lyrics {
                    status,
                    plain: optional_text(d, "lrclib_plain_lyrics"),
                    synced: optional_text(d, "lrclib_synced_lyrics"),
                })
            }
        };
        Ok(Song { stats, lyrics })
    }

    fn user_from(&self, d: &Document) -> Result<User, CatalogError> {
        let latent = match (d.get("latent_vector"), d.get_str("model_version")) {
            (Some(Bson::Array(values)), Ok(version)) => Some(LatentVector {
                model_version: version.to_string(),
                vector: values
                    .iter()
                    .map(|v| match v {
                        Bson::Double(x) => Ok(*x as f32),
                        Bson::Int32(x) => Ok(*x as f32),
                        Bson::Int64(x) => Ok(*x as f32),
                        other => Err(self.invalid(d, format!("latent_vector holds {other}"))),
                    })
                    .collect::<Result<_, _>>()?,
            }),
            _ => None,
        };
        Ok(User {
            stats: UserStats {
                id: text(d, "_id"),
                plays: int(d, "plays"),
                distinct_tracks: int(d, "distinct_tracks"),
                distinct_artists: int(d, "distinct_artists"),
                first_seen_ms: millis(d, "first_seen").unwrap_or_default(),
                last_seen_ms: millis(d, "last_seen").unwrap_or_default(),
                active_days: int(d, "active_days"),
            },
            name: optional_text(d, "username"),
            latent,
        })
    }

    async fn count(
        &self,
        collection: &Collection<Document>,
        filter: Document,
    ) -> Result<u64, CatalogError> {
        collection
            .count_documents(filter)
            .await
            .map_err(|e| self.err(e))
    }
}

fn transient(e: &mongodb::error::Error) -> bool {
    matches!(
        *e.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
    ) || e.contains_label("RetryableWriteError")
}

/// A count in a command reply (servers send Int32 or Int64).
fn count_field(reply: &Document, key: &str) -> u64 {
    match reply.get(key) {
        Some(Bson::Int32(n)) => (*n).max(0) as u64,
        Some(Bson::Int64(n)) => (*n).max(0) as u64,
        Some(Bson::Double(n)) => n.max(0.0) as u64,
        _ => 0,
    }
}

fn text(d: &Document, key: &str) -> String {
    d.get_str(key).unwrap_or_default().to_string()
}

fn optional_text(d: &Document, key: &str) -> Option<String> {
    d.get_str(key).ok().map(str::to_string)
}

/// A number field, whatever numeric BSON type the server chose for it.
fn number(d: &Document, key: &str) -> Option<f64> {
    match d.get(key)? {
        Bson::Double(x) => Some(*x),
        Bson::Int32(x) => Some(*x as f64),
        Bson::Int64(x) => Some(*x as f64),
        _ => None,
    }
}

fn int(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::Int32(x)) => *x as i64,
        Some(Bson::Int64(x)) => *x,
        Some(Bson::Double(x)) => *x as i64,
        _ => 0,
    }
}

fn millis(d: &Document, key: &str) -> Option<i64> {
    d.get_datetime(key).ok().map(|t| t.timestamp_millis())
}

fn date(ms: Option<i64>) -> Bson {
    ms.map_or(Bson::Null, |ms| Bson::DateTime(DateTime::from_millis(ms)))
}

fn song_update(s: &SongStats) -> Document {
    let mut set = doc! {
        "track_name": &s.track_name,
        "artist_name": &s.artist_name,
        "artist_id": &s.artist_id,
        "plays_cumulative": s.plays,
        "plays_7d": s.plays_7d,
        "listeners": s.listeners,
        "first_played": date(s.first_played_ms),
        "last_played": date(s.last_played_ms),
        "terms": song_terms(&s.track_name, &s.artist_name),
    };
    if let Some(d) = s.duration_s {
        set.insert("duration", d);
    }
    doc! { "$set": set }
}

fn user_update(u: &User) -> Document {
    let s = &u.stats;
    let mut set = doc! {
        "plays": s.plays,
        "distinct_tracks": s.distinct_tracks,
        "distinct_artists": s.distinct_artists,
        "first_seen": date(Some(s.first_seen_ms)),
        "last_seen": date(Some(s.last_seen_ms)),
        "active_days": s.active_days,
    };
    if let Some(latent) = &u.latent {
        set.insert(
            "latent_vector",
            latent
                .vector
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<f64>>(),
        );
        set.insert("model_version", &latent.model_version);
    }
    match &u.name {
        Some(name) => {
            set.insert("username", name);
            doc! { "$set": set }
        }
        None => doc! { "$set": set, "$setOnInsert": { "username": &s.id } },
    }
}

#[async_trait]
impl Catalog for MongoCatalog {
    fn describe(&self) -> String {
        format!("MongoDB {}", self.shown)
    }

    async fn upsert_songs(&self, songs: &[SongStats]) -> Result<(), CatalogError> {
        let updates = songs
            .iter()
            .map(|s| (s.id.clone(), song_update(s)))
            .collect();
        self.update("songs", updates, true).await?;
        Ok(())
    }

    async fn upsert_users(&self, users: &[User]) -> Result<(), CatalogError> {
        let updates = users
            .iter()
            .map(|u| (u.stats.id.clone(), user_update(u)))
            .collect();
        self.update("users", updates, true).await?;
        Ok(())
    }

    async fn song(&self, id: &str) -> Result<Option<Song>, CatalogError> {
        let found = self
            .songs
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| self.err(e))?;
        found.map(|d| self.song_from(&d)).transpose()
    }

    async fn user(&self, id: &str) -> Result<Option<User>, CatalogError> {
        let found = self
            .users
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| self.err(e))?;
        found.map(|d| self.user_from(&d)).transpose()
    }

    async fn songs(&self, ids: &[String]) -> Result<Vec<Song>, CatalogError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let found = self
            .find_songs(
                doc! { "_id": { "$in": ids } },
                doc! { "_id": 1 },
                ids.len(),
                false,
            )
            .await?;
        let mut by_id: std::collections::HashMap<String, Song> =
            found.into_iter().map(|s| (s.stats.id.clone(), s)).collect();
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    async fn users(&self, ids: &[String]) -> Result<Vec<User>, CatalogError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let found = self
            .find(
                &self.users,
                doc! { "_id": { "$in": ids } },
                doc! { "_id": 1 },
                ids.len(),
                None,
            )
            .await?;
        let mut by_id = std::collections::HashMap::new();
        for d in &found {
            let user = self.user_from(d)?;
            by_id.insert(user.stats.id.clone(), user);
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, CatalogError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let filter = match after {
            Some(a) => doc! { "_id": { "$gt": a } },
            None => doc! {},
        };
        let docs = self
            .find(&self.users, filter, doc! { "_id": 1 }, limit, None)
            .await?;
        docs.iter().map(|d| self.user_from(d)).collect()
    }

    async fn search_songs(
        &self,
        query: &str,
        limit: usize,
        skip: usize,
    ) -> Result<Page<Song>, CatalogError> {
        let words = query_words(query)?;
        let mut matching = self
            .find_songs(
                doc! { "terms": { "$all": &words } },
                doc! { "plays_cumulative": -1, "_id": 1 },
                crate::text::MAX_CANDIDATES,
                false,
            )
            .await?;
        cap_candidates(&mut matching);
        Ok(rank(&words, matching, limit, skip))
    }

    async fn top_songs(&self, limit: usize) -> Result<Vec<Song>, CatalogError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        self.find_songs(
            doc! {},
            doc! { "plays_7d": -1, "plays_cumulative": -1, "_id": 1 },
            limit,
            false,
        )
        .await
    }

    async fn set_lyrics(&self, updates: &[(String, Lyrics)]) -> Result<u64, CatalogError> {
        let text = |t: &Option<String>| t.clone().map_or(Bson::Null, Bson::String);
        let updates = updates
            .iter()
            .map(|(id, lyrics)| {
                let set = doc! { "$set": {
                    "lyrics_status": lyrics.status.as_str(),
                    "lrclib_plain_lyrics": text(&lyrics.plain),
                    "lrclib_synced_lyrics": text(&lyrics.synced),
                } };
                (id.clone(), set)
            })
            .collect();
        self.update("songs", updates, false).await
    }

    async fn delete_songs(&self, ids: &[String]) -> Result<u64, CatalogError> {
        self.delete("songs", ids).await
    }

    async fn delete_users(&self, ids: &[String]) -> Result<u64, CatalogError> {
        self.delete("users", ids).await
    }

    async fn songs_by_lyrics_status(
        &self,
        status: Option<LyricsStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Song>, CatalogError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let mut filter = doc! { "lyrics_status": status.map(|s| s.as_str()) };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        self.find_songs(filter, doc! { "_id": 1 }, limit, true)
            .await
    }

    async fn stats(&self) -> Result<CatalogStats, CatalogError> {
        let mut lyrics = Vec::new();
        for s in LyricsStatus::ALL {
            lyrics.push((
                s,
                self.count(&self.songs, doc! { "lyrics_status": s.as_str() })
                    .await?,
            ));
        }
        Ok(CatalogStats {
            songs: self.count(&self.songs, doc! {}).await?,
            users: self.count(&self.users, doc! {}).await?,
            users_with_vector: self
                .count(&self.users, doc! { "latent_vector": { "$type": "array" } })
                .await?,
            lyrics_pending: self
                .count(&self.songs, doc! { "lyrics_status": Bson::Null })
                .await?,
            lyrics,
        })
    }

    async fn sessions(&self, keys: &[String]) -> Result<Vec<Option<String>>, CatalogError> {
        let now = DateTime::from_millis(crate::now_ms());
        let mut found: std::collections::HashMap<String, String> = self
            .sessions
            .find(doc! { "_id": { "$in": keys.to_vec() }, "expires_at": { "$gt": now } })
            .await
            .map_err(|e| self.err(e))?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(|e| self.err(e))?
            .into_iter()
            .filter_map(|d| {
                let id = d.get_str("_id").ok()?.to_string();
                let value = d.get_str("value").ok()?.to_string();
                Some((id, value))
            })
            .collect();
        Ok(keys.iter().map(|k| found.remove(k)).collect())
    }

    async fn put_sessions(
        &self,
        entries: &[(String, String, Duration)],
    ) -> Result<(), CatalogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = crate::now_ms();
        let updates: Vec<Document> = entries
            .iter()
            .map(|(key, value, ttl)| {
                let expires = DateTime::from_millis(now + ttl.as_millis() as i64);
                doc! {
                    "q": { "_id": key },
                    "u": { "$set": { "value": value, "expires_at": expires } },
                    "upsert": true,
                }
            })
            .collect();
        let command = doc! { "update": "sessions", "updates": updates, "ordered": false };
        self.write_command(command).await?;
        Ok(())
    }

    async fn delete_sessions(&self, keys: &[String]) -> Result<(), CatalogError> {
        self.delete("sessions", keys).await?;
        Ok(())
    }

    async fn set_play_counts(
        &self,
        counts: &[PlayCounts],
        create: bool,
    ) -> Result<u64, CatalogError> {
        let updates = counts
            .iter()
            .map(|c| {
                let mut update = doc! {
                    "$set": { "plays_cumulative": c.plays, "plays_7d": c.plays_7d },
                };
                if create {
                    update.insert(
                        "$setOnInsert",
                        doc! { "track_name": "", "artist_name": "", "artist_id": "", "listeners": 0_i64, "terms": [] },
                    );
                }
                (c.id.clone(), update)
            })
            .collect();
        self.update("songs", updates, create).await
    }

    async fn checkpoint(&self, key: &str) -> Result<Option<String>, CatalogError> {
        let found = self
            .meta
            .find_one(doc! { "_id": key })
            .await
            .map_err(|e| self.err(e))?;
        Ok(found.and_then(|d| d.get_str("value").ok().map(str::to_string)))
    }

    async fn set_checkpoint(&self, key: &str, value: Option<&str>) -> Result<(), CatalogError> {
        match value {
            Some(v) => {
                self.meta
                    .update_one(doc! { "_id": key }, doc! { "$set": { "value": v } })
                    .upsert(true)
                    .await
                    .map_err(|e| self.err(e))?;
            }
            None => {
                self.meta
                    .delete_one(doc! { "_id": key })
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    async fn swap_checkpoint(
        &self,
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool, CatalogError> {
        let swapped = match (expected, new) {
            // `_id` is unique: of two inserts, one fails with a duplicate key.
            (None, Some(v)) => match self.meta.insert_one(doc! { "_id": key, "value": v }).await {
                Ok(_) => true,
                Err(e) if duplicate_key(&e) => false,
                Err(e) => return Err(self.err(e)),
            },
            (Some(old), Some(v)) => {
                self.meta
                    .update_one(
                        doc! { "_id": key, "value": old },
                        doc! { "$set": { "value": v } },
                    )
                    .await
                    .map_err(|e| self.err(e))?
                    .matched_count
                    == 1
            }
            (Some(old), None) => {
                self.meta
                    .delete_one(doc! { "_id": key, "value": old })
                    .await
                    .map_err(|e| self.err(e))?
                    .deleted_count
                    == 1
            }
            (None, None) => self.checkpoint(key).await?.is_none(),
        };
        Ok(swapped)
    }
}

/// Whether `e` is MongoDB's duplicate key error (code 11000).
fn duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(
            redact("mongodb://admin:s3cret@db:27017,db2/music?authSource=admin"),
            "mongodb://***@db:27017,db2/music?authSource=admin"
        );
        assert_eq!(redact("mongodb://db:27017"), "mongodb://db:27017");
        assert_eq!(redact("not a uri"), "not a uri");
    }
}
