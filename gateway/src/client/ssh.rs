//! `gatehouse ssh-cert`: an SSH user certificate for the current credential. It keeps an
//! Ed25519 key in `$GATEHOUSE_HOME/ssh/id_ed25519` (made on first use, 0600), asks the gateway
//! to sign it (`POST /api/v1/credentials/ssh`), writes `id_ed25519-cert.pub` beside it and the
//! gateway's host key to `$GATEHOUSE_HOME/ssh/known_hosts`, and prints the `Host` block that
//! makes plain `ssh`, `scp`, `sftp`, `rsync -e ssh` and `git` use them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use super::api::{api_error, http_client};
use super::credentials::{current, home, when};

/// Where the key, certificate and known_hosts live.
pub fn ssh_dir() -> anyhow::Result<PathBuf> {
    Ok(home()?.join("ssh"))
}

fn load_or_create_key(path: &Path) -> anyhow::Result<PrivateKey> {
    if !path.exists() {
        let key = crate::ssh::ca::new_key();
        let text = key
            .to_openssh(LineEnding::LF)
            .context("encoding the SSH key")?;
        gatehouse_core::files::write_private(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        let public = crate::ssh::ca::public_line(key.public_key(), "gatehouse");
        std::fs::write(path.with_extension("pub"), format!("{public}\n"))
            .with_context(|| format!("writing {}.pub", path.display()))?;
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKey::from_openssh(text)
        .with_context(|| format!("{} is not an OpenSSH private key", path.display()))
}

/// What `gatehouse ssh-cert` wrote.
pub struct Written {
    pub key: PathBuf,
    pub certificate: PathBuf,
    pub known_hosts: PathBuf,
    pub ssh_address: Option<String>,
    pub expires_at: u64,
}

/// Gets a certificate and writes the files.
pub async fn ssh_cert() -> anyhow::Result<Written> {
    let saved = current().await?;
    let dir = ssh_dir()?;
    let key_path = dir.join("id_ed25519");
    let key = load_or_create_key(&key_path)?;
    let http = http_client(saved.ca_file.as_deref())?;
    let resp = http
        .post(format!("{}/api/v1/credentials/ssh", saved.gateway))
        .bearer_auth(&saved.credential)
        .json(&serde_json::json!({
            "public_key": crate::ssh::ca::public_line(key.public_key(), "gatehouse"),
        }))
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", saved.gateway))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "the gateway refused the credential of {}; run `gatehouse login`",
            saved.user
        );
    }
    if !resp.status().is_success() {
        bail!("cannot get an SSH certificate: {}", api_error(resp).await);
    }
    let v: serde_json::Value = resp.json().await.context("the gateway's answer")?;
    let (Some(cert), Some(host_key), Some(expires_at)) = (
        v["certificate"].as_str(),
        v["host_key"].as_str(),
        v["expires_at"].as_u64(),
    ) else {
        bail!("the gateway's answer has no certificate");
    };
    let ssh_address = v["ssh_address"].as_str().map(str::to_string);
    let cert_path = dir.join("id_ed25519-cert.pub");
    std::fs::write(&cert_path, format!("{cert}\n"))
        .with_context(|| format!("writing {}", cert_path.display()))?;
    let known_hosts = dir.join("known_hosts");
    let pattern = match &ssh_address {
        Some(a) => known_hosts_pattern(a),
        None => "gatehouse".to_string(),
    };
    std::fs::write(&known_hosts, format!("{pattern} {host_key}\n"))
        .with_context(|| format!("writing {}", known_hosts.display()))?;
    Ok(Written {
        key: key_path,
        certificate: cert_path,
        known_hosts,
        ssh_address,
        expires_at,
    })
}

/// `host:port` as known_hosts spells it: `[host]:port` unless the port is 22.
pub fn known_hosts_pattern(address: &str) -> String {
    match address.rsplit_once(':') {
        Some((host, "22")) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        Some((host, port)) => format!(
            "[{}]:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        ),
        None => address.to_string(),
    }
}

/// The `Host` block for `~/.ssh/config`, and how to use it.
pub fn config_block(w: &Written) -> String {
    let (host, port) = w
        .ssh_address
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .map(|(h, p)| {
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.to_string(),
            )
        })
        .unwrap_or_else(|| ("GATEWAY-HOST".into(), "2222".into()));
    format!(
        "# SSH through gatehouse: `ssh web-1.gh` (login of role read), `ssh root%web-1@web-1.gh`\n\
         # (another login, by its role or name; needs a grant), scp/sftp/rsync/git alike.\n\
         Host *.gh\n  \
           HostName {host}\n  \
           Port {port}\n  \
           User %n\n  \
           IdentityFile {key}\n  \
           CertificateFile {cert}\n  \
           IdentitiesOnly yes\n  \
           UserKnownHostsFile {kh}\n  \
           HostKeyAlias {alias}\n  \
           ForwardAgent no\n\
         # The certificate expires {expires}; run `gatehouse ssh-cert` again after `gatehouse login`.\n",
        key = w.key.display(),
        cert = w.certificate.display(),
        kh = w.known_hosts.display(),
        alias = w.ssh_address.as_deref().map(known_hosts_pattern).unwrap_or_else(|| "gatehouse".into()),
        expires = when(w.expires_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_patterns_follow_openssh() {
        assert_eq!(known_hosts_pattern("gw.example:22"), "gw.example");
        assert_eq!(known_hosts_pattern("127.0.0.1:2222"), "[127.0.0.1]:2222");
        assert_eq!(known_hosts_pattern("[::1]:2222"), "[::1]:2222");
    }
}
