//! The process log both binaries write (`gatehouse serve` and `gatehouse-agent`): tracing to
//! stderr, text or JSON, filtered by `GATEHOUSE_LOG`.
//!
//! Clients control much of what is logged (user and database names, token headers, statement
//! text in errors). In text mode every field value and message is written through [`escape`],
//! so a newline, carriage return, ANSI escape or bidirectional override from a client can
//! never start a forged line or hide one; JSON mode is escaped by its encoder.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Installs the subscriber (once; later calls do nothing). `default` is the filter when
/// `GATEHOUSE_LOG` is unset; `ansi` colours the level and target only (never field values).
pub fn init(json: bool, default: &str, ansi: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.fmt_fields(EscapedFields).try_init()
    };
}

/// Writes `text` with every control character, line or paragraph separator and bidirectional
/// formatting character as a visible escape (`\n`, `\r`, `\t`, `\u{1b}` ...).
pub fn escape(text: &str, out: &mut impl fmt::Write) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                write!(out, "\\u{{{:x}}}", c as u32)?
            }
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// Field formatting for text logs: `name=value` separated by spaces, the message bare, every
/// value escaped.
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Escaping {
            writer,
            first: true,
            result: Ok(()),
            scratch: String::new(),
        };
        fields.record(&mut v);
        v.result
    }
}

struct Escaping<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
    scratch: String,
}

impl Escaping<'_> {
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        self.scratch.clear();
        if self.scratch.write_fmt(value).is_err() {
            self.result = Err(fmt::Error);
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let name = field.name();
        self.result = (|| {
            self.writer.write_str(sep)?;
            if name != "message" {
                // `r#type` and the like are written without the raw prefix.
                self.writer
                    .write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            escape(&self.scratch, &mut self.writer)
        })();
    }
}

impl Visit for Escaping<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, format_args!("{value}"));
        } else {
            self.field(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        escape(s, &mut out).unwrap();
        out
    }

    #[test]
    fn nothing_a_client_sends_can_break_a_line() {
        assert_eq!(escaped("alice"), "alice");
        assert_eq!(
            escaped("x\nERROR forged\r\u{1b}[2K\u{202e}"),
            "x\\nERROR forged\\r\\u{1b}[2K\\u{202e}"
        );
        assert_eq!(escaped("tab\there é"), "tab\\there é");
        assert!(!escaped("\u{85}\u{2028}\u{7f}")
            .chars()
            .any(char::is_control));
    }

    #[test]
    fn a_displayed_field_with_a_newline_stays_on_its_line() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Buf {
            type Writer = Buf;
            fn make_writer(&'a self) -> Buf {
                self.clone()
            }
        }
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let user = "bob\n2026-12-02T00:00:00Z ERROR forged";
            let span = tracing::info_span!("connection", user = %user);
            let _g = span.enter();
            tracing::info!(reason = %user, "refused {user}");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("refused bob\\n2026"), "{text}");
        assert!(text.contains("reason=bob\\n2026"), "{text}");
        assert!(text.contains("user=bob\\n2026"), "{text}");
    }
}
