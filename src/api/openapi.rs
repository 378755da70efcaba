//! The OpenAPI 3.1 document, generated from the handler and body types so it cannot drift from
//! the code; `docs/openapi.json` holds a copy that a test keeps equal to it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi};

use super::body::{
    ClassifyBatchRequest, ClassifyBatchResponse, ItemView, LabelView, TaxonomiesResponse,
    TaxonomyView, UsageView,
};
use super::classify;
use super::error::{ErrorBody, ErrorDetail};
use super::jobs::{self, JobList, JobRequest};
use super::probes::{self, EndpointView, HealthBody, StatusBody};
use crate::jobs::JobView;
use crate::taxonomy::Taxonomies;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hn-classifier",
        description = "Classify short texts (Hacker News titles by default) with an LLM: one result per title, in input order, a per-item error instead of a failed batch."
    ),
    paths(classify::classify_batch, classify::list_taxonomies, jobs::submit, jobs::list, jobs::get_job, jobs::results, jobs::cancel, probes::healthz, probes::readyz, probes::metrics),
    components(schemas(ClassifyBatchRequest, ClassifyBatchResponse, ItemView, UsageView, TaxonomiesResponse, TaxonomyView, LabelView, ErrorBody, ErrorDetail, StatusBody, HealthBody, EndpointView, JobRequest, JobView, JobList)),
    modifiers(&BearerAuth),
    tags(
        (name = "classify", description = "Classification"),
        (name = "jobs", description = "Jobs that outlive the request, kept on disk (HNC_DATA_DIR)"),
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

/// The document as `docs/openapi.json` holds it: the service with only the built-in taxonomy.
pub fn document_json() -> String {
    document_json_for(&Taxonomies::default())
}

/// The document as a service with `taxonomies` serves it: the request's `taxonomy` field lists
/// the names it accepts, so a client (or a fuzzer) reading the schema sends only valid ones.
pub fn document_json_for(taxonomies: &Taxonomies) -> String {
    let mut document = ApiDoc::openapi();
    let field = document
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("ClassifyBatchRequest"))
        .and_then(|request| match request {
            RefOr::T(Schema::Object(request)) => request.properties.get_mut("taxonomy"),
            _ => None,
        });
    if let Some(RefOr::T(Schema::Object(field))) = field {
        let names = taxonomies.names().into_iter().map(serde_json::Value::from);
        field.enum_values = Some(names.chain([serde_json::Value::Null]).collect());
    }
    document.to_pretty_json().expect("the document serialises")
}
