//! The embedded catalog: one redb file (crash-safe: every commit is durable and atomic), no
//! server. Documents are JSON values keyed by id; the secondary indexes are tables of composite
//! keys kept in the same transaction as the documents they index:
//!
//! | table | key | serves |
//! |---|---|---|
//! | `songs`, `users` | id → JSON | get, upsert |
//! | `song_terms` | (word, song id) | text search ([`crate::text`]) |
//! | `song_top` | (u64::MAX − plays_7d, u64::MAX − plays, id) | top-N by plays_7d |
//! | `song_lyrics` | (status or "" when not looked up, id) | lyrics-status queries |
//! | `meta` | key → value | checkpoints |

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use crate::text::{cap_candidates, query_words, rank, song_terms};
use crate::{
    Catalog, CatalogError, CatalogStats, Lyrics, LyricsStatus, Page, PlayCounts, Song, SongStats,
    User,
};

const SONGS: TableDefinition<&str, &[u8]> = TableDefinition::new("songs");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const TERMS: TableDefinition<(&str, &str), ()> = TableDefinition::new("song_terms");
const TOP: TableDefinition<(u64, u64, &str), ()> = TableDefinition::new("song_top");
const LYRICS: TableDefinition<(&str, &str), ()> = TableDefinition::new("song_lyrics");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Serving sessions: key → (expiry in ms since the epoch, value), and the expiry index
/// (expiry, key) that writes sweep.
const SESSIONS: TableDefinition<&str, (i64, &str)> = TableDefinition::new("sessions");
const SESSION_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("session_expiry");
/// Expired sessions removed per write (so the table never grows with dead sessions).
const SWEEP: usize = 64;
/// Session writes are made durable at most this long after they commit.
const SESSION_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// The `song_lyrics` key part of a song not looked up yet.
const PENDING: &str = "";

/// What can go wrong inside a transaction; the caller adds the file's path.
enum Fail {
    Db(redb::Error),
    Doc { id: String, reason: String },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Fail {
                Fail::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Clone)]
pub struct EmbeddedCatalog {
    db: Arc<Database>,
    path: String,
    /// When a session write was last made durable.
    synced: Arc<std::sync::Mutex<std::time::Instant>>,
}

impl Drop for EmbeddedCatalog {
    /// Makes the last (non-durable) session writes durable: a clean stop loses none.
    fn drop(&mut self) {
        if let Ok(tx) = self.db.begin_write() {
            tx.commit().ok();
        }
    }
}

impl EmbeddedCatalog {
    /// Opens (or creates) the catalog file at `path`, creating its folder.
    pub async fn open(path: &Path) -> Result<EmbeddedCatalog, CatalogError> {
        let shown = path.display().to_string();
        let path = path.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || -> Result<Database, Fail> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Fail::Db(e.into()))?;
            }
            let db = Database::create(&path)?;
            let tx = db.begin_write()?;
            tx.open_table(SONGS)?;
            tx.open_table(USERS)?;
            tx.open_table(TERMS)?;
            tx.open_table(TOP)?;
            tx.open_table(LYRICS)?;
            tx.open_table(META)?;
            tx.open_table(SESSIONS)?;
            tx.open_table(SESSION_EXPIRY)?;
            tx.commit()?;
            Ok(db)
        })
        .await
        .expect("catalog open task panicked");
        let db = opened.map_err(|e| fail(&shown, e))?;
        Ok(EmbeddedCatalog {
            db: Arc::new(db),
            path: shown,
            synced: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
        })
    }

    /// Runs `f` on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, CatalogError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .expect("catalog task panicked")
            .map_err(|e| fail(&self.path, e))
    }
}

fn fail(path: &str, e: Fail) -> CatalogError {
    match e {
        Fail::Db(redb::Error::DatabaseAlreadyOpen) => CatalogError::InUse {
            path: path.to_string(),
        },
        Fail::Db(source) => CatalogError::Embedded {
            path: path.to_string(),
            source,
        },
        Fail::Doc { id, reason } => CatalogError::Document {
            catalog: path.to_string(),
            id,
            reason,
        },
    }
}

