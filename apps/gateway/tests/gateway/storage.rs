//! Tenants and API keys on both stores: one behaviour, run on the embedded
//! SQLite file and on PostgreSQL (when `DATABASE_URL` is set).

use chrono::{Duration, Utc};
use gateway::{
    keys::{Pepper, TenantId},
    storage::{
        GatewayStore, StoreError, TenantState, postgres::PgGatewayStore, sqlite::SqliteGatewayStore,
    },
    tenancy::{self, Peppers, Refusal},
};

fn peppers(current: &str, previous: Option<&str>) -> Peppers {
    Peppers {
        current: Pepper {
            id: current.into(),
            key: security::Secret::new(format!("pepper {current}")),
        },
        previous: previous.map(|id| Pepper {
            id: id.into(),
            key: security::Secret::new(format!("pepper {id}")),
        }),
    }
}

async fn keys_work_only_as_long_as_they_should(store: impl GatewayStore) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let (acme, globex) = (
        TenantId::parse("acme").unwrap(),
        TenantId::parse("globex").unwrap(),
    );
    store.create_tenant(&acme, "Acme").await.unwrap();
    store.create_tenant(&globex, "").await.unwrap();
    assert!(matches!(
        store.create_tenant(&acme, "again").await,
        Err(StoreError::TenantExists(_))
    ));
    let p1 = peppers("p1", None);
    let scopes = vec!["readings:write".to_owned()];
    let (key, stored) = tenancy::create_key(&store, &p1, &acme, scopes.clone(), "ci", None)
        .await
        .unwrap();
    assert_ne!(
        stored.digest,
        key.reveal().into_bytes(),
        "only a digest is stored"
    );
    let now = Utc::now();
    let check = |text: String, peppers: Peppers| {
        let store = store.clone();
        async move {
            tenancy::authenticate(&store, &peppers, &text, Utc::now())
                .await
                .unwrap()
        }
    };
    let ok = check(key.reveal(), p1.clone()).await.unwrap();
    assert_eq!(
        (ok.tenant.as_str(), ok.scopes.clone()),
        ("acme", scopes.clone())
    );

    // Another tenant's id in the key finds nothing: lookups stay in a tenant.
    let forged = key.reveal().replacen("plk.acme.", "plk.globex.", 1);
    assert_eq!(check(forged, p1.clone()).await, Err(Refusal::Unknown));
    let mut tampered = key.reveal();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert!(matches!(
        check(tampered, p1.clone()).await,
        Err(Refusal::WrongSecret | Refusal::Malformed)
    ));
    assert_eq!(
        check("plk.acme.nope".into(), p1.clone()).await,
        Err(Refusal::Malformed)
    );

    // Pepper rotation: the previous pepper still checks old keys; once
    // dropped, they are refused.
    let p2 = peppers("p2", Some("p1"));
    assert!(check(key.reveal(), p2.clone()).await.is_ok());
    assert_eq!(
        check(key.reveal(), peppers("p2", None)).await,
        Err(Refusal::RetiredPepper)
    );

    // Suspension refuses every key at once; resuming restores them.
    store
        .set_tenant_state(&acme, TenantState::Suspended)
        .await
        .unwrap();
    assert_eq!(
        check(key.reveal(), p1.clone()).await,
        Err(Refusal::Suspended)
    );
    store
        .set_tenant_state(&acme, TenantState::Active)
        .await
        .unwrap();
    assert!(check(key.reveal(), p1.clone()).await.is_ok());

    // Rotation: both keys work during the overlap, then only the new one.
    let (fresh, _) = tenancy::rotate_key(&store, &p1, &acme, &key.id, Duration::hours(1))
        .await
        .unwrap();
    assert!(check(fresh.reveal(), p1.clone()).await.is_ok());
    assert!(check(key.reveal(), p1.clone()).await.is_ok(), "overlap");
    let later = now + Duration::hours(2);
    assert_eq!(
        tenancy::authenticate(&store, &p1, &key.reveal(), later)
            .await
            .unwrap(),
        Err(Refusal::Expired)
    );
    assert!(
        tenancy::authenticate(&store, &p1, &fresh.reveal(), later)
            .await
            .unwrap()
            .is_ok()
    );

    // Revocation is immediate and keeps its first time.
    store
        .revoke_key(&acme, &fresh.id, Utc::now())
        .await
        .unwrap();
    store
        .revoke_key(&acme, &fresh.id, Utc::now() + Duration::days(1))
        .await
        .unwrap();
    assert_eq!(
        check(fresh.reveal(), p1.clone()).await,
        Err(Refusal::Revoked)
    );
    assert!(matches!(
        store.revoke_key(&globex, &fresh.id, Utc::now()).await,
        Err(StoreError::NoKey { .. })
    ));

    // Last use is recorded and never goes back.
    store
        .touch_keys(&[(acme.clone(), key.id.clone(), now)])
        .await
        .unwrap();
    store
        .touch_keys(&[(acme.clone(), key.id.clone(), now - Duration::minutes(5))])
        .await
        .unwrap();
    let listed = store.list_keys(&acme).await.unwrap();
    assert_eq!(listed.len(), 2);
    let old = listed.iter().find(|k| k.id == key.id).unwrap();
    assert_eq!(
        old.last_used_at.map(|t| t.timestamp_micros()),
        Some(now.timestamp_micros())
    );
    assert!(store.list_keys(&globex).await.unwrap().is_empty());
    let tenants = store.list_tenants().await.unwrap();
    assert_eq!(
        tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["acme", "globex"]
    );

    // Daily readings quotas: a tenant's own or the default, per tenant and
    // per day; what does not fit is not counted; given-back readings fit
    // again.
    let today = now.date_naive();
    let tomorrow = today.succ_opt().unwrap();
    store.set_readings_quota(&acme, Some(10)).await.unwrap();
    let reserve = |tenant: &TenantId, day, n| {
        let (store, tenant) = (store.clone(), tenant.clone());
        async move { store.reserve_readings(&tenant, day, n, 5).await.unwrap() }
    };
    let first = reserve(&acme, today, 7).await;
    assert_eq!((first.allowed, first.used, first.quota), (true, 7, 10));
    let over = reserve(&acme, today, 4).await;
    assert_eq!((over.allowed, over.used, over.quota), (false, 7, 10));
    assert!(reserve(&acme, tomorrow, 10).await.allowed, "a new day");
    assert!(
        !reserve(&globex, today, 6).await.allowed,
        "globex has the default, 5"
    );
    assert!(reserve(&globex, today, 5).await.allowed);
    store.release_readings(&acme, today, 3).await.unwrap();
    let after = reserve(&acme, today, 6).await;
    assert_eq!((after.allowed, after.used), (true, 10));
    store.set_readings_quota(&acme, None).await.unwrap();
    assert_eq!(
        reserve(&acme, today, 0).await.quota,
        5,
        "back to the default"
    );
    let listed = store.list_tenants().await.unwrap();
    assert_eq!(listed[0].readings_per_day, None);
    assert!(matches!(
        store
            .set_readings_quota(&TenantId::parse("nobody").unwrap(), Some(1))
            .await,
        Err(StoreError::NoTenant(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_work_only_as_long_as_they_should_on_both_stores() {
    let sqlite = jobs::testing::ScratchSqlite::create("gateway_keys").await;
    keys_work_only_as_long_as_they_should(SqliteGatewayStore::connect(&sqlite.url).await.unwrap())
        .await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create("gateway_keys").await {
        keys_work_only_as_long_as_they_should(PgGatewayStore::new(postgres.pool.clone())).await;
        postgres.drop_database().await;
    }
}
