//! The gRPC front: `RecommendService` over a [`Recommender`], with health and reflection, and a
//! task that picks up a new `models/als/CURRENT` while requests keep flowing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use recsys_catalog::Song as CatalogSong;
use recsys_proto::v1::recommend_service_server::{RecommendService, RecommendServiceServer};
use recsys_proto::v1::{
    CreateUserRequest, GetSongRequest, GetUserRequest, HomeFeedRequest, ListUsersRequest,
    ListUsersResponse, ListenEvent, LogEventResponse, NextSongsRequest, Recommendations,
    RecommendedSong, RecordPlayRequest, RecordPlayResponse, SearchRequest, SearchResponse,
    SimilarSongsRequest, Song, SongDetail, Source, User,
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::recommender::{Listing, Recommender, UserView};
use crate::session::{self, Pick};

impl From<crate::ServeError> for Status {
    fn from(e: crate::ServeError) -> Status {
        use crate::ServeError;
        match &e {
            ServeError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            ServeError::NotFound { .. } => Status::not_found(e.to_string()),
            _ => Status::unavailable(e.to_string()),
        }
    }
}

fn song(s: CatalogSong) -> Song {
    let st = s.stats;
    Song {
        id: st.id,
        title: st.track_name,
        artist: st.artist_name,
        artist_id: st.artist_id,
        plays: st.plays,
        plays_7d: st.plays_7d,
        listeners: st.listeners,
        duration_s: st.duration_s.unwrap_or_default(),
        lyrics_status: s.lyrics.map(|l| l.status.to_string()).unwrap_or_default(),
    }
}

fn recommended((s, pick): (CatalogSong, Pick)) -> RecommendedSong {
    RecommendedSong {
        song: Some(song(s)),
        source: match pick.source {
            session::Source::Als => Source::Als,
            session::Source::Lyrics => Source::Lyrics,
            session::Source::Hybrid => Source::Hybrid,
            session::Source::Popularity => Source::Popularity,
        } as i32,
        score: pick.score,
        als_part: pick.als,
        lyrics_part: pick.lyrics,
    }
}

fn listing(l: Listing) -> Response<Recommendations> {
    Response::new(Recommendations {
        songs: l.songs.into_iter().map(recommended).collect(),
        has_more: l.has_more,
    })
}

fn user(v: UserView) -> User {
    let (long_term, source) = v.long_term.unwrap_or_default();
    User {
        id: v.user.stats.id,
        name: v.user.name.unwrap_or_default(),
        plays: v.user.stats.plays,
        distinct_tracks: v.user.stats.distinct_tracks,
        long_term,
        long_term_source: source.to_string(),
        short_term: v.short_term.unwrap_or_default(),
        model_version: v.model_version,
    }
}

/// The tonic service.
pub struct Service {
    rec: Arc<Recommender>,
}

#[tonic::async_trait]
impl RecommendService for Service {
    async fn home_feed(
        &self,
        r: Request<HomeFeedRequest>,
    ) -> Result<Response<Recommendations>, Status> {
        let r = r.into_inner();
        Ok(listing(
            self.rec
                .home_feed(&r.user_id, r.limit, r.refresh, r.exclude_heard)
                .await?,
        ))
    }

    async fn next_songs(
        &self,
        r: Request<NextSongsRequest>,
    ) -> Result<Response<Recommendations>, Status> {
        let r = r.into_inner();
        Ok(listing(
            self.rec
                .next_songs(&r.user_id, &r.current_song_id, r.limit, r.refresh)
                .await?,
        ))
    }

    async fn record_play(
        &self,
        r: Request<RecordPlayRequest>,
    ) -> Result<Response<RecordPlayResponse>, Status> {
        let r = r.into_inner();
        let (short_term, model_version) = self
            .rec
            .record_play(&r.user_id, &r.song_id, r.decay)
            .await?
            .unwrap_or_default();
        Ok(Response::new(RecordPlayResponse {
            short_term,
            model_version,
        }))
    }

    async fn similar_songs(
        &self,
        r: Request<SimilarSongsRequest>,
    ) -> Result<Response<Recommendations>, Status> {
        let r = r.into_inner();
        let songs = self.rec.similar_songs(&r.song_id, r.limit).await?;
        Ok(Response::new(Recommendations {
            songs: songs.into_iter().map(recommended).collect(),
            has_more: false,
        }))
    }

    async fn search(&self, r: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let r = r.into_inner();
        let page = self.rec.search(&r.query, r.limit, r.skip).await?;
        Ok(Response::new(SearchResponse {
            songs: page.items.into_iter().map(song).collect(),
            has_more: page.has_more,
        }))
    }

    async fn get_song(&self, r: Request<GetSongRequest>) -> Result<Response<SongDetail>, Status> {
        let r = r.into_inner();
        let (s, factor, has_lyrics_vector) = self.rec.song(&r.song_id, r.with_factor).await?;
        let lyrics = s
            .lyrics
            .as_ref()
            .and_then(|l| l.plain.clone())
            .unwrap_or_default();
        Ok(Response::new(SongDetail {
            song: Some(song(s)),
            als_factor: factor.unwrap_or_default(),
            has_lyrics_vector,
            lyrics,
        }))
    }

    async fn get_user(&self, r: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        Ok(Response::new(user(
            self.rec.user(&r.into_inner().user_id).await?,
        )))
    }

    async fn list_users(
        &self,
        r: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let r = r.into_inner();
        let users = self.rec.list_users(r.limit, &r.after).await?;
        Ok(Response::new(ListUsersResponse {
            users: users.into_iter().map(user).collect(),
        }))
    }

    async fn create_user(&self, r: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        Ok(Response::new(user(
            self.rec.create_user(&r.into_inner().name).await?,
        )))
    }

    async fn log_event(
        &self,
        r: Request<ListenEvent>,
    ) -> Result<Response<LogEventResponse>, Status> {
        self.rec.log_event(r.into_inner()).await?;
        Ok(Response::new(LogEventResponse {}))
    }
}

/// Checks `models/als/CURRENT` every `every` and swaps in a new version once it is loaded; a
/// failed load keeps the model being served (and is retried at the next check). Also checks
/// `models/STORES_CHANGED` ([`Recommender::refresh_stores`]).
pub async fn watch_models(rec: Arc<Recommender>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match rec.reload().await {
            Ok(Some(version)) => info!(%version, "hot-reloaded the ALS model"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot load the new ALS model; serving the old one"),
        }
        if let Err(e) = rec.refresh_stores().await {
            warn!(error = %e, "cannot refresh the servable songs; serving the old ones");
        }
    }
}

/// Serves `RecommendService`, health and reflection, and (HTTP/1.1 or HTTP/2 on the same port)
/// the JSON API and web player of [`crate::http`], on `listener` until `shutdown` resolves,
/// reloading the model every `reload_every`. Fails as the ingest service's server does.
pub async fn serve(
    listener: tokio::net::TcpListener,
    rec: Arc<Recommender>,
    web: crate::http::WebAssets,
    reload_every: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), recsys_ingest::server::ServeError> {
    use recsys_ingest::server::ServeError;
    let addr = listener.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<RecommendServiceServer<Service>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(recsys_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let watcher = tokio::spawn(watch_models(rec.clone(), reload_every));
    let grpc = tonic::service::Routes::new(health)
        .add_service(reflection)
        .add_service(RecommendServiceServer::new(Service { rec: rec.clone() }))
        .into_axum_router();
    let routes = crate::http::router(rec, web, grpc);
    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(
            // Small responses must not wait for Nagle's algorithm.
            tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                if let Ok(c) = &conn {
                    c.set_nodelay(true).ok();
                }
                conn
            }),
            shutdown,
        )
        .await
        .map_err(|source| ServeError::Transport { addr, source });
    watcher.abort();
    // Gone before returning: the stores it holds (an embedded catalog is one process's) close.
    watcher.await.ok();
    served
}
