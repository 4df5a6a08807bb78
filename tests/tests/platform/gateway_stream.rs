//! The streaming publish (`POST /v1/readings/stream`, NDJSON) in front of a
//! real ingest: a body sent in small chunks that cut lines apart is read
//! line by line, in batches; every refused reading comes back with its
//! line number and field while the rest is stored; a line that is not a
//! reading ends the request with `422` (`403` for another tenant) naming
//! it, after the lines before it were stored; the daily quota refuses the
//! batches past it; a body that is not NDJSON is `415`.

use gateway::{
    keys::TenantId,
    storage::{GatewayStore as _, sqlite::SqliteGatewayStore},
    tenancy,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{ScratchDb, nothing_listening, url_of};

/// POSTs `body` to the stream route in chunks of `chunk` bytes (chunked
/// transfer encoding), returning the status and the body of the answer.
async fn stream(
    addr: std::net::SocketAddr,
    bearer: &str,
    content_type: &str,
    body: &[u8],
    chunk: usize,
) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/readings/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {bearer}\r\n\
         Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(chunk) {
        let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
        framed.extend_from_slice(piece);
        framed.extend_from_slice(b"\r\n");
        socket.write_all(&framed).await.unwrap();
    }
    socket.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    // The answer may itself be chunked: keep the JSON object only.
    let json = body
        .find('{')
        .and_then(|start| body.rfind('}').map(|end| body[start..=end].to_owned()))
        .unwrap_or_default();
    (status, json)
}

