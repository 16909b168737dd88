//! The admin side of the command line: config errors are reported before any port is bound and
//! name the key; policies are checked and tested from the command line.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_tests::util::{poll, COMMAND_TIMEOUT};
use gatehouse_tests::{
    gatehouse, gatehouse_bin, psql, run_command, send_signal, workspace_root, CmdOutput, Gateway,
    GatewayConfig, PgServer, Resource,
};

/// `gatehouse <args>` run in `dir`, with no `GATEHOUSE_CONFIG` unless `env_config` gives one:
/// what a person gets from a shell there.
fn gatehouse_in(dir: &Path, env_config: Option<&Path>, args: &[&str]) -> anyhow::Result<CmdOutput> {
    let mut cmd = Command::new(gatehouse_bin()?);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("GATEHOUSE_CONFIG");
    if let Some(c) = env_config {
        cmd.env("GATEHOUSE_CONFIG", c);
    }
    run_command(&mut cmd, None, COMMAND_TIMEOUT)
}

/// A base64 Ed25519 public key (32 zero bytes): well formed, verifies nothing.
const SOME_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

#[test]
fn policy_check_and_test_on_the_shipped_policies() -> anyhow::Result<()> {
    let dir = workspace_root().join("policies");
    let dir = dir.to_string_lossy();
    let out = gatehouse(&["policy", "check", "--dir", &dir])?.ok()?;
    for id in [
        "dba-connect-any",
        "engineering-connect-nonprod",
        "forbid-contractors-prod",
        "forbid-restricted-without-mfa",
    ] {
        assert!(out.stdout.contains(id), "{out}");
    }
    let out = gatehouse(&["policy", "test", "--dir", &dir])?.ok()?;
    assert!(out.stdout.contains(" 0 failed"), "{out}");
    Ok(())
}

#[test]
fn broken_policies_are_refused_with_the_reason() -> anyhow::Result<()> {
    let tmp = gatehouse_tests::temp_dir("bad-policies")?;
    let src = workspace_root().join("policies");
    std::fs::copy(
        src.join("schema.cedarschema"),
        tmp.join("schema.cedarschema"),
    )?;
    std::fs::write(
        tmp.join("bad.cedar"),
        "@id(\"no-controls\")\npermit (principal, action == Gatehouse::Action::\"connect\", resource);\n",
    )?;
    let dir = tmp.path().to_string_lossy().into_owned();
    let out = gatehouse(&["policy", "check", "--dir", &dir])?.err()?;
    assert_eq!(out.code(), Some(64));
    assert!(out.stderr.contains("no-controls"), "{out}");

    // A policy that contradicts the schema.
    std::fs::write(
        tmp.join("bad.cedar"),
        "@id(\"typo\")\n@controls(\"5.15\")\npermit (principal, action == Gatehouse::Action::\"connect\", resource) when { resource.enviroment == \"dev\" };\n",
    )?;
    let out = gatehouse(&["policy", "check", "--dir", &dir])?.err()?;
    assert!(out.stderr.contains("enviroment"), "{out}");

    // A failing policy test case fails `policy test` (exit 1) and names the case.
    std::fs::write(
        tmp.join("bad.cedar"),
        std::fs::read_to_string(src.join("gatehouse.cedar"))?,
    )?;
    std::fs::create_dir_all(tmp.join("tests"))?;
    std::fs::write(
        tmp.join("tests/wrong.toml"),
        "[[case]]\nname = \"engineers reach prod (wrong on purpose)\"\nuser = \"e\"\ngroups = [\"engineering\"]\naction = \"connect\"\n\
         resource = { name = \"db\", protocol = \"postgres\", env = \"prod\", data_class = \"internal\" }\nexpect = \"allow\"\n",
    )?;
    let out = gatehouse(&["policy", "test", "--dir", &dir])?.err()?;
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stdout.contains("FAIL") && out.stdout.contains("wrong on purpose"),
        "{out}"
    );
    Ok(())
}

