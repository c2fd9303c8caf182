//! Each desktop session's own display certificate (sans I/O: PEM in, PEM
//! out; the daemon reads the CA and writes the files).
//!
//! The display server runs inside the session, so session root can read
//! its private key. With one key for all sessions (`[desktop] tls_cert`),
//! the root of any session could impersonate every other session's display
//! server. With a display CA (`[desktop] tls_ca_cert` and `tls_ca_key`,
//! the same on every server, so that a certificate stays valid wherever
//! its session moves), sessiond issues at `create` a new key and a
//! certificate for one name that belongs to this session only:
//! `<id>-<8 random hex digits>.<domain>` ([`display_name`]). The random part
//! makes the name new for every session, so a key copied out of a destroyed
//! session is never valid for a later session with the same id. The CA's
//! key never enters a session. Viewers check the certificate with `--ca`
//! (the display CA) and `--server-name` (the name `inspect` returns).

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use thiserror::Error;

/// How long an issued certificate is valid (from an hour before it is
/// issued, for clocks a little behind).
pub const VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);

#[derive(Debug, Error)]
pub enum CertError {
    #[error("the display CA's key: {0}")]
    CaKey(String),
    #[error("the display CA's certificate: {0}")]
    CaCert(String),
    #[error("display name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("issuing the certificate: {0}")]
    Issue(String),
}

/// A certificate chain (the session's certificate, then the CA's) and its
/// private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// The name on session `id`'s display certificate: `<id>-<nonce as 8 hex
/// digits>.<domain>`, lower case (DNS names are compared without case, so
/// ids that differ in case only still get different names through the
/// nonce). An id that starts with `-` gets an `s` in front (a DNS label
/// cannot start with one).
pub fn display_name(id: &str, nonce: u32, domain: &str) -> String {
    let id = id.to_ascii_lowercase();
    let prefix = if id.starts_with('-') { "s" } else { "" };
    format!("{prefix}{id}-{nonce:08x}.{domain}")
}

/// Checks a domain for [`display_name`]: dot-separated labels of
/// letters, digits and `-` (not first or last), 1–63 each, at most 190
/// characters (a session's label takes up to 50 more).
pub fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || domain.len() > 190 {
        return Err("1 to 190 characters".into());
    }
    for label in domain.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "label {label:?}: 1-63 letters, digits and '-' (not first or last)"
            ));
        }
    }
    if domain.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("all digits: looks like an address".into());
    }
    Ok(())
}

/// Issues a new key and a server certificate for `name`, signed by the CA
/// (`ca_cert_pem`, `ca_key_pem`: PEM, the key PKCS#8), valid from an hour
/// before `now` for [`VALIDITY`].
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    now: SystemTime,
) -> Result<Issued, CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| {
        CertError::CaKey(format!(
            "{e} (a PEM private key in PKCS#8, \"BEGIN PRIVATE KEY\")"
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| CertError::CaCert(e.to_string()))?;
    let name_error = |reason: String| CertError::Name {
        name: name.to_string(),
        reason,
    };
    let mut params =
        CertificateParams::new(vec![name.to_string()]).map_err(|e| name_error(e.to_string()))?;
    if !matches!(
        params.subject_alt_names.first(),
        Some(rcgen::SanType::DnsName(_))
    ) {
        return Err(name_error("not a DNS name".into()));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let from = now
        .checked_sub(Duration::from_secs(3600))
        .ok_or_else(|| CertError::Issue("the clock is before 1970".into()))?;
    params.not_before = from.into();
    params.not_after = (now + VALIDITY).into();
    let key = KeyPair::generate().map_err(|e| CertError::Issue(e.to_string()))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| CertError::Issue(e.to_string()))?;
    let mut chain_pem = cert.pem();
    if !chain_pem.ends_with('\n') {
        chain_pem.push('\n');
    }
    chain_pem.push_str(ca_cert_pem.trim_end());
    chain_pem.push('\n');
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test display CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn names_are_per_session_instance_and_valid_labels() {
        assert_eq!(
            display_name("Desk_1", 0xab, "desktops.example"),
            "desk_1-000000ab.desktops.example"
        );
        assert_eq!(display_name("-x", 1, "d.example"), "s-x-00000001.d.example");
        assert_ne!(display_name("a", 1, "d"), display_name("A", 2, "d"));
        assert!(check_domain("desktops.mobidesk.internal").is_ok());
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "1.2.3.4",
            &"x".repeat(64),
        ] {
            assert!(check_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_certificate_has_its_own_key_and_the_chain_ends_with_the_ca() {
        let (ca_cert, ca_key) = ca();
        let now = SystemTime::now();
        let a = issue(&ca_cert, &ca_key, "a-00000001.d.example", now).unwrap();
        let b = issue(&ca_cert, &ca_key, "b-00000002.d.example", now).unwrap();
        assert_ne!(a.key_pem, b.key_pem);
        assert!(a.key_pem.contains("BEGIN PRIVATE KEY"));
        assert_eq!(a.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(a.chain_pem.ends_with(&format!("{}\n", ca_cert.trim_end())));
        // The session's certificate is signed by the CA, for its name
        // only, and is no CA itself.
        use x509_parser::prelude::*;
        let blocks = pem_blocks(&a.chain_pem);
        let (_, leaf) = X509Certificate::from_der(&blocks[0]).unwrap();
        let (_, issuer) = X509Certificate::from_der(&blocks[1]).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        assert_eq!(leaf.issuer(), issuer.subject());
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(names, ["DNSName(a-00000001.d.example)"]);
        assert!(!leaf.is_ca());
        let other = pem_blocks(&b.chain_pem);
        let (_, leaf_b) = X509Certificate::from_der(&other[0]).unwrap();
        assert_ne!(leaf.public_key().raw, leaf_b.public_key().raw);
    }

    #[test]
    fn bad_ca_material_and_names_are_clear_errors() {
        let (ca_cert, ca_key) = ca();
        let now = SystemTime::now();
        assert!(matches!(
            issue(&ca_cert, "junk", "a.d", now),
            Err(CertError::CaKey(_))
        ));
        assert!(matches!(
            issue("junk", &ca_key, "a.d", now),
            Err(CertError::CaCert(_))
        ));
        assert!(matches!(
            issue(&ca_cert, &ca_key, "10.0.0.1", now),
            Err(CertError::Name { .. })
        ));
    }

    /// The DER of each PEM block.
    fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
        pem::parse_many(pem)
            .unwrap()
            .into_iter()
            .map(|p| p.contents().to_vec())
            .collect()
    }
}
