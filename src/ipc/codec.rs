//! Frame codec: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! Decoding refuses a length above the configured maximum *before* buffering the body, so a
//! hostile length cannot make the daemon allocate; the session answers `frame_too_large` and
//! closes, because the stream cannot be resynchronised after a refused frame.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decoder for protocol-1 frames.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder { max }
    }
}

impl Decoder for FrameDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(header) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if src.len() < 4 + len {
            // Reserve only what this frame still needs; idle connections keep a small buffer.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }
}

/// Prefixes `json` with its length, for callers building a frame from scratch.
pub fn frame(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 4);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_whole_and_split_frames() {
        let mut d = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b"{\"a\":1}"));
        buf.extend_from_slice(&frame(b"{}")[..3]);
        assert_eq!(
            d.decode(&mut buf).unwrap().unwrap(),
            Bytes::from_static(b"{\"a\":1}")
        );
        assert!(d.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&frame(b"{}")[3..]);
        assert_eq!(
            d.decode(&mut buf).unwrap().unwrap(),
            Bytes::from_static(b"{}")
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_length_without_waiting_for_the_body() {
        let mut d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&17u32.to_be_bytes()[..]);
        match d.decode(&mut buf) {
            Err(FrameError::TooLarge { len: 17, max: 16 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn zero_length_frame_is_empty_bytes() {
        let mut d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&0u32.to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().len(), 0);
    }
}
