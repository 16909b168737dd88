//! The few HTML pages the gateway shows a browser: sign-in results and the device code form.
//! Everything interpolated is HTML-escaped; pages carry no script.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A page with a title and body HTML (already escaped by the caller).
pub fn page(status: StatusCode, title: &str, body_html: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t} · Gatehouse</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}}\
         code{{background:#eee;padding:.1em .3em}}</style></head>\
         <body><h1>{t}</h1>\n{body_html}\n</body></html>\n",
        t = escape(title)
    );
    (status, Html(html)).into_response()
}

/// A failed sign-in: the browser learns only a short reason and the audit sequence to quote.
pub fn login_failed(status: StatusCode, reason: &str) -> Response {
    page(
        status,
        "Sign-in failed",
        &format!(
            "<p>{}</p><p>Start again from your terminal (<code>gatehouse login</code>). \
             If it keeps failing, ask an administrator; the attempt is in the audit log.</p>",
            escape(reason)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