fn decode<T: serde::de::DeserializeOwned>(id: &str, bytes: &[u8]) -> Result<T, Fail> {
    serde_json::from_slice(bytes).map_err(|e| Fail::Doc {
        id: id.to_string(),
        reason: format!("unreadable: {e}"),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("catalog documents serialise")
}

fn top_key(s: &SongStats) -> (u64, u64) {
    (
        u64::MAX - s.plays_7d.max(0) as u64,
        u64::MAX - s.plays.max(0) as u64,
    )
}

fn status_key(lyrics: &Option<Lyrics>) -> &'static str {
    lyrics.as_ref().map_or(PENDING, |l| l.status.as_str())
}

fn get_song(
    songs: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Song>, Fail> {
    songs.get(id)?.map(|g| decode(id, g.value())).transpose()
}

/// A song without its lyrics' texts (the status kept): what listings show. Decoding skips the
/// texts rather than allocating them.
fn get_card(
    songs: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Song>, Fail> {
    #[derive(serde::Deserialize)]
    struct Card {
        stats: SongStats,
        lyrics: Option<Status>,
    }
    #[derive(serde::Deserialize)]
    struct Status {
        status: LyricsStatus,
    }
    let Some(got) = songs.get(id)? else {
        return Ok(None);
    };
    let card: Card = decode(id, got.value())?;
    Ok(Some(Song {
        stats: card.stats,
        lyrics: card.lyrics.map(|l| Lyrics {
            status: l.status,
            plain: None,
            synced: None,
        }),
    }))
}

/// Upserts `songs` in `tx`, keeping lyrics and every index in step.
fn upsert_songs(tx: &WriteTransaction, songs: &[SongStats]) -> Result<(), Fail> {
    let mut docs = tx.open_table(SONGS)?;
    let mut terms = tx.open_table(TERMS)?;
    let mut top = tx.open_table(TOP)?;
    let mut status = tx.open_table(LYRICS)?;
    for stats in songs {
        let id = stats.id.as_str();
        let old = get_song(&docs, id)?;
        let new_terms = song_terms(&stats.track_name, &stats.artist_name);
        let lyrics = match old {
            Some(old) => {
                let old_terms = song_terms(&old.stats.track_name, &old.stats.artist_name);
                if old_terms != new_terms {
                    for t in &old_terms {
                        terms.remove((t.as_str(), id))?;
                    }
                }
                let (a, b) = top_key(&old.stats);
                top.remove((a, b, id))?;
                old.lyrics
            }
            None => {
                status.insert((PENDING, id), ())?;
                None
            }
        };
        for t in &new_terms {
            terms.insert((t.as_str(), id), ())?;
        }
        let (a, b) = top_key(stats);
        top.insert((a, b, id), ())?;
        let song = Song {
            stats: stats.clone(),
            lyrics,
        };
        docs.insert(id, encode(&song).as_slice())?;
    }
    Ok(())
}

/// The ids indexed under `word`.
fn posting(
    terms: &impl ReadableTable<(&'static str, &'static str), ()>,
    word: &str,
) -> Result<Vec<String>, Fail> {
    let mut ids = Vec::new();
    for entry in terms.range((word, "")..)? {
        let (key, _) = entry?;
        let (w, id) = key.value();
        if w != word {
            break;
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

#[async_trait]
impl Catalog for EmbeddedCatalog {
    fn describe(&self) -> String {
        format!("embedded catalog {}", self.path)
    }

    async fn upsert_songs(&self, songs: &[SongStats]) -> Result<(), CatalogError> {
        let songs = songs.to_vec();
        self.run(move |db| {
            let tx = db.begin_write()?;
            upsert_songs(&tx, &songs)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn upsert_users(&self, users: &[User]) -> Result<(), CatalogError> {
        let users = users.to_vec();
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(USERS)?;
                for u in users {
                    let id = u.stats.id.clone();
                    let old = match table.get(id.as_str())? {
                        Some(old) => Some(decode::<User>(&id, old.value())?),
                        None => None,
                    };
                    let (old_latent, old_name) = old.map_or((None, None), |o| (o.latent, o.name));
                    let user = User {
                        stats: u.stats,
                        name: u.name.or(old_name),
                        latent: u.latent.or(old_latent),
                    };
                    table.insert(id.as_str(), encode(&user).as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn set_play_counts(
        &self,
        counts: &[PlayCounts],
        create: bool,
    ) -> Result<u64, CatalogError> {
        let counts = counts.to_vec();
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut songs = Vec::with_capacity(counts.len());
            {
                let docs = tx.open_table(SONGS)?;
                for c in counts {
                    let stats = match get_song(&docs, &c.id)? {
                        Some(old) => old.stats,
                        None if create => SongStats {
                            id: c.id.clone(),
                            ..SongStats::default()
                        },
                        None => continue,
                    };
                    songs.push(SongStats {
                        plays: c.plays,
                        plays_7d: c.plays_7d,
                        ..stats
                    });
                }
            }
            upsert_songs(&tx, &songs)?;
            tx.commit()?;
            Ok(songs.len() as u64)
        })
        .await
    }

    async fn song(&self, id: &str) -> Result<Option<Song>, CatalogError> {
        let id = id.to_string();
        self.run(move |db| get_song(&db.begin_read()?.open_table(SONGS)?, &id))
            .await
    }

    async fn user(&self, id: &str) -> Result<Option<User>, CatalogError> {
        Ok(self.users(&[id.to_string()]).await?.pop())
    }

    async fn songs(&self, ids: &[String]) -> Result<Vec<Song>, CatalogError> {
        let ids = ids.to_vec();
        self.run(move |db| {
            let songs = db.begin_read()?.open_table(SONGS)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                out.extend(get_card(&songs, id)?);
            }
            Ok(out)
        })
        .await
    }

    async fn users(&self, ids: &[String]) -> Result<Vec<User>, CatalogError> {
        let ids = ids.to_vec();
        self.run(move |db| {
            let users = db.begin_read()?.open_table(USERS)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(got) = users.get(id.as_str())? {
                    out.push(decode(id, got.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, CatalogError> {
        let after = after.map(str::to_string);
        self.run(move |db| {
            let users = db.begin_read()?.open_table(USERS)?;
            let range = match &after {
                Some(a) => users.range::<&str>((Bound::Excluded(a.as_str()), Bound::Unbounded))?,
                None => users.iter()?,
            };
            let mut out = Vec::with_capacity(limit.min(1024));
            for entry in range.take(limit) {
                let (id, doc) = entry?;
                out.push(decode(id.value(), doc.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn search_songs(
        &self,
        query: &str,
        limit: usize,
        skip: usize,
    ) -> Result<Page<Song>, CatalogError> {
        let query = query_words(query)?;
        self.run(move |db| {
            let tx = db.begin_read()?;
            let terms = tx.open_table(TERMS)?;
            // Start from the rarest word's postings, keep those every other word also indexes.
            let mut lists = query
                .iter()
                .map(|w| posting(&terms, w))
                .collect::<Result<Vec<_>, _>>()?;
            lists.sort_by_key(|l| l.len());
            let mut ids = lists.swap_remove(0);
            for w in &query {
                let mut kept = Vec::with_capacity(ids.len());
                for id in ids {
                    if terms.get((w.as_str(), id.as_str()))?.is_some() {
                        kept.push(id);
                    }
                }
                ids = kept;
            }
            let songs = tx.open_table(SONGS)?;
            let mut matching = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(song) = get_card(&songs, id)? {
                    matching.push(song);
                }
            }
            cap_candidates(&mut matching);
            Ok(rank(&query, matching, limit, skip))
        })
        .await
    }

    async fn top_songs(&self, limit: usize) -> Result<Vec<Song>, CatalogError> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            let top = tx.open_table(TOP)?;
            let songs = tx.open_table(SONGS)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for entry in top.iter()?.take(limit) {
                let (key, _) = entry?;
                let (_, _, id) = key.value();
                if let Some(song) = get_card(&songs, id)? {
                    out.push(song);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn set_lyrics(&self, updates: &[(String, Lyrics)]) -> Result<u64, CatalogError> {
        let updates = updates.to_vec();
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut found = 0;
            {
                let mut songs = tx.open_table(SONGS)?;
                let mut index = tx.open_table(LYRICS)?;
                for (id, lyrics) in updates {
                    let Some(mut song) = get_song(&songs, &id)? else {
                        continue;
                    };
                    index.remove((status_key(&song.lyrics), id.as_str()))?;
                    index.insert((lyrics.status.as_str(), id.as_str()), ())?;
                    song.lyrics = Some(lyrics);
                    songs.insert(id.as_str(), encode(&song).as_slice())?;
                    found += 1;
                }
            }
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    async fn delete_songs(&self, ids: &[String]) -> Result<u64, CatalogError> {
        let ids = ids.to_vec();
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut deleted = 0;
            {
                let mut songs = tx.open_table(SONGS)?;
                let mut terms = tx.open_table(TERMS)?;
                let mut top = tx.open_table(TOP)?;
                let mut status = tx.open_table(LYRICS)?;
                for id in &ids {
                    let Some(song) = get_song(&songs, id)? else {
                        continue;
                    };
                    for t in song_terms(&song.stats.track_name, &song.stats.artist_name) {
                        terms.remove((t.as_str(), id.as_str()))?;
                    }
                    let (a, b) = top_key(&song.stats);
                    top.remove((a, b, id.as_str()))?;
                    status.remove((status_key(&song.lyrics), id.as_str()))?;
                    songs.remove(id.as_str())?;
                    deleted += 1;
                }
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    async fn delete_users(&self, ids: &[String]) -> Result<u64, CatalogError> {
        let ids = ids.to_vec();
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut deleted = 0;
            {
                let mut users = tx.open_table(USERS)?;
                for id in &ids {
                    deleted += u64::from(users.remove(id.as_str())?.is_some());
                }
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    async fn songs_by_lyrics_status(
        &self,
        status: Option<LyricsStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Song>, CatalogError> {
        let key = status.map_or(PENDING, |s| s.as_str());
        let after = after.map(str::to_string);
        self.run(move |db| {
            let tx = db.begin_read()?;
            let index = tx.open_table(LYRICS)?;
            let songs = tx.open_table(SONGS)?;
            let mut out = Vec::new();
            let start = after.as_deref().unwrap_or("");
            for entry in index.range((key, start)..)? {
                if out.len() == limit {
                    break;
                }
                let (k, _) = entry?;
                let (s, id) = k.value();
                if s != key {
                    break;
                }
                if after.as_deref() == Some(id) {
                    continue;
                }
                if let Some(song) = get_song(&songs, id)? {
                    out.push(song);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn stats(&self) -> Result<CatalogStats, CatalogError> {
        self.run(|db| {
            let tx = db.begin_read()?;
            let users = tx.open_table(USERS)?;
            let mut with_vector = 0;
            for entry in users.iter()? {
                let (id, doc) = entry?;
                if decode::<User>(id.value(), doc.value())?.latent.is_some() {
                    with_vector += 1;
                }
            }
            let index = tx.open_table(LYRICS)?;
            let count = |key: &str| -> Result<u64, Fail> {
                let mut n = 0;
                for entry in index.range((key, "")..)? {
                    if entry?.0.value().0 != key {
                        break;
                    }
                    n += 1;
                }
                Ok(n)
            };
            Ok(CatalogStats {
                songs: tx.open_table(SONGS)?.len()?,
                users: users.len()?,
                users_with_vector: with_vector,
                lyrics_pending: count(PENDING)?,
                lyrics: LyricsStatus::ALL
                    .into_iter()
                    .map(|s| Ok((s, count(s.as_str())?)))
                    .collect::<Result<_, Fail>>()?,
            })
        })
        .await
    }

    async fn sessions(&self, keys: &[String]) -> Result<Vec<Option<String>>, CatalogError> {
        let keys = keys.to_vec();
        self.run(move |db| {
            let now = crate::now_ms();
            let tx = db.begin_read()?;
            let table = tx.open_table(SESSIONS)?;
            keys.iter()
                .map(|k| {
                    Ok(table.get(k.as_str())?.and_then(|v| {
                        let (expires, value) = v.value();
                        (expires > now).then(|| value.to_string())
                    }))
                })
                .collect()
        })
        .await
    }

    async fn put_sessions(
        &self,
        entries: &[(String, String, std::time::Duration)],
    ) -> Result<(), CatalogError> {
        let entries = entries.to_vec();
        let synced = self.synced.clone();
        self.run(move |db| {
            let now = crate::now_ms();
            let mut tx = db.begin_write()?;
            let durable = {
                let mut last = synced.lock().expect("sync lock");
                let due = last.elapsed() >= SESSION_SYNC;
                if due {
                    *last = std::time::Instant::now();
                }
                due
            };
            if !durable {
                tx.set_durability(redb::Durability::None)
                    .map_err(|e| Fail::Db(e.into()))?;
            }
            {
                let mut table = tx.open_table(SESSIONS)?;
                let mut expiry = tx.open_table(SESSION_EXPIRY)?;
                for (key, value, ttl) in &entries {
                    let expires = now + ttl.as_millis() as i64;
                    let old = table
                        .insert(key.as_str(), (expires, value.as_str()))?
                        .map(|v| v.value().0);
                    if let Some(old) = old {
                        expiry.remove((old, key.as_str()))?;
                    }
                    expiry.insert((expires, key.as_str()), ())?;
                }
                let dead: Vec<(i64, String)> = expiry
                    .range(..(now, ""))?
                    .take(SWEEP)
                    .map(|e| e.map(|(k, _)| (k.value().0, k.value().1.to_string())))
                    .collect::<Result<_, _>>()?;
                for (at, key) in dead {
                    expiry.remove((at, key.as_str()))?;
                    table.remove(key.as_str())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete_sessions(&self, keys: &[String]) -> Result<(), CatalogError> {
        let keys = keys.to_vec();
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(SESSIONS)?;
                let mut expiry = tx.open_table(SESSION_EXPIRY)?;
                for key in &keys {
                    let old = table.remove(key.as_str())?.map(|v| v.value().0);
                    if let Some(at) = old {
                        expiry.remove((at, key.as_str()))?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn checkpoint(&self, key: &str) -> Result<Option<String>, CatalogError> {
        let key = key.to_string();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            let got = meta.get(key.as_str())?;
            Ok(got.map(|g| g.value().to_string()))
        })
        .await
    }

    async fn set_checkpoint(&self, key: &str, value: Option<&str>) -> Result<(), CatalogError> {
        let key = key.to_string();
        let value = value.map(str::to_string);
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let mut meta = tx.open_table(META)?;
                match &value {
                    Some(v) => {
                        meta.insert(key.as_str(), v.as_str())?;
                    }
                    None => {
                        meta.remove(key.as_str())?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn swap_checkpoint(
        &self,
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool, CatalogError> {
        let (key, expected, new) = (
            key.to_string(),
            expected.map(str::to_string),
            new.map(str::to_string),
        );
        self.run(move |db| {
            // One write transaction: redb runs one at a time, and one process holds the file.
            let tx = db.begin_write()?;
            let swapped = {
                let mut meta = tx.open_table(META)?;
                let now = meta.get(key.as_str())?.map(|v| v.value().to_string());
                if now != expected {
                    false
                } else {
                    match &new {
                        Some(v) => meta.insert(key.as_str(), v.as_str())?,
                        None => meta.remove(key.as_str())?,
                    };
                    true
                }
            };
            tx.commit()?;
            Ok(swapped)
        })
        .await
    }
}
