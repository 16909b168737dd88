//! The evidence report: one self-contained HTML file (inline CSS and SVG, no script, nothing
//! fetched when it is opened), readable on screen and printed (a page per control).
//!
//! The index gives the period, the chain's verification, the derived checks with their
//! results, the charts and a link to each control's section; each control section says what
//! the gateway does for it, what is left to the organisation, the events and policies that
//! serve it, the checks that bear on it, and sampled events by their seq and line in
//! `audit-export.jsonl`. Exceptions are listed, never summarised away.

use std::collections::BTreeMap;
use std::io::Write;

use gatehouse_policies::PolicyInfo;

use super::analysis::{status, Findings, Sample, CHECKS, EXCEPTIONS_SHOWN};
use super::catalogue;
use crate::web::page::escape;

/// What the report says about the bundle it is part of.
pub struct Meta<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub built_at: &'a str,
    pub built_by: &'a str,
    pub key_id: &'a str,
    pub chain: &'a str,
    pub chain_ok: bool,
    pub policy_hash: &'a str,
    pub gateway_version: &'a str,
    pub files: &'a [(&'a str, u64)],
}

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1f24;margin:0 auto;max-width:1060px;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:600}.exception{color:#cf222e;font-weight:700}.info{color:#57606a}
.level{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;border:1px solid #8c959f}
.muted{color:#57606a}code{font-size:12px;background:#f6f8fa;padding:1px 4px;border-radius:3px}
nav ul{columns:3;padding-left:18px}.banner{padding:10px 14px;border-radius:6px;margin:12px 0}
.ok{background:#dafbe1;border:1px solid #1a7f37}.bad{background:#ffebe9;border:1px solid #cf222e}
svg text{font:11px system-ui,sans-serif;fill:#1b1f24}
@media print{body{max-width:none;padding:0}section.control{break-before:page}nav ul{columns:2}a{color:inherit;text-decoration:none}}
"#;

fn anchor(id: &str) -> String {
    format!("control-{}", id.replace('.', "-"))
}

/// Horizontal bars, one per (label, value); at most `max` rows.
fn bars(title: &str, rows: &[(String, u64)], max: usize, unit: &str) -> String {
    if rows.is_empty() {
        return format!(
            "<p class=\"muted\">{}: nothing in the period.</p>",
            escape(title)
        );
    }
    let rows = &rows[..rows.len().min(max)];
    let top = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1) as f64;
    let h = 20 * rows.len() + 28;
    let mut s = format!(
        "<figure><svg role=\"img\" aria-label=\"{t}\" width=\"640\" height=\"{h}\" viewBox=\"0 0 640 {h}\"><text x=\"0\" y=\"14\" font-weight=\"600\">{t}</text>",
        t = escape(title)
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 24 + 20 * i;
        let w = (*v as f64 / top * 360.0).max(1.0);
        let label: String = label.chars().take(40).collect();
        s.push_str(&format!(
            "<text x=\"0\" y=\"{ty}\">{l}</text><rect x=\"230\" y=\"{y}\" width=\"{w:.1}\" height=\"14\" fill=\"#0969da\"/><text x=\"{tx:.1}\" y=\"{ty}\">{v}{u}</text>",
            ty = y + 11,
            l = escape(&label),
            tx = 236.0 + w,
            u = escape(unit),
        ));
    }
    s.push_str("</svg></figure>");
    s
}

/// Stacked columns per day: allowed (blue) and denied (red) decisions.
fn per_day(days: &BTreeMap<String, (u64, u64)>) -> String {
    if days.is_empty() {
        return "<p class=\"muted\">Connection decisions per day: none in the period.</p>".into();
    }
    // At most the last 120 days of the period as columns; the table holds them all.
    let shown: Vec<(&String, &(u64, u64))> = days
        .iter()
        .rev()
        .take(120)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let top = shown
        .iter()
        .map(|(_, (a, d))| a + d)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let col = (600 / shown.len().max(1)).clamp(3, 40);
    let width = (40 + col * shown.len()).max(640);
    let mut s = format!(
        "<figure><svg role=\"img\" aria-label=\"Connection decisions per day\" width=\"{width}\" height=\"200\" viewBox=\"0 0 {width} 200\"><text x=\"0\" y=\"14\" font-weight=\"600\">Connection decisions per day (blue allowed, red denied; max {top})</text>"
    );
    for (i, (day, (a, d))) in shown.iter().enumerate() {
        let x = 40 + col * i;
        let ha = *a as f64 / top * 150.0;
        let hd = *d as f64 / top * 150.0;
        s.push_str(&format!(
            "<rect x=\"{x}\" y=\"{ya:.1}\" width=\"{w}\" height=\"{ha:.1}\" fill=\"#0969da\"><title>{day}: {a} allowed</title></rect><rect x=\"{x}\" y=\"{yd:.1}\" width=\"{w}\" height=\"{hd:.1}\" fill=\"#cf222e\"><title>{day}: {d} denied</title></rect>",
            ya = 180.0 - ha,
            yd = 180.0 - ha - hd,
            w = col.saturating_sub(1).max(1),
            day = escape(day),
        ));
    }
    if let Some(first) = shown.first() {
        s.push_str(&format!(
            "<text x=\"40\" y=\"196\">{}</text>",
            escape(first.0)
        ));
    }
    if let Some(last) = shown.last().filter(|_| shown.len() > 1) {
        s.push_str(&format!(
            "<text x=\"{}\" y=\"196\" text-anchor=\"end\">{}</text>",
            40 + col * shown.len(),
            escape(last.0)
        ));
    }
    s.push_str("</svg></figure>");
    s
}

fn sorted(m: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn sample_rows(samples: &[&Sample]) -> String {
    let mut s = String::from("<table><tr><th>seq</th><th>line</th><th>time (UTC)</th><th>kind</th><th>actor</th><th>resource</th><th>decision</th><th>reason</th></tr>");
    for e in samples {
        s.push_str(&format!(
            "<tr id=\"seq-{seq}\"><td class=\"n\">{seq}</td><td class=\"n\"><a href=\"audit-export.jsonl\">{line}</a></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.ts),
            escape(&e.kind),
            escape(&e.actor),
            escape(&e.resource),
            escape(&e.decision),
            escape(&e.reason.chars().take(160).collect::<String>()),
            seq = e.seq,
            line = e.line,
        ));
    }
    s.push_str("</table>");
    s
}

/// Writes the report.
pub fn write(
    out: &mut dyn Write,
    meta: &Meta<'_>,
    f: &Findings,
    policies: &[PolicyInfo],
) -> std::io::Result<()> {
    write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Gatehouse evidence {from} to {to}</title><style>{CSS}</style></head><body>",
        from = escape(meta.from),
        to = escape(meta.to)
    )?;
    write!(
        out,
        "<header id=\"index\"><h1>Access evidence, ISO/IEC 27001:2022 Annex A</h1><p>Period <b>{}</b> to <b>{}</b> (UTC, end excluded). Built {} by {} with gatehouse {}. {} events, first {} last {}.</p>",
        escape(meta.from),
        escape(meta.to),
        escape(meta.built_at),
        escape(meta.built_by),
        escape(meta.gateway_version),
        f.events,
        escape(&f.first_ts),
        escape(&f.last_ts),
    )?;
    write!(
        out,
        "<div class=\"banner {}\"><b>Chain verification: {}</b><br>Signed with audit key <code>{}</code>. Check offline: <code>gatehouse evidence verify DIR --public-key @audit.pub</code>. Policy set SHA-256 <code>{}</code>.</div></header>",
        if meta.chain_ok { "ok" } else { "bad" },
        escape(meta.chain),
        escape(meta.key_id),
        escape(meta.policy_hash),
    )?;

    // Derived checks.
    write!(out, "<section id=\"checks\"><h2>Derived checks</h2><table><tr><th>Check</th><th>Controls</th><th>Count</th><th>Result</th></tr>")?;
    for c in CHECKS {
        let n = f.counts.get(c.id).copied().unwrap_or(0);
        let st = status(c, n);
        let controls: Vec<String> = c
            .controls
            .iter()
            .map(|id| format!("<a href=\"#{}\">{id}</a>", anchor(id)))
            .collect();
        let result = match st {
            "exception" => format!(
                "<a class=\"exception\" href=\"#exceptions-{}\">exception</a>",
                c.id
            ),
            other => format!("<span class=\"{other}\">{other}</span>"),
        };
        write!(
            out,
            "<tr id=\"check-{id}\"><td>{}</td><td>{}</td><td class=\"n\">{n}</td><td>{result}</td></tr>",
            escape(c.title),
            controls.join(" "),
            id = c.id,
        )?;
    }
    write!(out, "</table><h3>Facts of the period</h3><table>")?;
    let fact = |k: &str| f.facts.get(k).copied().unwrap_or(0);
    let logins = fact("logins");
    let mfa_pct = if logins == 0 {
        "n/a".to_string()
    } else {
        format!("{:.1} %", fact("logins_mfa") as f64 * 100.0 / logins as f64)
    };
    for (label, v) in [
        ("Connections allowed", fact("decisions_allowed").to_string()),
        ("Connections denied", fact("decisions_denied").to_string()),
        ("Sign-ins through the identity provider", logins.to_string()),
        ("Sign-ins with MFA", mfa_pct),
        (
            "Failed authentications (counted, including summaries)",
            fact("authentication_failures").to_string(),
        ),
        (
            "Refused before authentication",
            fact("refused_before_authentication").to_string(),
        ),
        (
            "Credentials issued / revoked",
            format!(
                "{} / {}",
                fact("credentials_issued"),
                fact("credentials_revoked")
            ),
        ),
        ("Sessions started", fact("sessions").to_string()),
        ("Statements recorded", fact("statements").to_string()),
        (
            "Grants started / revoked / expired",
            format!(
                "{} / {} / {}",
                fact("grants_started"),
                fact("grants_revoked"),
                fact("grants_expired")
            ),
        ),
        ("Break-glass uses", fact("break_glass").to_string()),
        ("Users disabled (leavers)", f.leavers.to_string()),
    ] {
        write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
            escape(label),
            escape(&v)
        )?;
    }
    write!(out, "</table></section>")?;

    // Exceptions, in full up to the cap, the rest in exceptions.csv.
    write!(out, "<section id=\"exceptions\"><h2>Exceptions</h2>")?;
    let mut any = false;
    for c in CHECKS {
        let n = f.counts.get(c.id).copied().unwrap_or(0);
        if !c.zero_expected || n == 0 {
            continue;
        }
        any = true;
        write!(out, "<h3 id=\"exceptions-{}\" class=\"exception\">{} ({n})</h3><table><tr><th>seq</th><th>line</th><th>time</th><th>actor</th><th>resource</th><th>what</th></tr>", c.id, escape(c.title))?;
        for e in f.exceptions.get(c.id).map(Vec::as_slice).unwrap_or(&[]) {
            write!(
                out,
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.seq,
                e.line,
                escape(&e.ts),
                escape(&e.actor),
                escape(&e.resource),
                escape(&e.what)
            )?;
        }
        write!(out, "</table>")?;
        if n as usize > EXCEPTIONS_SHOWN {
            write!(
                out,
                "<p>{} more in <a href=\"exceptions.csv\">exceptions.csv</a>.</p>",
                n as usize - EXCEPTIONS_SHOWN
            )?;
        }
    }
    if !any {
        write!(out, "<p class=\"pass\">No exception in the period.</p>")?;
    }
    write!(out, "</section>")?;

    // Charts.
    write!(
        out,
        "<section id=\"charts\"><h2>Charts</h2>{}",
        per_day(&f.decisions_per_day)
    )?;
    write!(
        out,
        "{}",
        bars(
            "Approvals by approver",
            &sorted(&f.approvals_by_approver),
            20,
            ""
        )
    )?;
    write!(
        out,
        "{}",
        bars(
            "Denials by determining policy",
            &sorted(&f.denials_by_policy),
            20,
            ""
        )
    )?;
    let latency: Vec<(String, u64)> = f
        .leaver_latency
        .iter()
        .map(|(u, s)| (u.clone(), (*s).max(0) as u64))
        .collect();
    write!(
        out,
        "{}</section>",
        bars(
            "Leavers: seconds from disable to last activity",
            &latency,
            30,
            " s"
        )
    )?;

    // Index of controls.
    write!(out, "<nav id=\"controls\"><h2>Controls</h2><ul>")?;
    for (c, cov) in catalogue::controls() {
        if let Some(cov) = cov {
            write!(
                out,
                "<li><a href=\"#{}\">{} {}</a> <span class=\"level\">{}</span></li>",
                anchor(c.id),
                c.id,
                escape(c.title),
                cov.level.as_str()
            )?;
        }
    }
    write!(out, "</ul><p class=\"muted\">The other Annex A controls are not served by the gateway; see <a href=\"soa.csv\">soa.csv</a>.</p></nav>")?;

    for (c, cov) in catalogue::controls() {
        let Some(cov) = cov else { continue };
        let stats = f.controls.get(c.id);
        write!(
            out,
            "<section class=\"control\" id=\"{}\"><h2>{} {}</h2><p><span class=\"level\">{}</span> {}</p><p><b>Left to the organisation:</b> {}</p>",
            anchor(c.id),
            c.id,
            escape(c.title),
            cov.level.as_str(),
            escape(cov.does),
            escape(cov.gap),
        )?;
        let kinds = catalogue::event_kinds(c.id);
        write!(
            out,
            "<h3>Evidence in the period</h3><table><tr><th>Event kind</th><th>Count</th></tr>"
        )?;
        for k in &kinds {
            write!(
                out,
                "<tr><td><code>{k}</code></td><td class=\"n\">{}</td></tr>",
                f.kinds.get(*k).copied().unwrap_or(0)
            )?;
        }
        write!(
            out,
            "<tr><th>Events naming {} (kinds and policies)</th><th class=\"n\">{}</th></tr></table>",
            c.id,
            stats.map(|s| s.events).unwrap_or(0)
        )?;
        let serving: Vec<&PolicyInfo> = policies
            .iter()
            .filter(|p| p.controls.iter().any(|x| x == c.id))
            .collect();
        if !serving.is_empty() {
            write!(out, "<h3>Policies</h3><ul>")?;
            for p in serving {
                write!(
                    out,
                    "<li><code>{}</code> ({}, {}:{})</li>",
                    escape(&p.id),
                    p.effect,
                    escape(&p.file),
                    p.line.unwrap_or(0)
                )?;
            }
            write!(out, "</ul>")?;
        }
        let checks: Vec<_> = CHECKS
            .iter()
            .filter(|k| k.controls.contains(&c.id))
            .collect();
        if !checks.is_empty() {
            write!(out, "<h3>Checks</h3><ul>")?;
            for k in checks {
                let n = f.counts.get(k.id).copied().unwrap_or(0);
                let st = status(k, n);
                write!(
                    out,
                    "<li><a href=\"#check-{}\">{}</a>: {n} <span class=\"{st}\">{st}</span></li>",
                    k.id,
                    escape(k.title)
                )?;
            }
            write!(out, "</ul>")?;
        }
        if let Some(st) = stats {
            let samples: Vec<&Sample> = st.first.iter().chain(st.last.iter()).collect();
            if !samples.is_empty() {
                write!(out, "<h3>Sampled events</h3>{}", sample_rows(&samples))?;
            }
        }
        write!(
            out,
            "<p><a href=\"#index\">Back to the index</a></p></section>"
        )?;
    }

    write!(out, "<section id=\"files\"><h2>Files of this bundle</h2><table><tr><th>File</th><th>Rows</th></tr>")?;
    for (name, rows) in meta.files {
        write!(
            out,
            "<tr><td><a href=\"{n}\">{n}</a></td><td class=\"n\">{rows}</td></tr>",
            n = escape(name)
        )?;
    }
    write!(out, "</table><p class=\"muted\">Every file is listed with its SHA-256 in SHA256SUMS, which SHA256SUMS.sig signs.</p></section></body></html>")?;
    Ok(())
}
