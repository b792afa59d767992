//! Security schemes: API keys, the managed gateway's authorizers (Cognito user pools and JWT
//! onto Meridian's JWT authorizer, request and token functions onto a custom HTTP authorizer
//! whose URL the caller gives), and IAM (`awsSigv4`) onto signed requests.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::document::{Document, pointer};
use crate::{Options, Report};

/// What a scheme named in `security` asks of a request.
#[derive(Debug, Clone)]
pub(crate) enum Scheme {
    ApiKey,
    /// An authorizer of the API, by name; `jwt` when it takes scopes.
    Authorizer {
        jwt: bool,
    },
    /// Requests signed with SigV4 (the managed gateway's IAM authorization).
    Signed,
    /// A scheme the import could not map: routes that need it are not imported.
    Unmapped(String),
}

pub(crate) struct Schemes {
    pub by_name: BTreeMap<String, Scheme>,
    /// Meridian `authorizers:` entries.
    pub authorizers: Vec<Value>,
    /// The document's `security`, for operations without their own.
    pub default: Option<Value>,
}

impl Schemes {
    pub fn read(doc: &Document<'_>, options: &Options, report: &mut Report) -> Schemes {
        let (schemes, prefix) = if doc.swagger {
            (doc.root.get("securityDefinitions"), vec!["securityDefinitions"])
        } else {
            (doc.root.pointer("/components/securitySchemes"), vec!["components", "securitySchemes"])
        };
        let mut by_name = BTreeMap::new();
        let mut authorizers = Vec::new();
        for (name, scheme) in schemes.and_then(Value::as_object).into_iter().flatten() {
            let at = pointer(prefix.iter().copied().chain([name.as_str()]));
            let scheme = doc.resolve(scheme);
            let authtype = doc.extension(scheme, &at, "x-amazon-apigateway-authtype").and_then(Value::as_str);
            let mapped = match doc.extension(scheme, &at, "x-amazon-apigateway-authorizer") {
                Some(authorizer) => {
                    let at = format!("{at}/x-amazon-apigateway-authorizer");
                    match authorizer_of(name, authorizer, scheme, options, &at, report) {
                        Some((definition, jwt)) => {
                            authorizers.push(definition);
                            Scheme::Authorizer { jwt }
                        }
                        None => Scheme::Unmapped(at),
                    }
                }
                None if authtype.is_some_and(|t| t.eq_ignore_ascii_case("awsSigv4")) => Scheme::Signed,
                None => {
                    let kind = scheme.get("type").and_then(Value::as_str).unwrap_or("");
                    let key_name = scheme.get("name").and_then(Value::as_str).unwrap_or("");
                    if kind == "apiKey" && key_name.eq_ignore_ascii_case("x-api-key") {
                        Scheme::ApiKey
                    } else {
                        report.add(
                            at.clone(),
                            format!("security scheme `{name}` ({kind}) has no Meridian counterpart: declare an authorizer (docs/AUTHORIZERS.md)"),
                        );
                        Scheme::Unmapped(at)
                    }
                }
            };
            by_name.insert(name.clone(), mapped);
        }
        Schemes { by_name, authorizers, default: doc.root.get("security").cloned() }
    }
}

/// A Meridian authorizer for the managed gateway's `x-amazon-apigateway-authorizer`, and
/// whether it is a JWT one.
fn authorizer_of(
    name: &str,
    authorizer: &Value,
    scheme: &Value,
    options: &Options,
    at: &str,
    report: &mut Report,
) -> Option<(Value, bool)> {
    let kind = authorizer.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    match kind.as_str() {
        "cognito_user_pools" => {
            let arn = authorizer.pointer("/providerARNs/0").and_then(Value::as_str).unwrap_or("");
            // arn:aws:cognito-idp:REGION:ACCOUNT:userpool/POOL
            let parts: Vec<&str> = arn.split(':').collect();
            let pool = parts.get(5).and_then(|p| p.strip_prefix("userpool/"));
            match (parts.get(3), pool) {
                (Some(region), Some(pool)) if parts.len() == 6 && !region.is_empty() && !pool.is_empty() => {
                    let issuer = format!("https://cognito-idp.{region}.amazonaws.com/{pool}");
                    report.add(
                        at,
                        format!("`{name}` (a Cognito user pool) is a JWT authorizer of issuer {issuer}: add the app client ids as its `audience`"),
                    );
                    Some((
                        json!({
                            "name": name,
                            "type": "jwt",
                            "algorithms": ["RS256"],
                            "issuer": issuer,
                            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
                        }),
                        true,
                    ))
                }
                _ => {
                    report.add(
                        format!("{at}/providerARNs/0"),
                        format!("`{arn}` is not a user pool ARN: authorizer `{name}` and the routes that use it are not imported"),
                    );
                    None
                }
            }
        }
        "jwt" => {
            let issuer = authorizer.pointer("/jwtConfiguration/issuer").and_then(Value::as_str)?;
            let audience = authorizer.pointer("/jwtConfiguration/audience").cloned().unwrap_or(json!([]));
            let issuer = issuer.trim_end_matches('/');
            report.add(
                at,
                format!("`{name}`: keys are fetched from {issuer}/.well-known/jwks.json; change `jwks_uri` if the issuer publishes them elsewhere"),
            );
            let mut definition = json!({
                "name": name,
                "type": "jwt",
                "algorithms": ["RS256"],
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            });
            if audience.as_array().is_some_and(|a| !a.is_empty()) {
                definition["audience"] = audience;
            }
            Some((definition, true))
        }
        "token" | "request" => {
            let Some(uri) = options.authorizer_uris.get(name) else {
                report.add(
                    at,
                    format!("`{name}` is a {kind} authorizer function: give its HTTP endpoint with --authorizer-uri {name}=URL; until then it and the routes that use it are not imported"),
                );
                return None;
            };
            let sources = identity_sources(authorizer, scheme);
            let mut definition = json!({ "name": name, "type": "custom", "uri": uri, "identity_sources": sources });
            if let Some(ttl) = authorizer.get("authorizerResultTtlInSeconds").and_then(Value::as_u64) {
                definition["ttl"] = json!(format!("{ttl}s"));
            }
            Some((definition, false))
        }
        other => {
            report.add(at, format!("authorizer `{name}` of type `{other}` has no Meridian counterpart"));
            None
        }
    }
}

/// `method.request.header.X` (REST) or `$request.header.X` (HTTP APIs) as Meridian's
/// `$request.header.X`; a token authorizer's header is the scheme's `name`.
fn identity_sources(authorizer: &Value, scheme: &Value) -> Vec<String> {
    let written = authorizer.get("identitySource").map_or_else(Vec::new, |s| match s {
        Value::String(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    });
    let mut sources: Vec<String> = written
        .iter()
        .filter_map(|s| {
            s.strip_prefix("method.request.")
                .map(|rest| format!("$request.{rest}"))
                .or_else(|| s.starts_with("$request.").then(|| s.clone()))
        })
        .collect();
    if sources.is_empty()
        && let Some(header) = scheme.get("name").and_then(Value::as_str)
    {
        sources.push(format!("$request.header.{header}"));
    }
    sources
}
