//! Compiling mapping (`type: rest`): an integration's request templates and passthrough
//! behaviour, and its responses (selection patterns, statuses, headers, response
//! templates). Each template is parsed once; an error names its line in the template and
//! the definition's line.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;
use serde_json::Value;
use serde_saphyr::Location;

use super::super::model::*;
use super::Compiler;
use crate::mapping::{Bounds, Reads, Template};
use crate::stages::content::MediaRanges;
use crate::stages::integration_response::{HeaderSource, IntegrationResponse, IntegrationResponses};
use crate::stages::mapping::{ContextMembers, Passthrough, RequestMapping, TemplateScope};
use crate::stages::xml_upstream::XmlUpstream;

/// The prefix of a response header mapped from the upstream's header.
const UPSTREAM_HEADER: &str = "integration.response.header.";
/// A response header mapped from the upstream's body: the whole of it, or followed by a
/// JSON expression without its `$` (`.id`, `.items[0].name`).
const UPSTREAM_BODY: &str = "integration.response.body";

/// A route's request mapping, parsed once for every stage.
#[derive(Clone)]
pub(super) struct MappingSpec {
    templates: Vec<(String, Arc<Template>)>,
    passthrough: Passthrough,
    content_handling: Option<crate::stages::content::ContentHandling>,
}

