//! The rustls client configuration for the upstream, built once at start.
//!
//! Trust comes from the Mozilla roots (webpki-roots) plus an optional PEM bundle
//! (`TASKGATE_UPSTREAM_CA_FILE`) for corporate proxies and loopback tests. Verification is never
//! switched off. The crypto provider is passed explicitly (ring), so a second provider compiled in
//! by some dependency cannot make the first handshake panic.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

pub(crate) fn client_config(extra_ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_file {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("{} is not a PEM bundle: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{} holds no certificate", path.display()));
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    // One request per connection at a time is all a 20/s upstream needs; HTTP/1.1 keeps the
    // connection pool simple and predictable.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
