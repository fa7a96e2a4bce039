//! Answers ferryd gives before it reads a batch's body (404 `unknown_disk`, 409
//! `out_of_window`, 413 `too_large`, 503 `draining`) must reach clients other than ferry's
//! own, over HTTP/2: Debian 12's curl (7.88, nghttp2) and a plain `h2` client that sends the
//! whole body before it reads the answer (as Python's httpx does). Before the fix ferryd sent
//! the answer and reset the stream, curl reported error 92 with no answer at all, and such a
//! client stalled on flow control.

use ferry_client::DiskSpec;
use ferry_tests::{ferryctl, Appliance, Ferryd};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

const BODY_BYTES: usize = 12 << 20;

struct Files {
    _dir: tempfile::TempDir,
    ca: String,
    cert: String,
    key: String,
    body: String,
}

fn write_files(identity: &ferry_client::Identity) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let files = Files {
        ca: path("ca.pem"),
        cert: path("cert.pem"),
        key: path("key.pem"),
        body: path("body"),
        _dir: dir,
    };
    std::fs::write(&files.ca, &identity.ca_pem).unwrap();
    std::fs::write(&files.cert, &identity.cert_pem).unwrap();
    std::fs::write(&files.key, &identity.key_pem).unwrap();
    std::fs::write(&files.body, vec![0x5au8; BODY_BYTES]).unwrap();
    files
}

/// `curl --http2 -X PUT` of the 12 MiB body: (exit code, HTTP status, headers and body).
fn curl(files: &Files, url: &str) -> (i32, u16, String) {
    let out = Command::new("curl")
        .args(["--http2", "-sS", "-X", "PUT", "-D", "-", "--max-time", "60"])
        .args(["--cacert", &files.ca, "--cert", &files.cert, "--key", &files.key])
        .args(["-H", "content-type: application/octet-stream"])
        .args(["--data-binary", &format!("@{}", files.body)])
        .args(["-w", "\nstatus=%{http_code}"])
        .arg(url)
        .output()
        .expect("curl runs (apt-get install curl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = text
        .rsplit_once("status=")
        .and_then(|(_, s)| s.trim().parse().ok())
        .unwrap_or(0);
    (out.status.code().unwrap_or(-1), status, text)
}

/// A plain h2 client (not ferry's): sends the whole body, respecting flow control, and only
/// then reads the answer. Gives up after 30 s (a server that stops reading stalls it).
async fn h2_put(identity: &ferry_client::Identity, endpoint: &str, path: &str) -> Result<(u16, String), String> {
    let mut tls = ferry_client::tls::ca_verified(&identity.ca_pem, Some((&identity.cert_pem, &identity.key_pem)))
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let work = async {
        let tcp = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut client, connection) = h2::client::handshake(stream).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = http::Request::put(format!("https://{endpoint}{path}"))
            .header("content-type", "application/octet-stream")
            .header("content-length", BODY_BYTES.to_string())
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, mut send) = client.send_request(request, false).map_err(|e| e.to_string())?;
        let mut left = BODY_BYTES;
        while left > 0 {
            send.reserve_capacity(left.min(1 << 20));
            let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .ok_or("the stream closed while sending")?
                .map_err(|e| format!("sending the body: {e}"))?;
            let chunk = granted.min(left);
            send.send_data(bytes::Bytes::from(vec![0x5au8; chunk]), chunk == left)
                .map_err(|e| format!("sending the body: {e}"))?;
            left -= chunk;
        }
        let response = response.await.map_err(|e| format!("reading the answer: {e}"))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("reading the answer's body: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| "stalled for 30 s".to_string())?
}

fn batch_path(disk: Uuid, seq: u64) -> String {
    format!("/v1/disks/{disk}/batches/{seq}")
}

#[tokio::test]
async fn early_refusals_reach_curl_and_a_plain_h2_client() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let identity = appliance.register("early").await;
    let files = write_files(&identity);
    let client = identity.data_client().unwrap();
    let known = Uuid::new_v4();
    let spec = DiskSpec {
        name: "sdb".into(),
        size_bytes: 1 << 30,
        sector_size: 4096,
        write_ordered: false,
        reprotect_from: None,
    };
    client.put_disk(known, &spec).await.unwrap();
    let url = |path: &str| format!("https://{}{path}", appliance.data);

    // (path, status, code) before and during a drain.
    let cases = [
        (batch_path(Uuid::new_v4(), 1), 404, "unknown_disk"),
        (batch_path(known, 1_000_000), 409, "out_of_window"),
    ];
    for (path, status, code) in &cases {
        let (exit, seen, text) = curl(&files, &url(path));
        assert_eq!((exit, seen), (0, *status), "curl: {text}");
        assert!(text.contains(code), "curl: {text}");
        let (seen, body) = h2_put(&identity, &appliance.data, path).await.unwrap();
        assert_eq!(seen, *status, "h2: {body}");
        assert!(body.contains(code), "h2: {body}");
    }

    let dir = appliance.dir.to_str().unwrap();
    assert!(ferryctl(&["drain", "--config", dir]).success);
    let path = batch_path(known, 1);
    let (exit, seen, text) = curl(&files, &url(&path));
    assert_eq!((exit, seen), (0, 503), "curl: {text}");
    assert!(
        text.contains("draining for maintenance") && text.to_ascii_lowercase().contains("retry-after: 5"),
        "curl sees the code and the Retry-After: {text}"
    );
    let (seen, body) = h2_put(&identity, &appliance.data, &path).await.unwrap();
    assert_eq!(seen, 503, "h2: {body}");
    assert!(ferryctl(&["drain", "--resume", "--config", dir]).success);

    // Nothing of the refused bodies was stored.
    assert_eq!(client.get_disk(known).await.unwrap().durable_seq, 0);
}
