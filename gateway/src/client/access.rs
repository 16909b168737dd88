//! The access commands over the gateway's HTTP API: `resources`, `request`, `requests`,
//! `approve`/`deny`, `grant`, `grants`, `revoke`, `review`.

use std::io::Write as _;

use super::api::api;

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

/// `gatehouse resources`.
pub async fn resources() -> anyhow::Result<()> {
    let v = api(reqwest::Method::GET, "/api/v1/resources", None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<8} {:<8} {:<12} request",
        "resource", "env", "role", "access"
    )?;
    for r in v["resources"].as_array().into_iter().flatten() {
        for role in r["roles"].as_array().into_iter().flatten() {
            let access = if role["can_connect"] == true {
                match role["grant"].get("expires").and_then(|e| e.as_str()) {
                    Some(until) => format!("until {until}"),
                    None => "yes".into(),
                }
            } else {
                "no".into()
            };
            let request = if role["can_request"] == true {
                let max = role["max_duration_secs"]
                    .as_u64()
                    .map(|m| format!(", max {}", crate::access::human_duration(m)))
                    .unwrap_or_default();
                format!(
                    "yes ({} approval{}{max})",
                    role["approvals_required"],
                    if role["approvals_required"] == 1 {
                        ""
                    } else {
                        "s"
                    }
                )
            } else {
                "-".into()
            };
            writeln!(
                out,
                "{:<20} {:<8} {:<8} {:<12} {request}",
                s(r, "name"),
                s(r, "env"),
                s(role, "role"),
                access
            )?;
        }
    }
    Ok(())
}

/// `gatehouse request`.
pub async fn request(
    resource: &str,
    role: &str,
    duration: &str,
    reason: &str,
    break_glass: bool,
) -> anyhow::Result<()> {
    let v = api(
        reqwest::Method::POST,
        "/api/v1/requests",
        Some(serde_json::json!({ "resource": resource, "role": role, "duration": duration, "reason": reason, "break_glass": break_glass })),
    )
    .await?;
    if break_glass {
        println!(
            "BREAK-GLASS: `{role}` on {resource} granted until {} (grant {}). Review item {} is open; this is recorded and notified.",
            s(&v["grant"], "expires"),
            v["grant"]["id"],
            v["review_id"]
        );
    } else {
        println!(
            "request {} created: `{role}` on {resource} for {duration}; it needs {} approval(s). `gatehouse requests` shows its state.",
            v["request_id"], v["approvals_required"]
        );
    }
    Ok(())
}

/// `gatehouse requests [--pending]`.
pub async fn requests(pending: bool) -> anyhow::Result<()> {
    let path = if pending {
        "/api/v1/requests?pending=true"
    } else {
        "/api/v1/requests"
    };
    let v = api(reqwest::Method::GET, path, None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<6} {:<12} {:<16} {:<8} {:<8} {:<10} {:<9} reason",
        "id", "requester", "resource", "role", "for", "state", "approvals"
    )?;
    for r in v["requests"].as_array().into_iter().flatten() {
        let approvals = r["approvals"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["decision"] == "approve").count())
            .unwrap_or(0);
        writeln!(
            out,
            "{:<6} {:<12} {:<16} {:<8} {:<8} {:<10} {:<9} {}",
            r["id"].as_i64().unwrap_or_default(),
            s(r, "requester"),
            s(r, "resource"),
            s(r, "role"),
            crate::access::human_duration(r["duration_secs"].as_u64().unwrap_or(0)),
            s(r, "state"),
            format!("{approvals}/{}", r["approvals_required"]),
            // A reason may hold line breaks; on one table row they read as `\n`.
            s(r, "reason").replace('\n', "\\n")
        )?;
    }
    Ok(())
}

/// `gatehouse approve` / `gatehouse deny`.
pub async fn decide(id: i64, approve: bool, comment: &str) -> anyhow::Result<()> {
    let verb = if approve { "approve" } else { "deny" };
    let v = api(
        reqwest::Method::POST,
        &format!("/api/v1/requests/{id}/{verb}"),
        Some(serde_json::json!({ "comment": comment })),
    )
    .await?;
    match (approve, s(&v, "state")) {
        (true, "approved") => println!(
            "request {id} approved: grant {} gives {} `{}` on {} until {}",
            v["grant"]["id"],
            s(&v["grant"], "user"),
            s(&v["grant"], "role"),
            s(&v["grant"], "resource"),
            s(&v["grant"], "expires")
        ),
        (true, _) => println!(
            "approval recorded for request {id}: {} of {} approvals",
            v["approvals"], v["approvals_required"]
        ),
        (false, _) => println!("request {id} denied"),
    }
    Ok(())
}

