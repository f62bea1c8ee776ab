//! The JSON API under `/api/v1` and the web player, on the same listener as gRPC.
//!
//! Every operation is a row of [`ROUTES`]: the router is built from the table and so is the
//! OpenAPI document (`/api/v1/openapi.json`), so the two cannot drift apart. Requests are checked
//! before they reach a store: an unknown query parameter or one that is not a number is a 400, a
//! value out of range a 422, an unknown id a 404, a body over [`BODY_LIMIT`] a 413; every error
//! is `{"error": {"code", "message", "field"}}` and none is a 500. gRPC requests (content type
//! `application/grpc`) that match no service still get a gRPC status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, RawPathParamsRejection};
use axum::extract::{DefaultBodyLimit, RawPathParams, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use recsys_catalog::Song;
use recsys_ingest::Action;
use recsys_proto::v1::ListenEvent;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::recommender::{Listing, Recommender, UserView};
use crate::session::{FEED, NEXT_SONGS, Pick};
use crate::{ServeError, status};

/// Largest request body accepted (an event or a new profile is well under 1 KiB).
pub const BODY_LIMIT: usize = 16 * 1024;

/// The operations of the JSON API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    OpenApi,
    Status,
    LossChart,
    ListUsers,
    CreateUser,
    GetUser,
    DeleteUser,
    Feed,
    Next,
    RecordPlay,
    Search,
    GetSong,
    Similar,
    LogEvent,
}

/// What a parameter holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Text,
    Int { min: u32, max: u32, default: u32 },
    Bool,
    Number { min: f32, max: f32 },
}

/// One parameter of a route; `path` ones are in the route's path.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub path: bool,
    pub required: bool,
    pub kind: Kind,
    pub doc: &'static str,
}

/// One operation: method, path (axum and OpenAPI spell parameters alike: `{user_id}`), what it
/// takes and answers.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub op: Op,
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    /// The request body's schema.
    pub body: Option<&'static str>,
    /// Success status and the response schema (`None`: no JSON body).
    pub ok: (u16, Option<&'static str>),
    /// Error statuses the operation can answer besides 400 (malformed input) and 503.
    pub errors: &'static [u16],
}

const fn path(name: &'static str, doc: &'static str) -> Param {
    Param {
        name,
        path: true,
        required: true,
        kind: Kind::Text,
        doc,
    }
}

const fn int(name: &'static str, min: u32, max: u32, default: u32, doc: &'static str) -> Param {
    Param {
        name,
        path: false,
        required: false,
        kind: Kind::Int { min, max, default },
        doc,
    }
}

const fn flag(name: &'static str, doc: &'static str) -> Param {
    Param {
        name,
        path: false,
        required: false,
        kind: Kind::Bool,
        doc,
    }
}

const USER: Param = path("user_id", "The listener's id.");
const SONG: Param = path("song_id", "The song's id.");
const REFRESH: Param = flag(
    "refresh",
    "Start a new session: forget the songs this session already served.",
);

