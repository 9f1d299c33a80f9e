//! TLS for the client-facing listener (`gateway.tls`), with rustls on the
//! aws-lc-rs provider (the one crypto provider of the tree), named explicitly
//! so no process-wide default is needed. actix-web adds the `h2` and
//! `http/1.1` ALPN protocols itself, so HTTP/2 is negotiated over TLS.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tollgate_shared::config::TlsConfig;

pub fn server_config(tls: &TlsConfig) -> Result<ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("gateway.tls.cert {}: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "gateway.tls.cert {}: no certificate in the file",
            tls.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("gateway.tls.key {}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("gateway.tls: the key does not fit the certificate: {e}"))
}