/// `gatehouse grant`.
pub async fn grant(
    user: &str,
    resource: &str,
    role: &str,
    duration: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let v = api(
        reqwest::Method::POST,
        "/api/v1/grants",
        Some(serde_json::json!({ "user": user, "resource": resource, "role": role, "duration": duration, "reason": reason })),
    )
    .await?;
    println!(
        "grant {} gives {user} `{role}` on {resource} until {}",
        v["grant"]["id"],
        s(&v["grant"], "expires")
    );
    Ok(())
}

/// `gatehouse revoke`.
pub async fn revoke(id: i64, reason: &str) -> anyhow::Result<()> {
    let v = api(
        reqwest::Method::POST,
        &format!("/api/v1/grants/{id}/revoke"),
        Some(serde_json::json!({ "reason": reason })),
    )
    .await?;
    println!(
        "grant {id} revoked; {} live session(s) cut",
        v["sessions_cut"]
    );
    Ok(())
}

/// `gatehouse grants [--all]`.
pub async fn grants(all: bool) -> anyhow::Result<()> {
    let path = if all {
        "/api/v1/grants?all=true"
    } else {
        "/api/v1/grants"
    };
    let v = api(reqwest::Method::GET, path, None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<6} {:<12} {:<16} {:<8} {:<12} {:<28} granted by",
        "id", "user", "resource", "role", "source", "expires"
    )?;
    for g in v["grants"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<6} {:<12} {:<16} {:<8} {:<12} {:<28} {}{}",
            g["id"],
            s(g, "user"),
            s(g, "resource"),
            s(g, "role"),
            s(g, "source"),
            s(g, "expires"),
            s(g, "granted_by"),
            if g["revoked_at"].is_string() {
                format!(" (revoked by {})", s(g, "revoked_by"))
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}

/// `gatehouse review [ID --comment]`: lists open review items, or signs one off.
pub async fn review(id: Option<i64>, comment: &str, all: bool) -> anyhow::Result<()> {
    if let Some(id) = id {
        api(
            reqwest::Method::POST,
            &format!("/api/v1/reviews/{id}/sign-off"),
            Some(serde_json::json!({ "comment": comment })),
        )
        .await?;
        println!("review item {id} signed off");
        return Ok(());
    }
    let path = if all {
        "/api/v1/reviews?all=true"
    } else {
        "/api/v1/reviews"
    };
    let v = api(reqwest::Method::GET, path, None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<6} {:<8} {:<12} {:<28} reviewed",
        "id", "grant", "user", "opened"
    )?;
    for r in v["reviews"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<6} {:<8} {:<12} {:<28} {}",
            r["id"],
            r["grant_id"],
            s(r, "subject"),
            s(r, "opened"),
            if r["reviewed_at"].is_string() {
                format!(
                    "by {} at {}: {}",
                    s(r, "reviewer"),
                    s(r, "reviewed_at"),
                    s(r, "comment")
                )
            } else {
                "OPEN".into()
            }
        )?;
    }
    Ok(())
}

/// `gatehouse reviews items`: the access review items assigned to the caller.
pub async fn review_items() -> anyhow::Result<()> {
    let v = api(reqwest::Method::GET, "/api/v1/campaigns/items", None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<6} {:<9} {:<12} {:<16} {:<8} {:<9} {:<28} via",
        "item", "campaign", "subject", "resource", "role", "access", "due"
    )?;
    for i in v["items"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<6} {:<9} {:<12} {:<16} {:<8} {:<9} {:<28} {}",
            i["id"].as_i64().unwrap_or_default(),
            i["campaign_id"].as_i64().unwrap_or_default(),
            s(i, "subject"),
            s(i, "resource"),
            s(i, "role"),
            s(i, "access"),
            if i["overdue"] == true {
                format!("{} OVERDUE", s(i, "due"))
            } else {
                s(i, "due").to_string()
            },
            s(i, "via"),
        )?;
    }
    Ok(())
}

/// `gatehouse reviews decide ID --keep|--revoke --comment ...`
pub async fn decide_review_item(id: i64, decision: &str, comment: &str) -> anyhow::Result<()> {
    let v = api(
        reqwest::Method::POST,
        &format!("/api/v1/campaigns/items/{id}"),
        Some(serde_json::json!({ "decision": decision, "comment": comment })),
    )
    .await?;
    writeln!(
        std::io::stdout().lock(),
        "review item {id}: {decision} (audit event {}; {} live sessions cut)",
        v["seq"].as_u64().unwrap_or_default(),
        v["sessions_cut"].as_u64().unwrap_or_default()
    )?;
    Ok(())
}
