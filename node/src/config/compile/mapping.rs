//! Compiling request mapping (`type: rest`): an `http_proxy` integration's request
//! templates, each parsed once (an error names its line in the template and the
//! definition's line), and its passthrough behaviour.

use std::sync::Arc;

use serde_json::Value;

use super::super::model::*;
use super::Compiler;
use crate::mapping::{Bounds, Template};
use crate::stages::mapping::{Passthrough, RequestMapping};

/// A route's request mapping, parsed once for every stage.
#[derive(Clone)]
pub(super) struct MappingSpec {
    templates: Vec<(String, Arc<Template>)>,
    passthrough: Passthrough,
}

impl Compiler<'_> {
    /// The request mapping of an integration, if it has templates or a passthrough rule.
    pub(super) fn request_mapping(&mut self, def: &IntegrationDef, field: &str) -> Result<Option<MappingSpec>, ()> {
        if def.request_templates.is_none() && def.passthrough_behavior.is_none() {
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
        let mut ok = true;
        let mut templates = Vec::new();
        if let Some(by_type) = &def.request_templates {
            for (media, text) in &by_type.value {
                let at = format!("{field}.request_templates.{media}");
                let valid_media = media.split_once('/').is_some_and(|(t, s)| !t.is_empty() && !s.is_empty())
                    && media.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/+.-_".contains(&b));
                if !valid_media {
                    self.sink.push(
                        by_type.referenced,
                        &at,
                        "name a media type in lower case, such as `application/json`",
                    );
                    ok = false;
                    continue;
                }
                match Template::parse(text) {
                    Ok(t) => templates.push((media.clone(), Arc::new(t))),
                    Err(e) => {
                        self.sink.push(
                            by_type.referenced,
                            &at,
                            format!("line {} of the template: {}", e.line, e.message),
                        );
                        ok = false;
                    }
                }
            }
        }
        let passthrough = match def.passthrough_behavior.as_ref().map(|p| p.value) {
            None | Some(PassthroughBehavior::WhenNoMatch) => Passthrough::WhenNoMatch,
            Some(PassthroughBehavior::WhenNoTemplates) => Passthrough::WhenNoTemplates,
            Some(PassthroughBehavior::Never) => Passthrough::Never,
        };
        if ok { Ok(Some(MappingSpec { templates, passthrough })) } else { Err(()) }
    }

    /// The mapping stage of a route on one stage (its variables, its name).
    pub(super) fn mapping_stage(
        &self,
        spec: &MappingSpec,
        stage: &StageDef,
        parameter_names: Vec<String>,
        resource_path: &str,
    ) -> Arc<RequestMapping> {
        let variables = stage.variables.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        Arc::new(RequestMapping {
            templates: spec.templates.clone(),
            passthrough: spec.passthrough,
            parameter_names,
            stage: stage.name.value.clone(),
            resource_path: resource_path.to_string(),
            stage_variables: Value::Object(variables),
            bounds: Bounds::default(),
        })
    }
}
