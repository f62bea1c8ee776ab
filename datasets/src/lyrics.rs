//! The generator's offline lyrics: LRCLIB-shaped records (`lyrics.jsonl`, one JSON object per
//! line with LRCLIB's field names), themed so that songs of one taste group share vocabulary and
//! a refrain, which gives lyrics embeddings real group signal.
//!
//! Per track (seeded, independent of the listening log): ~30 % have no record (LRCLIB "not
//! found"), ~8 % are instrumental, ~2 % have lyrics too short to embed, ~60 % have lyrics.
//! ~15 % of the records are stored under a variant title ("… (Remastered)", a lost "(Live)") and
//! a slightly different duration, so only a search — not an exact `/api/get` — finds them; some
//! titles also exist by another artist with other lyrics, so search results must be chosen by
//! artist, not blindly the first.

use serde::{Deserialize, Serialize};

use crate::names::{self, THEMES};
use crate::rng::Rng;

/// Name of the lyrics file inside the generator's output folder.
pub const LYRICS_FILE: &str = "lyrics.jsonl";

/// One LRCLIB record (the JSON of `/api/get` and of each `/api/search` element; its camelCase
/// names, or the same in snake_case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LyricsRecord {
    #[serde(default)]
    pub id: u64,
    #[serde(default, alias = "track_name")]
    pub track_name: String,
    #[serde(default, alias = "artist_name")]
    pub artist_name: String,
    #[serde(default, alias = "album_name")]
    pub album_name: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub duration: Option<f64>,
    #[serde(default)]
    pub instrumental: bool,
    #[serde(default, alias = "plain_lyrics")]
    pub plain_lyrics: Option<String>,
    #[serde(default, alias = "synced_lyrics")]
    pub synced_lyrics: Option<String>,
}

/// What the lyrics file holds, for the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LyricsCounts {
    pub records: u64,
    pub with_lyrics: u64,
    pub instrumental: u64,
    pub short: u64,
    /// Records only a search finds (variant title and duration).
    pub variant_titles: u64,
    /// Same-title records by another artist (search decoys).
    pub decoys: u64,
    /// Tracks without any record.
    pub missing: u64,
}

/// A track as the lyrics generator needs it.
pub(crate) struct TrackInfo<'a> {
    pub title: &'a str,
    pub artist: &'a str,
    pub group: u32,
    pub duration_s: u32,
}

const PRONOUNS: &[&str] = &["I", "you", "we", "they", "she", "he"];
const VERBS: &[&str] = &[
    "follow", "remember", "carry", "chase", "hold", "call", "find", "lose", "keep", "dream of",
    "wait for", "run to",
];
const LINKS: &[&str] = &[
    "through the",
    "under the",
    "across the",
    "beyond the",
    "into the",
    "over the",
];
const FEELINGS: &[&str] = &[
    "tonight",
    "again",
    "forever",
    "alone",
    "slowly",
    "once more",
    "all night",
    "till morning",
];

/// The refrain every song of `group` shares (its motif).
fn refrain(seed: u64, group: u32) -> Vec<String> {
    let mut rng = Rng::new(seed, 7_000_000 + u64::from(group));
    let words = THEMES[group as usize % THEMES.len()].1;
    (0..2 + rng.below(2))
        .map(|_| {
            format!(
                "Oh {} {}, {} {} {}",
                rng.pick(words),
                rng.pick(words),
                rng.pick(PRONOUNS).to_lowercase(),
                rng.pick(VERBS),
                rng.pick(FEELINGS)
            )
        })
        .collect()
}

fn verse_line(rng: &mut Rng, words: &[&str]) -> String {
    let line = format!(
        "{} {} the {} {} {}",
        rng.pick(PRONOUNS),
        rng.pick(VERBS),
        rng.pick(words),
        rng.pick(LINKS),
        rng.pick(words)
    );
    if rng.chance(0.3) {
        format!("{line} {}", rng.pick(FEELINGS))
    } else {
        line
    }
}

