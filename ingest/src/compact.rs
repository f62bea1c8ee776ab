//! Compaction of the event lake: the orchestrator's `compact` job.
//!
//! The sink writes a file per partition whenever a buffer fills, ages or changes date, so a
//! day of events can sit in hundreds of small files, and every batch job pays for each one. For
//! closed dates (before a given day), each run of consecutive files of one partition in one
//! date folder becomes one file named with the run's whole offset range ([`Period::Day`]), or
//! in one month, into `events/month=YYYY-MM/` ([`Period::Month`]: for logs with few events a
//! day, where each day is one small file already). Readers take an event's date from its
//! timestamp, never from the folder.
//!
//! Crash safety comes from the names, not from a log: the new file is written with one atomic
//! `put` before its inputs are deleted, and from then on its range covers theirs. Every reader
//! (the sink's chain, the counts job, the batch jobs' event table) leaves a covered file out
//! (see [`recsys_core::event_files`]), so a kill between the write and the deletes loses and
//! doubles nothing; the next run deletes the covered files it finds first.

use arrow::array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use recsys_core::Store;
use recsys_core::event_files::{chains, file_name};
use recsys_core::schema::{EVENTS_DIR, event_schema};
use recsys_core::time::{MICROS_PER_DAY, date_string};

use crate::counts::{CountsError, read};
use crate::sink::{encode, topic_files};

/// What a compaction may merge.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Dates before this day (days since 1970-01-01) are closed; later ones are left alone.
    /// `None`: every date but the newest one holding events (replayed data, where the wall
    /// clock says nothing).
    pub closed_before: Option<i64>,
    /// A run of fewer files is not worth a rewrite.
    pub min_files: usize,
    /// Offsets one compacted file may span at most (bounds its size and the memory a run takes).
    pub max_offsets: i64,
    /// What one compacted file holds at most besides: a day or a month.
    pub period: Period,
}

/// What one compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Files written, each replacing a run.
    pub written: usize,
    /// Files they replaced (deleted).
    pub replaced: usize,
    /// Events in the files written.
    pub events: u64,
    /// Covered files left by an earlier, interrupted run, deleted first.
    pub leftovers: usize,
}

/// How much of a partition one compacted file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Period {
    /// A date: files stay in their `date=YYYY-MM-DD/` folder. Fits a live system, whose sink
    /// writes many files a day.
    #[default]
    Day,
    /// A calendar month, into `month=YYYY-MM/`: for logs with few events a day (replayed
    /// history, a small service), where a day is one small file already.
    Month,
}

/// Files of one partition to merge into one folder: the folder, and the files with their
/// (first, last) offsets.
type Run = (String, Vec<(Path, (i64, i64))>);

/// The folder a file sits in.
fn folder(path: &Path) -> Option<String> {
    let parts: Vec<_> = path.parts().collect();
    Some(parts.get(parts.len().checked_sub(2)?)?.as_ref().to_string())
}

/// The folder a file of `folder` goes to when compacted by `period`; `None` when it is not one
/// the period merges (or not closed: a date at or after `cutoff`, `date=…` as well).
fn target(folder: &str, period: Period, cutoff: &str) -> Option<String> {
    if let Some(date) = folder.strip_prefix("date=") {
        if folder >= cutoff {
            return None;
        }
        return Some(match period {
            Period::Day => folder.to_string(),
            Period::Month => format!("month={}", date.get(..7)?),
        });
    }
    // A month file was made of closed dates.
    (period == Period::Month && folder.starts_with("month=")).then(|| folder.to_string())
}

pub(crate) async fn delete(store: &Store, path: &Path) -> Result<(), CountsError> {
    store
        .object_store()
        .delete(path)
        .await
        .map_err(|e| CountsError::Write {
            location: store.url(&store.relative(path.as_ref())),
            reason: format!("deleting: {e}"),
        })
}

