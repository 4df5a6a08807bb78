//! The console's dead-letter pages in front of a real ingest: readings
//! validation refused are listed per tenant (never another tenant's), a
//! letter is inspected with its payload escaped, a correction that still
//! fails keeps the letter and names the field, a good correction is stored
//! and the letter removed, another letter is discarded after confirming,
//! every action is in the gateway's audit log, and a viewer only looks.

use chrono::{Duration, Utc};
use contracts::ingest::v1::{self as pb, ingest_service_client::IngestServiceClient};
use gateway::{
    keys::TenantId,
    storage::{
        GatewayStore as _,
        operators::{OperatorStore as _, Role},
        sqlite::SqliteGatewayStore,
    },
};
use service_runtime::{Transport, traced_channel};

use crate::support::{
    ScratchDb,
    console::{Browser, PASSWORD, header},
    nothing_listening, url_of,
};

fn reading(tenant: &str, event: &str, device: &str, value: f64, age: Duration) -> pb::Reading {
    let at = Utc::now() - age;
    pb::Reading {
        event_id: event.into(),
        tenant_id: tenant.into(),
        device_id: device.into(),
        metric: "temperature_c".into(),
        value,
        observed_at: Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: 0,
        }),
        attributes: [("note".to_owned(), "<script>alert(1)</script>".to_owned())].into(),
    }
}