/// The API, in the order the OpenAPI document lists it.
pub const ROUTES: &[Route] = &[
    Route {
        op: Op::Health,
        method: "get",
        path: "/api/v1/health",
        summary: "Liveness, and the model version being served.",
        params: &[],
        body: None,
        ok: (200, Some("Health")),
        errors: &[],
    },
    Route {
        op: Op::OpenApi,
        method: "get",
        path: "/api/v1/openapi.json",
        summary: "This document.",
        params: &[],
        body: None,
        ok: (200, Some("OpenApi")),
        errors: &[],
    },
    Route {
        op: Op::Status,
        method: "get",
        path: "/api/v1/status",
        summary: "For operators: the model (version, metrics against popularity), catalog counts and lyrics coverage.",
        params: &[],
        body: None,
        ok: (200, Some("Status")),
        errors: &[],
    },
    Route {
        op: Op::LossChart,
        method: "get",
        path: "/api/v1/models/current/loss.svg",
        summary: "The training loss and seconds per iteration of the model being served (SVG).",
        params: &[],
        body: None,
        ok: (200, None),
        errors: &[404],
    },
    Route {
        op: Op::ListUsers,
        method: "get",
        path: "/api/v1/users",
        summary: "Users by id, a page at a time (\"who is listening?\").",
        params: &[
            int("limit", 1, 200, 20, "Users per page."),
            Param {
                name: "after",
                path: false,
                required: false,
                kind: Kind::Text,
                doc: "Continue after this user id (the last one of the previous page).",
            },
        ],
        body: None,
        ok: (200, Some("UserPage")),
        errors: &[422],
    },
    Route {
        op: Op::CreateUser,
        method: "post",
        path: "/api/v1/users",
        summary: "Adds a profile with a new id.",
        params: &[],
        body: Some("NewUser"),
        ok: (201, Some("UserReply")),
        errors: &[413, 422],
    },
    Route {
        op: Op::GetUser,
        method: "get",
        path: "/api/v1/users/{user_id}",
        summary: "One user.",
        params: &[USER],
        body: None,
        ok: (200, Some("UserReply")),
        errors: &[404],
    },
    Route {
        op: Op::DeleteUser,
        method: "delete",
        path: "/api/v1/users/{user_id}",
        summary: "Removes a user and their sessions (their logged events stay).",
        params: &[USER],
        body: None,
        ok: (204, None),
        errors: &[404],
    },
    Route {
        op: Op::Feed,
        method: "get",
        path: "/api/v1/users/{user_id}/feed",
        summary: "The home feed (\"Recommended for you\"): a page of the session's queue, never a song twice.",
        params: &[
            USER,
            int("limit", 1, FEED.cap as u32, 20, "Songs in this page."),
            REFRESH,
            flag("exclude_heard", "Leave out songs the user has played."),
        ],
        body: None,
        ok: (200, Some("Listing")),
        errors: &[404, 422],
    },
    Route {
        op: Op::Next,
        method: "get",
        path: "/api/v1/users/{user_id}/next/{song_id}",
        summary: "What to play after the current song: ALS and lyrics neighbours fused, with each part of the score.",
        params: &[
            USER,
            SONG,
            int("limit", 1, NEXT_SONGS.cap as u32, 15, "Songs in this page."),
            REFRESH,
        ],
        body: None,
        ok: (200, Some("Listing")),
        errors: &[404, 422],
    },
    Route {
        op: Op::RecordPlay,
        method: "post",
        path: "/api/v1/users/{user_id}/plays/{song_id}",
        summary: "Records that the user listened to the song for 30 s: updates their short-term taste.",
        params: &[
            USER,
            SONG,
            Param {
                name: "decay",
                path: false,
                required: false,
                kind: Kind::Number {
                    min: 0.0,
                    max: 0.999,
                },
                doc: "Weight of the old short-term vector (default 0.7).",
            },
        ],
        body: None,
        ok: (200, Some("PlayRecorded")),
        errors: &[404, 422],
    },
    Route {
        op: Op::Search,
        method: "get",
        path: "/api/v1/search",
        summary: "Songs whose title or artist match every word of the query.",
        params: &[
            Param {
                name: "query",
                path: false,
                required: true,
                kind: Kind::Text,
                doc: "Words to look for.",
            },
            int("limit", 1, 100, 20, "Songs in this page."),
            int("skip", 0, 10_000, 0, "Songs to skip (earlier pages)."),
        ],
        body: None,
        ok: (200, Some("SearchPage")),
        errors: &[422],
    },
    Route {
        op: Op::GetSong,
        method: "get",
        path: "/api/v1/songs/{song_id}",
        summary: "One song, with its lyrics when known.",
        params: &[SONG],
        body: None,
        ok: (200, Some("SongDetail")),
        errors: &[404],
    },
    Route {
        op: Op::Similar,
        method: "get",
        path: "/api/v1/songs/{song_id}/similar",
        summary: "Songs with the nearest lyrics.",
        params: &[SONG, int("limit", 1, 100, 10, "Songs to return.")],
        body: None,
        ok: (200, Some("Listing")),
        errors: &[404, 422],
    },
    Route {
        op: Op::LogEvent,
        method: "post",
        path: "/api/v1/events",
        summary: "Logs a listen, skip or complete into the event log the models learn from (the contract of gRPC LogEvent). Takes any content type, so navigator.sendBeacon works.",
        params: &[],
        body: Some("Event"),
        ok: (202, Some("Logged")),
        errors: &[413, 422],
    },
];

/// An error of the JSON API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn on(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    fn bad(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message).on(field)
    }

    fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message).on(field)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> ApiError {
        match e {
            ServeError::Invalid { field, reason } => {
                ApiError::invalid(field, format!("{field}: {reason}"))
            }
            ServeError::NotFound { what, id } => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} `{id}` not found"),
            )
            .on(what),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                other.to_string(),
            ),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        match s.code() {
            tonic::Code::InvalidArgument => {
                let field = s.message().split_once(':').map(|(f, _)| f.to_string());
                ApiError {
                    field,
                    ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", s.message())
                }
            }
            _ => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                s.message().to_string(),
            ),
        }
    }
}

