//! Hostile peers and clients against a running pair: each TLS attempt is refused, each
//! malformed HTTP request gets a 4xx, each HTTP/2 abuse ends its own connection, the app sees
//! none of it, and a good client keeps being served throughout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_core::contract::ALPN_HTTP2;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::ca::{self, InitOptions};
use warden_identity::profile::{self, Validity};
use warden_identity::{csr, tls, ExpectedPeer, Svid, TrustStore};
use warden_proxy::authz::Authorizer;
use warden_proxy::config::{AppProtocol, ProxyConfig, RouteProtocol};

use crate::apps;
use crate::fixture::{id, Mesh, Pair};

const HOUR: Duration = Duration::from_secs(3600);

/// A pair in front of the test app; `tweak` adjusts the server proxy's configuration.
async fn pair(mesh: &Mesh, app: SocketAddr, tweak: impl FnOnce(&mut ProxyConfig)) -> Pair {
    mesh.pair_with(
        app,
        AppProtocol::Auto,
        RouteProtocol::Detect,
        Authorizer::allow_all(),
        tweak,
    )
    .await
}

/// A short handshake timeout, so stalled handshakes end within the test.
fn short_handshake(server: &mut ProxyConfig) {
    server.timeouts.handshake = Duration::from_millis(500);
}

/// Keeps a good client busy through the pair until stopped; returns (ok, failed) counts.
struct GoodTraffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl GoodTraffic {
    fn start(outbound: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let answer = crate::fixture::raw_get(outbound, "/").await;
                if answer.starts_with("HTTP/1.1 200") {
                    ok += 1;
                } else {
                    failed.push(answer);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        });
        Self { stop, task }
    }

    /// Stops the traffic and checks every request succeeded; returns how many there were.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let (ok, failed) = self.task.await.unwrap();
        assert!(failed.is_empty(), "good requests failed: {failed:?}");
        assert!(ok > 0, "no good request ran");
        ok
    }
}

/// An SVID for `spiffe_id` signed by the mesh's real issuer, its profile changed by `tweak`:
/// what the CA itself would never sign.
fn forged(
    mesh: &Mesh,
    spiffe_id: &str,
    validity: Validity,
    tweak: impl FnOnce(&mut CertificateParams),
) -> Svid {
    let id = SpiffeId::parse(spiffe_id).unwrap();
    let mut params = profile::svid_params(&id, profile::random_serial(), validity).unwrap();
    tweak(&mut params);
    let generated = &mesh.generated;
    let issuer =
        Issuer::from_ca_cert_der(generated.issuer_cert.der(), &generated.issuer_key).unwrap();
    let key = csr::generate_key().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        vec![cert.der().clone(), generated.issuer_cert.der().clone()];
    Svid::new(
        id,
        chain,
        csr::private_key_der(&key),
        SystemTime::now() + HOUR,
    )
}

/// Whether the inbound listener refused a TLS client: the handshake fails, or the first read
/// after it (TLS 1.3 clients finish first) brings an alert or the end instead of data.
async fn refused(inbound: SocketAddr, config: rustls::ClientConfig) -> bool {
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(tls::mesh_server_name(), tcp)
        .await;
    let Ok(mut stream) = connected else {
        return true;
    };
    let _ = stream.write_all(h2_preface().as_slice()).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server neither answered nor closed");
    !matches!(read, Ok(n) if n > 0)
}

/// What a raw, non-TLS byte stream gets back from the inbound listener before it closes.
async fn raw_exchange(inbound: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(inbound).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the server neither answered nor closed")
        .ok();
    answer
}