/// Plain lyrics: verse, refrain, verse, refrain; blank lines between parts (short songs, about
/// 100 tokens, so embedding the default catalog takes minutes, not hours).
fn plain_lyrics(rng: &mut Rng, group: u32, refrain: &[String]) -> String {
    let words = THEMES[group as usize % THEMES.len()].1;
    let mut parts: Vec<Vec<String>> = Vec::new();
    for part in 0..4 {
        let lines = match part {
            1 | 3 => refrain.to_vec(),
            _ => (0..3).map(|_| verse_line(rng, words)).collect(),
        };
        parts.push(lines);
    }
    parts
        .iter()
        .map(|p| p.join("\n"))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// LRC: every non-blank line stamped `[mm:ss.xx]`, spread over the song.
fn synced(plain: &str, duration_s: u32) -> String {
    let lines: Vec<&str> = plain.lines().filter(|l| !l.trim().is_empty()).collect();
    let step = f64::from(duration_s) / (lines.len() as f64 + 1.0);
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let t = step * (i as f64 + 0.5);
            format!("[{:02}:{:05.2}] {line}", (t / 60.0) as u32, t % 60.0)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The records for `tracks` (in track order; decoys follow their original), and their counts.
pub(crate) fn records<'a>(
    seed: u64,
    groups: u32,
    tracks: impl Iterator<Item = TrackInfo<'a>>,
) -> (Vec<LyricsRecord>, LyricsCounts) {
    let refrains: Vec<Vec<String>> = (0..groups.max(1)).map(|g| refrain(seed, g)).collect();
    let mut out = Vec::new();
    let mut counts = LyricsCounts::default();
    for (t, track) in tracks.enumerate() {
        let mut rng = Rng::new(seed, 9_000_000 + t as u64);
        let roll = rng.f64();
        if roll < 0.30 {
            counts.missing += 1;
            continue;
        }
        let mut record = LyricsRecord {
            id: out.len() as u64 + 1,
            track_name: track.title.to_string(),
            artist_name: track.artist.to_string(),
            album_name: Some(format!("{} Sessions", names::capitalise(track.artist))),
            duration: Some(f64::from(track.duration_s)),
            instrumental: false,
            plain_lyrics: None,
            synced_lyrics: None,
        };
        if roll < 0.38 {
            record.instrumental = true;
            counts.instrumental += 1;
        } else {
            let plain = if roll < 0.40 {
                counts.short += 1;
                "La la la, la la la.".to_string()
            } else {
                counts.with_lyrics += 1;
                plain_lyrics(
                    &mut rng,
                    track.group,
                    &refrains[track.group as usize % refrains.len()],
                )
            };
            record.synced_lyrics = Some(synced(&plain, track.duration_s));
            record.plain_lyrics = Some(plain);
        }
        if rng.chance(0.15) {
            counts.variant_titles += 1;
            record.track_name = match record.track_name.strip_suffix(" (Live)") {
                Some(base) => base.to_string(),
                None => format!("{} (Remastered)", record.track_name),
            };
            record.duration = Some(f64::from(track.duration_s) + 3.0 + rng.below(4) as f64);
        }
        let decoy = rng.chance(0.05).then(|| LyricsRecord {
            id: 0,
            artist_name: format!("{} Tribute", names::capitalise(track.title)),
            plain_lyrics: Some(plain_lyrics(
                &mut rng,
                track.group + 1,
                &refrains[(track.group as usize + 1) % refrains.len()],
            )),
            synced_lyrics: None,
            instrumental: false,
            duration: Some(f64::from(track.duration_s) + 40.0),
            ..record.clone()
        });
        out.push(record);
        if let Some(mut decoy) = decoy {
            counts.decoys += 1;
            decoy.id = out.len() as u64 + 1;
            out.push(decoy);
        }
    }
    counts.records = out.len() as u64;
    (out, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_share_their_refrain_and_records_parse_back() {
        let titles = [
            "Salt Tide",
            "Neon Street",
            "Wave Harbor (Live)",
            "Deep Shore",
        ];
        let tracks = titles.iter().enumerate().map(|(i, t)| TrackInfo {
            title: t,
            artist: "Artist",
            group: if i == 1 { 1 } else { 0 },
            duration_s: 200,
        });
        let (records, counts) = records(5, 2, tracks.cycle().take(400));
        assert_eq!(counts.records as usize, records.len());
        assert_eq!(
            counts.missing + counts.instrumental + counts.short + counts.with_lyrics,
            400
        );
        assert!(counts.missing > 40 && counts.with_lyrics > 200 && counts.variant_titles > 20);
        let refrain0 = refrain(5, 0);
        let with_refrain = records
            .iter()
            .filter(|r| {
                r.plain_lyrics
                    .as_deref()
                    .is_some_and(|p| p.contains(&refrain0[0]))
            })
            .count();
        assert!(with_refrain > 100, "{with_refrain}");
        for r in &records {
            let json = serde_json::to_string(r).unwrap();
            assert!(json.contains("\"trackName\"") && json.contains("\"plainLyrics\""));
            assert_eq!(&serde_json::from_str::<LyricsRecord>(&json).unwrap(), r);
            if let Some(synced) = &r.synced_lyrics {
                assert!(synced.starts_with("[00:"), "{synced}");
            }
        }
    }
}
