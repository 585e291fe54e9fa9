//! TLS settings for `wss://`, `tls://` and `quic://`: the trusted roots
//! (Mozilla's, from `webpki-roots`, plus any PEM the application adds) or a
//! pinned certificate fingerprint for self-signed development certificates.
//!
//! The crypto provider is always *ring*, chosen explicitly, so the client
//! does not depend on (or fight over) a process-wide default provider.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::error::ClientError;

/// ALPN of pushgate's QUIC transport.
pub(crate) const QUIC_ALPN: &[u8] = b"pushgate/1";

/// A SHA-256 certificate fingerprint, as standalone prints it
/// (`tls fingerprint: sha256:<hex>`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Parses `sha256:<64 hex digits>`; the prefix is optional, the hex digits
    /// may be in either case and may be separated by colons
    /// (`AB:CD:…`, as `openssl x509 -fingerprint -sha256` prints them).
    ///
    /// # Errors
    /// [`ClientError::Fingerprint`] when it is not 32 bytes of hex.
    pub fn parse(s: &str) -> Result<Fingerprint, ClientError> {
        let t = s.trim();
        let hex = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        let bad = || ClientError::Fingerprint(s.to_string());
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Fingerprint(out))
    }

    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    /// `sha256:` and 64 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the client trusts.
#[derive(Clone, Debug)]
pub(crate) struct TlsSettings {
    /// Trust Mozilla's root certificates (webpki-roots).
    pub(crate) webpki_roots: bool,
    /// Extra trusted roots (e.g. a private CA).
    pub(crate) extra_roots: Vec<CertificateDer<'static>>,
    /// When set, accept exactly the certificate with this fingerprint, and
    /// nothing else (no chain or name check: the pin is the identity).
    pub(crate) pin: Option<Fingerprint>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            webpki_roots: true,
            extra_roots: Vec::new(),
            pin: None,
        }
    }
}

/// Reads every certificate of a PEM text.
///
/// # Errors
/// [`ClientError::RootCertificate`] when the PEM is malformed or holds none.
pub(crate) fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::RootCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(ClientError::RootCertificate(
            "no CERTIFICATE block in the PEM".into(),
        ));
    }
    Ok(certs)
}

/// The crypto provider the client uses everywhere.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration for `settings`, offering `alpn`;
/// `tls13_only` for QUIC.
///
/// # Errors
/// [`ClientError::RootCertificate`] for an unusable extra root, or
/// [`ClientError::Tls`].
pub(crate) fn client_config(
    settings: &TlsSettings,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut config = match settings.pin {
        Some(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, provider }))
            .with_no_client_auth(),
        None => {
            let mut roots = RootCertStore::empty();
            if settings.webpki_roots {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            for cert in &settings.extra_roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| ClientError::RootCertificate(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Tls(
                    "no trusted root certificate and no pinned fingerprint".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate verifier that accepts exactly the certificate whose SHA-256
/// is `pin` (the handshake signature is still checked with `provider`, so
/// the peer must hold the certificate's key). For tools that build their own
/// rustls config (the bench) and want the same pinning as this client.
pub fn pin_verifier(
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
) -> Arc<dyn ServerCertVerifier> {
    Arc::new(PinVerifier { pin, provider })
}

/// Accepts exactly one certificate, by its SHA-256 fingerprint; the
/// handshake signature is still verified, so the peer must hold its key.
#[derive(Debug)]
struct PinVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of_der(end_entity.as_ref()) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn fingerprint_forms() {
        let want = Fingerprint::parse(HEX).unwrap();
        assert_eq!(want.0[0], 0x00);
        assert_eq!(want.0[10], 0xaa);
        assert_eq!(want.0[31], 0xff);
        assert_eq!(Fingerprint::parse(&format!("sha256:{HEX}")).unwrap(), want);
        assert_eq!(
            Fingerprint::parse(&format!("SHA256:{}", HEX.to_uppercase())).unwrap(),
            want
        );
        let colons: Vec<String> = HEX
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")).unwrap(), want);
        assert_eq!(want.to_string(), format!("sha256:{HEX}"));
        assert_eq!(Fingerprint::parse(&want.to_string()).unwrap(), want);
    }

    #[test]
    fn bad_fingerprints() {
        for s in [
            "",
            "sha256:",
            &HEX[..62],
            &format!("{HEX}00"),
            &format!("sha1:{HEX}"),
            &HEX.replace('a', "g"),
            &format!("sha256:{}", &HEX[..63]),
        ] {
            assert!(Fingerprint::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn fingerprint_of_der_is_sha256() {
        // sha256("abc")
        assert_eq!(
            Fingerprint::of_der(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        assert!(parse_pem_certs(b"").is_err());
        assert!(parse_pem_certs(b"not a pem").is_err());
        assert!(
            parse_pem_certs(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }

    #[test]
    fn configs_build() {
        let s = TlsSettings::default();
        let c = client_config(&s, &[QUIC_ALPN], true).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"pushgate/1".to_vec()]);
        assert!(quinn::crypto::rustls::QuicClientConfig::try_from(c).is_ok());
        let pinned = TlsSettings {
            pin: Some(Fingerprint([1; 32])),
            ..TlsSettings::default()
        };
        assert!(client_config(&pinned, &[], false).is_ok());
        let empty = TlsSettings {
            webpki_roots: false,
            ..TlsSettings::default()
        };
        assert!(client_config(&empty, &[], false).is_err());
    }
}
