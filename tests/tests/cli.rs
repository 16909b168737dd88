//! The admin side of the command line: config errors are reported before any port is bound and
//! name the key; policies are checked and tested from the command line.

use gatehouse_tests::{gatehouse, workspace_root, Gateway, GatewayConfig, PgServer, Resource};

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
