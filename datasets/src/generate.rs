//! `recsys data generate`: a seeded Last.fm-1K-style listening log with structure collaborative
//! filtering can learn.
//!
//! * Every user belongs to a latent taste group (and leans towards one other group); every
//!   artist belongs to one group. Users draw most plays from their groups' catalogues.
//! * Popularity is Zipf-like: artists by rank, tracks by rank within their artist.
//! * Listening comes in sessions of consecutive plays, often staying with the same artist.
//! * Users replay a personal set of favourites (repeats, as in real logs).
//! * Some tracks and artists lack a MusicBrainz id; a few good lines end in CRLF.
//! * About 0.5 % of lines are malformed, of named kinds, each rejected by `clean` for exactly
//!   that reason; the manifest counts them, so `clean`'s output can be checked exactly.
//!
//! Lines are grouped by user with time descending inside a user, like the real file, so sorting
//! is real work. The output depends only on the parameters: users are generated in parallel from
//! per-user random streams and written in user order.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use recsys_core::Store;
use recsys_core::time::{MICROS_PER_SEC, days_from_civil, format_timestamp_secs};
use serde::{Deserialize, Serialize};

use crate::DatasetError;
use crate::lyrics::{LYRICS_FILE, LyricsCounts, TrackInfo};
use crate::names;
use crate::rng::{Alias, Rng};

/// Name of the generated log inside the output folder (the real archive's name).
pub const LISTENS_FILE: &str = "userid-timestamp-artid-artname-traid-traname.tsv";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Share of lines that are malformed.
const MALFORMED_RATE: f64 = 0.005;
/// Share of good lines terminated by CRLF (valid, must be accepted).
const CRLF_RATE: f64 = 0.001;
const NO_TRACK_MBID: f64 = 0.11;
const NO_ARTIST_MBID: f64 = 0.06;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateConfig {
    pub users: u32,
    pub tracks: u32,
    pub events: u64,
    pub seed: u64,
    /// Number of latent taste groups.
    pub groups: u32,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            users: 1000,
            tracks: 50_000,
            events: 2_000_000,
            seed: 42,
            groups: 20,
        }
    }
}

/// The malformed kinds the generator plants; names match `clean`'s reject reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    FieldCount,
    EmptyUser,
    BadTimestamp,
    ImpossibleTimestamp,
    InvalidUtf8,
    StrayCr,
}

impl MalformedKind {
    const ALL: [MalformedKind; 6] = [
        MalformedKind::FieldCount,
        MalformedKind::EmptyUser,
        MalformedKind::BadTimestamp,
        MalformedKind::ImpossibleTimestamp,
        MalformedKind::InvalidUtf8,
        MalformedKind::StrayCr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MalformedKind::FieldCount => "field_count",
            MalformedKind::EmptyUser => "empty_user",
            MalformedKind::BadTimestamp => "bad_timestamp",
            MalformedKind::ImpossibleTimestamp => "impossible_timestamp",
            MalformedKind::InvalidUtf8 => "invalid_utf8",
            MalformedKind::StrayCr => "stray_cr",
        }
    }
}

/// What was generated, written next to the data as `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub config: GenerateConfig,
    pub file: String,
    pub bytes: u64,
    /// All lines, good and malformed.
    pub lines: u64,
    /// Good lines: what `clean` must keep.
    pub expected_clean_rows: u64,
    pub malformed: BTreeMap<MalformedKind, u64>,
    pub artists: u32,
    pub tracks_without_mbid: u32,
    pub artists_without_mbid: u32,
    /// First and last listen, `YYYY-MM-DD`.
    pub first_day: String,
    pub last_day: String,
    /// The offline lyrics file written beside the log.
    #[serde(default)]
    pub lyrics_file: String,
    #[serde(default)]
    pub lyrics: LyricsCounts,
}

struct Artist {
    name: String,
    mbid: String,
    group: u32,
    first_track: u32,
    tracks: u32,
}

struct Track {
    artist: u32,
    title: String,
    mbid: String,
    duration_s: u32,
}

/// The generated world: artists, tracks, taste groups and the samplers over them.
struct World {
    artists: Vec<Artist>,
    tracks: Vec<Track>,
    global: Alias,
    groups: Vec<(Vec<u32>, Alias)>,
    user_events: Vec<u64>,
    start_micros: i64,
    end_micros: i64,
    seed: u64,
    group_count: u32,
}

