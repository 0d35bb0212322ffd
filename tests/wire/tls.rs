//! TLS: a server started with `--tls-cert`/`--tls-key` serves `wss://` and `https://` on its
//! port; the Rust client trusts a root it is given and no other; and the binary reads the
//! files again on SIGHUP, so new handshakes see the new certificate while a session opened
//! before keeps working. Certificates are made at test time (rcgen), self-signed for
//! `localhost`.
#![cfg(all(feature = "server", feature = "client", feature = "tls", unix))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tether::client::{Client, ClientError, Event};
use tether::{Message, UserId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::binary::{lines_of, tether, wait_exit, wait_for, Reap};
use crate::harness::{server, token, API_KEY, GUARD, SECRET};

/// A self-signed certificate for `localhost` and its key, as PEM.
struct Pem {
    cert: String,
    key: String,
}

fn self_signed() -> Pem {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    Pem {
        cert: made.cert.pem(),
        key: made.signing_key.serialize_pem(),
    }
}

/// A fresh directory for this test's files.
fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tether-tls-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes `pem` as `cert.pem` and `key.pem` in `dir` (replacing them atomically, as a
/// renewal tool would); returns their paths.
fn install(dir: &Path, pem: &Pem) -> (String, String) {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    for (name, text) in [("cert.pem", &pem.cert), ("key.pem", &pem.key)] {
        let staged = dir.join(format!("{name}.new"));
        std::fs::write(&staged, text).expect("writes");
        std::fs::rename(&staged, dir.join(name)).expect("renames");
    }
    (path("cert.pem"), path("key.pem"))
}

/// A rustls client trusting `roots`.
fn connector(roots: &[&Pem]) -> TlsConnector {
    let mut store = RootCertStore::empty();
    for pem in roots {
        let cert = CertificateDer::from_pem_slice(pem.cert.as_bytes()).expect("PEM");
        store.add(cert).expect("a usable root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A TLS handshake with the server at `addr` (as `localhost`); returns the certificate it
/// presented (DER) and the stream.
async fn handshake(
    addr: SocketAddr,
    roots: &[&Pem],
) -> (Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>) {
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let name = ServerName::try_from("localhost").expect("a name");
    let tls = tokio::time::timeout(GUARD, connector(roots).connect(name, tcp))
        .await
        .expect("hang guard: handshake")
        .expect("the handshake succeeds");
    let presented = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    (presented, tls)
}

fn der(pem: &Pem) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.cert.as_bytes())
        .expect("PEM")
        .to_vec()
}

#[tokio::test]
async fn a_session_runs_over_wss_and_https_answers_on_the_same_port() {
    let pem = self_signed();
    let (cert, key) = install(&temp_dir("wss"), &pem);
    let server = server(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let port = server.local_addr().port();
    let alice = UserId::new("alice").unwrap();
    server
        .engine()
        .send(&alice, Message::new(r#"{"n":1}"#))
        .await
        .expect("queued");

    let url = format!("wss://localhost:{port}/ws");
    let mut client = Client::builder(&url, token("alice"))
        .tls_root_pem(pem.cert.clone())
        .connect()
        .await
        .expect("connects over wss");
    let Event::Connected(info) = client.recv().await.expect("connected") else {
        panic!("connected first")
    };
    assert_eq!(info.user, "alice");
    let Event::Message(m) = client.recv().await.expect("a message") else {
        panic!("then the message")
    };
    assert_eq!(m.data_str(), r#"{"n":1}"#);
    client.close().await;

    // HTTPS on the same port.
    let (_, mut tls) = handshake(server.local_addr(), &[&pem]).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("writes");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(GUARD, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A client that trusts another root does not get in.
    let stranger = self_signed();
    let refused = Client::builder(&url, token("alice"))
        .tls_root_pem(stranger.cert)
        .connect()
        .await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Connection(_) | ClientError::Io(_))
        ),
        "{refused:?}"
    );
    // Nor does one without a root at all: it is told at build time.
    let unrooted = Client::builder(&url, token("alice")).build();
    assert_eq!(unrooted.map(drop).map_err(|e| e.setting()), Err("url"));
}

#[tokio::test]
async fn a_bad_key_file_stops_the_server_at_start() {
    let pem = self_signed();
    let dir = temp_dir("bad");
    let (cert, _) = install(&dir, &pem);
    let bogus = dir.join("bogus.pem");
    std::fs::write(&bogus, "not a key").unwrap();
    let config = tether::server::config::ServerConfig::parse_from(
        [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--tls-cert",
            &cert,
            "--tls-key",
            &bogus.to_string_lossy(),
        ],
        [("", ""); 0],
    )
    .expect("the settings parse");
    let err = tether::server::Server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("bogus.pem"), "{err}");
    // A certificate without its key does not start either.
    let config = tether::server::config::ServerConfig::parse_from(
        [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--tls-cert",
            &cert,
        ],
        [("", ""); 0],
    )
    .expect("the settings parse");
    let err = tether::server::Server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("together"), "{err}");
}

#[test]
fn sighup_swaps_the_certificate_for_new_handshakes_and_open_sessions_stay() {
    let first = self_signed();
    let second = self_signed();
    let dir = temp_dir("sighup");
    let (cert, key) = install(&dir, &first);
    let mut child = tether(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("starts");
    let stderr = lines_of(child.stderr.take().expect("stderr"));
    let mut child = Reap(child);
    let addr: SocketAddr = wait_for(&stderr, "listening log line", |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "tether listening")
            .then(|| v["fields"]["addr"].as_str()?.parse().ok())?
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (presented, _) = handshake(addr, &[&first]).await;
        assert_eq!(presented, der(&first));
        let url = format!("wss://localhost:{}/ws", addr.port());
        let mut old = Client::builder(&url, token("old"))
            .tls_root_pem(first.cert.clone())
            .connect()
            .await
            .expect("connects with the first certificate");
        assert!(matches!(old.recv().await, Ok(Event::Connected(_))));

        // Renew: new files in place, then SIGHUP.
        install(&dir, &second);
        let hup = Command::new("sh")
            .args(["-c", &format!("kill -HUP {}", child.0.id())])
            .status()
            .expect("sh runs");
        assert!(hup.success());
        wait_for(&stderr, "reload log line", |line| {
            line.contains("TLS certificate reloaded").then_some(())
        });

        // A new handshake sees the new certificate...
        let (presented, _) = handshake(addr, &[&first, &second]).await;
        assert_eq!(presented, der(&second), "the new certificate is served");
        let mut new = Client::builder(&url, token("new"))
            .tls_root_pem(second.cert.clone())
            .connect()
            .await
            .expect("connects with the second certificate");
        assert!(matches!(new.recv().await, Ok(Event::Connected(_))));
        // ...and the session opened before the reload still works, on its old connection.
        let pinged = tokio::time::timeout(GUARD, old.ping())
            .await
            .expect("hang guard");
        assert!(pinged.is_ok(), "{pinged:?}");
        let rtt = tokio::time::timeout(GUARD, new.ping())
            .await
            .expect("hang guard");
        assert!(rtt.is_ok(), "{rtt:?}");

        // A reload that fails keeps the certificate in use.
        std::fs::write(dir.join("key.pem"), "not a key").unwrap();
        let hup = Command::new("sh")
            .args(["-c", &format!("kill -HUP {}", child.0.id())])
            .status()
            .expect("sh runs");
        assert!(hup.success());
        wait_for(&stderr, "failed reload log line", |line| {
            line.contains("not reloaded").then_some(())
        });
        let (presented, _) = handshake(addr, &[&first, &second]).await;
        assert_eq!(presented, der(&second));
        old.close().await;
        new.close().await;
        let term = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", child.0.id())])
            .status()
            .expect("sh runs");
        assert!(term.success());
    });
    let status = wait_exit(&mut child.0);
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
