//! Positions in policy text: line numbers, and the split of a file into its
//! `;`-terminated statements.
//!
//! Cedar's parse errors carry their position only through `miette`, which this
//! crate does not depend on. To still tell the user where a file fails, the
//! loader re-parses the file one statement at a time and reports the first
//! statement that fails.

/// The 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The statements of a Cedar policy file, each as `(byte offset of its first
/// token, text up to and including its `;`)`. Text after the last `;` that
/// holds more than whitespace and comments is returned as a final statement.
///
/// `;` inside string literals and `//` comments does not end a statement.
pub(crate) fn statements(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                start.get_or_insert(i);
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b';' => {
                let s = start.take().unwrap_or(i);
                out.push((s, &text[s..=i]));
            }
            b if b.is_ascii_whitespace() => {}
            _ => {
                start.get_or_insert(i);
            }
        }
        i += 1;
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_from_one() {
        let text = "a\nb\nc";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 2), 2);
        assert_eq!(line_of(text, 4), 3);
        assert_eq!(line_of(text, 99), 3);
    }

    #[test]
    fn statements_skip_comments_and_strings() {
        let text = "// a; comment\npermit(principal, action, resource) when { \"x;\\\"y\" == \"\" };\n\n  forbid(principal, action, resource); // tail;\n";
        let got = statements(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(line_of(text, got[0].0), 2);
        assert!(got[0].1.starts_with("permit") && got[0].1.ends_with("};"));
        assert_eq!(line_of(text, got[1].0), 4);
        assert_eq!(got[1].1, "forbid(principal, action, resource);");
    }

    #[test]
    fn unterminated_tail_is_a_statement() {
        let text = "permit(principal, action, resource);\nforbid(principal";
        let got = statements(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], (37, "forbid(principal"));
    }

    #[test]
    fn unterminated_string_does_not_panic() {
        let got = statements("permit \"abc\\");
        assert_eq!(got.len(), 1);
    }
}
