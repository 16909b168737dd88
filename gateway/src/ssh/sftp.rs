//! What an sftp channel does to files, read from the sftp protocol (version 3, as OpenSSH
//! speaks it; `scp` uses it too) as it passes: one [`FileOp`] per file opened and closed
//! (path, bytes each way, SHA-256 of what was read or written when it went in order), and per
//! remove, rename, mkdir, rmdir, directory listing, setstat, symlink and hard link, with the
//! target's answer. The front door turns each into an `ssh.file` audit event.
//!
//! The observer only reads: what passes is never changed or held back. Its memory is bounded
//! (one packet per direction, at most [`MAX_PACKET`] bytes, and [`MAX_PENDING`] requests and
//! [`MAX_HANDLES`] open files); a stream it cannot follow (a packet over the bound, too many
//! requests outstanding) ends the observation with one [`FileOp`] of op `unobserved`, so
//! a gap in the evidence is itself evidence.

use std::collections::HashMap;

use ring::digest::{Context, SHA256};
use serde::Serialize;

/// The largest packet followed: OpenSSH's sftp-server takes up to 256 KiB.
pub const MAX_PACKET: usize = 256 * 1024 + 1024;
/// Requests awaiting their answer.
pub const MAX_PENDING: usize = 4096;
/// Files open at once.
pub const MAX_HANDLES: usize = 1024;

const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const SETSTAT: u8 = 9;
const OPENDIR: u8 = 11;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;

/// One file operation, as the audit event's detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOp {
    /// `upload`, `download`, `read-write`, `open` (opened, nothing moved), `remove`,
    /// `rename`, `mkdir`, `rmdir`, `list`, `setstat`, `symlink`, `link`, or `unobserved`.
    pub op: &'static str,
    pub path: String,
    /// The new name (rename, symlink, link).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `ok`, or the target's status (`no such file`, `permission denied`, ...); `closed` for
    /// a file still open when the channel ended.
    pub status: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub read_bytes: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub written_bytes: u64,
    /// SHA-256 of what was read, when it was read from offset 0 in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_sha256: Option<String>,
    /// SHA-256 of what was written, when it was written from offset 0 in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_sha256: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl FileOp {
    fn simple(op: &'static str, path: String, to: Option<String>, status: String) -> FileOp {
        FileOp {
            op,
            path,
            to,
            status,
            read_bytes: 0,
            written_bytes: 0,
            read_sha256: None,
            written_sha256: None,
        }
    }
}

/// Bytes moving one way through an open file.
struct Flow {
    bytes: u64,
    next: u64,
    /// `None` once the bytes went out of order.
    hash: Option<Context>,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            bytes: 0,
            next: 0,
            hash: Some(Context::new(&SHA256)),
        }
    }

    fn add(&mut self, offset: u64, data: &[u8]) {
        if offset != self.next {
            self.hash = None;
        }
        if let Some(h) = self.hash.as_mut() {
            h.update(data);
        }
        self.bytes += data.len() as u64;
        self.next = offset.saturating_add(data.len() as u64);
    }

    fn sha256(self) -> Option<String> {
        match (self.bytes, self.hash) {
            (0, _) | (_, None) => None,
            (_, Some(h)) => Some(crate::audit::event::hex(h.finish().as_ref())),
        }
    }
}

struct OpenFile {
    path: String,
    read: Flow,
    written: Flow,
}

impl OpenFile {
    fn done(self, status: String) -> FileOp {
        let op = match (self.read.bytes > 0, self.written.bytes > 0) {
            (false, false) => "open",
            (true, false) => "download",
            (false, true) => "upload",
            (true, true) => "read-write",
        };
        FileOp {
            op,
            path: self.path,
            to: None,
            status,
            read_bytes: self.read.bytes,
            written_bytes: self.written.bytes,
            read_sha256: self.read.sha256(),
            written_sha256: self.written.sha256(),
        }
    }
}

