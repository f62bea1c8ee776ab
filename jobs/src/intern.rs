//! A byte-string interner: every distinct value gets a dense id in first-seen order, and the
//! values are kept back to back. The clean scan interns its string fields with it (one lookup
//! per line instead of a copy per field) and the Parquet writer builds its dictionary pages with
//! it (one lookup per distinct value instead of one per row).

use std::hash::BuildHasher;

use arrow::array::StringArray;
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::error::ArrowError;
use hashbrown::{DefaultHashBuilder, HashTable};

#[derive(Debug, Default)]
pub(crate) struct Interner {
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
    bytes: Vec<u8>,
    /// Start of every value in `bytes`, plus the end of the last one.
    ends: Vec<usize>,
}

impl Interner {
    pub(crate) fn new() -> Self {
        Interner {
            ends: vec![0],
            ..Default::default()
        }
    }

    /// Number of distinct values.
    pub(crate) fn len(&self) -> usize {
        self.ends.len() - 1
    }

    /// The id of `value`; a value not seen before is added only if `accept(value)` holds,
    /// otherwise the answer is `None`.
    pub(crate) fn intern_if(
        &mut self,
        value: &[u8],
        accept: impl FnOnce(&[u8]) -> bool,
    ) -> Option<u32> {
        let Interner {
            table,
            hasher,
            bytes,
            ends,
        } = self;
        let hash = hasher.hash_one(value);
        let at = |id: u32| &bytes[ends[id as usize]..ends[id as usize + 1]];
        if let Some(&id) = table.find(hash, |&id| at(id) == value) {
            return Some(id);
        }
        if !accept(value) {
            return None;
        }
        let id = u32::try_from(ends.len() - 1).ok()?;
        bytes.extend_from_slice(value);
        ends.push(bytes.len());
        let (bytes, ends) = (&*bytes, &*ends);
        table.insert_unique(hash, id, |&id| {
            hasher.hash_one(&bytes[ends[id as usize]..ends[id as usize + 1]])
        });
        Some(id)
    }

    /// The id of `value`, added if new.
    pub(crate) fn intern(&mut self, value: &[u8]) -> u32 {
        self.intern_if(value, |_| true)
            .expect("fewer than 2^32 distinct values")
    }

    /// The values as one Arrow string array, in id order (fails on invalid UTF-8).
    pub(crate) fn to_strings(&self) -> Result<StringArray, ArrowError> {
        let offsets = self
            .ends
            .iter()
            .map(|&e| i32::try_from(e))
            .collect::<Result<Vec<i32>, _>>()
            .map_err(|_| ArrowError::ComputeError("interned values exceed 2 GiB".into()))?;
        StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from(self.bytes.as_slice()),
            None,
        )
    }

    pub(crate) fn get(&self, id: u32) -> &[u8] {
        &self.bytes[self.ends[id as usize]..self.ends[id as usize + 1]]
    }

    /// Parquet's PLAIN encoding of the values `ids` (4-byte little-endian length, bytes): the
    /// body of a dictionary page.
    pub(crate) fn plain_encoded(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 40);
        for &id in ids {
            let value = self.get(id);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_stable() {
        let mut i = Interner::new();
        assert_eq!(i.intern(b"b"), 0);
        assert_eq!(i.intern(b"a"), 1);
        assert_eq!(i.intern(b"b"), 0);
        assert_eq!(i.intern(b""), 2);
        assert_eq!(i.len(), 3);
        assert_eq!(i.intern_if(b"c", |_| false), None);
        assert_eq!(i.intern_if(b"a", |_| false), Some(1));
        assert_eq!(i.len(), 3);
        let strings = i.to_strings().unwrap();
        assert_eq!(strings.iter().flatten().collect::<Vec<_>>(), ["b", "a", ""]);
        assert_eq!(i.get(1), b"a");
        assert_eq!(
            i.plain_encoded(&[1, 2, 0]),
            b"\x01\0\0\0a\0\0\0\0\x01\0\0\0b"
        );
    }

    #[test]
    fn many_values_survive_growth() {
        let mut i = Interner::new();
        for n in 0..50_000u32 {
            assert_eq!(i.intern(n.to_string().as_bytes()), n);
        }
        for n in (0..50_000u32).rev() {
            assert_eq!(i.intern(n.to_string().as_bytes()), n);
        }
    }
}
