//! Single sign-on end to end: the real `gatehouse login` (browser and device flows) against a
//! real OpenID provider, psql through the gateway with the issued credential, MFA in policy,
//! logout, and the provider revoking a person.

use std::time::{Duration, Instant};

use gatehouse_tests::oidc::{ALICE, ALICE_PASSWORD, DANA, DANA_PASSWORD};
use gatehouse_tests::sso::{Sso, ERIN, ERIN_PASSWORD};
use gatehouse_tests::{Psql, TempDir};
use serde_json::Value;

/// An event's `detail` (an object in the export; a JSON string in older shapes).
fn detail(e: &Value) -> Value {
    match &e["detail"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "event" && e["kind"] == kind)
        .collect()
}

#[test]
fn login_then_psql_without_a_password_then_logout_revokes() -> anyhow::Result<()> {
    let sso = Sso::start()?;
    let login = sso.cli_login(ALICE, ALICE_PASSWORD)?;
    assert!(login.output.success(), "{}", login.output);
    assert!(
        login.output.stdout.contains("Signed in to")
            && login.output.stdout.contains("as alice")
            && login.output.stdout.contains("MFA: no"),
        "{}",
        login.output
    );
    let home = login.home.path();
    // The credential file is private and holds a gateway credential, not a provider token.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.join("credentials.json"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let credential = login.credential()?;
    let header = jsonwebtoken::decode_header(&credential)?;
    assert_eq!(header.typ.as_deref(), Some("gatehouse-access+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);

    let status = sso.cli(home, &["status"])?.ok()?;
    assert!(status.stdout.contains("user:     alice"), "{status}");
    assert!(status.stdout.contains("groups:   engineering"), "{status}");
    assert!(
        status.stdout.contains("mfa:      no (amr: pwd)"),
        "{status}"
    );

    let out = sso
        .cli(
            home,
            &[
                "psql",
                "orders-db",
                "--",
                "-tAc",
                "select count(*) from orders",
            ],
        )?
        .ok()?;
    assert_eq!(out.stdout.trim(), "1000", "{out}");
    let env = sso.cli(home, &["env", "orders-db"])?.ok()?;
    assert!(env.stdout.contains("export PGUSER='alice'"), "{env}");
    assert!(
        env.stdout.contains("export PGSSLMODE='verify-full'"),
        "{env}"
    );
    // The password is not the sign-in's credential but one only the PostgreSQL door takes:
    // the sign-in's credential is refused there, with the reason, and the password is no
    // API bearer (a spoofed server that captured it could not use the API).
    let pg_password = sso.pg_password(home, "orders-db")?;
    assert_ne!(pg_password, credential);
    assert!(!env.stdout.contains(&credential), "{env}");
    let out = Psql::new(sso.gw.pg_addr(), "orders-db", "alice")
        .password(&pg_password)
        .run("select 1")?;
    assert!(out.success(), "{out}");
    let out = Psql::new(sso.gw.pg_addr(), "orders-db", "alice")
        .password(&credential)
        .run("select 1")?;
    assert!(
        !out.success() && out.stderr.contains("not a PostgreSQL password"),
        "{out}"
    );
    let whoami = sso
        .browser()?
        .client()
        .get(format!("{}/api/v1/whoami", sso.base))
        .bearer_auth(&pg_password)
        .send()?;
    assert_eq!(whoami.status().as_u16(), 401);

    let events = sso.gw.settled_export()?;
    let ok = events_of(&events, "login.succeeded");
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0]["actor"], "alice");
    assert!(ok[0]["controls"].to_string().contains("8.5"));
    let d = detail(ok[0]);
    assert_eq!(d["amr"], serde_json::json!(["pwd"]));
    assert_eq!(d["mfa"], false);
    let issued = events_of(&events, "credential.issued");
    // The sign-in's credential, then the PostgreSQL passwords of `psql` and two `env`s.
    assert_eq!(issued.len(), 4, "{issued:?}");
    assert!(detail(issued[0])["door"].is_null());
    for door in &issued[1..] {
        let d = detail(door);
        assert_eq!(d["door"], "postgres", "{d}");
        assert_eq!(d["login_id"], detail(issued[0])["login_id"], "{d}");
    }
    let decision = events_of(&events, "access.decision");
    let d = detail(decision[0]);
    assert_eq!(d["auth_method"], "oidc");
    // No secret reaches the log: neither the credential nor the client secret.
    let all = serde_json::to_string(&events)?;
    assert!(!all.contains(&credential));
    assert!(!all.contains(gatehouse_tests::oidc::CLIENT_SECRET));
    assert!(!sso.gw.logs().contains(&credential));

    // A session of this login is live when alice logs out.
    let live = Psql::new(sso.gw.pg_addr(), "orders-db", "alice")
        .password(&pg_password)
        .spawn("select pg_sleep(30)")?;
    sso.pg
        .wait_for_active_query("select pg_sleep(30)", 1, Duration::from_secs(30))?;

    // Logout revokes: the same credential no longer opens a session, and the live one ends.
    let out = sso.cli(home, &["logout"])?.ok()?;
    let logged_out = Instant::now();
    assert!(out.stdout.contains("revoked"), "{out}");
    let ended = live.wait_with_output()?;
    assert!(
        logged_out.elapsed() < Duration::from_secs(5),
        "the live session was cut {:?} after logout",
        logged_out.elapsed()
    );
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(
        stderr.contains("the sign-in this session came from was revoked"),
        "{stderr}"
    );
    assert!(!home.join("credentials.json").exists());
    // The PostgreSQL password ends with the login it came from.
    let refused = Psql::new(sso.gw.pg_addr(), "orders-db", "alice")
        .password(&pg_password)
        .run("select 1")?;
    assert!(!refused.success());
    assert!(refused.stderr.contains("was revoked"), "{refused}");
    let events = sso.gw.settled_export()?;
    assert_eq!(events_of(&events, "credential.revoked").len(), 1);
    assert!(events_of(&events, "auth.failed")
        .iter()
        .any(|e| e["reason"].as_str().unwrap_or("").contains("revoked")));
    let out = sso.cli(home, &["status"])?;
    assert!(
        !out.success() && out.stderr.contains("not logged in"),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_policy_requiring_mfa_denies_the_user_without_it_and_allows_the_one_with_it(
) -> anyhow::Result<()> {
    let sso = Sso::start()?;
    let alice = sso.cli_login(ALICE, ALICE_PASSWORD)?;
    let erin = sso.cli_login(ERIN, ERIN_PASSWORD)?;
    assert!(erin.output.stdout.contains("MFA: yes"), "{}", erin.output);
    let q = ["psql", "vault-db", "--", "-tAc", "select 1"];
    let denied = sso.cli(alice.home.path(), &q)?;
    assert!(!denied.success());
    assert!(denied.stderr.contains("denied"), "{denied}");
    let allowed = sso.cli(erin.home.path(), &q)?.ok()?;
    assert_eq!(allowed.stdout.trim(), "1");
    // Both sign-ins may reach the non-restricted resource.
    let q = ["psql", "orders-db", "--", "-tAc", "select 2"];
    assert_eq!(sso.cli(alice.home.path(), &q)?.ok()?.stdout.trim(), "2");

    let events = sso.gw.settled_export()?;
    let vault: Vec<&Value> = events_of(&events, "access.decision")
        .into_iter()
        .filter(|e| e["resource"] == "vault-db")
        .collect();
    assert_eq!(vault.len(), 2);
    let by = |u: &str| vault.iter().find(|e| e["actor"] == u).copied();
    let a = by("alice").ok_or_else(|| anyhow::anyhow!("no decision for alice"))?;
    assert_eq!(a["decision"], "deny");
    assert!(a["policy_ids"]
        .to_string()
        .contains("forbid-restricted-without-mfa"));
    let e = by("erin").ok_or_else(|| anyhow::anyhow!("no decision for erin"))?;
    assert_eq!(e["decision"], "allow");
    Ok(())
}

/// Runs `gatehouse login --device`, approves the code at `approve`, and returns the output.
fn device_login(
    sso: &Sso,
    user: &str,
    password: &str,
    approve: impl FnOnce(&str, &str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<(TempDir, gatehouse_tests::CmdOutput)> {
    let home = gatehouse_tests::temp_dir("gh-home")?;
    let mut child = std::process::Command::new(gatehouse_tests::gatehouse_bin()?)
        .args(["login", "--device", "--gateway", &sso.base, "--ca-file"])
        .arg(sso.gw.tls_cert())
        .env("GATEHOUSE_HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let (rx, reader) = gatehouse_tests::util::line_reader(stderr);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("Waiting")) {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("no device instructions: {lines:?}");
            }
        }
    }
    // "To sign in, visit", "", "  URL", "", "and enter the code", "", "  CODE"
    let trimmed: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let at = |marker: &str| {
        trimmed
            .iter()
            .position(|l| l.starts_with(marker))
            .and_then(|i| trimmed.get(i + 1))
            .map(|s| s.to_string())
    };
    let uri = at("To sign in, visit").ok_or_else(|| anyhow::anyhow!("{lines:?}"))?;
    let code = at("and enter the code").ok_or_else(|| anyhow::anyhow!("{lines:?}"))?;
    if let Err(e) = approve(&uri, &code, user) {
        let _ = child.kill();
        return Err(e);
    }
    let _ = password;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("gatehouse login --device did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    if let Some(mut o) = child.stdout.take() {
        std::io::Read::read_to_string(&mut o, &mut stdout)?;
    }
    let stderr = reader.join().unwrap_or_default();
    Ok((
        home,
        gatehouse_tests::CmdOutput {
            command: "gatehouse login --device".into(),
            status,
            stdout,
            stderr,
        },
    ))
}

#[test]
fn device_flow_through_the_provider() -> anyhow::Result<()> {
    let sso = Sso::start()?;
    let (home, out) = device_login(&sso, DANA, DANA_PASSWORD, |uri, code, user| {
        assert!(
            uri.starts_with(sso.op.issuer()),
            "the provider runs the verification: {uri}"
        );
        let mut b = sso.browser()?;
        b.confirm_device(uri, code, user, DANA_PASSWORD)?;
        Ok(())
    })?;
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("as dana") && out.stdout.contains("MFA: yes"),
        "{out}"
    );
    let q = ["psql", "vault-db", "--", "-tAc", "select current_user"];
    let res = sso.cli(home.path(), &q)?.ok()?;
    assert_eq!(
        res.stdout.trim(),
        "orders_app",
        "upstream runs as the brokered account"
    );
    let events = sso.gw.settled_export()?;
    let ok = events_of(&events, "login.succeeded");
    assert_eq!(ok.len(), 1);
    let d = detail(ok[0]);
    assert_eq!(d["flow"], "device");
    assert_eq!(d["groups"], serde_json::json!(["dba"]));
    Ok(())
}

#[test]
fn device_flow_on_the_gateway_page() -> anyhow::Result<()> {
    let sso = Sso::start_with(|s| s, |c| c.set("oidc", "device_flow", "\"gateway\""))?;
    let (home, out) = device_login(&sso, ALICE, ALICE_PASSWORD, |uri, code, user| {
        assert_eq!(uri, format!("{}/device", sso.base));
        let mut b = sso.browser()?;
        // The page offers a form; entering the code starts a browser sign-in.
        let page = b.get(uri)?;
        assert!(page.body.contains("user_code"), "{}", page.describe());
        let url = format!("{uri}?user_code={}", code.to_lowercase());
        // With the code the page asks for confirmation, naming where the login started; it
        // does not send the browser on by itself.
        let confirm = b.get(&url)?;
        assert_eq!(confirm.status, 200, "{}", confirm.describe());
        assert!(
            confirm.body.contains("started from <b>127.0.0.1</b>")
                && confirm.body.contains("minute ago")
                && confirm.form_with_input("csrf").is_some(),
            "{}",
            confirm.describe()
        );
        // The browser answers the confirmation form (a POST), then signs in at the provider.
        let callback = b.sign_in(&url, user, ALICE_PASSWORD, |u| u.path() == "/oidc/callback")?;
        assert!(
            b.hops()
                .iter()
                .any(|h| h.method == "POST" && h.url.path() == "/device"),
            "{:?}",
            b.hops()
        );
        let done = b.get(callback.as_str())?;
        assert_eq!(done.status, 200, "{}", done.describe());
        assert!(
            done.body.contains("Return to your terminal"),
            "{}",
            done.describe()
        );
        Ok(())
    })?;
    assert!(out.success(), "{out}");
    let q = ["psql", "orders-db", "--", "-tAc", "select 3"];
    assert_eq!(sso.cli(home.path(), &q)?.ok()?.stdout.trim(), "3");
    Ok(())
}

#[test]
fn the_provider_dropping_a_person_revokes_their_login_and_cuts_their_sessions() -> anyhow::Result<()>
{
    let sso = Sso::start()?;
    let login = sso.cli_login(ALICE, ALICE_PASSWORD)?;
    let credential = sso.pg_password(login.home.path(), "orders-db")?;
    let session = Psql::new(sso.gw.pg_addr(), "orders-db", "alice")
        .password(&credential)
        .spawn("select pg_sleep(30)")?;
    // The session is live (its query runs upstream) before the provider drops alice.
    sso.pg
        .wait_for_active_query("select pg_sleep(30)", 1, Duration::from_secs(30))?;
    sso.op.disable_user(ALICE)?;
    let disabled_at = Instant::now();
    let out = session.wait_with_output()?;
    // The re-check runs every second; allow one full period plus the poll.
    assert!(
        disabled_at.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        disabled_at.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("identity provider no longer vouches"),
        "{stderr}"
    );
    let refused = Psql::new(sso.gw.pg_addr(), "orders-db", "alice")
        .password(&credential)
        .run("select 1")?;
    assert!(refused.stderr.contains("was revoked"), "{refused}");
    let events = sso.gw.settled_export()?;
    let revoked = events_of(&events, "credential.revoked");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert!(revoked[0]["controls"].to_string().contains("6.5"));
    assert!(events_of(&events, "session.cut")
        .iter()
        .any(|e| e["actor"] == "alice"));
    Ok(())
}

#[test]
fn login_and_logout_on_a_postgres_store() -> anyhow::Result<()> {
    let store = gatehouse_tests::PgServer::start()?;
    let url = store.create_database("gatehouse")?;
    let sso = Sso::start_with(|s| s, |c| c.store_url(&url))?;
    let login = sso.cli_login(DANA, DANA_PASSWORD)?;
    assert!(login.output.success(), "{}", login.output);
    let home = login.home.path();
    let q = ["psql", "vault-db", "--", "-tAc", "select 4"];
    assert_eq!(sso.cli(home, &q)?.ok()?.stdout.trim(), "4", "dana has MFA");
    let status = sso.cli(home, &["status"])?.ok()?;
    assert!(status.stdout.contains("mfa:      yes"), "{status}");
    let credential = sso.pg_password(home, "orders-db")?;
    sso.cli(home, &["logout"])?.ok()?;
    let refused = Psql::new(sso.gw.pg_addr(), "orders-db", "dana")
        .password(&credential)
        .run("select 1")?;
    assert!(refused.stderr.contains("was revoked"), "{refused}");
    Ok(())
}