/// First and last day of the generated history (the real set ends on 2009-05-05).
const FIRST_DAY: (i64, u32, u32) = (2005, 2, 14);
const LAST_DAY: (i64, u32, u32) = (2009, 5, 5);

impl World {
    fn build(config: &GenerateConfig) -> World {
        let mut rng = Rng::new(config.seed, 0);
        let groups = config.groups.max(1);
        let tracks_total = config.tracks.max(1);
        // Artists own runs of tracks; catalogue sizes are heavy-tailed (a few prolific artists).
        let mut artists = Vec::new();
        let mut tracks = Vec::with_capacity(tracks_total as usize);
        while (tracks.len() as u32) < tracks_total {
            let size = (1.0 + rng.exponential(9.0).powf(1.15)) as u32;
            let size = size.clamp(1, 400).min(tracks_total - tracks.len() as u32);
            let group = rng.below(groups as u64) as u32;
            let artist_index = artists.len() as u32;
            let mut titles = HashSet::new();
            for _ in 0..size {
                let mut title = names::track_title(&mut rng, group as usize);
                while !titles.insert(title.clone()) {
                    title.push_str(" (Reprise)");
                }
                tracks.push(Track {
                    artist: artist_index,
                    title,
                    mbid: if rng.chance(NO_TRACK_MBID) {
                        String::new()
                    } else {
                        names::mbid(&mut rng)
                    },
                    duration_s: 120 + rng.below(300) as u32,
                });
            }
            artists.push(Artist {
                name: names::artist_name(&mut rng),
                mbid: if rng.chance(NO_ARTIST_MBID) {
                    String::new()
                } else {
                    names::mbid(&mut rng)
                },
                group,
                first_track: tracks.len() as u32 - size,
                tracks: size,
            });
        }
        // Zipf popularity: artists by a random rank, tracks by their rank inside the artist.
        let mut order: Vec<u32> = (0..artists.len() as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut artist_weight = vec![0.0; artists.len()];
        for (rank, &a) in order.iter().enumerate() {
            artist_weight[a as usize] = 1.0 / (rank as f64 + 3.0).powf(0.95);
        }
        let weights: Vec<f64> = tracks
            .iter()
            .enumerate()
            .map(|(t, track)| {
                let a = &artists[track.artist as usize];
                let within = (t as u32 - a.first_track) as f64;
                artist_weight[track.artist as usize] / (within + 1.0).powf(0.9)
            })
            .collect();
        let global = Alias::new(&weights);
        let groups_samplers = (0..groups)
            .map(|g| {
                let members: Vec<u32> = (0..tracks.len() as u32)
                    .filter(|&t| artists[tracks[t as usize].artist as usize].group == g)
                    .collect();
                let members = if members.is_empty() { vec![0] } else { members };
                let w: Vec<f64> = members.iter().map(|&t| weights[t as usize]).collect();
                let alias = Alias::new(&w);
                (members, alias)
            })
            .collect();
        // Heavy-tailed activity: log-normal shares of the events, summing exactly.
        let shares: Vec<f64> = (0..config.users)
            .map(|_| (1.1 * rng.normal()).exp())
            .collect();
        let total: f64 = shares.iter().sum();
        let mut user_events: Vec<u64> = shares
            .iter()
            .map(|s| (config.events as f64 * s / total).floor() as u64)
            .collect();
        let mut missing = config.events - user_events.iter().sum::<u64>();
        let n = user_events.len().max(1);
        let mut i = 0;
        while missing > 0 && !user_events.is_empty() {
            user_events[i % n] += 1;
            missing -= 1;
            i += 1;
        }
        let day = |(y, m, d): (i64, u32, u32)| days_from_civil(y, m, d) * 86_400 * MICROS_PER_SEC;
        World {
            artists,
            tracks,
            global,
            groups: groups_samplers,
            user_events,
            start_micros: day(FIRST_DAY),
            end_micros: day(LAST_DAY) + 86_399 * MICROS_PER_SEC,
            seed: config.seed,
            group_count: groups,
        }
    }

    /// All lines of user `u`, and the malformed ones planted among them.
    fn user_lines(&self, u: usize, out: &mut Vec<u8>, malformed: &mut [u64; 6]) -> u64 {
        let mut rng = Rng::new(self.seed, 1_000_000 + u as u64);
        let n = self.user_events[u] as usize;
        let primary = rng.below(self.group_count as u64) as usize;
        let secondary = rng.below(self.group_count as u64) as usize;
        let favourites: Vec<u32> = (0..5 + rng.below(30))
            .map(|_| {
                let (members, alias) = &self.groups[primary];
                members[alias.sample(&mut rng)]
            })
            .collect();
        let span = (self.end_micros - self.start_micros) as f64;
        let start = self.start_micros + (rng.f64() * 0.7 * span) as i64;
        let end = (self.end_micros - (rng.f64() * 0.1 * span) as i64)
            .max(start + 86_400 * MICROS_PER_SEC);
        let mut plays: Vec<(i64, u32)> = Vec::with_capacity(n);
        while plays.len() < n {
            let mut t = start + rng.below((end - start) as u64) as i64;
            let session = (1.0 + rng.exponential(13.0)) as usize;
            let mut prev: Option<u32> = None;
            for _ in 0..session.min(n - plays.len()) {
                let track = match prev {
                    Some(p) if rng.chance(0.3) => {
                        let a = &self.artists[self.tracks[p as usize].artist as usize];
                        let r = rng.f64();
                        a.first_track + ((r * r) * a.tracks as f64) as u32
                    }
                    _ => {
                        let r = rng.f64();
                        if r < 0.22 {
                            rng.pick(&favourites)
                        } else if r < 0.80 {
                            let (members, alias) = &self.groups[primary];
                            members[alias.sample(&mut rng)]
                        } else if r < 0.90 {
                            let (members, alias) = &self.groups[secondary];
                            members[alias.sample(&mut rng)]
                        } else {
                            self.global.sample(&mut rng) as u32
                        }
                    }
                };
                plays.push((t, track));
                let listened = if rng.chance(0.2) {
                    10 + rng.below(50)
                } else {
                    self.tracks[track as usize].duration_s as u64
                };
                t += (listened + rng.below(5)) as i64 * MICROS_PER_SEC;
                prev = Some(track);
            }
        }
        plays.sort_unstable_by(|a, b| b.cmp(a));
        let user = format!("user_{:06}", u + 1);
        let mut planted = 0;
        for &(ts, track) in &plays {
            let tr = &self.tracks[track as usize];
            let ar = &self.artists[tr.artist as usize];
            let line_start = out.len();
            out.extend_from_slice(user.as_bytes());
            out.push(b'\t');
            format_timestamp_secs(ts, out);
            for field in [&ar.mbid, &ar.name, &tr.mbid, &tr.title] {
                out.push(b'\t');
                out.extend_from_slice(field.as_bytes());
            }
            if rng.chance(CRLF_RATE) {
                out.push(b'\r');
            }
            out.push(b'\n');
            if rng.chance(MALFORMED_RATE) {
                let kind = MalformedKind::ALL[rng.below(6) as usize];
                let good = out[line_start..].to_vec();
                plant(kind, &good, &mut rng, out);
                malformed[kind as usize] += 1;
                planted += 1;
            }
        }
        planted
    }
}

/// Appends a malformed variant of `good` (a complete line) that `clean` rejects as `kind`.
fn plant(kind: MalformedKind, good: &[u8], rng: &mut Rng, out: &mut Vec<u8>) {
    let body = good.strip_suffix(b"\n").unwrap_or(good);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let fields: Vec<&[u8]> = body.split(|&b| b == b'\t').collect();
    let mut fields: Vec<Vec<u8>> = fields.into_iter().map(<[u8]>::to_vec).collect();
    match kind {
        MalformedKind::FieldCount => {
            if rng.chance(0.5) {
                fields.pop();
            } else {
                fields.push(b"unexpected".to_vec());
            }
        }
        MalformedKind::EmptyUser => fields[0].clear(),
        MalformedKind::BadTimestamp => {
            fields[1] = rng
                .pick(&[
                    &b"2009/05/04 23:08:57"[..],
                    b"NaN",
                    b"1241478537",
                    b"2009-05-04T23:08Z",
                ])
                .to_vec()
        }
        MalformedKind::ImpossibleTimestamp => {
            fields[1] = rng
                .pick(&[
                    &b"2009-02-30T12:00:00Z"[..],
                    b"2007-04-31T08:15:00Z",
                    b"2008-06-10T25:10:00Z",
                    b"2006-13-02T10:00:00Z",
                ])
                .to_vec()
        }
        MalformedKind::InvalidUtf8 => fields[5].extend_from_slice(b" \xC3\x28"),
        MalformedKind::StrayCr => fields[5].extend_from_slice(b"\rremastered"),
    }
    out.extend_from_slice(&fields.join(&b'\t'));
    out.push(b'\n');
}

/// Keeps generator threads at most `size` users ahead of the writer, so memory stays bounded
/// whatever the order in which users finish.
struct Window {
    state: Mutex<(usize, bool)>,
    moved: Condvar,
    size: usize,
}

impl Window {
    fn new(size: usize) -> Self {
        Window {
            state: Mutex::new((0, false)),
            moved: Condvar::new(),
            size,
        }
    }

