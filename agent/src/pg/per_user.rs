//! Per-user upstream roles: each engineer's session logs in upstream as a role of their own
//! (`gh_write_alice`), a member of the resource role's shared role, instead of everyone running
//! as the shared role itself.
//!
//! With one shared role, every engineer can read everyone's statements in
//! `pg_stat_activity` and end their backends with `pg_cancel_backend`: PostgreSQL allows both
//! for backends of a role one has the privileges of. A per-user role has the shared role's
//! privileges (it is a member that inherits) but not the other per-user roles', so neither
//! works across people, and the upstream's own logs and `pg_stat_activity` name the person.
//!
//! For each session, under a lock per role name (concurrent sessions of one person must not
//! overwrite each other's password before logging in), [`connect_as`] logs in with the
//! resource's admin credential (a role with `CREATEROLE`), creates the per-user role when it
//! does not exist, sets a fresh random password (sent as a SCRAM verifier, so the password
//! itself never reaches the server or its logs) valid for two minutes by the server's clock,
//! grants it the shared role, and logs in as it. The password is never stored and is useless
//! once the session has logged in; the role stays (its objects and grants with it).

use std::sync::Arc;

use base64::Engine as _;
use bytes::BytesMut;
use gatehouse_core::pgwire::{self, ErrorFields, WireError};
use gatehouse_core::Secret;
use tokio::io::AsyncWriteExt;

use super::connect::{connect, PgTarget, Upstream, UpstreamError};
use super::security::UpstreamStream;

/// Longest PostgreSQL identifier (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;
/// Largest message accepted from the upstream while provisioning.
const MAX_MESSAGE: usize = 1 << 20;
/// Locks striped by role name: a person's concurrent logins take turns, others rarely wait.
static LOCKS: [tokio::sync::Mutex<()>; 32] = [const { tokio::sync::Mutex::const_new(()) }; 32];

/// A resource role served through per-user upstream roles.
#[derive(Clone, Debug)]
pub struct PerUserRoles {
    /// The role that creates and alters per-user roles (`CREATEROLE`, and on PostgreSQL 16+
    /// `ADMIN OPTION` on the shared role).
    pub admin_username: String,
    pub admin_password: Secret<String>,
    /// What every per-user role's name starts with (the gateway's namespace upstream).
    pub prefix: String,
    /// The Gatehouse role (`read`, `write`) the session was admitted to.
    pub role: String,
}

/// Whether `prefix` may start per-user role names: 1-20 characters of `[a-z0-9_]`, not
/// starting with a digit (short enough to leave room for the person's name in PostgreSQL's
/// 63 bytes, plain enough to need no quoting). Both configs check it.
pub fn valid_prefix(prefix: &str) -> bool {
    (1..=20).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The upstream role name for `user` in Gatehouse role `role`: `{prefix}{role}_{user}` in
/// lower-case letters, digits and `_`; when a name had to be changed to fit (other
/// characters, upper case, length) or the role has a `_` or `-` of its own, eight hex digits
/// of a hash of the originals follow, so that two people or roles never share a role.
pub fn role_name(prefix: &str, role: &str, user: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '_' => c,
                _ => '_',
            })
            .collect()
    };
    let head = format!("{}{}_", clean(prefix), clean(role));
    let body = clean(user);
    // `{role}_{user}` reads back one way only when the role has no `_` of its own
    // (role `read_x` with user `alice` and role `read` with user `x_alice` would meet).
    let plain_role = !role.contains(['_', '-']) && clean(role) == role;
    if plain_role && body == user && head.len() + body.len() <= MAX_IDENTIFIER {
        return head + &body;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{role}\0{user}").as_bytes());
    let tag: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let room = MAX_IDENTIFIER.saturating_sub(head.len() + 1 + tag.len());
    let body: String = body.chars().take(room).collect();
    format!("{head}{body}_{tag}")
}

/// Connects for `user`: through their per-user role where `target` has
/// [`PgTarget::per_user`], else as the shared role. Returns the connection and the upstream
/// role it logged in as.
pub async fn connect_as(
    target: &PgTarget,
    user: &str,
    client_params: &[(String, String)],
) -> Result<(Upstream, String), UpstreamError> {
    let Some(per) = &target.per_user else {
        return Ok((
            connect(target, client_params).await?,
            target.username.clone(),
        ));
    };
    let name = role_name(&per.prefix, &per.role, user);
    let stripe = ring::digest::digest(&ring::digest::SHA256, name.as_bytes()).as_ref()[0];
    let _turn = LOCKS[usize::from(stripe) % LOCKS.len()].lock().await;
    let password = provision(target, per, &name)
        .await
        .map_err(|e| UpstreamError::PerUserRole(Box::new(e)))?;
    let mine = PgTarget {
        username: name.clone(),
        password,
        per_user: None,
        ..target.clone()
    };
    Ok((connect(&mine, client_params).await?, name))
}

