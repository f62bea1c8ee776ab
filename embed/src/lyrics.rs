//! Where lyrics come from: LRCLIB's HTTP API ([`Lrclib`]) or the generator's offline file
//! ([`LyricsFile`]), behind one interface ([`LyricsApi`]: LRCLIB's `get` and `search`), and the
//! lookup both share ([`lookup`]): `/api/get` first, then `/api/search` with the best match by
//! title, artist and duration — not blindly the first hit.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use recsys_catalog::{Lyrics, LyricsStatus, Song};
use recsys_core::Store;
use recsys_datasets::LyricsRecord;
use url::Url;

/// The public LRCLIB API.
pub const LRCLIB_URL: &str = "https://lrclib.net";
/// Sent with every request, as LRCLIB asks of clients.
pub const USER_AGENT: &str = concat!(
    "recsys/",
    env!("CARGO_PKG_VERSION"),
    " (https://github.com/recsys/recsys)"
);

/// What one song is looked up by.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub track: String,
    pub artist: String,
    pub album: Option<String>,
    /// Seconds.
    pub duration_s: Option<f64>,
}

impl Query {
    pub fn of(song: &Song) -> Query {
        Query {
            track: song.stats.track_name.clone(),
            artist: song.stats.artist_name.clone(),
            album: None,
            duration_s: song.stats.duration_s,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Worth retrying: 429, 5xx, timeouts, broken connections, malformed bodies.
    #[error("{url}: {reason} (transient)")]
    Transient {
        url: String,
        reason: String,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Not worth retrying (e.g. 403): the song is recorded as `error`.
    #[error("{url}: {reason}")]
    Permanent { url: String, reason: String },
    /// HTTP 400: the server wants other parameters (an exact `get` may require the album or
    /// the duration, which the catalog does not always know).
    #[error("{url}: HTTP 400 Bad Request")]
    BadRequest { url: String },
}

/// LRCLIB's two lookups.
#[async_trait]
pub trait LyricsApi: Send + Sync {
    fn describe(&self) -> String;

    /// `GET /api/get`: the record for exactly this track, `None` when there is none (404).
    async fn get(&self, query: &Query) -> Result<Option<LyricsRecord>, FetchError>;

    /// `GET /api/search?track_name&artist_name`: candidate records.
    async fn search(&self, track: &str, artist: &str) -> Result<Vec<LyricsRecord>, FetchError>;
}

/// Lyrics from a record: instrumental, found (plain lyrics, or synced ones without their time
/// tags), or missing when it has neither.
pub fn lyrics_of(record: &LyricsRecord) -> Lyrics {
    let non_empty = |t: &Option<String>| t.as_ref().filter(|t| !t.trim().is_empty()).cloned();
    let synced = non_empty(&record.synced_lyrics);
    let plain = non_empty(&record.plain_lyrics).or_else(|| synced.as_deref().map(strip_lrc));
    if record.instrumental {
        Lyrics {
            status: LyricsStatus::Instrumental,
            plain: None,
            synced: None,
        }
    } else if plain.is_some() {
        Lyrics {
            status: LyricsStatus::Found,
            plain,
            synced,
        }
    } else {
        missing()
    }
}

fn missing() -> Lyrics {
    Lyrics {
        status: LyricsStatus::Missing,
        plain: None,
        synced: None,
    }
}

/// LRC text without its `[mm:ss.xx]` tags.
fn strip_lrc(synced: &str) -> String {
    synced
        .lines()
        .map(|line| {
            let mut rest = line.trim_start();
            while rest.starts_with('[')
                && let Some(end) = rest.find(']')
            {
                rest = rest[end + 1..].trim_start();
            }
            rest
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lowercased words without bracketed parts ("(Live)", "\[Remastered\]") or punctuation.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    for c in text.chars().flat_map(char::to_lowercase) {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            c if c.is_alphanumeric() => out.push(c),
            _ => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
        }
    }
    out.trim().to_string()
}

/// 1 for the same normalised text, else the share of words in common (Jaccard).
fn similarity(a: &str, b: &str) -> f64 {
    let (a, b) = (normalize(a), normalize(b));
    if a == b {
        return 1.0;
    }
    let wa: std::collections::HashSet<&str> = a.split(' ').filter(|w| !w.is_empty()).collect();
    let wb: std::collections::HashSet<&str> = b.split(' ').filter(|w| !w.is_empty()).collect();
    let union = wa.union(&wb).count();
    if union == 0 {
        0.0
    } else {
        wa.intersection(&wb).count() as f64 / union as f64
    }
}

/// The best search result for `query`: title and artist must both be close (≥ 0.6); among those,
/// the highest of 2·title + 2·artist + duration closeness (+0.5 with lyrics); `None` when no
/// candidate qualifies.
pub fn best_match<'a>(query: &Query, candidates: &'a [LyricsRecord]) -> Option<&'a LyricsRecord> {
    let mut best: Option<(f64, &LyricsRecord)> = None;
    for c in candidates {
        let title = similarity(&query.track, &c.track_name);
        let artist = similarity(&query.artist, &c.artist_name);
        if title < 0.6 || artist < 0.6 {
            continue;
        }
        let duration = match (query.duration_s, c.duration) {
            (Some(a), Some(b)) if (a - b).abs() <= 2.0 => 1.0,
            (Some(a), Some(b)) if (a - b).abs() <= 10.0 => 0.5,
            (Some(_), Some(_)) => 0.0,
            _ => 0.5,
        };
        let has_lyrics = if lyrics_of(c).status == LyricsStatus::Missing {
            0.0
        } else {
            0.5
        };
        let score = 2.0 * title + 2.0 * artist + duration + has_lyrics;
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Looks a song up: `get` first, then `search` and [`best_match`]. Errors are the source's
/// (retrying is the caller's business).
pub async fn lookup(api: &dyn LyricsApi, query: &Query) -> Result<Lyrics, FetchError> {
    if query.track.trim().is_empty() || query.artist.trim().is_empty() {
        return Ok(missing());
    }
    if let Some(record) = api.get(query).await? {
        return Ok(lyrics_of(&record));
    }
    let candidates = api.search(&query.track, &query.artist).await?;
    Ok(best_match(query, &candidates).map_or_else(missing, lyrics_of))
}

/// The LRCLIB HTTP API.
pub struct Lrclib {
    base: Url,
    client: reqwest::Client,
}

impl Lrclib {
    /// A client for the API at `base` (e.g. [`LRCLIB_URL`]) with a per-request `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Result<Lrclib, FetchError> {
        let permanent = |reason: String| FetchError::Permanent {
            url: base.to_string(),
            reason,
        };
        let base = Url::parse(base).map_err(|e| permanent(format!("not a URL: {e}")))?;
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| permanent(e.to_string()))?;
        Ok(Lrclib { base, client })
    }

    /// GETs `path` with `params`; `Ok(None)` on 404.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Option<T>, FetchError> {
        let mut url = self.base.join(path).map_err(|e| FetchError::Permanent {
            url: self.base.to_string(),
            reason: e.to_string(),
        })?;
        url.query_pairs_mut().extend_pairs(params);
        let shown = url.to_string();
        let transient = |reason: String, retry_after| FetchError::Transient {
            url: shown.clone(),
            reason,
            retry_after,
        };
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| transient(describe_reqwest(&e), None))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(transient(format!("HTTP {status}"), retry_after));
        }
        if status == reqwest::StatusCode::BAD_REQUEST {
            return Err(FetchError::BadRequest { url: shown });
        }
        if !status.is_success() {
            return Err(FetchError::Permanent {
                url: shown,
                reason: format!("HTTP {status}"),
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| transient(describe_reqwest(&e), None))?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| transient(format!("malformed JSON: {e}"), None))
    }
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        e.to_string()
    }
}