/// A request's query parameters, checked against its route.
struct Params<'r> {
    route: &'r Route,
    values: HashMap<String, String>,
}

impl<'r> Params<'r> {
    fn parse(route: &'r Route, query: Option<&str>) -> Result<Params<'r>, ApiError> {
        let mut values = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !route.params.iter().any(|p| !p.path && p.name == k) {
                return Err(ApiError::bad(&k, format!("unknown parameter `{k}`")));
            }
            if values.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::bad(&k, format!("parameter `{k}` given twice")));
            }
        }
        for p in route.params.iter().filter(|p| !p.path && p.required) {
            if !values.contains_key(p.name) {
                return Err(ApiError::invalid(
                    p.name,
                    format!("`{}` is required", p.name),
                ));
            }
        }
        Ok(Params { route, values })
    }

    fn spec(&self, name: &str) -> &Param {
        self.route
            .params
            .iter()
            .find(|p| p.name == name)
            .expect("a parameter of the route")
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn int(&self, name: &str) -> Result<u32, ApiError> {
        let Kind::Int { min, max, default } = self.spec(name).kind else {
            unreachable!("{name} is not an integer parameter")
        };
        let Some(raw) = self.text(name) else {
            return Ok(default);
        };
        let n: u32 = raw
            .parse()
            .map_err(|_| ApiError::bad(name, format!("{name}: `{raw}` is not a whole number")))?;
        if !(min..=max).contains(&n) {
            return Err(ApiError::invalid(
                name,
                format!("{name}: {n} is not in {min}..={max}"),
            ));
        }
        Ok(n)
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.text(name) {
            None => Ok(false),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(ApiError::bad(
                name,
                format!("{name}: `{other}` is not true or false"),
            )),
        }
    }

    fn number(&self, name: &str) -> Result<Option<f32>, ApiError> {
        let Kind::Number { min, max } = self.spec(name).kind else {
            unreachable!("{name} is not a number parameter")
        };
        let Some(raw) = self.text(name) else {
            return Ok(None);
        };
        let x: f32 = raw
            .parse()
            .ok()
            .filter(|x: &f32| x.is_finite())
            .ok_or_else(|| ApiError::bad(name, format!("{name}: `{raw}` is not a number")))?;
        if !(min..=max).contains(&x) {
            return Err(ApiError::invalid(
                name,
                format!("{name}: {x} is not in [{min}, {max}]"),
            ));
        }
        Ok(Some(x))
    }
}

/// The body as JSON of type `T`: not JSON → 400, the wrong shape → 422 naming the field.
fn body<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {BODY_LIMIT} bytes"),
            )
        } else {
            ApiError::bad("body", e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let message = e.to_string();
        if e.is_data() {
            // serde names the field between backticks ("missing field `name`").
            let field = message.split('`').nth(1).unwrap_or("body").to_string();
            ApiError::invalid(&field, message)
        } else {
            ApiError::bad("body", format!("not JSON: {message}"))
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
}

/// A listening event as JSON: the fields of `recsys.v1.ListenEvent`, the time in milliseconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    user_id: String,
    track_id: String,
    artist_id: String,
    action: String,
    /// Milliseconds since the epoch; now when absent.
    timestamp_ms: Option<i64>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    duration_s: f64,
    #[serde(default)]
    total_duration_s: f64,
}

impl EventBody {
    fn message(self) -> Result<ListenEvent, ApiError> {
        use recsys_proto::v1::Action as Proto;
        let action = match self.action.parse::<Action>() {
            Ok(Action::Listen) => Proto::Listen,
            Ok(Action::Complete) => Proto::Complete,
            Ok(Action::Skip) => Proto::Skip,
            Err(e) => return Err(ApiError::invalid("action", e.to_string())),
        };
        let timestamp_ms = self.timestamp_ms.unwrap_or_else(recsys_catalog::now_ms);
        Ok(ListenEvent {
            user_id: self.user_id,
            track_id: self.track_id,
            artist_id: self.artist_id,
            timestamp_us: timestamp_ms.saturating_mul(1000),
            action: action as i32,
            source: self.source.unwrap_or_else(|| "app".into()),
            duration_s: self.duration_s,
            total_duration_s: self.total_duration_s,
        })
    }
}

fn song(s: &Song) -> Value {
    let st = &s.stats;
    json!({
        "id": st.id,
        "title": st.track_name,
        "artist": st.artist_name,
        "artist_id": st.artist_id,
        "plays": st.plays,
        "plays_7d": st.plays_7d,
        "listeners": st.listeners,
        "duration_s": st.duration_s,
        "lyrics_status": s.lyrics.as_ref().map(|l| l.status.as_str()),
    })
}

fn recommended((s, pick): &(Song, Pick)) -> Value {
    let mut v = song(s);
    v["source"] = json!(pick.source);
    v["score"] = json!(pick.score);
    if pick.als.is_some() || pick.lyrics.is_some() {
        v["why"] = json!({"als": pick.als, "lyrics": pick.lyrics});
    }
    v
}

fn listing(l: &Listing) -> Value {
    json!({
        "songs": l.songs.iter().map(recommended).collect::<Vec<_>>(),
        "has_more": l.has_more,
    })
}

fn user(v: &UserView) -> Value {
    let st = &v.user.stats;
    json!({
        "id": st.id,
        "name": v.user.name,
        "plays": st.plays,
        "distinct_tracks": st.distinct_tracks,
        "long_term": v.long_term.as_ref().map(|(_, source)| *source),
        "short_term": v.short_term.is_some(),
        "model_version": v.model_version,
    })
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// Files of the web player. Embedded in the binary; `dir` serves them from disk instead (while
/// editing them).
#[derive(Debug, Clone, Default)]
pub struct WebAssets {
    pub dir: Option<PathBuf>,
}

/// `(name, content type, embedded text)` of every file the player loads.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "status.html",
        "text/html; charset=utf-8",
        include_str!("../web/status.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/api.js"),
    ),
    (
        "player.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/player.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "status.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/status.js"),
    ),
];