    /// Blocks until user `u` may be generated; false once the writer has stopped.
    fn wait_until_writable(&self, u: usize) -> bool {
        let mut state = self.state.lock().expect("window lock");
        while !state.1 && u >= state.0 + self.size {
            state = self.moved.wait(state).expect("window lock");
        }
        !state.1
    }

    fn advance(&self) {
        self.state.lock().expect("window lock").0 += 1;
        self.moved.notify_all();
    }

    fn close(&self) {
        self.state.lock().expect("window lock").1 = true;
        self.moved.notify_all();
    }
}

/// Releases waiting generator threads when the writer returns, also on error.
struct CloseOnDrop(Arc<Window>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Generates the log into `out` (a folder) and returns its manifest. `progress` is called with
/// the number of good lines written so far.
pub async fn generate(
    config: &GenerateConfig,
    out: &Store,
    progress: impl Fn(u64),
) -> Result<Manifest, DatasetError> {
    let world = Arc::new(World::build(config));
    let users = world.user_events.len();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let next = Arc::new(AtomicUsize::new(0));
    let window = Arc::new(Window::new(threads * 4));
    let _close_window = CloseOnDrop(window.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>, [u64; 6], u64)>(threads * 2);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (world, next, tx, window) =
                (world.clone(), next.clone(), tx.clone(), window.clone());
            std::thread::spawn(move || {
                loop {
                    let u = next.fetch_add(1, Ordering::Relaxed);
                    if u >= users || !window.wait_until_writable(u) {
                        break;
                    }
                    let mut buf = Vec::with_capacity(world.user_events[u] as usize * 110);
                    let mut malformed = [0u64; 6];
                    world.user_lines(u, &mut buf, &mut malformed);
                    if tx
                        .blocking_send((u, buf, malformed, world.user_events[u]))
                        .is_err()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let store = out.object_store();
    let path: Path = out.path(LISTENS_FILE);
    let upload = store
        .put_multipart(&path)
        .await
        .map_err(|e| DatasetError::store(out, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 16 << 20);
    let mut pending: BTreeMap<usize, (Vec<u8>, [u64; 6], u64)> = BTreeMap::new();
    let mut next_to_write = 0;
    let (mut bytes, mut lines, mut good) = (0u64, 0u64, 0u64);
    let mut malformed = [0u64; 6];
    while let Some((u, buf, m, events)) = rx.recv().await {
        pending.insert(u, (buf, m, events));
        while let Some((buf, m, events)) = pending.remove(&next_to_write) {
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| DatasetError::store(out, e))?;
            writer.write(&buf);
            bytes += buf.len() as u64;
            let planted: u64 = m.iter().sum();
            lines += events + planted;
            good += events;
            for (total, add) in malformed.iter_mut().zip(m) {
                *total += add;
            }
            next_to_write += 1;
            window.advance();
            progress(good);
        }
    }
    for w in workers {
        w.join()
            .map_err(|_| DatasetError::Generator("a generator thread panicked".into()))?;
    }
    if next_to_write != users {
        return Err(DatasetError::Generator(format!(
            "generated {next_to_write} of {users} users"
        )));
    }
    writer
        .finish()
        .await
        .map_err(|e| DatasetError::store(out, e))?;

    let lyrics = write_lyrics(&world, out).await?;
    let (first_day, last_day) = (
        recsys_core::time::date_string(world.start_micros),
        recsys_core::time::date_string(world.end_micros),
    );
    let manifest = Manifest {
        config: config.clone(),
        file: LISTENS_FILE.to_string(),
        bytes,
        lines,
        expected_clean_rows: good,
        malformed: MalformedKind::ALL
            .iter()
            .map(|k| (*k, malformed[*k as usize]))
            .collect(),
        artists: world.artists.len() as u32,
        tracks_without_mbid: world.tracks.iter().filter(|t| t.mbid.is_empty()).count() as u32,
        artists_without_mbid: world.artists.iter().filter(|a| a.mbid.is_empty()).count() as u32,
        first_day,
        last_day,
        lyrics_file: LYRICS_FILE.to_string(),
        lyrics,
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| DatasetError::Generator(e.to_string()))?;
    store
        .put(&out.path(MANIFEST_FILE), PutPayload::from(json))
        .await
        .map_err(|e| DatasetError::store(out, e))?;
    Ok(manifest)
}

/// Writes the offline lyrics file (see [`crate::lyrics`]) for the world's tracks.
async fn write_lyrics(world: &World, out: &Store) -> Result<LyricsCounts, DatasetError> {
    let tracks = world.tracks.iter().map(|t| {
        let artist = &world.artists[t.artist as usize];
        TrackInfo {
            title: &t.title,
            artist: &artist.name,
            group: artist.group,
            duration_s: t.duration_s,
        }
    });
    let (records, counts) = crate::lyrics::records(world.seed, world.group_count, tracks);
    let mut body = Vec::with_capacity(records.len() * 1200);
    for record in &records {
        serde_json::to_writer(&mut body, record)
            .map_err(|e| DatasetError::Generator(e.to_string()))?;
        body.push(b'\n');
    }
    out.object_store()
        .put(&out.path(LYRICS_FILE), PutPayload::from(body))
        .await
        .map_err(|e| DatasetError::store(out, e))?;
    Ok(counts)
}

/// Reads the manifest written next to a generated log.
pub async fn read_manifest(dir: &Store) -> Result<Manifest, DatasetError> {
    let bytes = dir
        .object_store()
        .get(&dir.path(MANIFEST_FILE))
        .await
        .map_err(|e| DatasetError::store(dir, e))?
        .bytes()
        .await
        .map_err(|e| DatasetError::store(dir, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| DatasetError::Generator(format!("bad manifest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> GenerateConfig {
        GenerateConfig {
            users: 20,
            tracks: 500,
            events: 20_000,
            seed: 7,
            groups: 4,
        }
    }

    async fn run(config: &GenerateConfig) -> (Manifest, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let manifest = generate(config, &store, |_| {}).await.unwrap();
        let data = std::fs::read(dir.path().join(LISTENS_FILE)).unwrap();
        assert_eq!(read_manifest(&store).await.unwrap(), manifest);
        (manifest, data)
    }

    #[tokio::test]
    async fn same_seed_same_bytes() {
        let (m1, d1) = run(&small()).await;
        let (m2, d2) = run(&small()).await;
        assert_eq!(d1, d2);
        assert_eq!(m1, m2);
        let (_, d3) = run(&GenerateConfig { seed: 8, ..small() }).await;
        assert_ne!(d1, d3);
    }

    #[tokio::test]
    async fn counts_add_up() {
        let (m, data) = run(&small()).await;
        let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(m.lines, lines);
        assert_eq!(m.expected_clean_rows, 20_000);
        let planted: u64 = m.malformed.values().sum();
        assert_eq!(m.lines, m.expected_clean_rows + planted);
        // About 0.5 % malformed, every kind present at this size.
        assert!((50..=160).contains(&planted), "{planted}");
        assert!(m.tracks_without_mbid > 0 && m.artists > 10);
        assert_eq!(m.bytes, data.len() as u64);
    }

    #[test]
    fn plants_each_kind() {
        let good = b"user_000001\t2009-05-04T23:08:57Z\ta\tArtist\tt\tTitle\n";
        let mut rng = Rng::new(1, 1);
        for kind in MalformedKind::ALL {
            let mut out = Vec::new();
            plant(kind, good, &mut rng, &mut out);
            assert!(out.ends_with(b"\n"));
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "{kind:?}");
        }
    }
}