#[async_trait]
impl LyricsApi for Lrclib {
    fn describe(&self) -> String {
        format!("LRCLIB {}", self.base)
    }

    async fn get(&self, query: &Query) -> Result<Option<LyricsRecord>, FetchError> {
        let mut params = vec![
            ("track_name", query.track.clone()),
            ("artist_name", query.artist.clone()),
        ];
        if let Some(album) = &query.album {
            params.push(("album_name", album.clone()));
        }
        if let Some(d) = query.duration_s {
            params.push(("duration", format!("{}", d.round() as i64)));
        }
        match self.call("api/get", &params).await {
            // Without the album or duration an exact lookup may be refused: search instead.
            Err(FetchError::BadRequest { url }) => {
                tracing::debug!(%url, "LRCLIB refused the exact lookup; searching");
                Ok(None)
            }
            other => other,
        }
    }

    async fn search(&self, track: &str, artist: &str) -> Result<Vec<LyricsRecord>, FetchError> {
        let params = [
            ("track_name", track.to_string()),
            ("artist_name", artist.to_string()),
        ];
        Ok(self.call("api/search", &params).await?.unwrap_or_default())
    }
}

/// The generator's lyrics file, answering as LRCLIB would: `get` matches title and artist
/// exactly (case-insensitive) and the duration within 2 s; `search` returns records whose
/// normalised title or artist equals the query's.
pub struct LyricsFile {
    location: String,
    records: Vec<LyricsRecord>,
    exact: HashMap<(String, String), Vec<usize>>,
    by_title: HashMap<String, Vec<usize>>,
    by_artist: HashMap<String, Vec<usize>>,
}

