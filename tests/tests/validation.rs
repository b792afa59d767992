//! Request validation end to end: a `type: rest` API whose model and validators are the
//! managed gateway's own request-validation sample (read from
//! `../shared/conformance/aws-openapi/awsdocs-petstore-reqvalidators/swagger.json`), plus a
//! 2020-12 model; invalid requests get 400 with every violation and never reach the
//! upstream, valid ones reach it with their body intact.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::Full;
use meridian_tests::*;

const SAMPLE: &str = "../../shared/conformance/aws-openapi/awsdocs-petstore-reqvalidators/swagger.json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_validators_refuse_invalid_requests_before_the_upstream() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SAMPLE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIPPED: the conformance data is not at {}", path.display());
        return;
    };
    let sample: serde_json::Value = serde_json::from_str(&text).unwrap();
    let model = &sample["definitions"]["RequestBodyModel"];
    let validators = &sample["x-amazon-apigateway-request-validators"];
    assert_eq!(validators["params-only"]["validateRequestBody"], false);

    let delivered = Arc::new(AtomicUsize::new(0));
    let seen = delivered.clone();
    let upstream = http_service(move |req| {
        seen.fetch_add(1, Ordering::SeqCst);
        let body = req.into_body();
        async move { hyper::Response::new(Full::new(body)) }
    })
    .await;
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: pets
    type: rest
    models:
      RequestBodyModel: {model}
      Order:
        $schema: https://json-schema.org/draft/2020-12/schema
        type: object
        required: [items]
        properties:
          items: {{ type: array, minItems: 1, prefixItems: [{{ type: string }}] }}
    request_validators:
      all: {{ body: {all_body}, parameters: {all_params} }}
      params-only: {{ body: {params_body}, parameters: {params_params} }}
    request_validator: all
    routes:
      - route: GET /validation
        request_validator: params-only
        required_parameters: [querystring.q1]
        request_models: {{ application/json: RequestBodyModel }}
        integration: {{ type: http_proxy, uri: "http://{upstream}/pets" }}
      - route: POST /validation
        required_parameters: [header.h1]
        request_models: {{ application/json: RequestBodyModel }}
        integration: {{ type: http_proxy, uri: "http://{upstream}/pets" }}
      - route: POST /orders
        request_models: {{ $default: Order }}
        integration: {{ type: http_proxy, uri: "http://{upstream}/orders" }}
    stages: [{{ name: v1 }}]
"#,
        all_body = validators["all"]["validateRequestBody"],
        all_params = validators["all"]["validateRequestParameters"],
        params_body = validators["params-only"]["validateRequestBody"],
        params_params = validators["params-only"]["validateRequestParameters"],
    ))
    .await;
    let gw = node.http.expect("http listener");
    let request = |method: &str, path: &str, headers: &[(&str, &str)], body: &'static str| {
        let headers: Vec<_> = [("host", "pets.test")].into_iter().chain(headers.iter().copied()).collect();
        meridian_tests::request(gw, method, path, &headers, body)
    };
    let json = [("content-type", "application/json"), ("h1", "x")];

    // Parameters: the query parameter of GET, the header of POST; the body of a GET is not
    // checked (its validator checks parameters only).
    let r = request("GET", "/v1/validation", &[], "").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errors"], serde_json::json!([{ "in": "query", "at": "q1", "message": "is required" }]));
    assert_eq!(request("GET", "/v1/validation?q1=cat", &json, "not json").await.status, 200);
    let r = request("POST", "/v1/validation", &[("content-type", "application/json")], "{}").await;
    assert_eq!((r.status, r.json()["errors"][0]["at"].clone()), (400, serde_json::json!("h1")));

    // The body: every violation listed, with its pointer.
    let r = request("POST", "/v1/validation", &json, r#"{"id": "seven", "type": "bird", "price": 5}"#).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.json()["message"], "the request body does not match its model");
    let errors = r.json()["errors"].as_array().unwrap().clone();
    let at: Vec<&str> = errors.iter().filter_map(|e| e["at"].as_str()).collect();
    for pointer in ["/id", "/type", "/price", ""] {
        assert!(at.contains(&pointer), "no violation at {pointer:?}: {errors:#?}");
    }
    assert!(errors.iter().any(|e| e["message"].as_str().unwrap().contains("name")), "{errors:#?}");
    let r = request("POST", "/v1/validation", &json, "{\"name\": ").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().starts_with("not JSON"));
    assert_eq!(delivered.load(Ordering::SeqCst), 1, "only the valid GET reached the upstream");

    // A valid body goes through, intact.
    let pet = r#"{"type": "dog", "name": "Rex", "price": 250}"#;
    let r = request("POST", "/v1/validation", &json, pet).await;
    assert_eq!((r.status, r.body.as_ref()), (200, pet.as_bytes()));
    // Another content type has no model here: not validated.
    assert_eq!(
        request("POST", "/v1/validation", &[("h1", "x"), ("content-type", "text/plain")], "hi").await.status,
        200
    );

    // A 2020-12 model for every content type.
    let r = request("POST", "/v1/orders", &[("content-type", "text/plain")], r#"{"items": [3]}"#).await;
    assert_eq!((r.status, r.json()["errors"][0]["at"].clone()), (400, serde_json::json!("/items/0")));
    assert_eq!(request("POST", "/v1/orders", &[], r#"{"items": ["a", 3]}"#).await.status, 200);
    assert_eq!(delivered.load(Ordering::SeqCst), 4);
}

/// Models refer to each other as `models/NAME`, or as the managed gateway's exported
/// definitions do (`https://apigateway.amazonaws.com/restapis/ID/models/NAME`); nothing is
/// fetched, and a reference to anything else is refused when the definition is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_refer_to_each_other_and_to_nothing_else() {
    let upstream = http_service(|req| {
        let body = req.into_body();
        async move { hyper::Response::new(Full::new(body)) }
    })
    .await;
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: pets
    type: rest
    models:
      Pet: {{ type: object, required: [name], properties: {{ name: {{ type: string }} }} }}
      Owner:
        type: object
        required: [pets]
        properties:
          pets: {{ type: array, items: {{ $ref: "models/Pet" }} }}
          favourite: {{ $ref: "https://apigateway.amazonaws.com/restapis/a1b2c3/models/Pet" }}
    request_validators: {{ body: {{ body: true }} }}
    request_validator: body
    routes:
      - route: POST /owners
        request_models: {{ application/json: Owner }}
        integration: {{ type: http_proxy, uri: "http://{upstream}/owners" }}
    stages: [{{ name: v1 }}]
"#
    ))
    .await;
    let gw = node.http.expect("http listener");
    let post = |body: &'static str| {
        meridian_tests::request(
            gw,
            "POST",
            "/v1/owners",
            &[("host", "pets.test"), ("content-type", "application/json")],
            body,
        )
    };
    assert_eq!(post(r#"{"pets": [{"name": "Rex"}], "favourite": {"name": "Rex"}}"#).await.status, 200);
    let refused = post(r#"{"pets": [{"name": 7}], "favourite": {}}"#).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    let text = String::from_utf8_lossy(&refused.body);
    assert!(text.contains("/pets/0/name") && text.contains("/favourite"), "both references were followed: {text}");

    let out = validate(
        "listen: { http: 127.0.0.1:0 }\napis:\n  - id: a\n    type: rest\n    models:\n      Owner: { properties: { pet: { $ref: \"https://example.com/pet.json\" } } }\n",
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("models.Owner") && text.contains("nothing is fetched"), "{text}");
}
