//! TLS 1.3 between the display server and its viewers (issue 4, item 6):
//! certificates made by rcgen at run time (a CA, a server certificate it
//! signed for `localhost` and 127.0.0.1, and an unrelated CA).

use std::time::Duration;

use mobidesk_client::{
    Connection, ConnectionError, Security as ClientSecurity, TlsClient, ViewerConfig,
};
use mobidesk_display::protocol::CloseCode;
use mobidesk_display::server::{tls, Security};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::xvfb::Xvfb;
use super::{assert_catches_up, start_server_with, Painter, IDLE, MAX};

/// A CA's certificate (PEM) and a server certificate it signed, with key.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let ca = ca("mobidesk test CA");
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn tls_viewer(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    name: &str,
) -> Result<Connection, ConnectionError> {
    let client = TlsClient::from_ca_pem(ca_pem.as_bytes(), name).unwrap();
    Connection::connect(addr, &ViewerConfig::default(), &ClientSecurity::Tls(client))
}

#[test]
fn tls_viewer_is_pixel_exact_and_untrusted_or_plain_ones_are_refused() {
    let pki = pki();
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let server_tls = tls::config_from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let addr = start_server_with(&xvfb, true, |c| c.security = Security::Tls(server_tls));

    // The right CA and name (an IP address, and a DNS name).
    let mut good = tls_viewer(addr, &pki.ca_pem, "127.0.0.1").unwrap();
    good.run_until_idle(IDLE, MAX).unwrap();
    assert_catches_up(&mut good, &painter);
    let mut by_name = tls_viewer(addr, &pki.ca_pem, "localhost").unwrap();
    by_name.run_until_idle(IDLE, MAX).unwrap();
    assert_catches_up(&mut by_name, &painter);
    drop(by_name);

    // A CA that did not sign the server's certificate: refused in the
    // handshake.
    let wrong_ca = ca("some other CA").pem();
    let err = tls_viewer(addr, &wrong_ca, "127.0.0.1").unwrap_err();
    assert!(matches!(err, ConnectionError::Handshake(_)), "{err}");
    eprintln!("wrong CA: {err}");
    // The right CA, but a name the certificate does not carry.
    let err = tls_viewer(addr, &pki.ca_pem, "desk.example").unwrap_err();
    assert!(matches!(err, ConnectionError::Handshake(_)), "{err}");
    eprintln!("wrong name: {err}");

    // A plain-text viewer gets a plain-text Close, nothing more.
    let mut plain = Connection::connect(
        addr,
        &ViewerConfig::default(),
        &ClientSecurity::InsecurePlaintext,
    )
    .unwrap();
    let (code, reason) = plain.wait_for_close(MAX).unwrap().unwrap();
    assert_eq!(code, CloseCode::UnexpectedMessage, "{reason}");
    assert!(plain.framebuffer().is_none());
    // Garbage that is not TLS either: dropped.
    let mut garbage = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut garbage, &[0x16, 3, 3, 0, 4, 0xff, 0, 0, 0]).unwrap();
    garbage.set_read_timeout(Some(MAX)).unwrap();
    let mut buf = [0u8; 256];
    while matches!(std::io::Read::read(&mut garbage, &mut buf), Ok(n) if n > 0) {}

    // The good viewer carries on.
    painter.fill(0x0012_3456, 0, 0, 640, 100);
    painter.image(300, 250, 120, 90, 3);
    painter.sync();
    assert_catches_up(&mut good, &painter);
    std::thread::sleep(Duration::from_millis(50));
    assert!(good.viewer().stats().full_states == 1);
}
