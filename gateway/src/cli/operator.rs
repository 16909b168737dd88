//! Who runs an admin command: the name they claim (`--by`, default their operating-system user
//! name) and what the operating system says, recorded side by side in every admin event.
//!
//! `--by` is free text (an on-call rota name, a ticket's assignee); it is kept as the event's
//! `by` and actor, and is what a client whose session is cut is told. Next to it the event
//! records the operating-system account that ran the command (`os_user`, `uid`: the real uid
//! from `/proc/self/status`, its name from `/etc/passwd`) and the host
//! (`/proc/sys/kernel/hostname`, else `/etc/hostname`), which the claim cannot change.

use anyhow::{bail, Context};

/// Longest claimed name, in bytes.
pub(super) const MAX_NAME_BYTES: usize = 128;

/// The person behind an admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Operator {
    /// The name given with `--by`, else [`os_user`](Self::os_user).
    pub claimed: String,
    /// The name of the real uid in `/etc/passwd`, or `uid N` when it has none.
    pub os_user: String,
    /// The real uid of the process.
    pub uid: u32,
    /// The host name, or `unknown` when neither file has one.
    pub host: String,
}

impl Operator {
    /// The operator of this process; `by` is the `--by` argument.
    pub(crate) fn current(by: Option<&str>) -> anyhow::Result<Operator> {
        let status = std::fs::read_to_string("/proc/self/status").context(
            "cannot tell which operating-system user runs this command (/proc/self/status)",
        )?;
        let uid = real_uid(&status)
            .context("cannot tell which operating-system user runs this command: /proc/self/status has no readable `Uid:` line")?;
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let host = local_hostname().unwrap_or_else(|| "unknown".to_string());
        Operator::new(by, uid, &passwd, host)
    }

    /// The operator for `uid` (named from `passwd`, the text of `/etc/passwd`) on `host`.
    fn new(by: Option<&str>, uid: u32, passwd: &str, host: String) -> anyhow::Result<Operator> {
        let os_user = user_name(passwd, uid).unwrap_or_else(|| format!("uid {uid}"));
        let claimed = match by {
            Some(name) => {
                check_name(name).context("--by")?;
                name.to_string()
            }
            None => os_user.clone(),
        };
        Ok(Operator {
            claimed,
            os_user,
            uid,
            host,
        })
    }

    /// `{"by": claimed, "os_user": ..., "uid": ..., "host": ...}`, for an event's detail.
    pub(crate) fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "by": self.claimed,
            "os_user": self.os_user,
            "uid": self.uid,
            "host": self.host,
        })
    }

    /// [`detail`](Self::detail) with the fields of `extra` (an object) added.
    pub(crate) fn detail_with(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut detail = self.detail();
        if let (Some(d), serde_json::Value::Object(extra)) = (detail.as_object_mut(), extra) {
            for (k, v) in extra {
                d.entry(k).or_insert(v);
            }
        }
        detail
    }

    /// `claimed (os_user@host)`, for listings.
    pub(crate) fn display(&self) -> String {
        format!("{} ({}@{})", self.claimed, self.os_user, self.host)
    }
}

/// A claimed name must be 1-128 bytes of printable characters, not only spaces: it ends up in
/// the audit log, in listings and in the message a cut client reads.
pub(super) fn check_name(name: &str) -> anyhow::Result<()> {
    if name.trim().is_empty() {
        bail!("the name must not be empty");
    }
    if name.len() > MAX_NAME_BYTES {
        bail!("the name is limited to {MAX_NAME_BYTES} bytes");
    }
    if let Some(c) = name.chars().find(|&c| !printable(c)) {
        bail!(
            "the name must be printable; it contains {}",
            c.escape_unicode()
        );
    }
    Ok(())
}

/// Not a control character, nor an invisible one that reorders or hides text (bidi controls,
/// zero-width characters, the byte-order mark).
fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// The real uid: the first number of the `Uid:` line of `/proc/self/status`
/// (`Uid:\treal\teffective\tsaved\tfs`).
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The name of the first `/etc/passwd` entry (`name:password:uid:gid:gecos:home:shell`) with
/// `uid`, if it is a valid name.
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut fields = l.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let entry_uid: u32 = fields.next()?.trim().parse().ok()?;
            (entry_uid == uid).then_some(name)
        })
        .filter(|name| check_name(name).is_ok())
        .map(String::from)
}

