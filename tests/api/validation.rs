//! Whole-request errors: the right status, a stable code, a message that names the field.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("errors are JSON");
    let code = body["error"]["code"].as_str().expect("a code").to_owned();
    let message = body["error"]["message"]
        .as_str()
        .expect("a message")
        .to_owned();
    (status, code, message)
}

/// A bad request: name, body, content type, then the status, code and message part expected.
struct Case(
    &'static str,
    String,
    Option<&'static str>,
    StatusCode,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn each_bad_request_gets_its_status_code_and_a_message_naming_the_field() {
    let app = spawn_simulated(&["--max-body-bytes", "100000"]).await;
    let json = Some("application/json");
    let too_many = json!({"titles": vec!["t"; 2001]}).to_string();
    let too_big = json!({"titles": ["x".repeat(100_001)]}).to_string();
    let cases: [Case; 12] = [
        Case(
            "an array for a body",
            r#"["a"]"#.into(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            r#"the body must be a JSON object with a "titles" array"#,
        ),
        Case(
            "an array of arrays",
            r#"[["x"], null]"#.into(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            r#"like {"titles": ["a title", "another"]}"#,
        ),
        Case(
            "a string for a body",
            r#""a title""#.into(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            r#"the body must be a JSON object with a "titles" array"#,
        ),
        Case(
            "no titles",
            r#"{"titles":[]}"#.into(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "titles: must hold 1 to 2000 titles, got 0",
        ),
        Case(
            "2001 titles",
            too_many,
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "titles: must hold 1 to 2000 titles, got 2001",
        ),
        Case(
            "titles not a list",
            r#"{"titles":"one"}"#.into(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "titles: invalid type: string",
        ),
        Case(
            "a number in the list",
            r#"{"titles":["a",3]}"#.into(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "titles[1]: invalid type: integer",
        ),
        Case(
            "missing field",
            r#"{"title":["a"]}"#.into(),
            json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "titles: missing field `titles`",
        ),
        Case(
            "invalid JSON",
            r#"{"titles":["a""#.into(),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "not valid JSON",
        ),
        Case(
            "no content type",
            r#"{"titles":["a"]}"#.into(),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        Case(
            "wrong content type",
            r#"{"titles":["a"]}"#.into(),
            Some("text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        Case(
            "body over the limit",
            too_big,
            json,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "100000 bytes",
        ),
    ];
    for Case(name, body, content_type, status, code, message) in cases {
        let (got_status, got_code, got_message) =
            error_of(app.post_raw(body, content_type).await).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{name}: {got_message}"
        );
        assert!(
            got_message.contains(message),
            "{name}: {got_message:?} lacks {message:?}"
        );
        assert!(
            !got_message.contains("ClassifyBatchRequest"),
            "{name}: no internal type names: {got_message:?}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn the_batch_limit_follows_configuration() {
    let app = spawn_simulated(&["--max-batch", "3"]).await;
    let (status, body) = app.post_titles(&["a", "b", "c", "d"]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["error"]["message"],
        "titles: must hold 1 to 3 titles, got 4"
    );
    app.classify(&["a", "b", "c"]).await;
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = spawn_simulated(&[]).await;
    let (status, code, _) = error_of(app.client.get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, code, _) = error_of(
        app.client
            .get(app.url("/classify-batch"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_busy_port_names_the_settings_that_choose_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let message = crate::helpers::startup_error(&["--simulate", "--listen", &addr]).await;
    assert!(message.contains(&addr), "{message}");
    assert!(
        message.contains("--listen, HNC_LISTEN or PORT"),
        "{message}"
    );
}

#[tokio::test]
async fn classify_against_nothing_says_to_start_the_service_or_go_direct() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = crate::helpers::scratch("nothing-answers");
    let input = dir.join("titles.txt");
    std::fs::write(&input, "A title\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
        .args(["classify", "--url", &url, "--batch-deadline-s", "1"])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(
        stderr.contains("hn-classifier serve") && stderr.contains("--direct"),
        "{stderr}"
    );
}
