//! Lyrics enrichment: every song the catalog has not looked up yet (and, on request, those whose
//! lookup failed before) is looked up with bounded concurrency; each result is written to the
//! catalog as soon as it is known (results that arrive together share one write), so a restart
//! resumes exactly where the last run stopped. Transient failures (429, 5xx, timeouts, malformed
//! bodies) are retried with exponential backoff and jitter and never recorded as "missing"; a
//! song whose retries run out is recorded as `error` and looked up again by the next run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, stream};
use rand::Rng;
use recsys_catalog::{
    Catalog, CatalogError, CatalogStats, Lyrics, LyricsStatus, Song, songs_with_lyrics_status,
};
use recsys_datasets::LyricsRecord;

use crate::lyrics::{FetchError, LyricsApi, Query, lookup};

#[derive(Debug, Clone)]
pub struct EnrichOptions {
    /// Lookups in flight at once.
    pub concurrency: usize,
    /// Attempts per request on transient failures.
    pub attempts: u32,
    /// First backoff; doubles per attempt, ±50 % jitter.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Also look up songs whose earlier lookup ended in `error`.
    pub retry_errors: bool,
    /// Stop after this many songs (all when `None`).
    pub limit: Option<u64>,
}

impl Default for EnrichOptions {
    fn default() -> Self {
        EnrichOptions {
            concurrency: 20,
            attempts: 6,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            retry_errors: true,
            limit: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrichCounts {
    pub found: u64,
    pub missing: u64,
    pub instrumental: u64,
    pub errors: u64,
    /// Songs without a title or artist (entries the counts job made for tracks only events
    /// named): not looked up and left pending, so that clean & sync keeps them, until a load
    /// gives them names.
    pub unnamed: u64,
    /// HTTP requests (or file lookups) made, retries included.
    pub requests: u64,
    pub retries: u64,
}

impl EnrichCounts {
    pub fn songs(&self) -> u64 {
        self.found + self.missing + self.instrumental + self.errors
    }
}

/// Songs fetched from the catalog per page.
const PAGE: usize = 500;
/// Results written in one catalog call at most.
const WRITE_BATCH: usize = 256;

/// Counts requests and retries on the way to the source.
struct Counted<'a> {
    inner: &'a dyn LyricsApi,
    requests: AtomicU64,
    retries: AtomicU64,
    options: &'a EnrichOptions,
}

impl Counted<'_> {
    /// Runs `call` until it succeeds, fails for good, or runs out of attempts.
    async fn retrying<T, F: Future<Output = Result<T, FetchError>>>(
        &self,
        call: impl Fn() -> F,
    ) -> Result<T, FetchError> {
        let mut attempt = 0;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            match call().await {
                Err(FetchError::Transient {
                    url,
                    reason,
                    retry_after,
                }) if attempt + 1 < self.options.attempts => {
                    attempt += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let exp = self
                        .options
                        .backoff
                        .saturating_mul(1 << (attempt - 1).min(16));
                    let jittered = exp.mul_f64(rand::rng().random_range(0.5..1.5));
                    let wait = retry_after
                        .unwrap_or(jittered)
                        .min(self.options.max_backoff);
                    tracing::debug!(%url, %reason, attempt, ?wait, "lyrics: retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl LyricsApi for Counted<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, query: &Query) -> Result<Option<LyricsRecord>, FetchError> {
        self.retrying(|| self.inner.get(query)).await
    }

    async fn search(&self, track: &str, artist: &str) -> Result<Vec<LyricsRecord>, FetchError> {
        self.retrying(|| self.inner.search(track, artist)).await
    }
}

/// Looks up one song; failures become status `error` (with the reason logged).
async fn enrich_one(api: &Counted<'_>, song: Song) -> (String, Lyrics) {
    let lyrics = match lookup(api, &Query::of(&song)).await {
        Ok(lyrics) => lyrics,
        Err(e) => {
            tracing::warn!(song = %song.stats.id, error = %e, "lyrics lookup failed");
            Lyrics {
                status: LyricsStatus::Error,
                plain: None,
                synced: None,
            }
        }
    };
    (song.stats.id, lyrics)
}

/// How many songs a run with `options` will look up, from the catalog's counts (the same rule as
/// `songs_to_do`).
pub fn songs_to_look_up(stats: &CatalogStats, options: &EnrichOptions) -> u64 {
    let errors = if options.retry_errors {
        stats.with_lyrics(LyricsStatus::Error)
    } else {
        0
    };
    (stats.lyrics_pending + errors).min(options.limit.unwrap_or(u64::MAX))
}

/// The songs to look up: earlier errors first (when asked), then songs never looked up.
fn songs_to_do<'a>(
    catalog: &'a dyn Catalog,
    retry_errors: bool,
) -> impl futures::Stream<Item = Result<Song, CatalogError>> + 'a {
    let passes: Vec<Option<LyricsStatus>> = if retry_errors {
        vec![Some(LyricsStatus::Error), None]
    } else {
        vec![None]
    };
    stream::iter(passes).flat_map(move |status| songs_with_lyrics_status(catalog, status, PAGE))
}

/// Runs enrichment; `progress` sees the counts after every write.
pub async fn enrich(
    catalog: &dyn Catalog,
    api: &dyn LyricsApi,
    options: &EnrichOptions,
    progress: &(dyn Fn(&EnrichCounts) + Sync),
) -> Result<EnrichCounts, CatalogError> {
    let counted = Counted {
        inner: api,
        requests: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        options,
    };
    let limit = options.limit.unwrap_or(u64::MAX);
    let unnamed = AtomicU64::new(0);
    let mut results = std::pin::pin!(
        songs_to_do(catalog, options.retry_errors)
            .filter(|song| {
                let named = !matches!(song, Ok(s) if s.stats.track_name.trim().is_empty()
                    || s.stats.artist_name.trim().is_empty());
                if !named {
                    unnamed.fetch_add(1, Ordering::Relaxed);
                }
                std::future::ready(named)
            })
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|song| {
                let counted = &counted;
                async move {
                    match song {
                        Ok(song) => Ok(enrich_one(counted, song).await),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(options.concurrency.max(1))
            .ready_chunks(WRITE_BATCH)
    );
    let mut counts = EnrichCounts::default();
    while let Some(chunk) = results.next().await {
        let updates = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
        catalog.set_lyrics(&updates).await?;
        for (_, lyrics) in &updates {
            match lyrics.status {
                LyricsStatus::Found => counts.found += 1,
                LyricsStatus::Missing => counts.missing += 1,
                LyricsStatus::Instrumental => counts.instrumental += 1,
                LyricsStatus::Error => counts.errors += 1,
            }
        }
        counts.requests = counted.requests.load(Ordering::Relaxed);
        counts.retries = counted.retries.load(Ordering::Relaxed);
        counts.unnamed = unnamed.load(Ordering::Relaxed);
        progress(&counts);
    }
    counts.unnamed = unnamed.load(Ordering::Relaxed);
    Ok(counts)
}
