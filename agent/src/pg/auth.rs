//! Upstream password authentication other than SCRAM: cleartext and PostgreSQL's md5 scheme.

use md5::{Digest, Md5};

/// `"md5" + md5hex(md5hex(password + user) + salt)`, as PostgreSQL's md5 method expects.
pub fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = hex(&Md5::digest(
        [password.as_bytes(), user.as_bytes()].concat(),
    ));
    let outer = hex(&Md5::digest([inner.as_bytes(), &salt[..]].concat()));
    format!("md5{outer}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_inner_hash_matches_pg_authid() {
        // pg_authid stores md5(password || user); for postgres/postgres that is the well-known
        // md53175bce1d3201d16594cebf9d7eb3f9d.
        assert_eq!(
            hex(&Md5::digest(b"postgrespostgres")),
            "3175bce1d3201d16594cebf9d7eb3f9d"
        );
        let a = md5_password("postgres", "postgres", [1, 2, 3, 4]);
        let b = md5_password("postgres", "postgres", [1, 2, 3, 5]);
        assert!(a.starts_with("md5") && a.len() == 35);
        assert_ne!(a, b, "the salt must change the response");
    }
}
