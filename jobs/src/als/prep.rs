//! Preparing ALS input on the cluster, once per training: dense indexes for users and tracks, a
//! time-based train/test split per user, and the ratings shuffled into user blocks and item
//! blocks (Parquet files of `row, col, r, t`, in no order: the solver sorts a block's ratings
//! as it reads them) that every half-iteration reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use object_store::{ObjectMeta, ObjectStoreExt};
use recsys_core::Store;

use recsys_core::time::MICROS_PER_DAY;

use super::by_user::{UserRatings, UserRatingsExec};
use super::pairs::{PairFold, PairFoldExec};
use super::plays::{PlayScan, PlayScanExec};
use super::solve::BlockTask;
use super::{TrainWindow, WindowEnd, block_file};
use crate::cluster::checked_write;
use crate::etl::{FileRef, units};
pub use crate::source::ListenSource as RatingsSource;
use crate::source::footer_stats;
use crate::worklist::work_list;
use crate::write::{
    Payload, run_writes, shuffle_by, shuffle_write_plan, split_writer, write_parquet_file,
};
use crate::{Cluster, JobError};

/// What the preparation produced.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// User ids by dense index.
    pub users: Vec<String>,
    /// Track ids by dense index (tracks with at least one training play).
    pub items: Vec<String>,
    /// Items by distinct training listeners, most popular first (the popularity baseline).
    pub popularity: Vec<u32>,
    pub user_blocks: Vec<BlockTask>,
    pub item_blocks: Vec<BlockTask>,
    /// Training (user, track) pairs.
    pub nnz: u64,
    /// Listens (or events) read.
    pub listens: u64,
    /// Where the ratings came from.
    pub source: RatingsSource,
    /// The trailing window read, [since, end) in µs.
    pub window: Option<(i64, i64)>,
}

/// Cut `rows` into `blocks` contiguous ranges.
pub fn blocks(rows: usize, blocks: usize) -> Vec<BlockTask> {
    let n = blocks.clamp(1, rows.max(1));
    let size = rows.div_ceil(n).max(1);
    (0..n)
        .map(|b| BlockTask {
            block: b,
            start: (b * size).min(rows),
            rows: size.min(rows.saturating_sub(b * size)),
        })
        .filter(|t| t.rows > 0 || rows == 0)
        .collect()
}

/// The names of `count` block files, by block.
fn block_names(count: usize) -> BTreeMap<i64, String> {
    (0..count).map(|b| (b as i64, block_file(b))).collect()
}

/// Runs `plan`, a writer of one file per block of `dir`, again when it did not write
/// `expected` rows.
async fn write_blocks(
    cluster: &Cluster,
    plan: Arc<dyn ExecutionPlan>,
    dir: &str,
    expected: u64,
) -> Result<(), JobError> {
    checked_write(dir, || async {
        let written: u64 = run_writes(cluster, plan.clone())
            .await?
            .iter()
            .map(|(_, rows)| rows)
            .sum();
        Ok(if written == expected {
            Ok(())
        } else {
            Err(format!("{written} rows written, {expected} expected"))
        })
    })
    .await
}

/// Fails when `sorted` (ids with counts, sorted) holds an id twice: a job's result doubled.
fn distinct(sorted: &[(String, i64)], what: &str) -> Result<(), JobError> {
    match sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        Some(w) => Err(JobError::Invariant(format!(
            "{what} `{}` came out of its job twice (a Ballista job that lost an executor); run the training again",
            w[0].0
        ))),
        None => Ok(()),
    }
}

