//! The asciicast v2 export of a recording (what the asciinema player plays): a header line
//! with the terminal's size, then one `[seconds, "o" | "i" | "r", text]` line per output,
//! input and resize record. Text is decoded as UTF-8 per channel across records (a character
//! split between two records is kept whole); bytes that are not UTF-8 become U+FFFD.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::format::{read_size, Kind};
use super::read::{Player, ReadError, SessionRecording};

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes `session` as asciicast v2 to `out`; returns the number of event lines.
pub fn export(
    dir: &Path,
    session: &SessionRecording,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    // The terminal's size and type: from the first pty request, before the first output.
    let (mut width, mut height, mut term) = (80u64, 24u64, String::from("xterm"));
    for r in Player::new(dir, session) {
        let r = r?;
        match r.kind {
            Kind::Pty => {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.data) {
                    width = v["cols"].as_u64().filter(|c| *c > 0).unwrap_or(width);
                    height = v["rows"].as_u64().filter(|r| *r > 0).unwrap_or(height);
                    if let Some(t) = v["term"].as_str() {
                        term = t.to_string();
                    }
                }
                break;
            }
            Kind::Output | Kind::Stderr => break,
            _ => {}
        }
    }
    let timestamp = time::OffsetDateTime::parse(
        &session.started,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| t.unix_timestamp())
    .unwrap_or(0);
    let header = json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": timestamp,
        "env": { "TERM": term },
        "title": format!("{} on {} ({})", session.user, session.resource, session.id),
    });
    writeln!(out, "{header}")?;
    let mut decoders: BTreeMap<(u32, bool), Utf8Stream> = BTreeMap::new();
    let mut lines = 0u64;
    for r in Player::new(dir, session) {
        let r = r?;
        let t = r.t_us as f64 / 1e6;
        let (code, text) = match r.kind {
            Kind::Output | Kind::Stderr => (
                "o",
                decoders
                    .entry((r.channel, false))
                    .or_default()
                    .push(&r.data),
            ),
            Kind::Input => (
                "i",
                decoders.entry((r.channel, true)).or_default().push(&r.data),
            ),
            Kind::Resize => match read_size(&r.data) {
                Some((c, rows)) => ("r", format!("{c}x{rows}")),
                None => continue,
            },
            _ => continue,
        };
        if text.is_empty() {
            continue;
        }
        writeln!(out, "{}", json!([t, code, text]))?;
        lines += 1;
    }
    Ok(lines)
}

/// Decodes UTF-8 that arrives in pieces.
#[derive(Default)]
struct Utf8Stream {
    /// The start of a character whose rest has not arrived yet (at most 3 bytes).
    tail: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, data: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.tail);
        bytes.extend_from_slice(data);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                        None => {
                            self.tail = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn a_character_split_across_records_is_kept_whole_and_bad_bytes_are_replaced() {
        let mut d = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(d.push(&[b'a', euro[0]]), "a");
        assert_eq!(d.push(&euro[1..2]), "");
        assert_eq!(d.push(&[euro[2], b'b']), "€b");
        assert_eq!(d.push(&[0xff, b'c']), "\u{FFFD}c");
        assert_eq!(d.push(b""), "");
    }
}
