//! `recsys lyrics clean-sync`: songs without lyrics (status `missing` or `instrumental`; songs
//! whose lookup failed are kept for the next enrichment run) leave the catalog and the vector
//! store. The vector store goes first, so an interrupted run leaves nothing the next run cannot
//! find again; running it twice changes nothing.

use futures::TryStreamExt;
use recsys_catalog::{Catalog, CatalogError, LyricsStatus, songs_with_lyrics_status};
use recsys_vectors::{VectorError, VectorStore};

/// The statuses that mean "this song has no lyrics to embed".
pub const WITHOUT_LYRICS: [LyricsStatus; 2] = [LyricsStatus::Missing, LyricsStatus::Instrumental];

#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Vectors(#[from] VectorError),
}

/// Ids of the catalog songs without lyrics.
pub async fn songs_without_lyrics(catalog: &dyn Catalog) -> Result<Vec<String>, CatalogError> {
    let mut ids = Vec::new();
    for status in WITHOUT_LYRICS {
        let songs = songs_with_lyrics_status(catalog, Some(status), 5000);
        ids.extend(songs.map_ok(|s| s.stats.id).try_collect::<Vec<_>>().await?);
    }
    Ok(ids)
}

/// Removes `ids` from the vector store, then from the catalog; returns the catalog's count of
/// songs removed.
pub async fn remove_songs(
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    ids: &[String],
) -> Result<u64, CleanError> {
    let mut removed = 0;
    for chunk in ids.chunks(1000) {
        vectors.delete(chunk).await?;
        removed += catalog.delete_songs(chunk).await?;
    }
    Ok(removed)
}
