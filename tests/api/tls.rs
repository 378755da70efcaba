//! TLS the way companies run it: an upstream whose certificate a CA made here signed, trusted
//! through `HNC_UPSTREAM_CA_FILE` (and refused, with a message naming the certificate, without
//! it), and reached through a CONNECT proxy named by `HTTPS_PROXY`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::http::Version;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto::ring};

use crate::helpers::{completed, config, json_of, scratch, spawn_app, start_binary_with};

/// A CA, and an HTTPS fake upstream for `localhost` whose certificate it signed, with the HTTP
/// versions of the calls it answered.
struct PrivateUpstream {
    addr: SocketAddr,
    ca_pem: String,
    versions: Arc<Mutex<Vec<Version>>>,
}

async fn private_upstream() -> PrivateUpstream {
    private_upstream_speaking(&[b"http/1.1"]).await
}

/// The upstream, agreeing to the protocols of `alpn` (in its order of preference).
async fn private_upstream_speaking(alpn: &[&[u8]]) -> PrivateUpstream {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();

    let tls = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let mut tls = tls;
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    let app = Router::new().route(
        "/v1/responses",
        post(move |version: Version| async move {
            seen.lock().unwrap().push(version);
            Json(completed(
                &json!({"topic": "security_privacy", "confidence": 0.9}).to_string(),
            ))
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    hn_classifier::tasks::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            hn_classifier::tasks::spawn(async move {
                // A client that does not trust the CA hangs up during the handshake.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    PrivateUpstream {
        addr,
        ca_pem: ca_cert.pem(),
        versions,
    }
}

fn base_url(upstream: &PrivateUpstream) -> String {
    format!("https://localhost:{}/v1", upstream.addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_through_the_ca_file_and_refused_without_it() {
    let upstream = private_upstream().await;
    let ca_file = scratch("tls-ca").join("ca.pem");
    std::fs::write(&ca_file, &upstream.ca_pem).unwrap();
    let url = base_url(&upstream);
    let flags = [
        "--openai-base-url",
        url.as_str(),
        "--openai-api-key",
        "sk-private",
        "--confidence",
        "self",
    ];

    let trusted = spawn_app(config(
        &[
            &flags[..],
            &["--upstream-ca-file", ca_file.to_str().unwrap()],
        ]
        .concat(),
    ))
    .await;
    let answer = trusted.classify(&["OpenSSL 4.0 released"]).await;
    assert_eq!(answer.errors, 0, "{answer:?}");
    assert_eq!(answer.results[0].topic.as_deref(), Some("security_privacy"));

    let untrusted = spawn_app(config(&[&flags[..], &["--max-retries", "0"]].concat())).await;
    let answer = untrusted.classify(&["OpenSSL 4.0 released"]).await;
    let error = answer.results[0].error.clone().expect("refused");
    assert_eq!(
        answer.results[0].error_code.as_deref(),
        Some("upstream_unreachable")
    );
    assert!(
        error.to_lowercase().contains("certificate"),
        "the message names the certificate problem: {error}"
    );
}

/// HTTP/2 over TLS: by default (`auto`) and with HNC_UPSTREAM_HTTP2=true when the server agrees
/// to it (ALPN), HTTP/1.1 when the server only speaks that, and with HNC_UPSTREAM_HTTP2=false
/// even when it offers HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_over_tls_and_falls_back_to_http1() {
    let titles: Vec<String> = crate::helpers::data_lines("hn_titles.txt")[..20].to_vec();
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let http1: &[&[u8]] = &[b"http/1.1"];
    for (alpn, setting, expected) in [
        (both, None, Version::HTTP_2),
        (both, Some("true"), Version::HTTP_2),
        (http1, None, Version::HTTP_11),
        (http1, Some("true"), Version::HTTP_11),
        (both, Some("false"), Version::HTTP_11),
    ] {
        let upstream = private_upstream_speaking(alpn).await;
        let ca_file = scratch("tls-alpn").join("ca.pem");
        std::fs::write(&ca_file, &upstream.ca_pem).unwrap();
        let url = base_url(&upstream);
        let mut flags = vec![
            "--openai-base-url",
            url.as_str(),
            "--openai-api-key",
            "sk-private",
            "--confidence",
            "self",
            "--upstream-ca-file",
            ca_file.to_str().unwrap(),
        ];
        if let Some(value) = setting {
            flags.extend(["--upstream-http2", value]);
        }
        let app = spawn_app(config(&flags)).await;
        let answer = app.classify(&titles).await;
        assert_eq!(answer.errors, 0, "{answer:?}");
        assert_eq!(answer.results.len(), titles.len());
        let versions = upstream.versions.lock().unwrap().clone();
        assert_eq!(versions.len(), titles.len());
        assert!(
            versions.iter().all(|v| *v == expected),
            "offered {alpn:?}, HNC_UPSTREAM_HTTP2 {setting:?}: {versions:?}"
        );
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_ca_file_without_a_certificate_stops_start_up_naming_it() {
    let path = scratch("tls-bad-ca").join("ca.pem");
    std::fs::write(&path, "not a certificate\n").unwrap();
    let message = crate::helpers::startup_error(&[
        "--simulate",
        "--upstream-ca-file",
        path.to_str().unwrap(),
    ])
    .await;
    assert!(message.contains("HNC_UPSTREAM_CA_FILE"), "{message}");
}

/// A CONNECT proxy that records the targets it was asked for.
async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    hn_classifier::tasks::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            hn_classifier::tasks::spawn(async move {
                let mut client = BufReader::new(client);
                let mut request = String::new();
                if client.read_line(&mut request).await.is_err() {
                    return;
                }
                loop {
                    let mut header = String::new();
                    match client.read_line(&mut header).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if header == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let target = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                record.lock().unwrap().push(target.clone());
                let Ok(mut server) =
                    TcpStream::connect(target.replace("localhost", "127.0.0.1")).await
                else {
                    return;
                };
                let mut client = client.into_inner();
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_is_honoured() {
    let upstream = private_upstream().await;
    let ca_file = scratch("tls-proxy").join("ca.pem");
    std::fs::write(&ca_file, &upstream.ca_pem).unwrap();
    let (proxy, seen) = connect_proxy().await;
    let url = base_url(&upstream);
    let proxy_url = format!("http://{proxy}");
    let (mut child, addr) = start_binary_with(
        &[
            "--openai-base-url",
            &url,
            "--openai-api-key",
            "sk-private",
            "--confidence",
            "self",
            "--upstream-ca-file",
            ca_file.to_str().unwrap(),
        ],
        &[("HTTPS_PROXY", proxy_url.as_str()), ("NO_PROXY", "")],
    );
    let answer = json_of(
        reqwest::Client::new()
            .post(format!("http://{addr}/classify-batch"))
            .json(&json!({"titles": ["OpenSSL 4.0 released"]})),
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(answer["errors"], 0, "{answer}");
    let targets = seen.lock().unwrap().clone();
    assert_eq!(
        targets.first().map(String::as_str),
        Some(format!("localhost:{}", upstream.addr.port()).as_str()),
        "the call went through the proxy: {targets:?}"
    );
}
