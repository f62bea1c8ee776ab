//! Texts in, embeddings out: tokenise, sort by length, encode in small batches of similar
//! length (little padding), put the results back in input order.

use std::path::Path;

use crate::{DIM, EmbedError, MiniLm, Tokenizer};

/// Lyrics shorter than this (after trimming) are not embedded, as in the seed.
pub const MIN_LYRICS_CHARS: usize = 50;
/// Lyrics are cut to their first this many characters, as in the seed.
pub const MAX_LYRICS_CHARS: usize = 5000;

/// The text the seed embeds for these lyrics: `None` when too short, else the first
/// [`MAX_LYRICS_CHARS`] characters.
pub fn prepare_lyrics(lyrics: &str) -> Option<&str> {
    if lyrics.trim().chars().count() < MIN_LYRICS_CHARS {
        return None;
    }
    Some(match lyrics.char_indices().nth(MAX_LYRICS_CHARS) {
        Some((cut, _)) => &lyrics[..cut],
        None => lyrics,
    })
}

/// Tokenizer and model from one model folder.
pub struct Embedder {
    pub tokenizer: Tokenizer,
    pub model: MiniLm,
}

impl Embedder {
    /// Loads `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        Ok(Embedder {
            tokenizer: Tokenizer::load(dir)?,
            model: MiniLm::load(dir)?,
        })
    }

    /// Embeds `texts` in batches of at most `batch` texts of similar length.
    pub fn embed<S: AsRef<str>>(
        &self,
        texts: &[S],
        batch: usize,
    ) -> Result<Vec<[f32; DIM]>, EmbedError> {
        let ids = texts
            .iter()
            .map(|t| self.tokenizer.encode(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        self.embed_ids(ids, batch)
    }

    /// Embeds token id rows in batches of at most `batch` rows of similar length.
    pub fn embed_ids(
        &self,
        ids: Vec<Vec<u32>>,
        batch: usize,
    ) -> Result<Vec<[f32; DIM]>, EmbedError> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![[0f32; DIM]; ids.len()];
        for chunk in order.chunks(batch.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            for (&i, v) in chunk.iter().zip(self.model.encode(&rows)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}
