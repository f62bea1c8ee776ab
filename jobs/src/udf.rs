//! The project's SQL functions. They travel to executors by name, so every process registers
//! them through [`crate::registry`].

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, StringArray, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, UInt32Type};
use datafusion::common::plan_err;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use recsys_core::ids;

/// `recsys_track_id(track_mbid, artist_name, track_name)`: the MBID, or the stable derived id when
/// the MBID is empty or null (rule in [`recsys_core::ids`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TrackIdUdf {
    signature: Signature,
}

/// `recsys_artist_id(artist_mbid, artist_name)`: the MBID, or the stable derived id.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ArtistIdUdf {
    signature: Signature,
}

pub const TRACK_ID: &str = "recsys_track_id";
pub const ARTIST_ID: &str = "recsys_artist_id";

/// Every project UDF, in one list for the registry.
pub fn all() -> Vec<Arc<ScalarUDF>> {
    vec![
        // Any string types: dictionaries must arrive uncast to take the per-entry path.
        Arc::new(ScalarUDF::from(TrackIdUdf {
            signature: Signature::any(3, Volatility::Immutable),
        })),
        Arc::new(ScalarUDF::from(ArtistIdUdf {
            signature: Signature::any(2, Volatility::Immutable),
        })),
    ]
}

fn dictionary_of_strings() -> DataType {
    DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8))
}

/// The result type of the id functions: a dictionary when every argument is one (the clean
/// scan's columns), plain strings otherwise.
fn id_return_type(name: &str, args: &[DataType]) -> Result<DataType> {
    let text = |t: &DataType| match t {
        DataType::Dictionary(_, v) => matches!(
            **v,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        ),
        t => matches!(
            t,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
        ),
    };
    if let Some((i, t)) = args.iter().enumerate().find(|(_, t)| !text(t)) {
        return plan_err!("{name}: argument {} must be a string, got {t}", i + 1);
    }
    Ok(match args.iter().all(|t| *t == dictionary_of_strings()) {
        true => dictionary_of_strings(),
        false => DataType::Utf8,
    })
}

/// Ids are never null: a null argument reads as an empty string.
fn id_return_field(name: &str, args: ReturnFieldArgs) -> Result<FieldRef> {
    let types: Vec<DataType> = args
        .arg_fields
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    Ok(Arc::new(Field::new(
        name,
        id_return_type(name, &types)?,
        false,
    )))
}

