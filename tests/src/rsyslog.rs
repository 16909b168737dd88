//! A real `rsyslogd` on a loopback port, as a SIEM's syslog receiver: `imtcp` (RFC 6587
//! octet-counted framing), `mmpstrucdata` parsing each RFC 5424 message's structured data, and
//! one line per message in `out.log`: the `gatehouse@32473` element's `seq`, `kind` and
//! `decision` as rsyslog parsed them, and the MSGID.
//!
//! [`Rsyslog::start`] runs it in the foreground (`-n`) under the watchdog shell; [`stop`] ends it
//! with SIGTERM and [`start_again`] runs it once more on the same port and file.
//!
//! [`stop`]: Rsyslog::stop
//! [`start_again`]: Rsyslog::start_again

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::util::{free_port, tail, temp_dir, SpawnSpec, Supervised, TempDir};

const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Rsyslog {
    proc: Option<Supervised>,
    port: u16,
    bin: PathBuf,
    dir: TempDir,
}

impl Rsyslog {
    pub fn start() -> anyhow::Result<Rsyslog> {
        let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context(
                "rsyslogd is not installed: scripts/test installs the Debian package rsyslog",
            )?;
        let dir = temp_dir("rsyslog")?;
        let port = free_port()?;
        let mut r = Rsyslog {
            proc: None,
            port,
            bin,
            dir,
        };
        std::fs::write(
            r.dir.join("rsyslog.conf"),
            format!(
                r#"global(workDirectory="{dir}")
module(load="imtcp")
module(load="mmpstrucdata")
template(name="gh" type="string" string="%$!rfc5424-sd!gatehouse@32473!seq% %$!rfc5424-sd!gatehouse@32473!kind% %$!rfc5424-sd!gatehouse@32473!decision% %msgid%\n")
ruleset(name="gh") {{
    action(type="mmpstrucdata")
    action(type="omfile" file="{dir}/out.log" template="gh")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="gh")
"#,
                dir = r.dir.path().display()
            ),
        )?;
        r.start_again()?;
        Ok(r)
    }

    /// Runs rsyslogd (again) on the same port, config and output file; returns once it listens.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("rsyslogd.log");
        let proc = Supervised::spawn(SpawnSpec {
            program: &self.bin,
            args: vec![
                "-n".into(),
                "-f".into(),
                self.dir.join("rsyslog.conf").into_os_string(),
                "-i".into(),
                self.dir.join("rsyslogd.pid").into_os_string(),
            ],
            envs: Vec::new(),
            env_remove: Vec::new(),
            cwd: self.dir.path(),
            stdout: &log,
            stderr: &log,
            pidfile: &self.dir.join("watchdog.pid"),
            ids: None,
            kill_signal: "TERM",
        })?;
        self.proc = Some(proc);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(p) = self.proc.as_mut() {
                if let Some(st) = p.try_wait()? {
                    bail!("rsyslogd exited with {st}:\n{}", tail(&log, 20));
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "rsyslogd did not listen on {} within {START_TIMEOUT:?}:\n{}",
                    self.port,
                    tail(&log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops rsyslogd with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.stop_with("TERM", Duration::from_secs(10))?;
        }
        Ok(())
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every line rsyslog wrote: (seq, kind, decision, msgid).
    pub fn received(&self) -> anyhow::Result<Vec<(u64, String, String, String)>> {
        let text = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let seq = f.next()?.parse().ok()?;
                Some((
                    seq,
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                ))
            })
            .collect())
    }
}
