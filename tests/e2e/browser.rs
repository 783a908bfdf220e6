//! The pages in headless Chromium (Debian's `chromium`, driven by `playwright-core` from npm; `cargo xtask test`
//! installs both): the customer's mini-program (tests/browser/app.mjs) and the operator console. Screenshots go to
//! `target/browser-artifacts/`.

use std::path::Path;
use std::process::Command;

use scenefin_e2e::{OPERATOR_TOKEN, TestApp, workspace};
use serde_json::json;

/// Runs a Node script of tests/browser with the app's address and the operator token; its output if it succeeds.
async fn node(script: &'static str, app: &TestApp, extra: Vec<String>) -> String {
    let dir = workspace().join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&base)
            .arg(OPERATOR_TOKEN)
            .args(&extra)
            .current_dir(&dir)
            .env("CHROMIUM", &chromium)
            .output()
    })
    .await
    .expect("join")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The customer's mini-program on a 390×844 phone, in Chinese and in English: login (a friend's code, a stale
/// promotion link, a mistyped code), a bill paid with a coupon where a double tap places one order, coupons and
/// check-in, the campus card, property fees with a lost answer and a reload (one order), referral progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mini_program_walks_every_customer_journey_in_both_languages() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let script_dir = workspace().join("tests/browser");
    assert!(
        std::path::Path::new(&chromium).exists() && script_dir.join("node_modules/playwright-core").exists(),
        "browser tests need Debian's chromium and `npm ci` in tests/browser (`cargo xtask test` installs both)"
    );
    let app = TestApp::spawn_demo().await.expect("app");
    // The same seed as `cargo xtask up --demo`, through the real APIs (signed partner calls included).
    let seeded = node("seed.mjs", &app, vec![]).await;
    assert!(seeded.contains("demo data seeded"), "{seeded}");
    let again = node("seed.mjs", &app, vec![]).await;
    assert!(again.contains("exists already"), "seeding twice leaves the data alone: {again}");
    let artefacts = workspace().join("target/browser-artifacts").display().to_string();
    let stdout = node("app.mjs", &app, vec![artefacts]).await;
    assert!(stdout.contains("mini-program: all checks passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_identity_and_gateway_are_refused_outside_demo_mode() {
    let app = TestApp::spawn().await.expect("app");
    for path in ["/api/demo/identity", "/api/demo/payments"] {
        let r = app.send("POST", path, Some(&json!({"persona": "alice"})), None).await;
        assert_eq!((r.status, r.body["code"].as_str()), (404, Some("demo_disabled")), "{path}: {:?}", r.body);
    }
    let page = app.get("/app").await;
    assert_eq!(page.status(), 200, "the pages themselves are always served");
    let csp = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
}

/// The operator console as an operator sees it, at 1440×900 and at 390 px, in Chinese and in English: every view,
/// ¥ amounts that add up, the conversion explanation, a bad date range explained beside its field (see
/// tests/browser/console.mjs). Screenshots go to `target/browser-artifacts/console-*.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_every_view_in_both_languages_at_desktop_and_phone_width() {
    let ready = Path::new(&std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())).exists()
        && workspace().join("tests/browser/node_modules/playwright-core").exists();
    assert!(ready, "the console test needs Debian's chromium and `npm ci` in tests/browser (`cargo xtask test`)");
    let app = TestApp::spawn_demo().await.expect("app");
    let seeded = node("seed.mjs", &app, vec![]).await;
    assert!(seeded.contains("demo data seeded"), "{seeded}");
    let artefacts = workspace().join("target/browser-artifacts").display().to_string();
    let staff_secret = scenefin_e2e::STAFF_IDENTITY_SECRET.to_owned();
    let stdout = node("console.mjs", &app, vec![artefacts, staff_secret]).await;
    println!("{stdout}");
    assert!(stdout.contains("console walk: all checks passed"), "{stdout}");
}