impl WebAssets {
    async fn file(&self, name: &str) -> Response {
        let Some((name, kind, embedded)) = FILES.iter().find(|(n, _, _)| *n == name) else {
            return (StatusCode::NOT_FOUND, "no such file").into_response();
        };
        let text = match &self.dir {
            Some(dir) => match tokio::fs::read_to_string(dir.join(name)).await {
                Ok(t) => t,
                Err(e) => {
                    let message = format!("{}: {e}", dir.join(name).display());
                    return (StatusCode::NOT_FOUND, message).into_response();
                }
            },
            None => embedded.to_string(),
        };
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            text,
        )
            .into_response()
    }
}

struct Api {
    rec: Arc<Recommender>,
    web: WebAssets,
}

async fn dispatch(
    api: &Api,
    route: &Route,
    path: Result<RawPathParams, RawPathParamsRejection>,
    query: Option<String>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let path: HashMap<String, String> = match path {
        Ok(p) => p
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        Err(RawPathParamsRejection::InvalidUtf8InPathParam(e)) => {
            return Err(ApiError::bad("path", e.body_text()));
        }
        Err(_) => HashMap::new(),
    };
    let id = |name: &str| path.get(name).map(String::as_str).unwrap_or_default();
    let q = Params::parse(route, query.as_deref())?;
    let rec = &api.rec;
    Ok(match route.op {
        Op::Health => ok(json!({
            "status": "serving",
            "model_version": rec.model().map(|m| m.version.clone()),
        })),
        Op::OpenApi => ok(openapi()),
        Op::Status => ok(status::report(rec).await),
        Op::LossChart => match status::loss_chart(rec).await? {
            Some(svg) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("image/svg+xml"),
                )],
                svg,
            )
                .into_response(),
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no model is being served",
                ));
            }
        },
        Op::ListUsers => {
            let limit = q.int("limit")?;
            let mut users = rec
                .list_users(limit + 1, q.text("after").unwrap_or(""))
                .await?;
            let has_more = users.len() > limit as usize;
            users.truncate(limit as usize);
            ok(json!({"users": users.iter().map(user).collect::<Vec<_>>(), "has_more": has_more}))
        }
        Op::CreateUser => {
            let new: NewUser = body(payload)?;
            let created = rec.create_user(&new.name).await?;
            (
                StatusCode::CREATED,
                axum::Json(json!({"user": user(&created)})),
            )
                .into_response()
        }
        Op::GetUser => ok(json!({"user": user(&rec.user(id("user_id")).await?)})),
        Op::DeleteUser => {
            rec.delete_user(id("user_id")).await?;
            StatusCode::NO_CONTENT.into_response()
        }
        Op::Feed => ok(listing(
            &rec.home_feed(
                id("user_id"),
                q.int("limit")?,
                q.flag("refresh")?,
                q.flag("exclude_heard")?,
            )
            .await?,
        )),
        Op::Next => ok(listing(
            &rec.next_songs(
                id("user_id"),
                id("song_id"),
                q.int("limit")?,
                q.flag("refresh")?,
            )
            .await?,
        )),
        Op::RecordPlay => {
            let updated = rec
                .record_play(id("user_id"), id("song_id"), q.number("decay")?)
                .await?;
            ok(json!({
                "recorded": true,
                "short_term_updated": updated.is_some(),
                "model_version": updated.map(|(_, v)| v),
            }))
        }
        Op::Search => {
            let (limit, skip) = (q.int("limit")?, q.int("skip")?);
            let page = rec
                .search(q.text("query").unwrap_or_default(), limit, skip)
                .await?;
            ok(json!({
                "songs": page.items.iter().map(song).collect::<Vec<_>>(),
                "has_more": page.has_more,
                "limit": limit,
                "skip": skip,
            }))
        }
        Op::GetSong => {
            let (s, _, has_vector) = rec.song(id("song_id"), false).await?;
            ok(json!({
                "song": song(&s),
                "lyrics": s.lyrics.as_ref().and_then(|l| l.plain.clone()),
                "has_lyrics_vector": has_vector,
            }))
        }
        Op::Similar => {
            let songs = rec.similar_songs(id("song_id"), q.int("limit")?).await?;
            ok(
                json!({"songs": songs.iter().map(recommended).collect::<Vec<_>>(), "has_more": false}),
            )
        }
        Op::LogEvent => {
            let event: EventBody = body(payload)?;
            rec.log_event(event.message()?).await?;
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"status": "logged"})),
            )
                .into_response()
        }
    })
}

