//! `gatehouse audit export --format ocsf` for SIEMs: the events of a real session, a refused
//! credential, a grant, a leaver and a policy reload, exported as OCSF and validated against the
//! OCSF 1.7.0 schema by the PyPI package pydantic-ocsf (its model of each class, and every
//! attribute the schema marks required), in the venv `scripts/test` makes.

use std::io::Write;
use std::process::{Command, Stdio};

use gatehouse_tests::pg::{ORDERS_PASSWORD, ORDERS_USER, READONLY_PASSWORD, READONLY_USER};
use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Psql, Resource};
use serde_json::Value;

const WRITE_PW_VAR: &str = "GATEHOUSE_TEST_ORDERS_WRITE_PW";

fn validator() -> anyhow::Result<std::path::PathBuf> {
    let python = gatehouse_tests::workspace_root().join("tests/ocsf/.venv/bin/python");
    anyhow::ensure!(
        python.is_file(),
        "{} is missing: scripts/test installs pydantic-ocsf there (deps_ocsf_venv)",
        python.display()
    );
    Ok(python)
}

#[test]
fn the_ocsf_export_validates_against_the_schema_for_every_class() -> anyhow::Result<()> {
    let python = validator()?;
    let pg = PgServer::start()?;
    let mut gw = Gateway::start(
        GatewayConfig::new()
            .resource(
                Resource::orders_dev(&pg, "orders-db")
                    .credential(READONLY_USER, READONLY_PASSWORD)
                    .raw(
                        "roles",
                        &format!("{{ write = {{ username = \"{ORDERS_USER}\", password_env = \"{WRITE_PW_VAR}\" }} }}"),
                    ),
            )
            .env(WRITE_PW_VAR, ORDERS_PASSWORD),
    )?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    gw.as_user(&bob, &["psql", "orders-db", "--", "-tAc", "select 1"])?
        .ok()?;
    let out = Psql::new(gw.pg_addr(), "orders-db", "bob")
        .password("not-a-token")
        .run("select 1")?;
    assert!(!out.success(), "{out}");
    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "orders-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                "CHG-1: fix",
            ],
        )?
        .ok()?;
    let id = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    gw.as_user(&dana, &["approve", &id])?.ok()?;
    gw.as_user(
        &bob,
        &[
            "psql",
            "orders-db",
            "--role",
            "write",
            "--",
            "-tAc",
            "select 2",
        ],
    )?
    .ok()?;
    gw.cli(&["users", "disable", "bob", "--reason", "left"])?
        .ok()?;
    gw.cli(&["policy", "reload", "--by", "alice", "--approved-by", "dana"])?
        .ok()?;
    gw.stop()?;

    let out = gw.cli(&["audit", "export", "--format", "ocsf"])?.ok()?;
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let kinds: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["unmapped"]["kind"].as_str())
        .collect();
    for k in [
        "access.decision",
        "session.start",
        "db.statement",
        "session.end",
        "auth.failed",
        "grant.start",
        "user.disabled",
        "policy.changed",
        "gateway.start",
        "gateway.stop",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    // Each line leads back to the signed log.
    let export = gw.audit_events()?;
    assert_eq!(lines.len(), export.len());
    for (o, e) in lines.iter().zip(&export) {
        assert_eq!(
            o["metadata"]["uid"].as_str(),
            e["seq"].as_u64().map(|s| s.to_string()).as_deref()
        );
        assert_eq!(o["unmapped"]["hash"], e["hash"]);
    }

    let mut child = Command::new(&python)
        .arg(gatehouse_tests::workspace_root().join("tests/ocsf/validate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(out.stdout.as_bytes())?;
    let res = child.wait_with_output()?;
    let report = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "OCSF validation failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let classes: Vec<&str> = report
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for class in [
        "3001", "3002", "3003", "3004", "3005", "4001", "6002", "6005",
    ] {
        assert!(
            classes.contains(&class),
            "class {class} not exercised: {report}"
        );
    }

    // A validator that passes everything would prove nothing: a line without its required
    // user fails.
    let broken = lines
        .iter()
        .find(|l| l["class_uid"] == 3002)
        .cloned()
        .map(|mut l| {
            if let Some(o) = l.as_object_mut() {
                o.remove("user");
            }
            l
        })
        .ok_or_else(|| anyhow::anyhow!("no authentication event"))?;
    let mut child = Command::new(&python)
        .arg(gatehouse_tests::workspace_root().join("tests/ocsf/validate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(format!("{broken}\n").as_bytes())?;
    let res = child.wait_with_output()?;
    assert!(!res.status.success());
    assert!(
        String::from_utf8_lossy(&res.stderr).contains("lacks required ['user']"),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    Ok(())
}
