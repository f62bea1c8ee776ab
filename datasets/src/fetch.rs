//! `recsys data fetch`: downloads Òscar Celma's Last.fm-1K archive, verifies it (gzip CRC, tar
//! structure, the listening log present with its published line count) and unpacks the TSV files
//! into the lake's `raw/` folder.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use futures::StreamExt;
use object_store::{ObjectStoreExt, WriteMultipart};
use recsys_core::Store;
use tokio::io::AsyncWriteExt;

use crate::DatasetError;
use crate::generate::LISTENS_FILE;

/// The public address of the archive (~642 MB).
pub const LASTFM_1K_URL: &str =
    "http://mtg.upf.edu/static/datasets/last.fm/lastfm-dataset-1K.tar.gz";
/// Lines of `userid-timestamp-artid-artname-traid-traname.tsv`, as published with the dataset.
pub const LASTFM_1K_LINES: u64 = 19_150_868;
const PROFILE_FILE: &str = "userid-profile.tsv";

#[derive(Debug, Clone)]
pub struct FetchSummary {
    pub downloaded_bytes: u64,
    pub files: Vec<(String, u64)>,
    pub lines: u64,
}

/// Downloads `url`, verifies it and writes the TSV files into `out`. `progress(done, total)` is
/// called as bytes arrive.
pub async fn fetch(
    url: &str,
    out: &Store,
    progress: impl Fn(u64, Option<u64>),
) -> Result<FetchSummary, DatasetError> {
    let download_err = |reason: String| DatasetError::Download {
        url: url.to_string(),
        reason,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("recsys/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| download_err(e.to_string()))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| download_err(error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(download_err(format!("HTTP {}", response.status())));
    }
    let total = response.content_length();
    let scratch =
        tempfile::tempdir().map_err(|e| download_err(format!("no scratch folder: {e}")))?;
    let archive_path = scratch.path().join("lastfm-1k.tar.gz");
    let mut file = tokio::fs::File::create(&archive_path)
        .await
        .map_err(|e| download_err(format!("cannot write {}: {e}", archive_path.display())))?;
    let mut body = response.bytes_stream();
    let mut done = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| download_err(error_chain(&e)))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| download_err(e.to_string()))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    file.flush()
        .await
        .map_err(|e| download_err(e.to_string()))?;
    if let Some(total) = total.filter(|&t| t != done) {
        return Err(download_err(format!("got {done} of {total} bytes")));
    }

    // Unpack and verify off the async runtime (gzip and tar are blocking).
    let unpack_dir = scratch.path().join("unpacked");
    let verify_url = url.to_string();
    let (files, lines) =
        tokio::task::spawn_blocking(move || unpack(&archive_path, &unpack_dir, &verify_url))
            .await
            .map_err(|e| DatasetError::Generator(e.to_string()))??;

    let store = out.object_store();
    for (name, local, _) in &files {
        let upload = store
            .put_multipart(&out.path(name))
            .await
            .map_err(|e| DatasetError::store(out, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 16 << 20);
        let mut reader =
            std::fs::File::open(local).map_err(|e| DatasetError::Generator(e.to_string()))?;
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| DatasetError::Generator(e.to_string()))?;
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| DatasetError::store(out, e))?;
            writer.write(&buf[..n]);
        }
        writer
            .finish()
            .await
            .map_err(|e| DatasetError::store(out, e))?;
    }
    Ok(FetchSummary {
        downloaded_bytes: done,
        files: files.into_iter().map(|(n, _, s)| (n, s)).collect(),
        lines,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

type Unpacked = (Vec<(String, std::path::PathBuf, u64)>, u64);

/// Extracts the `.tsv` members; fails unless the listening log is there with its known length.
fn unpack(
    archive: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
) -> Result<Unpacked, DatasetError> {
    let bad = |reason: String| DatasetError::Verify {
        url: url.to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    let file = std::fs::File::open(archive).map_err(|e| bad(e.to_string()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut files = Vec::new();
    let mut lines = None;
    for entry in tar
        .entries()
        .map_err(|e| bad(format!("not a tar.gz: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("corrupt archive: {e}")))?;
        let name = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        if name != LISTENS_FILE && name != PROFILE_FILE {
            continue;
        }
        let local = dir.join(&name);
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&local).map_err(|e| bad(e.to_string()))?);
        let mut reader = BufReader::with_capacity(1 << 20, &mut entry);
        let (mut size, mut count) = (0u64, 0u64);
        loop {
            let buf = reader
                .fill_buf()
                .map_err(|e| bad(format!("corrupt archive (gzip CRC or truncation): {e}")))?;
            if buf.is_empty() {
                break;
            }
            count += memchr::memchr_iter(b'\n', buf).count() as u64;
            out.write_all(buf).map_err(|e| bad(e.to_string()))?;
            let n = buf.len();
            size += n as u64;
            reader.consume(n);
        }
        out.flush().map_err(|e| bad(e.to_string()))?;
        if name == LISTENS_FILE {
            lines = Some(count);
        }
        files.push((name, local, size));
    }
    match lines {
        None => Err(bad(format!("{LISTENS_FILE} is missing"))),
        Some(n) if n != LASTFM_1K_LINES => Err(bad(format!(
            "{LISTENS_FILE} has {n} lines, expected {LASTFM_1K_LINES}"
        ))),
        Some(n) => Ok((files, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_url_fails_fast_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        // A closed local port: refused at once, like an offline machine.
        let url = "http://127.0.0.1:9/lastfm-dataset-1K.tar.gz";
        let started = std::time::Instant::now();
        let err = fetch(url, &store, |_, _| {}).await.unwrap_err().to_string();
        assert!(err.contains(url), "{err}");
        assert!(err.contains("recsys data generate"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(15));
    }

    #[test]
    fn rejects_archives_without_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&archive).unwrap(),
                flate2::Compression::fast(),
            );
            let mut tar = tar::Builder::new(gz);
            let data = b"user_000001\tm\t\t\t\n";
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_cksum();
            tar.append_data(
                &mut header,
                "lastfm-dataset-1K/userid-profile.tsv",
                &data[..],
            )
            .unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        let err = unpack(&archive, &dir.path().join("out"), "http://x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is missing"), "{err}");
    }
}