impl LyricsFile {
    /// Reads `file` (JSON lines of LRCLIB records) from `store`.
    pub async fn open(store: &Store, file: &str) -> Result<LyricsFile, FetchError> {
        let location = store.url(file);
        let err = |reason: String| FetchError::Permanent {
            url: location.clone(),
            reason,
        };
        let bytes = object_store::ObjectStoreExt::get(&*store.object_store(), &store.path(file))
            .await
            .map_err(|e| err(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut records = Vec::new();
        for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = serde_json::from_slice::<LyricsRecord>(line)
                .map_err(|e| err(format!("line {}: {e}", n + 1)))?;
            // Every field has a default: a record of other names would otherwise pass as one
            // without a title, and every song would come out `missing`.
            if record.track_name.trim().is_empty() || record.artist_name.trim().is_empty() {
                return Err(err(format!(
                    "line {}: a record needs `trackName` and `artistName` (LRCLIB's JSON)",
                    n + 1
                )));
            }
            records.push(record);
        }
        Ok(LyricsFile::from_records(location, records))
    }

    pub fn from_records(location: String, records: Vec<LyricsRecord>) -> LyricsFile {
        let (mut exact, mut by_title, mut by_artist) = (
            HashMap::new(),
            HashMap::new(),
            HashMap::<String, Vec<usize>>::new(),
        );
        for (i, r) in records.iter().enumerate() {
            exact
                .entry((r.track_name.to_lowercase(), r.artist_name.to_lowercase()))
                .or_insert_with(Vec::new)
                .push(i);
            by_title
                .entry(normalize(&r.track_name))
                .or_insert_with(Vec::new)
                .push(i);
            by_artist
                .entry(normalize(&r.artist_name))
                .or_default()
                .push(i);
        }
        LyricsFile {
            location,
            records,
            exact,
            by_title,
            by_artist,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Search results per call, as LRCLIB returns at most 20.
const SEARCH_LIMIT: usize = 20;

#[async_trait]
impl LyricsApi for LyricsFile {
    fn describe(&self) -> String {
        format!("lyrics file {}", self.location)
    }

    async fn get(&self, query: &Query) -> Result<Option<LyricsRecord>, FetchError> {
        let key = (query.track.to_lowercase(), query.artist.to_lowercase());
        Ok(self.exact.get(&key).and_then(|hits| {
            hits.iter()
                .map(|&i| &self.records[i])
                .find(|r| match (query.duration_s, r.duration) {
                    (Some(a), Some(b)) => (a - b).abs() <= 2.0,
                    _ => true,
                })
                .cloned()
        }))
    }

    async fn search(&self, track: &str, artist: &str) -> Result<Vec<LyricsRecord>, FetchError> {
        let mut hits: Vec<usize> = self
            .by_title
            .get(&normalize(track))
            .into_iter()
            .chain(self.by_artist.get(&normalize(artist)))
            .flatten()
            .copied()
            .collect();
        hits.sort_unstable();
        hits.dedup();
        Ok(hits
            .into_iter()
            .take(SEARCH_LIMIT)
            .map(|i| self.records[i].clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(track: &str, artist: &str, duration: f64, plain: Option<&str>) -> LyricsRecord {
        LyricsRecord {
            id: 1,
            track_name: track.into(),
            artist_name: artist.into(),
            album_name: None,
            duration: Some(duration),
            instrumental: false,
            plain_lyrics: plain.map(Into::into),
            synced_lyrics: None,
        }
    }

    fn query(track: &str, artist: &str, duration: f64) -> Query {
        Query {
            track: track.into(),
            artist: artist.into(),
            album: None,
            duration_s: Some(duration),
        }
    }

    #[test]
    fn best_match_weighs_artist_title_and_duration_not_order() {
        let candidates = vec![
            record("Salt Tide", "Salt Tide Tribute", 200.0, Some("other")),
            record("Salt Tide (Live)", "Brimo", 260.0, Some("live")),
            record("Salt Tide (Remastered)", "Brimo", 203.0, Some("right")),
            record("Something Else", "Brimo", 200.0, Some("no")),
        ];
        let q = query("Salt Tide", "Brimo", 201.0);
        let best = best_match(&q, &candidates).unwrap();
        assert_eq!(best.plain_lyrics.as_deref(), Some("right"));
        assert!(best_match(&query("Unrelated", "Nobody", 200.0), &candidates).is_none());
    }

    #[test]
    fn records_become_statuses() {
        let mut r = record("a", "b", 1.0, Some("words"));
        assert_eq!(lyrics_of(&r).status, LyricsStatus::Found);
        r.plain_lyrics = Some("  ".into());
        assert_eq!(lyrics_of(&r).status, LyricsStatus::Missing);
        r.synced_lyrics = Some("[00:01.00] one\n[00:02.50][00:09.00] two".into());
        let l = lyrics_of(&r);
        assert_eq!(
            (l.status, l.plain.as_deref()),
            (LyricsStatus::Found, Some("one\ntwo"))
        );
        r.instrumental = true;
        assert_eq!(lyrics_of(&r).status, LyricsStatus::Instrumental);
    }

    #[test]
    fn normalize_drops_brackets_and_punctuation() {
        assert_eq!(normalize("Salt, Tide (Live) [2009 Remaster]!"), "salt tide");
        assert_eq!(normalize("Björk's  SONG"), "björk s song");
    }
}
