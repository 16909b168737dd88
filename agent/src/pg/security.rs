//! How far the agent trusts a PostgreSQL upstream: whether the connection is encrypted and the
//! server's certificate verified (`tls`), and which authentication methods the server may ask
//! for (`auth_methods`).
//!
//! The brokered password must never reach an impostor. An impostor that asks for SCRAM learns
//! nothing (SCRAM never sends the password, and the server must prove it knows the verifier).
//! md5 gives away a hash that replays against the real server, and cleartext gives away the
//! password itself, so both are refused unless the resource names them, and cleartext needs a
//! verified server (`tls = "verify-full"`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Whether and how the upstream connection is encrypted.
#[derive(Clone)]
pub enum UpstreamTls {
    /// Plain TCP.
    Disable,
    /// TLS, server certificate not checked (protects against eavesdroppers, not impostors).
    Require(Arc<ClientConfig>),
    /// TLS, server certificate verified against the CA and the address's host name.
    VerifyFull(Arc<ClientConfig>),
}

impl UpstreamTls {
    pub fn mode(&self) -> &'static str {
        match self {
            UpstreamTls::Disable => "disable",
            UpstreamTls::Require(_) => "require",
            UpstreamTls::VerifyFull(_) => "verify-full",
        }
    }

    pub(crate) fn config(&self) -> Option<&Arc<ClientConfig>> {
        match self {
            UpstreamTls::Disable => None,
            UpstreamTls::Require(c) | UpstreamTls::VerifyFull(c) => Some(c),
        }
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mode())
    }
}

/// An authentication method a PostgreSQL server may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ScramSha256,
    Md5,
    Password,
    /// No authentication at all (the server sends AuthenticationOk at once).
    Trust,
}

impl AuthMethod {
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Password => "password",
            AuthMethod::Trust => "trust",
        }
    }

    fn parse(s: &str) -> Option<AuthMethod> {
        [
            AuthMethod::ScramSha256,
            AuthMethod::Md5,
            AuthMethod::Password,
            AuthMethod::Trust,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }
}

/// What the agent accepts from one upstream.
#[derive(Clone, Debug)]
pub struct UpstreamSecurity {
    pub tls: UpstreamTls,
    /// The methods the upstream may ask for; anything else ends the connection before the
    /// credential is used.
    pub auth_methods: Vec<AuthMethod>,
}

impl UpstreamSecurity {
    /// Plain TCP, SCRAM-SHA-256 only.
    pub fn plain_scram() -> UpstreamSecurity {
        UpstreamSecurity {
            tls: UpstreamTls::Disable,
            auth_methods: vec![AuthMethod::ScramSha256],
        }
    }

    pub fn allows(&self, method: AuthMethod) -> bool {
        self.auth_methods.contains(&method)
    }
}

/// The resource's settings as written in a config file.
#[derive(Debug, Default)]
pub struct SecuritySettings<'a> {
    /// `tls`: `disable`, `require` or `verify-full`.
    pub tls: Option<&'a str>,
    /// `ca_file`, already resolved against the config file's directory.
    pub ca_file: Option<PathBuf>,
    /// `auth_methods`.
    pub auth_methods: Option<&'a [String]>,
}

/// A setting that cannot be used; `key` names it relative to the resource.
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub struct SettingError {
    pub key: &'static str,
    pub why: String,
}

fn setting(key: &'static str, why: impl Into<String>) -> SettingError {
    SettingError {
        key,
        why: why.into(),
    }
}

