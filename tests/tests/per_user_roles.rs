//! Per-user upstream roles (`per_user_roles` on a PostgreSQL resource) against a real
//! PostgreSQL, with psql: each person's session runs as a role of their own, a member of the
//! shared role, so nobody reads another's statements in `pg_stat_activity` or cancels their
//! backend (with one shared role, both work across people), and the server's own views name
//! the person.

use std::time::Duration;

use gatehouse_tests::pg::{ORDERS_DB, ORDERS_PASSWORD, ORDERS_USER};
use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Psql, Resource};

const ADMIN_PASSWORD: &str = "gh-admin-pw";

fn per_user(resource: Resource, admin: &str) -> Resource {
    resource.raw(
        "per_user_roles",
        &format!("{{ admin = {{ username = \"{admin}\", password_env = \"GH_ADMIN_PW\" }} }}"),
    )
}

#[test]
fn each_person_runs_as_their_own_role_and_cannot_touch_anothers_backend() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    pg.exec(
        "postgres",
        &format!("create role gh_admin login createrole password '{ADMIN_PASSWORD}'"),
    )?;
    let labels = [("env", "dev"), ("data_class", "internal")];
    let gw = Gateway::start(
        GatewayConfig::new()
            .env("GH_ADMIN_PW", ADMIN_PASSWORD)
            // Per-user roles; the shared role's password is not needed (it may be NOLOGIN).
            .resource(per_user(
                Resource::postgres("orders-db", pg.addr(), ORDERS_DB)
                    .raw("credential", &format!("{{ username = \"{ORDERS_USER}\" }}"))
                    .labels(&labels),
                "gh_admin",
            ))
            // The same database through one shared role, for the contrast.
            .resource(Resource::orders_dev(&pg, "orders-shared"))
            // An admin credential that may not create roles: sessions are refused, never
            // let through as the shared role.
            .resource(per_user(
                Resource::orders_dev(&pg, "orders-noadmin"),
                ORDERS_USER,
            )),
    )?;
    let alice = gw.token("alice", &["engineering"], "1h")?;
    let bob = gw.token("Bob.Smith@example.com", &["engineering"], "1h")?;

    // Alice lands as her own role, with the shared role's privileges.
    let out = gw
        .psql(
            "orders-db",
            "alice",
            &alice,
            "select current_user, session_user, count(*) from orders",
        )?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "gh_read_alice|gh_read_alice|1000");
    // The role can do no more than log in and inherit: no superuser, no role creation, and
    // the password it was given has already a short expiry.
    let row = pg.exec(
        "postgres",
        "select rolsuper, rolcreaterole, rolcanlogin, rolvaliduntil < now() + interval '3 minutes' \
         from pg_roles where rolname = 'gh_read_alice'",
    )?;
    assert_eq!(row.trim(), "f|f|t|t");

    // Bob (a name that needs cleaning) runs a long query.
    let sleep = "select pg_sleep(30)";
    let mut bobs = Psql::new(gw.pg_addr(), "orders-db", "Bob.Smith@example.com")
        .password(&bob)
        .spawn(sleep)?;
    pg.wait_for_active_query(sleep, 1, Duration::from_secs(30))?;
    let bob_role = pg.exec(
        "postgres",
        &format!("select usename from pg_stat_activity where query = '{sleep}'"),
    )?;
    let bob_role = bob_role.trim();
    assert!(
        bob_role.starts_with("gh_read_bob_smith_example_com_"),
        "{bob_role}"
    );

    // Alice sees that bob is there but not what he runs, and cannot cancel it.
    let out = gw
        .psql(
            "orders-db",
            "alice",
            &alice,
            &format!("select query from pg_stat_activity where usename = '{bob_role}'"),
        )?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "<insufficient privilege>");
    let out = gw.psql(
        "orders-db",
        "alice",
        &alice,
        &format!(
            "select pg_cancel_backend(pid) from pg_stat_activity where usename = '{bob_role}'"
        ),
    )?;
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr
            .contains("must be a member of the role whose query is being canceled"),
        "{out}"
    );
    assert_eq!(pg.active_queries(sleep)?, 1, "bob's query was cancelled");

    // Through the shared role, the same attempt reads and cancels a colleague's query: what
    // the shared mode exposes (README).
    let shared_sleep = "select pg_sleep(29)";
    let carols = Psql::new(gw.pg_addr(), "orders-shared", "carol")
        .password(&gw.token("carol", &["engineering"], "1h")?)
        .spawn(shared_sleep)?;
    pg.wait_for_active_query(shared_sleep, 1, Duration::from_secs(30))?;
    let out = gw
        .psql(
            "orders-shared",
            "alice",
            &alice,
            &format!(
                "select query, pg_cancel_backend(pid) from pg_stat_activity where query = '{shared_sleep}'"
            ),
        )?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), format!("{shared_sleep}|t"));
    let carol_out = carols.wait_with_output()?;
    assert!(
        String::from_utf8_lossy(&carol_out.stderr).contains("canceling statement"),
        "{carol_out:?}"
    );

    // Several sessions of one person at once: each gets in (they take turns to set the role's
    // password, never overwriting one another's before it is used).
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let p = Psql::new(gw.pg_addr(), "orders-db", "alice").password(&alice);
            std::thread::spawn(move || p.run(&format!("select {i}, current_user")))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h
            .join()
            .map_err(|_| anyhow::anyhow!("psql thread panicked"))??;
        let out = out.ok()?;
        assert_eq!(out.stdout_trimmed(), format!("{i}|gh_read_alice"));
    }

    // An admin credential that cannot create roles: the session is refused with the reason,
    // not let through as the shared role.
    let out = gw.psql("orders-noadmin", "alice", &alice, "select current_user")?;
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr
            .contains("resource \"orders-noadmin\" could not set up your upstream role"),
        "{out}"
    );

    // The audit log names the upstream role of each session.
    let events = gw.settled_export()?;
    let starts: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "session.start" && e["resource"] == "orders-db")
        .filter_map(|e| e["detail"]["upstream_user"].as_str())
        .collect();
    assert!(starts.contains(&"gh_read_alice"), "{starts:?}");
    assert!(starts.contains(&bob_role), "{starts:?}");

    bobs.kill()?;
    let _ = bobs.wait();
    // The shared role's password stays unused by the per-user resource: logging in as it
    // directly still works with its own password (nothing was changed on it).
    let direct = Psql::new(pg.addr(), ORDERS_DB, ORDERS_USER)
        .sslmode("disable")
        .password(ORDERS_PASSWORD)
        .run("select current_user")?
        .ok()?;
    assert_eq!(direct.stdout_trimmed(), ORDERS_USER);
    Ok(())
}
