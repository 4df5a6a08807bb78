//! The ops console in-process, as a browser would use it over HTTP: login
//! with the session cookie's attributes and fixation, logout, the CSRF
//! token and the cross-site check, idle expiry, roles, the admins' second
//! factor with recovery codes, login rate limits, a password change ending
//! other sessions, escaping, and the CSP report endpoint. (The same flows
//! in a real browser are the browser tests' job.)

use std::time::Duration;

use gateway::storage::{operators::Role, sqlite::SqliteGatewayStore};
use service_runtime::{
    Running, ServiceUrl,
    testing::{TestResponse, http_request},
};

struct Console {
    gateway: Running,
    store: SqliteGatewayStore,
    sqlite: jobs::testing::ScratchSqlite,
}

const PASSWORD: &str = "correct horse battery staple";

fn nowhere() -> ServiceUrl {
    let addr = service_runtime::testing::free_local_addr().unwrap();
    ServiceUrl::local(addr.port())
}

impl Console {
    async fn start(configure: impl FnOnce(&mut gateway::Config)) -> Self {
        let sqlite = jobs::testing::ScratchSqlite::create("gateway_console").await;
        let mut config = gateway::Config::for_tests(&sqlite.url, nowhere(), nowhere(), nowhere());
        configure(&mut config);
        let gateway = gateway::start(config).await.unwrap();
        let store = SqliteGatewayStore::connect(&sqlite.url).await.unwrap();
        Self {
            gateway,
            store,
            sqlite,
        }
    }

