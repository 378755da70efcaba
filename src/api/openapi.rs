//! The OpenAPI 3.1 document, generated from the handler and body types so it cannot drift from
//! the code; `docs/openapi.json` holds a copy that a test keeps equal to it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::classify::{
    ClassifyBatchRequest, ClassifyBatchResponse, ItemView, LabelView, TaxonomiesResponse,
    TaxonomyView, UsageView,
};
use super::error::{ErrorBody, ErrorDetail};
use super::{StatusBody, classify};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hn-classifier",
        description = "Classify short texts (Hacker News titles by default) with an LLM: one result per title, in input order, a per-item error instead of a failed batch."
    ),
    paths(classify::classify_batch, classify::list_taxonomies, super::healthz, super::readyz, super::metrics),
    components(schemas(ClassifyBatchRequest, ClassifyBatchResponse, ItemView, UsageView, TaxonomiesResponse, TaxonomyView, LabelView, ErrorBody, ErrorDetail, StatusBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "classify", description = "Classification"),
        (name = "operations", description = "Probes and metrics for the platform")
    )
)]
pub struct ApiDoc;

/// `Authorization: Bearer <key>`, required when `HNC_API_KEYS` is set.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as the service serves it and `docs/openapi.json` holds it.
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serialises")
}
