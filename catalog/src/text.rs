//! Text search over title and artist, the same on every catalog implementation.
//!
//! - **Words**: maximal runs of letters and digits, lower-cased (Unicode); everything else
//!   separates words. A song is indexed under the words of its title and of its artist.
//! - **Match**: a song matches when every word of the query is one of its words.
//! - **Candidates**: of the matching songs, the [`MAX_CANDIDATES`] with the most plays (ties:
//!   smaller id) are ranked; a query that matches more songs than that is too vague to page
//!   through anyway.
//! - **Rank**: score = 100 if the query names the song exactly (its words are the title's, or
//!   the title's and the artist's together, in any order), plus 10 per query word in the title
//!   and 5 per query word in the artist (the seed's text-index weights); ties by plays (more
//!   first), then id. So "yesterday beatles" ranks *Yesterday* by the Beatles above a more
//!   played *Yesterday (Live)* by the same artist.

use std::cmp::Reverse;

use crate::{Page, Song};

/// Matching songs ranked per query, at most.
pub const MAX_CANDIDATES: usize = 5_000;

/// The distinct words of `text`, in order of first appearance.
pub fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_lowercase();
        if !out.contains(&word) {
            out.push(word);
        }
    }
    out
}

/// The words a song is indexed under: those of its title, then those of its artist.
pub fn song_terms(track_name: &str, artist_name: &str) -> Vec<String> {
    terms_of(&words(track_name), &words(artist_name))
}

/// Title words, then the artist words the title lacks.
fn terms_of(title: &[String], artist: &[String]) -> Vec<String> {
    let mut terms = title.to_vec();
    for w in artist {
        if !terms.contains(w) {
            terms.push(w.clone());
        }
    }
    terms
}

/// The score of a matching song for query words `query`.
pub fn score(query: &[String], track_name: &str, artist_name: &str) -> u32 {
    let title = words(track_name);
    let artist = words(artist_name);
    let names_exactly =
        |words: &[String]| words.len() == query.len() && words.iter().all(|w| query.contains(w));
    let mut score = if names_exactly(&title) || names_exactly(&terms_of(&title, &artist)) {
        100
    } else {
        0
    };
    for q in query {
        if title.contains(q) {
            score += 10;
        }
        if artist.contains(q) {
            score += 5;
        }
    }
    score
}

/// Keeps the [`MAX_CANDIDATES`] most played of `matching` (every query word present).
pub fn cap_candidates(matching: &mut Vec<Song>) {
    matching.sort_by(|a, b| {
        (Reverse(a.stats.plays), &a.stats.id).cmp(&(Reverse(b.stats.plays), &b.stats.id))
    });
    matching.truncate(MAX_CANDIDATES);
}

/// Ranks the candidates and cuts the page `[skip, skip + limit)`.
pub fn rank(query: &[String], candidates: Vec<Song>, limit: usize, skip: usize) -> Page<Song> {
    let mut scored: Vec<(u32, Song)> = candidates
        .into_iter()
        .map(|s| (score(query, &s.stats.track_name, &s.stats.artist_name), s))
        .collect();
    scored.sort_by(|(sa, a), (sb, b)| {
        (Reverse(*sa), Reverse(a.stats.plays), &a.stats.id).cmp(&(
            Reverse(*sb),
            Reverse(b.stats.plays),
            &b.stats.id,
        ))
    });
    let has_more = scored.len() > skip.saturating_add(limit);
    Page {
        items: scored
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(|(_, s)| s)
            .collect(),
        has_more,
    }
}

/// The query's words, or an error naming the problem.
pub fn query_words(query: &str) -> Result<Vec<String>, crate::CatalogError> {
    let words = words(query);
    if words.is_empty() {
        return Err(crate::CatalogError::Invalid(format!(
            "search query `{query}` has no words (letters or digits)"
        )));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercase_alphanumeric_runs() {
        assert_eq!(
            words("Don't Stop Me Now (Live '79) — Björk!"),
            vec!["don", "t", "stop", "me", "now", "live", "79", "björk"]
        );
        assert_eq!(words("a A a"), vec!["a"]);
        assert!(words("  -- ").is_empty());
    }

    #[test]
    fn exact_title_beats_partial_and_artist_matches() {
        let q = words("blue monday");
        assert_eq!(score(&q, "Blue Monday", "New Order"), 120);
        assert_eq!(score(&q, "Blue Monday '88", "New Order"), 20);
        // Title and artist together are the query too: exact, below the exact title.
        assert_eq!(score(&q, "Monday", "Blue"), 115);
        assert_eq!(
            song_terms("Blue Monday", "New Order blue"),
            vec!["blue", "monday", "new", "order"]
        );
    }

    #[test]
    fn title_and_artist_beat_a_variant_of_the_title() {
        let q = words("Blue Monday New Order");
        assert_eq!(score(&q, "Blue Monday", "New Order"), 130);
        assert_eq!(score(&q, "Blue Monday (Live)", "New Order"), 30);
    }
}