/// Runs the preparation jobs, writing under `work` (a folder of the lake).
pub async fn prepare(
    cluster: &Cluster,
    lake: &Store,
    work: &str,
    train_fraction: f64,
    block_count: usize,
    source: RatingsSource,
    window: Option<TrainWindow>,
) -> Result<Prepared, JobError> {
    let ctx: SessionContext = cluster.planner()?;
    let source = source.resolve(lake).await?;
    // The files listed once: the users' job and the plays' scan read the same ones.
    let files = source.files(lake).await?;
    source.register_files(&ctx, lake, "source", &files).await?;
    let events = source == RatingsSource::Events;
    let window = match window {
        Some(w) => window_bounds(cluster, lake, &ctx, &files, w).await?,
        None => None,
    };
    // Every row is a play: an event's action weighs it (see [`PlayScan`]), a skip included.
    let select = match window {
        Some((since, end)) => format!(
            "SELECT user_id FROM source \
             WHERE ts >= to_timestamp_micros({since}) AND ts < to_timestamp_micros({end})"
        ),
        None => "SELECT user_id FROM source".to_string(),
    };
    ctx.register_table("listens", ctx.sql(&select).await?.into_view())?;

    // 1. Users, by sorted id.
    let mut users: Vec<(String, i64)> = Vec::new();
    for b in cluster
        .run_df(
            ctx.sql("SELECT user_id, count(*) AS n FROM listens GROUP BY user_id")
                .await?,
        )
        .await?
    {
        let ids = b.column(0).as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        users.extend((0..b.num_rows()).map(|i| (ids.value(i).to_string(), n.value(i))));
    }
    users.sort();
    distinct(&users, "user")?;
    let listens: u64 = users.iter().map(|u| u.1 as u64).sum();
    if listens == 0 {
        return Err(nothing_to_train(0, 0, window));
    }
    // With each user's number: their dense index.
    let user_schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("u", DataType::Int32, false),
    ]));
    let user_batch = RecordBatch::try_new(
        user_schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                users.iter().map(|u| u.0.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(0..users.len() as i32)),
        ],
    )?;
    let store = lake.object_store();
    let users_path = lake.path(&format!("{work}/users.parquet"));
    write_parquet_file(
        store.clone(),
        &users_path,
        user_schema,
        vec![user_batch],
        Payload::Records,
        vec![],
    )
    .await?;
    let users_file = FileRef::from(&store.head(&users_path).await?);
    let user_blocks = blocks(users.len(), block_count);
    let user_block_size = user_blocks.first().map_or(1, |b| b.rows.max(1));

    // 2. Per (user, track): training plays (the user's earliest `train_fraction` of listens,
    //    by time, track and ties), test plays (the rest) and the plays counted, by one operator
    //    over each user block's plays ([`PairFold`]). The plays come from the files as
    //    [`PlayScan`] reads them: with their user's number and block, tracks as id hashes.
    let parallelism = cluster.parallelism().max(1);
    let plays = Arc::new(PlayScanExec::new(
        work_list(&units(files, 2 * parallelism))?,
        PlayScan {
            store_url: lake.base_url().to_string(),
            users: users_file,
            events,
            window,
            block_size: user_block_size as i64,
        },
    ));
    let pairs_dir = format!("{work}/pairs");
    let pairs_plan = split_writer(
        lake,
        Arc::new(PairFoldExec::new(
            shuffle_by(plays, "block", user_blocks.len())?,
            PairFold {
                events,
                train_fraction,
            },
        )),
        "block",
        &pairs_dir,
        block_names(user_blocks.len()),
        Payload::Runs,
    )?;
    // 3. Items: tracks with training plays, by sorted id, with their distinct listeners. The
    //    same job checks the pairs as written: their plays add up to the listens read (a file
    //    doubled or lost by a Ballista job that lost an executor would not).
    let (pairs, mut items) = checked_write(&pairs_dir, || async {
        let pairs: u64 = run_writes(cluster, pairs_plan.clone())
            .await?
            .iter()
            .map(|(_, rows)| rows)
            .sum();
        ctx.deregister_table("pairs")?;
        ctx.register_parquet(
            "pairs",
            lake.url(&format!("{pairs_dir}/")),
            ParquetReadOptions::default(),
        )
        .await?;
        let mut items: Vec<(String, i64)> = Vec::new();
        let mut plays = 0;
        for b in cluster
            .run_df(
                ctx.sql(
                    "SELECT track_id, SUM(CASE WHEN r > 0 THEN 1 ELSE 0 END) AS n, \
                            SUM(n) AS plays \
                     FROM pairs GROUP BY track_id",
                )
                .await?,
            )
            .await?
        {
            let ids = b.column(0).as_string::<i32>();
            let n = b.column(1).as_primitive::<Int64Type>();
            plays += b
                .column(2)
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .sum::<i64>() as u64;
            items.extend(
                (0..b.num_rows())
                    .filter(|&i| n.value(i) > 0)
                    .map(|i| (ids.value(i).to_string(), n.value(i))),
            );
        }
        Ok(if plays == listens {
            Ok((pairs, items))
        } else {
            Err(format!(
                "the pairs written hold {plays} plays, {listens} were read"
            ))
        })
    })
    .await?;
    items.sort();
    distinct(&items, "track")?;
    let nnz: u64 = items.iter().map(|i| i.1 as u64).sum();
    if nnz == 0 {
        return Err(nothing_to_train(listens, users.len(), window));
    }
    let item_schema = Arc::new(Schema::new(vec![
        Field::new("track_id", DataType::Utf8, false),
        Field::new("i", DataType::Int32, false),
    ]));
    let item_batch = RecordBatch::try_new(
        item_schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                items.iter().map(|i| i.0.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(0..items.len() as i32)),
        ],
    )?;
    let items_path = lake.path(&format!("{work}/items.parquet"));
    write_parquet_file(
        store.clone(),
        &items_path,
        item_schema,
        vec![item_batch],
        Payload::Records,
        vec![],
    )
    .await?;
    let item_blocks = blocks(items.len(), block_count);
    let item_block_size = item_blocks.first().map_or(1, |b| b.rows.max(1));
    let mut popularity: Vec<u32> = (0..items.len() as u32).collect();
    popularity.sort_by_key(|&i| (-items[i as usize].1, i));

    // 4. Ratings by user block (training and test pairs; map-only: the pairs already sit in
    //    user blocks, see [`UserRatings`]) and by item block (training only).
    let by_user_dir = format!("{work}/by_user");
    let pair_files: Vec<FileRef> = crate::lake::list(store.as_ref(), &lake.path(&pairs_dir))
        .await?
        .iter()
        .map(FileRef::from)
        .collect();
    let by_user = split_writer(
        lake,
        Arc::new(UserRatingsExec::new(
            work_list(&pair_files)?,
            UserRatings {
                store_url: lake.base_url().to_string(),
                items: FileRef::from(&store.head(&items_path).await?),
                block_size: user_block_size as i64,
            },
        )),
        "block",
        &by_user_dir,
        block_names(user_blocks.len()),
        // Kept: the model's history of plays ([`super::model::store`]).
        Payload::Records,
    )?;
    write_blocks(cluster, by_user, &by_user_dir, pairs).await?;
    // The by-item blocks from the by-user ones, transposed: integers only, no join (a pair
    // with training plays always has an item number).
    ctx.register_parquet(
        "by_user",
        lake.url(&format!("{by_user_dir}/")),
        ParquetReadOptions::default(),
    )
    .await?;
    let by_item = format!(
        "SELECT col AS row, row AS col, r, t, CAST(col / {item_block_size} AS BIGINT) AS block \
         FROM by_user WHERE r > 0"
    );
    let by_item_dir = format!("{work}/by_item");
    let by_item = shuffle_write_plan(
        lake,
        ctx.sql(&by_item).await?,
        "block",
        &by_item_dir,
        block_names(item_blocks.len()),
        Payload::Runs,
    )
    .await?;
    write_blocks(cluster, by_item, &by_item_dir, nnz).await?;

    Ok(Prepared {
        users: users.into_iter().map(|u| u.0).collect(),
        items: items.into_iter().map(|i| i.0).collect(),
        popularity,
        user_blocks,
        item_blocks,
        nnz,
        listens,
        source,
        window,
    })
}