    async fn operator(&self, name: &str, role: Role) {
        gateway::console::create_operator(&self.store, name, PASSWORD, role, "test")
            .await
            .unwrap();
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        extra: &[(&str, &str)],
        form: &[(&str, &str)],
    ) -> TestResponse {
        let cookie_header = cookie.map(|c| format!("__Host-console={c}"));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(cookie) = &cookie_header {
            headers.push(("Cookie", cookie));
        }
        let body = encode(form);
        if method == "POST" {
            headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        http_request(
            self.gateway.http_addr.unwrap(),
            method,
            path,
            &headers,
            &body,
        )
        .await
        .unwrap()
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> TestResponse {
        self.request("GET", path, cookie, &[], &[]).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> TestResponse {
        // What a browser sends with a form posted from the console itself.
        self.request(
            "POST",
            path,
            cookie,
            &[("Sec-Fetch-Site", "same-origin")],
            form,
        )
        .await
    }

    /// Logs in; returns the session cookie's token and where it led.
    async fn login(&self, name: &str, password: &str) -> (String, String) {
        let response = self
            .post(
                "/console/login",
                None,
                &[("username", name), ("password", password)],
            )
            .await;
        assert_eq!(response.status, 303, "{}", response.body);
        (session_cookie(&response).unwrap(), location(&response))
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.sqlite.remove().await;
    }
}

fn encode(form: &[(&str, &str)]) -> String {
    fn escape(raw: &str) -> String {
        raw.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    form.iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn header<'a>(response: &'a TestResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn location(response: &TestResponse) -> String {
    header(response, "location").unwrap_or_default().to_owned()
}

/// The session token a response sets (None if it sets none or clears it).
fn session_cookie(response: &TestResponse) -> Option<String> {
    let cookie = header(response, "set-cookie")?;
    let value = cookie.strip_prefix("__Host-console=")?.split(';').next()?;
    (!value.is_empty()).then(|| value.to_owned())
}

/// The CSRF token of the first form on a page.
fn csrf(page: &TestResponse) -> String {
    let start = page.body.find("name=\"csrf\" value=\"").unwrap() + 19;
    page.body[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn an_operator_logs_in_with_a_fresh_hardened_cookie_and_logs_out() {
    let console = Console::start(|_| {}).await;
    console.operator("ada", Role::Viewer).await;

    let signed_out = console.get("/console", None).await;
    assert_eq!(signed_out.status, 303);
    assert_eq!(location(&signed_out), "/console/login");

    let login = console.get("/console/login", None).await;
    assert_eq!(login.status, 200);
    let csp = header(&login, "content-security-policy").unwrap();
    assert!(csp.contains("script-src 'nonce-"), "{csp}");
    assert!(csp.contains("'strict-dynamic'; style-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("report-uri /console/csp-report"), "{csp}");
    assert_eq!(header(&login, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&login, "cache-control"), Some("no-store"));
    assert!(
        login.body.contains("<label for=\"password\">"),
        "{}",
        login.body
    );

    // A wrong password, with a cookie planted by someone else.
    let wrong = console
        .request(
            "POST",
            "/console/login",
            Some("planted-by-an-attacker"),
            &[("Sec-Fetch-Site", "same-origin")],
            &[("username", "ada"), ("password", "not the password at all")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("username or password: not recognised"));
    // An unknown user gets the very same answer.
    let unknown = console
        .post(
            "/console/login",
            None,
            &[("username", "nobody"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(unknown.status, 401);
    assert!(
        unknown
            .body
            .contains("username or password: not recognised")
    );

    let right = console
        .request(
            "POST",
            "/console/login",
            Some("planted-by-an-attacker"),
            &[("Sec-Fetch-Site", "same-origin")],
            &[("username", "ada"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(right.status, 303, "{}", right.body);
    assert_eq!(location(&right), "/console");
    let set_cookie = header(&right, "set-cookie").unwrap();
    assert!(
        set_cookie.ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax"),
        "{set_cookie}"
    );
    let token = session_cookie(&right).unwrap();
    assert_ne!(
        token, "planted-by-an-attacker",
        "the session id is new at login"
    );
    // The planted value is no session.
    assert_eq!(
        console
            .get("/console", Some("planted-by-an-attacker"))
            .await
            .status,
        303
    );

    let overview = console.get("/console", Some(&token)).await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert!(overview.body.contains("Platform overview"));
    assert!(overview.body.contains("ada (viewer)"));
    // Every app is down (nothing listens behind this gateway) and says so.
    assert!(overview.body.contains("Not every app is serving"));
    // The page's script carries this response's nonce.
    let csp = header(&overview, "content-security-policy").unwrap();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(
        overview.body.contains(&format!(
            "<script src=\"/console/static/refresh.js\" nonce=\"{nonce}\">"
        )),
        "{}",
        overview.body
    );
    let again = console.get("/console", Some(&token)).await;
    assert!(!again.body.contains(nonce), "a nonce is never used twice");

    // Logging out needs the session's CSRF token.
    let token_less = console.post("/console/logout", Some(&token), &[]).await;
    assert_eq!(token_less.status, 403);
    assert!(token_less.body.starts_with("csrf: "), "{}", token_less.body);
    let out = console
        .post(
            "/console/logout",
            Some(&token),
            &[("csrf", &csrf(&overview))],
        )
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(session_cookie(&out), None, "the cookie is cleared");
    assert_eq!(console.get("/console", Some(&token)).await.status, 303);
    console.stop().await;
}

#[tokio::test]
async fn cross_site_form_posts_are_refused_even_with_a_valid_session_and_token() {
    let console = Console::start(|_| {}).await;
    console.operator("ada", Role::Viewer).await;
    let (token, _) = console.login("ada", PASSWORD).await;
    let page = console.get("/console/password", Some(&token)).await;
    let form = [("csrf", csrf(&page))];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for headers in [
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Origin", "https://evil.example")],
    ] {
        let forged = console
            .request(
                "POST",
                "/console/logout-everywhere",
                Some(&token),
                &headers,
                &form,
            )
            .await;
        assert_eq!(forged.status, 403, "{headers:?}");
        assert!(
            forged.body.starts_with("cross-site request refused"),
            "{}",
            forged.body
        );
        assert!(header(&forged, "content-security-policy").is_some());
    }
    // The session survived every forgery.
    assert_eq!(console.get("/console", Some(&token)).await.status, 200);
    // The same post from the console's own page goes through.
    let origin = format!("http://{}", console.gateway.http_addr.unwrap());
    let own = console
        .request(
            "POST",
            "/console/logout-everywhere",
            Some(&token),
            &[("Origin", &origin)],
            &form,
        )
        .await;
    assert_eq!(own.status, 303);
    assert_eq!(console.get("/console", Some(&token)).await.status, 303);
    console.stop().await;
}

#[tokio::test]
async fn an_idle_session_ends_and_viewers_cannot_reach_admin_pages() {
    let console = Console::start(|config| {
        config.console.idle_timeout = Duration::from_millis(600);
    })
    .await;
    console.operator("ada", Role::Viewer).await;
    let (token, _) = console.login("ada", PASSWORD).await;
    assert_eq!(console.get("/console", Some(&token)).await.status, 200);
    for page in ["/console/operators", "/console/audit"] {
        assert_eq!(console.get(page, Some(&token)).await.status, 403, "{page}");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let idle = console.get("/console", Some(&token)).await;
    assert_eq!(idle.status, 303);
    assert_eq!(location(&idle), "/console/login");
    console.stop().await;
}

#[tokio::test]
async fn admins_enrol_a_second_factor_and_recovery_codes_work_once() {
    let console = Console::start(|_| {}).await;
    console.operator("root", Role::Admin).await;
    let (token, next) = console.login("root", PASSWORD).await;
    assert_eq!(next, "/console/second-factor/enrol");
    // Nothing else opens before the second factor.
    for page in ["/console", "/console/operators", "/console/password"] {
        let blocked = console.get(page, Some(&token)).await;
        assert_eq!(blocked.status, 303, "{page}");
        assert_eq!(location(&blocked), "/console/second-factor/enrol");
    }
    let enrol = console
        .get("/console/second-factor/enrol", Some(&token))
        .await;
    assert_eq!(enrol.status, 200);
    let start = enrol.body.find("name=\"secret\" value=\"").unwrap() + 21;
    let secret_b32 = enrol.body[start..].split('"').next().unwrap().to_owned();
    let secret = base32_decode(&secret_b32);
    let csrf_token = csrf(&enrol);
    let wrong = console
        .post(
            "/console/second-factor/enrol",
            Some(&token),
            &[
                ("csrf", &csrf_token),
                ("secret", &secret_b32),
                ("code", "000000"),
            ],
        )
        .await;
    // (One chance in a million that 000000 is right now.)
    assert_eq!(wrong.status, 422, "{}", wrong.body);
    assert!(wrong.body.contains("code: does not match this key"));
    let code = gateway::console::totp::code(&secret, now());
    let enrolled = console
        .post(
            "/console/second-factor/enrol",
            Some(&token),
            &[
                ("csrf", &csrf_token),
                ("secret", &secret_b32),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);
    let codes: Vec<String> = enrolled
        .body
        .split("<li><code>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{}", enrolled.body);
    assert_eq!(
        console.get("/console/operators", Some(&token)).await.status,
        200
    );
    let audit = console.get("/console/audit", Some(&token)).await;
    assert!(audit.body.contains("operator.totp_enrol"), "{}", audit.body);

    // A later login asks for the code; a recovery code works once.
    let (second, next) = console.login("root", PASSWORD).await;
    assert_eq!(next, "/console/second-factor");
    assert_eq!(console.get("/console", Some(&second)).await.status, 303);
    let ask = console.get("/console/second-factor", Some(&second)).await;
    let used = console
        .post(
            "/console/second-factor",
            Some(&second),
            &[("csrf", &csrf(&ask)), ("code", &codes[3].to_uppercase())],
        )
        .await;
    assert_eq!(used.status, 303, "{}", used.body);
    assert_eq!(console.get("/console", Some(&second)).await.status, 200);
    let (third, _) = console.login("root", PASSWORD).await;
    let ask = console.get("/console/second-factor", Some(&third)).await;
    let reused = console
        .post(
            "/console/second-factor",
            Some(&third),
            &[("csrf", &csrf(&ask)), ("code", &codes[3])],
        )
        .await;
    assert_eq!(reused.status, 401);
    assert!(reused.body.contains("code: not recognised"));
    // The enrolment spent its code: the same code does not sign in
    // (replay), the authenticator's next one does (one step of drift), and
    // then not again.
    let replayed = console
        .post(
            "/console/second-factor",
            Some(&third),
            &[("csrf", &csrf(&ask)), ("code", &code)],
        )
        .await;
    assert_eq!(replayed.status, 401, "{}", replayed.body);
    assert!(
        replayed.body.contains("code: already used"),
        "{}",
        replayed.body
    );
    let next_code = gateway::console::totp::code(&secret, now() + 30);
    let by_app = console
        .post(
            "/console/second-factor",
            Some(&third),
            &[("csrf", &csrf(&ask)), ("code", &next_code)],
        )
        .await;
    assert_eq!(by_app.status, 303, "{}", by_app.body);
    assert_eq!(console.get("/console", Some(&third)).await.status, 200);
    let (fourth, _) = console.login("root", PASSWORD).await;
    let ask = console.get("/console/second-factor", Some(&fourth)).await;
    let again = console
        .post(
            "/console/second-factor",
            Some(&fourth),
            &[("csrf", &csrf(&ask)), ("code", &next_code)],
        )
        .await;
    assert_eq!(again.status, 401, "a code works once: {}", again.body);
    console.stop().await;
}

#[tokio::test]
async fn failed_logins_are_limited_per_account() {
    let console = Console::start(|_| {}).await;
    console.operator("ada", Role::Viewer).await;
    for _ in 0..5 {
        let failed = console
            .post(
                "/console/login",
                None,
                &[("username", "ada"), ("password", "a wrong password, again")],
            )
            .await;
        assert_eq!(failed.status, 401);
    }
    let limited = console
        .post(
            "/console/login",
            None,
            &[("username", "ada"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(limited.status, 429);
    assert!(
        limited
            .body
            .contains("too many failed attempts for this account")
    );
    // Another account is not locked by ada's failures.
    console.operator("bob", Role::Viewer).await;
    let (_, next) = console.login("bob", PASSWORD).await;
    assert_eq!(next, "/console");
    console.stop().await;
}

#[tokio::test]
async fn a_password_change_ends_every_other_session_and_checks_the_policy() {
    let console = Console::start(|_| {}).await;
    console.operator("ada", Role::Operator).await;
    let (here, _) = console.login("ada", PASSWORD).await;
    let (elsewhere, _) = console.login("ada", PASSWORD).await;
    let page = console.get("/console/password", Some(&here)).await;
    let token = csrf(&page);
    let weak = console
        .post(
            "/console/password",
            Some(&here),
            &[
                ("csrf", &token),
                ("current", PASSWORD),
                ("new", "password1234"),
            ],
        )
        .await;
    assert_eq!(weak.status, 422);
    assert!(
        weak.body
            .contains("password: is one of the 20,000 most common"),
        "{}",
        weak.body
    );
    let wrong_current = console
        .post(
            "/console/password",
            Some(&here),
            &[
                ("csrf", &token),
                ("current", "not it at all"),
                ("new", "a much better passphrase"),
            ],
        )
        .await;
    assert_eq!(wrong_current.status, 422);
    assert!(
        wrong_current
            .body
            .contains("current: not your current password")
    );
    let changed = console
        .post(
            "/console/password",
            Some(&here),
            &[
                ("csrf", &token),
                ("current", PASSWORD),
                ("new", "a much better passphrase"),
            ],
        )
        .await;
    assert_eq!(changed.status, 303, "{}", changed.body);
    let renewed = session_cookie(&changed).unwrap();
    assert_ne!(renewed, here);
    assert_eq!(console.get("/console", Some(&elsewhere)).await.status, 303);
    assert_eq!(console.get("/console", Some(&here)).await.status, 303);
    assert_eq!(console.get("/console", Some(&renewed)).await.status, 200);
    let (_, next) = console.login("ada", "a much better passphrase").await;
    assert_eq!(next, "/console");
    console.stop().await;
}

#[tokio::test]
async fn hostile_input_is_escaped_and_csp_reports_are_kept() {
    let console = Console::start(|_| {}).await;
    let hostile = "\"><script>alert(1)</script>";
    let echoed = console
        .post(
            "/console/login",
            None,
            &[("username", hostile), ("password", "whatever it is here")],
        )
        .await;
    assert_eq!(echoed.status, 401);
    assert!(!echoed.body.contains("<script>alert(1)"), "{}", echoed.body);
    assert!(
        echoed
            .body
            .contains("value=\"&#34;&#62;&#60;script&#62;alert(1)&#60;/script&#62;\""),
        "{}",
        echoed.body
    );

    let report = r#"{"csp-report":{"document-uri":"http://127.0.0.1/console","violated-directive":"script-src"}}"#;
    let sent = http_request(
        console.gateway.http_addr.unwrap(),
        "POST",
        "/console/csp-report",
        &[
            ("Content-Type", "application/csp-report"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        report,
    )
    .await
    .unwrap();
    assert_eq!(sent.status, 204);
    let kept =
        service_runtime::testing::http_get(console.gateway.admin_addr, "/console/csp-reports", &[])
            .await
            .unwrap();
    assert_eq!(kept.status, 200);
    assert!(kept.body.contains("violated-directive"), "{}", kept.body);
    console.stop().await;
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn base32_decode(raw: &str) -> Vec<u8> {
    let (mut buffer, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for c in raw.chars() {
        let value = match c {
            'A'..='Z' => c as u64 - 'A' as u64,
            '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => panic!("{c} in {raw}"),
        };
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    out
}

#[tokio::test]
async fn operators_create_revoke_and_rotate_a_tenants_keys_and_viewers_only_look() {
    use gateway::{
        keys::TenantId,
        storage::{GatewayStore as _, operators::OperatorStore as _},
    };
    let console = Console::start(|_| {}).await;
    let acme = TenantId::parse("acme").unwrap();
    console
        .store
        .create_tenant(&acme, "Acme <Corp>")
        .await
        .unwrap();
    console.operator("ops", Role::Operator).await;
    console.operator("eve", Role::Viewer).await;
    let (ops, _) = console.login("ops", PASSWORD).await;

    let list = console.get("/console/tenants", Some(&ops)).await;
    assert_eq!(list.status, 200);
    assert!(
        list.body
            .contains("<a href=\"/console/tenants/acme\">acme</a>"),
        "{}",
        list.body
    );
    assert!(list.body.contains("Acme &#60;Corp&#62;"), "{}", list.body);

    let page = console.get("/console/tenants/acme", Some(&ops)).await;
    assert!(page.body.contains("No key yet."));
    let token = csrf(&page);
    let none = console
        .post(
            "/console/tenants/acme/keys",
            Some(&ops),
            &[("csrf", &token), ("name", "ci")],
        )
        .await;
    assert_eq!(none.status, 422);
    assert!(
        none.body.contains("scope: at least one scope is needed"),
        "{}",
        none.body
    );
    let bad_days = console
        .post(
            "/console/tenants/acme/keys",
            Some(&ops),
            &[
                ("csrf", &token),
                ("scope", "results:read"),
                ("expires_in_days", "soon"),
            ],
        )
        .await;
    assert!(
        bad_days
            .body
            .contains("expires_in_days: &#34;soon&#34; must be a whole number"),
        "{}",
        bad_days.body
    );
    let created = console
        .post(
            "/console/tenants/acme/keys",
            Some(&ops),
            &[
                ("csrf", &token),
                ("name", "ci bot"),
                ("scope", "readings:write"),
                ("scope", "results:read"),
                ("expires_in_days", "30"),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let start = created.body.find("value=\"plk.acme.").unwrap() + 7;
    let secret = created.body[start..].split('"').next().unwrap().to_owned();
    assert!(created.body.contains("shown only once"));
    let keys = console.store.list_keys(&acme).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].scopes, ["readings:write", "results:read"]);
    assert!(keys[0].expires_at.is_some());
    let again = console.get("/console/tenants/acme", Some(&ops)).await;
    assert!(!again.body.contains(&secret), "the secret is shown once");
    assert!(again.body.contains("readings:write, results:read"));
    assert!(secret.contains(keys[0].id.as_str()));

    // Rotate: a new key shown once, the old one expiring within a day.
    let key = keys[0].id.to_string();
    let confirm = console
        .get(
            &format!("/console/tenants/acme/keys/{key}/rotate"),
            Some(&ops),
        )
        .await;
    assert!(confirm.body.contains("Rotate key"), "{}", confirm.body);
    let rotated = console
        .post(
            &format!("/console/tenants/acme/keys/{key}/rotate"),
            Some(&ops),
            &[("csrf", &csrf(&confirm))],
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert!(rotated.body.contains("value=\"plk.acme."));
    let keys = console.store.list_keys(&acme).await.unwrap();
    assert_eq!(keys.len(), 2);
    let old = keys.iter().find(|k| k.id.to_string() == key).unwrap();
    assert!(old.expires_at.unwrap() <= chrono::Utc::now() + chrono::Duration::hours(24));

    // Revoke the new one.
    let fresh = keys
        .iter()
        .find(|k| k.id.to_string() != key)
        .unwrap()
        .id
        .to_string();
    let confirm = console
        .get(
            &format!("/console/tenants/acme/keys/{fresh}/revoke"),
            Some(&ops),
        )
        .await;
    let revoked = console
        .post(
            &format!("/console/tenants/acme/keys/{fresh}/revoke"),
            Some(&ops),
            &[("csrf", &csrf(&confirm))],
        )
        .await;
    assert_eq!(revoked.status, 200);
    assert!(revoked.body.contains(&format!("Key {fresh} revoked.")));
    let keys = console.store.list_keys(&acme).await.unwrap();
    assert!(
        keys.iter()
            .find(|k| k.id.to_string() == fresh)
            .unwrap()
            .revoked_at
            .is_some()
    );

    // Viewers see keys (never secrets) but change nothing.
    let (eve, _) = console.login("eve", PASSWORD).await;
    let seen = console.get("/console/tenants/acme", Some(&eve)).await;
    assert_eq!(seen.status, 200);
    assert!(!seen.body.contains("Create a key"));
    assert_eq!(
        console
            .post(
                "/console/tenants/acme/keys",
                Some(&eve),
                &[("csrf", &csrf(&seen)), ("scope", "results:read")]
            )
            .await
            .status,
        403
    );
    assert_eq!(console.store.list_keys(&acme).await.unwrap().len(), 2);
    assert_eq!(
        console
            .get("/console/tenants/nobody", Some(&eve))
            .await
            .status,
        404
    );

    let log = console.store.audit_log(50).await.unwrap();
    for action in ["key.create", "key.rotate", "key.revoke"] {
        assert!(
            log.iter()
                .any(|e| e.action == action && e.operator == "ops"),
            "{action}"
        );
    }
    console.stop().await;
}

#[tokio::test]
async fn an_admins_one_time_link_resets_a_password_once_and_ends_the_old_sessions() {
    use gateway::storage::operators::OperatorStore as _;
    let owned = Console::start(|_| {}).await;
    let console = &owned;
    console.operator("ada", Role::Viewer).await;
    console.operator("root", Role::Admin).await;
    let root_id = console.store.operator("root").await.unwrap().unwrap().id;
    let secret = [9u8; 20];
    console
        .store
        .enrol_totp(root_id, &secret, &[])
        .await
        .unwrap();
    let (ada_session, _) = console.login("ada", PASSWORD).await;
    let (root, _) = console.login("root", PASSWORD).await;
    let ask = console.get("/console/second-factor", Some(&root)).await;
    let code = gateway::console::totp::code(&secret, now());
    console
        .post(
            "/console/second-factor",
            Some(&root),
            &[("csrf", &csrf(&ask)), ("code", &code)],
        )
        .await;
    let operators = console.get("/console/operators", Some(&root)).await;
    assert_eq!(operators.status, 200, "{}", operators.body);
    let made = console
        .post(
            "/console/operators/reset",
            Some(&root),
            &[("csrf", &csrf(&operators)), ("username", "ada")],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let start = made.body.find("/console/reset#").unwrap() + 15;
    let token: String = made.body[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    assert_eq!(token.len(), 43, "{}", made.body);

    let page = console.get("/console/reset", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("<script src=\"/console/static/reset.js\" nonce=\"")
    );
    let reset = |name: &'static str, code: String, new: &'static str| async move {
        console
            .post(
                "/console/reset",
                None,
                &[("username", name), ("code", &code), ("new", new)],
            )
            .await
    };
    let wrong_user = reset("root", token.clone(), "a brand new passphrase").await;
    assert_eq!(wrong_user.status, 422);
    assert!(
        wrong_user
            .body
            .contains("code: not a valid reset link for this username")
    );
    let weak = reset("ada", token.clone(), "password1234").await;
    assert_eq!(weak.status, 422);
    assert!(
        weak.body
            .contains("password: is one of the 20,000 most common")
    );
    let done = reset("ada", token.clone(), "a brand new passphrase").await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(location(&done), "/console/login");
    let again = reset("ada", token.clone(), "yet another passphrase").await;
    assert_eq!(again.status, 422, "a link works once");

    assert_eq!(
        console.get("/console", Some(&ada_session)).await.status,
        303
    );
    let old = console
        .post(
            "/console/login",
            None,
            &[("username", "ada"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(old.status, 401);
    let (_, next) = console.login("ada", "a brand new passphrase").await;
    assert_eq!(next, "/console");
    let log = console.store.audit_log(20).await.unwrap();
    for action in ["operator.reset_link", "operator.password_reset"] {
        assert!(log.iter().any(|e| e.action == action), "{action}");
    }
    // Viewers cannot make links.
    let (ada, _) = console.login("ada", "a brand new passphrase").await;
    let refused = console
        .post(
            "/console/operators/reset",
            Some(&ada),
            &[("csrf", "x"), ("username", "root")],
        )
        .await;
    assert_eq!(refused.status, 403);
    owned.stop().await;
}