fn method_router(route: &'static Route) -> MethodRouter<Arc<Api>> {
    let filter = match route.method {
        "get" => MethodFilter::GET,
        "post" => MethodFilter::POST,
        "delete" => MethodFilter::DELETE,
        other => unreachable!("method {other} in ROUTES"),
    };
    on(
        filter,
        move |State(api): State<Arc<Api>>,
              path: Result<RawPathParams, RawPathParamsRejection>,
              RawQuery(query): RawQuery,
              payload: Result<Bytes, BytesRejection>| async move {
            dispatch(&api, route, path, query, payload)
                .await
                .unwrap_or_else(IntoResponse::into_response)
        },
    )
}

/// Requests no route takes: gRPC ones get gRPC's `UNIMPLEMENTED`, API ones a JSON 404, others
/// a plain 404.
async fn no_route(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    if uri.path().starts_with("/api/") {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no route {method} {}", uri.path()),
        )
        .into_response();
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
    .into_response()
}

/// The JSON API and the web player, with `grpc` (tonic's routes) ahead of them.
pub fn router(rec: Arc<Recommender>, web: WebAssets, grpc: Router) -> Router {
    let mut api = Router::new();
    for route in ROUTES {
        api = api.route(route.path, method_router(route));
    }
    let page = |name: &'static str| {
        axum::routing::get(
            move |State(api): State<Arc<Api>>| async move { api.web.file(name).await },
        )
    };
    let api = api
        .route("/", page("index.html"))
        .route("/status", page("status.html"))
        .route(
            "/web/{file}",
            axum::routing::get(
                |State(api): State<Arc<Api>>,
                 axum::extract::Path(file): axum::extract::Path<String>| async move {
                    api.web.file(&file).await
                },
            ),
        )
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Arc::new(Api { rec, web }));
    grpc.fallback_service(api)
}

fn param_schema(p: &Param) -> Value {
    match p.kind {
        Kind::Text => json!({"type": "string"}),
        Kind::Int { min, max, default } => {
            json!({"type": "integer", "minimum": min, "maximum": max, "default": default})
        }
        Kind::Bool => json!({"type": "boolean", "default": false}),
        Kind::Number { min, max } => json!({"type": "number", "minimum": min, "maximum": max}),
    }
}

fn reply(description: &str, schema: Option<&str>) -> Value {
    match schema {
        Some(s) => json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}},
        }),
        None => json!({"description": description}),
    }
}