/// A ClientHello that offers only TLS 1.2 (no supported_versions extension), P-256 and
/// ECDHE-ECDSA/RSA AES-GCM suites: a downgrade attempt.
fn tls12_client_hello() -> Vec<u8> {
    let mut extensions = Vec::new();
    // supported_groups: secp256r1
    extensions.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    extensions.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
    extensions.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);
    let mut body = vec![0x03, 0x03]; // legacy_version TLS 1.2
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // two cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn hostile_tls_peers_are_refused_while_good_clients_are_served() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = pair(&mesh, app, short_handshake).await;
    let inbound = pair.server.addrs.inbound[0];
    let store = Arc::new(TrustStore::single(mesh.ca.get().bundle().clone()));
    let good = GoodTraffic::start(pair.outbound);

    let client = "spiffe://cluster.local/ns/test/sa/client";
    let now = SystemTime::now();
    let valid = Validity::issued(now, HOUR, None).unwrap();
    let expired = Validity {
        not_before: now - 3 * HOUR,
        not_after: now - 2 * HOUR,
    };
    let stranger = ca::generate(&InitOptions::new(TrustDomain::default()))
        .unwrap()
        .authority()
        .unwrap();
    let svids: Vec<(&str, Svid)> = vec![
        (
            "a certificate from another CA",
            stranger.issue(&id("client"), HOUR).unwrap(),
        ),
        (
            "another trust domain, signed by the mesh's own issuer",
            forged(&mesh, "spiffe://other.org/ns/test/sa/client", valid, |_| {}),
        ),
        (
            "an expired certificate",
            forged(&mesh, client, expired, |_| {}),
        ),
        (
            "a leaf with the CA bit",
            forged(&mesh, client, valid, |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
            }),
        ),
    ];
    for (case, svid) in &svids {
        let config =
            tls::client_config(svid, store.clone(), ExpectedPeer::AnyTrusted, &[ALPN_HTTP2])
                .unwrap();
        assert!(refused(inbound, config).await, "{case}: accepted");
    }
    let anonymous = tls::anonymous_client_config(store.clone(), ExpectedPeer::AnyTrusted, &[]);
    assert!(
        refused(inbound, anonymous).await,
        "no client certificate: accepted"
    );

    // Garbage instead of a ClientHello: closed, with at most an alert, never a ServerHello.
    let answer = raw_exchange(inbound, b"\x00\x01\x02 this is not TLS\r\n\r\n").await;
    assert!(
        answer.first() != Some(&0x16),
        "garbage got a handshake: {answer:?}"
    );
    // Plain HTTP at the mTLS port gets nothing served.
    let answer = raw_exchange(inbound, b"GET / HTTP/1.1\r\nhost: s\r\n\r\n").await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "{answer:?}"
    );
    // A TLS 1.2-only ClientHello (a downgrade): a protocol alert (content type 21), no
    // ServerHello.
    let answer = raw_exchange(inbound, &tls12_client_hello()).await;
    assert_eq!(answer.first(), Some(&0x15), "TLS 1.2 offer: {answer:?}");

    let served = good.finish().await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        served,
        "the app saw exactly the good requests"
    );
}

/// Raises this process's open-file limit towards `want`; returns what it now is.
fn raise_fd_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a valid, owned struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