/// A request awaiting the target's answer.
enum Pending {
    Open(String),
    Read { handle: Vec<u8>, offset: u64 },
    Op(&'static str, String, Option<String>),
}

/// Packets of one direction, cut from the channel's data.
#[derive(Default)]
struct Packets {
    buf: Vec<u8>,
}

impl Packets {
    /// Adds `data` and hands each whole packet (type and payload) to `each`. `Err` when a
    /// packet is over [`MAX_PACKET`].
    fn push(&mut self, data: &[u8], mut each: impl FnMut(&[u8])) -> Result<(), ()> {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        while self.buf.len() - at >= 4 {
            let len = u32::from_be_bytes([
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ]) as usize;
            if len > MAX_PACKET {
                self.buf.clear();
                return Err(());
            }
            if self.buf.len() - at - 4 < len {
                break;
            }
            each(&self.buf[at + 4..at + 4 + len]);
            at += 4 + len;
        }
        self.buf.drain(..at);
        if self.buf.len() > MAX_PACKET + 4 {
            self.buf.clear();
            return Err(());
        }
        Ok(())
    }
}

/// Reads sftp fields in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.0.get(..4)?;
        let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.0 = &self.0[4..];
        Some(v)
    }

    fn u64(&mut self) -> Option<u64> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Some(hi << 32 | lo)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let b = self.0.get(..len)?;
        self.0 = &self.0[len..];
        Some(b)
    }

    fn text(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// Follows one sftp channel.
#[derive(Default)]
pub struct Observer {
    from_client: Packets,
    from_server: Packets,
    pending: HashMap<u32, Pending>,
    handles: HashMap<Vec<u8>, OpenFile>,
    /// Set once the stream could not be followed: nothing more is observed.
    lost: bool,
}

impl Observer {
    /// What the client sent on the channel.
    pub fn from_client(&mut self, data: &[u8]) -> Vec<FileOp> {
        self.follow(data, true)
    }

    /// What the target sent on the channel.
    pub fn from_server(&mut self, data: &[u8]) -> Vec<FileOp> {
        self.follow(data, false)
    }

    /// Cuts `data` into packets and reads each as a request (`client`) or a reply.
    fn follow(&mut self, data: &[u8], client: bool) -> Vec<FileOp> {
        if self.lost {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut packets = std::mem::take(self.packets(client));
        let r = packets.push(data, |p| {
            if client {
                self.request(p, &mut out)
            } else {
                self.reply(p, &mut out)
            }
        });
        *self.packets(client) = packets;
        if r.is_err() {
            let from = if client { "the client" } else { "the target" };
            self.lose(&mut out, &format!("a packet from {from} is over the bound"));
        }
        out
    }

    fn packets(&mut self, client: bool) -> &mut Packets {
        if client {
            &mut self.from_client
        } else {
            &mut self.from_server
        }
    }

    /// The channel ended: files still open are reported as they stand.
    pub fn finish(&mut self) -> Vec<FileOp> {
        self.pending.clear();
        self.handles
            .drain()
            .map(|(_, f)| f.done("closed".into()))
            .collect()
    }

    fn lose(&mut self, out: &mut Vec<FileOp>, why: &str) {
        if self.lost {
            return;
        }
        self.lost = true;
        out.extend(self.finish());
        out.push(FileOp::simple(
            "unobserved",
            String::new(),
            None,
            format!("the rest of this sftp channel was not observed: {why}"),
        ));
        self.from_client.buf = Vec::new();
        self.from_server.buf = Vec::new();
    }

    fn expect(&mut self, id: u32, p: Pending, out: &mut Vec<FileOp>) {
        if self.pending.len() >= MAX_PENDING {
            self.lose(out, "too many requests outstanding");
            return;
        }
        self.pending.insert(id, p);
    }

    fn request(&mut self, packet: &[u8], out: &mut Vec<FileOp>) {
        if self.lost {
            return;
        }
        let mut f = Fields(packet);
        let (Some(kind), Some(id)) = (f.u8(), f.u32()) else {
            return;
        };
        let op = |op: &'static str, f: &mut Fields<'_>, two: bool| -> Option<Pending> {
            let path = f.text()?;
            let to = if two { Some(f.text()?) } else { None };
            Some(Pending::Op(op, path, to))
        };
        let p = match kind {
            OPEN => f.text().map(Pending::Open),
            READ => {
                let (Some(handle), Some(offset)) = (f.bytes(), f.u64()) else {
                    return;
                };
                Some(Pending::Read {
                    handle: handle.to_vec(),
                    offset,
                })
            }
            WRITE => {
                if let (Some(handle), Some(offset), Some(data)) = (f.bytes(), f.u64(), f.bytes()) {
                    if let Some(file) = self.handles.get_mut(handle) {
                        file.written.add(offset, data);
                    }
                }
                None
            }
            CLOSE => {
                if let Some(file) = f.bytes().and_then(|h| self.handles.remove(h)) {
                    out.push(file.done("ok".into()));
                }
                None
            }
            REMOVE => op("remove", &mut f, false),
            MKDIR => op("mkdir", &mut f, false),
            RMDIR => op("rmdir", &mut f, false),
            OPENDIR => op("list", &mut f, false),
            SETSTAT => op("setstat", &mut f, false),
            RENAME => op("rename", &mut f, true),
            // SYMLINK's arguments are (link path, target) in OpenSSH's order.
            SYMLINK => op("symlink", &mut f, true),
            EXTENDED => match f.text().as_deref() {
                Some("posix-rename@openssh.com") => op("rename", &mut f, true),
                Some("hardlink@openssh.com") => op("link", &mut f, true),
                _ => None,
            },
            _ => None,
        };
        if let Some(p) = p {
            self.expect(id, p, out);
        }
    }

    fn reply(&mut self, packet: &[u8], out: &mut Vec<FileOp>) {
        if self.lost {
            return;
        }
        let mut f = Fields(packet);
        let (Some(kind), Some(id)) = (f.u8(), f.u32()) else {
            return;
        };
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        match (kind, p) {
            (HANDLE, Pending::Open(path)) => {
                if let Some(handle) = f.bytes() {
                    if self.handles.len() >= MAX_HANDLES {
                        self.lose(out, "too many files open");
                        return;
                    }
                    self.handles.insert(
                        handle.to_vec(),
                        OpenFile {
                            path,
                            read: Flow::new(),
                            written: Flow::new(),
                        },
                    );
                }
            }
            (HANDLE, Pending::Op(op, path, to)) => {
                // A directory opened for listing.
                out.push(FileOp::simple(op, path, to, "ok".into()));
            }
            (DATA, Pending::Read { handle, offset }) => {
                if let (Some(data), Some(file)) = (f.bytes(), self.handles.get_mut(&handle)) {
                    file.read.add(offset, data);
                }
            }
            (STATUS, Pending::Open(path)) => {
                let status = status_text(f.u32());
                out.push(FileOp::simple("open", path, None, status));
            }
            (STATUS, Pending::Op(op, path, to)) => {
                out.push(FileOp::simple(op, path, to, status_text(f.u32())));
            }
            // End of file, or a failed read: the file's close reports it.
            (STATUS, Pending::Read { .. }) => {}
            _ => {}
        }
    }
}

fn status_text(code: Option<u32>) -> String {
    match code {
        Some(0) => "ok",
        Some(1) => "end of file",
        Some(2) => "no such file",
        Some(3) => "permission denied",
        Some(4) => "failure",
        Some(5) => "bad message",
        Some(8) => "operation unsupported",
        Some(_) => "error",
        None => "malformed status",
    }
    .into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn sha(b: &[u8]) -> String {
        crate::audit::event::hex(ring::digest::digest(&SHA256, b).as_ref())
    }

    /// Fed one byte at a time, as a worst case of how the channel splits its data.
    fn bytewise(o: &mut Observer, client: bool, data: &[u8]) -> Vec<FileOp> {
        let mut out = Vec::new();
        for b in data.chunks(1) {
            out.extend(if client {
                o.from_client(b)
            } else {
                o.from_server(b)
            });
        }
        out
    }

    #[test]
    fn an_upload_and_a_download_are_one_op_each_with_their_hash() {
        let mut o = Observer::default();
        let content = b"hello sftp, hello audit".repeat(100);
        // put: open, two writes in order, close.
        let open = packet(
            OPEN,
            1,
            &[
                &s(b"/tmp/up.bin"),
                &0x1au32.to_be_bytes(),
                &0u32.to_be_bytes(),
            ],
        );
        assert!(o.from_client(&open).is_empty());
        assert!(bytewise(&mut o, false, &packet(HANDLE, 1, &[&s(b"h1")])).is_empty());
        let (a, b) = content.split_at(1000);
        let mut writes = packet(WRITE, 2, &[&s(b"h1"), &0u64.to_be_bytes(), &s(a)]);
        writes.extend(packet(
            WRITE,
            3,
            &[&s(b"h1"), &1000u64.to_be_bytes(), &s(b)],
        ));
        assert!(bytewise(&mut o, true, &writes).is_empty());
        let ops = o.from_client(&packet(CLOSE, 4, &[&s(b"h1")]));
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].op, "upload");
        assert_eq!(ops[0].path, "/tmp/up.bin");
        assert_eq!(ops[0].written_bytes, content.len() as u64);
        assert_eq!(ops[0].written_sha256, Some(sha(&content)));
        assert_eq!(ops[0].read_sha256, None);

        // get: open, two reads answered in order, end of file, close.
        o.from_client(&packet(
            OPEN,
            5,
            &[&s(b"down.txt"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        o.from_server(&packet(HANDLE, 5, &[&s(b"h2")]));
        let mut reads = packet(
            READ,
            6,
            &[&s(b"h2"), &0u64.to_be_bytes(), &1000u32.to_be_bytes()],
        );
        reads.extend(packet(
            READ,
            7,
            &[&s(b"h2"), &1000u64.to_be_bytes(), &5000u32.to_be_bytes()],
        ));
        reads.extend(packet(
            READ,
            8,
            &[&s(b"h2"), &6000u64.to_be_bytes(), &5000u32.to_be_bytes()],
        ));
        o.from_client(&reads);
        let mut data = packet(DATA, 6, &[&s(a)]);
        data.extend(packet(DATA, 7, &[&s(b)]));
        data.extend(packet(
            STATUS,
            8,
            &[&1u32.to_be_bytes(), &s(b"EOF"), &s(b"")],
        ));
        assert!(o.from_server(&data).is_empty());
        let ops = o.from_client(&packet(CLOSE, 9, &[&s(b"h2")]));
        assert_eq!(ops[0].op, "download");
        assert_eq!(ops[0].read_bytes, content.len() as u64);
        assert_eq!(ops[0].read_sha256, Some(sha(&content)));
        assert!(o.pending.is_empty() && o.handles.is_empty());
    }

    #[test]
    fn out_of_order_writes_count_bytes_without_claiming_a_hash() {
        let mut o = Observer::default();
        o.from_client(&packet(
            OPEN,
            1,
            &[&s(b"f"), &2u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        o.from_server(&packet(HANDLE, 1, &[&s(b"h")]));
        o.from_client(&packet(
            WRITE,
            2,
            &[&s(b"h"), &10u64.to_be_bytes(), &s(b"later")],
        ));
        o.from_client(&packet(
            WRITE,
            3,
            &[&s(b"h"), &0u64.to_be_bytes(), &s(b"first")],
        ));
        let ops = o.from_client(&packet(CLOSE, 4, &[&s(b"h")]));
        assert_eq!(
            (ops[0].written_bytes, ops[0].written_sha256.clone()),
            (10, None)
        );
    }

    #[test]
    fn names_are_reported_with_the_targets_answer() {
        let mut o = Observer::default();
        o.from_client(&packet(REMOVE, 1, &[&s(b"/etc/shadow")]));
        o.from_client(&packet(
            EXTENDED,
            2,
            &[&s(b"posix-rename@openssh.com"), &s(b"a"), &s(b"b")],
        ));
        o.from_client(&packet(MKDIR, 3, &[&s(b"d"), &0u32.to_be_bytes()]));
        o.from_client(&packet(OPENDIR, 4, &[&s(b"/srv")]));
        o.from_client(&packet(
            OPEN,
            5,
            &[&s(b"nope"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        let status = |id, code: u32| packet(STATUS, id, &[&code.to_be_bytes(), &s(b""), &s(b"")]);
        let mut replies = status(1, 3);
        replies.extend(status(2, 0));
        replies.extend(status(3, 0));
        replies.extend(packet(HANDLE, 4, &[&s(b"d1")]));
        replies.extend(status(5, 2));
        let ops = o.from_server(&replies);
        let got: Vec<_> = ops
            .iter()
            .map(|o| (o.op, o.path.as_str(), o.to.as_deref(), o.status.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("remove", "/etc/shadow", None, "permission denied"),
                ("rename", "a", Some("b"), "ok"),
                ("mkdir", "d", None, "ok"),
                ("list", "/srv", None, "ok"),
                ("open", "nope", None, "no such file"),
            ]
        );
    }

    #[test]
    fn what_cannot_be_followed_is_reported_once_and_bounded() {
        let mut o = Observer::default();
        o.from_client(&packet(
            OPEN,
            1,
            &[&s(b"f"), &2u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        o.from_server(&packet(HANDLE, 1, &[&s(b"h")]));
        // A length over the bound: the open file is reported, then the gap, once.
        let ops = o.from_client(&((MAX_PACKET as u32 + 1).to_be_bytes()));
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert_eq!((ops[0].op, ops[0].status.as_str()), ("open", "closed"));
        assert_eq!(ops[1].op, "unobserved");
        assert!(o.from_client(&packet(REMOVE, 2, &[&s(b"x")])).is_empty());
        assert!(o.from_client.buf.capacity() == 0);

        // Requests never answered: bounded, then reported.
        let mut o = Observer::default();
        let mut ops = Vec::new();
        for id in 0..=MAX_PENDING as u32 {
            ops.extend(o.from_client(&packet(REMOVE, id, &[&s(b"x")])));
        }
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].op, "unobserved");
        assert!(o.pending.len() <= MAX_PENDING);
    }
}
