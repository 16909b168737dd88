//! SSH through the gateway's SSH door, with the real OpenSSH client and a real `sshd` as the
//! target: a certificate from `gatehouse ssh-cert`, commands with their exit status and bytes
//! both ways, what the audit log holds of it, and the refusals (plain keys, a foreign CA, a
//! policy denial, forwarding, a dangerous environment variable, a changed host key), each
//! recorded with its reason; `sessions kill` ends a live session with a message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_tests::sshd::Sshd;
use gatehouse_tests::util::{run_command, temp_dir, CmdOutput, TempDir};
use gatehouse_tests::{Gateway, GatewayConfig, Resource};
use serde_json::Value;

/// Until the gateway's upstream CA is known, sshd trusts a CA nobody holds.
const NOBODY_CA: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl nobody";

struct Setup {
    sshd: Sshd,
    gw: Gateway,
    ssh_port: u16,
}

fn setup() -> anyhow::Result<Setup> {
    setup_with(|c| c, |r| r)
}

/// [`setup`] with changes to the gateway's config and to the `web-1` resource.
fn setup_with(
    config: impl FnOnce(GatewayConfig) -> GatewayConfig,
    web: impl FnOnce(Resource) -> Resource,
) -> anyhow::Result<Setup> {
    let sshd = Sshd::start(NOBODY_CA)?;
    let resource = Resource::postgres("web-1", sshd.address(), "unused")
        .kind("ssh")
        .database(None)
        .labels(&[("env", "dev"), ("data_class", "internal")])
        .raw("host_key", &toml_string(&sshd.host_key()?))
        .raw(
            "logins",
            &format!("{{ read = {} }}", toml_string(&sshd.login())),
        );
    let gw = Gateway::start(config(
        GatewayConfig::new()
            .set("ssh", "listen", "\"127.0.0.1:0\"")
            .resource(web(resource)),
    ))?;
    let cfg = gw.config_path().to_string_lossy().into_owned();
    let ca = gw
        .cli(&["keys", "ssh-upstream-ca", "--config", &cfg])?
        .ok()?;
    sshd.trust_ca(ca.stdout.trim())?;
    let ssh_port = gw
        .ready()
        .get("ssh")
        .and_then(Value::as_str)
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the ready file has no ssh address: {}", gw.ready()))?;
    Ok(Setup { sshd, gw, ssh_port })
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `ssh` with nothing from the machine's own configuration, in batch mode, with `key` (and
/// its `-cert.pub` when there is one) and `known_hosts`.
fn ssh_cmd(port: u16, key: &Path, known_hosts: &Path, target: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
        .arg(key)
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .env_remove("SSH_AUTH_SOCK")
        .arg(format!("{target}@127.0.0.1"));
    let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
    if cert.exists() {
        cmd.arg("-o")
            .arg(format!("CertificateFile={}", cert.display()));
    }
    cmd
}

/// alice's home, with her certificate from `gatehouse ssh-cert`.
fn alice(s: &Setup) -> anyhow::Result<(TempDir, PathBuf, PathBuf)> {
    let home = s.gw.engineer("alice", &["engineering"])?;
    let out = s.gw.as_user(&home, &["ssh-cert"])?.ok()?;
    assert!(out.stdout.contains("Host *.gh"), "{out}");
    assert!(out.stdout.contains("CertificateFile"), "{out}");
    let dir = home.join("ssh");
    Ok((home, dir.join("id_ed25519"), dir.join("known_hosts")))
}

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> anyhow::Result<CmdOutput> {
    run_command(cmd, stdin, Duration::from_secs(60))
}

/// The child's output, or an error (and the child killed) after `limit`: a hung relay fails
/// the test instead of hanging it.
fn wait_output(
    mut child: std::process::Child,
    limit: Duration,
) -> anyhow::Result<std::process::Output> {
    let pid = child.id();
    let (done, waiting) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if waiting.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            return true;
        }
        false
    });
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = Vec::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_end(&mut buf);
        }
        buf
    });
    let out = child.wait_with_output()?;
    let _ = done.send(());
    let timed_out = watchdog.join().unwrap_or(true);
    anyhow::ensure!(
        !timed_out,
        "the ssh command did not finish within {limit:?}"
    );
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    Ok(std::process::Output { stdout, ..out })
}

fn events_of(gw: &Gateway, kind: &str) -> anyhow::Result<Vec<Value>> {
    Ok(gw
        .audit_events()?
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect())
}