/// Creates or refreshes role `name` with a fresh password; returns the password.
async fn provision(
    target: &PgTarget,
    per: &Arc<PerUserRoles>,
    name: &str,
) -> Result<Secret<String>, UpstreamError> {
    let mut raw = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| UpstreamError::Scram("no randomness for a password".into()))?;
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    // PBKDF2 (4096 rounds): off the async workers.
    let verifier = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || {
            postgres_protocol::password::scram_sha_256(password.as_bytes())
        })
        .await
        .map_err(|e| UpstreamError::Scram(e.to_string()))?
    };
    let admin = PgTarget {
        username: per.admin_username.clone(),
        password: per.admin_password.clone(),
        per_user: None,
        ..target.clone()
    };
    let sql = provisioning_sql(name, &target.username, &verifier);
    let mut up = connect(&admin, &[]).await?;
    let mut attempt = 0;
    loop {
        match simple_query(&mut up.stream, &sql).await {
            // Another gateway or agent created the role between the check and the CREATE.
            Err(UpstreamError::Refused(f)) if f.code == "42710" && attempt == 0 => attempt += 1,
            other => {
                let mut out = BytesMut::new();
                pgwire::terminate(&mut out);
                let _ = up.stream.write_all(&out).await;
                other?;
                return Ok(Secret::new(password));
            }
        }
    }
}

/// The statements that make `name` a login role, member of `shared`, whose password is
/// `verifier` until two minutes from now on the server's clock. A role of that name that
/// already holds more than a per-user role may (superuser, role or database creation,
/// replication, bypassing row security) is refused, not logged into. `name` is made of
/// `[a-z0-9_]` ([`role_name`]); `shared` and `verifier` are quoted.
fn provisioning_sql(name: &str, shared: &str, verifier: &str) -> String {
    let ident = quote_ident(name);
    let literal = quote_literal(name);
    let verifier = quote_literal(verifier);
    let shared = quote_ident(shared);
    // The password goes through format(%L) inside the block because VALID UNTIL takes only a
    // literal and the expiry must be the server's now().
    format!(
        "DO $gatehouse$ BEGIN \
           IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {literal}) THEN \
             CREATE ROLE {ident} NOLOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; \
           ELSIF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {literal} \
               AND (rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls)) THEN \
             RAISE EXCEPTION 'role % has attributes a per-user role must not have', {literal}; \
           END IF; \
           EXECUTE format('ALTER ROLE %I WITH LOGIN PASSWORD %L VALID UNTIL %L', \
             {literal}, {verifier}, (now() + interval '2 minutes')::text); \
         END $gatehouse$; \
         GRANT {shared} TO {ident}"
    )
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs `sql` as one simple query; the first ErrorResponse is the error.
async fn simple_query(stream: &mut UpstreamStream, sql: &str) -> Result<(), UpstreamError> {
    let mut out = BytesMut::new();
    pgwire::put_message(&mut out, b'Q', |b| {
        b.extend_from_slice(sql.as_bytes());
        b.extend_from_slice(&[0]);
    });
    stream.write_all(&out).await.map_err(WireError::from)?;
    let mut error = None;
    loop {
        let (tag, body) = pgwire::read_message(stream, MAX_MESSAGE).await?;
        match tag {
            b'E' if error.is_none() => error = Some(ErrorFields::parse(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(f) => Err(UpstreamError::Refused(f)),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_readable_and_others_get_a_hash() {
        assert_eq!(role_name("gh_", "write", "alice"), "gh_write_alice");
        let mixed = role_name("gh_", "write", "Alice.Smith@example.com");
        assert!(
            mixed.starts_with("gh_write_alice_smith_example_com_"),
            "{mixed}"
        );
        assert_eq!(mixed.len(), "gh_write_alice_smith_example_com_".len() + 8);
        // Names that clean to the same text stay apart.
        assert_ne!(
            role_name("gh_", "read", "a.b"),
            role_name("gh_", "read", "a-b")
        );
        assert_ne!(
            role_name("gh_", "read", "a_b"),
            role_name("gh_", "read", "a.b")
        );
        // Where a role has `_` of its own, the split between role and user is ambiguous.
        assert_ne!(
            role_name("gh_", "read_x", "alice"),
            role_name("gh_", "read", "x_alice")
        );
        // Roles stay apart too.
        assert_ne!(
            role_name("gh_", "read", "bob"),
            role_name("gh_", "write", "bob")
        );
        let long = role_name("gh_", "write", &"x".repeat(200));
        assert!(long.len() <= MAX_IDENTIFIER, "{}", long.len());
        assert_ne!(long, role_name("gh_", "write", &"x".repeat(199)));
        for name in [&mixed, &long] {
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }

    #[test]
    fn the_provisioning_sql_quotes_what_it_did_not_make() {
        let sql = provisioning_sql("gh_read_bob", "we\"ird'role", "SCRAM-SHA-256$4096:a$b:c");
        assert!(
            sql.contains("GRANT \"we\"\"ird'role\" TO \"gh_read_bob\""),
            "{sql}"
        );
        assert!(sql.contains("'SCRAM-SHA-256$4096:a$b:c'"), "{sql}");
        assert!(sql.contains("rolname = 'gh_read_bob'"), "{sql}");
    }
}
