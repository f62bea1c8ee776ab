//! Per-user state that expires: short-term vectors (1 h) and the queues of songs served in a
//! session (home feed: batches of 100, refilled below 20, at most 500 per session, 24 h;
//! next songs: 50, 15, 200, 1 h), as in the seed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::rank::Fused;

/// Values by key that expire `ttl` after their last write; expired entries read as absent and
/// are swept as the map grows.
#[derive(Debug)]
pub struct Expiring<V> {
    ttl: Duration,
    entries: HashMap<String, (Instant, V)>,
    sweep_at: usize,
}

impl<V> Expiring<V> {
    pub fn new(ttl: Duration) -> Self {
        Expiring {
            ttl,
            entries: HashMap::new(),
            sweep_at: 1024,
        }
    }

    fn live(&self, written: Instant, now: Instant) -> bool {
        now.duration_since(written) < self.ttl
    }

    pub fn get(&self, key: &str, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(t, _)| self.live(*t, now))
            .map(|(_, v)| v)
    }

    /// The live value for `key` (a default one when absent or expired), renewed.
    pub fn entry(&mut self, key: &str, now: Instant) -> &mut V
    where
        V: Default,
    {
        if self.entries.len() >= self.sweep_at {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (t, _)| now.duration_since(*t) < ttl);
            self.sweep_at = (self.entries.len() * 2).max(1024);
        }
        let ttl = self.ttl;
        let slot = self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| (now, V::default()));
        if now.duration_since(slot.0) >= ttl {
            slot.1 = V::default();
        }
        slot.0 = now;
        &mut slot.1
    }

    pub fn insert(&mut self, key: &str, value: V, now: Instant)
    where
        V: Default,
    {
        *self.entry(key, now) = value;
    }

    /// Forgets `key` (a refresh starts a new session).
    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

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

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Queue {
    queued: VecDeque<(String, Pick)>,
    generated: HashSet<String>,
}

impl Queue {
    /// How many songs to generate now (0 when enough are queued or the session is full).
    pub fn wanted(&self, policy: &QueuePolicy) -> usize {
        let generated = self.generated.len();
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

    /// Queues `ids`, skipping any seen before, up to the session cap; returns how many were
    /// queued.
    pub fn push(
        &mut self,
        picks: impl IntoIterator<Item = (String, Pick)>,
        policy: &QueuePolicy,
    ) -> usize {
        let mut added = 0;
        for (id, pick) in picks {
            if self.generated.len() >= policy.cap {
                break;
            }
            if self.generated.insert(id.clone()) {
                self.queued.push_back((id, pick));
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
        let has_more =
            !out.is_empty() && (!self.queued.is_empty() || self.generated.len() < policy.cap);
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
    fn entries_expire_after_their_ttl_and_renew_on_write() {
        let t0 = Instant::now();
        let mut m: Expiring<Vec<f32>> = Expiring::new(Duration::from_secs(60));
        m.insert("u", vec![1.0], t0);
        assert!(m.get("u", t0 + Duration::from_secs(59)).is_some());
        assert!(m.get("u", t0 + Duration::from_secs(60)).is_none());
        m.entry("u", t0 + Duration::from_secs(30)).push(2.0);
        assert_eq!(
            m.get("u", t0 + Duration::from_secs(80)),
            Some(&vec![1.0, 2.0])
        );
        // An expired entry starts over.
        assert!(m.entry("u", t0 + Duration::from_secs(200)).is_empty());
        let mut q: Expiring<Queue> = Expiring::new(FEED.ttl);
        q.entry("u", t0).push(ids(0..5), &FEED);
        assert_eq!(q.entry("u", t0 + FEED.ttl).seen().len(), 0);
    }
}