/// Compacts the closed dates of `topic`'s event files (see the module docs).
pub async fn compact(
    store: &Store,
    topic: &str,
    options: CompactOptions,
) -> Result<Compacted, CountsError> {
    let files = topic_files(store, topic).await?;
    let cutoff = match options.closed_before {
        Some(day) => format!("date={}", date_string(day * MICROS_PER_DAY)),
        None => files
            .iter()
            .filter_map(|(path, _)| folder(path).filter(|f| f.starts_with("date=")))
            .max()
            .unwrap_or_default(),
    };
    let min_files = options.min_files.max(2);
    let mut done = Compacted::default();
    for (partition, chain) in chains(files) {
        for path in &chain.covered {
            tracing::info!(file = %path, "deleting an event file a compacted file covers");
            delete(store, path).await?;
            done.leftovers += 1;
        }
        let mut runs: Vec<Run> = Vec::new();
        for (path, (first, last)) in chain.files {
            let Some(date) = folder(&path).and_then(|f| target(&f, options.period, &cutoff)) else {
                runs.push((String::new(), Vec::new()));
                continue;
            };
            let extends = runs.last().is_some_and(|(d, files)| {
                *d == date
                    && files
                        .first()
                        .is_some_and(|(_, (start, _))| last - start < options.max_offsets)
            });
            if !extends {
                runs.push((date, Vec::new()));
            }
            let run = runs.last_mut().expect("a run was pushed");
            run.1.push((path, (first, last)));
        }
        for (date, files) in runs {
            if files.len() >= min_files {
                done.events += merge(store, topic, partition, &date, &files).await?;
                done.written += 1;
                done.replaced += files.len();
            }
        }
    }
    Ok(done)
}