impl SecuritySettings<'_> {
    /// Validates the settings. Defaults: `verify-full` when a `ca_file` is given, otherwise
    /// `disable`; SCRAM-SHA-256 only.
    pub fn build(&self) -> Result<UpstreamSecurity, SettingError> {
        let mode = match (self.tls, &self.ca_file) {
            (Some(m), _) => m,
            (None, Some(_)) => "verify-full",
            (None, None) => "disable",
        };
        let tls = match mode {
            "disable" => {
                if self.ca_file.is_some() {
                    return Err(setting(
                        "ca_file",
                        "a `ca_file` needs `tls = \"verify-full\"`",
                    ));
                }
                UpstreamTls::Disable
            }
            "require" => {
                if self.ca_file.is_some() {
                    return Err(setting(
                        "ca_file",
                        "`tls = \"require\"` does not check certificates; use `verify-full` with a `ca_file`",
                    ));
                }
                UpstreamTls::Require(Arc::new(unverified_config()?))
            }
            "verify-full" => {
                let roots = match &self.ca_file {
                    Some(path) => roots_from_file(path)?,
                    None => native_roots()?,
                };
                UpstreamTls::VerifyFull(Arc::new(verifying_config(roots)?))
            }
            other => {
                return Err(setting(
                    "tls",
                    format!("`{other}` is not one of `disable`, `require`, `verify-full`"),
                ))
            }
        };
        let auth_methods = match self.auth_methods {
            None => vec![AuthMethod::ScramSha256],
            Some([]) => return Err(setting("auth_methods", "name at least one method")),
            Some(names) => {
                let mut methods = Vec::new();
                for n in names {
                    let m = AuthMethod::parse(n).ok_or_else(|| {
                        setting(
                            "auth_methods",
                            format!(
                                "`{n}` is not one of `scram-sha-256`, `md5`, `password`, `trust`"
                            ),
                        )
                    })?;
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
                }
                methods
            }
        };
        let verified = matches!(tls, UpstreamTls::VerifyFull(_));
        if auth_methods.contains(&AuthMethod::Password) && !verified {
            return Err(setting(
                "auth_methods",
                "`password` sends the brokered password itself; it needs `tls = \"verify-full\"`",
            ));
        }
        if auth_methods.contains(&AuthMethod::Trust) && !verified {
            return Err(setting(
                "auth_methods",
                "`trust` lets any server that answers take the session; it needs `tls = \"verify-full\"`",
            ));
        }
        Ok(UpstreamSecurity { tls, auth_methods })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verifying_config(roots: RootCertStore) -> Result<ClientConfig, SettingError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| setting("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn unverified_config() -> Result<ClientConfig, SettingError> {
    let provider = provider();
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setting("tls", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth())
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, SettingError> {
    let pem = std::fs::read(path)
        .map_err(|e| setting("ca_file", format!("cannot read {}: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| {
            setting(
                "ca_file",
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
        roots.add(cert).map_err(|e| {
            setting(
                "ca_file",
                format!("{}: unusable certificate: {e}", path.display()),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(setting(
            "ca_file",
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(roots)
}

fn native_roots() -> Result<RootCertStore, SettingError> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(setting(
            "ca_file",
            "`verify-full` without a `ca_file` uses the system's CA certificates, and none were found",
        ));
    }
    Ok(roots)
}

/// `tls = "require"`: any certificate, but the handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The host part of `host:port` (brackets removed from an IPv6 literal), as a TLS server name.
pub(crate) fn server_name(address: &str) -> Option<ServerName<'static>> {
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// The upstream connection: plain or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_are_plain_and_scram_only() {
        let s = SecuritySettings::default().build().unwrap();
        assert_eq!(s.tls.mode(), "disable");
        assert_eq!(s.auth_methods, vec![AuthMethod::ScramSha256]);
    }

    #[test]
    fn cleartext_and_trust_need_a_verified_server() {
        for (tls, m) in [
            ("disable", "password"),
            ("require", "password"),
            ("disable", "trust"),
            ("require", "trust"),
        ] {
            let methods = names(&["scram-sha-256", m]);
            let err = SecuritySettings {
                tls: Some(tls),
                auth_methods: Some(&methods),
                ..Default::default()
            }
            .build()
            .unwrap_err();
            assert_eq!(err.key, "auth_methods", "{tls}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = SecuritySettings {
            tls: Some("prefer"),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert_eq!(err.key, "tls");
        let methods = names(&["trust"]);
        let err = SecuritySettings {
            auth_methods: Some(&methods),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert_eq!(err.key, "auth_methods");
        let err = SecuritySettings {
            tls: Some("verify-full"),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert_eq!(err.key, "ca_file");
        let err = SecuritySettings {
            tls: Some("disable"),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert_eq!(err.key, "ca_file");
    }

    #[test]
    fn server_names_from_addresses() {
        assert_eq!(
            server_name("db.internal:5432"),
            Some(ServerName::try_from("db.internal").unwrap())
        );
        assert!(matches!(
            server_name("127.0.0.1:5432"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:5432"),
            Some(ServerName::IpAddress(_))
        ));
    }
}
