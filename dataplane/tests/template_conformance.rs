//! Mapping templates from real exported APIs (`../shared/conformance/aws-openapi/`, read from
//! there, never copied): every request, response and gateway response template in the
//! documents parses, and renders against a sample request without an error. A template that
//! exported APIs use and Meridian refused would make an import fail; this test names it.

use std::path::Path;

use meridian_dataplane::mapping::{Bounds, Inputs, Template};
use serde_json::{Value, json};

/// Every template text under a `requestTemplates` or `responseTemplates` key, with where it is.
fn templates(value: &Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                if matches!(key.as_str(), "requestTemplates" | "responseTemplates")
                    && let Value::Object(by_type) = child
                {
                    for (media, text) in by_type {
                        if let Value::String(text) = text {
                            found.push((format!("{here}/{}", media.replace('/', "~1")), text.clone()));
                        }
                    }
                } else {
                    templates(child, &here, found);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                templates(item, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

fn sample() -> Inputs {
    let text = |v: &str| Value::String(v.to_string());
    Inputs {
        body: json!({ "a": 1, "b": 2, "op": "+", "name": "Rex", "price": 25 }).to_string().into(),
        body_json: Default::default(),
        path: [("data", "hello"), ("seconds", "3"), ("petId", "1")]
            .into_iter()
            .map(|(k, v)| (k.into(), text(v)))
            .collect(),
        querystring: [("a", "1"), ("b", "2"), ("op", "+")].into_iter().map(|(k, v)| (k.into(), text(v))).collect(),
        header: [("content-type", "application/json")].into_iter().map(|(k, v)| (k.into(), text(v))).collect(),
        context: std::sync::Arc::new(json!({
            "requestId": "req-1",
            "stage": "prod",
            "identity": { "sourceIp": "203.0.113.9", "userAgent": "test" },
            "error": { "message": "Unauthorized", "messageString": "\"Unauthorized\"", "responseType": "UNAUTHORIZED" },
        })),
        stage_variables: std::sync::Arc::new(json!({})),
    }
}

#[test]
fn templates_of_exported_apis_parse_and_render() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/aws-openapi");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("SKIPPED: the exported OpenAPI documents are not at {}", dir.display());
        return;
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut documents: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    documents.sort();
    for folder in documents {
        for name in ["openapi.yaml", "openapi.yml", "openapi.json", "swagger.json", "swagger.yaml"] {
            let path = folder.join(name);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let document: Value = if name.ends_with(".json") {
                serde_json::from_str(&text).expect("the document is JSON")
            } else {
                serde_saphyr::from_str(&text).expect("the document is YAML")
            };
            let mut found = Vec::new();
            templates(&document, "", &mut found);
            for (at, text) in found {
                checked += 1;
                let place = format!("{}#{at}", path.strip_prefix(&dir).unwrap_or(&path).display());
                match Template::parse(&text) {
                    Err(e) => failures.push(format!("{place}: does not parse: line {}: {}", e.line, e.message)),
                    Ok(template) => {
                        if let Err(e) = template.render(&sample(), Bounds::default()) {
                            failures.push(format!("{place}: does not render: {e}"));
                        }
                    }
                }
            }
        }
    }
    println!("{checked} templates checked");
    assert!(checked >= 5, "the documents hold templates; found {checked}");
    assert!(failures.is_empty(), "{} of {checked} templates failed:\n{}", failures.len(), failures.join("\n"));
}
