//! `/docs`: the API document rendered by the Scalar viewer, served from the binary (the viewer's
//! script is compiled in from assets/scalar, see SOURCE.md there), so the page works behind a
//! firewall or offline. The viewer's "try it" proxy is off: requests go straight to this service.
//! What needs Scalar's cloud is off too ("Ask AI", "Generate MCP", the developer tools' "Deploy"
//! and "Share"): the page shows only what works offline.

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// `@scalar/api-reference` 1.72.1, `dist/browser/standalone.js`.
static VIEWER: &[u8] = include_bytes!("../../assets/scalar/standalone.js");

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>hn-classifier API</title>
</head>
<body>
  <div id="app"></div>
  <script src="/docs/scalar.js"></script>
  <script>
    Scalar.createApiReference('#app', {
      url: '/openapi.json',
      proxyUrl: '',
      withDefaultFonts: false,
      telemetry: false,
      showDeveloperTools: 'never',
      agent: { disabled: true },
      mcp: { disabled: true },
    })
  </script>
</body>
</html>
"#;

pub async fn page() -> impl IntoResponse {
    Html(PAGE)
}

pub async fn viewer() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // The same binary always serves the same script.
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        VIEWER,
    )
}