fn line(event: &str, device: &str, observed_at: &str) -> String {
    serde_json::json!({
        "event_id": event,
        "device_id": device,
        "metric": "temperature_c",
        "value": 21.5,
        "observed_at": observed_at,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_stream_is_stored_in_batches_and_each_refused_line_is_named() {
    let (ingest_db, gateway_db) = (ScratchDb::new(), ScratchDb::new());
    let ingest = ingest::start(ingest::Config::for_tests(&ingest_db.url()))
        .await
        .unwrap();
    let config = gateway::Config::for_tests(
        &gateway_db.url(),
        url_of(&ingest),
        nothing_listening(),
        nothing_listening(),
    );
    let peppers = config.peppers.clone();
    let gateway = gateway::start(config).await.unwrap();
    let addr = gateway.http_addr.unwrap();
    let store = SqliteGatewayStore::connect(&gateway_db.url())
        .await
        .unwrap();
    let acme = TenantId::parse("acme").unwrap();
    store.create_tenant(&acme, "").await.unwrap();
    let (key, _) = tenancy::create_key(
        &store,
        &peppers,
        &acme,
        vec!["readings:write".into()],
        "",
        None,
    )
    .await
    .unwrap();
    let bearer = format!("Bearer {}", key.reveal());
    let now = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();

    // 2,500 good lines across three batches, with a reading ingest
    // refuses and a duplicate among them, blank lines and CRLF endings.
    let mut lines: Vec<String> = (0..2_500)
        .map(|i| line(&format!("e{i}"), &format!("d{}", i % 10), &now))
        .collect();
    lines.insert(40, line("no-device", "", &now)); // line 41: ingest refuses it
    lines.insert(1_500, line("e5", "d5", &now)); // line 1501: a duplicate of e5
    lines.insert(50, String::new()); // line 51: blank, skipped
    let mut body = lines.join("\r\n").into_bytes();
    body.extend_from_slice(b"\n\n");

    let (status, answer) = stream(addr, &bearer, "application/x-ndjson", &body, 777).await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["accepted"], 2_500, "{answer}");
    assert_eq!(answer["duplicates"], 1, "{answer}");
    assert_eq!(answer["lines"], 2_502, "blank lines are not counted");
    assert_eq!(answer["batches"], 3, "batches of 1,000");
    let refused = answer["rejected"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{answer}");
    assert_eq!(
        (
            &refused[0]["line"],
            &refused[0]["event_id"],
            &refused[0]["field"]
        ),
        (&41.into(), &"no-device".into(), &"device_id".into()),
        "{answer}"
    );

    // A line that is not a reading ends the request, naming it; the lines
    // before it are stored (sent again, they are duplicates).
    let other_tenant = {
        let mut other: serde_json::Value = serde_json::from_str(&line("o", "d1", &now)).unwrap();
        other["tenant_id"] = "globex".into();
        other.to_string()
    };
    for (bad, status, field) in [
        ("{not json".to_owned(), 422, "line 3"),
        (
            line("bad-time", "d1", "yesterday"),
            422,
            "line 3.observed_at",
        ),
        (other_tenant, 403, "line 3.tenant_id"),
        ("x".repeat(70 * 1024), 422, "line 3"),
    ] {
        let body = format!(
            "{}\n{}\n{}\n{}\n",
            line("m1", "d1", &now),
            line("m2", "d1", &now),
            bad,
            line("m3", "d1", &now)
        );
        let (got, answer) = stream(
            addr,
            &bearer,
            "application/x-ndjson",
            body.as_bytes(),
            4_096,
        )
        .await;
        assert_eq!(got, status, "{answer}");
        let problem: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{answer}");
    }
    let again = format!("{}\n{}\n", line("m1", "d1", &now), line("m3", "d1", &now));
    let (status, answer) =
        stream(addr, &bearer, "application/x-ndjson", again.as_bytes(), 64).await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (&answer["accepted"], &answer["duplicates"]),
        (&1.into(), &1.into()),
        "the line before the bad one was stored, the one after it was not: {answer}"
    );

    // The daily quota: the batch that would pass it is refused line by
    // line, naming the quota; the one before it is stored.
    store
        .set_readings_quota(&acme, Some(2_503 + 1_000))
        .await
        .unwrap();
    let next: Vec<String> = (0..1_500)
        .map(|i| line(&format!("q{i}"), "d1", &now))
        .collect();
    let (status, answer) = stream(
        addr,
        &bearer,
        "application/x-ndjson",
        next.join("\n").as_bytes(),
        65_536,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["accepted"], 1_000, "{answer}");
    let refused = answer["rejected"].as_array().unwrap();
    assert_eq!(refused.len(), 500, "{answer}");
    assert_eq!(refused[0]["line"], 1_001);
    assert_eq!(refused[0]["field"], "readings");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("daily quota")
    );

    let (status, answer) = stream(addr, &bearer, "application/json", b"{}", 16).await;
    assert_eq!(status, 415, "{answer}");
    let (status, answer) = stream(addr, &bearer, "application/x-ndjson", b"\n\r\n", 16).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains(r#""field":"body""#), "{answer}");
    tokio::join!(gateway.shutdown(), ingest.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ingest_cannot_take_is_503_and_counts_nothing_against_the_quota() {
    let gateway_db = ScratchDb::new();
    let config = gateway::Config::for_tests(
        &gateway_db.url(),
        nothing_listening(),
        nothing_listening(),
        nothing_listening(),
    );
    let peppers = config.peppers.clone();
    let gateway = gateway::start(config).await.unwrap();
    let addr = gateway.http_addr.unwrap();
    let store = SqliteGatewayStore::connect(&gateway_db.url())
        .await
        .unwrap();
    let acme = TenantId::parse("acme").unwrap();
    store.create_tenant(&acme, "").await.unwrap();
    let (key, _) = tenancy::create_key(
        &store,
        &peppers,
        &acme,
        vec!["readings:write".into()],
        "",
        None,
    )
    .await
    .unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let body: Vec<String> = (0..1_200)
        .map(|i| line(&format!("e{i}"), "d1", &now))
        .collect();
    let (status, answer) = stream(
        addr,
        &format!("Bearer {}", key.reveal()),
        "application/x-ndjson",
        body.join("\n").as_bytes(),
        8_192,
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("unavailable"), "{answer}");
    let usage = store
        .reserve_readings(&acme, chrono::Utc::now().date_naive(), 0, 10)
        .await
        .unwrap();
    assert_eq!(usage.used, 0, "nothing stored, nothing counted");
    gateway.shutdown().await;
}
