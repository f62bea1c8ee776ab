//! The queues of songs served in a session (home feed: batches of 100, refilled below 20, at
//! most 500 per session, 24 h; next songs: 50, 15, 200, 1 h) and the lifetime of short-term
//! vectors (1 h), as in the seed. Queues are stored as JSON in the catalog's session store.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rank::Fused;

/// How a session queue is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Songs generated per refill.
    pub batch: usize,
    /// Refill when fewer than this many are queued.
    pub min_queued: usize,
    /// Songs per session at most.
    pub cap: usize,
    pub ttl: Duration,
}

pub const FEED: QueuePolicy = QueuePolicy {
    batch: 100,
    min_queued: 20,
    cap: 500,
    ttl: Duration::from_secs(24 * 3600),
};

pub const NEXT_SONGS: QueuePolicy = QueuePolicy {
    batch: 50,
    min_queued: 15,
    cap: 200,
    ttl: Duration::from_secs(3600),
};

/// Lifetime of a short-term vector.
pub const SHORT_TERM_TTL: Duration = Duration::from_secs(3600);

/// One user's session: songs queued to serve, and every song ever queued (never repeated).
/// Where a queued song came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Als,
    Lyrics,
    Hybrid,
    Popularity,
}

/// Why a song was queued: its source and score there, and for a fused pick the weighted part
/// of each side (`None`: that side did not propose the song).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub source: Source,
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub als: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lyrics: Option<f32>,
}

impl Pick {
    pub fn new(source: Source, score: f32) -> Pick {
        Pick {
            source,
            score,
            als: None,
            lyrics: None,
        }
    }

    /// A hybrid candidate: the source is the side (or sides) that proposed it.
    pub fn fused(f: &Fused) -> Pick {
        let source = match (f.als, f.lyrics) {
            (Some(_), Some(_)) => Source::Hybrid,
            (Some(_), None) => Source::Als,
            _ => Source::Lyrics,
        };
        Pick {
            source,
            score: f.score,
            als: f.als,
            lyrics: f.lyrics,
        }
    }
}

/// Stored in two parts: the queue with the count of songs generated (written on every page),
/// and the set of generated ids ([`Queue::seen`], written only when a refill grows it).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Queue {
    queued: VecDeque<(String, Pick)>,
    #[serde(skip)]
    generated: HashSet<String>,
    /// `generated.len()`, also when the set is not loaded.
    count: usize,
}

impl Queue {
    /// How many songs to generate now (0 when enough are queued or the session is full).
    pub fn wanted(&self, policy: &QueuePolicy) -> usize {
        let generated = self.count;
        if self.queued.len() < policy.min_queued && generated < policy.cap {
            policy.batch.min(policy.cap - generated)
        } else {
            0
        }
    }

    /// Songs this session already queued: a refill excludes them.
    pub fn seen(&self) -> &HashSet<String> {
        &self.generated
    }

    /// Loads the stored set of generated ids (needed before a refill).
    pub fn set_seen(&mut self, seen: HashSet<String>) {
        self.generated = seen;
        self.count = self.count.max(self.generated.len());
    }

    /// Queues `ids`, skipping any seen before, up to the session cap; returns how many were
    /// queued.
    pub fn push(
        &mut self,
        picks: impl IntoIterator<Item = (String, Pick)>,
        policy: &QueuePolicy,
    ) -> usize {
        let mut added = 0;
        for (id, pick) in picks {
            if self.count >= policy.cap {
                break;
            }
            if self.generated.insert(id.clone()) {
                self.queued.push_back((id, pick));
                self.count += 1;
                added += 1;
            }
        }
        added
    }

    /// Takes up to `limit` queued songs, and whether more can follow (queued, or the session
    /// not yet full).
    pub fn pop(&mut self, limit: usize, policy: &QueuePolicy) -> (Vec<(String, Pick)>, bool) {
        let take = limit.min(self.queued.len());
        let out: Vec<(String, Pick)> = self.queued.drain(..take).collect();
        let has_more = !out.is_empty() && (!self.queued.is_empty() || self.count < policy.cap);
        (out, has_more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<usize>) -> Vec<(String, Pick)> {
        range
            .map(|i| (format!("s{i}"), Pick::new(Source::Als, i as f32)))
            .collect()
    }

    #[test]
    fn a_feed_session_serves_each_song_once_up_to_the_cap() {
        let mut q = Queue::default();
        let mut served = HashSet::new();
        let mut next = 0;
        loop {
            let want = q.wanted(&FEED);
            // The generator may offer songs already served: they are skipped.
            let mut offer = ids(next..next + want);
            offer.extend(
                served
                    .iter()
                    .take(3)
                    .map(|id: &String| (id.clone(), Pick::new(Source::Popularity, 0.0))),
            );
            next += want;
            q.push(offer, &FEED);
            let (page, has_more) = q.pop(32, &FEED);
            for (id, _) in &page {
                assert!(served.insert(id.clone()), "{id} served twice");
            }
            if !has_more {
                break;
            }
        }
        assert_eq!(served.len(), FEED.cap);
        assert_eq!(q.wanted(&FEED), 0);
        assert_eq!(q.pop(32, &FEED), (vec![], false));
    }

    #[test]
    fn refills_only_below_the_threshold() {
        let mut q = Queue::default();
        assert_eq!(q.wanted(&NEXT_SONGS), 50);
        q.push(ids(0..50), &NEXT_SONGS);
        assert_eq!(q.wanted(&NEXT_SONGS), 0);
        q.pop(36, &NEXT_SONGS);
        assert_eq!(q.wanted(&NEXT_SONGS), 50, "14 queued < 15");
        q.push(ids(50..300), &NEXT_SONGS);
        assert_eq!(q.seen().len(), NEXT_SONGS.cap);
    }

    #[test]
    fn a_queue_survives_its_stored_form() {
        let mut q = Queue::default();
        let mut picks = ids(0..20);
        picks[3].1 = Pick::fused(&crate::rank::Fused {
            id: "s3".into(),
            score: 0.5,
            als: Some(0.3),
            lyrics: Some(0.2),
        });
        q.push(picks, &FEED);
        q.pop(5, &FEED);
        let stored = serde_json::to_vec(&q).unwrap();
        let seen = serde_json::to_vec(q.seen()).unwrap();
        let mut back: Queue = serde_json::from_slice(&stored).unwrap();
        assert_eq!(
            back.wanted(&FEED),
            q.wanted(&FEED),
            "the count travels with the queue"
        );
        back.set_seen(serde_json::from_slice(&seen).unwrap());
        // The served songs stay seen; the rest come out in order, with why they were picked.
        assert_eq!(back.seen(), q.seen());
        assert!(back.seen().contains("s3"));
        let (rest, _) = back.pop(100, &FEED);
        assert_eq!(rest, q.pop(100, &FEED).0);
        assert_eq!(rest[0].0, "s5");
    }
}
