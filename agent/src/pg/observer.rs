//! The statement observer: reads frontend messages the relay hands it and turns `Query`,
//! `Parse`, `Bind`, `Execute` (and, where allowed, `FunctionCall`) into [`Statement`]s.
//!
//! It remembers prepared statements and portals so that an `Execute` can be reported with the
//! text it runs. A named statement counts as prepared only once the server has accepted it
//! (its `ParseComplete`, matched in order through [`Observer::server_message`]), never because
//! the client sent it: PostgreSQL refuses a second `Parse` of a name in use, and the gateway
//! must not believe the refused text. What is tracked is bounded; a client that goes past the
//! bound ends its session with a protocol error instead of making later statements invisible.
//! Parameter values are rendered only when the resource allows.

use std::collections::{HashMap, VecDeque};

use gatehouse_core::pgwire::{split_cstr, split_i16, split_i32};
use gatehouse_core::session::{Statement, StatementKind};

/// At most this many named statements and portals are open per session (the client is told
/// and the session ends beyond it).
pub const MAX_TRACKED: usize = 4096;
/// Messages awaiting the server's answer (parses, closes, syncs) at once.
const MAX_PENDING: usize = 16 * 1024;
/// A rendered parameter value is cut at this many bytes.
const MAX_PARAM_BYTES: usize = 256;

/// Rendered bind parameters (`None` is SQL NULL).
type Params = Vec<Option<String>>;

/// A prepared statement's text as logged (possibly cut), its full length and hash when cut.
#[derive(Clone, Debug)]
struct Text {
    text: String,
    truncated_from: Option<usize>,
    sha256: Option<String>,
}

/// A frontend message whose effect depends on the server's answer, in the order sent.
#[derive(Debug)]
enum Pending {
    /// A `Parse`: prepared once `ParseComplete` comes. `refused` when the name was already in
    /// use as far as the gateway knows (PostgreSQL answers 42P05).
    Parse {
        name: String,
        text: Text,
        refused: bool,
    },
    /// A `Close` of a statement (`b'S'`) or portal (`b'P'`): done once `CloseComplete` comes.
    Close { kind: u8, name: String },
    /// `Sync` or a simple `Query`: the server answers `ReadyForQuery`, and whatever before it
    /// got no completion did not happen.
    Barrier,
}

/// Why the observer ends a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

pub struct Observer {
    statement_max_bytes: usize,
    log_parameters: bool,
    /// Whether fast-path `FunctionCall` messages may pass (and are logged).
    function_calls: bool,
    /// Statements the server accepted: name -> text.
    statements: HashMap<String, Text>,
    /// Sent, not yet answered.
    pending: VecDeque<Pending>,
    /// portal name -> (statement name, rendered params)
    portals: HashMap<String, (String, Option<Params>)>,
    /// The session ran SQL that may create or drop prepared statements (`PREPARE`,
    /// `DEALLOCATE`, `DISCARD`): names not prepared through the protocol since are reported
    /// as such rather than with a text the server may no longer hold.
    sql_prepares: bool,
}

impl Observer {
    pub fn new(statement_max_bytes: usize, log_parameters: bool) -> Self {
        Observer {
            statement_max_bytes,
            log_parameters,
            function_calls: false,
            statements: HashMap::new(),
            pending: VecDeque::new(),
            portals: HashMap::new(),
            sql_prepares: false,
        }
    }

    /// Lets fast-path function calls through, each logged (default: refused).
    pub fn allow_function_calls(mut self, allow: bool) -> Self {
        self.function_calls = allow;
        self
    }

    /// True for the message tags the observer needs whole.
    pub fn wants(tag: u8) -> bool {
        matches!(tag, b'Q' | b'P' | b'B' | b'E' | b'C' | b'F' | b'S')
    }

    /// True for the frontend messages a client may send once the session is established. Any
    /// other tag ends the session: nothing the gateway does not know passes unobserved.
    pub fn allowed(tag: u8) -> bool {
        matches!(
            tag,
            b'Q' | b'P'
                | b'B'
                | b'E'
                | b'C'
                | b'D'
                | b'H'
                | b'S'
                | b'F'
                | b'd'
                | b'c'
                | b'f'
                | b'X'
        )
    }

