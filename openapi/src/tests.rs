//! The mapping of each part on small documents; the exported documents of
//! `../shared/conformance/aws-openapi/` are imported in `node/tests/openapi_conformance.rs`,
//! where the node's compiler checks what comes out.

use serde_json::{Value, json};

use super::*;

fn imported(document: Value) -> Imported {
    import(&document, &Options::default()).expect("imports")
}

fn api(imported: &Imported) -> &Value {
    &imported.definition["apis"][0]
}

fn reported(imported: &Imported, pointer: &str, words: &str) -> bool {
    imported.report.iter().any(|f| f.pointer == pointer && f.message.contains(words))
}

#[test]
fn documents_that_are_not_openapi_are_refused() {
    assert!(import(&json!({"info": {}}), &Options::default()).unwrap_err().0.contains("neither"));
    assert!(import(&json!({"swagger": "1.2"}), &Options::default()).unwrap_err().0.contains("1.2"));
    assert!(import(&json!({"openapi": "3.0.0", "paths": []}), &Options::default()).is_err());
}

#[test]
fn the_stage_comes_from_the_base_path() {
    let three = json!({"openapi": "3.0.1", "info": {"title": "Pet Store!"}, "paths": {},
        "servers": [{"url": "https://x.example.com/{basePath}", "variables": {"basePath": {"default": "/test"}}}]});
    let i = imported(three);
    assert_eq!(api(&i)["stages"][0]["name"], "test");
    assert_eq!(api(&i)["id"], "pet-store");
    let two = json!({"swagger": "2.0", "info": {"title": "calc"}, "basePath": "/v1/calc", "paths": {}});
    let i = imported(two);
    assert_eq!(api(&i)["stages"][0]["name"], "prod");
    assert!(reported(&i, "/basePath", "not a stage name"));
}

#[test]
fn http_integrations_carry_templates_responses_and_renamed_path_parameters() {
    let i = imported(json!({"swagger": "2.0", "info": {"title": "t"}, "paths": {"/pets/{id}": {"get": {
    "parameters": [{"name": "id", "in": "path", "required": true, "type": "string"},
                   {"name": "page", "in": "query", "required": true, "type": "string"}],
    "x-amazon-apigateway-integration": {
        "type": "http", "httpMethod": "GET", "uri": "http://${stageVariables.backend}/pets/{petId}",
        "requestParameters": {"integration.request.path.petId": "method.request.path.id",
                              "integration.request.header.x-tenant": "'acme'"},
        "requestTemplates": {"application/json": "{\"id\": \"$input.params('id')\"}"},
        "passthroughBehavior": "WHEN_NO_TEMPLATES",
        "timeoutInMillis": 5000,
        "cacheKeyParameters": ["method.request.path.id"],
        "responses": {
            "4\\d{2}": {"statusCode": "400", "responseTemplates": {"application/json": "{\"error\": true}"}},
            "default": {"statusCode": "200", "responseParameters": {
                "method.response.header.X-Source": "integration.response.header.X-Upstream",
                "method.response.header.X-Fixed": "'yes'",
                "method.response.header.X-Body": "integration.response.body.id"}}
        }
    }}}}}));
    let route = &api(&i)["routes"][0];
    assert_eq!(route["route"], "GET /pets/{id}");
    let integration = &route["integration"];
    assert_eq!(integration["type"], "http_proxy");
    assert_eq!(integration["uri"], "http://${stageVariables.backend}/pets/{id}");
    assert_eq!(integration["timeout"], "5000ms");
    assert_eq!(integration["passthrough_behavior"], "when_no_templates");
    assert_eq!(integration["responses"][0]["selection_pattern"], "4\\d{2}");
    assert_eq!(integration["responses"][1]["headers"]["X-Fixed"], "'yes'");
    assert!(integration["responses"][1].get("selection_pattern").is_none());
    assert_eq!(route["required_parameters"], json!(["querystring.page"]));
    assert_eq!(api(&i)["stages"][0]["variables"]["backend"], "SET-ME");
    let at = "/paths/~1pets~1{id}/get/x-amazon-apigateway-integration";
    assert!(reported(&i, &format!("{at}/requestParameters/integration.request.header.x-tenant"), "not imported"));
    assert!(reported(&i, &format!("{at}/cacheKeyParameters"), "cache"));
    assert_eq!(integration["responses"][1]["headers"]["X-Body"], "integration.response.body.id");
}