/// The ids of the letters a list page links to, in page order.
fn letter_ids(body: &str) -> Vec<i64> {
    body.split("<a href=\"/console/dead-letters/")
        .skip(1)
        .filter_map(|rest| rest.split('?').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_inspect_correct_and_discard_dead_letters_per_tenant() {
    let (ingest_db, gateway_db) = (ScratchDb::new(), ScratchDb::new());
    let ingest = ingest::start(ingest::Config::for_tests(&ingest_db.url()))
        .await
        .unwrap();
    let gateway = gateway::start(gateway::Config::for_tests(
        &gateway_db.url(),
        url_of(&ingest),
        nothing_listening(),
        nothing_listening(),
    ))
    .await
    .unwrap();
    let addr = gateway.http_addr.unwrap();
    let store = SqliteGatewayStore::connect(&gateway_db.url())
        .await
        .unwrap();
    for tenant in ["acme", "globex"] {
        store
            .create_tenant(&TenantId::parse(tenant).unwrap(), tenant)
            .await
            .unwrap();
    }
    for (name, role) in [("ops", Role::Operator), ("eve", Role::Viewer)] {
        gateway::console::create_operator(&store, name, PASSWORD, role, "test")
            .await
            .unwrap();
    }
    let channel = traced_channel(
        &url_of(&ingest),
        &Transport::Plaintext,
        "ingest",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_secs(20),
    )
    .unwrap();
    let mut client = IngestServiceClient::new(channel);
    let minute = Duration::minutes(1);
    let ack = client
        .publish_readings(pb::PublishReadingsRequest {
            readings: vec![
                reading("acme", "nan-1", "boiler-<b>7</b>", f64::NAN, minute),
                reading("acme", "old-1", "boiler-8", 20.0, Duration::days(30)),
                reading("globex", "nan-2", "press-1", f64::NAN, minute),
                reading("acme", "fine-1", "boiler-8", 21.0, minute),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ack
        .unwrap();
    assert_eq!((ack.accepted, ack.rejected.len()), (1, 3), "{ack:?}");

    let ops = Browser::login(addr, "ops").await;
    let acme = ops.get("/console/dead-letters?tenant=acme").await;
    assert_eq!(acme.status, 200, "{}", acme.body);
    let ids = letter_ids(&acme.body);
    assert_eq!(ids.len(), 2, "acme's two letters only: {}", acme.body);
    assert!(ids[0] > ids[1], "newest first: {ids:?}");
    assert!(
        !acme.body.contains("nan-2"),
        "globex's letter is not acme's"
    );
    assert!(acme.body.contains("<td>observed_at</td>"), "{}", acme.body);
    let globex = ops.get("/console/dead-letters?tenant=globex").await;
    let globex_ids = letter_ids(&globex.body);
    assert_eq!(globex_ids.len(), 1, "{}", globex.body);

    // The letter with a hostile device id (refused first for that), its
    // payload shown escaped.
    let nan_id = ids.iter().copied().min().unwrap();
    let old_id = ids.iter().copied().max().unwrap();
    let page = format!("/console/dead-letters/{nan_id}?tenant=acme");
    let detail = ops.get(&page).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    assert!(
        detail.body.contains("<dd>device_id</dd>"),
        "{}",
        detail.body
    );
    assert!(
        !detail.body.contains("<script>alert(1)") && !detail.body.contains("<b>7</b>"),
        "payload escaped: {}",
        detail.body
    );
    assert!(
        detail
            .body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{}",
        detail.body
    );
    // Another tenant's letter is not found under this tenant.
    let crossed = ops
        .get(&format!(
            "/console/dead-letters/{}?tenant=acme",
            globex_ids[0]
        ))
        .await;
    assert_eq!(crossed.status, 404, "{}", crossed.body);

    // Replaying it as received fails again, naming the field; kept.
    let replay = format!("/console/dead-letters/{nan_id}/replay?tenant=acme");
    let refused = ops.post_form(&page, &replay, "").await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("reading.device_id"),
        "{}",
        refused.body
    );
    // A correction the form cannot read names the form's field.
    let resubmit = format!("/console/dead-letters/{nan_id}/resubmit?tenant=acme");
    let observed = (Utc::now() - minute).to_rfc3339();
    let form = |value: &str| {
        format!(
            "event_id=nan-1&device_id=boiler-7&metric=temperature_c&value={value}&observed_at={}&attributes=note%3Dfixed",
            observed.replace('+', "%2B")
        )
    };
    let bad = ops.post_form(&page, &resubmit, &form("warm")).await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(
        bad.body.contains("value: &#34;warm&#34; is not a number"),
        "{}",
        bad.body
    );
    assert!(
        bad.body.contains("value=\"warm\""),
        "the edit is kept: {}",
        bad.body
    );
    assert_eq!(
        letter_ids(&ops.get("/console/dead-letters?tenant=acme").await.body).len(),
        2,
        "nothing removed by a refused resubmission"
    );
    // A good correction is stored, and the letter goes.
    let stored = ops.post_form(&page, &resubmit, &form("21.5")).await;
    assert_eq!(stored.status, 303, "{}", stored.body);
    let after = ops.get(header(&stored, "location")).await;
    assert!(after.body.contains("role=\"status\""), "{}", after.body);
    assert_eq!(letter_ids(&after.body), vec![old_id]);
    let read = client
        .read_window(pb::ReadWindowRequest {
            window: Some(pb::WindowKey {
                tenant_id: "acme".into(),
                device_id: "boiler-7".into(),
                metric: "temperature_c".into(),
                window_start: Some(prost_types::Timestamp {
                    seconds: (Utc::now() - Duration::hours(1)).timestamp(),
                    nanos: 0,
                }),
                window_length: Some(prost_types::Duration {
                    seconds: 7_200,
                    nanos: 0,
                }),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.readings.len(), 1, "{read:?}");
    assert_eq!(read.readings[0].value, 21.5);

    // A viewer sees the letter but has no form, and cannot post one.
    let eve = Browser::login(addr, "eve").await;
    let old_page = format!("/console/dead-letters/{old_id}?tenant=acme");
    let seen = eve.get(&old_page).await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert!(!seen.body.contains("Resubmit"), "{}", seen.body);
    let confirm = format!("/console/dead-letters/{old_id}/discard?tenant=acme");
    assert_eq!(eve.get(&confirm).await.status, 403);

    // Discarding, confirmed on its own page.
    let discarded = ops.confirm(&confirm, &confirm).await;
    assert_eq!(discarded.status, 303, "{}", discarded.body);
    let empty = ops.get("/console/dead-letters?tenant=acme").await;
    assert!(letter_ids(&empty.body).is_empty(), "{}", empty.body);
    assert_eq!(
        letter_ids(&ops.get("/console/dead-letters?tenant=globex").await.body),
        globex_ids,
        "the other tenant's letter is untouched"
    );

    let audit = store.audit_log(50).await.unwrap();
    let actions: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| (e.operator.as_str(), e.action.as_str(), e.target.as_str()))
        .collect();
    let resubmitted = format!("dead letter {nan_id} of acme");
    let thrown = format!("dead letter {old_id} of acme");
    assert!(
        actions.contains(&("ops", "dead_letter.resubmit", resubmitted.as_str())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("ops", "dead_letter.discard", thrown.as_str())),
        "{actions:?}"
    );

    gateway.shutdown().await;
    ingest.shutdown().await;
}