#[test]
fn config_errors_name_the_key_and_bind_nothing() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let port = gatehouse_tests::pg::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let cases: [(GatewayConfig, &str); 3] = [
        (
            GatewayConfig::new()
                .listen(&listen)
                .set("postgres", "listen_port", "5432"),
            "listen_port",
        ),
        (
            GatewayConfig::new().listen(&listen).resource(
                Resource::orders_dev(&pg, "orders-db").credential_env(
                    "orders_app",
                    "GH_TEST_UNSET_VAR",
                    None,
                ),
            ),
            "GH_TEST_UNSET_VAR",
        ),
        (
            GatewayConfig::new()
                .listen(&listen)
                .resource(Resource::orders_db(&pg, "orders-db").label("env", "dev")),
            "data_class",
        ),
    ];
    for (cfg, key) in cases {
        let err = match Gateway::start(cfg) {
            Ok(_) => anyhow::bail!("the gateway started with a bad config (`{key}`)"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(key), "the error should name `{key}`: {err}");
        assert!(
            std::net::TcpListener::bind(&listen).is_ok(),
            "nothing may be bound on a config error"
        );
    }
    Ok(())
}

#[test]
fn gatehouse_psql_never_connects_to_an_unverified_gateway() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    // A saved login that knows no CA for the gateway (its certificate is self-signed, so only
    // a CA file could vouch for it).
    let home = gw.engineer("alice", &["engineering"])?;
    let path = home.join("credentials.json");
    let mut saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    saved["ca_file"] = serde_json::Value::Null;
    std::fs::write(&path, saved.to_string())?;
    let out = gw.as_user(
        &home,
        &["psql", "orders-db", "--", "-c", "select 'reached'"],
    )?;
    assert!(!out.success(), "{out}");
    assert!(!out.stdout.contains("reached"), "{out}");
    // psql before 16 is refused by gatehouse with the way out; from 16 on, libpq refuses the
    // self-signed certificate against the system's roots.
    assert!(
        out.stderr
            .contains("cannot verify the gateway's certificate")
            || out.stderr.contains("certificate verify failed"),
        "{out}"
    );
    // With the gateway's CA saved (what `gatehouse login` stores), the same command works.
    let home = gw.engineer("alice", &["engineering"])?;
    let out = gw
        .as_user(
            &home,
            &["psql", "orders-db", "--", "-Atc", "select 'reached'"],
        )?
        .ok()?;
    assert_eq!(out.stdout.trim(), "reached");
    Ok(())
}