#[test]
fn cloud_service_integrations_and_unmapped_authorizers_are_reported_not_imported() {
    let i = imported(json!({"openapi": "3.0.1", "info": {"title": "t"},
    "components": {"securitySchemes": {
        "fn": {"type": "apiKey", "name": "Authorization", "in": "header",
               "x-amazon-apigateway-authtype": "custom",
               "x-amazon-apigateway-authorizer": {"type": "token", "authorizerUri": "arn:aws:lambda:..."}},
        "api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"}}},
    "paths": {
        "/lambda": {"post": {"x-amazon-apigateway-integration": {"type": "aws_proxy", "uri": "arn:aws:apigateway:..."}}},
        "/guarded": {"get": {"security": [{"fn": []}, {"api_key": []}],
            "x-amazon-apigateway-integration": {"type": "http_proxy", "uri": "http://up/guarded"}}},
        "/keyed": {"get": {"security": [{"api_key": []}],
            "x-amazon-apigateway-integration": {"type": "http_proxy", "uri": "http://up/keyed"}}},
        "/none": {"get": {}}
    }}));
    let routes = api(&i)["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["route"], "GET /keyed");
    assert_eq!(routes[0]["api_key_required"], true);
    assert_eq!((i.operations, i.routes), (4, 1));
    assert!(reported(&i, "/paths/~1lambda/post/x-amazon-apigateway-integration", "cloud service"));
    assert!(reported(&i, "/paths/~1guarded/get/security", "not imported"));
    assert!(reported(&i, "/components/securitySchemes/fn/x-amazon-apigateway-authorizer", "--authorizer-uri fn=URL"));
    assert!(reported(&i, "/paths/~1none/get", "no x-amazon-apigateway-integration"));

    // With the function's URL, the route is imported behind a custom authorizer.
    let options =
        Options { authorizer_uris: [("fn".to_string(), "http://auth/check".to_string())].into(), ..Options::default() };
    let document = json!({"openapi": "3.0.1", "info": {"title": "t"},
        "components": {"securitySchemes": {"fn": {"type": "apiKey", "name": "Authorization", "in": "header",
            "x-amazon-apigateway-authorizer": {"type": "request", "identitySource": "method.request.header.X-Token", "authorizerResultTtlInSeconds": 60}}}},
        "paths": {"/guarded": {"get": {"security": [{"fn": []}],
            "x-amazon-apigateway-integration": {"type": "http_proxy", "uri": "http://up/guarded"}}}}});
    let i = import(&document, &options).unwrap();
    assert_eq!(api(&i)["routes"][0]["authorizer"], "fn");
    assert_eq!(
        api(&i)["authorizers"][0],
        json!({"name": "fn", "type": "custom", "uri": "http://auth/check",
        "identity_sources": ["$request.header.X-Token"], "ttl": "60s"})
    );
}

#[test]
fn cognito_pools_become_jwt_authorizers_with_scopes() {
    let i = imported(json!({"openapi": "3.0.1", "info": {"title": "t"},
        "components": {"securitySchemes": {"pool": {"type": "apiKey", "name": "Authorization", "in": "header",
            "x-amazon-apigateway-authtype": "cognito_user_pools",
            "x-amazon-apigateway-authorizer": {"type": "cognito_user_pools",
                "providerARNs": ["arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_AbC"]}}}},
        "paths": {"/me": {"get": {"security": [{"pool": ["email", "openid"]}],
            "x-amazon-apigateway-integration": {"type": "http_proxy", "uri": "http://up/me"}}}}}));
    let authorizer = &api(&i)["authorizers"][0];
    assert_eq!(authorizer["issuer"], "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC");
    assert_eq!(
        authorizer["jwks_uri"],
        "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC/.well-known/jwks.json"
    );
    assert_eq!(api(&i)["routes"][0]["scopes"], json!(["email", "openid"]));
    assert!(i.report.iter().all(|f| !f.message.contains("not supported")), "{:?}", i.report);
}