impl Compiler<'_> {
    /// The request mapping of an integration, if it has templates, a passthrough rule or
    /// content handling.
    pub(super) fn request_mapping(&mut self, def: &IntegrationDef, field: &str) -> Result<Option<MappingSpec>, ()> {
        if def.request_templates.is_none() && def.passthrough_behavior.is_none() && def.content_handling.is_none() {
            return Ok(None);
        }
        if def.kind.value != IntegrationKind::HttpProxy {
            let at = def.request_templates.as_ref().map_or_else(
                || def.passthrough_behavior.as_ref().map(|p| p.referenced).unwrap_or(def.kind.referenced),
                |t| t.referenced,
            );
            self.sink.push(
                at,
                format!("{field}.request_templates"),
                "request mapping applies to `http_proxy` integrations",
            );
            return Err(());
        }
        let templates = match &def.request_templates {
            Some(by_type) => {
                self.templates(&by_type.value, by_type.referenced, &format!("{field}.request_templates"))?
            }
            None => Vec::new(),
        };
        let passthrough = match def.passthrough_behavior.as_ref().map(|p| p.value) {
            None | Some(PassthroughBehavior::WhenNoMatch) => Passthrough::WhenNoMatch,
            Some(PassthroughBehavior::WhenNoTemplates) => Passthrough::WhenNoTemplates,
            Some(PassthroughBehavior::Never) => Passthrough::Never,
        };
        Ok(Some(MappingSpec {
            templates,
            passthrough,
            content_handling: def.content_handling.as_ref().map(|c| c.value.into()),
        }))
    }

    /// Templates by media type, each parsed once; every error is reported.
    pub(super) fn templates(
        &mut self,
        by_type: &BTreeMap<String, String>,
        at: Location,
        field: &str,
    ) -> Result<Vec<(String, Arc<Template>)>, ()> {
        let mut ok = true;
        let mut templates = Vec::new();
        for (media, text) in by_type {
            let tfield = format!("{field}.{media}");
            let valid_media = media.split_once('/').is_some_and(|(t, s)| !t.is_empty() && !s.is_empty())
                && media.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/+.-_".contains(&b));
            if !valid_media {
                self.sink.push(at, &tfield, "name a media type in lower case, such as `application/json`");
                ok = false;
                continue;
            }
            match Template::parse(text) {
                Ok(t) => templates.push((media.clone(), Arc::new(t))),
                Err(e) => {
                    self.sink.push(at, &tfield, format!("line {} of the template: {}", e.line, e.message));
                    ok = false;
                }
            }
        }
        if ok { Ok(templates) } else { Err(()) }
    }

    /// An integration's `responses`, compiled once for every stage.
    pub(super) fn integration_responses(
        &mut self,
        def: &IntegrationDef,
        field: &str,
    ) -> Result<Option<Arc<[IntegrationResponse]>>, ()> {
        let Some(list) = &def.responses else { return Ok(None) };
        let at = list.referenced;
        let mut ok = true;
        let mut patterned = Vec::new();
        let mut default = None;
        for (i, entry) in list.value.iter().enumerate() {
            let efield = format!("{field}.responses[{i}]");
            let Ok(response) = self.integration_response(entry, at, &efield) else {
                ok = false;
                continue;
            };
            if response.selection_pattern.is_some() {
                patterned.push(response);
            } else if default.replace(response).is_some() {
                self.sink.push(
                    at,
                    format!("{efield}.selection_pattern"),
                    "only one response may go without a `selection_pattern` (the default)",
                );
                ok = false;
            }
        }
        if !ok {
            return Err(());
        }
        patterned.extend(default);
        Ok(Some(patterned.into()))
    }

    fn integration_response(
        &mut self,
        def: &IntegrationResponseDef,
        at: Location,
        field: &str,
    ) -> Result<IntegrationResponse, ()> {
        let mut ok = true;
        let selection_pattern = match &def.selection_pattern {
            None => None,
            Some(p) => match Regex::new(&format!("^(?:{p})$")) {
                Ok(r) if !p.is_empty() => Some(r),
                Ok(_) => {
                    self.sink.push(
                        at,
                        format!("{field}.selection_pattern"),
                        "an empty pattern matches no status; leave it out for the default response",
                    );
                    ok = false;
                    None
                }
                Err(e) => {
                    self.sink.push(at, format!("{field}.selection_pattern"), format!("not a regular expression: {e}"));
                    ok = false;
                    None
                }
            },
        };
        let status = self.response_status(def.status, 200..=599, at, field);
        ok &= status.is_ok();
        let mut headers = Vec::new();
        for (name, source) in &def.headers {
            let hfield = format!("{field}.headers.{name}");
            let Some(header) = self.response_header_name(name, at, &hfield) else {
                ok = false;
                continue;
            };
            let source =
                match (literal(source), source.strip_prefix(UPSTREAM_HEADER), source.strip_prefix(UPSTREAM_BODY)) {
                    (Some(text), ..) => HeaderValue::from_str(text).ok().map(HeaderSource::Literal).ok_or(None),
                    (None, Some(from), _) => {
                        HeaderName::from_bytes(from.as_bytes()).ok().map(HeaderSource::UpstreamHeader).ok_or(None)
                    }
                    (None, None, Some("")) => Ok(HeaderSource::UpstreamBody),
                    (None, None, Some(expression)) if expression.starts_with(['.', '[']) => {
                        serde_json_path::JsonPath::parse(&format!("${expression}"))
                            .map(HeaderSource::UpstreamBodyValue)
                            .map_err(|e| Some(format!("`{source}` is not a JSON expression: {e}")))
                    }
                    _ => Err(None),
                };
            match source {
                Ok(source) => headers.push((header, source)),
                Err(why) => {
                    let why = why.unwrap_or_else(|| {
                        format!(
                            "a value is `'literal text'` (in single quotes), `{UPSTREAM_HEADER}NAME`, \
                             `{UPSTREAM_BODY}` or `{UPSTREAM_BODY}.FIELD`"
                        )
                    });
                    self.sink.push(at, &hfield, why);
                    ok = false;
                }
            }
        }
        let templates = self.templates(&def.templates, at, &format!("{field}.templates"));
        match (templates, status) {
            (Ok(templates), Ok(status)) if ok => {
                let content_handling = def.content_handling.map(Into::into);
                Ok(IntegrationResponse { selection_pattern, status, headers, templates, content_handling })
            }
            _ => Err(()),
        }
    }

    /// The integration's `xml_upstream` root, checked: an `http_proxy` integration whose
    /// bodies no template reshapes (a template converts with `$util.jsonToXml` instead).
    pub(super) fn xml_upstream(&mut self, def: &IntegrationDef, field: &str) -> Result<Option<Arc<XmlUpstream>>, ()> {
        let Some(option) = &def.xml_upstream else { return Ok(None) };
        let at = option.referenced;
        let ofield = format!("{field}.xml_upstream");
        if def.kind.value != IntegrationKind::HttpProxy {
            self.sink.push(at, &ofield, "`xml_upstream` applies to `http_proxy` integrations");
            return Err(());
        }
        let templated = def.request_templates.is_some()
            || def.responses.as_ref().is_some_and(|r| r.value.iter().any(|r| !r.templates.is_empty()));
        if templated {
            self.sink.push(
                at,
                &ofield,
                "`xml_upstream` converts bodies that no template reshapes; with templates, convert in them with `$util.jsonToXml` and `$util.xmlToJson`",
            );
            return Err(());
        }
        if let Err(e) = crate::mapping::xml::json_to_xml(&Value::Null, &option.value.root) {
            self.sink.push(at, format!("{ofield}.root"), e.to_string());
            return Err(());
        }
        Ok(Some(Arc::new(XmlUpstream { root: option.value.root.clone() })))
    }

    /// A configured response status, checked to be within `range`.
    pub(super) fn response_status(
        &mut self,
        status: Option<u16>,
        range: RangeInclusive<u16>,
        at: Location,
        field: &str,
    ) -> Result<Option<StatusCode>, ()> {
        match status.map(|s| (s, StatusCode::from_u16(s))) {
            None => Ok(None),
            Some((s, Ok(code))) if range.contains(&s) => Ok(Some(code)),
            Some(_) => {
                self.sink.push(
                    at,
                    format!("{field}.status"),
                    format!("a status from {} to {}", range.start(), range.end()),
                );
                Err(())
            }
        }
    }

    /// A header name a response may be given by configuration.
    pub(super) fn response_header_name(&mut self, name: &str, at: Location, field: &str) -> Option<HeaderName> {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            self.sink.push(at, field, "not a header name");
            return None;
        };
        if crate::hop_by_hop::is_hop_by_hop(&header) || header == http::header::CONTENT_LENGTH {
            self.sink.push(at, field, "the gateway sets this header itself");
            return None;
        }
        Some(header)
    }

    /// What a route's templates read on one stage (its variables, its name, the members of
    /// `$context` any of its request and response templates reads).
    pub(super) fn template_scope(
        stage: &StageDef,
        parameter_names: Vec<String>,
        resource_path: &str,
        templates: impl Iterator<Item = Arc<Template>>,
    ) -> Arc<TemplateScope> {
        let variables = stage.variables.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let reads = templates.fold(Reads::default(), |reads, t| reads.union(t.reads().clone()));
        Arc::new(TemplateScope {
            parameter_names,
            stage: stage.name.value.clone(),
            resource_path: resource_path.to_string(),
            stage_variables: Arc::new(Value::Object(variables)),
            context: ContextMembers::of(&reads.context),
        })
    }

    /// Every template of a route: its request templates and its responses' templates.
    pub(super) fn route_templates<'s>(
        mapping: Option<&'s MappingSpec>,
        responses: Option<&'s Arc<[IntegrationResponse]>>,
    ) -> impl Iterator<Item = Arc<Template>> + 's {
        let requests = mapping.into_iter().flat_map(|m| &m.templates);
        let answers = responses.into_iter().flat_map(|r| r.iter()).flat_map(|r| &r.templates);
        requests.chain(answers).map(|(_, t)| t.clone())
    }

    /// The request mapping stage of a route on one stage.
    pub(super) fn mapping_stage(
        spec: &MappingSpec,
        scope: &Arc<TemplateScope>,
        binary: &Arc<MediaRanges>,
    ) -> Arc<RequestMapping> {
        Arc::new(RequestMapping {
            templates: spec.templates.clone(),
            passthrough: spec.passthrough,
            scope: scope.clone(),
            bounds: Bounds::default(),
            binary: binary.clone(),
            content_handling: spec.content_handling,
        })
    }

    /// The integration responses stage of a route on one stage.
    pub(super) fn responses_stage(
        responses: &Arc<[IntegrationResponse]>,
        scope: &Arc<TemplateScope>,
        binary: &Arc<MediaRanges>,
    ) -> Arc<IntegrationResponses> {
        Arc::new(IntegrationResponses {
            responses: responses.clone(),
            scope: scope.clone(),
            bounds: Bounds::default(),
            binary: binary.clone(),
            reads: responses
                .iter()
                .flat_map(|r| &r.templates)
                .fold(Default::default(), |reads, (_, t)| t.reads().clone().union(reads)),
        })
    }

    /// An API's binary media types, checked.
    pub(super) fn binary_media_types(&mut self, api: &ApiDef, field: &str) -> Arc<MediaRanges> {
        let Some(types) = &api.binary_media_types else { return Arc::default() };
        match MediaRanges::new(&types.value) {
            Ok(types) => Arc::new(types),
            Err(e) => {
                self.sink.push(types.referenced, format!("{field}.binary_media_types"), e);
                Arc::default()
            }
        }
    }
}

/// The text of a `'literal'` header value, without its quotes.
pub(super) fn literal(source: &str) -> Option<&str> {
    source.strip_prefix('\'').and_then(|s| s.strip_suffix('\''))
}