    /// Looks at one whole frontend message body before it is forwarded; returns the statement
    /// to report, if any, or why the session must end (the message is then not forwarded).
    pub fn observe(&mut self, tag: u8, body: &[u8]) -> Result<Option<Statement>, Violation> {
        match tag {
            b'Q' => {
                let Some((text, _)) = split_cstr(body) else {
                    return Ok(None);
                };
                if changes_prepared_statements(&text) {
                    // Which names the SQL made or dropped is not known here: forget them all,
                    // so that a name re-prepared through the protocol is believed (its Parse
                    // is logged) and others are reported as not seen, never with a stale text.
                    self.sql_prepares = true;
                    self.statements.clear();
                }
                let t = self.bound(&text);
                self.queue(Pending::Barrier)?;
                Ok(Some(statement(StatementKind::Query, t, None, None)))
            }
            b'S' => {
                self.queue(Pending::Barrier)?;
                Ok(None)
            }
            b'P' => {
                let Some((name, rest)) = split_cstr(body) else {
                    return Ok(None);
                };
                let Some((text, _)) = split_cstr(rest) else {
                    return Ok(None);
                };
                let text = self.bound(&text);
                let name = name.into_owned();
                let refused = !name.is_empty() && self.name_in_use(&name);
                if !name.is_empty() && !refused && self.open_statements() >= MAX_TRACKED {
                    return Err(Violation(format!(
                        "more than {MAX_TRACKED} prepared statements open in one session; close some (or use the unnamed statement)"
                    )));
                }
                self.queue(Pending::Parse {
                    name: name.clone(),
                    text: text.clone(),
                    refused,
                })?;
                // The unnamed statement is reported when it is executed; a named one when prepared.
                if name.is_empty() {
                    return Ok(None);
                }
                Ok(Some(statement(
                    StatementKind::Prepare,
                    text,
                    Some(name),
                    None,
                )))
            }
            b'B' => {
                let Some((portal, rest)) = split_cstr(body) else {
                    return Ok(None);
                };
                let Some((stmt, rest)) = split_cstr(rest) else {
                    return Ok(None);
                };
                let params = if self.log_parameters {
                    render_params(rest)
                } else {
                    None
                };
                let portal = portal.into_owned();
                if !self.portals.contains_key(&portal) && self.portals.len() >= MAX_TRACKED {
                    return Err(Violation(format!(
                        "more than {MAX_TRACKED} portals open in one session; close some"
                    )));
                }
                self.portals.insert(portal, (stmt.into_owned(), params));
                Ok(None)
            }
            b'E' => {
                let Some((portal, _)) = split_cstr(body) else {
                    return Ok(None);
                };
                let (stmt_name, params) = match self.portals.get(portal.as_ref()) {
                    Some((s, p)) => (s.clone(), p.clone()),
                    None => (String::new(), None),
                };
                let text = self.text_of(&stmt_name);
                let name = (!stmt_name.is_empty()).then_some(stmt_name);
                Ok(Some(statement(StatementKind::Execute, text, name, params)))
            }
            b'C' => {
                let Some((&kind, rest)) = body.split_first() else {
                    return Ok(None);
                };
                let Some((name, _)) = split_cstr(rest) else {
                    return Ok(None);
                };
                if kind == b'P' {
                    self.portals.remove(name.as_ref());
                }
                if matches!(kind, b'S' | b'P') {
                    self.queue(Pending::Close {
                        kind,
                        name: name.into_owned(),
                    })?;
                }
                Ok(None)
            }
            b'F' => {
                let call = describe_function_call(body);
                if !self.function_calls {
                    return Err(Violation(format!(
                        "fast-path function calls are not allowed through gatehouse ({call}); call the function with SELECT"
                    )));
                }
                let t = self.bound(&call);
                self.queue(Pending::Barrier)?;
                Ok(Some(statement(StatementKind::FunctionCall, t, None, None)))
            }
            _ => Ok(None),
        }
    }