#[test]
fn api_level_extensions_and_models() {
    let i = imported(json!({"openapi": "3.0.1", "info": {"title": "t"},
        "x-amazon-apigateway-binary-media-types": ["image~1png"],
        "x-amazon-apigateway-request-validators": {"all": {"validateRequestBody": true, "validateRequestParameters": true}},
        "x-amazon-apigateway-request-validator": "all",
        "x-amazon-apigateway-gateway-responses": {"UNAUTHORIZED": {"statusCode": 401,
            "responseParameters": {"gatewayresponse.header.WWW-Authenticate": "'Bearer'", "gatewayresponse.header.X-Id": "method.request.header.X-Id",
                                   "gatewayresponse.header.X-Path": "method.request.path.id"},
            "responseTemplates": {"application/json": "{\"message\": $context.error.messageString}"}}},
        "x-amazon-apigateway-minimum-compression-size": 1024,
        "components": {"schemas": {"Pet": {"type": "object", "properties": {"owner": {"$ref": "#/components/schemas/Owner"}}},
                                   "Owner": {"type": "object"}}},
        "paths": {"/pets": {"post": {
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
            "x-amazon-apigateway-integration": {"type": "http_proxy", "uri": "http://up/pets"}}}}}));
    let a = api(&i);
    assert_eq!(a["type"], "rest");
    assert_eq!(a["binary_media_types"], json!(["image/png"]));
    assert_eq!(a["request_validators"]["all"], json!({"body": true, "parameters": true}));
    assert_eq!(a["request_validator"], "all");
    assert_eq!(a["gateway_responses"]["UNAUTHORIZED"]["status"], 401);
    assert_eq!(
        a["gateway_responses"]["UNAUTHORIZED"]["headers"],
        json!({"WWW-Authenticate": "'Bearer'", "X-Id": "method.request.header.X-Id"})
    );
    assert_eq!(a["models"]["Pet"]["properties"]["owner"]["$ref"], "models/Owner");
    assert_eq!(a["routes"][0]["request_models"], json!({"application/json": "Pet"}));
    assert_eq!(a["compression"], json!({"minimum_size": 1024}));
    assert!(i.report.iter().all(|f| !f.pointer.contains("compression")), "{:?}", i.report);
    assert!(reported(
        &i,
        "/x-amazon-apigateway-gateway-responses/UNAUTHORIZED/responseParameters/gatewayresponse.header.X-Path",
        "not imported"
    ));
}

#[test]
fn http_api_exports_keep_their_type_and_cors() {
    let i = imported(json!({"openapi": "3.0.1", "info": {"title": "t"},
        "x-amazon-apigateway-cors": {"allowOrigins": ["https://app.example.com"], "allowMethods": ["GET", "POST"],
                                      "allowHeaders": ["x-token"], "maxAge": 600, "allowCredentials": true},
        "paths": {"/pets": {"get": {"x-amazon-apigateway-integration": {
            "type": "HTTP_PROXY", "httpMethod": "GET", "uri": "https://up.example.com/pets", "payloadFormatVersion": "1.0"}}}}}));
    let a = api(&i);
    assert_eq!(a["type"], "http");
    assert_eq!(
        a["cors"],
        json!({"allow_origins": ["https://app.example.com"], "allow_methods": ["GET", "POST"],
        "allow_headers": ["x-token"], "max_age": "600s", "allow_credentials": true})
    );
    assert!(i.report.is_empty(), "{:?}", i.report);
}

/// A definition using what both extension sets can carry.
fn definition() -> Value {
    json!({
        "id": "pets", "name": "Pets", "type": "rest",
        "authorizers": [{"name": "auth", "type": "jwt", "algorithms": ["RS256"], "issuer": "https://id.example.com",
                         "jwks_uri": "https://id.example.com/.well-known/jwks.json", "audience": ["pets"]}],
        "binary_media_types": ["image/png"],
        "compression": {"minimum_size": 2048},
        "cors": {"allow_origins": ["https://app.example.com"], "allow_methods": ["GET"], "max_age": "600s"},
        "gateway_responses": {"UNAUTHORIZED": {"status": 401, "headers": {"X-Why": "'token'"}, "templates": {"application/json": "{\"m\": \"$context.error.message\"}"}}},
        "models": {"Pet": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "owner": {"$ref": "models/Owner"}}},
                   "Owner": {"type": "object"}},
        "request_validators": {"all": {"body": true, "parameters": true}},
        "request_validator": "all",
        "routes": [
            {"route": "ANY /{proxy+}", "integration": {"type": "http_proxy", "uri": "http://${stageVariables.backend}/{proxy}", "timeout": "5000ms"}},
            {"route": "GET /ping", "integration": {"type": "mock", "status": 200, "body": "{\"pong\": true}", "headers": {"content-type": "application/json"}}},
            {"route": "POST /pets", "api_key_required": true, "authorizer": "auth", "scopes": ["pets:write"],
             "request_models": {"application/json": "Pet"}, "required_parameters": ["header.x-tenant"],
             "integration": {"type": "http_proxy", "uri": "http://${stageVariables.backend}/pets",
                 "request_templates": {"application/json": "{\"pet\": $input.json('$')}"}, "passthrough_behavior": "never",
                 "responses": [{"selection_pattern": "4\\d\\d", "status": 400, "templates": {"application/json": "{\"bad\": true}"}},
                               {"status": 201, "headers": {"X-Source": "integration.response.header.X-Upstream"}}]}}
        ],
        "stages": [{"name": "prod", "variables": {"backend": "SET-ME"}}]
    })
}

