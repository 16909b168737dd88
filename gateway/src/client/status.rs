//! `gatehouse status` (the saved login as the gateway sees it) and `gatehouse logout` (revoke
//! it at the gateway, forget it here).

use anyhow::{bail, Context};

use super::api::{api_error, http_client};
use super::credentials::{credentials_path, load, when};

/// `gatehouse status`.
pub async fn status() -> anyhow::Result<()> {
    let saved = load()?;
    let http = http_client(saved.ca_file.as_deref())?;
    let resp = http
        .get(format!("{}/api/v1/whoami", saved.gateway))
        .bearer_auth(&saved.credential)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", saved.gateway))?;
    if !resp.status().is_success() {
        bail!(
            "the gateway refused the saved credential of {}: {}; run `gatehouse login`",
            saved.user,
            api_error(resp).await
        );
    }
    let me: serde_json::Value = resp.json().await?;
    let groups: Vec<&str> = me
        .get("groups")
        .and_then(|g| g.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let amr: Vec<&str> = me
        .get("amr")
        .and_then(|g| g.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let exp = me.get("expires_at").and_then(|v| v.as_u64()).unwrap_or(0);
    println!("gateway:  {}", saved.gateway);
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
    println!("postgres: {}", saved.postgres);
    Ok(())
}

/// `gatehouse logout`: revokes the login at the gateway and forgets the credential.
pub async fn logout() -> anyhow::Result<()> {
    let saved = load()?;
    let http = http_client(saved.ca_file.as_deref())?;
    let revoked = match http
        .post(format!("{}/api/v1/logout", saved.gateway))
        .bearer_auth(&saved.credential)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(api_error(r).await),
        Err(e) => Err(e.to_string()),
    };
    let path = credentials_path()?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    match revoked {
        Ok(()) => println!("Logged out {}: the credential is revoked and forgotten.", saved.user),
        Err(e) => println!(
            "Forgot the credential of {}, but the gateway did not confirm revoking it ({e}); it stops working at its expiry.",
            saved.user
        ),
    }
    Ok(())
}
