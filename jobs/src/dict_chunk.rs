//! Parquet column chunks written straight from Arrow string dictionaries.
//!
//! parquet-rs dictionary-encodes a string column by hashing and comparing every row's bytes,
//! also when its input already is an Arrow dictionary (about a quarter of the clean job's time).
//! This encoder maps each Arrow dictionary *entry* to an id once, on its first use (the only
//! hash of its string), and every row after that is two array lookups. It writes what
//! parquet-rs writes for such a column: a PLAIN dictionary page and `RLE_DICTIONARY` data pages
//! of bit-packed ids, compressed with the column's codec, plus the chunk's offset index.
//! Statistics are not computed (the lake's string columns have none, see
//! [`recsys_core::encoding::lake_columns`]).
//!
//! Only required (non-nullable) `Dictionary(UInt32, Utf8)` columns written with zstd or without
//! compression take this path ([`DictColumn::for_column`]); every other column goes through
//! parquet-rs.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray};
use arrow::datatypes::{DataType, UInt32Type};
use bytes::Bytes;
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;
use zstd::bulk::Compressor;

use crate::intern::Interner;

/// One dictionary column of a file being written. Each distinct string gets a file-wide id the
/// first time an Arrow dictionary entry holding it is used; each row group numbers the ids it
/// uses again, densely, for its own dictionary page.
pub(crate) struct DictColumn {
    column: ColumnDescPtr,
    /// The column's codec: none, or zstd with its compressor.
    compression: Compression,
    zstd: Option<Compressor<'static>>,
    /// Rows per data page.
    page_rows: usize,
    /// The file's distinct strings so far.
    strings: Interner,
    /// The Arrow dictionary seen last, and the file-wide id of each of its entries
    /// (`u32::MAX`: not used yet). Batches sliced or sorted from one array share it.
    seen: Option<(ArrayRef, Vec<u32>)>,
    /// File-wide id → id in the current row group's dictionary (`u32::MAX`: not in it).
    local: Vec<u32>,
    /// The current row group's dictionary, as file-wide ids.
    dictionary: Vec<u32>,
    /// The current row group's rows, as its dictionary's ids.
    ids: Vec<u32>,
}

/// A page of `buf`, compressed with `zstd` when there is one.
fn compressed_page(
    zstd: &mut Option<Compressor<'static>>,
    buf: Vec<u8>,
    page: impl FnOnce(Bytes) -> Page,
) -> Result<CompressedPage> {
    let size = buf.len();
    let buf = match zstd {
        Some(z) => z
            .compress(&buf)
            .map_err(|e| ParquetError::External(Box::new(e)))?,
        None => buf,
    };
    Ok(CompressedPage::new(page(Bytes::from(buf)), size))
}

impl DictColumn {
    /// The encoder for a column of `data_type` (as written) with this descriptor and
    /// properties, if it takes this path: a required `Dictionary(UInt32, Utf8)` column written
    /// with zstd or without compression.
    pub(crate) fn for_column(
        data_type: &DataType,
        column: &ColumnDescPtr,
        props: &WriterProperties,
    ) -> Option<Self> {
        let dictionary = matches!(data_type, DataType::Dictionary(k, v)
            if **k == DataType::UInt32 && **v == DataType::Utf8);
        if !dictionary || column.max_def_level() > 0 || column.max_rep_level() > 0 {
            return None;
        }
        let compression = props.compression(column.path());
        let zstd = match compression {
            Compression::UNCOMPRESSED => None,
            Compression::ZSTD(level) => Some(Compressor::new(level.compression_level()).ok()?),
            _ => return None,
        };
        Some(DictColumn {
            column: column.clone(),
            compression,
            zstd,
            page_rows: props.data_page_row_count_limit().max(1),
            strings: Interner::new(),
            seen: None,
            local: Vec::new(),
            dictionary: Vec::new(),
            ids: Vec::new(),
        })
    }

    /// Appends the rows of `array`, a `Dictionary(UInt32, Utf8)` without nulls, to the current
    /// row group.
    pub(crate) fn push(&mut self, array: &dyn Array) -> Result<()> {
        let array: &DictionaryArray<UInt32Type> = array.as_dictionary_opt().ok_or_else(|| {
            ParquetError::General(format!(
                "expected a Dictionary(UInt32, Utf8) column, got {}",
                array.data_type()
            ))
        })?;
        let values = array.values();
        if array.null_count() > 0 || values.null_count() > 0 {
            return Err(ParquetError::General(
                "a required dictionary column has nulls".into(),
            ));
        }
        let strings = values.as_string_opt::<i32>().ok_or_else(|| {
            ParquetError::General(format!(
                "dictionary values must be Utf8, got {}",
                values.data_type()
            ))
        })?;
        let seen =
            |(v, _): &(ArrayRef, Vec<u32>)| std::ptr::addr_eq(Arc::as_ptr(v), Arc::as_ptr(values));
        if !self.seen.as_ref().is_some_and(seen) {
            self.seen = Some((values.clone(), vec![u32::MAX; values.len()]));
        }
        let (_, file_ids) = self.seen.as_mut().expect("set above");
        self.ids.reserve(array.len());
        for &key in array.keys().values() {
            let slot = &mut file_ids[key as usize];
            if *slot == u32::MAX {
                *slot = self.strings.intern(strings.value(key as usize).as_bytes());
                if self.local.len() < self.strings.len() {
                    self.local.resize(self.strings.len(), u32::MAX);
                }
            }
            let local = &mut self.local[*slot as usize];
            if *local == u32::MAX {
                *local = self.dictionary.len() as u32;
                self.dictionary.push(*slot);
            }
            self.ids.push(*local);
        }
        Ok(())
    }