#[test]
fn a_certificate_from_the_gateway_runs_commands_on_the_target_and_each_is_recorded(
) -> anyhow::Result<()> {
    let s = setup()?;
    let (_home, key, known_hosts) = alice(&s)?;

    let out = run(
        ssh_cmd(s.ssh_port, &key, &known_hosts, "web-1").arg("echo hello-$((6*7)); exit 3"),
        None,
    )?;
    assert_eq!(out.code(), Some(3), "{out}\n{}", s.sshd.log());
    assert_eq!(out.stdout.trim(), "hello-42", "{out}");

    // A megabyte there and its hash back: both directions carry every byte.
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let out = run(
        ssh_cmd(s.ssh_port, &key, &known_hosts, "web-1").arg("sha256sum"),
        Some(&data),
    )?
    .ok()?;
    let expected = {
        let mut c = Command::new("sha256sum");
        run(&mut c, Some(&data))?.ok()?.stdout
    };
    assert_eq!(
        out.stdout.split_whitespace().next(),
        expected.split_whitespace().next()
    );

    // Both directions at full speed at once: 20 MB through `cat` and back.
    let big: Vec<u8> = data.iter().cycle().take(20_000_000).copied().collect();
    let mut echo = ssh_cmd(s.ssh_port, &key, &known_hosts, "web-1");
    echo.arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = echo.spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let writer = {
        let big = big.clone();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let r = stdin.write_all(&big);
            drop(stdin);
            r
        })
    };
    let out = wait_output(child, Duration::from_secs(60))?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == big,
        "cat returned {} bytes, not the 20 MB sent",
        out.stdout.len()
    );

    // The log: the certificate issued, the decision, the commands, the sessions.
    let gw = &s.gw;
    let issued = events_of(gw, "credential.issued")?;
    assert!(
        issued
            .iter()
            .any(|e| e["detail"]["door"] == "ssh" && e["actor"] == "alice"),
        "{issued:#?}"
    );
    let decisions = events_of(gw, "access.decision")?;
    assert!(
        decisions
            .iter()
            .any(|e| e["actor"] == "alice" && e["resource"] == "web-1" && e["decision"] == "allow"),
        "{decisions:#?}"
    );
    let commands = gw.wait_for_event(
        |e| e["kind"] == "ssh.command" && e["detail"]["command"] == "sha256sum",
        Duration::from_secs(10),
    )?;
    assert!(
        commands.iter().any(|e| e["kind"] == "ssh.command"
            && e["detail"]["command"] == "echo hello-$((6*7)); exit 3"
            && e["actor"] == "alice"),
        "{commands:#?}"
    );
    let starts = events_of(gw, "session.start")?;
    assert!(
        starts
            .iter()
            .any(|e| e["detail"]["protocol"] == "ssh"
                && e["detail"]["login"] == s.sshd.login().as_str()),
        "{starts:#?}"
    );
    let ends = gw.wait_for_event(
        |e| {
            e["kind"] == "session.end"
                && e["detail"]["protocol"] == "ssh"
                && e["detail"]["bytes_from_client"].as_u64() >= Some(1_000_000)
        },
        Duration::from_secs(10),
    )?;
    assert!(!ends.is_empty());
    Ok(())
}

