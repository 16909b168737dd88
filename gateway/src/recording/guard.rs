//! What a replay lets reach the auditor's terminal. A recording holds whatever the target
//! sent, and a user of the target can make it send anything: a replay that wrote it raw would
//! let them set the auditor's clipboard (OSC 52), title or hyperlinks, ask the auditor's
//! terminal questions whose answers arrive as typed input (device status, attributes, window
//! reports), or send it device control strings. The guard passes text, C0 controls and the
//! escape sequences that only draw (cursor moves, colours, erasing, modes, charsets), and
//! withholds every string sequence (OSC, DCS, APC, PM, SOS) and every query, counting them.
//!
//! It works on a stream, so a sequence split between two records is judged whole.

/// The longest CSI sequence passed on; a longer one is withheld.
const MAX_CSI: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Text,
    Escape,
    /// `ESC` then intermediates (`ESC ( B`), up to a final byte.
    EscapeIntermediate,
    Csi,
    /// OSC, DCS, APC, PM or SOS: up to BEL or `ESC \`.
    Str,
    StrEscape,
}

/// Filters a terminal byte stream for replay, one piece at a time.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    state: State,
    /// The sequence being read, passed on only once it is judged.
    seq: Vec<u8>,
    withheld: u64,
}

impl Guard {
    /// How many sequences were withheld so far.
    pub fn withheld(&self) -> u64 {
        self.withheld
    }

    /// Appends what may reach a terminal of `input` to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match self.state {
                State::Text => match b {
                    0x1b => {
                        self.seq.clear();
                        self.seq.push(b);
                        State::Escape
                    }
                    _ => {
                        out.push(b);
                        State::Text
                    }
                },
                State::Escape => {
                    self.seq.push(b);
                    match b {
                        b'[' => State::Csi,
                        b']' | b'P' | b'_' | b'^' | b'X' => State::Str,
                        0x20..=0x2f => State::EscapeIntermediate,
                        // DECID asks the terminal who it is.
                        b'Z' => self.withhold(),
                        0x30..=0x7e => self.pass(out),
                        // ESC ESC, or a control inside: drop the broken sequence.
                        _ => self.withhold(),
                    }
                }
                State::EscapeIntermediate => {
                    self.seq.push(b);
                    match b {
                        0x20..=0x2f if self.seq.len() < MAX_CSI => State::EscapeIntermediate,
                        0x30..=0x7e => self.pass(out),
                        _ => self.withhold(),
                    }
                }
                State::Csi => {
                    self.seq.push(b);
                    match b {
                        0x20..=0x3f if self.seq.len() < MAX_CSI => State::Csi,
                        0x40..=0x7e if answers(&self.seq) => self.withhold(),
                        0x40..=0x7e => self.pass(out),
                        _ => self.withhold(),
                    }
                }
                State::Str => match b {
                    0x07 => self.withhold(),
                    0x1b => State::StrEscape,
                    _ => State::Str,
                },
                State::StrEscape => match b {
                    b'\\' => self.withhold(),
                    // The string ends, and a new sequence starts at this ESC's successor.
                    _ => {
                        self.withheld += 1;
                        self.seq.clear();
                        self.seq.extend_from_slice(&[0x1b, b]);
                        match b {
                            b'[' => State::Csi,
                            b']' | b'P' | b'_' | b'^' | b'X' => State::Str,
                            _ => {
                                self.seq.clear();
                                State::Text
                            }
                        }
                    }
                },
            };
        }
    }

    fn pass(&mut self, out: &mut Vec<u8>) -> State {
        out.extend_from_slice(&self.seq);
        self.seq.clear();
        State::Text
    }

    fn withhold(&mut self) -> State {
        self.withheld += 1;
        self.seq.clear();
        State::Text
    }
}

/// Whether a complete CSI sequence (`ESC [ ... final`) makes the terminal answer or report:
/// device status (`n`), device attributes (`c`), window operations and reports (`t`),
/// terminal parameters (`x`), and the requests with a `$` intermediate (DECRQM and the like).
fn answers(seq: &[u8]) -> bool {
    let Some(&last) = seq.last() else {
        return false;
    };
    matches!(last, b'n' | b'c' | b't' | b'x') || seq[..seq.len() - 1].contains(&b'$')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn guard(pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut g = Guard::default();
        let mut out = Vec::new();
        for p in pieces {
            g.push(p, &mut out);
        }
        (out, g.withheld())
    }

    #[test]
    fn drawing_passes_whole() {
        let screen: &[u8] = b"\x1b[01;32mroot@web\x1b[0m:~# ls\r\n\x1b[2J\x1b[H\x1b[?25l\x1b(B\x1b7\x1b8a\tb\x08\x07 gr\xc3\xbc\xc3\x9fe\n";
        assert_eq!(guard(&[screen]), (screen.to_vec(), 0));
        // Split anywhere, the same.
        for at in 0..screen.len() {
            assert_eq!(
                guard(&[&screen[..at], &screen[at..]]).0,
                screen,
                "split at {at}"
            );
        }
    }

    #[test]
    fn strings_and_queries_are_withheld() {
        let (out, n) = guard(&[
            b"a\x1b]52;c;ZXZpbA==\x07b",     // clipboard
            b"\x1b]0;title\x1b\\c",          // title, ST-terminated
            b"\x1bP$q\"p\x1b\\d",            // DECRQSS
            b"\x1b[6ne\x1b[ci\x1b[>0c",      // status and attributes
            b"\x1b[21tf\x1b[?2026$pg\x1bZh", // title report, DECRQM, DECID
            b"\x1b_apc\x1b\\\x1b^pm\x07\x1bXsos\x1b\\z",
        ]);
        assert_eq!(String::from_utf8(out).unwrap(), "abcdeifghz");
        assert_eq!(n, 12);
        // Split inside the clipboard sequence: still withheld.
        let (out, n) = guard(&[b"x\x1b]5", b"2;c;ZXZp", b"bA==\x1b", b"\\y"]);
        assert_eq!((out, n), (b"xy".to_vec(), 1));
    }

    #[test]
    fn broken_and_endless_sequences_do_not_leak() {
        // An overlong CSI is withheld, and what follows it is text again.
        let long = [b"\x1b[".as_slice(), &[b'1'; 100], b"mok"].concat();
        let (out, n) = guard(&[&long]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "1".repeat(100 - MAX_CSI + 2) + "mok"
        );
        assert_eq!(n, 1);
        // A string cut short by another sequence: the string is withheld, the colour kept.
        let (out, n) = guard(&[b"\x1b]0;t\x1b[31mred"]);
        assert_eq!((out, n), (b"\x1b[31mred".to_vec(), 1));
        // A string never ended withholds the rest, and nothing of it is shown.
        let (out, n) = guard(&[b"ok\x1b]52;c;", &[b'A'; 10_000]]);
        assert_eq!((out, n), (b"ok".to_vec(), 0));
    }
}
