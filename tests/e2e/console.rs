use scenefin_e2e::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landing_page_is_served_at_the_root() {
    // Arrange
    let app = TestApp::spawn().await.expect("app starts");

    // Act
    let res = app.get("/").await;

    // Assert
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let body = res.text().await.expect("body");
    assert!(body.contains("<h1>scenefin</h1>"));
    app.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_page_is_a_problem_json_404() {
    let app = TestApp::spawn().await.expect("app starts");

    let res = app.get("/no/such/page").await;

    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["code"], "not_found");
    app.host.shutdown().await;
}