/// Runs an id function over string arguments. When every argument is a dictionary over one
/// shared key array (the clean scan's artist and track columns, all over the chunk's distinct
/// tails), `f` runs once per dictionary entry and the result keeps those keys; otherwise it runs
/// once per row.
fn map_strings(
    args: &ScalarFunctionArgs,
    f: impl Fn(&[&StringArray]) -> StringArray,
) -> Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(&args.args)?;
    let dictionaries: Option<Vec<&DictionaryArray<UInt32Type>>> =
        arrays.iter().map(|a| a.as_dictionary_opt()).collect();
    if let Some(dicts) = dictionaries.filter(|d| shared_keys(d)) {
        let values = dicts
            .iter()
            .map(|d| cast(d.values(), &DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()?;
        let values: Vec<&StringArray> = values.iter().map(|v| v.as_string::<i32>()).collect();
        let out = DictionaryArray::try_new(dicts[0].keys().clone(), Arc::new(f(&values)))?;
        return Ok(ColumnarValue::Array(Arc::new(out)));
    }
    let plain = arrays
        .iter()
        .map(|a| cast(a, &DataType::Utf8))
        .collect::<Result<Vec<_>, _>>()?;
    let plain: Vec<&StringArray> = plain.iter().map(|v| v.as_string::<i32>()).collect();
    let out: ArrayRef = Arc::new(f(&plain));
    Ok(ColumnarValue::Array(match args.return_field.data_type() {
        DataType::Utf8 => out,
        other => cast(&out, other)?,
    }))
}

/// Whether the dictionaries have one key array (same buffer, offset and length) and the same
/// number of entries, so entry i of each belongs to the same rows.
fn shared_keys(dicts: &[&DictionaryArray<UInt32Type>]) -> bool {
    let first = dicts[0];
    dicts.iter().all(|d| {
        d.keys()
            .values()
            .inner()
            .ptr_eq(first.keys().values().inner())
            && d.keys().null_count() == 0
            && d.values().len() == first.values().len()
    })
}

fn str_at(a: &StringArray, i: usize) -> &str {
    if a.is_null(i) { "" } else { a.value(i) }
}

impl ScalarUDFImpl for TrackIdUdf {
    fn name(&self) -> &str {
        TRACK_ID
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        id_return_type(TRACK_ID, args)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        id_return_field(TRACK_ID, args)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_strings(&args, |arrays| {
            let [mbid, artist, title] = [arrays[0], arrays[1], arrays[2]];
            let mut out = StringBuilder::with_capacity(mbid.len(), mbid.len() * 36);
            // Popular songs repeat within a batch: derive each id once.
            let mut derived: HashMap<(&str, &str), String> = HashMap::new();
            for i in 0..mbid.len() {
                let m = str_at(mbid, i);
                if m.is_empty() {
                    let key = (str_at(artist, i), str_at(title, i));
                    out.append_value(
                        derived
                            .entry(key)
                            .or_insert_with(|| ids::derived_track_id(key.0, key.1)),
                    );
                } else {
                    out.append_value(m);
                }
            }
            out.finish()
        })
    }
}

impl ScalarUDFImpl for ArtistIdUdf {
    fn name(&self) -> &str {
        ARTIST_ID
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        id_return_type(ARTIST_ID, args)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        id_return_field(ARTIST_ID, args)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_strings(&args, |arrays| {
            let [mbid, name] = [arrays[0], arrays[1]];
            let mut out = StringBuilder::with_capacity(mbid.len(), mbid.len() * 36);
            let mut derived: HashMap<&str, String> = HashMap::new();
            for i in 0..mbid.len() {
                let m = str_at(mbid, i);
                if m.is_empty() {
                    let name = str_at(name, i);
                    out.append_value(
                        derived
                            .entry(name)
                            .or_insert_with(|| ids::derived_artist_id(name)),
                    );
                } else {
                    out.append_value(m);
                }
            }
            out.finish()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    fn invoke(udf: &ScalarUDF, args: Vec<ColumnarValue>, rows: usize) -> ArrayRef {
        let arg_fields = args
            .iter()
            .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
            .collect();
        let ret = udf
            .return_type(&args.iter().map(|a| a.data_type()).collect::<Vec<_>>())
            .unwrap();
        udf.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("r", ret, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
        .unwrap()
        .to_array(rows)
        .unwrap()
    }

    fn strings(v: &[Option<&str>]) -> ColumnarValue {
        ColumnarValue::Array(Arc::new(StringArray::from(v.to_vec())))
    }

    #[test]
    fn track_ids() {
        let udfs = all();
        let out = invoke(
            &udfs[0],
            vec![
                strings(&[Some("mbid-1"), Some(""), None]),
                strings(&[Some("A"), Some("Björk"), Some("Björk")]),
                strings(&[Some("T"), Some("Jóga"), Some("jóga")]),
            ],
            3,
        );
        let out = out.as_string::<i32>();
        assert_eq!(out.value(0), "mbid-1");
        assert_eq!(out.value(1), ids::derived_track_id("Björk", "Jóga"));
        assert_eq!(out.value(1), out.value(2));
    }

    #[test]
    fn dictionaries_over_shared_keys_derive_once_per_entry() {
        let udfs = all();
        let keys = arrow::array::UInt32Array::from(vec![1, 0, 1, 2]);
        let dict = |keys: &arrow::array::UInt32Array, v: Vec<&str>| {
            ColumnarValue::Array(Arc::new(
                DictionaryArray::try_new(keys.clone(), Arc::new(StringArray::from(v))).unwrap(),
            ))
        };
        let expected = [
            ids::derived_track_id("Björk", "Jóga"),
            "mbid-0".to_string(),
            ids::derived_track_id("Björk", "Jóga"),
            ids::derived_track_id("B", "U"),
        ];
        let shared = invoke(
            &udfs[0],
            vec![
                dict(&keys, vec!["mbid-0", "", ""]),
                dict(&keys, vec!["A", "Björk", "B"]),
                dict(&keys, vec!["T", "Jóga", "U"]),
            ],
            4,
        );
        let out = shared.as_dictionary::<UInt32Type>();
        assert_eq!(out.values().len(), 3, "one id per entry");
        assert!(out.keys().values().inner().ptr_eq(keys.values().inner()));
        let plain = |ids: &ArrayRef| {
            let ids = cast(ids, &DataType::Utf8).unwrap();
            ids.as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(plain(&shared), expected);
        // Equal keys in different buffers: the per-row path, same answer.
        let copy = arrow::array::UInt32Array::from(keys.values().to_vec());
        let unshared = invoke(
            &udfs[0],
            vec![
                dict(&keys, vec!["mbid-0", "", ""]),
                dict(&copy, vec!["A", "Björk", "B"]),
                dict(&keys, vec!["T", "Jóga", "U"]),
            ],
            4,
        );
        assert_eq!(plain(&unshared), expected);
    }
}