#[tokio::test]
async fn stalled_handshakes_are_cut_off_and_starve_no_one() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = pair(&mesh, app, short_handshake).await;
    let inbound = pair.server.addrs.inbound[0];

    // Thousands of connections that start a TLS record and never finish it (slowloris),
    // each costing the proxy a socket: both ends live in this process, plus the rest.
    let wanted: u64 = 2000;
    let limit = raise_fd_limit(2 * wanted + 1024);
    let count = wanted.min(limit.saturating_sub(1024) / 2) as usize;
    assert!(
        count >= 500,
        "open-file limit {limit} is too low for this test"
    );
    let mut stalled = Vec::with_capacity(count);
    for _ in 0..count {
        let mut tcp = TcpStream::connect(inbound).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        stalled.push(tcp);
    }

    // Meanwhile a good client is served at once.
    let answer = crate::fixture::raw_get(pair.outbound, "/").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Every stalled handshake is cut off after the 500 ms handshake timeout.
    let closed = Arc::new(AtomicUsize::new(0));
    let waits = stalled.into_iter().map(|mut tcp| {
        let closed = closed.clone();
        async move {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
            if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
                closed.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    futures_util::future::join_all(waits).await;
    assert_eq!(
        closed.load(Ordering::SeqCst),
        count,
        "every stalled handshake was closed"
    );
    let answer = crate::fixture::raw_get(pair.outbound, "/").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = mesh.metrics.render();
    assert!(
        metrics.contains("warden_tls_handshakes_total{direction=\"inbound\",result=\"failure\"}"),
        "{metrics}"
    );
}

/// Sends a raw HTTP/1.1 request to `addr` and returns the whole answer.
async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn malformed_and_smuggling_requests_get_400_and_never_reach_the_app() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = pair(&mesh, app, short_handshake).await;
    let good = GoodTraffic::start(pair.outbound);

    // Content-Length with Transfer-Encoding: the Content-Length is dropped, the body read as
    // chunked (RFC 9112 section 6.3) and the connection closed after the answer, so the
    // request smuggled behind it is never read. The app gets one request, without the
    // Content-Length.
    let answer = raw_http(
        pair.outbound,
        "POST /headers HTTP/1.1\r\nhost: s\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: s\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one answer: {answer}"
    );
    assert!(!answer.contains("content-length: 4\n"), "{answer}");
    assert!(!answer.contains("smuggled"), "{answer}");

    let cases = [
        (
            "two different Content-Lengths",
            "POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 4\r\ncontent-length: 40\r\n\r\nabcd",
        ),
        (
            "an obs-folded header",
            "GET / HTTP/1.1\r\nhost: s\r\nx-folded: a\r\n  b\r\n\r\n",
        ),
        (
            "a Transfer-Encoding that is not chunked last",
            "POST / HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        ("an invalid method", "G(T / HTTP/1.1\r\nhost: s\r\n\r\n"),
        (
            "a path without a slash",
            "GET nopath HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n",
        ),
        (
            "a space before the colon",
            "GET / HTTP/1.1\r\nhost : s\r\n\r\n",
        ),
        (
            "a NUL in a header value",
            "GET / HTTP/1.1\r\nhost: s\r\nx-a: a\0b\r\n\r\n",
        ),
        (
            "an unknown HTTP version",
            "GET / HTTP/1.7\r\nhost: s\r\n\r\n",
        ),
        (
            "a Host that is no authority",
            "GET / HTTP/1.1\r\nhost: a b\r\n\r\n",
        ),
    ];
    for (case, request) in cases {
        let answer = raw_http(pair.outbound, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{case}: {:?}",
            answer.lines().next()
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{case}: one answer: {answer}"
        );
    }

    // Too many header fields, each tiny (the byte limit is far away): 431, never forwarded.
    let many: String = (0..200).map(|i| format!("x-{i}: 1\r\n")).collect();
    let answer = raw_http(
        pair.outbound,
        &format!("GET / HTTP/1.1\r\nhost: s\r\n{many}\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "200 header fields: {:?}",
        answer.lines().next()
    );

    // A spoofed caller identity is replaced by the verified one before the app sees it.
    let answer = raw_http(
        pair.outbound,
        "GET /headers HTTP/1.1\r\nhost: s\r\nx-warden-client-id: spiffe://cluster.local/ns/test/sa/admin\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("x-warden-client-id").count(), 1, "{answer}");
    assert!(
        answer.contains("x-warden-client-id: spiffe://cluster.local/ns/test/sa/client\n"),
        "{answer}"
    );

    let served = good.finish().await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        served + 2,
        "the app saw the good requests, the chunked POST and the spoofed identity, nothing else"
    );
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HPACK block for `GET https://s{path}`: static-table method and scheme, literal path
/// and authority (paths under 127 bytes).
fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b's']);
    block
}

/// An mTLS connection to the inbound listener as a legitimate client workload.
async fn h2_peer(mesh: &Mesh, inbound: SocketAddr) -> impl AsyncRead + AsyncWrite + Unpin {
    let store = Arc::new(TrustStore::single(mesh.ca.get().bundle().clone()));
    let svid = mesh.ca.get().issue(&id("client"), HOUR).unwrap();
    let config = tls::client_config(&svid, store, ExpectedPeer::AnyTrusted, &[ALPN_HTTP2]).unwrap();
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(tls::mesh_server_name(), tcp)
        .await
        .unwrap();
    stream.write_all(&h2_preface()).await.unwrap();
    stream
}

/// Reads until the server closes the connection; true if it did within `within`.
async fn closed_by_server(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn http2_rapid_reset_and_continuation_floods_end_only_their_connection() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = pair(&mesh, app, short_handshake).await;
    let inbound = pair.server.addrs.inbound[0];
    let good = GoodTraffic::start(pair.outbound);

    // Rapid reset (CVE-2023-44487): open and cancel streams as fast as possible.
    let mut peer = h2_peer(&mesh, inbound).await;
    let streams = 5_000u32;
    let mut burst = Vec::new();
    for i in 0..streams {
        let stream = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &get_block("/"),
        ));
        burst.extend(frame(RST_STREAM, 0, stream, &0x8u32.to_be_bytes())); // CANCEL
    }
    let _ = peer.write_all(&burst).await;
    assert!(
        closed_by_server(&mut peer, Duration::from_secs(10)).await,
        "a rapid-reset peer keeps its connection"
    );
    let after_reset = hits.load(Ordering::SeqCst);

    // CONTINUATION flood (CVE-2024-27316 and kin): a header block that never ends.
    let mut peer = h2_peer(&mesh, inbound).await;
    let _ = peer
        .write_all(&frame(HEADERS, END_STREAM, 1, &get_block("/")))
        .await;
    let filler = [0x00u8, 0x01, b'x', 0x7f, 0x00]
        .into_iter()
        .chain(std::iter::repeat_n(b'y', 127))
        .collect::<Vec<u8>>();
    let mut sent = 0usize;
    let flood = async {
        for _ in 0..20_000 {
            if peer
                .write_all(&frame(CONTINUATION, 0, 1, &filler))
                .await
                .is_err()
            {
                break;
            }
            sent += filler.len();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), flood).await;
    assert!(
        closed_by_server(&mut peer, Duration::from_secs(10)).await,
        "a CONTINUATION flood keeps its connection ({sent} bytes sent)"
    );
    assert!(
        sent < 2 * 1024 * 1024,
        "the server read {sent} bytes of one header block"
    );

    let served = good.finish().await;
    assert!(
        after_reset < served + (streams as usize) / 2,
        "most reset streams never reached the app ({after_reset} requests)"
    );
}