fn by_route(api: &Value) -> Value {
    let mut api = api.clone();
    if let Some(routes) = api.get_mut("routes").and_then(Value::as_array_mut) {
        routes.sort_by(|a, b| a["route"].as_str().cmp(&b["route"].as_str()));
    }
    api
}

#[test]
fn an_export_with_meridian_extensions_imports_back_to_the_same_definition() {
    let mut original = definition();
    original["waf"] =
        json!({"rules": [{"name": "no-admin", "action": "block", "pattern": {"part": "path", "contains": "/admin"}}]});
    original["routes"][1]["idempotency"] = json!({"ttl": "1h"});
    let document = export(&original, "prod", Extensions::Meridian).unwrap();
    let back = import(&document, &Options::default()).unwrap();
    assert!(back.report.is_empty(), "{:?}", back.report);
    assert_eq!(by_route(&back.definition["apis"][0]), by_route(&original));
}

#[test]
fn an_export_with_the_managed_gateways_extensions_imports_back_to_what_they_carry() {
    let original = definition();
    let document = export(&original, "prod", Extensions::Aws).unwrap();
    assert!(document.get("x-meridian-api").is_none());
    assert_eq!(
        document["paths"]["/{proxy+}"]["x-amazon-apigateway-any-method"]["x-amazon-apigateway-integration"]["type"],
        "http_proxy"
    );
    let back = import(&document, &Options::default()).unwrap();
    let api = by_route(&back.definition["apis"][0]);
    let expected = by_route(&original);
    for key in [
        "id",
        "type",
        "binary_media_types",
        "compression",
        "cors",
        "gateway_responses",
        "models",
        "request_validators",
        "request_validator",
        "routes",
        "stages",
    ] {
        assert_eq!(api[key], expected[key], "{key}: {:?}", back.report);
    }
    // The JWT authorizer's keys are where the issuer publishes them by convention (reported).
    assert_eq!(api["authorizers"][0]["jwks_uri"], expected["authorizers"][0]["jwks_uri"]);
}

#[test]
fn a_plain_export_has_no_extensions_and_spells_out_any() {
    let document = export(&definition(), "prod", Extensions::None).unwrap();
    let text = document.to_string();
    assert!(!text.contains("x-amazon-apigateway") && !text.contains("x-meridian"), "{text}");
    let proxy = document["paths"]["/{proxy+}"].as_object().unwrap();
    assert_eq!(proxy.len(), 7, "every method of ANY");
    assert_eq!(
        document["paths"]["/pets"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Pet"
    );
    assert_eq!(document["components"]["schemas"]["Pet"]["properties"]["owner"]["$ref"], "#/components/schemas/Owner");
    assert_eq!(document["components"]["securitySchemes"]["auth"]["scheme"], "bearer");
    assert_eq!(document["servers"][0]["url"], "/prod");
}

#[test]
fn routes_with_conditions_and_redirects_are_refused_rather_than_misdescribed() {
    let mut api = definition();
    api["routes"][1]["match"] = json!({"headers": [{"name": "x-version", "equals": "2"}]});
    for extensions in [Extensions::None, Extensions::Aws, Extensions::Meridian] {
        let refused = export(&api, "prod", extensions).unwrap_err();
        assert!(refused.contains("`GET /ping` has `match` conditions"), "{refused}");
    }
    let mut api = definition();
    api["routes"][1]["integration"] = json!({"type": "redirect", "uri": "https://new.example.com/ping", "status": 301});
    let refused = export(&api, "prod", Extensions::Aws).unwrap_err();
    assert!(refused.contains("`GET /ping` is a redirect"), "{refused}");
}