/// The host name in a hostname file: its first line, trimmed, if that is a usable name.
/// This machine's host name (`/proc/sys/kernel/hostname`, else `/etc/hostname`), if it has a
/// valid one.
pub(crate) fn local_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|text| hostname(&text))
}

fn hostname(text: &str) -> Option<String> {
    let name = text.lines().next()?.trim();
    (!name.is_empty() && name.len() <= 255 && name.chars().all(printable) && !name.contains(' '))
        .then(|| name.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tgatehouse\nUmask:\t0022\nState:\tR (running)\nTgid:\t4242\n\
        Pid:\t4242\nPPid:\t1\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment:x:1000:\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
        alice2:x:1000:1000::/home/alice2:/bin/sh\n\
        broken-line\n\
        evil\u{1b}[2J:x:1001:1001::/:/bin/sh\n";

    #[test]
    fn the_real_uid_is_the_first_number_of_the_uid_line() {
        assert_eq!(real_uid(STATUS), Some(1000));
        assert_eq!(real_uid("Uid:\t0\t0\t0\t0\n"), Some(0));
        assert_eq!(real_uid("Name:\tx\nGid:\t5\t5\t5\t5\n"), None);
        assert_eq!(real_uid("Uid:\n"), None);
        assert_eq!(real_uid("Uid:\tnot-a-number\t0\n"), None);
        // The running process has one.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(real_uid(&status).is_some(), "{status}");
    }

    #[test]
    fn the_name_is_the_first_passwd_entry_with_the_uid() {
        assert_eq!(user_name(PASSWD, 0).as_deref(), Some("root"));
        assert_eq!(user_name(PASSWD, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(PASSWD, 1).as_deref(), Some("daemon"));
        assert_eq!(user_name(PASSWD, 4242), None);
        // A name that would corrupt a terminal or a log line is not taken.
        assert_eq!(user_name(PASSWD, 1001), None);
        assert_eq!(user_name("", 0), None);
    }

    #[test]
    fn the_default_claim_is_the_os_user_and_a_claim_never_replaces_it() {
        let op = Operator::new(None, 1000, PASSWD, "gw1".into()).unwrap();
        assert_eq!(
            op,
            Operator {
                claimed: "alice".into(),
                os_user: "alice".into(),
                uid: 1000,
                host: "gw1".into(),
            }
        );
        let op = Operator::new(Some("hr-admin"), 0, PASSWD, "gw1".into()).unwrap();
        assert_eq!(op.claimed, "hr-admin");
        assert_eq!(op.os_user, "root");
        assert_eq!(
            op.detail(),
            serde_json::json!({"by": "hr-admin", "os_user": "root", "uid": 0, "host": "gw1"})
        );
        assert_eq!(
            op.detail_with(serde_json::json!({"user": "bob", "by": "forged"})),
            serde_json::json!({"by": "hr-admin", "os_user": "root", "uid": 0, "host": "gw1", "user": "bob"}),
            "the operator's keys win"
        );
        assert_eq!(op.display(), "hr-admin (root@gw1)");
        // A uid without a passwd entry (containers) is named by its number.
        let op = Operator::new(None, 4242, PASSWD, "gw1".into()).unwrap();
        assert_eq!(op.os_user, "uid 4242");
        assert_eq!(op.claimed, "uid 4242");
    }

    #[test]
    fn claimed_names_are_bounded_and_printable() {
        for good in [
            "hr-admin",
            "Dana Scully",
            "d\u{e9}j\u{e0}-vu",
            &"x".repeat(128),
        ] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "   ",
            "a\nb",
            "a\tb",
            "evil\u{1b}[31m",
            "a\u{0}",
            "admin\u{202e}nimda",
            "zero\u{200b}width",
            &"x".repeat(129),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
            assert!(
                Operator::new(Some(bad), 0, PASSWD, "gw1".into()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_host_is_the_first_line_of_the_file() {
        assert_eq!(
            hostname("gw1.example.com\n").as_deref(),
            Some("gw1.example.com")
        );
        assert_eq!(hostname("  gw1  \nother\n").as_deref(), Some("gw1"));
        assert_eq!(hostname(""), None);
        assert_eq!(hostname("\n"), None);
        assert_eq!(hostname("bad\u{1b}name\n"), None);
    }

    #[test]
    fn this_process_has_an_operator() {
        let op = Operator::current(None).unwrap();
        assert_eq!(op.claimed, op.os_user);
        assert!(!op.host.is_empty());
    }
}