/// The OpenAPI 3.1 document of [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": if p.path { "path" } else { "query" },
                    "required": p.required,
                    "description": p.doc,
                    "schema": param_schema(p),
                })
            })
            .collect();
        let mut responses = serde_json::Map::new();
        let (ok, schema) = r.ok;
        responses.insert(ok.to_string(), reply("Success.", schema));
        for code in r.errors.iter().chain(&[400, 503]) {
            let what = StatusCode::from_u16(*code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            responses.insert(code.to_string(), reply(what, Some("Error")));
        }
        let mut op = json!({
            "operationId": format!("{:?}", r.op),
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
        });
        if let Some(b) = r.body {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}},
            });
        }
        paths
            .entry(r.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item")
            .insert(r.method.to_string(), op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "recsys",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Music recommendations: the JSON side of recsys serve (the same listener also speaks gRPC, recsys.v1.RecommendService).",
        },
        "paths": paths,
        "components": {"schemas": schemas()},
    })
}

fn schemas() -> Value {
    let string = json!({"type": "string"});
    let nullable = |t: &str| json!({"type": [t, "null"]});
    let song = json!({
        "type": "object",
        "required": ["id", "title", "artist", "artist_id", "plays", "plays_7d", "listeners"],
        "properties": {
            "id": string, "title": string, "artist": string, "artist_id": string,
            "plays": {"type": "integer"}, "plays_7d": {"type": "integer"},
            "listeners": {"type": "integer"}, "duration_s": nullable("number"),
            "lyrics_status": nullable("string"),
        },
    });
    let recommended = json!({
        "allOf": [{"$ref": "#/components/schemas/Song"}, {
            "type": "object",
            "required": ["source", "score"],
            "properties": {
                "source": {"enum": ["als", "lyrics", "hybrid", "popularity"]},
                "score": {"type": "number"},
                "why": {
                    "type": "object",
                    "description": "The weighted ALS and lyrics parts of a fused score (null: that side did not propose the song).",
                    "properties": {"als": nullable("number"), "lyrics": nullable("number")},
                },
            },
        }],
    });
    let user = json!({
        "type": "object",
        "required": ["id", "plays", "distinct_tracks", "short_term", "model_version"],
        "properties": {
            "id": string, "name": nullable("string"), "plays": {"type": "integer"},
            "distinct_tracks": {"type": "integer"},
            "long_term": {"enum": ["als", "fold-in", null]},
            "short_term": {"type": "boolean"}, "model_version": string,
        },
    });
    let list = |items: &str| json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{items}")}});
    json!({
        "Song": song,
        "RecommendedSong": recommended,
        "User": user,
        "Listing": {"type": "object", "required": ["songs", "has_more"],
            "properties": {"songs": list("RecommendedSong"), "has_more": {"type": "boolean"}}},
        "SearchPage": {"type": "object", "required": ["songs", "has_more", "limit", "skip"],
            "properties": {"songs": list("Song"), "has_more": {"type": "boolean"},
                "limit": {"type": "integer"}, "skip": {"type": "integer"}}},
        "SongDetail": {"type": "object", "required": ["song", "has_lyrics_vector"],
            "properties": {"song": {"$ref": "#/components/schemas/Song"},
                "lyrics": nullable("string"), "has_lyrics_vector": {"type": "boolean"}}},
        "UserPage": {"type": "object", "required": ["users", "has_more"],
            "properties": {"users": list("User"), "has_more": {"type": "boolean"}}},
        "UserReply": {"type": "object", "required": ["user"],
            "properties": {"user": {"$ref": "#/components/schemas/User"}}},
        "NewUser": {"type": "object", "required": ["name"], "additionalProperties": false,
            "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200}}},
        "PlayRecorded": {"type": "object", "required": ["recorded", "short_term_updated"],
            "properties": {"recorded": {"type": "boolean"}, "short_term_updated": {"type": "boolean"},
                "model_version": nullable("string")}},
        "Event": {"type": "object", "additionalProperties": false,
            "required": ["user_id", "track_id", "artist_id", "action"],
            "properties": {"user_id": string, "track_id": string, "artist_id": string,
                "action": {"enum": ["listen", "complete", "skip"]},
                "timestamp_ms": {"type": "integer", "description": "Milliseconds since the epoch; now when absent."},
                "source": {"type": "string", "default": "app"},
                "duration_s": {"type": "number", "minimum": 0},
                "total_duration_s": {"type": "number", "minimum": 0}}},
        "Logged": {"type": "object", "properties": {"status": {"const": "logged"}}},
        "Health": {"type": "object", "properties": {"status": string, "model_version": nullable("string")}},
        "Status": {"type": "object", "description": "model, catalog, lyrics and the orchestrator's jobs for operators"},
        "OpenApi": {"type": "object"},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": string, "message": string, "field": nullable("string")}}}},
    })
}