#[test]
fn the_config_is_found_by_itself_and_its_absence_is_explained_once() -> anyhow::Result<()> {
    let gw = Gateway::start(GatewayConfig::new())?;
    // In the directory that holds gatehouse.toml, no flag and no env are needed.
    let out = gatehouse_in(gw.dir(), None, &["token", "issue", "--user", "svc-ci"])?.ok()?;
    assert!(out.stdout.trim().starts_with("ey"), "{out}");

    // Elsewhere: one error that says where it looked and how to point at a config; exit 64.
    let empty = gatehouse_tests::temp_dir("no-config")?;
    let out = gatehouse_in(empty.path(), None, &["token", "issue", "--user", "svc-ci"])?;
    assert_eq!(out.code(), Some(64), "{out}");
    if !Path::new("/etc/gatehouse/gatehouse.toml").exists() {
        for needle in [
            "no config file found",
            "gatehouse.toml",
            "/etc/gatehouse/gatehouse.toml",
            "--config FILE",
            "export GATEHOUSE_CONFIG=FILE",
        ] {
            assert!(out.stderr.contains(needle), "`{needle}` missing: {out}");
        }
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
    }

    // A named file that is not there says who named it; the cause is printed once.
    let missing = empty.join("missing.toml");
    let missing_s = missing.to_string_lossy().into_owned();
    let out = gatehouse_in(
        empty.path(),
        None,
        &["token", "issue", "--config", &missing_s, "--user", "svc-ci"],
    )?;
    assert_eq!(out.code(), Some(64), "{out}");
    assert!(out.stderr.contains("(named by --config)"), "{out}");
    assert_eq!(out.stderr.matches(&missing_s).count(), 1, "{out}");
    let out = gatehouse_in(
        empty.path(),
        Some(&missing),
        &["token", "issue", "--user", "svc-ci"],
    )?;
    assert_eq!(out.code(), Some(64), "{out}");
    assert!(out.stderr.contains("(named by GATEHOUSE_CONFIG)"), "{out}");

    // Unreadable and malformed configs: the OS's or the TOML parser's reason, once.
    let dir_config = empty.join("a-directory.toml");
    std::fs::create_dir_all(&dir_config)?;
    let out = gatehouse_in(
        empty.path(),
        Some(&dir_config),
        &["token", "issue", "--user", "svc-ci"],
    )?;
    assert_eq!(out.code(), Some(64), "{out}");
    assert_eq!(out.stderr.matches("(os error").count(), 1, "{out}");
    std::fs::write(
        empty.join("gatehouse.toml"),
        "[postgres]\nlisten_port = 5432\n",
    )?;
    let out = gatehouse_in(empty.path(), None, &["token", "issue", "--user", "svc-ci"])?;
    assert_eq!(out.code(), Some(64), "{out}");
    assert_eq!(
        out.stderr.matches("unknown field `listen_port`").count(),
        1,
        "{out}"
    );

    // --help says where the config is looked for.
    let out = gatehouse(&["token", "issue", "--help"])?.ok()?;
    assert!(
        out.stdout.contains(
            "--config FILE, then $GATEHOUSE_CONFIG, then ./gatehouse.toml, then /etc/gatehouse/gatehouse.toml"
        ),
        "{out}"
    );
    assert!(
        out.stdout.contains("30 s"),
        "the leeway is documented: {out}"
    );
    Ok(())
}

#[test]
fn durations_take_compound_forms_and_a_zero_says_so() -> anyhow::Result<()> {
    let gw = Gateway::start(GatewayConfig::new())?;
    gw.token("svc-ci", &[], "1h30m")?;
    let out = gw.cli(&["token", "issue", "--user", "svc-ci", "--ttl", "0s"])?;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("`0s` must be longer than 0"), "{out}");
    let out = gw.cli(&["token", "issue", "--user", "svc-ci", "--ttl", "1h 30m"])?;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("is not a duration like"), "{out}");
    Ok(())
}

#[test]
fn audit_verify_exit_codes_tell_usage_unreadable_input_and_a_failed_log_apart() -> anyhow::Result<()>
{
    let dir = gatehouse_tests::temp_dir("verify-codes")?;
    let export = dir.join("log.jsonl");
    std::fs::write(&export, "")?;
    let export_s = export.to_string_lossy().into_owned();

    // --file without --public-key and no config: it says what offline verification needs.
    let out = gatehouse_in(dir.path(), None, &["audit", "verify", "--file", &export_s])?;
    assert_eq!(out.code(), Some(64), "{out}");
    assert!(out.stderr.contains("--public-key @audit.pub"), "{out}");
    assert!(!out.stderr.contains("cannot read config"), "{out}");

    // A key file or an export that cannot be read: 66.
    let missing_key = format!("@{}", dir.join("audit.pub").display());
    let out = gatehouse(&[
        "audit",
        "verify",
        "--file",
        &export_s,
        "--public-key",
        &missing_key,
    ])?;
    assert_eq!(out.code(), Some(66), "{out}");
    assert!(out.stderr.contains("audit.pub"), "{out}");
    let missing_export = dir.join("nope.jsonl").to_string_lossy().into_owned();
    let out = gatehouse(&[
        "audit",
        "verify",
        "--file",
        &missing_export,
        "--public-key",
        SOME_KEY,
    ])?;
    assert_eq!(out.code(), Some(66), "{out}");
    assert_eq!(out.stderr.matches("(os error").count(), 1, "{out}");

    // A key that is not one: a usage error, not a failed log.
    let out = gatehouse(&[
        "audit",
        "verify",
        "--file",
        &export_s,
        "--public-key",
        "not-a-key",
    ])?;
    assert_eq!(out.code(), Some(64), "{out}");

    // A file that does not verify (no manifest, nothing signed): 1.
    let out = gatehouse(&[
        "audit",
        "verify",
        "--file",
        &export_s,
        "--public-key",
        SOME_KEY,
    ])?;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stdout.contains("FAILED"), "{out}");

    // The codes are in --help.
    let out = gatehouse(&["audit", "verify", "--help"])?.ok()?;
    for code in [
        "0 the log",
        "1 it fails",
        "64 no config",
        "66 an input file",
    ] {
        assert!(out.stdout.contains(code), "`{code}` missing: {out}");
    }
    Ok(())
}

