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

/// The console's operators, sessions, recovery codes and audit log.
async fn operators_sessions_and_the_audit_log(store: impl GatewayStore) {
    use gateway::storage::operators::{AuditEntry, Role};
    store.migrate().await.unwrap();
    let ada = store
        .create_operator("ada", "$argon2id$hash-a", Role::Viewer)
        .await
        .unwrap();
    assert_eq!((ada.username.as_str(), ada.role), ("ada", Role::Viewer));
    assert!(matches!(
        store.create_operator("ada", "$argon2id$other", Role::Admin).await,
        Err(StoreError::OperatorExists(name)) if name == "ada"
    ));
    let root = store
        .create_operator("root", "$argon2id$hash-r", Role::Admin)
        .await
        .unwrap();
    let names: Vec<String> = store
        .operators()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.username)
        .collect();
    assert_eq!(names, ["ada", "root"]);

    let now = Utc::now();
    let (a1, a2, r1) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    store
        .create_session(&a1, ada.id, "csrf-a1", now)
        .await
        .unwrap();
    store
        .create_session(&a2, ada.id, "csrf-a2", now)
        .await
        .unwrap();
    store
        .create_session(&r1, root.id, "csrf-r1", now)
        .await
        .unwrap();
    let session = store.session(&a1).await.unwrap().unwrap();
    assert_eq!(session.operator, ada);
    assert_eq!(session.csrf_token, "csrf-a1");
    assert_eq!(session.second_factor_at, None);
    assert_eq!(store.session(&[9u8; 32]).await.unwrap(), None);
    let later = now + Duration::seconds(90);
    store.touch_session(&r1, later, true).await.unwrap();
    let touched = store.session(&r1).await.unwrap().unwrap();
    assert_eq!(
        touched.last_seen_at.timestamp_micros(),
        later.timestamp_micros()
    );
    assert!(touched.second_factor_at.is_some());
    // A password change ends only that operator's sessions.
    store
        .set_password(ada.id, "$argon2id$hash-a2")
        .await
        .unwrap();
    assert_eq!(store.session(&a1).await.unwrap(), None);
    assert_eq!(store.session(&a2).await.unwrap(), None);
    assert!(store.session(&r1).await.unwrap().is_some());
    assert_eq!(
        store.operator("ada").await.unwrap().unwrap().password_hash,
        "$argon2id$hash-a2"
    );
    // Disabling ends sessions too; a role change alone does not.
    store
        .create_session(&a1, ada.id, "csrf", now)
        .await
        .unwrap();
    store.set_role(ada.id, Role::Operator, None).await.unwrap();
    assert_eq!(
        store.session(&a1).await.unwrap().unwrap().operator.role,
        Role::Operator
    );
    store
        .set_role(ada.id, Role::Operator, Some(now))
        .await
        .unwrap();
    assert_eq!(store.session(&a1).await.unwrap(), None);
    assert!(
        store
            .operator("ada")
            .await
            .unwrap()
            .unwrap()
            .disabled_at
            .is_some()
    );
    assert!(matches!(
        store.set_role(9_999, Role::Viewer, None).await,
        Err(StoreError::NoOperator(_))
    ));

    // Recovery codes: each works once, and a new enrolment replaces them.
    store
        .enrol_totp(root.id, &[7u8; 20], &[[10u8; 32], [11u8; 32]])
        .await
        .unwrap();
    assert_eq!(
        store.operator("root").await.unwrap().unwrap().totp_secret,
        Some(vec![7u8; 20])
    );
    assert!(store.use_recovery_code(root.id, &[10u8; 32]).await.unwrap());
    assert!(!store.use_recovery_code(root.id, &[10u8; 32]).await.unwrap());
    assert!(!store.use_recovery_code(ada.id, &[11u8; 32]).await.unwrap());
    store
        .enrol_totp(root.id, &[8u8; 20], &[[12u8; 32]])
        .await
        .unwrap();
    assert!(!store.use_recovery_code(root.id, &[11u8; 32]).await.unwrap());
    assert!(store.use_recovery_code(root.id, &[12u8; 32]).await.unwrap());

    // Reset links: the right operator, unexpired, once.
    let (link, stale) = ([20u8; 32], [21u8; 32]);
    store
        .create_reset(&link, root.id, now + Duration::hours(24))
        .await
        .unwrap();
    store
        .create_reset(&stale, root.id, now - Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        store.use_reset(&link, "ada", now).await.unwrap(),
        None,
        "another operator's name"
    );
    assert_eq!(
        store.use_reset(&stale, "root", now).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store
            .use_reset(&link, "root", now)
            .await
            .unwrap()
            .unwrap()
            .username,
        "root"
    );
    assert_eq!(
        store.use_reset(&link, "root", now).await.unwrap(),
        None,
        "used"
    );

    // Sweeping: idle or too old.
    store
        .create_session(&a2, root.id, "csrf", now - Duration::hours(13))
        .await
        .unwrap();
    assert_eq!(
        store
            .sweep_sessions(now - Duration::minutes(30), now - Duration::hours(12))
            .await
            .unwrap(),
        1
    );
    assert!(store.session(&r1).await.unwrap().is_some());
    assert_eq!(store.end_sessions(root.id).await.unwrap(), 1);

    for (i, action) in ["operator.create", "job.cancel"].iter().enumerate() {
        store
            .record(&AuditEntry {
                at: now + Duration::seconds(i as i64),
                operator: "root".into(),
                action: (*action).into(),
                target: format!("job {i}"),
                detail: String::new(),
            })
            .await
            .unwrap();
    }
    let log = store.audit_log(10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].action, "job.cancel", "newest first");
    assert_eq!(store.audit_log(1).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_sessions_and_the_audit_log_on_both_stores() {
    let sqlite = jobs::testing::ScratchSqlite::create("gateway_operators").await;
    operators_sessions_and_the_audit_log(SqliteGatewayStore::connect(&sqlite.url).await.unwrap())
        .await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create("gateway_operators").await {
        operators_sessions_and_the_audit_log(PgGatewayStore::new(postgres.pool.clone())).await;
        postgres.drop_database().await;
    }
}
