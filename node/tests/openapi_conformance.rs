//! OpenAPI import on real exported documents (`../shared/conformance/aws-openapi/`, read
//! from there, never copied): every operation each `expect.json` lists is imported as a
//! route or reported with its pointer, what is imported passes the checks `apply` makes, and
//! the documents that are not valid OpenAPI give a report, not a failure.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

#[test]
fn exported_documents_import_or_report_every_operation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/aws-openapi");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("SKIPPED: the exported OpenAPI documents are not at {}", dir.display());
        return;
    };
    let mut folders: Vec<_> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join("expect.json").exists()).collect();
    folders.sort();
    assert_eq!(folders.len(), 8, "eight exported documents");
    let mut imported_routes = BTreeMap::new();
    for folder in folders {
        let expect: Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("expect.json")).unwrap()).unwrap();
        let name = expect["document"].as_str().unwrap();
        let text = std::fs::read_to_string(folder.join(name)).unwrap();
        let document: Value = if name.ends_with(".json") {
            serde_json::from_str(&text).unwrap()
        } else {
            serde_saphyr::from_str(&text).unwrap()
        };
        let imported = meridian_openapi::import(&document, &meridian_openapi::Options::default())
            .unwrap_or_else(|e| panic!("{name} in {}: {e}", folder.display()));
        let api = &imported.definition["apis"][0];
        let routes: Vec<&str> =
            api["routes"].as_array().unwrap().iter().map(|r| r["route"].as_str().unwrap()).collect();
        assert_eq!(imported.operations, expect["operation_count"].as_u64().unwrap() as usize, "{}", folder.display());
        for operation in expect["operations"].as_array().unwrap() {
            let route = format!("{} {}", operation["method"].as_str().unwrap(), operation["path"].as_str().unwrap());
            let reported = imported.report.iter().any(|f| f.message.contains(&format!("`{route}` is not imported")));
            assert!(
                routes.contains(&route.as_str()) != reported,
                "{}: `{route}` must be imported or reported (routes {routes:?}, report {:?})",
                folder.display(),
                imported.report
            );
        }
        // What was imported passes the checks `apply` makes.
        let yaml = serde_saphyr::to_string(&imported.definition).unwrap();
        let stage = api["stages"][0]["name"].as_str().unwrap();
        let variables: BTreeMap<String, String> = api["stages"][0]["variables"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| (k.clone(), "127.0.0.1:9".into()))
            .collect();
        if let Err(errors) = meridian_dataplane::config::validate_definition(&yaml, name, stage, &variables) {
            panic!("{}: the imported definition does not validate:\n{errors}\n{yaml}", folder.display());
        }
        imported_routes
            .insert(folder.file_name().unwrap().to_string_lossy().into_owned(), (routes.len(), imported.report.len()));
    }
    eprintln!("imported routes and findings per document: {imported_routes:?}");
    // What each document's import must carry over, from its expect.json.
    let check = |folder: &str, f: &dyn Fn(&Value)| {
        let expect_dir = dir.join(folder);
        let expect: Value =
            serde_json::from_str(&std::fs::read_to_string(expect_dir.join("expect.json")).unwrap()).unwrap();
        let name = expect["document"].as_str().unwrap();
        let text = std::fs::read_to_string(expect_dir.join(name)).unwrap();
        let document: Value = serde_json::from_str(&text).unwrap_or_else(|_| serde_saphyr::from_str(&text).unwrap());
        let imported = meridian_openapi::import(&document, &meridian_openapi::Options::default()).unwrap();
        f(&imported.definition["apis"][0]);
    };
    check("awsdocs-petstore-http-proxy", &|api| {
        assert_eq!(api["stages"][0]["name"], "test");
        assert_eq!(api["routes"][0]["route"], "ANY /{proxy+}");
        assert_eq!(
            api["routes"][0]["integration"]["uri"],
            "http://petstore-demo-endpoint.execute-api.com/petstore/{proxy}"
        );
    });
    check("awsdocs-petstore-reqvalidators", &|api| {
        assert_eq!(api["request_validator"], "params-only");
        assert_eq!(api["request_validators"]["all"]["body"], true);
        let post = api["routes"].as_array().unwrap().iter().find(|r| r["route"] == "POST /validation").unwrap();
        assert_eq!(post["request_validator"], "all");
        assert_eq!(post["request_models"]["application/json"], "RequestBodyModel");
        assert!(api["models"]["RequestBodyModel"].is_object());
        assert_eq!(post["api_key_required"], true);
    });
    check("localstack-pulumi-gateway-responses", &|api| {
        assert!(api["gateway_responses"].as_object().is_some_and(|g| !g.is_empty()));
        assert!(api["binary_media_types"].as_array().is_some_and(|b| !b.is_empty()));
    });
    check("localstack-http-api-cors", &|api| {
        assert_eq!(api["type"], "http");
        assert!(api["cors"]["allow_origins"].as_array().is_some_and(|o| !o.is_empty()));
    });
}
