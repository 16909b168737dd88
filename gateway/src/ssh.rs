//! SSH through the gateway: engineers' plain OpenSSH clients (`ssh`, `scp`, `sftp`, `rsync`,
//! `git`) talk to the gateway as their SSH server ([`frontdoor`]), authenticated by a
//! short-lived user certificate the gateway signed ([`ca`]); the gateway logs in to the target
//! with a certificate of its own upstream CA ([`connector`]). Admission, the registry and the
//! audit log are the same as for every other door.

pub mod ca;
pub mod connector;
pub mod frontdoor;
pub mod sftp;
