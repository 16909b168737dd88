//! The searchable text of a recording: what a terminal showed, without its escape sequences
//! and control characters, kept per channel across records (a sequence may be split).

/// Where the stripper is inside an escape sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Text,
    Escape,
    /// `ESC [` ... up to a final byte in `@..=~`.
    Csi,
    /// `ESC ]` ... up to BEL or `ESC \`.
    Osc,
    OscEscape,
}

/// Strips terminal control from a byte stream, one piece at a time.
#[derive(Clone, Debug, Default)]
pub struct Stripper {
    state: State,
}

impl Stripper {
    /// Appends the printable part of `input` to `out`: text (UTF-8 passes through), newlines
    /// and tabs; escape sequences, carriage returns and other controls are dropped.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match (self.state, b) {
                (State::Text, 0x1b) => State::Escape,
                (State::Text, b'\n' | b'\t') => {
                    out.push(b);
                    State::Text
                }
                (State::Text, b) if b < 0x20 || b == 0x7f => State::Text,
                (State::Text, b) => {
                    out.push(b);
                    State::Text
                }
                (State::Escape, b'[') => State::Csi,
                (State::Escape, b']') => State::Osc,
                (State::Escape, _) => State::Text,
                (State::Csi, 0x40..=0x7e) => State::Text,
                (State::Csi, _) => State::Csi,
                (State::Osc, 0x07) => State::Text,
                (State::Osc, 0x1b) => State::OscEscape,
                (State::Osc, _) => State::Osc,
                (State::OscEscape, _) => State::Text,
            };
        }
    }
}

/// Whether `haystack` contains `needle`, ignoring ASCII case.
pub fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn strip(pieces: &[&[u8]]) -> String {
        let mut s = Stripper::default();
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn colours_titles_and_controls_go_text_stays() {
        assert_eq!(
            strip(&[b"\x1b[01;32mroot@web\x1b[0m:~# ls\r\n\x1b]0;title\x07a\tb\x08\n"]),
            "root@web:~# ls\na\tb\n"
        );
        // A sequence split between two records is still removed.
        assert_eq!(strip(&[b"x\x1b[3", b"1mred\x1b]2;t\x1b", b"\\y"]), "xredy");
        assert_eq!(strip(&["grüße\n".as_bytes()]), "grüße\n");
    }

    #[test]
    fn search_ignores_ascii_case() {
        assert!(contains_ignore_case(b"ran DROP TABLE x", b"drop table"));
        assert!(!contains_ignore_case(b"drop tab", b"drop table"));
    }
}
