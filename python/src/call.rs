//! A task's call read from its payload straight into Python objects:
//! `(name, args, kwargs, options)`, the tuple
//! `vtasks.payloads.decode_call_with_options` returns. The worker does this
//! for every task it runs, and `orjson.loads` followed by the shape checks
//! in Python cost it several times what reading the JSON here does.
//!
//! Only a payload of the expected shape is read here. Any other one
//! (malformed JSON, an unknown field, a field of the wrong type, deeper
//! than serde_json's recursion limit) gives None, and the worker decodes
//! it in Python, which accepts or refuses it and says why. So one decoder
//! decides what is refused, and for a payload both accept the values are
//! the same: JSON integers within 64 bits are `int` (beyond, `float`, as
//! orjson reads them), other numbers `float` (correctly rounded), a
//! repeated key keeps its last value. A negative zero is left to Python
//! (`-0` is an `int` there, `-0.0` a `float`; serde_json reads both as
//! -0.0). `tests/test_payloads.py` compares the two readers.

use std::fmt;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The call in `json` (a payload's JSON text), or None if it is not of
/// the expected shape (see the module docs).
pub fn decode_call<'py>(py: Python<'py>, json: &[u8]) -> Option<Bound<'py, PyTuple>> {
    let mut reader = serde_json::Deserializer::from_slice(json);
    let call = reader.deserialize_map(CallVisitor(py)).ok()?;
    reader.end().ok()?;
    Some(call)
}

/// A Python error met while building the objects, as the reader's error
/// (it only ends the read: the payload then goes to Python).
fn failed<E: de::Error>(err: PyErr) -> E {
    E::custom(err)
}

/// The payload's object: `task`, `args`, `kwargs`, `options`.
struct CallVisitor<'py>(Python<'py>);

impl<'de, 'py> Visitor<'de> for CallVisitor<'py> {
    type Value = Bound<'py, PyTuple>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a task payload object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let py = self.0;
        let (mut name, mut args, mut kwargs, mut options) = (None, None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Task => name = Some(map.next_value_seed(AnyValue(py))?),
                Field::Args => args = Some(map.next_value_seed(AnyValue(py))?),
                Field::Kwargs => kwargs = Some(map.next_value_seed(AnyValue(py))?),
                Field::Options => options = Some(map.next_value_seed(OptionsVisitor(py))?),
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("task"))?;
        if !name.is_instance_of::<PyString>() || name.len().map_err(failed)? == 0 {
            return Err(de::Error::custom("no task name"));
        }
        let args = match args {
            Some(value) if !value.is_instance_of::<PyList>() => {
                return Err(de::Error::custom("args is not a list"))
            }
            Some(value) => value,
            None => PyList::empty(py).into_any(),
        };
        let kwargs = match kwargs {
            Some(value) if !value.is_instance_of::<PyDict>() => {
                return Err(de::Error::custom("kwargs is not an object"))
            }
            Some(value) => value,
            None => PyDict::new(py).into_any(),
        };
        let options = options.unwrap_or_else(|| PyDict::new(py));
        PyTuple::new(py, [name, args, kwargs, options.into_any()]).map_err(failed)
    }
}

/// The fields a payload may have (`vtasks.payloads.FIELDS`); any other
/// ends the read.
enum Field {
    Task,
    Args,
    Kwargs,
    Options,
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(reader: D) -> Result<Self, D::Error> {
        reader.deserialize_str(FieldVisitor)
    }
}

struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a payload field")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
        match key {
            "task" => Ok(Field::Task),
            "args" => Ok(Field::Args),
            "kwargs" => Ok(Field::Kwargs),
            "options" => Ok(Field::Options),
            other => Err(E::custom(format!("unknown field {other}"))),
        }
    }
}

/// The run options (`vtasks.payloads.OPTIONS`): each a positive number.
struct OptionsVisitor<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for OptionsVisitor<'py> {
    type Value = Bound<'py, PyDict>;

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<Self::Value, D::Error> {
        reader.deserialize_map(self)
    }
}

impl<'de, 'py> Visitor<'de> for OptionsVisitor<'py> {
    type Value = Bound<'py, PyDict>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an options object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let options = PyDict::new(self.0);
        while let Some(key) = map.next_key::<String>()? {
            if key != "backoff" && key != "timeout" {
                return Err(de::Error::custom("unknown option"));
            }
            let value = map.next_value_seed(AnyValue(self.0))?;
            // A number, not a bool (a Python `int`), and above zero.
            let number = !value.is_instance_of::<PyBool>()
                && (value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>());
            let positive = number && value.extract::<f64>().is_ok_and(|n| n > 0.0);
            if !positive {
                return Err(de::Error::custom("an option is not a positive number"));
            }
            options.set_item(key, value).map_err(failed)?;
        }
        Ok(options)
    }
}

/// Any JSON value, as the Python object orjson makes of it.
struct AnyValue<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for AnyValue<'py> {
    type Value = Bound<'py, PyAny>;

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<Self::Value, D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de, 'py> Visitor<'de> for AnyValue<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.0, v).to_owned().into_any())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        let Ok(int) = v.into_pyobject(self.0);
        Ok(int.into_any())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let Ok(int) = v.into_pyobject(self.0);
        Ok(int.into_any())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json reads `-0` as -0.0, orjson as the int 0; -0.0 cannot
        // tell which it was, so Python reads it.
        if v == 0.0 && v.is_sign_negative() {
            return Err(E::custom("negative zero"));
        }
        Ok(PyFloat::new(self.0, v).into_any())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v).into_any())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.0);
        while let Some(item) = seq.next_element_seed(AnyValue(self.0))? {
            list.append(item).map_err(failed)?;
        }
        Ok(list.into_any())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.0);
        while let Some(key) = map.next_key_seed(KeyVisitor(self.0))? {
            let value = map.next_value_seed(AnyValue(self.0))?;
            dict.set_item(key, value).map_err(failed)?;
        }
        Ok(dict.into_any())
    }
}

/// An object's key, as a Python `str`.
struct KeyVisitor<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for KeyVisitor<'py> {
    type Value = Bound<'py, PyString>;

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<Self::Value, D::Error> {
        reader.deserialize_str(self)
    }
}

impl<'de, 'py> Visitor<'de> for KeyVisitor<'py> {
    type Value = Bound<'py, PyString>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v))
    }
}

/// `decode_call` for Python: the call the worker reads natively from a
/// payload's JSON text, or None (tests compare it with
/// `vtasks.payloads.decode_call_with_options`).
#[pyfunction]
#[pyo3(name = "decode_call")]
pub fn decode_call_py<'py>(py: Python<'py>, json: &[u8]) -> Option<Bound<'py, PyTuple>> {
    decode_call(py, json)
}
