//! Logging setup: tracing to stderr, text or JSON (`[log] format`), level from `RUST_LOG` or
//! `[log] level`.
//!
//! Spans: `client` (one per client connection: session, peer pid and uid, then the client's name
//! and upstream once known), `upstream` (one per upstream worker), `admin` (the HTTP server).
//! Secrets never reach a log line: passwords and tokens are [`crate::config::Secret`]s whose
//! `Debug`/`Display` redact them, requests are never logged whole, and the tests run the daemon
//! with trace logging captured and search the output for the secrets they used.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// A subscriber formatting as `log.format` says into `writer`. `filter` (a `RUST_LOG`-style
/// directive) wins over `log.level` when given; an unusable filter falls back to `info`.
pub fn subscriber<W>(
    log: &LogConfig,
    filter: Option<&str>,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match log.format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
        LogFormat::Text => Box::new(builder.finish()),
    }
}

/// Installs the global subscriber on stderr. `RUST_LOG`, when set, wins over `[log] level`.
pub fn init(log: &LogConfig) {
    use tracing_subscriber::util::SubscriberInitExt;
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let ansi =
        log.format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = subscriber(log, env.as_deref(), std::io::stderr, ansi).try_init();
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, level: &str, filter: Option<&str>) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let log = LogConfig {
            format,
            level: level.into(),
        };
        let sub = subscriber(&log, filter, move || out.clone(), false);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("client", session = "s1");
            let _g = span.enter();
            tracing::info!(n = 3, "hello from a test");
            tracing::debug!("debug line");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_carry_span_and_fields() {
        let text = capture(LogFormat::Json, "info", None);
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["message"], "hello from a test");
        assert_eq!(line["n"], 3);
        assert_eq!(line["span"]["session"], "s1");
        assert!(
            !text.contains("debug line"),
            "level info hides debug: {text}"
        );
    }

    #[test]
    fn filter_overrides_level_and_text_is_plain() {
        let text = capture(LogFormat::Text, "info", Some("debug"));
        assert!(text.contains("debug line"), "{text}");
        assert!(text.contains("client{session=\"s1\"}"), "{text}");
        let fallback = capture(LogFormat::Text, "not a [valid filter", None);
        assert!(fallback.contains("hello from a test"), "{fallback}");
    }
}
