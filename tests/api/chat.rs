//! Chat Completions mode (`HNC_UPSTREAM_API=chat`) against the simulator's strict
//! `/v1/chat/completions`: same results as the Responses API, singly and packed.

use crate::helpers::*;

#[tokio::test]
async fn chat_mode_gives_the_responses_api_labels_singly_and_in_packs() {
    let titles = data_lines("hn_titles_1000.txt")[..60].to_vec();
    let responses = spawn_simulated(&[]).await;
    let chat = spawn_simulated(&["--upstream-api", "chat"]).await;
    let chat_packed = spawn_simulated(&["--upstream-api", "chat", "--pack-size", "10"]).await;

    let want = responses.classify(&titles).await;
    let single = chat.classify(&titles).await;
    let packed = chat_packed.classify(&titles).await;

    for got in [&single, &packed] {
        assert_eq!(got.errors, 0);
        assert!(
            got.usage.input_tokens > 0,
            "usage is read from the chat body"
        );
        for (a, b) in want.results.iter().zip(&got.results) {
            assert_eq!((&a.topic, a.confidence), (&b.topic, b.confidence));
        }
    }
    assert_eq!(single.usage.upstream_requests, 60);
    assert_eq!(packed.usage.upstream_requests, 6);
    for app in [responses, chat, chat_packed] {
        app.shutdown().await;
    }
}
