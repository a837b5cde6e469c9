//! numpy-style typed tensors over shared memory: dtype, shape and strides in
//! the metadata, elements read in place.
//!
//! Metadata format (text, so other languages can read it):
//! `arca:tensor dtype=f64 shape=2,3 strides=24,8` with strides in bytes, as
//! numpy reports them. Data is C-contiguous when put by [`StoreClient::put_tensor`].

use std::marker::PhantomData;
use std::time::Duration;

use arca_store::ObjectId;

use crate::buffer::ObjectBuffer;
use crate::client::{PutOptions, StoreClient};
use crate::error::{Error, Result};

/// An element type a tensor can hold, with its numpy dtype name.
pub trait Element: bytemuck::Pod + Send + Sync {
    /// numpy's name for the type (`f64`, `i32`, `u8`...).
    const DTYPE: &'static str;
}

macro_rules! element {
    ($($t:ty => $n:literal),* $(,)?) => {
        $(impl Element for $t { const DTYPE: &'static str = $n; })*
    };
}

element!(u8 => "u8", i8 => "i8", u16 => "u16", i16 => "i16", u32 => "u32", i32 => "i32",
         u64 => "u64", i64 => "i64", f32 => "f32", f64 => "f64");

const PREFIX: &str = "arca:tensor ";

/// A typed, shaped view of an object in shared memory.
#[derive(Debug, Clone)]
pub struct Tensor<T: Element> {
    buffer: ObjectBuffer,
    shape: Vec<usize>,
    strides: Vec<usize>,
    _t: PhantomData<T>,
}

impl<T: Element> Tensor<T> {
    /// All elements, in memory order, straight from shared memory.
    pub fn as_slice(&self) -> &[T] {
        // Checked in `get_tensor`: aligned and a whole number of elements.
        bytemuck::cast_slice(self.buffer.data())
    }

    /// Length of each dimension.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Step between neighbours along each dimension, in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// The element at a multi-dimensional index, if in bounds.
    pub fn get(&self, index: &[usize]) -> Option<&T> {
        if index.len() != self.shape.len() || index.iter().zip(&self.shape).any(|(i, n)| i >= n) {
            return None;
        }
        let at: usize = index.iter().zip(&self.strides).map(|(i, s)| i * s).sum();
        self.as_slice().get(at)
    }

    /// The underlying object buffer.
    pub fn buffer(&self) -> &ObjectBuffer {
        &self.buffer
    }
}

fn metadata<T: Element>(shape: &[usize]) -> String {
    let join = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut strides = vec![0; shape.len()];
    let mut step = size_of::<T>();
    for (s, n) in strides.iter_mut().zip(shape).rev() {
        *s = step;
        step *= n;
    }
    format!(
        "{PREFIX}dtype={} shape={} strides={}",
        T::DTYPE,
        join(shape),
        join(&strides)
    )
}

struct Parsed {
    dtype: String,
    shape: Vec<usize>,
    byte_strides: Vec<usize>,
}

fn parse(meta: &[u8]) -> Option<Parsed> {
    let text = std::str::from_utf8(meta).ok()?.strip_prefix(PREFIX)?;
    let list = |v: &str| -> Option<Vec<usize>> {
        if v.is_empty() {
            return Some(Vec::new());
        }
        v.split(',').map(|x| x.parse().ok()).collect()
    };
    let (mut dtype, mut shape, mut strides) = (None, None, None);
    for field in text.split(' ') {
        match field.split_once('=')? {
            ("dtype", v) => dtype = Some(v.to_string()),
            ("shape", v) => shape = Some(list(v)?),
            ("strides", v) => strides = Some(list(v)?),
            _ => return None,
        }
    }
    Some(Parsed {
        dtype: dtype?,
        shape: shape?,
        byte_strides: strides?,
    })
}

impl StoreClient {
    /// Puts a C-contiguous tensor of `shape` (primary pin) and returns its id.
    pub fn put_tensor<T: Element>(&self, data: &[T], shape: &[usize]) -> Result<ObjectId> {
        let count = shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
        if count != Some(data.len()) {
            return Err(Error::WrongKind {
                id: ObjectId::from_bytes([0; 20]),
                expected: format!("a tensor of shape {shape:?}"),
                detail: format!("{} elements were given", data.len()),
            });
        }
        let meta = metadata::<T>(shape);
        self.put_with(
            bytemuck::cast_slice(data),
            &PutOptions {
                metadata: meta.as_bytes(),
                ..PutOptions::default()
            },
        )
    }

    /// Gets a tensor of element type `T`, read in place from shared memory.
    pub fn get_tensor<T: Element>(
        &self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Tensor<T>> {
        let buffer = self.get_one(id, timeout)?;
        let wrong = |detail: String| Error::WrongKind {
            id,
            expected: format!("a tensor of {}", T::DTYPE),
            detail,
        };
        let p = parse(buffer.metadata()).ok_or_else(|| {
            wrong(format!(
                "metadata is {:?}",
                String::from_utf8_lossy(buffer.metadata())
            ))
        })?;
        if p.dtype != T::DTYPE {
            return Err(wrong(format!("its dtype is {}", p.dtype)));
        }
        let elem = size_of::<T>();
        if p.shape.len() != p.byte_strides.len() || p.byte_strides.iter().any(|s| s % elem != 0) {
            return Err(wrong("its strides do not match its shape and dtype".into()));
        }
        let strides: Vec<usize> = p.byte_strides.iter().map(|s| s / elem).collect();
        // The furthest element must lie inside the data.
        let last: Option<usize> = p
            .shape
            .iter()
            .zip(&strides)
            .try_fold(0usize, |acc, (&n, &s)| {
                acc.checked_add(n.checked_sub(1)?.checked_mul(s)?)
            });
        let count = buffer.data().len() / elem;
        let fits = p.shape.contains(&0) || last.is_some_and(|l| l < count);
        if buffer.data().len() % elem != 0 || !fits {
            return Err(wrong(format!(
                "{} bytes do not hold shape {:?}",
                buffer.data().len(),
                p.shape
            )));
        }
        if bytemuck::try_cast_slice::<u8, T>(buffer.data()).is_err() {
            return Err(wrong("its data is not aligned for the dtype".into()));
        }
        Ok(Tensor {
            buffer,
            shape: p.shape,
            strides,
            _t: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trip() {
        let m = metadata::<f64>(&[2, 3]);
        assert_eq!(m, "arca:tensor dtype=f64 shape=2,3 strides=24,8");
        let p = parse(m.as_bytes()).unwrap();
        assert_eq!(
            (p.dtype.as_str(), p.shape, p.byte_strides),
            ("f64", vec![2, 3], vec![24, 8])
        );
        assert!(parse(b"arca:tensor dtype=f64 shape=x strides=8").is_none());
        assert!(parse(b"something else").is_none());
    }
}