/// `scp` and `sftp` run the sftp subsystem through the gateway: 50 MB each way, hashes equal.
#[test]
fn scp_and_sftp_move_files_both_ways_intact() -> anyhow::Result<()> {
    let s = setup()?;
    let (_home, key, known_hosts) = alice(&s)?;
    let work = temp_dir("ssh-files")?;
    let local = work.join("big.bin");
    let mut data = vec![0u8; 50 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&local, &data)?;
    let remote = work.join("remote.bin");
    let back = work.join("back.bin");
    let opts = |cmd: &mut Command| {
        cmd.args(["-F", "/dev/null", "-P", &s.ssh_port.to_string(), "-i"])
            .arg(&key)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg("-o")
            .arg(format!("CertificateFile={}-cert.pub", key.display()))
            .env_remove("SSH_AUTH_SOCK");
    };
    let mut up = Command::new("scp");
    opts(&mut up);
    up.arg(&local)
        .arg(format!("web-1@127.0.0.1:{}", remote.display()));
    run(&mut up, None)?.ok()?;
    let mut down = Command::new("scp");
    opts(&mut down);
    down.arg(format!("web-1@127.0.0.1:{}", remote.display()))
        .arg(&back);
    run(&mut down, None)?.ok()?;
    assert!(std::fs::read(&back)? == data, "the file came back changed");

    // sftp: ls, get, rm, in batch mode.
    let batch = work.join("batch");
    std::fs::write(
        &batch,
        format!(
            "ls -l {r}\nget {r} {b2}\nrm {r}\n",
            r = remote.display(),
            b2 = work.join("again.bin").display()
        ),
    )?;
    let mut sftp = Command::new("sftp");
    opts(&mut sftp);
    sftp.arg("-b").arg(&batch).arg("web-1@127.0.0.1");
    let out = run(&mut sftp, None)?.ok()?;
    assert!(out.stdout.contains("remote.bin"), "{out}");
    assert!(std::fs::read(work.join("again.bin"))? == data);
    assert!(!remote.exists(), "sftp rm did not remove the file");
    let subsystems = events_of(&s.gw, "ssh.command")?;
    assert!(
        subsystems
            .iter()
            .filter(|e| e["detail"]["request"] == "subsystem" && e["detail"]["name"] == "sftp")
            .count()
            >= 3,
        "{subsystems:#?}"
    );

    // Each file moved is an ssh.file event with its size and SHA-256 (scp speaks sftp).
    let sum = run(Command::new("sha256sum").arg(&local), None)?.ok()?;
    let sha = sum
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sha.len(), 64, "{sum}");
    let path = remote.display().to_string();
    let removed = |e: &Value| {
        e["kind"] == "ssh.file" && e["action"] == "remove" && e["detail"]["path"] == path.as_str()
    };
    let events = s.gw.wait_for_event(removed, Duration::from_secs(10))?;
    let files: Vec<&Value> = events.iter().filter(|e| e["kind"] == "ssh.file").collect();
    let of = |op: &str| {
        files
            .iter()
            .filter(|e| e["action"] == op && e["detail"]["path"] == path.as_str())
            .count()
    };
    let uploads = files.iter().filter(|e| {
        e["action"] == "upload"
            && e["detail"]["path"] == path.as_str()
            && e["detail"]["written_bytes"] == (50u64 << 20)
            && e["detail"]["written_sha256"] == sha.as_str()
            && e["detail"]["status"] == "ok"
            && e["actor"] == "alice"
            && e["resource"] == "web-1"
    });
    assert_eq!(uploads.count(), 1, "{files:#?}");
    let downloads = files.iter().filter(|e| {
        e["action"] == "download"
            && e["detail"]["path"] == path.as_str()
            && e["detail"]["read_bytes"] == (50u64 << 20)
            && e["detail"]["read_sha256"] == sha.as_str()
    });
    assert_eq!(downloads.count(), 2, "scp and sftp get: {files:#?}");
    assert_eq!(of("remove"), 1, "{files:#?}");
    assert!(
        files.iter().all(|e| e["action"] != "unobserved"),
        "{files:#?}"
    );
    assert!(
        files.iter().all(|e| e["controls"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "5.14"))),
        "{files:#?}"
    );
    Ok(())
}

