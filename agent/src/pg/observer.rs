//! The statement observer: reads frontend messages the relay hands it and turns `Query`,
//! `Parse`, `Bind` and `Execute` into [`Statement`]s.
//!
//! It remembers prepared statements and portals (bounded in number) so that an `Execute` can be
//! reported with the text it runs. Parameter values are rendered only when the resource allows.

use std::collections::HashMap;

use gatehouse_core::pgwire::{split_cstr, split_i16, split_i32};
use gatehouse_core::session::{Statement, StatementKind};

/// At most this many named statements and portals are remembered per session.
const MAX_TRACKED: usize = 4096;
/// A rendered parameter value is cut at this many bytes.
const MAX_PARAM_BYTES: usize = 256;

/// Rendered bind parameters (`None` is SQL NULL).
type Params = Vec<Option<String>>;

pub struct Observer {
    statement_max_bytes: usize,
    log_parameters: bool,
    /// statement name -> (text, original length when cut)
    statements: HashMap<String, (String, Option<usize>)>,
    /// portal name -> (statement name, rendered params)
    portals: HashMap<String, (String, Option<Params>)>,
}

impl Observer {
    pub fn new(statement_max_bytes: usize, log_parameters: bool) -> Self {
        Observer {
            statement_max_bytes,
            log_parameters,
            statements: HashMap::new(),
            portals: HashMap::new(),
        }
    }

    /// True for the message tags the observer needs whole.
    pub fn wants(tag: u8) -> bool {
        matches!(tag, b'Q' | b'P' | b'B' | b'E' | b'C')
    }

    /// Looks at one whole frontend message body; returns the statement to report, if any.
    pub fn observe(&mut self, tag: u8, body: &[u8]) -> Option<Statement> {
        match tag {
            b'Q' => {
                let (text, _) = split_cstr(body)?;
                let (text, truncated_from) = self.bound(&text);
                Some(Statement {
                    kind: StatementKind::Query,
                    text,
                    truncated_from,
                    name: None,
                    params: None,
                })
            }
            b'P' => {
                let (name, rest) = split_cstr(body)?;
                let (text, _) = split_cstr(rest)?;
                let (text, truncated_from) = self.bound(&text);
                let name = name.into_owned();
                if self.statements.len() < MAX_TRACKED || self.statements.contains_key(&name) {
                    self.statements
                        .insert(name.clone(), (text.clone(), truncated_from));
                }
                // The unnamed statement is reported when it is executed; a named one when prepared.
                if name.is_empty() {
                    return None;
                }
                Some(Statement {
                    kind: StatementKind::Prepare,
                    text,
                    truncated_from,
                    name: Some(name),
                    params: None,
                })
            }
            b'B' => {
                let (portal, rest) = split_cstr(body)?;
                let (stmt, rest) = split_cstr(rest)?;
                let params = if self.log_parameters {
                    render_params(rest)
                } else {
                    None
                };
                let portal = portal.into_owned();
                if self.portals.len() < MAX_TRACKED || self.portals.contains_key(&portal) {
                    self.portals.insert(portal, (stmt.into_owned(), params));
                }
                None
            }
            b'E' => {
                let (portal, _) = split_cstr(body)?;
                let (stmt_name, params) = match self.portals.get(portal.as_ref()) {
                    Some((s, p)) => (s.clone(), p.clone()),
                    None => (String::new(), None),
                };
                let (text, truncated_from) = match self.statements.get(&stmt_name) {
                    Some((t, cut)) => (t.clone(), *cut),
                    None => ("<statement not seen by the gateway>".to_string(), None),
                };
                Some(Statement {
                    kind: StatementKind::Execute,
                    text,
                    truncated_from,
                    name: (!stmt_name.is_empty()).then_some(stmt_name),
                    params,
                })
            }
            b'C' => {
                let (&kind, rest) = body.split_first()?;
                let (name, _) = split_cstr(rest)?;
                match kind {
                    b'S' => self.statements.remove(name.as_ref()),
                    b'P' => self
                        .portals
                        .remove(name.as_ref())
                        .map(|_| (String::new(), None)),
                    _ => None,
                };
                None
            }
            _ => None,
        }
    }

    fn bound(&self, text: &str) -> (String, Option<usize>) {
        if text.len() <= self.statement_max_bytes {
            return (text.to_string(), None);
        }
        let mut cut = self.statement_max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        (text[..cut].to_string(), Some(text.len()))
    }
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

    #[test]
    fn simple_query_is_reported_and_bounded() {
        let mut o = Observer::new(10, false);
        let s = o.observe(b'Q', &cstr("select 1")).unwrap();
        assert_eq!(
            (s.kind, s.text.as_str(), s.truncated_from),
            (StatementKind::Query, "select 1", None)
        );
        let s = o.observe(b'Q', &cstr("select 'ééééééé'")).unwrap();
        assert!(s.text.len() <= 10);
        assert_eq!(s.truncated_from, Some("select 'ééééééé'".len()));
    }

    #[test]
    fn execute_reports_the_prepared_text_and_params_only_when_allowed() {
        for log in [false, true] {
            let mut o = Observer::new(1000, log);
            let mut parse = cstr("s1");
            parse.extend(cstr("select * from t where id = $1"));
            parse.extend(0i16.to_be_bytes());
            let prep = o.observe(b'P', &parse).unwrap();
            assert_eq!(prep.kind, StatementKind::Prepare);
            assert!(o
                .observe(b'B', &bind("", "s1", &[Some("42"), None]))
                .is_none());
            let mut exec = cstr("");
            exec.extend(0i32.to_be_bytes());
            let s = o.observe(b'E', &exec).unwrap();
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
        assert!(o.observe(b'Q', b"no terminator").is_none());
        assert!(o.observe(b'B', &[0, 0, 0xff, 0xff, 0, 1]).is_none());
        assert!(o.observe(b'C', b"").is_none());
    }
}
