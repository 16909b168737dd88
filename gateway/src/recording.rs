//! Session recordings: what a session showed and was sent (SSH terminal output, input when
//! the resource records it, window sizes, commands, exit statuses, forwarded-port bytes), with
//! timing, in chunk files under `[recordings] dir/<session id>/` whose SHA-256 is chained into
//! the audit log as each is closed (`recording.chunk` events).
//!
//! - [`format`]: the lossless record format of a chunk file.
//! - [`writer`]: the recorder a live session feeds (bounded, fails closed on `strict`).
//! - [`read`]: finding recordings from their events, loading chunks only after checking them
//!   against their events, replaying, and verifying every recording on disk against the log.
//! - [`asciicast`]: the asciicast v2 export.
//! - [`guard`]: what a replay lets reach the auditor's terminal (no string sequences, no
//!   queries).
//!
//! The chunk events are the index: each names its file, size, hash and time span, so a replay
//! or a seek reads only the chunks it needs. Search text (output stripped of terminal control
//! sequences, and each command) is written beside the chunks as they are written.

pub mod asciicast;
pub mod format;
pub mod guard;
pub mod read;
mod text;
pub mod writer;

use std::path::{Path, PathBuf};

use gatehouse_core::session::SessionId;

/// The search text of a session, beside its chunks.
pub const SEARCH_FILE: &str = "search.txt";

/// The file name of chunk `n` of a session.
pub fn chunk_name(n: u64) -> String {
    format!("{n:08}.rec")
}

/// The directory of session `id`'s recording.
pub fn session_dir(dir: &Path, id: &SessionId) -> PathBuf {
    dir.join(id.to_string())
}

/// The directory of the session a stored event names, if the name is a session id (hex): a
/// name from the store never becomes a path outside `dir`.
pub fn stored_session_dir(dir: &Path, id: &str) -> Option<PathBuf> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| dir.join(id))
}