#[test]
fn keys_certificates_and_requests_the_gateway_does_not_take_are_refused_and_recorded(
) -> anyhow::Result<()> {
    let mut s = setup()?;
    let (_home, key, known_hosts) = alice(&s)?;
    let work = temp_dir("ssh-attacks")?;
    let keygen = |args: &[&str]| -> anyhow::Result<()> {
        run(Command::new("ssh-keygen").args(args), None)?.ok()?;
        Ok(())
    };

    // A plain key, and a certificate of a CA the gateway does not know, for alice.
    let plain = work.join("plain");
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &plain.to_string_lossy(),
    ])?;
    let out = run(
        ssh_cmd(s.ssh_port, &plain, &known_hosts, "web-1").arg("true"),
        None,
    )?;
    assert_eq!(out.code(), Some(255), "{out}");
    assert!(out.stderr.contains("Permission denied"), "{out}");
    let rogue_ca = work.join("rogue_ca");
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &rogue_ca.to_string_lossy(),
    ])?;
    let forged = work.join("forged");
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &forged.to_string_lossy(),
    ])?;
    keygen(&[
        "-q",
        "-s",
        &rogue_ca.to_string_lossy(),
        "-I",
        "forged",
        "-n",
        "alice",
        "-V",
        "+5m",
        "-O",
        "extension:credential@gatehouse=forged",
        &format!("{}.pub", forged.display()),
    ])?;
    let out = run(
        ssh_cmd(s.ssh_port, &forged, &known_hosts, "web-1").arg("true"),
        None,
    )?;
    assert_eq!(out.code(), Some(255), "{out}");
    let refused = s.gw.wait_for_event(
        |e| {
            e["kind"] == "connection.refused"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("not signed by the gateway's user CA"))
        },
        Duration::from_secs(10),
    )?;
    assert!(
        refused.iter().any(|e| e["kind"] == "connection.refused"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("plain public key"))),
        "{refused:#?}"
    );

    // Forwarding through the gateway is refused; the session itself goes on.
    let out = run(
        ssh_cmd(s.ssh_port, &key, &known_hosts, "web-1").args(["-W", &s.sshd.address()]),
        None,
    )?;
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("prohibited"), "{out}");
    // LD_PRELOAD never reaches the target; LANG does.
    let out = run(
        ssh_cmd(s.ssh_port, &key, &known_hosts, "web-1")
            .args(["-o", "SetEnv=LD_PRELOAD=/tmp/evil.so LANG=C.UTF-8"])
            .arg("echo preload=${LD_PRELOAD:-unset}"),
        None,
    )?
    .ok()?;
    assert_eq!(out.stdout.trim(), "preload=unset", "{out}");
    let refusals = s.gw.wait_for_event(
        |e| e["kind"] == "ssh.refused" && e["detail"]["name"] == "LD_PRELOAD",
        Duration::from_secs(10),
    )?;
    assert!(
        refusals.iter().any(|e| e["kind"] == "ssh.refused"
            && e["detail"]["channel"] == "direct-tcpip"
            && e["actor"] == "alice"),
        "{refusals:#?}"
    );

    // Someone no policy lets in is told so on the terminal, after the decision is recorded.
    let home = s.gw.engineer("mallory", &["sales"])?;
    s.gw.as_user(&home, &["ssh-cert"])?.ok()?;
    let dir = home.join("ssh");
    let out = run(
        ssh_cmd(
            s.ssh_port,
            &dir.join("id_ed25519"),
            &dir.join("known_hosts"),
            "web-1",
        )
        .arg("true"),
        None,
    )?;
    assert_eq!(out.code(), Some(255), "{out}");
    assert!(out.stderr.contains("denied by policy"), "{out}");
    let denied = events_of(&s.gw, "access.decision")?;
    assert!(
        denied
            .iter()
            .any(|e| e["actor"] == "mallory" && e["decision"] == "deny"),
        "{denied:#?}"
    );

    // A target that shows another host key than the pinned one is not logged in to.
    s.sshd.rotate_host_key()?;
    let out = run(
        ssh_cmd(s.ssh_port, &key, &known_hosts, "web-1").arg("true"),
        None,
    )?;
    assert_eq!(out.code(), Some(255), "{out}");
    assert!(out.stderr.contains("host key"), "{out}");
    let failed = events_of(&s.gw, "session.failed")?;
    assert!(
        failed
            .iter()
            .any(|e| e["reason"].as_str().is_some_and(|r| r.contains("host key"))),
        "{failed:#?}"
    );
    Ok(())
}

/// Port forwarding is its own policy decision (`forward`): the default policies let DBAs
/// tunnel from non-production SSH resources and nobody else (alice, an engineer, is refused
/// in the test above).
#[test]
fn a_policy_permits_port_forwarding_for_dbas_only() -> anyhow::Result<()> {
    let s = setup()?;
    let home = s.gw.engineer("dora", &["dba"])?;
    s.gw.as_user(&home, &["ssh-cert"])?.ok()?;
    let dir = home.join("ssh");
    // Through the tunnel to the target's own SSH port: its banner comes back.
    let out = run(
        ssh_cmd(
            s.ssh_port,
            &dir.join("id_ed25519"),
            &dir.join("known_hosts"),
            "web-1",
        )
        .args(["-W", &s.sshd.address()]),
        None,
    )?;
    assert!(out.stdout.starts_with("SSH-2.0-"), "{out}");
    let allowed = s.gw.wait_for_event(
        |e| e["kind"] == "ssh.command" && e["action"] == "forward" && e["actor"] == "dora",
        Duration::from_secs(10),
    )?;
    let e = allowed
        .iter()
        .find(|e| e["kind"] == "ssh.command" && e["action"] == "forward")
        .ok_or_else(|| anyhow::anyhow!("no forward event"))?;
    assert_eq!(e["decision"], "allow", "{e}");
    assert_eq!(e["detail"]["to"], s.sshd.address().as_str(), "{e}");
    assert!(
        e["policy_ids"].to_string().contains("dba-forward-nonprod"),
        "{e}"
    );
    Ok(())
}