/// Reads the server's frames for `within` (or until it closes), handing each to `on_frame`
/// as (type, stream, payload); stops early with what `on_frame` returns.
async fn read_frames<T>(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
    mut on_frame: impl FnMut(u8, u32, &[u8]) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let id = u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
            if let Some(found) = on_frame(buf[3], id, &buf[9..9 + len]) {
                return Some(found);
            }
            buf.drain(..9 + len);
        }
    }
    None
}

/// How many `RST_STREAM` frames with error code `reason` arrive within `within`.
async fn count_resets(
    stream: &mut (impl AsyncRead + Unpin),
    reason: u32,
    within: Duration,
) -> usize {
    let mut resets = 0;
    read_frames(stream, within, |kind, _, payload| {
        if kind == RST_STREAM && payload.len() == 4 {
            resets += usize::from(u32::from_be_bytes(payload.try_into().unwrap()) == reason);
        }
        None::<()>
    })
    .await;
    resets
}

#[tokio::test]
async fn a_flood_of_streams_past_the_limit_is_refused_stream_by_stream() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = pair(&mesh, app, |server| {
        server.limits.max_concurrent_streams = 50
    })
    .await;
    let inbound = pair.server.addrs.inbound[0];
    let good = GoodTraffic::start(pair.outbound);

    // 200 requests the app answers slowly, all at once on one connection.
    let mut peer = h2_peer(&mesh, inbound).await;
    let block = get_block("/slow/1500");
    let mut burst = Vec::new();
    for i in 0..200u32 {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    peer.write_all(&burst).await.unwrap();
    const REFUSED_STREAM: u32 = 0x7;
    let refused = count_resets(&mut peer, REFUSED_STREAM, Duration::from_secs(3)).await;
    assert!(
        refused >= 150,
        "streams past the limit of 50 are refused ({refused} were)"
    );
    let served = good.finish().await;
    assert!(
        hits.load(Ordering::SeqCst) <= served + 50,
        "at most 50 of the flood reached the app"
    );
}

#[tokio::test]
async fn a_stream_whose_window_never_opens_is_reset_after_the_idle_timeout() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = pair(&mesh, app, |server| {
        server.timeouts.idle = Duration::from_secs(1)
    })
    .await;
    let inbound = pair.server.addrs.inbound[0];
    let good = GoodTraffic::start(pair.outbound);

    // A peer that announces a zero stream window, then asks for 10 MB it will never accept.
    let mut peer = h2_peer(&mesh, inbound).await;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let mut settings = INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend_from_slice(&0u32.to_be_bytes());
    let block = get_block("/download/10000000");
    let mut out = frame(0x4, 0, 0, &settings);
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    peer.write_all(&out).await.unwrap();
    const CANCEL: u32 = 0x8;
    let started = std::time::Instant::now();
    let resets = count_resets(&mut peer, CANCEL, Duration::from_secs(4)).await;
    assert_eq!(resets, 1, "the stalled stream is reset");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the idle timeout"
    );
    good.finish().await;
}

/// The first header block the server sends on `stream_id` (or none within `within`).
async fn response_block(
    stream: &mut (impl AsyncRead + Unpin),
    stream_id: u32,
    within: Duration,
) -> Option<Vec<u8>> {
    read_frames(stream, within, |kind, id, payload| {
        (kind == HEADERS && id == stream_id).then(|| payload.to_vec())
    })
    .await
}

#[tokio::test]
async fn an_extended_connect_for_anything_but_websocket_is_refused() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = pair(&mesh, app, |_| {}).await;
    let mut peer = h2_peer(&mesh, pair.server.addrs.inbound[0]).await;
    // A peer proxy's extended CONNECT (RFC 8441) for h2c: were it carried, the caller would
    // speak HTTP/2 to the app behind one authorized GET. HPACK: `:method CONNECT` and
    // `:protocol h2c` as literals, `:scheme https` and `:path /` indexed, `:authority s`.
    let mut block = vec![0x02, 7];
    block.extend_from_slice(b"CONNECT");
    block.extend_from_slice(&[0x00, 9]);
    block.extend_from_slice(b":protocol");
    block.push(3);
    block.extend_from_slice(b"h2c");
    block.extend_from_slice(&[0x87, 0x84, 0x01, 0x01, b's']);
    peer.write_all(&frame(HEADERS, END_HEADERS, 1, &block))
        .await
        .unwrap();
    let response = response_block(&mut peer, 1, Duration::from_secs(10))
        .await
        .expect("an answer on the stream");
    // `:status 400` is entry 12 of HPACK's static table.
    assert_eq!(response.first(), Some(&0x8c), "400: {response:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the app");
}