fn nothing_to_train(listens: u64, users: usize, window: Option<(i64, i64)>) -> JobError {
    JobError::NoInput(format!(
        "{listens} plays of {users} users{} give no training pair: nothing to train on",
        window.map_or(String::new(), |(since, end)| format!(
            " from {} to {}",
            recsys_core::time::date_string(since),
            recsys_core::time::date_string(end - 1)
        ))
    ))
}

/// [since, end) in µs of `window` over the registered `source`, whose `files` these are
/// (`None`: no plays to end it).
async fn window_bounds(
    cluster: &Cluster,
    lake: &Store,
    ctx: &SessionContext,
    files: &[ObjectMeta],
    window: TrainWindow,
) -> Result<Option<(i64, i64)>, JobError> {
    let end = match window.end {
        WindowEnd::Now => Some(recsys_core::time::now_micros()),
        // Just after the newest play, so that it is inside: from the files' footers when they
        // tell it exactly, else a query.
        WindowEnd::NewestPlay => {
            let newest = match footer_stats(lake, files).await? {
                Some((_, newest)) => newest,
                None => newest_play(cluster, ctx).await?,
            };
            newest.map(|t| t + 1)
        }
    };
    Ok(end.map(|end| (end - window.days as i64 * MICROS_PER_DAY, end)))
}

