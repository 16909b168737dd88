//! Policies change while the gateway runs, under control: `gatehouse policy reload` and SIGHUP
//! swap the set without cutting a live session; a set that fails to load is refused and the old
//! one stays; every attempt is a `policy.changed` event with the right diff, who applied and who
//! approved it; the evidence bundle lists the changes and counts the unapproved one.

use std::path::Path;
use std::time::Duration;

use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Resource, TempDir};
use serde_json::Value;

const FORBID_ERIN: &str = r#"
// Added by the test: quinn may not connect anywhere.
@id("forbid-quinn-connect")
@controls("5.15")
forbid (
    principal,
    action == Gatehouse::Action::"connect",
    resource
)
when { principal.name == "quinn" };
"#;

fn copy_policies(to: &Path) -> anyhow::Result<()> {
    let from = gatehouse_tests::workspace_root().join("policies");
    std::fs::create_dir_all(to.join("tests"))?;
    for name in ["schema.cedarschema", "gatehouse.cedar"] {
        std::fs::copy(from.join(name), to.join(name))?;
    }
    for e in std::fs::read_dir(from.join("tests"))? {
        let e = e?;
        std::fs::copy(e.path(), to.join("tests").join(e.file_name()))?;
    }
    Ok(())
}

fn select_one(gw: &Gateway, home: &TempDir) -> anyhow::Result<gatehouse_tests::CmdOutput> {
    gw.as_user(home, &["psql", "orders-db", "--", "-tAc", "select 1"])
}

fn changes(gw: &Gateway) -> anyhow::Result<Vec<Value>> {
    Ok(gw
        .audit_events()?
        .into_iter()
        .filter(|e| e["kind"] == "policy.changed")
        .collect())
}

