//! `meridian export openapi` writes documents an independent validator accepts
//! (`openapi-spec-validator` from PyPI), with each extension set, and `meridian import
//! openapi` reads the `meridian` export back to the definition it came from. The cluster
//! round trip is in `cluster.rs`; the exported documents of a managed gateway are imported
//! in `node/tests/openapi_conformance.rs`.

use std::process::Command;

use meridian_tests::python_with;

/// A definition with routes of every integration kind, models, validators, an authorizer,
/// CORS, binary types and gateway responses.
const DEFINITION: &str = r#"
apis:
  - id: shop
    name: Shop
    type: rest
    authorizers:
      - { name: users, type: jwt, algorithms: [RS256], issuer: "https://id.example.com", jwks_uri: "https://id.example.com/.well-known/jwks.json", audience: [shop] }
    binary_media_types: [image/png]
    cors: { allow_origins: ["https://app.example.com"], max_age: 600s }
    gateway_responses:
      UNAUTHORIZED: { status: 401, headers: { X-Why: "'token'" }, templates: { application/json: '{"m": "$context.error.message"}' } }
    models:
      Order: { type: object, required: [item], properties: { item: { type: string }, buyer: { $ref: "models/Buyer" } } }
      Buyer: { type: object }
    request_validators: { all: { body: true, parameters: true } }
    request_validator: all
    routes:
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://10.0.0.5/{proxy}", timeout: 5s }
      - route: GET /ping
        integration: { type: mock, body: '{"pong": true}', headers: { content-type: application/json } }
      - route: POST /orders
        authorizer: users
        scopes: [orders]
        api_key_required: true
        request_models: { application/json: Order }
        required_parameters: [header.x-tenant]
        idempotency: { ttl: 1h }
        integration:
          type: http_proxy
          uri: "http://10.0.0.5/orders"
          request_templates: { application/json: '{"order": $input.json(''$'')}' }
          responses:
            - { selection_pattern: '4\d\d', status: 400, templates: { application/json: '{"bad": true}' } }
            - { status: 201 }
    stages:
      - { name: prod }
"#;

fn meridian(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(meridian_chaos::launcher::meridian_binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("meridian runs")
}

#[test]
fn exports_are_valid_openapi_and_the_meridian_one_imports_back() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), DEFINITION).unwrap();
    let validator = python_with("openapi-venv", &["openapi-spec-validator==0.7.1"]);
    for extensions in ["meridian", "aws", "none"] {
        let file = format!("shop-{extensions}.json");
        let out = meridian(
            &[
                "export",
                "openapi",
                "shop",
                "--stage",
                "prod",
                "--definition",
                "shop.yaml",
                "--extensions",
                extensions,
                "-f",
                &file,
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let Some(python) = &validator else { continue };
        let check = Command::new(python)
            .args(["-c", "import sys; from openapi_spec_validator import validate; from openapi_spec_validator.readers import read_from_filename; validate(read_from_filename(sys.argv[1])[0])"])
            .arg(dir.path().join(&file))
            .output()
            .unwrap();
        assert!(check.status.success(), "{extensions}: {}", String::from_utf8_lossy(&check.stderr));
    }
    // The meridian export imports back to the same definition (route order aside: a
    // document's paths are in path order).
    let out = meridian(&["import", "openapi", "shop-meridian.json", "-f", "back.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("imported 3 of 3 operations (0 findings)")
            || String::from_utf8_lossy(&out.stderr).contains("(0 findings)")
    );
    let sorted = |text: &str| {
        let mut v: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        v["apis"][0]["routes"].as_array_mut().unwrap().sort_by(|a, b| a["route"].as_str().cmp(&b["route"].as_str()));
        v
    };
    let back = std::fs::read_to_string(dir.path().join("back.yaml")).unwrap();
    assert_eq!(sorted(&back), sorted(DEFINITION));
    // And it validates as a definition, as `apply` checks it.
    let out = meridian(&["validate", "--config", "back.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn export_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), DEFINITION).unwrap();
    let out = meridian(&["export", "openapi", "nope", "--stage", "prod", "--definition", "shop.yaml"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API `nope`"));
    let out = meridian(&["export", "openapi", "shop", "--stage", "prod"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"), "{}", String::from_utf8_lossy(&out.stderr));
}
