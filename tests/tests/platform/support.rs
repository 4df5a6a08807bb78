use std::time::Duration;

use service_runtime::{Running, ServiceUrl, Transport};

/// The three gRPC apps, serving on free ports.
pub struct Backends {
    pub ingest: Running,
    pub worker: Running,
    pub numerics: Running,
    /// The embedded database ingest and the worker share (as in the quick
    /// start), held so it outlives them; deleted on drop.
    _worker_db: ScratchDb,
}

impl Backends {
    pub async fn start() -> Self {
        Self::start_with(|_| Transport::Plaintext).await
    }

    /// The three apps, each with the transport `transport(app name)`
    /// gives it.
    pub async fn start_with(transport: impl Fn(&str) -> Transport) -> Self {
        let worker_db = ScratchDb::new();
        let mut ingest = ingest::Config::for_tests(&worker_db.url());
        ingest.common.transport = transport("ingest");
        let mut worker = worker::Config::for_tests(&worker_db.url());
        worker.common.transport = transport("worker");
        let mut numerics = numerics::Config::for_tests();
        numerics.common.transport = transport("numerics");
        Self {
            ingest: ingest::start(ingest).await.unwrap(),
            worker: worker::start(worker).await.unwrap(),
            _worker_db: worker_db,
            numerics: numerics::start(numerics).await.unwrap(),
        }
    }

    /// The three apps wired as in production: the worker calls this
    /// ingest and this numerics (windows close, are aggregated and scored).
    pub async fn start_connected() -> Self {
        let worker_db = ScratchDb::new();
        let ingest = ingest::start(ingest::Config::for_tests(&worker_db.url()))
            .await
            .unwrap();
        let numerics = numerics::start(numerics::Config::for_tests())
            .await
            .unwrap();
        let mut worker = worker::Config::for_tests(&worker_db.url());
        worker.ingest_url = url_of(&ingest);
        worker.numerics_url = url_of(&numerics);
        Self {
            worker: worker::start(worker).await.unwrap(),
            ingest,
            numerics,
            _worker_db: worker_db,
        }
    }

    pub async fn shutdown(self) {
        tokio::join!(
            self.ingest.shutdown(),
            self.worker.shutdown(),
            self.numerics.shutdown()
        );
    }
}

/// A fresh SQLite file in the temp folder, deleted when dropped.
pub struct ScratchDb(std::path::PathBuf);

impl ScratchDb {
    pub fn new() -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("platform-tests-{}-{n}.db", std::process::id())))
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", ".setup.lock"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// The gRPC URL of a running app.
pub fn url_of(running: &Running) -> ServiceUrl {
    ServiceUrl::local(running.grpc_addr.unwrap().port())
}

/// A URL where nothing listens: a port that was free a moment ago.
pub fn nothing_listening() -> ServiceUrl {
    ServiceUrl::local(service_runtime::testing::free_local_addr().unwrap().port())
}

/// Starts the gateway pointed at the given backends.
pub async fn start_gateway(
    ingest: ServiceUrl,
    worker: ServiceUrl,
    numerics: ServiceUrl,
) -> Running {
    let mut config = gateway::Config::for_tests("sqlite::memory:", ingest, worker, numerics);
    config.status_timeout = Duration::from_secs(2);
    gateway::start(config).await.unwrap()
}

/// The console as a browser without JavaScript sees it: a session cookie
/// and forms with their CSRF token.
pub mod console {
    use service_runtime::testing::{TestResponse, http_request};

    /// Every test operator's password (meets the policy).
    pub const PASSWORD: &str = "correct horse battery staple";

    /// A signed-in console session over plain HTTP requests.
    pub struct Browser {
        addr: std::net::SocketAddr,
        cookie: String,
    }

    impl Browser {
        /// Logs `name` in with [`PASSWORD`].
        pub async fn login(addr: std::net::SocketAddr, name: &str) -> Self {
            let response = http_request(
                addr,
                "POST",
                "/console/login",
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Sec-Fetch-Site", "same-origin"),
                ],
                &format!("username={name}&password={}", PASSWORD.replace(' ', "+")),
            )
            .await
            .unwrap();
            assert_eq!(response.status, 303, "{}", response.body);
            let cookie = header(&response, "set-cookie")
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            Self { addr, cookie }
        }

        /// GETs `path` with the session.
        pub async fn get(&self, path: &str) -> TestResponse {
            http_request(self.addr, "GET", path, &[("Cookie", &self.cookie)], "")
                .await
                .unwrap()
        }

        /// Posts the form of the page at `page` (its CSRF token) to `action`,
        /// checking the page holds a form posting there.
        pub async fn confirm(&self, page: &str, action: &str) -> TestResponse {
            self.post_form(page, action, "").await
        }

        /// Posts `form` (URL-encoded fields, without the token) with the
        /// CSRF token of the page at `page` to `action`, checking the page
        /// holds a form posting there.
        pub async fn post_form(&self, page: &str, action: &str, form: &str) -> TestResponse {
            let shown = self.get(page).await;
            assert_eq!(shown.status, 200, "{}", shown.body);
            let html_action = action.replace('&', "&amp;");
            assert!(
                shown
                    .body
                    .contains(&format!("<form method=\"post\" action=\"{html_action}\">")),
                "{}",
                shown.body
            );
            let start = shown.body.find("name=\"csrf\" value=\"").unwrap() + 19;
            let csrf = shown.body[start..].split('"').next().unwrap();
            http_request(
                self.addr,
                "POST",
                action,
                &[
                    ("Cookie", &self.cookie),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Sec-Fetch-Site", "same-origin"),
                ],
                &format!("csrf={csrf}&{form}"),
            )
            .await
            .unwrap()
        }
    }

    /// The first value of header `name`, or empty.
    pub fn header<'a>(response: &'a TestResponse, name: &str) -> &'a str {
        response
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}