/// The newest `ts` of the registered `source`, by a query.
async fn newest_play(cluster: &Cluster, ctx: &SessionContext) -> Result<Option<i64>, JobError> {
    let mut newest = None;
    for b in cluster
        .run_df(
            ctx.sql("SELECT CAST(max(ts) AS BIGINT) FROM source")
                .await?,
        )
        .await?
    {
        newest = newest.max(
            b.column(0)
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .max(),
        );
    }
    Ok(newest)
}

/// Removes a folder of intermediate files.
pub async fn remove(lake: &Store, dir: &str) -> Result<(), JobError> {
    // On a local lake, deleting the objects would leave the folders, and the staging file
    // (`name#N`, which no listing shows) of a write a kill -9 cut short: the folder goes as a
    // whole instead.
    let Some(root) = lake.local_dir() else {
        crate::lake::clear(lake.object_store().as_ref(), &lake.path(dir)).await?;
        return Ok(());
    };
    let folder = root.join(dir);
    match tokio::fs::remove_dir_all(&folder).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(JobError::Io {
            path: folder.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    #[tokio::test]
    async fn remove_takes_a_local_folder_with_a_cut_short_write() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let rel = "models/als/v1/users.parquet";
        lake.object_store()
            .put(&lake.path(rel), object_store::PutPayload::from_static(b"x"))
            .await
            .unwrap();
        // What a put killed before its rename leaves: invisible to listings.
        let staged = dir.path().join("models/als/v1/items.parquet#7");
        std::fs::write(&staged, b"half").unwrap();
        remove(&lake, "models/als/v1").await.unwrap();
        assert!(!dir.path().join("models/als/v1").exists());
        assert!(dir.path().join("models/als").exists());
        remove(&lake, "models/als/v1").await.unwrap();
    }

    #[test]
    fn blocks_cover_rows() {
        let b = blocks(10, 4);
        assert_eq!(b.iter().map(|t| t.rows).sum::<usize>(), 10);
        assert_eq!(
            b.iter().map(|t| (t.start, t.rows)).collect::<Vec<_>>(),
            vec![(0, 3), (3, 3), (6, 3), (9, 1)]
        );
        assert_eq!(blocks(2, 8).len(), 2);
        assert_eq!(blocks(0, 4).len(), 1);
    }
}
