//! `recsys verify`: checks a live server end to end, as a pass/fail table. Every check talks
//! gRPC to the endpoint like any client; the one about logged events also reads the events store
//! when given one.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use arrow::array::AsArray;
use futures::TryStreamExt;
use recsys_catalog::text::song_terms;
use recsys_core::Store;
use recsys_core::schema::{EVENTS_DIR, col};
use recsys_proto::v1::recommend_service_client::RecommendServiceClient;
use recsys_proto::v1::{
    Action, CreateUserRequest, GetSongRequest, GetUserRequest, HomeFeedRequest, ListUsersRequest,
    ListenEvent, NextSongsRequest, Recommendations, RecordPlayRequest, SearchRequest,
    SimilarSongsRequest, Source, User,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Longest wait for a logged event to reach the events store.
const EVENT_WAIT: Duration = Duration::from_secs(30);
const PAGE: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A connection to a recommendation server.
#[derive(Clone)]
pub struct Client {
    pub endpoint: String,
    pub recs: RecommendServiceClient<Channel>,
    pub health: HealthClient<Channel>,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`), with timeouts on the connection and every call.
    pub async fn connect(endpoint: &str) -> Result<Client, VerifyError> {
        let err = |source| VerifyError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(err)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(err)?;
        Ok(Client {
            endpoint: endpoint.to_string(),
            recs: RecommendServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// The check could not run here (the reason says why).
    Skip,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

/// The verification table.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == outcome).count()
    }

    fn record(&mut self, name: &'static str, result: Result<Result<String, String>, Status>) {
        let (outcome, detail) = match result {
            Ok(Ok(detail)) => (Outcome::Pass, detail),
            Ok(Err(skipped)) => (Outcome::Skip, skipped),
            Err(status) => (
                Outcome::Fail,
                format!("{:?}: {}", status.code(), status.message()),
            ),
        };
        self.checks.push(Check {
            name,
            outcome,
            detail,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(5);
        writeln!(f, "{:<width$}  result  detail", "check")?;
        for c in &self.checks {
            let result = match c.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "SKIP",
            };
            writeln!(f, "{:<width$}  {result:<6}  {}", c.name, c.detail)?;
        }
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip)
        )
    }
}

/// A failed expectation, as a check's failure.
fn fail(reason: impl Into<String>) -> Status {
    Status::aborted(reason.into())
}

fn ensure(ok: bool, reason: impl FnOnce() -> String) -> Result<(), Status> {
    if ok { Ok(()) } else { Err(fail(reason())) }
}

fn ids(r: &Recommendations) -> Vec<String> {
    r.songs
        .iter()
        .filter_map(|s| s.song.as_ref().map(|s| s.id.clone()))
        .collect()
}

fn sources(r: &Recommendations) -> impl Iterator<Item = Source> + '_ {
    r.songs
        .iter()
        .map(|s| Source::try_from(s.source).unwrap_or(Source::Unspecified))
}

/// State shared by the checks.
struct Verifier {
    client: Client,
    /// A user with an ALS factor.
    known_user: Option<String>,
    /// Songs of the known user's feed.
    feed: Vec<String>,
    /// Whether the server has lyrics vectors (a pipeline without a lyrics source has none).
    lyrics: bool,
}

impl Verifier {
    fn recs(&self) -> RecommendServiceClient<Channel> {
        self.client.recs.clone()
    }

    async fn feed(&self, user: &str, refresh: bool) -> Result<Recommendations, Status> {
        Ok(self
            .recs()
            .home_feed(HomeFeedRequest {
                user_id: user.into(),
                limit: PAGE,
                refresh,
                exclude_heard: false,
            })
            .await?
            .into_inner())
    }

    async fn user(&self, id: &str) -> Result<User, Status> {
        Ok(self
            .recs()
            .get_user(GetUserRequest { user_id: id.into() })
            .await?
            .into_inner())
    }

    async fn create_user(&self, name: &str) -> Result<User, Status> {
        Ok(self
            .recs()
            .create_user(CreateUserRequest { name: name.into() })
            .await?
            .into_inner())
    }

    async fn health(&self) -> Result<Result<String, String>, Status> {
        let service = "recsys.v1.RecommendService";
        let status = self
            .client
            .health
            .clone()
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status;
        ensure(status == ServingStatus::Serving as i32, || {
            format!("{service} is {status}, not SERVING")
        })?;
        Ok(Ok(format!("{service} SERVING")))
    }

    async fn search(&self) -> Result<Result<String, String>, Status> {
        let cold = self.create_user("verify search").await?;
        let Some(known) = self
            .feed(&cold.id, true)
            .await?
            .songs
            .into_iter()
            .find_map(|s| s.song)
        else {
            return Ok(Err("the catalog has no songs".into()));
        };
        let query = format!("{} {}", known.title, known.artist);
        let search = |query: String, limit, skip| {
            let mut recs = self.recs();
            async move {
                Ok::<_, Status>(
                    recs.search(SearchRequest { query, limit, skip })
                        .await?
                        .into_inner(),
                )
            }
        };
        // Songs whose title and artist have the same words (the log has such duplicates) tie:
        // the known song must be among the equals ranked first.
        let found = search(query.clone(), 10, 0).await?;
        let terms = |s: &recsys_proto::v1::Song| {
            let mut t = song_terms(&s.title, &s.artist);
            t.sort_unstable();
            t
        };
        let known_terms = terms(&known);
        let same = |s: &recsys_proto::v1::Song| terms(s) == known_terms;
        let first: Vec<&String> = found
            .songs
            .iter()
            .take_while(|s| same(s))
            .map(|s| &s.id)
            .collect();
        ensure(first.contains(&&known.id), || {
            format!("`{query}` did not find {} first", known.id)
        })?;
        let all = search(known.artist.clone(), 4, 0).await?;
        let first = search(known.artist.clone(), 2, 0).await?;
        let second = search(known.artist.clone(), 2, 2).await?;
        let paged: Vec<&String> = first
            .songs
            .iter()
            .chain(&second.songs)
            .map(|s| &s.id)
            .collect();
        let whole: Vec<&String> = all.songs.iter().map(|s| &s.id).collect();
        ensure(paged == whole, || {
            format!("pages of 2 {paged:?} differ from one page of 4 {whole:?}")
        })?;
        ensure(first.has_more == (all.songs.len() > 2), || {
            format!(
                "has_more {} with {} results",
                first.has_more,
                all.songs.len()
            )
        })?;
        Ok(Ok(format!(
            "`{query}` first; `{}` pages consistently ({} results in 4)",
            known.artist,
            all.songs.len()
        )))
    }

    async fn known_user_feed(&mut self) -> Result<Result<String, String>, Status> {
        let listed = self
            .recs()
            .list_users(ListUsersRequest {
                limit: 100,
                after: String::new(),
            })
            .await?
            .into_inner()
            .users;
        let Some(user) = listed.into_iter().find(|u| u.long_term_source == "als") else {
            return Ok(Err("no listed user has an ALS factor".into()));
        };
        let mut served = Vec::new();
        let mut seen = HashSet::new();
        let mut pages = 0;
        let mut personalised = false;
        let mut page = self.feed(&user.id, true).await?;
        ensure(page.songs.len() == PAGE as usize, || {
            format!("first page has {} songs, not {PAGE}", page.songs.len())
        })?;
        loop {
            pages += 1;
            personalised |= sources(&page).any(|s| s == Source::Als);
            for id in ids(&page) {
                ensure(seen.insert(id.clone()), || {
                    format!("{id} served twice in one session")
                })?;
                served.push(id);
            }
            if !page.has_more || pages > 100 {
                break;
            }
            page = self.feed(&user.id, false).await?;
        }
        ensure(personalised, || "no page had ALS picks".into())?;
        let after = self.feed(&user.id, false).await?;
        ensure(after.songs.is_empty() && !after.has_more, || {
            format!("{} songs after the session ended", after.songs.len())
        })?;
        let restarted = self.feed(&user.id, true).await?;
        ensure(restarted.songs.len() == PAGE as usize, || {
            format!("refresh gave {} songs", restarted.songs.len())
        })?;
        self.known_user = Some(user.id.clone());
        self.feed = served;
        Ok(Ok(format!(
            "user {}: {} distinct songs in {pages} pages until the cap, then none; refresh restarts",
            user.id,
            self.feed.len()
        )))
    }

    async fn cold_user(&self) -> Result<Result<String, String>, Status> {
        let user = self.create_user("verify cold user").await?;
        ensure(user.long_term.is_empty(), || {
            "a new user has a vector".into()
        })?;
        let page = self.feed(&user.id, false).await?;
        ensure(page.songs.len() == PAGE as usize, || {
            format!("{} songs", page.songs.len())
        })?;
        ensure(sources(&page).all(|s| s == Source::Popularity), || {
            "a cold user got non-popularity picks".into()
        })?;
        Ok(Ok(format!("{PAGE} popularity picks for a new user")))
    }

    /// A song of the known user's feed whose lyrics vector exists (or not).
    async fn feed_song(&self, with_vector: bool) -> Result<Option<String>, Status> {
        for id in &self.feed {
            let detail = self
                .recs()
                .get_song(GetSongRequest {
                    song_id: id.clone(),
                    with_factor: false,
                })
                .await?
                .into_inner();
            if detail.has_lyrics_vector == with_vector {
                return Ok(Some(id.clone()));
            }
        }
        Ok(None)
    }

    async fn next_session(
        &self,
        user: &str,
        current: &str,
    ) -> Result<(Vec<Recommendations>, usize), Status> {
        let mut pages = Vec::new();
        let mut seen = HashSet::new();
        let mut refresh = true;
        loop {
            let page = self
                .recs()
                .next_songs(NextSongsRequest {
                    user_id: user.into(),
                    current_song_id: current.into(),
                    limit: PAGE,
                    refresh,
                })
                .await?
                .into_inner();
            refresh = false;
            for id in ids(&page) {
                ensure(id != current, || {
                    format!("{current} recommended after itself")
                })?;
                ensure(seen.insert(id.clone()), || {
                    format!("{id} repeated within the session")
                })?;
            }
            let more = page.has_more;
            pages.push(page);
            if !more || pages.len() > 20 {
                break;
            }
        }
        Ok((pages, seen.len()))
    }

    async fn next_songs(&self) -> Result<Result<String, String>, Status> {
        let Some(user) = &self.known_user else {
            return Ok(Err("needs the known user of the feed check".into()));
        };
        if !self.lyrics {
            return Ok(Err("no lyrics source: the server is ALS only".into()));
        }
        let Some(current) = self.feed_song(true).await? else {
            return Err(Status::failed_precondition(
                "no song of the known user's feed has a lyrics vector",
            ));
        };
        let (pages, served) = self.next_session(user, &current).await?;
        let neighbours: HashSet<String> = ids(&self
            .recs()
            .similar_songs(SimilarSongsRequest {
                song_id: current.clone(),
                limit: 500,
            })
            .await?
            .into_inner())
        .into_iter()
        .collect();
        let (mut als, mut lyrics) = (0, 0);
        for page in &pages {
            for s in &page.songs {
                let source = Source::try_from(s.source).unwrap_or(Source::Unspecified);
                let id = s.song.as_ref().map(|s| s.id.clone()).unwrap_or_default();
                if matches!(source, Source::Lyrics | Source::Hybrid) {
                    lyrics += 1;
                    ensure(neighbours.contains(&id), || {
                        format!("{id} is marked lyrics but is no lyrics neighbour of {current}")
                    })?;
                }
                if matches!(source, Source::Als | Source::Hybrid) {
                    als += 1;
                }
            }
        }
        ensure(lyrics > 0, || {
            "no lyrics neighbours: the content side is not live".into()
        })?;
        ensure(als > 0, || "no ALS neighbours of the user".into())?;
        Ok(Ok(format!(
            "after {current}: {served} distinct songs, never the current one; {als} from ALS, {lyrics} lyrics neighbours"
        )))
    }

    async fn without_lyrics(&self) -> Result<Result<String, String>, Status> {
        let Some(user) = &self.known_user else {
            return Ok(Err("needs the known user of the feed check".into()));
        };
        let Some(song) = self.feed_song(false).await? else {
            return Ok(Err(
                "every song of the feed has a lyrics vector (clean & sync keeps only those)".into(),
            ));
        };
        let (pages, served) = self.next_session(user, &song).await?;
        ensure(served > 0, || "no songs".into())?;
        ensure(
            pages.iter().all(|p| sources(p).all(|s| s == Source::Als)),
            || "picks other than ALS".into(),
        )?;
        Ok(Ok(format!(
            "after {song} (no lyrics vector): {served} ALS picks"
        )))
    }

    async fn record_play(&self) -> Result<Result<String, String>, Status> {
        let Some(user) = &self.known_user else {
            return Ok(Err("needs the known user of the feed check".into()));
        };
        let mut checked = 0;
        for song in self.feed.iter().take(2) {
            let factor = self
                .recs()
                .get_song(GetSongRequest {
                    song_id: song.clone(),
                    with_factor: true,
                })
                .await?
                .into_inner()
                .als_factor;
            let old = self.user(user).await?.short_term;
            let answered = self
                .recs()
                .record_play(RecordPlayRequest {
                    user_id: user.clone(),
                    song_id: song.clone(),
                    decay: Some(0.7),
                })
                .await?
                .into_inner()
                .short_term;
            let expected: Vec<f32> = if old.len() == factor.len() {
                old.iter()
                    .zip(&factor)
                    .map(|(o, s)| 0.7 * o + 0.3 * s)
                    .collect()
            } else {
                factor.clone()
            };
            let stored = self.user(user).await?.short_term;
            for got in [&answered, &stored] {
                ensure(
                    got.len() == expected.len()
                        && got
                            .iter()
                            .zip(&expected)
                            .all(|(a, b)| (a - b).abs() <= 1e-5),
                    || format!("short-term vector after playing {song} is not 0.7·old + 0.3·song"),
                )?;
            }
            checked += 1;
        }
        ensure(checked == 2, || "the feed has fewer than 2 songs".into())?;
        Ok(Ok(
            "short ← 0.7·short + 0.3·song factor, exactly (first play from empty, then blended)"
                .into(),
        ))
    }

    async fn fold_in(&self) -> Result<Result<String, String>, Status> {
        let user = self.create_user("verify fold-in").await?;
        for song in self.feed.iter().take(5) {
            self.recs()
                .record_play(RecordPlayRequest {
                    user_id: user.id.clone(),
                    song_id: song.clone(),
                    decay: None,
                })
                .await?;
        }
        let after = self.user(&user.id).await?;
        ensure(after.long_term_source == "fold-in", || {
            format!("long-term source is `{}`", after.long_term_source)
        })?;
        let page = self.feed(&user.id, true).await?;
        ensure(sources(&page).any(|s| s == Source::Als), || {
            "no ALS picks for the folded-in user".into()
        })?;
        Ok(Ok(
            "a new user with 5 plays gets a folded-in factor and ALS picks at once".into(),
        ))
    }

    async fn invalid_requests(&self) -> Result<Result<String, String>, Status> {
        let user = self.known_user.clone().unwrap_or_default();
        let song = self.feed.first().cloned().unwrap_or_default();
        let mut r = self.recs();
        let feed = |user_id: &str, limit| HomeFeedRequest {
            user_id: user_id.into(),
            limit,
            refresh: false,
            exclude_heard: false,
        };
        let cases: Vec<(&str, Result<(), Status>, Code, &str)> = vec![
            (
                "empty user_id",
                r.home_feed(feed("", 0)).await.map(drop),
                Code::InvalidArgument,
                "user_id",
            ),
            (
                "limit 501",
                r.home_feed(feed(&user, 501)).await.map(drop),
                Code::InvalidArgument,
                "limit",
            ),
            (
                "unknown user",
                r.home_feed(feed("no-such-user", 0)).await.map(drop),
                Code::NotFound,
                "user_id",
            ),
            (
                "unknown current song",
                r.next_songs(NextSongsRequest {
                    user_id: user.clone(),
                    current_song_id: "no-such-song".into(),
                    limit: 0,
                    refresh: false,
                })
                .await
                .map(drop),
                Code::NotFound,
                "current_song_id",
            ),
            (
                "decay 1.5",
                r.record_play(RecordPlayRequest {
                    user_id: user.clone(),
                    song_id: song.clone(),
                    decay: Some(1.5),
                })
                .await
                .map(drop),
                Code::InvalidArgument,
                "decay",
            ),
            (
                "empty query",
                r.search(SearchRequest {
                    query: " ".into(),
                    limit: 0,
                    skip: 0,
                })
                .await
                .map(drop),
                Code::InvalidArgument,
                "query",
            ),
            (
                "unknown song",
                r.get_song(GetSongRequest {
                    song_id: "no-such-song".into(),
                    with_factor: false,
                })
                .await
                .map(drop),
                Code::NotFound,
                "song_id",
            ),
            (
                "blank name",
                r.create_user(CreateUserRequest { name: "  ".into() })
                    .await
                    .map(drop),
                Code::InvalidArgument,
                "name",
            ),
            (
                "event without action",
                r.log_event(ListenEvent {
                    action: Action::Unspecified as i32,
                    ..event(&user, &song)
                })
                .await
                .map(drop),
                Code::InvalidArgument,
                "action",
            ),
        ];
        let total = cases.len();
        for (case, result, code, field) in cases {
            match result {
                Err(s) if s.code() == code && s.message().contains(field) => {}
                Err(s) => {
                    return Err(fail(format!(
                        "{case}: got {:?} `{}`, expected {code:?} naming {field}",
                        s.code(),
                        s.message()
                    )));
                }
                Ok(()) => return Err(fail(format!("{case}: accepted"))),
            }
        }
        Ok(Ok(format!(
            "{total} cases: INVALID_ARGUMENT / NOT_FOUND naming the field"
        )))
    }

    async fn logged_event(&self, events: Option<&Store>) -> Result<Result<String, String>, Status> {
        let user = format!("verify-{}", uuid::Uuid::new_v4());
        let song = self
            .feed
            .first()
            .cloned()
            .unwrap_or_else(|| "verify-song".into());
        let started = SystemTime::now() - Duration::from_secs(2);
        self.recs().log_event(event(&user, &song)).await?;
        let Some(lake) = events else {
            return Ok(Err(
                "accepted; give the lake (--data-dir or --object-store) to look for it in events/"
                    .into(),
            ));
        };
        let waited = Instant::now();
        loop {
            if let Some(file) = find_event(lake, &user, started).await? {
                return Ok(Ok(format!(
                    "{user} found in {file} after {:.1} s",
                    waited.elapsed().as_secs_f64()
                )));
            }
            if waited.elapsed() > EVENT_WAIT {
                return Err(fail(format!(
                    "{user} not in {} after {} s",
                    lake.url(EVENTS_DIR),
                    EVENT_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn event(user: &str, song: &str) -> ListenEvent {
    let now_us = recsys_core::time::now_micros();
    ListenEvent {
        user_id: user.into(),
        track_id: song.into(),
        artist_id: "verify-artist".into(),
        timestamp_us: now_us,
        action: Action::Complete as i32,
        source: "verify".into(),
        duration_s: 200.0,
        total_duration_s: 200.0,
    }
}

/// The events file written since `since` that holds an event of `user`.
async fn find_event(lake: &Store, user: &str, since: SystemTime) -> Result<Option<String>, Status> {
    let store = lake.object_store();
    let io = |e: object_store::Error| Status::unavailable(lake.error(EVENTS_DIR, e).to_string());
    let files: Vec<object_store::ObjectMeta> = store
        .list(Some(&lake.path(EVENTS_DIR)))
        .try_collect()
        .await
        .map_err(io)?;
    for meta in files {
        if SystemTime::from(meta.last_modified) < since
            || !meta.location.as_ref().ends_with(".parquet")
        {
            continue;
        }
        let file = lake.relative(meta.location.as_ref());
        let batches = crate::model::read_batches(lake, &file)
            .await
            .map_err(|e| Status::data_loss(e.to_string()))?;
        for batch in batches {
            let Some(users) = batch
                .column_by_name(col::USER_ID)
                .and_then(|c| c.as_string_opt::<i32>())
            else {
                continue;
            };
            if users.iter().any(|u| u == Some(user)) {
                return Ok(Some(file));
            }
        }
    }
    Ok(None)
}

/// Runs every check against `client`; `events` is the lake whose `events/` logged events reach;
/// `lyrics`: whether the server should have lyrics vectors (hybrid next songs are checked only
/// then, and their absence fails).
pub async fn verify(client: &Client, events: Option<&Store>, lyrics: bool) -> Report {
    let mut v = Verifier {
        client: client.clone(),
        known_user: None,
        feed: Vec::new(),
        lyrics,
    };
    let mut report = Report::default();
    report.record("health", v.health().await);
    report.record("search finds and pages", v.search().await);
    report.record("home feed of a known user", v.known_user_feed().await);
    report.record("cold user gets popularity", v.cold_user().await);
    report.record("next songs (hybrid)", v.next_songs().await);
    report.record("song without lyrics: ALS only", v.without_lyrics().await);
    report.record("record play moves short-term", v.record_play().await);
    report.record("fold-in of a new user", v.fold_in().await);
    report.record("invalid requests rejected", v.invalid_requests().await);
    report.record("logged event reaches events/", v.logged_event(events).await);
    report
}
