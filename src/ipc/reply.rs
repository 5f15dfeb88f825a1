//! Building one response frame in place: the length prefix is reserved first and filled in last,
//! result fields are written straight into the same buffer, and an error discards whatever
//! result had been written so far.

use crate::error::{Code, Error};
use crate::values::write_json_str;

/// A response under construction.
pub struct Reply {
    buf: Vec<u8>,
    /// Offset just after `"ok":`.
    ok_at: usize,
}

impl Reply {
    /// Starts `{"id":<id>,"ok":` for the raw id text (`null` when unknown).
    pub fn new(id: Option<&str>) -> Reply {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0, 0, 0, 0]);
        buf.extend_from_slice(b"{\"id\":");
        buf.extend_from_slice(id.unwrap_or("null").as_bytes());
        buf.extend_from_slice(b",\"ok\":true");
        let ok_at = buf.len() - 4;
        Reply { buf, ok_at }
    }

    /// The buffer result fields go into; each field starts with a comma.
    pub fn body(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Writes `,"key":` to the body.
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
        &mut self.buf
    }

    /// Writes `,"key":"value"`.
    pub fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        write_json_str(&mut self.buf, value);
    }

    /// Writes `,"key":<integer>`.
    pub fn int_field(&mut self, key: &str, value: u64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Finishes the frame as success, or as `frame_too_large` when it outgrew `max_frame`.
    pub fn finish(mut self, max_frame: usize) -> Vec<u8> {
        self.buf.push(b'}');
        let len = self.buf.len() - 4;
        if len > max_frame {
            let e = Error::new(
                Code::FrameTooLarge,
                format!(
                    "the response ({len} bytes) exceeds the {max_frame}-byte frame limit: fetch fewer rows per request"
                ),
            );
            return self.fail(&e);
        }
        self.buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
        self.buf
    }

    /// Finishes the frame as the failure `e`, dropping any result written so far.
    pub fn fail(mut self, e: &Error) -> Vec<u8> {
        self.buf.truncate(self.ok_at);
        self.buf.extend_from_slice(b"false,\"error\":");
        e.write_wire(&mut self.buf);
        self.buf.push(b'}');
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }

    /// Finishes with the outcome of a handler.
    pub fn conclude(self, result: Result<(), Error>, max_frame: usize) -> Vec<u8> {
        match result {
            Ok(()) => self.finish(max_frame),
            Err(e) => self.fail(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(frame: &[u8]) -> serde_json::Value {
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        serde_json::from_slice(&frame[4..]).unwrap()
    }

    #[test]
    fn success_and_failure() {
        let mut r = Reply::new(Some("5"));
        r.str_field("upstream", "main");
        r.int_field("count", 3);
        assert_eq!(
            json(&r.finish(1 << 20)),
            serde_json::json!({"id": 5, "ok": true, "upstream": "main", "count": 3})
        );
        let mut r = Reply::new(None);
        r.str_field("partial", "dropped");
        let v = json(&r.fail(&Error::bad_request("nope")));
        assert_eq!(v["id"], serde_json::Value::Null);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(v.get("partial").is_none());
    }

    #[test]
    fn oversized_response_becomes_an_error() {
        let mut r = Reply::new(Some("1"));
        r.str_field("big", &"x".repeat(100));
        let v = json(&r.finish(50));
        assert_eq!(v["error"]["code"], "frame_too_large");
    }
}
