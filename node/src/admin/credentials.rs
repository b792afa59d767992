//! The credentials endpoints of the admin API: access keys for signed (SigV4) requests.
//!
//! | call | does |
//! | --- | --- |
//! | `GET /v1/credentials`, `GET /v1/credentials/{credential}` | access key ids, names, state; never a secret |
//! | `POST /v1/credentials` (`{"name"}`) | makes an access key id and a secret, shown once |
//! | `POST /v1/credentials/{credential}/enable`, `.../disable`, `DELETE /v1/credentials/{credential}` | by id or name |
//!
//! A signature can only be checked with the secret itself, so the secret cannot be stored
//! hashed like an API key's value: the node that creates it seals it with the cluster data
//! key before it is proposed, so the Raft log, snapshots and sled files hold only the
//! sealed form (docs/SECURITY.md).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use meridian_consensus::{CommandOutcome, ConfigCommand, CredentialRecord, Proposal};
use ring::rand::{SecureRandom, SystemRandom};

use super::cluster::{Refusal, body_text, invalid, json_body, outcome_response, viewed};
use super::views;
use crate::cluster::member::ClusterMember;

/// Serves `/v1/credentials...` (the caller has checked the admin token).
pub(super) async fn route(
    member: &ClusterMember,
    method: &Method,
    segments: &[&str],
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Refusal> {
    Ok(match (method, segments) {
        (&Method::GET, ["v1", "credentials"]) => {
            let applied = member.applied.read().await;
            let config = &applied.config;
            let list: Vec<_> = config.credentials.iter().map(|(id, c)| views::credential(id, c)).collect();
            viewed(&serde_json::json!({ "credentials": list }), config.revision)
        }
        (&Method::GET, ["v1", "credentials", credential]) => {
            let id = credential_id(member, credential).await?;
            let applied = member.applied.read().await;
            let config = &applied.config;
            let c = config.credentials.get(&id).ok_or_else(|| not_found(credential))?;
            viewed(&views::credential(&id, c), config.revision)
        }
        (&Method::POST, ["v1", "credentials"]) => {
            let text = body_text(request).await?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                name: String,
            }
            let body: Body = json_body(&text, "{\"name\"}")?;
            if body.name.is_empty() || body.name.len() > 64 || body.name.chars().any(char::is_control) {
                return Err(invalid("credentials need a name of 1 to 64 printable characters"));
            }
            let (id, secret) = new_credentials()?;
            let secret_sealed = member
                .data_key()
                .seal(&crate::cluster::sealed::credential_secret(&id), secret.as_bytes())
                .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let credential = CredentialRecord {
                name: body.name.clone(),
                secret_sealed,
                enabled: true,
                created_at_ms: meridian_dataplane::observe::time::unix_ms(),
            };
            let command = ConfigCommand::CreateCredential { id: id.clone(), credential };
            match member.propose(Proposal { expected_revision: None, command }).await {
                Ok(CommandOutcome { revision, rejected: None, .. }) => {
                    let body = serde_json::json!({
                        "access_key_id": id,
                        "secret_access_key": secret,
                        "name": body.name,
                        "revision": revision,
                        "note": "the secret is shown only now; the cluster keeps it sealed",
                    });
                    viewed(&body, revision)
                }
                other => outcome_response(other),
            }
        }
        (&Method::POST, ["v1", "credentials", credential, action]) => {
            let id = credential_id(member, credential).await?;
            let enabled = match *action {
                "enable" => true,
                "disable" => false,
                _ => return Err(Refusal::new(StatusCode::NOT_FOUND, "credentials support enable and disable")),
            };
            let command = ConfigCommand::SetCredentialEnabled { id, enabled };
            outcome_response(member.propose(Proposal { expected_revision: None, command }).await)
        }
        (&Method::DELETE, ["v1", "credentials", credential]) => {
            let id = credential_id(member, credential).await?;
            let command = ConfigCommand::DeleteCredential { id };
            outcome_response(member.propose(Proposal { expected_revision: None, command }).await)
        }
        _ => return Err(Refusal::new(StatusCode::NOT_FOUND, "no such admin endpoint")),
    })
}

fn not_found(credential: &str) -> Refusal {
    Refusal::new(StatusCode::NOT_FOUND, format!("no credentials with access key id or name `{credential}`"))
}

/// An access key id from itself or the credentials' (unique) name.
async fn credential_id(member: &ClusterMember, credential: &str) -> Result<String, Refusal> {
    let applied = member.applied.read().await;
    let credentials = &applied.config.credentials;
    if credentials.contains_key(credential) {
        return Ok(credential.to_string());
    }
    credentials
        .iter()
        .find(|(_, c)| c.name == credential)
        .map(|(id, _)| id.clone())
        .ok_or_else(|| not_found(credential))
}

/// A new access key id (`MRDN` and 16 characters of A-Z, 2-7) and secret (40 characters of
/// base64, 240 random bits), in the shapes SDKs expect.
fn new_credentials() -> Result<(String, String), Refusal> {
    use base64::Engine;
    let random = SystemRandom::new();
    let mut bytes = [0u8; 46];
    random
        .fill(&mut bytes)
        .map_err(|_| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "the system random source failed"))?;
    const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let id: String = std::iter::once("MRDN".to_string())
        .chain(bytes[..16].iter().map(|b| (BASE32[(b % 32) as usize] as char).to_string()))
        .collect();
    let secret = base64::engine::general_purpose::STANDARD.encode(&bytes[16..46]);
    Ok((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_credentials_have_the_shapes_sdks_expect() {
        let (id, secret) = new_credentials().unwrap();
        assert_eq!(id.len(), 20);
        assert!(id.starts_with("MRDN") && id.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(secret.len(), 40);
        assert_ne!(new_credentials().unwrap(), (id, secret));
    }
}
