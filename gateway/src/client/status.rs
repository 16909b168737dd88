//! `gatehouse status` (the current credential as the gateway sees it) and `gatehouse logout`
//! (revoke the saved login at the gateway, forget it here).

use anyhow::{bail, Context};

use super::api::{error_line, http_client};
use super::credentials::{
    credential, credentials_path, env_token, info, load, postgres_door, strings, when, whoami,
    Credential, TOKEN_ENV,
};

/// `gatehouse status`.
pub async fn status() -> anyhow::Result<()> {
    let cred = credential()?;
    let http = http_client(cred.ca_file())?;
    let gateway = cred.gateway();
    let me = whoami(
        &http,
        gateway,
        cred.token(),
        &cred.describe(),
        cred.remedy(),
    )
    .await?;
    let (source, postgres) = match &cred {
        Credential::Saved(saved) => (
            format!("saved login ({})", credentials_path()?.display()),
            saved.postgres.clone(),
        ),
        Credential::Env { .. } => (
            format!("{TOKEN_ENV} (an issued token; a saved login is not used while it is set)"),
            postgres_door(&info(&http, gateway).await?)?,
        ),
    };
    let groups = strings(&me, "groups");
    let amr = strings(&me, "amr");
    let exp = me.get("expires_at").and_then(|v| v.as_u64()).unwrap_or(0);
    println!("gateway:  {gateway}");
    println!("source:   {source}");
    println!(
        "user:     {}",
        me.get("user").and_then(|v| v.as_str()).unwrap_or("")
    );
    println!(
        "groups:   {}",
        if groups.is_empty() {
            "none".into()
        } else {
            groups.join(", ")
        }
    );
    println!(
        "mfa:      {}{}",
        if me.get("mfa").and_then(|v| v.as_bool()) == Some(true) {
            "yes"
        } else {
            "no"
        },
        if amr.is_empty() {
            String::new()
        } else {
            format!(" (amr: {})", amr.join(", "))
        }
    );
    println!("expires:  {}", when(exp));
    println!("postgres: {postgres}");
    Ok(())
}

/// How the gateway answered a logout.
enum Revoked {
    Yes,
    /// The saved credential is an issued token (`login --token-file`): only an admin ends it.
    IssuedToken,
    No(String),
}

/// `gatehouse logout`: revokes the login at the gateway and forgets the credential. Refused
/// while `GATEHOUSE_TOKEN` is set: that token is not this machine's to end, and it would go on
/// being used whatever was forgotten here.
pub async fn logout() -> anyhow::Result<()> {
    if env_token().is_some() {
        bail!("{TOKEN_ENV} is set: an issued token is revoked by an admin (`gatehouse token revoke`), unset it to log out the saved login");
    }
    let saved = load()?;
    let http = http_client(saved.ca_file.as_deref())?;
    let revoked = match http
        .post(format!("{}/api/v1/logout", saved.gateway))
        .bearer_auth(&saved.credential)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Revoked::Yes,
        Ok(r) => {
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            if body.get("error").and_then(|e| e.as_str()) == Some("not_a_login") {
                Revoked::IssuedToken
            } else {
                Revoked::No(error_line(status, &body))
            }
        }
        Err(e) => Revoked::No(e.to_string()),
    };
    let path = credentials_path()?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    match revoked {
        Revoked::Yes => println!("Logged out {}: the credential is revoked and forgotten.", saved.user),
        Revoked::IssuedToken => println!(
            "Forgot the issued token of {} here. It is not revoked: it works until its expiry ({}) unless an admin revokes it (`gatehouse token revoke`).",
            saved.user,
            when(saved.expires_at)
        ),
        Revoked::No(e) => println!(
            "Forgot the credential of {}, but the gateway did not confirm revoking it ({e}); it stops working at its expiry.",
            saved.user
        ),
    }
    Ok(())
}
