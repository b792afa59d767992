//! Request mapping templates end to end: a `type: rest` API whose integrations reshape the
//! request body with Velocity-style templates before the upstream sees it (path and query
//! parameters, headers, `$context`, stage variables), the passthrough behaviours, a template
//! that fails (500, never a panic), and templates refused at validation with their line.

use bytes::Bytes;
use http_body_util::Full;
use meridian_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_templates_reshape_bodies_before_the_upstream() {
    // The upstream answers with what it received.
    let upstream = http_service(|req| {
        let received = serde_json::json!({
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "length": req.headers().get("content-length").and_then(|v| v.to_str().ok()).unwrap_or(""),
            "body": String::from_utf8_lossy(req.body()),
        });
        async move { hyper::Response::new(Full::new(Bytes::from(received.to_string()))) }
    })
    .await;
    let node = start_node(format!(
        r##"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: shop
    type: rest
    routes:
      - route: "POST /owners/{{owner}}/pets"
        integration:
          type: http_proxy
          uri: "http://{upstream}/legacy/pets"
          request_templates:
            application/json: |
              #set($pet = $input.path('$'))
              {{"owner": "$input.params('owner')", "name": "$util.escapeJavaScript($pet.name)", "tags": [#foreach($t in $pet.tags)"$t"#if($foreach.hasNext),#end#end], "page": "$input.params('page')", "tenant": "$input.params('x-tenant')", "via": "$stageVariables.via", "request": "$context.requestId"}}
      - route: POST /strict
        integration:
          type: http_proxy
          uri: "http://{upstream}/strict"
          passthrough_behavior: never
          request_templates: {{ application/json: '{{"wrapped": $input.json(''$'')}}' }}
      - route: POST /xml-only
        integration:
          type: http_proxy
          uri: "http://{upstream}/xml-only"
          passthrough_behavior: when_no_templates
          request_templates: {{ application/xml: "<pet>$input.body</pet>" }}
      - route: POST /broken
        integration:
          type: http_proxy
          uri: "http://{upstream}/broken"
          request_templates: {{ application/json: "$util.parseJson($input.body).a" }}
      - route: GET /report
        integration:
          type: http_proxy
          uri: "http://{upstream}/report"
          request_templates: {{ application/json: '{{"from": "$input.params(''from'')"}}' }}
    stages: [{{ name: prod, variables: {{ via: gateway }} }}]
"##
    ))
    .await;
    let gw = node.http.expect("http listener");
    let post = |path: &str, content_type: &str, body: &'static str| {
        let headers = [
            ("host", "shop.test"),
            ("content-type", content_type),
            ("x-tenant", "acme"),
            ("x-request-id", "req-mapping-1"),
        ];
        request(gw, "POST", path, &headers, body)
    };

    let r = post(
        "/prod/owners/ana/pets?page=3",
        "application/json",
        r#"{"name": "Rex \"the dog\"", "tags": ["good", "old"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let received = r.json();
    assert_eq!(received["path"], "/legacy/pets");
    let mapped: serde_json::Value =
        serde_json::from_str(received["body"].as_str().unwrap()).expect("the template made JSON");
    assert_eq!(
        mapped,
        serde_json::json!({
            "owner": "ana", "name": "Rex \"the dog\"", "tags": ["good", "old"], "page": "3",
            "tenant": "acme", "via": "gateway", "request": "req-mapping-1"
        })
    );
    assert_eq!(
        received["length"],
        received["body"].as_str().unwrap().len().to_string(),
        "the length is the mapped body's"
    );

    // No template for the type: passed through (when_no_match, the default)...
    let r = post("/prod/owners/ana/pets", "text/plain", "just text").await;
    assert_eq!(r.json()["body"], "just text");
    // ... refused (never) ...
    assert_eq!(post("/prod/strict", "text/plain", "x").await.status, 415);
    assert_eq!(post("/prod/strict", "application/json", r#"{"a": 1}"#).await.json()["body"], r#"{"wrapped": {"a":1}}"#);
    // ... or refused when the integration has templates, just not this one (when_no_templates).
    assert_eq!(post("/prod/xml-only", "application/json", "{}").await.status, 415);
    assert_eq!(post("/prod/xml-only", "application/xml", "<a/>").await.json()["body"], "<pet><a/></pet>");

    // A template that fails is a 500 with a clear message, and the node goes on.
    let r = post("/prod/broken", "application/json", "not json").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["message"], "the request could not be mapped for the upstream");
    assert_eq!(post("/prod/broken", "application/json", r#"{"a": "fine"}"#).await.json()["body"], "fine");

    // A GET without a body is mapped too.
    let r = get(gw, "shop.test", "/prod/report?from=2026-01-01").await;
    assert_eq!(
        (r.json()["method"].clone(), r.json()["body"].clone()),
        ("GET".into(), r#"{"from": "2026-01-01"}"#.into())
    );
}

#[test]
fn templates_are_checked_when_the_definition_is() {
    let out = validate(
        r#"apis:
  - id: shop
    type: rest
    routes:
      - route: POST /a
        integration:
          type: http_proxy
          uri: http://127.0.0.1:9/a
          request_templates:
            application/json: "ok\n#macro(x)#end"
    stages: [{ name: prod }]
"#,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("line 10") && said.contains("line 2 of the template: #macro is not supported"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_responses_map_upstream_answers_by_status() {
    // A pet service: 200 with a pet, 404 with an error, 503 when "down".
    // A pet too large for a head that waits for the body (over 10 MiB).
    let huge = Bytes::from(format!(r#"{{"id": 2, "name": "{}"}}"#, "x".repeat(10 * 1024 * 1024)));
    let upstream = http_service(move |req| {
        let (status, body, header) = match req.uri().path() {
            "/pets/1" => (
                200,
                Bytes::from_static(br#"{"id": 1, "name": "Rex", "secret": "s3cr3t"}"#),
                ("x-upstream-version", "7"),
            ),
            "/pets/2" => (200, huge.clone(), ("x-upstream-version", "7")),
            "/pets/down" => (503, Bytes::from_static(b"down"), ("x-upstream-reason", "maintenance")),
            _ => (404, Bytes::from_static(br#"{"error": "no such pet"}"#), ("x-upstream-reason", "missing")),
        };
        async move {
            hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header(header.0, header.1)
                .body(Full::new(body))
                .unwrap()
        }
    })
    .await;
    let node = start_node(format!(
        r##"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: pets
    type: rest
    routes:
      - route: GET /pets/{{id}}
        integration:
          type: http_proxy
          uri: "http://{upstream}/pets/{{id}}"
          responses:
            - selection_pattern: '4\d\d'
              headers: {{ x-reason: integration.response.header.x-upstream-reason, x-mapped: "'yes'" }}
              templates:
                application/json: '{{"message": $input.json(''$.error''), "pet": "$input.params(''id'')", "request": "$context.requestId"}}'
            - selection_pattern: '5\d\d'
              status: 502
              headers: {{ x-down: integration.response.body.reason }}
              templates: {{ application/json: '{{"message": "the pet service is down"}}' }}
            - headers:
                x-version: integration.response.header.x-upstream-version
                x-absent: integration.response.header.x-nothing
                x-pet-name: integration.response.body.name
                x-pet-id: integration.response.body.id
                x-pet-owner: integration.response.body.owner.name
              templates:
                application/json: |
                  #set($pet = $input.path('$'))
                  {{"id": $pet.id, "name": "$pet.name", "stage": "$context.stage"}}
                application/xml: "<pet><id>$input.path('$.id')</id><name>$input.path('$.name')</name></pet>"
      - route: GET /raw/{{id}}
        integration: {{ type: http_proxy, uri: "http://{upstream}/pets/{{id}}" }}
    stages: [{{ name: prod }}]
"##
    ))
    .await;
    let gw = node.http.expect("http listener");
    let get = |path: &str, accept: &str| {
        let headers = [("host", "pets.test"), ("accept", accept), ("x-request-id", "req-responses-1")];
        request(gw, "GET", path, &headers, "")
    };

    // The default response: the secret is filtered out, the upstream's header renamed.
    let r = get("/prod/pets/1", "application/json").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json(), serde_json::json!({ "id": 1, "name": "Rex", "stage": "prod" }));
    assert_eq!(r.header("x-version"), "7");
    assert!(r.headers.get("x-absent").is_none());
    // Headers from the upstream's body: a string as it is, a number as JSON, nothing for a
    // field the body does not have.
    assert_eq!((r.header("x-pet-name"), r.header("x-pet-id")), ("Rex", "1"));
    assert!(r.headers.get("x-pet-owner").is_none());
    // A body too large to wait for is refused before its head goes out.
    let r = get("/prod/pets/2", "application/json").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["message"], "the upstream's response could not be mapped");
    assert_eq!(r.header("content-type"), "application/json");
    assert!(r.headers.get("content-length").is_none(), "the upstream's length is not the mapped body's");
    // The client that accepts XML gets the XML template of the same response.
    let r = get("/prod/pets/1", "text/html, application/xml;q=0.9").await;
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), "<pet><id>1</id><name>Rex</name></pet>");
    assert_eq!(r.header("content-type"), "application/xml");
    // 4xx keeps the upstream's status (none set) with its own template and headers.
    let r = get("/prod/pets/9", "*/*").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), serde_json::json!({ "message": "no such pet", "pet": "9", "request": "req-responses-1" }));
    assert_eq!((r.header("x-reason"), r.header("x-mapped")), ("missing", "yes"));
    // 5xx becomes 502.
    let r = get("/prod/pets/down", "application/json").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json(), serde_json::json!({ "message": "the pet service is down" }));
    assert!(r.headers.get("x-down").is_none(), "the body is not JSON: the header is left out");
    // A route without responses passes the upstream's answer through untouched.
    let r = get("/prod/raw/1", "application/json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["secret"], "s3cr3t");
    assert_eq!(r.header("x-upstream-version"), "7");
    // The gateway's own refusals are not integration answers: a 404 for no route stays JSON.
    let r = get("/prod/nothing", "application/json").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["message"].is_string() && r.headers.get("x-mapped").is_none());
}

#[test]
fn integration_responses_are_checked_when_the_definition_is() {
    let out = validate(
        r##"apis:
  - id: pets
    type: rest
    routes:
      - route: GET /a
        integration:
          type: http_proxy
          uri: http://127.0.0.1:9/a
          responses:
            - { selection_pattern: "4(", status: 400 }
            - { status: 700 }
            - { headers: { x-a: "unquoted" } }
            - { headers: { connection: "'close'" } }
            - { templates: { application/json: "#macro(x)#end" } }
            - { selection_pattern: "3\\d\\d", headers: { x-b: "integration.response.body.items[", x-c: "integration.response.bodyx" } }
            - { status: 201 }
            - { status: 202 }
"##,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "responses[0].selection_pattern: not a regular expression",
        "responses[1].status: a status from 200 to 599",
        "responses[2].headers.x-a: a value is `'literal text'`",
        "responses[3].headers.connection: the gateway sets this header itself",
        "responses[4].templates.application/json: line 1 of the template: #macro is not supported",
        "responses[5].headers.x-b: `integration.response.body.items[` is not a JSON expression",
        "responses[5].headers.x-c: a value is `'literal text'`",
        "responses[7].selection_pattern: only one response may go without a `selection_pattern`",
    ] {
        assert!(said.contains(expected), "missing `{expected}` in:\n{said}");
    }
    let out = validate(
        r#"apis:
  - id: plain
    type: http
    routes:
      - route: GET /b
        integration: { type: http_proxy, uri: "http://127.0.0.1:9/b", responses: [{ status: 200 }] }
"#,
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("`routes[0].integration.responses` is for `type: rest` APIs"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_responses_word_the_gateways_own_answers() {
    // An upstream that answers 404 itself: an integration answer, never reworded.
    let upstream = http_service(|_| async {
        hyper::Response::builder().status(404).body(Full::new(Bytes::from_static(b"upstream's own 404"))).unwrap()
    })
    .await;
    let node = start_node(format!(
        r##"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: pets
    type: rest
    models:
      Pet: {{ type: object, required: [name], properties: {{ name: {{ type: string }} }} }}
    request_validators: {{ body: {{ body: true }} }}
    gateway_responses:
      INVALID_API_KEY:
        headers: {{ x-help: "'ask for a key at https://dev.pets.test'" }}
        templates:
          application/json: '{{"error": "key", "detail": $context.error.messageString, "request": "$context.requestId", "team": "$stageVariables.team"}}'
      RESOURCE_NOT_FOUND:
        status: 404
        templates:
          application/json: '{{"error": "no such thing", "type": "$context.error.responseType"}}'
          application/xml: "<error type=\"$context.error.responseType\">no such thing</error>"
      BAD_REQUEST_BODY:
        templates: {{ application/json: '{{"invalid": "$util.escapeJavaScript($context.error.validationErrorString)"}}' }}
      DEFAULT_4XX:
        headers: {{ x-gateway: "'meridian'", x-request: context.requestId, x-team: stageVariables.team, x-asked: method.request.header.x-asked, x-page: method.request.querystring.page }}
      DEFAULT_5XX:
        status: 503
        templates: {{ text/plain: "try again later ($context.error.responseType)" }}
    routes:
      - route: GET /keyed
        api_key_required: true
        integration: {{ type: mock, body: secret }}
      - route: POST /pets
        request_validator: body
        request_models: {{ application/json: Pet }}
        integration: {{ type: mock, body: created }}
      - route: GET /tight
        throttle: {{ rate: 1, burst: 1 }}
        integration: {{ type: mock, body: hi }}
      - route: GET /down
        integration: {{ type: http_proxy, uri: "http://127.0.0.1:9/down" }}
      - route: GET /upstream
        integration: {{ type: http_proxy, uri: "http://{upstream}/missing" }}
    stages: [{{ name: prod, variables: {{ team: pets }} }}]
"##
    ))
    .await;
    let gw = node.http.expect("http listener");
    let call = |method: &str, path: &str, body: &'static str| {
        let headers = [("host", "pets.test"), ("content-type", "application/json"), ("x-request-id", "req-gw-1")];
        request(gw, method, path, &headers, body)
    };

    // A type of its own, with the refusal's message, the request id and a stage variable.
    let r = call("GET", "/prod/keyed", "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-help"), "ask for a key at https://dev.pets.test");
    let v = r.json();
    assert_eq!(
        (v["error"].as_str(), v["request"].as_str(), v["team"].as_str()),
        (Some("key"), Some("req-gw-1"), Some("pets"))
    );
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("key")), "{v}");
    // No route: RESOURCE_NOT_FOUND.
    let r = call("GET", "/prod/nothing-here", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), serde_json::json!({ "error": "no such thing", "type": "RESOURCE_NOT_FOUND" }));
    // A client that asks for XML gets the XML template (its media type, too).
    let headers = [("host", "pets.test"), ("accept", "text/html, application/xml;q=0.9")];
    let r = request(gw, "GET", "/prod/nothing-here", &headers, "").await;
    assert_eq!((r.status, r.header("content-type")), (404, "application/xml"));
    assert_eq!(String::from_utf8_lossy(&r.body), r#"<error type="RESOURCE_NOT_FOUND">no such thing</error>"#);
    // A body that does not match its model lists the violations.
    let r = call("POST", "/prod/pets", r#"{"legs": 4}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["invalid"].as_str().is_some_and(|s| s.contains("body") && s.contains("name")), "{:?}", r.body);
    // THROTTLED has nothing of its own: DEFAULT_4XX adds its header to the built-in answer,
    // which keeps its own headers (Retry-After).
    let mut throttled = None;
    for _ in 0..5 {
        let r = call("GET", "/prod/tight", "").await;
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
    }
    let r = throttled.expect("the route's throttle refused a request");
    assert_eq!(r.header("x-gateway"), "meridian");
    assert_eq!((r.header("x-request"), r.header("x-team")), ("req-gw-1", "pets"));
    assert!(r.headers.get("x-asked").is_none(), "a request header it did not send is left out");
    // Headers from the request the gateway refused.
    let headers = [("host", "pets.test"), ("x-asked", "by curl")];
    let mut refused = None;
    for _ in 0..5 {
        let r = request(gw, "GET", "/prod/tight?page=7", &headers, "").await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the route's throttle refused a request");
    assert_eq!((r.header("x-asked"), r.header("x-page")), ("by curl", "7"));
    assert!(!r.header("retry-after").is_empty());
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("rate limit")));
    // An unreachable upstream: INTEGRATION_FAILURE falls to DEFAULT_5XX, worded as text.
    let r = call("GET", "/prod/down", "").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(String::from_utf8_lossy(&r.body), "try again later (INTEGRATION_FAILURE)");
    // The upstream's own 404 is the integration's answer, not the gateway's.
    let r = call("GET", "/prod/upstream", "").await;
    assert_eq!((r.status, &r.body[..]), (404, &b"upstream's own 404"[..]));
    assert!(r.headers.get("x-gateway").is_none());
}

#[test]
fn gateway_responses_are_checked_when_the_definition_is() {
    let out = validate(
        r##"apis:
  - id: pets
    type: rest
    gateway_responses:
      UNAUTHORISED: { status: 401 }
      THROTTLED: { status: 200, headers: { x-a: unquoted, connection: "'close'" } }
      DEFAULT_5XX: { templates: { application/json: "#include('x')" } }
    routes:
      - { route: GET /a, integration: { type: mock, body: a } }
    stages: [{ name: prod }]
"##,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "gateway_responses.UNAUTHORISED: not a gateway response type; one of ACCESS_DENIED",
        "gateway_responses.THROTTLED.status: a status from 400 to 599",
        "gateway_responses.THROTTLED.headers.x-a: a value is `'literal text'`",
        "gateway_responses.THROTTLED.headers.connection: the gateway sets this header itself",
        "gateway_responses.DEFAULT_5XX.templates.application/json: line 1 of the template",
    ] {
        assert!(said.contains(expected), "missing `{expected}` in:\n{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_client_talks_to_an_xml_upstream_both_ways() {
    // The XML service answers with what it received (content type and body, escaped), or
    // plain text on /plain.
    let upstream = http_service(|req| {
        let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = String::from_utf8_lossy(req.body()).replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let (media, answer) = match req.uri().path() {
            "/plain" => ("text/plain", "just text".to_string()),
            _ => (
                "application/xml; charset=utf-8",
                format!("<?xml version=\"1.0\"?><receipt status=\"ok\"><type>{content_type}</type><got>{body}</got><line>a</line><line>b</line></receipt>"),
            ),
        };
        async move {
            hyper::Response::builder().header("content-type", media).body(Full::new(Bytes::from(answer))).unwrap()
        }
    })
    .await;
    let node = start_node(format!(
        r##"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: orders
    type: rest
    routes:
      - route: POST /orders
        integration: {{ type: http_proxy, uri: "http://{upstream}/orders", xml_upstream: {{ root: order }} }}
      - route: GET /plain
        integration: {{ type: http_proxy, uri: "http://{upstream}/plain", xml_upstream: {{ root: order }} }}
    stages: [{{ name: prod }}]
"##
    ))
    .await;
    let gw = node.http.expect("http listener");
    let call = |method: &str, path: &str, body: &'static str| {
        request(gw, method, path, &[("host", "orders.test"), ("content-type", "application/json")], body)
    };

    let r = call("POST", "/prod/orders", r#"{"@id": "42", "item": ["apple", "pear & fig"], "rush": true}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.json(),
        serde_json::json!({ "receipt": {
            "@status": "ok",
            "type": "application/xml; charset=utf-8",
            "got": "<?xml version=\"1.0\" encoding=\"UTF-8\"?><order id=\"42\"><item>apple</item><item>pear &amp; fig</item><rush>true</rush></order>",
            "line": ["a", "b"],
        }})
    );
    // A body that is not JSON, or that XML cannot carry, never reaches the upstream.
    let r = call("POST", "/prod/orders", "{not json").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("not valid JSON")));
    let r = call("POST", "/prod/orders", r#"{"1st": "x"}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("not an XML name")), "{:?}", r.body);
    // An answer that is not XML passes as it is.
    let r = call("GET", "/prod/plain", "").await;
    assert_eq!((r.status, &r.body[..], r.header("content-type")), (200, &b"just text"[..], "text/plain"));
}

#[test]
fn xml_upstream_is_checked_when_the_definition_is() {
    let out = validate(
        r##"apis:
  - id: orders
    type: rest
    routes:
      - route: POST /a
        integration: { type: http_proxy, uri: "http://127.0.0.1:9/a", xml_upstream: { root: "1st" } }
      - route: POST /b
        integration:
          type: http_proxy
          uri: http://127.0.0.1:9/b
          xml_upstream: { root: order }
          request_templates: { application/json: "$input.body" }
      - route: GET /c
        integration: { type: mock, body: c, xml_upstream: { root: order } }
    stages: [{ name: prod }]
"##,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "routes[0].integration.xml_upstream.root: `1st` is not an XML name",
        "routes[1].integration.xml_upstream: `xml_upstream` converts bodies that no template reshapes",
        "routes[2].integration.xml_upstream: `xml_upstream` applies to `http_proxy` integrations",
    ] {
        assert!(said.contains(expected), "missing `{expected}` in:\n{said}");
    }
}

/// Binary media types and content handling: binary bodies pass through byte for byte (no
/// template), `convert_to_text` base64-encodes them for a template, `convert_to_binary`
/// decodes base64 text into bytes, on requests and on answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_bodies_pass_as_bytes_or_convert_as_configured() {
    // Not UTF-8: a lossy conversion anywhere would change it.
    const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0xfe, 0x80];
    // The upstream answers with the bytes it received, under the content type it got, or
    // for `/picture` and `/picture64` with a picture of its own, as bytes or as base64.
    let upstream = http_service(|req| {
        let path = req.uri().path().to_string();
        let content_type = req.headers().get("content-type").cloned();
        let body = req.into_body();
        async move {
            let (body, content_type) = match path.as_str() {
                "/picture" => (Bytes::from_static(PNG), Some("image/png".parse().unwrap())),
                "/picture64" => (Bytes::from_static(b"iVBORw0KGgoA//6A"), Some("text/plain".parse().unwrap())),
                _ => (body, content_type),
            };
            let mut response = hyper::Response::new(Full::new(body));
            if let Some(t) = content_type {
                response.headers_mut().insert("content-type", t);
            }
            response
        }
    })
    .await;
    let node = start_node(format!(
        r##"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: photos
    type: rest
    binary_media_types: [image/png, application/octet-stream]
    routes:
      - route: POST /raw
        integration:
          type: http_proxy
          uri: "http://{upstream}/raw"
          request_templates: {{ application/json: '{{"wrapped": $input.json(''$'')}}', image/png: "never used" }}
      - route: POST /encoded
        integration:
          type: http_proxy
          uri: "http://{upstream}/encoded"
          content_handling: convert_to_text
          request_templates: {{ image/png: '{{"image": "$input.body"}}' }}
      - route: POST /decoded
        integration: {{ type: http_proxy, uri: "http://{upstream}/decoded", content_handling: CONVERT_TO_BINARY }}
      - route: GET /picture
        integration:
          type: http_proxy
          uri: "http://{upstream}/picture"
          responses: [{{ content_handling: convert_to_text, templates: {{ application/json: '{{"picture": "$input.body"}}' }} }}]
      - route: GET /picture64
        integration:
          type: http_proxy
          uri: "http://{upstream}/picture64"
          responses: [{{ content_handling: convert_to_binary, headers: {{ content-type: "'image/png'" }} }}]
      - route: GET /passed
        integration:
          type: http_proxy
          uri: "http://{upstream}/picture"
          responses: [{{ templates: {{ application/json: "never used" }} }}]
    stages:
      - {{ name: prod }}
"##
    ))
    .await;
    let gw = node.http.expect("http listener");
    let send_bytes = |path: &'static str, content_type: &'static str, body: &'static [u8]| {
        send(
            gw,
            hyper::Request::post(path)
                .header("host", "photos.test")
                .header("content-type", content_type)
                .body(Full::new(Bytes::from_static(body)))
                .unwrap(),
        )
    };

    let raw = send_bytes("/prod/raw", "image/png", PNG).await;
    assert_eq!((raw.status, raw.body.as_ref()), (200, PNG), "binary bodies pass through untouched");
    let json = send_bytes("/prod/raw", "application/json", b"{\"a\":1}").await;
    assert_eq!(json.body.as_ref(), b"{\"wrapped\": {\"a\":1}}", "text bodies still take their template");
    let encoded = send_bytes("/prod/encoded", "image/png", PNG).await;
    assert_eq!(encoded.json(), serde_json::json!({"image": "iVBORw0KGgoA//6A"}));
    let decoded = send_bytes("/prod/decoded", "text/plain", b"iVBORw0KGgoA//6A\n").await;
    assert_eq!(decoded.body.as_ref(), PNG);
    let invalid = send_bytes("/prod/decoded", "text/plain", b"not base64 at all!").await;
    assert_eq!(invalid.status, 400, "{:?}", invalid.body);

    let picture = get(gw, "photos.test", "/prod/picture").await;
    assert_eq!(picture.json(), serde_json::json!({"picture": "iVBORw0KGgoA//6A"}));
    let picture = get(gw, "photos.test", "/prod/picture64").await;
    assert_eq!((picture.header("content-type"), picture.body.as_ref()), ("image/png", PNG));
    let passed = get(gw, "photos.test", "/prod/passed").await;
    assert_eq!((passed.header("content-type"), passed.body.as_ref()), ("image/png", PNG));
}

#[test]
fn binary_media_types_and_content_handling_are_checked() {
    let out = validate(
        "listen: { http: 127.0.0.1:0 }\napis:\n  - id: a\n    binary_media_types: [image/png]\n    routes:\n      - { route: POST /x, integration: { type: http_proxy, uri: \"http://127.0.0.1:1/\", content_handling: convert_to_text } }\n  - id: b\n    type: rest\n    binary_media_types: [png]\n",
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("line 4") && text.contains("binary_media_types"), "{text}");
    assert!(text.contains("integration.content_handling"), "{text}");
    assert!(text.contains("`png` is not a media type"), "{text}");
}
