//! The OpenAPI document: served, browsable, true to the router, and equal to the checked-in copy.

use axum::http::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_served_document_matches_docs_openapi_json() {
    let app = spawn_simulated(&[]).await;
    let (status, served) = get(&app.url("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, hn_classifier::api::document_json());

    let path = format!("{}/docs/openapi.json", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{served}\n")).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        checked_in.trim_end(),
        served,
        "docs/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test --test api openapi` and commit it"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn every_documented_path_is_served_and_the_docs_page_renders() {
    let dir = std::env::temp_dir().join(format!("hnc-openapi-jobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let app = spawn_simulated(&["--data-dir", dir.to_str().unwrap()]).await;
    let document: Value = serde_json::from_str(&hn_classifier::api::document_json()).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    // A job for the paths that name one.
    let job: Value = app
        .client
        .post(app.url("/jobs"))
        .json(&serde_json::json!({"titles": ["Rust"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();

    for (path, operations) in document["paths"].as_object().unwrap() {
        let path = path.replace("{id}", id);
        for method in operations.as_object().unwrap().keys() {
            let request = app
                .client
                .request(method.to_uppercase().parse().unwrap(), app.url(&path));
            let status = request
                .json(&serde_json::json!({"titles": ["Rust"]}))
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "{method} {path} answered {status}");
        }
    }
    let (status, page) = get(&app.url("/docs")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("/openapi.json"),
        "the page points at the document"
    );
    assert!(
        !page.contains("https://"),
        "the page loads nothing from another host: {page}"
    );
    let viewer = app
        .client
        .get(app.url("/docs/scalar.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), StatusCode::OK);
    let script = viewer.bytes().await.unwrap();
    assert!(
        script.len() > 1_000_000,
        "the viewer is served from the binary"
    );
    app.shutdown().await;
}
