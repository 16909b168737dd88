//! The recording format: a chunk file is [`MAGIC`] followed by records, each a fixed header
//! (kind, channel, microseconds since the session started, length) and its bytes. Lossless:
//! output is stored as the client received it, byte for byte, with its timing.

use bytes::Bytes;

/// The first bytes of every chunk file.
pub const MAGIC: &[u8; 8] = b"GHREC01\n";

/// A record's header: kind (1), channel (4), time (8), length (4), all big-endian.
pub const HEADER: usize = 17;

/// The most bytes one record carries; the writer splits longer data.
pub const MAX_RECORD: usize = 1 << 20;

/// What a record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A channel opened; the data names its type (`session`, `direct-tcpip HOST:PORT`).
    Open = 1,
    /// A terminal was asked for: JSON `{"term","cols","rows"}`.
    Pty = 2,
    Shell = 3,
    /// The command text.
    Exec = 4,
    /// The subsystem's name (`sftp`).
    Subsystem = 5,
    /// Bytes the client received on its standard output.
    Output = 6,
    /// Bytes the client received on its standard error.
    Stderr = 7,
    /// Bytes the client sent (only where the resource records input).
    Input = 8,
    /// The terminal was resized: columns and rows, u32 each.
    Resize = 9,
    /// The program's exit status, u32.
    Exit = 10,
    /// The target ended its output.
    Eof = 11,
    /// The channel closed: JSON `{"from_client","to_client"}` bytes.
    Close = 12,
    /// Something the gateway says about the recording itself (UTF-8 text).
    Note = 13,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            1 => Open,
            2 => Pty,
            3 => Shell,
            4 => Exec,
            5 => Subsystem,
            6 => Output,
            7 => Stderr,
            8 => Input,
            9 => Resize,
            10 => Exit,
            11 => Eof,
            12 => Close,
            13 => Note,
            _ => return None,
        })
    }
}

/// One thing that happened in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Microseconds since the session started.
    pub t_us: u64,
    pub channel: u32,
    pub kind: Kind,
    pub data: Bytes,
}

impl Record {
    /// The bytes it takes in a chunk.
    pub fn encoded_len(&self) -> usize {
        HEADER + self.data.len()
    }

    /// Appends the record to `out`. The data must be at most [`MAX_RECORD`] bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(self.data.len() <= MAX_RECORD);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.channel.to_be_bytes());
        out.extend_from_slice(&self.t_us.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.data);
    }
}

/// Why a chunk's bytes are not a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a recording chunk (no GHREC01 header)")]
    Magic,
    #[error("record at byte {0} is cut short")]
    Truncated(usize),
    #[error("record at byte {0} has an unknown kind {1}")]
    UnknownKind(usize, u8),
    #[error("record at byte {0} is longer than any the gateway writes")]
    TooLong(usize),
}

/// The records of a whole chunk, in order.
pub fn decode(chunk: &Bytes) -> Result<Vec<Record>, FormatError> {
    if chunk.len() < MAGIC.len() || &chunk[..MAGIC.len()] != MAGIC {
        return Err(FormatError::Magic);
    }
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while at < chunk.len() {
        if chunk.len() - at < HEADER {
            return Err(FormatError::Truncated(at));
        }
        let h = &chunk[at..at + HEADER];
        let kind = Kind::from_u8(h[0]).ok_or(FormatError::UnknownKind(at, h[0]))?;
        let channel = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        let t_us = u64::from_be_bytes([h[5], h[6], h[7], h[8], h[9], h[10], h[11], h[12]]);
        let len = u32::from_be_bytes([h[13], h[14], h[15], h[16]]) as usize;
        if len > MAX_RECORD {
            return Err(FormatError::TooLong(at));
        }
        let start = at + HEADER;
        if chunk.len() - start < len {
            return Err(FormatError::Truncated(at));
        }
        out.push(Record {
            t_us,
            channel,
            kind,
            data: chunk.slice(start..start + len),
        });
        at = start + len;
    }
    Ok(out)
}

/// Columns and rows of a [`Kind::Resize`] record's data.
pub fn size(cols: u32, rows: u32) -> Bytes {
    let mut b = Vec::with_capacity(8);
    b.extend_from_slice(&cols.to_be_bytes());
    b.extend_from_slice(&rows.to_be_bytes());
    Bytes::from(b)
}

/// Reads a [`size`] back.
pub fn read_size(data: &[u8]) -> Option<(u32, u32)> {
    let cols = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
    let rows = u32::from_be_bytes(data.get(4..8)?.try_into().ok()?);
    Some((cols, rows))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(t_us: u64, kind: Kind, data: &'static [u8]) -> Record {
        Record {
            t_us,
            channel: 3,
            kind,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let records = vec![
            rec(0, Kind::Open, b"session"),
            rec(10, Kind::Output, b"\x1b[1mhello\x00\xff"),
            rec(11, Kind::Resize, b"\0\0\0\x50\0\0\0\x18"),
            rec(u64::MAX, Kind::Close, b""),
        ];
        let mut chunk = MAGIC.to_vec();
        for r in &records {
            r.encode(&mut chunk);
        }
        assert_eq!(decode(&Bytes::from(chunk)).unwrap(), records);
        assert_eq!(read_size(b"\0\0\0\x50\0\0\0\x18"), Some((80, 24)));
    }

    #[test]
    fn damaged_chunks_are_refused_with_where() {
        let mut chunk = MAGIC.to_vec();
        rec(1, Kind::Output, b"abcdef").encode(&mut chunk);
        let cut = Bytes::from(chunk[..chunk.len() - 2].to_vec());
        assert_eq!(decode(&cut), Err(FormatError::Truncated(8)));
        let mut odd = chunk.clone();
        odd[8] = 99;
        assert_eq!(
            decode(&Bytes::from(odd)),
            Err(FormatError::UnknownKind(8, 99))
        );
        assert_eq!(
            decode(&Bytes::from_static(b"GHREC02\n")),
            Err(FormatError::Magic)
        );
        let mut long = MAGIC.to_vec();
        long.extend_from_slice(&[
            6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        assert_eq!(decode(&Bytes::from(long)), Err(FormatError::TooLong(8)));
    }
}