    /// Takes one backend message tag, in order: `ParseComplete` (`1`), `CloseComplete` (`3`)
    /// and `ReadyForQuery` (`Z`) settle what the server did with the pending messages.
    pub fn server_message(&mut self, tag: u8) {
        match tag {
            b'1' => match self.pending.pop_front() {
                Some(Pending::Parse { name, text, .. }) => {
                    // The server accepted it, whatever the gateway expected.
                    self.statements.insert(name, text);
                }
                Some(other) => {
                    tracing::debug!(?other, "ParseComplete out of step; tracking reset");
                    self.pending.clear();
                }
                None => {}
            },
            b'3' => match self.pending.pop_front() {
                Some(Pending::Close { kind: b'S', name }) => {
                    self.statements.remove(&name);
                }
                Some(Pending::Close { .. }) => {}
                Some(other) => {
                    tracing::debug!(?other, "CloseComplete out of step; tracking reset");
                    self.pending.clear();
                }
                None => {}
            },
            b'Z' => {
                // Everything up to the batch's end that got no completion failed or was
                // skipped after an error.
                while let Some(p) = self.pending.pop_front() {
                    if matches!(p, Pending::Barrier) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }

    fn queue(&mut self, p: Pending) -> Result<(), Violation> {
        if self.pending.len() >= MAX_PENDING {
            return Err(Violation(format!(
                "more than {MAX_PENDING} messages sent without waiting for the server's answers"
            )));
        }
        self.pending.push_back(p);
        Ok(())
    }

    /// Whether a `Parse` of `name` will be refused: the name is prepared (and not being
    /// closed), or a parse of it is already on its way.
    fn name_in_use(&self, name: &str) -> bool {
        let mut in_use = self.statements.contains_key(name);
        for p in &self.pending {
            match p {
                Pending::Parse {
                    name: n, refused, ..
                } if n == name && !refused => in_use = true,
                Pending::Close {
                    kind: b'S',
                    name: n,
                } if n == name => in_use = false,
                _ => {}
            }
        }
        in_use
    }

    fn open_statements(&self) -> usize {
        self.statements.len()
            + self
                .pending
                .iter()
                .filter(|p| matches!(p, Pending::Parse { name, refused: false, .. } if !name.is_empty()))
                .count()
    }

    /// The text a statement name runs: the newest parse on its way that the server will
    /// accept, else what the server accepted.
    fn text_of(&self, name: &str) -> Text {
        let on_its_way = self.pending.iter().rev().find_map(|p| match p {
            Pending::Parse {
                name: n,
                text,
                refused: false,
            } if n == name => Some(text.clone()),
            _ => None,
        });
        if let Some(t) = on_its_way.or_else(|| self.statements.get(name).cloned()) {
            return t;
        }
        let text = if self.sql_prepares && !name.is_empty() {
            format!("<prepared statement \"{name}\" made by SQL PREPARE in this session; see its earlier statements>")
        } else {
            "<statement not seen by the gateway>".to_string()
        };
        Text {
            text,
            truncated_from: None,
            sha256: None,
        }
    }

    /// The text as logged: whole up to the bound; beyond it, head and tail (half the bound
    /// each) around a line saying what was left out, with the full length and SHA-256.
    fn bound(&self, text: &str) -> Text {
        if text.len() <= self.statement_max_bytes {
            return Text {
                text: text.to_string(),
                truncated_from: None,
                sha256: None,
            };
        }
        let half = self.statement_max_bytes / 2;
        let mut head = half;
        while !text.is_char_boundary(head) {
            head -= 1;
        }
        let mut tail = text.len() - half;
        while !text.is_char_boundary(tail) {
            tail += 1;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let sha256: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Text {
            text: format!(
                "{}\n-- [gatehouse: {} bytes left out of {}; sha256 {sha256}]\n{}",
                &text[..head],
                tail - head,
                text.len(),
                &text[tail..]
            ),
            truncated_from: Some(text.len()),
            sha256: Some(sha256),
        }
    }
}

fn statement(
    kind: StatementKind,
    t: Text,
    name: Option<String>,
    params: Option<Params>,
) -> Statement {
    Statement {
        kind,
        text: t.text,
        truncated_from: t.truncated_from,
        sha256: t.sha256,
        name,
        params,
    }
}

/// Whether simple-query SQL may create or drop prepared statements behind the protocol's back.
fn changes_prepared_statements(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    ["prepare", "deallocate", "discard"]
        .iter()
        .any(|w| lower.contains(w))
}

/// `FunctionCall`: the function's OID and its arguments' sizes (never their values).
fn describe_function_call(body: &[u8]) -> String {
    let parsed = (|| {
        let (oid, rest) = split_i32(body)?;
        let (nformats, mut rest) = split_i16(rest)?;
        for _ in 0..nformats.max(0) {
            rest = split_i16(rest)?.1;
        }
        let (nargs, mut rest) = split_i16(rest)?;
        let mut sizes = Vec::new();
        for _ in 0..nargs.max(0) {
            let (len, r) = split_i32(rest)?;
            if len < 0 {
                sizes.push("NULL".to_string());
                rest = r;
            } else {
                sizes.push(format!("{len} bytes"));
                rest = r.get(len as usize..)?;
            }
        }
        Some(format!(
            "function call: oid {}, {} argument(s): [{}]",
            oid as u32,
            sizes.len(),
            sizes.join(", ")
        ))
    })();
    parsed.unwrap_or_else(|| "function call: malformed message".to_string())
}

/// Renders `Bind` parameter values: text-format values as (bounded) text, binary ones as a
/// length note. Returns `None` on a malformed message.
fn render_params(rest: &[u8]) -> Option<Vec<Option<String>>> {
    let (nformats, mut rest) = split_i16(rest)?;
    let mut formats = Vec::with_capacity(nformats.max(0) as usize);
    for _ in 0..nformats {
        let (f, r) = split_i16(rest)?;
        formats.push(f);
        rest = r;
    }
    let (nparams, mut rest) = split_i16(rest)?;
    let mut out = Vec::with_capacity(nparams.max(0) as usize);
    for i in 0..nparams.max(0) as usize {
        let (len, r) = split_i32(rest)?;
        if len < 0 {
            out.push(None);
            rest = r;
            continue;
        }
        let value = r.get(..len as usize)?;
        rest = &r[len as usize..];
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i)?,
        };
        out.push(Some(render_value(value, format != 0)));
    }
    Some(out)
}

/// Text-format values as text; binary ones as text when they are printable UTF-8 (text types
/// are sent that way), otherwise as `\x` hex. Either way at most [`MAX_PARAM_BYTES`].
fn render_value(value: &[u8], binary: bool) -> String {
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|s| !binary || !s.chars().any(char::is_control));
    let mut s = match text {
        Some(t) => t.to_string(),
        None => {
            let shown = &value[..value.len().min(MAX_PARAM_BYTES / 2)];
            let mut h = String::from("\\x");
            for b in shown {
                h.push_str(&format!("{b:02x}"));
            }
            if shown.len() < value.len() {
                h.push('…');
            }
            return h;
        }
    };
    if s.len() > MAX_PARAM_BYTES {
        let mut cut = MAX_PARAM_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn bind(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
        let mut b = cstr(portal);
        b.extend(cstr(stmt));
        b.extend(0i16.to_be_bytes());
        b.extend((params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(v.as_bytes());
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        b.extend(0i16.to_be_bytes());
        b
    }

    fn parse(name: &str, text: &str) -> Vec<u8> {
        let mut p = cstr(name);
        p.extend(cstr(text));
        p.extend(0i16.to_be_bytes());
        p
    }

    fn exec(o: &mut Observer, portal: &str) -> Statement {
        let mut e = cstr(portal);
        e.extend(0i32.to_be_bytes());
        o.observe(b'E', &e).unwrap().unwrap()
    }

    #[test]
    fn simple_query_is_reported_and_bounded_by_head_and_tail() {
        let mut o = Observer::new(64, false);
        let s = o.observe(b'Q', &cstr("select 1")).unwrap().unwrap();
        assert_eq!(
            (s.kind, s.text.as_str(), s.truncated_from),
            (StatementKind::Query, "select 1", None)
        );
        // A long comment in front does not push the statement out of the log.
        let sql = format!("/*{}*/ delete from orders", "x".repeat(9000));
        let s = o.observe(b'Q', &cstr(&sql)).unwrap().unwrap();
        assert_eq!(s.truncated_from, Some(sql.len()));
        assert!(s.text.starts_with("/*xxxxxxxxx"), "{}", s.text);
        assert!(s.text.ends_with("*/ delete from orders"), "{}", s.text);
        let want = ring::digest::digest(&ring::digest::SHA256, sql.as_bytes());
        let want: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s.sha256.as_deref(), Some(want.as_str()));
        assert!(s.text.contains(&format!("bytes left out of {}", sql.len())));
        // Character boundaries hold.
        let s = o.observe(b'Q', &cstr(&"é".repeat(100))).unwrap().unwrap();
        assert!(s.text.starts_with("éé") && s.text.ends_with("éé"));
    }

    #[test]
    fn a_refused_reparse_of_a_name_does_not_replace_what_the_server_runs() {
        let mut o = Observer::new(1000, false);
        o.observe(b'P', &parse("x1", "delete from orders")).unwrap();
        o.observe(b'S', &[]).unwrap();
        o.server_message(b'1');
        o.server_message(b'Z');
        // The second Parse of x1 is refused by PostgreSQL (42P05): ErrorResponse, then Z.
        let prep = o.observe(b'P', &parse("x1", "select 1")).unwrap().unwrap();
        assert_eq!(prep.text, "select 1");
        o.observe(b'S', &[]).unwrap();
        // Pipelined before the server answered: bind and execute x1 after the Sync.
        o.observe(b'B', &bind("", "x1", &[])).unwrap();
        assert_eq!(exec(&mut o, "").text, "delete from orders");
        o.server_message(b'E');
        o.server_message(b'Z');
        o.observe(b'B', &bind("", "x1", &[])).unwrap();
        assert_eq!(exec(&mut o, "").text, "delete from orders");
    }

    #[test]
    fn a_parse_counts_once_the_server_accepts_it_and_a_close_once_it_is_done() {
        let mut o = Observer::new(1000, false);
        // Pipelined: parse, bind, execute before any answer: the text on its way is used.
        o.observe(b'P', &parse("s1", "select 1")).unwrap();
        o.observe(b'B', &bind("", "s1", &[])).unwrap();
        assert_eq!(exec(&mut o, "").text, "select 1");
        o.observe(b'S', &[]).unwrap();
        // A second batch queued behind the first is not dropped by the first's ReadyForQuery.
        o.observe(b'P', &parse("s2", "select 2")).unwrap();
        o.observe(b'S', &[]).unwrap();
        o.server_message(b'1');
        o.server_message(b'2');
        o.server_message(b'Z');
        o.server_message(b'1');
        o.server_message(b'Z');
        o.observe(b'B', &bind("", "s2", &[])).unwrap();
        assert_eq!(exec(&mut o, "").text, "select 2");
        // A parse that failed (syntax error) is not believed.
        o.observe(b'P', &parse("s3", "selec 3")).unwrap();
        o.observe(b'S', &[]).unwrap();
        o.server_message(b'E');
        o.server_message(b'Z');
        o.observe(b'B', &bind("", "s3", &[])).unwrap();
        assert_eq!(exec(&mut o, "").text, "<statement not seen by the gateway>");
        // Close, then re-prepare the name: accepted.
        let mut close = vec![b'S'];
        close.extend(cstr("s1"));
        o.observe(b'C', &close).unwrap();
        o.observe(b'P', &parse("s1", "select 'new'")).unwrap();
        o.observe(b'S', &[]).unwrap();
        o.server_message(b'3');
        o.server_message(b'1');
        o.server_message(b'Z');
        o.observe(b'B', &bind("", "s1", &[])).unwrap();
        assert_eq!(exec(&mut o, "").text, "select 'new'");
    }

    #[test]
    fn sql_that_changes_prepared_statements_leaves_no_stale_text() {
        let mut o = Observer::new(1000, false);
        o.observe(b'P', &parse("x1", "select 'harmless'")).unwrap();
        o.observe(b'S', &[]).unwrap();
        o.server_message(b'1');
        o.server_message(b'Z');
        o.observe(b'Q', &cstr("DEALLOCATE x1")).unwrap();
        // Pipelined behind it: x1 prepared anew and run.
        o.observe(b'P', &parse("x1", "delete from orders")).unwrap();
        o.observe(b'B', &bind("", "x1", &[])).unwrap();
        assert_eq!(exec(&mut o, "").text, "delete from orders");
        // A name the SQL may have made is reported as such.
        o.observe(b'B', &bind("", "made_by_sql", &[])).unwrap();
        assert!(exec(&mut o, "").text.contains("made by SQL PREPARE"));
    }

    #[test]
    fn too_many_open_statements_end_the_session_instead_of_hiding_later_ones() {
        let mut o = Observer::new(100, false);
        for i in 0..MAX_TRACKED {
            o.observe(b'P', &parse(&format!("s{i}"), "select 1"))
                .unwrap();
            o.server_message(b'1');
        }
        let err = o
            .observe(b'P', &parse("one-more", "delete from t"))
            .unwrap_err();
        assert!(err.0.contains("prepared statements"), "{err}");
        // The unnamed statement still works.
        assert!(o.observe(b'P', &parse("", "select 2")).is_ok());
    }

    #[test]
    fn function_calls_are_refused_unless_allowed_and_then_logged() {
        let mut call = 1234i32.to_be_bytes().to_vec();
        call.extend(0i16.to_be_bytes());
        call.extend(2i16.to_be_bytes());
        call.extend(3i32.to_be_bytes());
        call.extend(b"abc");
        call.extend((-1i32).to_be_bytes());
        call.extend(0i16.to_be_bytes());
        let mut o = Observer::new(1000, false);
        let err = o.observe(b'F', &call).unwrap_err();
        assert!(
            err.0.contains("fast-path function calls are not allowed"),
            "{err}"
        );
        assert!(err.0.contains("oid 1234"), "{err}");
        let mut o = Observer::new(1000, false).allow_function_calls(true);
        let s = o.observe(b'F', &call).unwrap().unwrap();
        assert_eq!(s.kind, StatementKind::FunctionCall);
        assert_eq!(
            s.text,
            "function call: oid 1234, 2 argument(s): [3 bytes, NULL]"
        );
        assert!(!Observer::allowed(b'p') && !Observer::allowed(b'?'));
    }

    #[test]
    fn execute_reports_the_prepared_text_and_params_only_when_allowed() {
        for log in [false, true] {
            let mut o = Observer::new(1000, log);
            let prep = o
                .observe(b'P', &parse("s1", "select * from t where id = $1"))
                .unwrap()
                .unwrap();
            assert_eq!(prep.kind, StatementKind::Prepare);
            assert!(o
                .observe(b'B', &bind("", "s1", &[Some("42"), None]))
                .unwrap()
                .is_none());
            let s = exec(&mut o, "");
            assert_eq!(s.text, "select * from t where id = $1");
            assert_eq!(s.name.as_deref(), Some("s1"));
            if log {
                assert_eq!(s.params, Some(vec![Some("42".into()), None]));
            } else {
                assert_eq!(s.params, None);
            }
        }
    }

    #[test]
    fn binary_values_render_as_text_or_hex() {
        assert_eq!(render_value(b"from-rust", true), "from-rust");
        assert_eq!(render_value(&42i32.to_be_bytes(), true), "\\x0000002a");
        assert_eq!(
            render_value("é".repeat(300).as_bytes(), false)
                .chars()
                .count(),
            129
        );
    }

    #[test]
    fn malformed_messages_report_nothing_and_do_not_panic() {
        let mut o = Observer::new(100, true);
        assert!(o.observe(b'Q', b"no terminator").unwrap().is_none());
        assert!(o
            .observe(b'B', &[0, 0, 0xff, 0xff, 0, 1])
            .unwrap()
            .is_none());
        assert!(o.observe(b'C', b"").unwrap().is_none());
        // Server messages with nothing pending change nothing.
        for tag in [b'1', b'3', b'Z', b'E'] {
            o.server_message(tag);
        }
    }
}