#[test]
fn policies_reload_without_cutting_sessions_and_refuse_a_broken_set() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let dir = gatehouse_tests::util::temp_dir("policies")?;
    copy_policies(dir.path())?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(Resource::orders_dev(&pg, "orders-db"))
            .policies_dir(dir.path()),
    )?;
    let quinn = gw.engineer("quinn", &["engineering"])?;
    let carol = gw.engineer("carol", &["engineering"])?;
    assert_eq!(select_one(&gw, &quinn)?.ok()?.stdout.trim(), "1");

    // A live session of quinn's, running across the reload that takes her access away.
    let starts = |gw: &Gateway| -> anyhow::Result<usize> {
        Ok(gw
            .audit_events()?
            .iter()
            .filter(|e| e["kind"] == "session.start" && e["actor"] == "quinn")
            .count())
    };
    let before = starts(&gw)?;
    let live = std::process::Command::new(gatehouse_tests::gatehouse_bin()?)
        .args([
            "psql",
            "orders-db",
            "--",
            "-tAc",
            "select pg_sleep(3); select 'survived'",
        ])
        .env("GATEHOUSE_HOME", quinn.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    gatehouse_tests::util::poll(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok((starts(&gw)? > before).then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("quinn's live session did not start"))?;

    let cedar = dir.join("gatehouse.cedar");
    let original = std::fs::read_to_string(&cedar)?;
    std::fs::write(&cedar, format!("{original}{FORBID_ERIN}"))?;
    let out = gw
        .cli(&["policy", "reload", "--by", "alice", "--approved-by", "dana"])?
        .ok()?;
    assert!(
        out.stdout.contains("policies applied")
            && out.stdout.contains("added:   forbid-quinn-connect"),
        "{out}"
    );
    assert!(
        out.stdout.contains("removed: -") && out.stdout.contains("changed: -"),
        "{out}"
    );
    let out = select_one(&gw, &quinn)?;
    assert!(
        !out.success() && out.stderr.contains("forbid-quinn-connect"),
        "the new set decides: {out}"
    );
    let out = live.wait_with_output()?;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("survived"),
        "the live session ran on: {out:?}"
    );

    let applied = changes(&gw)?;
    assert_eq!(applied.len(), 1, "{applied:?}");
    let d = &applied[0]["detail"];
    assert_eq!(applied[0]["decision"], "applied");
    assert_eq!(applied[0]["actor"], "alice");
    assert_eq!(d["approved_by"], "dana");
    assert_eq!(d["added"], serde_json::json!(["forbid-quinn-connect"]));
    assert_eq!(d["removed"], serde_json::json!([]));
    assert_eq!(d["changed"], serde_json::json!([]));
    assert_ne!(d["sha256"], d["previous_sha256"]);
    assert!(d["tests_passed"].as_u64() > Some(0), "{d}");

    // A broken set is refused where it is applied, recorded, and the set in use stays.
    std::fs::write(
        &cedar,
        format!("{original}{FORBID_ERIN}\npermit (principal, action, resource) when {{ ;"),
    )?;
    let out = gw.cli(&["policy", "reload", "--by", "alice"])?;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout.contains("refused") && out.stdout.contains("keep the policies"),
        "{out}"
    );
    assert!(select_one(&gw, &quinn)?
        .stderr
        .contains("forbid-quinn-connect"));
    assert_eq!(select_one(&gw, &carol)?.ok()?.stdout.trim(), "1");
    // A change of the policies that breaks their own tests is refused too, also by SIGHUP.
    let without_nonprod = original.replace(
        "@id(\"engineering-connect-nonprod\")",
        "@id(\"engineering-connect-nonprod-renamed\")",
    );
    assert_ne!(without_nonprod, original);
    std::fs::write(&cedar, &without_nonprod)?;
    let pid = gw.pid().ok_or_else(|| anyhow::anyhow!("no gateway pid"))?;
    let hup = |why: &str| -> anyhow::Result<Vec<Value>> {
        let before = changes(&gw)?.len();
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?;
        gatehouse_tests::util::poll(Duration::from_secs(10), Duration::from_millis(100), || {
            let c = changes(&gw)?;
            Ok((c.len() > before).then_some(c))
        })?
        .ok_or_else(|| anyhow::anyhow!("no policy.changed after SIGHUP ({why})"))
    };
    let c = hup("tests fail")?;
    let last = c.last().cloned().unwrap_or_default();
    assert_eq!(last["decision"], "refused", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or("")
            .contains("policy tests fail"),
        "{last}"
    );
    assert_eq!(last["detail"]["requested_by"]["signal"], "SIGHUP");

    // SIGHUP with the original set: quinn's forbid is gone again.
    std::fs::write(&cedar, &original)?;
    let c = hup("original")?;
    let last = c.last().cloned().unwrap_or_default();
    assert_eq!(last["decision"], "applied", "{last}");
    assert_eq!(
        last["detail"]["removed"],
        serde_json::json!(["forbid-quinn-connect"])
    );
    assert_eq!(select_one(&gw, &quinn)?.ok()?.stdout.trim(), "1");

    // The bundle's register lists the four attempts; the SIGHUP reload had no approver.
    let work = gatehouse_tests::util::temp_dir("bundle")?;
    let q = work.join("b");
    let today = &gatehouse_gateway::audit::event::now_ts()[..10];
    gw.cli(&[
        "evidence",
        "bundle",
        "--from",
        today,
        "--out",
        &q.to_string_lossy(),
    ])?
    .ok()?;
    let register = std::fs::read_to_string(q.join("policy-changes.csv"))?;
    assert_eq!(register.lines().count(), 5, "{register}");
    let checks: Value = serde_json::from_str(&std::fs::read_to_string(q.join("checks.json"))?)?;
    let count = |id: &str| {
        checks["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .and_then(|c| c["count"].as_u64())
    };
    assert_eq!(count("policy_changes_unapproved"), Some(1), "{checks}");
    assert_eq!(count("policy_changes_refused"), Some(2), "{checks}");
    Ok(())
}