#[test]
fn a_killed_session_ends_within_a_second_with_the_reason_on_the_terminal() -> anyhow::Result<()> {
    let s = setup()?;
    let (_home, key, known_hosts) = alice(&s)?;
    let cfg = s.gw.config_path().to_string_lossy().into_owned();
    let session = ssh_cmd(s.ssh_port, &key, &known_hosts, "web-1")
        .arg("echo started; sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let events = s.gw.wait_for_event(
        |e| e["kind"] == "session.start" && e["detail"]["protocol"] == "ssh",
        Duration::from_secs(20),
    )?;
    let id = events
        .iter()
        .find(|e| e["kind"] == "session.start" && e["detail"]["protocol"] == "ssh")
        .and_then(|e| e["session_id"].as_str())
        .unwrap_or_default()
        .to_string();
    s.gw.cli(&[
        "sessions", "kill", &id, "--config", &cfg, "--reason", "INC-7", "--by", "oncall",
    ])?
    .ok()?;
    let killed = Instant::now();
    let out = session.wait_with_output()?;
    assert!(
        killed.elapsed() <= Duration::from_secs(1),
        "ended after {:?}",
        killed.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INC-7"), "{stderr}");
    assert_ne!(out.status.code(), Some(0));
    Ok(())
}

/// The session whose `ssh.command` event matches `pred`.
fn session_of(gw: &Gateway, pred: impl Fn(&Value) -> bool) -> anyhow::Result<String> {
    let events = gw.wait_for_event(
        |e| e["kind"] == "ssh.command" && pred(e),
        Duration::from_secs(10),
    )?;
    events
        .iter()
        .find(|e| e["kind"] == "ssh.command" && pred(e))
        .and_then(|e| e["session_id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no session id"))
}

/// Waits until session `id`'s recording is closed (its last chunk is chained); returns its
/// chunk events.
fn closed_recording(gw: &Gateway, id: &str) -> anyhow::Result<Vec<Value>> {
    let events = gw.wait_for_event(
        |e| e["kind"] == "recording.chunk" && e["session_id"] == id && e["detail"]["last"] == true,
        Duration::from_secs(15),
    )?;
    Ok(events
        .into_iter()
        .filter(|e| e["kind"] == "recording.chunk" && e["session_id"] == id)
        .collect())
}

/// `gatehouse <args>` with its raw stdout and stderr, at most 60 s.
fn cli_raw(gw: &Gateway, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut cmd = gw.cli_command(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wait_output(cmd.spawn()?, Duration::from_secs(60))
}

/// `ssh ... target command` (or a terminal session fed `stdin` with `-tt`) with raw output.
fn ssh_raw(
    s: &Setup,
    key: &Path,
    known_hosts: &Path,
    extra: &[&str],
    stdin: &[u8],
) -> anyhow::Result<std::process::Output> {
    let mut cmd = ssh_cmd(s.ssh_port, key, known_hosts, "web-1");
    cmd.args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(mut i) = child.stdin.take() {
        use std::io::Write as _;
        i.write_all(stdin)?;
    }
    wait_output(child, Duration::from_secs(60))
}

/// Every recorded session replays to exactly the bytes its client received, exports as
/// asciicast v2, is found by what it showed, and `audit verify` names a chunk that was
/// edited, truncated, deleted or planted.
#[test]
fn a_recording_replays_exactly_exports_to_asciicast_is_searchable_and_verify_names_a_tampered_chunk(
) -> anyhow::Result<()> {
    let s = setup_with(|c| c.set("recordings", "chunk_bytes", "4096"), |r| r)?;
    let (_home, key, known_hosts) = alice(&s)?;
    let gw = &s.gw;

    // An exec session with 100 KB of output (many chunks) and a line on stderr.
    // It begins with what a user of the target could send to attack an auditor's terminal:
    // a clipboard write (OSC 52) and a query whose answer a terminal types back.
    let exec = "printf '\\033]52;c;Z2F0ZWhvdXNl\\007\\033[31mred\\033[0m\\033[6n\\n'; seq 1 20000; echo needle-Marker-7781 >&2; echo done";
    let a_out = ssh_raw(&s, &key, &known_hosts, &[exec], b"")?;
    assert!(a_out.status.success(), "{a_out:?}");
    assert!(a_out.stdout.ends_with(b"20000\ndone\n"));
    // A terminal session: a shell on a pty, driven by what arrives on stdin.
    let b_out = ssh_raw(
        &s,
        &key,
        &known_hosts,
        &["-tt"],
        b"echo tty-$((2+3))\nexit 0\n",
    )?;
    let b_text = String::from_utf8_lossy(&b_out.stdout).into_owned();
    assert!(b_text.contains("tty-5"), "{b_text}");

    let a = session_of(gw, |e| e["detail"]["command"] == exec)?;
    let b = session_of(gw, |e| e["detail"]["request"] == "shell")?;
    let a_chunks = closed_recording(gw, &a)?;
    closed_recording(gw, &b)?;
    assert!(a_chunks.len() >= 3, "{} chunks", a_chunks.len());
    for (n, c) in a_chunks.iter().enumerate() {
        assert_eq!(c["detail"]["chunk"].as_u64(), Some(n as u64), "{c}");
        assert!(c["detail"]["sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64));
    }

    // Replay --raw: stdout is what the client's stdout received, byte for byte.
    let cfg = gw.config_path().to_string_lossy().into_owned();
    assert!(contains(&a_out.stdout, b"\x1b]52;c;Z2F0ZWhvdXNl\x07"));
    for (id, out) in [(&a, &a_out), (&b, &b_out)] {
        let r = cli_raw(
            gw,
            &["replay", id, "--raw", "--speed", "1000", "--skip-idle"],
        )?;
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(
            r.stdout == out.stdout,
            "replay of {id}: {} bytes, the client received {}",
            r.stdout.len(),
            out.stdout.len()
        );
    }
    // Without --raw, the clipboard write and the query are withheld and counted; colours stay.
    let r = cli_raw(gw, &["replay", &a, "--speed", "1000"])?;
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("needle-Marker-7781"), "{stderr}");
    assert!(
        stderr.contains("withheld 2 terminal control sequence(s)"),
        "{stderr}"
    );
    assert!(contains(&r.stdout, b"\x1b[31mred\x1b[0m\n1\n2\n"));
    assert!(!contains(&r.stdout, b"\x1b]") && !contains(&r.stdout, b"\x1b[6n"));
    assert!(r.stdout.ends_with(b"20000\ndone\n"));

    // asciicast v2: a header, then [time, code, text] lines whose output is the session's.
    let cast = cli_raw(gw, &["recordings", "export", &b, "--format", "asciicast"])?;
    assert!(
        cast.status.success(),
        "{}",
        String::from_utf8_lossy(&cast.stderr)
    );
    let text = String::from_utf8(cast.stdout)?;
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap_or_default())?;
    assert_eq!(header["version"], 2, "{header}");
    assert!(header["width"].as_u64() > Some(0) && header["height"].as_u64() > Some(0));
    assert!(
        header["timestamp"].as_i64() > Some(1_700_000_000),
        "{header}"
    );
    let mut shown = String::new();
    let mut last_t = 0.0;
    for l in lines {
        let v: Value = serde_json::from_str(l)?;
        let t = v[0]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("no time: {l}"))?;
        assert!(t >= last_t, "time goes back: {l}");
        last_t = t;
        assert!(matches!(v[1].as_str(), Some("o" | "i" | "r")), "{l}");
        if v[1] == "o" {
            shown.push_str(v[2].as_str().unwrap_or_default());
        }
    }
    assert_eq!(shown, b_text);

    // Search: by what a session showed (any case), and by who.
    let found = gw
        .cli(&["recordings", "--grep", "NEEDLE-marker-7781"])?
        .ok()?;
    assert!(
        found.stdout.contains(&a) && !found.stdout.contains(&b),
        "{found}"
    );
    let found = gw.cli(&["recordings", "--grep", "tty-5"])?.ok()?;
    assert!(
        found.stdout.contains(&b) && !found.stdout.contains(&a),
        "{found}"
    );
    let found = gw
        .cli(&["recordings", "--grep", "no-such-text-anywhere"])?
        .ok()?;
    assert_eq!(found.stdout.lines().count(), 1, "{found}");
    let found = gw.cli(&["recordings", "--user", "alice"])?.ok()?;
    assert!(
        found.stdout.contains(&a) && found.stdout.contains(&b),
        "{found}"
    );
    let found = gw.cli(&["recordings", "--user", "bob"])?.ok()?;
    assert_eq!(found.stdout.lines().count(), 1, "{found}");
    let reads = events_of(gw, "audit.read")?;
    assert!(
        reads.iter().any(|e| e["resource"] == "recordings"
            && e["action"] == "replay"
            && e["session_id"] == a.as_str()),
        "{reads:#?}"
    );

    // Verify: intact, then each kind of tampering is named.
    let ok = gw.cli(&["audit", "verify", "--config", &cfg])?.ok()?;
    assert!(
        ok.stdout.contains("recordings intact: 2 session(s)"),
        "{ok}"
    );
    let dir = gw.state_dir().join("recordings").join(&a);
    let tamper = |file: &str, how: &dyn Fn(&Path) -> std::io::Result<()>, says: &str| {
        let path = dir.join(file);
        let saved = std::fs::read(&path).ok();
        how(&path)?;
        let out = gw.cli(&["audit", "verify", "--config", &cfg])?;
        let replay = gw.cli(&["replay", &a, "--speed", "1000"])?;
        if let Some(saved) = saved {
            std::fs::write(&path, saved)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        assert_eq!(out.code(), Some(1), "{out}");
        assert!(
            out.stdout.contains("recording verification FAILED")
                && out.stdout.contains(file)
                && out.stdout.contains(says),
            "{file}: {out}"
        );
        if says != "not in the audit log" {
            assert!(
                !replay.success() && replay.stderr.contains(file),
                "{replay}"
            );
        }
        anyhow::Ok(())
    };
    tamper(
        "00000001.rec",
        &|p| {
            let mut b = std::fs::read(p)?;
            let at = b.len() - 2;
            b[at] ^= 0x20;
            std::fs::write(p, b)
        },
        "altered",
    )?;
    tamper(
        "00000002.rec",
        &|p| {
            let b = std::fs::read(p)?;
            std::fs::write(p, &b[..b.len() - 1])
        },
        "truncated",
    )?;
    tamper("00000000.rec", &|p| std::fs::remove_file(p), "missing")?;
    tamper(
        "99999999.rec",
        &|p| std::fs::write(p, b"GHREC01\n"),
        "not in the audit log",
    )?;
    let ok = gw.cli(&["audit", "verify", "--config", &cfg])?.ok()?;
    assert!(ok.stdout.contains("recordings intact"), "{ok}");
    Ok(())
}

/// A recording that reaches its bound ends the session on a `strict` resource (the default),
/// with the reason on the terminal and nothing unrecorded passed on, and lets it go on under `best-effort`; both are audited.
#[test]
fn a_failed_recording_cuts_a_strict_session_and_is_audited_either_way() -> anyhow::Result<()> {
    for mode in ["strict", "best-effort"] {
        let s = setup_with(
            |c| c.set("recordings", "max_session_bytes", "8192"),
            |r| {
                if mode == "strict" {
                    r
                } else {
                    r.raw("recording", "\"best-effort\"")
                }
            },
        )?;
        let (_home, key, known_hosts) = alice(&s)?;
        let out = ssh_raw(&s, &key, &known_hosts, &["seq 1 200000"], b"")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let failed =
            s.gw.wait_for_event(|e| e["kind"] == "recording.failed", Duration::from_secs(10))?;
        let failed: Vec<&Value> = failed
            .iter()
            .filter(|e| e["kind"] == "recording.failed")
            .collect();
        assert_eq!(failed.len(), 1, "{failed:#?}");
        assert!(failed[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("reached its bound of 8192 bytes")));
        if mode == "strict" {
            assert_eq!(out.status.code(), Some(255), "{stderr}");
            assert!(
                stderr.contains("reached its bound of 8192 bytes")
                    && stderr.contains("allows no unrecorded session"),
                "{stderr}"
            );
            // Fail closed: nothing past the bound reached the client, not even while the cut
            // was on its way.
            assert!(
                out.stdout.len() <= 8192,
                "{} bytes reached the client past a recording bound of 8192",
                out.stdout.len()
            );
            assert_eq!(failed[0]["decision"], "cut");
        } else {
            assert!(out.status.success(), "{stderr}");
            assert!(out.stdout.ends_with(b"199999\n200000\n"));
            assert_eq!(failed[0]["decision"], "continued");
        }
    }
    Ok(())
}

/// Every channel type, for each group, with the real client: what the policies allow opens,
/// the rest is refused, each decision is in the log, and nothing is allowed that the matrix
/// does not expect. Contractors cannot connect to the resource at all.
#[test]
fn every_channel_type_by_group_is_decided_by_policy_with_no_unexpected_allow() -> anyhow::Result<()>
{
    let s = setup()?;
    // An agent to forward, for `ssh -A`.
    let agent_dir = temp_dir("ssh-agent")?;
    let sock = agent_dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        anyhow::ensure!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let target = s.sshd.address();
    let channels = [
        "shell",
        "exec",
        "subsystem",
        "forward",
        "remote_forward",
        "agent_forward",
        "x11",
    ];
    let matrix: [(&str, &str, &[&str]); 3] = [
        ("dora", "dba", &["shell", "exec", "subsystem", "forward"]),
        ("bob", "engineering", &["shell", "exec", "subsystem"]),
        ("carl", "contractors", &[]),
    ];
    let mut expected_allows = std::collections::BTreeSet::new();
    for (user, group, allowed) in matrix {
        let home = s.gw.engineer(user, &[group])?;
        s.gw.as_user(&home, &["ssh-cert"])?.ok()?;
        let key = home.join("ssh").join("id_ed25519");
        let known_hosts = home.join("ssh").join("known_hosts");
        let connects = group != "contractors";
        for channel in channels {
            let mut cmd = ssh_cmd(s.ssh_port, &key, &known_hosts, "web-1");
            let mut stdin: &[u8] = b"";
            match channel {
                "shell" => {
                    cmd.arg("-tt");
                    stdin = b"exit 0\n";
                }
                "exec" => {
                    cmd.arg("echo matrix-exec");
                }
                "subsystem" => {
                    cmd.args(["-s", "sftp"]);
                }
                "forward" => {
                    cmd.args(["-W", &target]);
                }
                "remote_forward" => {
                    cmd.args([
                        "-o",
                        "ExitOnForwardFailure=yes",
                        "-R",
                        "127.0.0.1:0:127.0.0.1:9",
                    ])
                    .arg("true");
                }
                "agent_forward" => {
                    cmd.env("SSH_AUTH_SOCK", &sock)
                        .arg("-A")
                        .arg("echo agent=${SSH_AUTH_SOCK:-none}");
                }
                _ => {
                    cmd.env("DISPLAY", "127.0.0.1:99")
                        .arg("-Y")
                        .arg("echo display=${DISPLAY:-none}");
                }
            }
            let out = run(&mut cmd, Some(stdin))?;
            let allow = allowed.contains(&channel);
            if allow {
                expected_allows.insert((user.to_string(), channel.to_string()));
            }
            let cell = format!("{user} ({group}) {channel}");
            if !connects {
                assert_eq!(out.code(), Some(255), "{cell}: {out}");
                assert!(out.stderr.contains("denied by policy"), "{cell}: {out}");
                continue;
            }
            match (channel, allow) {
                ("exec", true) => assert!(out.stdout.contains("matrix-exec"), "{cell}: {out}"),
                ("forward", true) => assert!(out.stdout.starts_with("SSH-2.0-"), "{cell}: {out}"),
                ("shell" | "subsystem", true) => assert_eq!(out.code(), Some(0), "{cell}: {out}"),
                ("forward", false) => {
                    assert_eq!(out.code(), Some(255), "{cell}: {out}");
                    assert!(!out.stdout.contains("SSH-2.0-"), "{cell}: {out}");
                }
                ("remote_forward", false) => {
                    assert_eq!(out.code(), Some(255), "{cell}: {out}");
                    assert!(out.stderr.contains("forwarding failed"), "{cell}: {out}");
                }
                // Refused quietly by OpenSSH's design: the session runs without it.
                ("agent_forward", false) => {
                    assert!(out.stdout.contains("agent=none"), "{cell}: {out}")
                }
                ("x11", false) => assert!(out.stdout.contains("display=none"), "{cell}: {out}"),
                (_, false) => {
                    assert_eq!(out.code(), Some(255), "{cell}: {out}");
                    assert!(out.stderr.contains("denied by policy"), "{cell}: {out}");
                }
                (_, true) => unreachable!("{cell}: no allowed case for it"),
            }
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();

    // The log: exactly the expected allows, and a recorded refusal for every other cell of
    // the people who could connect.
    let events = s.gw.audit_events()?;
    let decided = |kind: &str| -> std::collections::BTreeSet<(String, String)> {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["resource"] == "web-1")
            .filter(|e| channels.contains(&e["action"].as_str().unwrap_or_default()))
            .map(|e| {
                (
                    e["actor"].as_str().unwrap_or_default().to_string(),
                    e["action"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let allows = decided("ssh.command");
    let unexpected: Vec<_> = allows.difference(&expected_allows).collect();
    assert!(unexpected.is_empty(), "unexpected allows: {unexpected:?}");
    assert_eq!(allows, expected_allows);
    let refusals = decided("ssh.refused");
    for (user, _, allowed) in matrix.iter().take(2) {
        for channel in channels.iter().filter(|c| !allowed.contains(c)) {
            assert!(
                refusals.contains(&(user.to_string(), channel.to_string())),
                "no refusal recorded for {user} {channel}: {refusals:?}"
            );
        }
    }
    assert!(!refusals.iter().any(|(u, _)| u == "carl"), "{refusals:?}");
    // Every refusal is the default deny: no policy permits (or forbids) these cells.
    for e in events.iter().filter(|e| e["kind"] == "ssh.refused") {
        assert_eq!(e["decision"], "deny", "{e}");
        assert_eq!(e["policy_ids"], serde_json::json!([]), "{e}");
    }
    // Each allow names the policy that decided it.
    for e in events
        .iter()
        .filter(|e| e["kind"] == "ssh.command" && e["action"] == "exec")
    {
        assert!(
            e["policy_ids"].to_string().contains("ssh-session-channels"),
            "{e}"
        );
    }
    Ok(())
}

/// Whether `haystack` holds `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