#[test]
fn a_missing_policies_directory_is_a_config_error() -> anyhow::Result<()> {
    let dir = gatehouse_tests::temp_dir("no-policies")?;
    let nowhere = dir.join("nowhere").to_string_lossy().into_owned();
    let out = gatehouse(&["policy", "check", "--dir", &nowhere])?;
    assert_eq!(out.code(), Some(64), "{out}");
    assert!(out.stderr.contains("does not exist"), "{out}");

    // `serve` with a config naming it: 64 too, and nothing is bound.
    let port = gatehouse_tests::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let cfg = GatewayConfig::new()
        .listen(&listen)
        .policies_dir(dir.join("nowhere"));
    let config = dir.join("gatehouse.toml");
    std::fs::write(&config, cfg.to_toml(&dir.join("state")))?;
    let config_s = config.to_string_lossy().into_owned();
    let out = gatehouse_in(dir.path(), None, &["serve", "--config", &config_s])?;
    assert_eq!(out.code(), Some(64), "{out}");
    assert!(out.stderr.contains("nowhere"), "{out}");
    assert!(std::net::TcpListener::bind(&listen).is_ok());
    Ok(())
}

#[test]
fn a_wrong_dbname_lists_the_resources_only_to_an_authenticated_client() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(Resource::orders_dev(&pg, "orders-db"))
            .resource(Resource::orders_dev(&pg, "billing-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let out = psql(gw.pg_addr(), "orders", "alice", &token, "select 1")?.err()?;
    assert!(
        out.stderr
            .contains("resource \"orders\" is not known to the gateway"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("known PostgreSQL resources: billing-db, orders-db"),
        "{out}"
    );
    assert!(out.stderr.contains("gatehouse resources"), "{out}");

    // Without a valid credential the names are not told.
    let out = psql(gw.pg_addr(), "orders", "alice", "not-a-token", "select 1")?.err()?;
    assert!(out.stderr.contains("authentication failed"), "{out}");
    assert!(
        !out.stderr.contains("orders-db") && !out.stderr.contains("billing-db"),
        "{out}"
    );
    Ok(())
}

#[test]
fn ctrl_c_stops_an_idle_gateway_at_once_and_records_the_stop() -> anyhow::Result<()> {
    let mut gw = Gateway::start(GatewayConfig::new())?;
    let pid = gw
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the gateway is not running"))?;
    let sent = Instant::now();
    send_signal(pid, "INT")?;
    let status = poll(Duration::from_secs(10), Duration::from_millis(10), || {
        gw.try_exit_status()
    })?
    .ok_or_else(|| anyhow::anyhow!("the gateway did not stop within 10 s\n{}", gw.logs()))?;
    let took = sent.elapsed();
    assert!(status.success(), "{status}\n{}", gw.logs());
    assert!(
        took < Duration::from_secs(2),
        "an idle gateway took {took:?} to stop\n{}",
        gw.logs()
    );
    let events = gw.audit_events()?;
    assert!(
        events.iter().any(|e| e["kind"] == "gateway.stop"),
        "no gateway.stop event: {events:?}"
    );
    gw.audit_verify()?.ok()?;
    Ok(())
}
