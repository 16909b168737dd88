//! Authentication: who is connecting.
//!
//! Today: gateway tokens ([`token`]), short-lived JWTs signed by the gateway's own key, used as
//! the password at the PostgreSQL front door. Single sign-on through the company's OpenID
//! provider will issue the same kind of credential.

pub mod token;