    /// Encodes the current row group's column chunk, and starts the next one: the chunk's
    /// bytes (offsets relative to their start) and what
    /// `SerializedRowGroupWriter::append_column` needs to splice them into the file.
    pub(crate) fn finish_chunk(&mut self) -> Result<(Bytes, ColumnCloseResult)> {
        for &id in &self.dictionary {
            self.local[id as usize] = u32::MAX;
        }
        let dictionary = std::mem::take(&mut self.dictionary);
        let ids = std::mem::take(&mut self.ids);
        let page_rows = self.page_rows;
        let mut sink = TrackedWrite::new(Vec::new());
        let mut pages = SerializedPageWriter::new(&mut sink);
        let dictionary_page = pages.write_page(compressed_page(
            &mut self.zstd,
            self.strings.plain_encoded(&dictionary),
            |buf| Page::DictionaryPage {
                buf,
                num_values: dictionary.len() as u32,
                encoding: Encoding::PLAIN,
                is_sorted: false,
            },
        )?)?;
        let mut compressed = dictionary_page.compressed_size as i64;
        let mut uncompressed = dictionary_page.uncompressed_size as i64;
        // Bit width of the largest id; at least 1, so a one-entry dictionary packs zeros.
        let width = (u32::BITS - (dictionary.len().max(2) as u32 - 1).leading_zeros()) as u8;
        let mut locations = Vec::with_capacity(ids.len().div_ceil(page_rows));
        for (i, ids) in ids.chunks(page_rows).enumerate() {
            let mut buf = Vec::with_capacity(8 + ids.len() * width as usize / 8 + 8);
            buf.push(width);
            bit_pack(ids, width, &mut buf);
            let spec = pages.write_page(compressed_page(&mut self.zstd, buf, |buf| {
                Page::DataPage {
                    buf,
                    num_values: ids.len() as u32,
                    encoding: Encoding::RLE_DICTIONARY,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    statistics: None,
                }
            })?)?;
            compressed += spec.compressed_size as i64;
            uncompressed += spec.uncompressed_size as i64;
            locations.push(PageLocation {
                offset: spec.offset as i64,
                compressed_page_size: spec.compressed_size as i32,
                first_row_index: (i * page_rows) as i64,
            });
        }
        pages.close()?;
        let first_data_page = locations.first().map_or(compressed, |l| l.offset);
        let metadata = ColumnChunkMetaData::builder(self.column.clone())
            .set_compression_codec(self.compression.into())
            .set_encodings(vec![
                Encoding::PLAIN,
                Encoding::RLE,
                Encoding::RLE_DICTIONARY,
            ])
            .set_num_values(ids.len() as i64)
            .set_total_compressed_size(compressed)
            .set_total_uncompressed_size(uncompressed)
            .set_dictionary_page_offset(Some(dictionary_page.offset as i64))
            .set_data_page_offset(first_data_page)
            .build()?;
        let bytes = Bytes::from(sink.into_inner()?);
        Ok((
            bytes,
            ColumnCloseResult {
                bytes_written: compressed as u64,
                rows_written: ids.len() as u64,
                metadata,
                bloom_filter: None,
                column_index: None,
                offset_index: Some(OffsetIndexMetaData {
                    page_locations: locations,
                    unencoded_byte_array_data_bytes: None,
                }),
            },
        ))
    }
}

/// Appends `ids` as one bit-packed run of Parquet's RLE/bit-packing hybrid encoding: the run
/// header (ULEB128 of groups of 8 values << 1 | 1), then the values `width` bits each, least
/// significant bit first, the last group padded with zeros.
fn bit_pack(ids: &[u32], width: u8, out: &mut Vec<u8>) {
    let groups = ids.len().div_ceil(8);
    let mut header = ((groups as u64) << 1) | 1;
    loop {
        let byte = (header & 0x7f) as u8;
        header >>= 7;
        if header == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    let mut acc = 0u64;
    let mut bits = 0u32;
    let padding = groups * 8 - ids.len();
    for &id in ids.iter().chain(std::iter::repeat_n(&0, padding)) {
        acc |= (id as u64) << bits;
        bits += width as u32;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    debug_assert_eq!(bits, 0, "8 values of any width fill whole bytes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_packing_matches_the_spec_example() {
        // The Parquet spec's example: 0..=7 at width 3 is 10001000 11000110 11111010.
        let mut out = Vec::new();
        bit_pack(&[0, 1, 2, 3, 4, 5, 6, 7], 3, &mut out);
        assert_eq!(out, [0b11, 0b1000_1000, 0b1100_0110, 0b1111_1010]);
        // 9 values: two groups, the second padded.
        let mut out = Vec::new();
        bit_pack(&[1; 9], 1, &mut out);
        assert_eq!(out, [0b101, 0xff, 0x01]);
        // 1000 groups need a two-byte header.
        let mut out = Vec::new();
        bit_pack(&[0; 8000], 1, &mut out);
        assert_eq!(&out[..2], [0xd1, 0x0f]);
        assert_eq!(out.len(), 2 + 1000);
    }
}