/// Writes `files` (a run of one partition) as one file in `folder`, then deletes them; returns
/// the events written.
async fn merge(
    store: &Store,
    topic: &str,
    partition: i32,
    into: &str,
    files: &[(Path, (i64, i64))],
) -> Result<u64, CountsError> {
    let first = files[0].1.0;
    let last = files[files.len() - 1].1.1;
    // Owned paths and store: a stream over borrowed ones is not `Send` for every lifetime.
    let paths: Vec<Path> = files.iter().map(|(path, _)| path.clone()).collect();
    let reader = store.clone();
    let schema = event_schema();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let batches: Vec<Vec<RecordBatch>> = futures::stream::iter(paths)
        .map(move |path| {
            let (store, columns) = (reader.clone(), columns.clone());
            async move {
                let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
                read(&store, &path, &columns).await
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    let batches: Vec<RecordBatch> = batches.into_iter().flatten().collect();
    let events: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let rel = format!(
        "{EVENTS_DIR}/{into}/{}",
        file_name(topic, partition, first, last)
    );
    let location = store.url(&rel);
    let bytes = encode(&batches, &location).map_err(|e| CountsError::Write {
        location: location.clone(),
        reason: e.to_string(),
    })?;
    store
        .object_store()
        .put(&store.path(&rel), PutPayload::from(bytes))
        .await
        .map_err(|e| CountsError::Write {
            location: location.clone(),
            reason: e.to_string(),
        })?;
    for (path, _) in files {
        delete(store, path).await?;
    }
    tracing::debug!(file = %location, inputs = files.len(), events, "compacted");
    Ok(events as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::counts::{Anchor, aggregate, counted, totals};
    use crate::event::{Action, Event, EventBuilder};
    use crate::sink::{FlushPolicy, Sink, check_coverage};

    const DAY: i64 = 14_000;

    /// Events `offsets` of partition 0, a tenth of them skips, on `day`.
    fn batch(offsets: std::ops::Range<i64>, day: i64) -> RecordBatch {
        let mut b = EventBuilder::default();
        for o in offsets {
            let e = Event {
                user_id: format!("u{}", o % 7),
                track_id: format!("t{}", o % 5),
                artist_id: "a".into(),
                timestamp: day * MICROS_PER_DAY + o,
                action: if o % 10 == 0 {
                    Action::Skip
                } else {
                    Action::Listen
                },
                source: "test".into(),
                duration_s: 1.0,
                total_duration_s: 2.0,
            };
            b.push(&e, 0, o);
        }
        b.finish()
    }

    async fn event_files(store: &Store) -> Vec<(Path, (i32, i64, i64))> {
        let mut files = topic_files(store, "t").await.unwrap();
        files.sort_by_key(|(_, range)| *range);
        files
    }

    /// Writes `runs` (offsets, day) through a sink flushing every 10 events.
    async fn write(store: &Store, runs: &[(std::ops::Range<i64>, i64)]) {
        let policy = FlushPolicy {
            rows: 10,
            interval: Duration::from_secs(60),
            in_flight: 1,
        };
        let mut sink = Sink::open(store.clone(), "t", policy).await.unwrap();
        sink.reload(&[0]).await.unwrap();
        for (offsets, day) in runs {
            for from in offsets.clone().step_by(10) {
                let to = (from + 10).min(offsets.end);
                sink.push(0, batch(from..to, DAY + day)).await.unwrap();
            }
        }
        sink.flush_all().await.unwrap();
    }

    fn lake() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        (dir, store)
    }

    fn options() -> CompactOptions {
        CompactOptions {
            closed_before: Some(DAY + 2),
            min_files: 8,
            max_offsets: 1_000_000,
            period: Period::Day,
        }
    }

    async fn plays(store: &Store) -> i64 {
        let totals = totals(store, "t", Anchor::NewestEvent, 0).await.unwrap();
        totals.tracks.values().map(|c| c.plays).sum()
    }

    /// A partition's aggregate files merge into one once there are enough: totals and what is
    /// counted stay the same, also when a kill left the inputs beside the merged file (the next
    /// merge deletes them), and later runs count on from the merged file's end.
    #[tokio::test]
    async fn aggregates_merge_without_changing_totals() {
        use crate::counts::{DAILY_DIR, merge_aggregates};
        let (_dir, store) = lake();
        for run in 0..5 {
            write(&store, &[(run * 50..(run + 1) * 50, run)]).await;
            aggregate(&store, "t").await.unwrap();
        }
        let aggregates = || async {
            let listed: Vec<_> = store
                .object_store()
                .list(Some(&store.path(DAILY_DIR)))
                .try_collect()
                .await
                .unwrap();
            listed.into_iter().map(|o| o.location).collect::<Vec<_>>()
        };
        let inputs = aggregates().await;
        assert_eq!(inputs.len(), 5);
        let (plays_before, counted_before) =
            (plays(&store).await, counted(&store, "t").await.unwrap());
        assert_eq!((plays_before, counted_before), (225, 250));
        assert_eq!(
            merge_aggregates(&store, "t", 8).await.unwrap(),
            0,
            "5 files: left alone"
        );

        let mut kept = Vec::new();
        for path in &inputs {
            let bytes = store
                .object_store()
                .get(path)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            kept.push((path.clone(), bytes));
        }
        assert_eq!(merge_aggregates(&store, "t", 5).await.unwrap(), 5);
        assert_eq!(aggregates().await.len(), 1);
        assert_eq!(plays(&store).await, plays_before);
        assert_eq!(counted(&store, "t").await.unwrap(), counted_before);
        // As if killed between the merged file's write and the deletes.
        for (path, bytes) in kept {
            store
                .object_store()
                .put(&path, PutPayload::from(bytes))
                .await
                .unwrap();
        }
        assert_eq!(plays(&store).await, plays_before);
        assert_eq!(counted(&store, "t").await.unwrap(), counted_before);

        write(&store, &[(250..300, 5)]).await;
        let a = aggregate(&store, "t").await.unwrap();
        assert_eq!((a.events, a.plays), (50, 45));
        assert_eq!(merge_aggregates(&store, "t", 8).await.unwrap(), 0);
        assert_eq!(
            aggregates().await.len(),
            2,
            "the leftovers deleted, the new file kept"
        );
        assert_eq!(plays(&store).await, plays_before + 45);
        assert_eq!(counted(&store, "t").await.unwrap(), 300);
    }

    /// The users of new events reach the hook before the aggregate file is written: a hook that
    /// fails leaves the events uncounted, and the next run gives it the same users again.
    #[tokio::test]
    async fn users_of_new_events_are_seen_before_their_checkpoint() {
        let (_dir, store) = lake();
        write(&store, &[(0..50, 0)]).await;
        let err = crate::counts::aggregate_with_users(&store, "t", |_| async {
            Err("catalog down".to_string())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("catalog down"), "{err}");
        assert_eq!(counted(&store, "t").await.unwrap(), 0);

        let mut seen = BTreeMap::new();
        let done = crate::counts::aggregate_with_users(&store, "t", |users| {
            seen.extend(users);
            async { Ok(()) }
        })
        .await
        .unwrap();
        assert_eq!((done.events, done.users), (50, 7));
        let at = |o: i64| (DAY) * MICROS_PER_DAY + o;
        // u3: offsets 3, 10, …, 45.
        assert_eq!(
            seen["u3"],
            crate::counts::Seen {
                first_us: at(3),
                last_us: at(45)
            }
        );
        assert_eq!(seen.len(), 7);
    }

    /// Three days of 100 events, in files of 10; days 0 and 1 are closed. The counts job ran
    /// after the first half of day 0, so day 0's compacted file straddles its checkpoint.
    #[tokio::test]
    async fn closed_dates_become_one_file_each_and_every_event_is_counted_once() {
        let (_dir, store) = lake();
        write(&store, &[(0..50, 0)]).await;
        assert_eq!(aggregate(&store, "t").await.unwrap().events, 50);
        write(&store, &[(50..100, 0), (100..200, 1), (200..300, 2)]).await;
        assert_eq!(event_files(&store).await.len(), 30);

        let done = compact(&store, "t", options()).await.unwrap();
        assert_eq!(
            done,
            Compacted {
                written: 2,
                replaced: 20,
                events: 200,
                leftovers: 0
            }
        );
        let files = event_files(&store).await;
        let ranges: Vec<_> = files.iter().map(|(_, r)| *r).collect();
        assert_eq!(ranges[..2], [(0, 0, 99), (0, 100, 199)]);
        assert_eq!(files.len(), 12, "the open day is left alone");
        assert_eq!(
            check_coverage(&store, "t").await.unwrap(),
            BTreeMap::from([(0, 300)])
        );
        let newest_open = CompactOptions {
            closed_before: None,
            ..options()
        };
        assert_eq!(
            compact(&store, "t", newest_open).await.unwrap(),
            Compacted::default(),
            "a second run finds nothing worth doing, and the newest date is open"
        );

        // Offsets 50..300 are new to the counts job: 250 events, every tenth a skip.
        let counted = aggregate(&store, "t").await.unwrap();
        assert_eq!((counted.events, counted.plays), (250, 225));
        assert_eq!(plays(&store).await, 270);
    }

    /// By month, the closed days of a month become one file in `month=…/`; a later run merges
    /// that file with the month's days closed since.
    #[tokio::test]
    async fn by_month_closed_days_of_a_month_become_one_file() {
        let (_dir, store) = lake();
        write(&store, &[(0..100, 0), (100..200, 1), (200..300, 2)]).await;
        let month = CompactOptions {
            period: Period::Month,
            ..options()
        };
        let done = compact(&store, "t", month).await.unwrap();
        assert_eq!((done.written, done.replaced, done.events), (1, 20, 200));
        let files = event_files(&store).await;
        assert_eq!(files[0].1, (0, 0, 199));
        assert_eq!(folder(&files[0].0).unwrap(), "month=2008-05");
        let later = CompactOptions {
            closed_before: Some(DAY + 3),
            ..month
        };
        let done = compact(&store, "t", later).await.unwrap();
        assert_eq!((done.written, done.replaced, done.events), (1, 11, 300));
        assert_eq!(event_files(&store).await.len(), 1);
        assert_eq!(
            check_coverage(&store, "t").await.unwrap(),
            BTreeMap::from([(0, 300)])
        );
        let counted = aggregate(&store, "t").await.unwrap();
        assert_eq!((counted.events, counted.plays), (300, 270));
    }

    /// A kill between the write and the deletes leaves the inputs beside the compacted file:
    /// nothing reads them twice, and the next run deletes them.
    #[tokio::test]
    async fn inputs_left_by_an_interrupted_run_are_ignored_then_deleted() {
        let (_dir, store) = lake();
        write(&store, &[(0..100, 0), (100..200, 1), (200..300, 2)]).await;
        let (input, _) = event_files(&store).await.remove(3);
        let bytes = store
            .object_store()
            .get(&input)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        compact(&store, "t", options()).await.unwrap();
        store
            .object_store()
            .put(&input, PutPayload::from(bytes))
            .await
            .unwrap();

        assert_eq!(
            check_coverage(&store, "t").await.unwrap(),
            BTreeMap::from([(0, 300)])
        );
        let counted = aggregate(&store, "t").await.unwrap();
        assert_eq!((counted.files, counted.events), (12, 300));
        let mut sink = Sink::open(
            store.clone(),
            "t",
            FlushPolicy {
                rows: 10,
                interval: Duration::from_secs(60),
                in_flight: 1,
            },
        )
        .await
        .unwrap();
        sink.reload(&[0]).await.unwrap();
        assert_eq!(
            sink.next_offset(0),
            300,
            "the sink's chain ends where it did"
        );
        assert!(
            store.object_store().head(&input).await.is_ok(),
            "a covered file is not beyond a gap: the sink leaves it"
        );

        let done = compact(&store, "t", options()).await.unwrap();
        assert_eq!((done.leftovers, done.written), (1, 0));
        assert_eq!(event_files(&store).await.len(), 12);
    }
}
