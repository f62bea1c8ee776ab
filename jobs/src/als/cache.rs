//! An executor-wide cache of immutable ALS inputs (ratings blocks, factor matrices), so the
//! tasks of later iterations that land on the same executor skip reading and decoding them.
//! Keys are object paths that are written once per training (they contain the model version
//! and the iteration), so an entry can never be stale; the cache only bounds memory (LRU).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};

use datafusion::error::Result;

/// Memory the cache may hold, per executor process.
const LIMIT_BYTES: usize = 1 << 30;

struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

/// The value cached under `key`, or the one `load` produces (then cached, `size` bytes).
pub async fn get_or_load<T, F>(key: &str, size: impl Fn(&T) -> usize, load: F) -> Result<Arc<T>>
where
    T: Send + Sync + 'static,
    F: Future<Output = Result<T>>,
{
    {
        let mut cache = CACHE.lock().expect("cache lock");
        cache.clock += 1;
        let clock = cache.clock;
        if let Some(entry) = cache.entries.get_mut(key) {
            entry.used = clock;
            if let Ok(value) = entry.value.clone().downcast::<T>() {
                return Ok(value);
            }
        }
    }
    let value = Arc::new(load.await?);
    let bytes = size(&value);
    let mut cache = CACHE.lock().expect("cache lock");
    while cache.bytes + bytes > LIMIT_BYTES && !cache.entries.is_empty() {
        let oldest = cache
            .entries
            .iter()
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| k.clone())
            .expect("non-empty");
        if let Some(e) = cache.entries.remove(&oldest) {
            cache.bytes -= e.bytes;
        }
    }
    if bytes <= LIMIT_BYTES {
        cache.clock += 1;
        let used = cache.clock;
        cache.bytes += bytes;
        if let Some(old) = cache.entries.insert(
            key.to_string(),
            Entry {
                value: value.clone(),
                bytes,
                used,
            },
        ) {
            cache.bytes -= old.bytes;
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loads_once_per_key() {
        let loads = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..3 {
            let v = get_or_load("cache-test-key", |v: &Vec<u8>| v.len(), async {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(vec![1u8; 10])
            })
            .await
            .unwrap();
            assert_eq!(v.len(), 10);
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
