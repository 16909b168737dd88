//! The OpenAPI 3.1 document of the HTTP API, served at `/api/v1/openapi.json`. Kept next to the
//! routes (`web::router`); a test checks that every documented path answers.

use serde_json::{json, Value};

fn body(props: Value, required: &[&str]) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": {
        "type": "object", "properties": props, "required": required } } } })
}

fn op(summary: &str, secured: bool) -> Value {
    let mut o = json!({
        "summary": summary,
        "responses": {
            "200": { "description": "OK (JSON)" },
            "400": { "$ref": "#/components/responses/Error" },
            "401": { "$ref": "#/components/responses/Error" },
            "403": { "$ref": "#/components/responses/Error" },
            "404": { "$ref": "#/components/responses/Error" },
            "409": { "$ref": "#/components/responses/Error" },
            "429": { "$ref": "#/components/responses/Error" }
        }
    });
    if !secured {
        o["security"] = json!([]);
    }
    o
}

fn with_body(mut o: Value, b: Value) -> Value {
    o["requestBody"] = b;
    o
}

fn id_param(mut o: Value) -> Value {
    o["parameters"] =
        json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }]);
    o
}

/// The document, with `public_url` as the server.
pub fn document(public_url: &str) -> Value {
    let s = |d: &str| json!({ "type": "string", "description": d });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Gatehouse API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Sign-in, just-in-time access requests, approvals, grants and reviews. Authenticate with a gateway credential from `gatehouse login` (or an issued token) as a bearer token. Errors are {\"error\", \"message\"}."
        },
        "servers": [{ "url": public_url }],
        "security": [{ "bearer": [] }],
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA, typ gatehouse-access+jwt)" } },
            "responses": { "Error": { "description": "Refused", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "error": { "type": "string" }, "message": { "type": "string" } } } } } } }
        },
        "paths": {
            "/api/v1/info": { "get": op("Gateway version, issuer, PostgreSQL address, whether SSO is on", false) },
            "/.well-known/jwks.json": { "get": op("Public keys that verify gateway credentials (Ed25519 OKP)", false) },
            "/api/v1/login/token": { "post": with_body(op("Exchange the one-time code from the loopback redirect for a credential", false),
                body(json!({ "code": s("one-time code"), "code_verifier": s("the CLI's PKCE verifier") }), &["code", "code_verifier"])) },
            "/api/v1/device": { "post": op("Start a device login: returns device_code, user_code, verification_uri", false) },
            "/api/v1/device/token": { "post": with_body(op("Poll a device login; `authorization_pending` until the person signs in", false),
                body(json!({ "device_code": s("from /api/v1/device") }), &["device_code"])) },
            "/api/v1/whoami": { "get": op("The caller: user, groups, MFA, expiry", true) },
            "/api/v1/logout": { "post": op("Revoke the caller's login", true) },
            "/api/v1/credentials/postgres": { "post": op("A PostgreSQL password for the caller ({ttl_secs?}); the API refuses it", true) },
            "/api/v1/resources": { "get": op("Resources with, per role, whether the caller can connect now, their grant, and whether they may request it", true) },
            "/api/v1/requests": {
                "get": { "summary": "The caller's requests, or every pending one with ?pending=true", "parameters": [{ "name": "pending", "in": "query", "schema": { "type": "boolean" } }], "responses": { "200": { "description": "OK" } } },
                "post": with_body(op("Request time-boxed access (or take it at once with break_glass where policy allows; leaves a review item)", true),
                    body(json!({ "resource": s("resource name"), "role": s("role, e.g. write"), "duration": s("e.g. 2h"), "reason": s("why; a ticket like INC-4211 is recognised"), "break_glass": { "type": "boolean" } }), &["resource", "role", "duration", "reason"]))
            },
            "/api/v1/requests/{id}/approve": { "post": id_param(with_body(op("Approve (one person counts once; never your own request)", true), body(json!({ "comment": s("comment") }), &[]))) },
            "/api/v1/requests/{id}/deny": { "post": id_param(with_body(op("Deny", true), body(json!({ "comment": s("comment") }), &[]))) },
            "/api/v1/grants": {
                "get": { "summary": "Active grants, or all with ?all=true", "parameters": [{ "name": "all", "in": "query", "schema": { "type": "boolean" } }], "responses": { "200": { "description": "OK" } } },
                "post": with_body(op("Grant access directly (needs the right to approve it; audited like an approval)", true),
                    body(json!({ "user": s("grantee"), "resource": s("resource"), "role": s("role"), "duration": s("e.g. 1h"), "reason": s("why") }), &["user", "resource", "role", "duration", "reason"]))
            },
            "/api/v1/grants/{id}/revoke": { "post": id_param(with_body(op("Revoke a grant; its sessions end within a second", true), body(json!({ "reason": s("why") }), &[]))) },
            "/api/v1/reviews": { "get": { "summary": "Open review items, or all with ?all=true", "parameters": [{ "name": "all", "in": "query", "schema": { "type": "boolean" } }], "responses": { "200": { "description": "OK" } } } },
            "/api/v1/reviews/{id}/sign-off": { "post": id_param(with_body(op("Sign a review item off (not your own access)", true), body(json!({ "comment": s("what was checked") }), &["comment"]))) },
            "/api/v1/openapi.json": { "get": op("This document", false) }
        }
    })
}
