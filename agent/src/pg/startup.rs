//! What a client's startup packet may ask of the upstream session. Nothing is dropped without a
//! word: a parameter is forwarded, answered (`_pq_.*` protocol options, in
//! `NegotiateProtocolVersion`), or refused with a message that names it.
//!
//! Settings (startup parameters that are server settings, and `-c name=value` / `--name=value`
//! in `options`) are forwarded when they are on [`SETTINGS`], the ones a session may set for
//! itself without reaching beyond its own role (a read-only transaction default, timeouts,
//! formats). Others (`role`, `session_authorization`, anything a brokered role could use to
//! become another, and unknown ones) are refused, as are replication connections.

/// Server settings a client may ask for at startup (lowercase; PostgreSQL's names are
/// case-insensitive).
pub const SETTINGS: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "intervalstyle",
    "lock_timeout",
    "search_path",
    "statement_timeout",
    "timezone",
];

/// Startup parameters the gateway itself consumes.
const GATEWAY_PARAMS: &[&str] = &["user", "database"];

/// A startup packet, vetted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vetted {
    /// Settings to pass upstream as startup parameters, `options` unpacked.
    pub settings: Vec<(String, String)>,
}

/// The `_pq_.*` protocol options of a startup packet: the gateway supports none, and names them
/// in `NegotiateProtocolVersion` as PostgreSQL does (the session goes on without them).
pub fn protocol_options(params: &[(String, String)]) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Why a startup packet asks for something the gateway does not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("replication connections (replication={0}) are not allowed through gatehouse")]
    Replication(String),
    #[error("startup parameter `{0}` is not allowed through gatehouse; set it with SET after connecting, if your role may")]
    Parameter(String),
    #[error("`options` asks for `{0}`, which is not allowed through gatehouse (allowed: -c NAME=VALUE for {allowed})", allowed = SETTINGS.join(", "))]
    Option(String),
}

/// Sorts a client's startup parameters into what is forwarded, answered or refused.
pub fn vet(params: &[(String, String)]) -> Result<Vetted, Refused> {
    let mut out = Vetted::default();
    for (key, value) in params {
        let lower = key.to_ascii_lowercase();
        if GATEWAY_PARAMS.contains(&lower.as_str()) {
            continue;
        }
        if lower.starts_with("_pq_.") {
            continue;
        }
        match lower.as_str() {
            "replication" => {
                if !matches!(
                    value.to_ascii_lowercase().as_str(),
                    "false" | "off" | "no" | "0"
                ) {
                    return Err(Refused::Replication(value.clone()));
                }
            }
            "options" => {
                for (name, value) in options(value)? {
                    out.settings.push((name, value));
                }
            }
            _ if SETTINGS.contains(&lower.as_str()) => {
                out.settings.push((key.clone(), value.clone()));
            }
            _ => return Err(Refused::Parameter(key.clone())),
        }
    }
    Ok(out)
}

/// Whether a setting may be forwarded upstream (for the connector's last check).
pub fn forwardable(name: &str) -> bool {
    SETTINGS.contains(&name.to_ascii_lowercase().as_str())
}

/// Unpacks `options` (command-line style, backslash escapes a space): `-c name=value`,
/// `-cname=value` and `--name=value`, each an allowed setting.
fn options(text: &str) -> Result<Vec<(String, String)>, Refused> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next().ok_or_else(|| Refused::Option(w.clone()))?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else {
            return Err(Refused::Option(w));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(Refused::Option(setting));
        };
        let name = name.replace('-', "_");
        if !forwardable(&name) {
            return Err(Refused::Option(format!("{name}={value}")));
        }
        out.push((name, value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allowed_settings_are_forwarded_and_options_unpacked() {
        let v = vet(&p(&[
            ("user", "alice"),
            ("database", "orders-db"),
            ("application_name", "psql"),
            ("options", "-c default_transaction_read_only=on --statement-timeout=5s -clock_timeout=1s -c search_path=a\\ b"),
            ("_pq_.test", "x"),
        ]))
        .unwrap();
        assert_eq!(
            v.settings,
            p(&[
                ("application_name", "psql"),
                ("default_transaction_read_only", "on"),
                ("statement_timeout", "5s"),
                ("lock_timeout", "1s"),
                ("search_path", "a b"),
            ])
        );
        assert_eq!(
            protocol_options(&p(&[("user", "alice"), ("_pq_.test", "x")])),
            ["_pq_.test"]
        );
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        assert_eq!(
            vet(&p(&[("replication", "database")])),
            Err(Refused::Replication("database".into()))
        );
        assert!(vet(&p(&[("replication", "false")])).is_ok());
        assert_eq!(
            vet(&p(&[("role", "postgres")])),
            Err(Refused::Parameter("role".into()))
        );
        for (options, named) in [
            ("-c role=postgres", "role=postgres"),
            ("-c session_authorization=postgres", "session_authorization"),
            ("-B 100", "-B"),
            ("-c", "-c"),
            ("-c novalue", "novalue"),
        ] {
            let err = vet(&p(&[("options", options)])).unwrap_err().to_string();
            assert!(err.contains(named), "{options}: {err}");
        }
    }
}
