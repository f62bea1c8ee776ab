//! Names of the event files and the chains they form: the one reading of `events/` that the
//! sink, the counts job, compaction and the batch jobs share.
//!
//! A file `events/date=YYYY-MM-DD/<topic>-p<partition>-<first>-<last>.parquet` holds a
//! contiguous run of one partition's offsets. Per partition, the *chain* is the run of files whose
//! ranges follow each other without a gap from the lowest offset. Compaction writes one file
//! over a run of files before deleting them, so for a moment (or after a crash, until the next
//! compaction) both exist: a file whose range lies inside the chain already is *covered*, and
//! every reader leaves it out. Files that start past a gap were never acknowledged by a sink
//! (it crashed with later writes in flight) and are deleted when a sink takes the partition over.

use std::collections::BTreeMap;

/// (partition, first offset, last offset) of an event file.
pub type FileRange = (i32, i64, i64);

/// `<topic>-p<partition>-<first>-<last>.parquet`, zero-padded so names sort by offset.
pub fn file_name(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{topic}-p{partition:04}-{first:020}-{last:020}.parquet")
}

/// (topic, partition, first, last) of an event file's name; `None` for any other name.
pub fn parse_any(name: &str) -> Option<(&str, i32, i64, i64)> {
    let rest = name.strip_suffix(".parquet")?;
    let mut parts = rest.rsplitn(4, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let partition = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let topic = parts.next()?;
    Some((topic, partition, first, last))
}

/// (partition, first, last) of an event file of `topic`.
pub fn parse_file_name(topic: &str, name: &str) -> Option<(i32, i64, i64)> {
    match parse_any(name)? {
        (t, partition, first, last) if t == topic => Some((partition, first, last)),
        _ => None,
    }
}

/// One partition's files, sorted out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain<T> {
    /// The last offset of the gap-free chain.
    pub end: i64,
    /// The chain's files in offset order, with their (first, last) offsets.
    pub files: Vec<(T, (i64, i64))>,
    /// Files whose range a chain file holds already (the inputs of a compaction).
    pub covered: Vec<T>,
    /// Files past a gap (or overlapping the chain's end): never acknowledged.
    pub beyond_gap: Vec<T>,
}

/// Sorts `files` ((partition, first, last) each) into one [`Chain`] per partition. Among files
/// starting at the same offset the longest range is taken, so a compacted file wins over its
/// inputs.
pub fn chains<T>(mut files: Vec<(T, FileRange)>) -> BTreeMap<i32, Chain<T>> {
    files.sort_by_key(|(_, (p, first, last))| (*p, *first, std::cmp::Reverse(*last)));
    let mut chains: BTreeMap<i32, Chain<T>> = BTreeMap::new();
    for (item, (partition, first, last)) in files {
        let chain = chains.entry(partition).or_insert(Chain {
            end: first - 1,
            files: Vec::new(),
            covered: Vec::new(),
            beyond_gap: Vec::new(),
        });
        if !chain.beyond_gap.is_empty() {
            chain.beyond_gap.push(item);
        } else if first == chain.end + 1 {
            chain.end = last;
            chain.files.push((item, (first, last)));
        } else if last <= chain.end {
            chain.covered.push(item);
        } else {
            chain.beyond_gap.push(item);
        }
    }
    chains
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let a = file_name("music-log", 3, 0, 99);
        let b = file_name("music-log", 3, 100, 1_000);
        assert!(a < b);
        assert_eq!(parse_file_name("music-log", &b), Some((3, 100, 1_000)));
        assert_eq!(parse_any(&a), Some(("music-log", 3, 0, 99)));
        assert_eq!(parse_file_name("music", &a), None);
        assert_eq!(parse_any("part-0.parquet"), None);
    }

    #[test]
    fn chains_skip_covered_files_and_stop_at_gaps() {
        let files = vec![
            ("a", (0, 0, 9)),
            ("b", (0, 10, 19)),
            ("ab", (0, 0, 19)),
            ("c", (0, 20, 29)),
            ("gap", (0, 40, 49)),
            ("after", (0, 50, 59)),
            ("x", (1, 5, 9)),
        ];
        let chains = chains(files);
        let chain = &chains[&0];
        assert_eq!(chain.end, 29);
        let names: Vec<_> = chain.files.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["ab", "c"]);
        assert_eq!(chain.covered, ["a", "b"]);
        assert_eq!(chain.beyond_gap, ["gap", "after"]);
        assert_eq!(chains[&1].end, 9, "a chain starts at the lowest offset");
    }
}
