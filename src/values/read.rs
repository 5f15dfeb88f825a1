//! A bounds-checked big-endian reader over one binary value.
//!
//! Every read checks the remaining length first; decoders built on it cannot panic on short
//! or garbage input.

use std::borrow::Cow;

/// Why a binary value could not be decoded; turned into a `ValueError` naming the type.
#[derive(Debug)]
pub(crate) struct Bad(pub(crate) Cow<'static, str>);

impl From<&'static str> for Bad {
    fn from(reason: &'static str) -> Self {
        Bad(Cow::Borrowed(reason))
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// A reader over a value that must be exactly `len` bytes long.
    pub(crate) fn exact(buf: &'a [u8], len: usize) -> Result<Self, Bad> {
        if buf.len() != len {
            return Err(Bad(
                format!("expected {len} bytes, got {}", buf.len()).into()
            ));
        }
        Ok(Reader { buf })
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The unread bytes, consuming them.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.buf.len() {
            return Err(Bad::from("value is truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Bad> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, Bad> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Bad> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, Bad> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Bad> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, Bad> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Bad> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn f32(&mut self) -> Result<f32, Bad> {
        Ok(f32::from_be_bytes(self.array()?))
    }

    pub(crate) fn f64(&mut self) -> Result<f64, Bad> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    /// One length-prefixed sub-value as used inside arrays, ranges and records:
    /// i32 length, -1 for NULL.
    pub(crate) fn cell(&mut self) -> Result<Option<&'a [u8]>, Bad> {
        match self.i32()? {
            -1 => Ok(None),
            len => {
                let len = usize::try_from(len).map_err(|_| Bad::from("negative length"))?;
                self.bytes(len).map(Some)
            }
        }
    }
}
