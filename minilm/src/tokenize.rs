//! WordPiece tokenisation with the model's own `tokenizer.json`, set up as sentence-transformers
//! runs it: truncation at 256 tokens including `[CLS]` and `[SEP]`, no fixed padding (the shipped file
//! truncates and pads to 128).

use std::path::Path;

use tokenizers::{Tokenizer as HfTokenizer, TruncationParams};

use crate::EmbedError;

/// Sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2.
pub const MAX_TOKENS: usize = 256;

pub struct Tokenizer {
    inner: HfTokenizer,
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let path = dir.join("tokenizer.json");
        let err = |reason: String| EmbedError::Model {
            path: path.display().to_string(),
            reason,
        };
        let mut inner = HfTokenizer::from_file(&path).map_err(|e| err(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| err(e.to_string()))?
            .with_padding(None);
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, with `[CLS]` and `[SEP]`, at most [`MAX_TOKENS`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        self.inner
            .encode_fast(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EmbedError::Input(format!("tokenising: {e}")))
    }
}
