//! `RawClient`: a protocol-1 client with no cleverness, so tests see exactly what the daemon
//! sends. Frames are a 4-byte big-endian length and one JSON object. Every read has a timeout,
//! so a daemon that never answers fails the test instead of hanging it.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long any single read waits before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RawClient {
    stream: UnixStream,
    next_id: i64,
}

impl RawClient {
    pub async fn connect(socket: &Path) -> RawClient {
        let stream = tokio::time::timeout(READ_TIMEOUT, UnixStream::connect(socket))
            .await
            .unwrap_or_else(|_| panic!("connecting to {} timed out", socket.display()))
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
        RawClient { stream, next_id: 1 }
    }

    /// The id the next [`RawClient::call`] will use.
    pub fn next_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends one request frame as is.
    pub async fn send(&mut self, request: &Value) {
        self.send_raw(&encode(request)).await;
    }

    /// Sends these exact bytes (for framing tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes)
            .await
            .expect("writing to the daemon failed");
    }

    /// Sends these bytes; an error when the daemon has closed the connection.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(READ_TIMEOUT, self.stream.write_all(bytes))
            .await
            .expect("writing to the daemon timed out")
    }

    /// Sends one request frame; an error when the daemon has closed the connection.
    pub async fn try_send(&mut self, request: &Value) -> std::io::Result<()> {
        self.try_send_raw(&encode(request)).await
    }

    /// Reads one frame; `None` when the daemon closed the connection cleanly before a frame.
    pub async fn try_recv(&mut self) -> Option<Value> {
        self.try_recv_within(READ_TIMEOUT).await
    }

    pub async fn try_recv_within(&mut self, limit: Duration) -> Option<Value> {
        let read = async {
            let mut len = [0u8; 4];
            match self.stream.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if is_closed(&e) => return None,
                Err(e) => panic!("reading a frame length: {e}"),
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            self.stream
                .read_exact(&mut body)
                .await
                .expect("the daemon closed the connection in the middle of a frame");
            Some(serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "the daemon sent a frame that is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                )
            }))
        };
        tokio::time::timeout(limit, read)
            .await
            .unwrap_or_else(|_| panic!("no frame from the daemon within {limit:?}"))
    }

    /// Reads one frame; fails the test when the connection is closed instead.
    pub async fn recv(&mut self) -> Value {
        self.try_recv()
            .await
            .expect("the daemon closed the connection instead of answering")
    }

    /// Shuts down the writing side only (half-close): the daemon sees the end of the stream,
    /// while this client can still read.
    pub async fn shutdown_write(&mut self) {
        self.stream
            .shutdown()
            .await
            .expect("shutting down the writing side failed");
    }

    /// Asserts that the daemon closes the connection (no further frame arrives).
    pub async fn expect_closed(&mut self) {
        if let Some(frame) = self.try_recv().await {
            panic!("expected the daemon to close the connection, got {frame}");
        }
    }

    /// Sends `request` (adding an `id` when it has none), reads the answer and checks its id.
    pub async fn call(&mut self, mut request: Value) -> Value {
        let id = match request.get("id") {
            Some(id) => id.clone(),
            None => {
                let id = json!(self.next_id());
                request["id"] = id.clone();
                id
            }
        };
        self.send(&request).await;
        let response = self.recv().await;
        assert_eq!(
            response.get("id"),
            Some(&id),
            "response id does not match request {request}: {response}"
        );
        response
    }

    /// Like [`RawClient::call`], asserting success.
    pub async fn call_ok(&mut self, request: Value) -> Value {
        let shown = request.to_string();
        let response = self.call(request).await;
        assert_eq!(
            response["ok"],
            json!(true),
            "request {shown} failed: {response}"
        );
        response
    }

    /// Like [`RawClient::call`], asserting failure; returns the `error` object.
    pub async fn call_err(&mut self, request: Value) -> Value {
        let shown = request.to_string();
        let response = self.call(request).await;
        assert_eq!(
            response["ok"],
            json!(false),
            "request {shown} should have failed: {response}"
        );
        assert!(
            response["error"]["code"].is_string() && response["error"]["message"].is_string(),
            "error without code/message for {shown}: {response}"
        );
        response["error"].clone()
    }

    /// Asserts failure with this error code; returns the `error` object.
    pub async fn expect_error(&mut self, request: Value, code: &str) -> Value {
        let shown = request.to_string();
        let error = self.call_err(request).await;
        assert_eq!(
            error["code"],
            json!(code),
            "wrong error for {shown}: {error}"
        );
        error
    }

    /// `hello` + `connect` to the upstream named `main`.
    pub async fn connect_main(&mut self) {
        self.call_ok(json!({"op": "hello", "protocol": 1, "client": "tests"}))
            .await;
        self.connect_to("main").await;
    }

    pub async fn connect_to(&mut self, upstream: &str) {
        let r = self
            .call_ok(json!({"op": "connect", "upstream": upstream}))
            .await;
        assert_eq!(r["upstream"], json!(upstream));
    }

    /// `query` by SQL; returns the whole successful response.
    pub async fn query(&mut self, sql: &str, params: Value) -> Value {
        self.call_ok(json!({"op": "query", "sql": sql, "params": params}))
            .await
    }

    /// `query` by SQL; returns only the rows.
    pub async fn rows(&mut self, sql: &str, params: Value) -> Vec<Value> {
        let r = self.query(sql, params).await;
        r["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("query {sql} answered without rows: {r}"))
            .clone()
    }

    /// The single value of a one-row, one-column query.
    pub async fn scalar(&mut self, sql: &str, params: Value) -> Value {
        let rows = self.rows(sql, params).await;
        assert_eq!(rows.len(), 1, "{sql} should give one row: {rows:?}");
        assert_eq!(
            rows[0].as_array().map(Vec::len),
            Some(1),
            "{sql} should give one column: {rows:?}"
        );
        rows[0][0].clone()
    }

    /// `execute` by SQL; returns the whole successful response.
    pub async fn execute(&mut self, sql: &str, params: Value) -> Value {
        self.call_ok(json!({"op": "execute", "sql": sql, "params": params}))
            .await
    }

    /// `prepare`; returns the handle.
    pub async fn prepare(&mut self, sql: &str) -> String {
        let r = self.call_ok(json!({"op": "prepare", "sql": sql})).await;
        r["handle"]
            .as_str()
            .unwrap_or_else(|| panic!("prepare answered without a string handle: {r}"))
            .to_string()
    }
}

/// One frame holding `value`.
pub fn encode(value: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(value).expect("a JSON value always serialises");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// One frame holding this exact JSON text (for numbers serde_json would not keep as written).
pub fn encode_text(json_text: &str) -> Vec<u8> {
    let mut frame = (json_text.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(json_text.as_bytes());
    frame
}

fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    )
}
