//! The stored format of the replicated state, and how state written by earlier versions is
//! read.
//!
//! The applied configuration (the store's `config` key) and snapshot data (the applied
//! machine, on disk and sent to followers) are bincode, which is not self-describing: a
//! field added to [`ConfigState`] would make every state written before it unreadable. So
//! both are written as `MAGIC`, a little-endian `u16` format version, then the bincode of
//! the current types. Bytes without the magic were written before versions existed
//! (version 1) and are read with the layout of that time, then migrated. Neither legacy
//! layout can begin with the magic: version 1 configuration starts with a revision varint
//! followed by an `Option` tag (0 or 1, never `R`), and a version 1 machine starts with an
//! `Option` tag (never `M`).
//!
//! Log entries need no envelope: commands are an enum, new ones are added at its end, and
//! older entries decode unchanged. A member that does not know a newer command cannot
//! apply it, so every member is upgraded before the new features are used (docs/CLUSTER.md).
//!
//! | version | what changed |
//! | --- | --- |
//! | 1 | (no envelope) the layout up to `ConfigState::credentials` |
//! | 2 | `ConfigState::client_certificates` (custom domains' mutual TLS) |

use std::collections::BTreeMap;

use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::idempotency::IdempotencyLedger;
use crate::state::{
    ApiKeyRecord, ApiRecord, ClusterSecrets, ConfigState, CredentialRecord, DomainRecord, RegionRecord,
    UsagePlanRecord, ZoneRecord,
};
use crate::store::AppliedMachine;
use crate::types::{ClusterNode, NodeId};

const MAGIC: &[u8; 4] = b"MRDN";
/// The version this build writes.
pub const CURRENT: u16 = 2;

/// Why stored state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("stored state of format version {0}, newer than this build reads ({CURRENT}); upgrade this node")]
    Newer(u16),
    #[error("format version {0} is not known")]
    Unknown(u16),
    #[error(transparent)]
    Decode(#[from] bincode::error::DecodeError),
    #[error(transparent)]
    Encode(#[from] bincode::error::EncodeError),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn envelope<T: Serialize>(value: &T) -> Result<Vec<u8>, FormatError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&CURRENT.to_le_bytes());
    bytes.extend(bincode::serde::encode_to_vec(value, config())?);
    Ok(bytes)
}

/// The version and body of enveloped bytes; `None` for bytes from before versions.
fn opened(bytes: &[u8]) -> Result<Option<(u16, &[u8])>, FormatError> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else { return Ok(None) };
    let (version, body) = rest.split_at_checked(2).ok_or(FormatError::Unknown(0))?;
    let version = u16::from_le_bytes([version[0], version[1]]);
    match version {
        CURRENT => Ok(Some((version, body))),
        newer if newer > CURRENT => Err(FormatError::Newer(newer)),
        other => Err(FormatError::Unknown(other)),
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    Ok(bincode::serde::decode_from_slice(bytes, config())?.0)
}

/// The applied configuration as stored.
pub fn encode_config(state: &ConfigState) -> Result<Vec<u8>, FormatError> {
    envelope(state)
}

/// Reads an applied configuration of any version.
pub fn decode_config(bytes: &[u8]) -> Result<ConfigState, FormatError> {
    match opened(bytes)? {
        Some((_, body)) => decode(body),
        None => decode::<ConfigStateV1>(bytes).map(ConfigState::from),
    }
}

/// Snapshot data: the applied machine.
pub fn encode_machine(machine: &AppliedMachine) -> Result<Vec<u8>, FormatError> {
    envelope(machine)
}

/// Reads snapshot data of any version (a follower may receive one from an older leader).
pub fn decode_machine(bytes: &[u8]) -> Result<AppliedMachine, FormatError> {
    match opened(bytes)? {
        Some((_, body)) => decode(body),
        None => decode::<AppliedMachineV1>(bytes).map(|m| AppliedMachine {
            last_applied: m.last_applied,
            membership: m.membership,
            config: m.config.into(),
            idempotency: m.idempotency,
        }),
    }
}

/// [`ConfigState`] as version 1 laid it out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ConfigStateV1 {
    revision: u64,
    cluster: Option<ClusterSecrets>,
    next_node_id: u64,
    apis: BTreeMap<String, ApiRecord>,
    domains: BTreeMap<String, DomainRecord>,
    regions: BTreeMap<String, RegionRecord>,
    zones: BTreeMap<String, ZoneRecord>,
    keys: BTreeMap<String, ApiKeyRecord>,
    plans: BTreeMap<String, UsagePlanRecord>,
    credentials: BTreeMap<String, CredentialRecord>,
}

impl From<ConfigStateV1> for ConfigState {
    fn from(v1: ConfigStateV1) -> ConfigState {
        ConfigState {
            revision: v1.revision,
            cluster: v1.cluster,
            next_node_id: v1.next_node_id,
            apis: v1.apis,
            domains: v1.domains,
            regions: v1.regions,
            zones: v1.zones,
            keys: v1.keys,
            plans: v1.plans,
            credentials: v1.credentials,
            client_certificates: BTreeMap::new(),
        }
    }
}

/// The applied machine as version 1 laid it out.
#[derive(Debug, Serialize, Deserialize)]
struct AppliedMachineV1 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ClusterNode>,
    config: ConfigStateV1,
    idempotency: IdempotencyLedger,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ClientCertificatesRecord, MappingRecord};

    fn v1_state() -> ConfigStateV1 {
        let domain = DomainRecord {
            certificate_pem: Some("cert".into()),
            key_sealed: Some(vec![1, 2, 3]),
            mappings: vec![MappingRecord { base_path: "/".into(), api: "shop".into(), stage: "prod".into() }],
        };
        ConfigStateV1 {
            revision: 77,
            next_node_id: 4,
            domains: BTreeMap::from([("api.example.com".to_string(), domain)]),
            regions: BTreeMap::from([("eu".to_string(), RegionRecord { weight: Some(2), client_cidrs: vec![] })]),
            ..ConfigStateV1::default()
        }
    }

    #[test]
    fn a_configuration_from_before_versions_is_read_and_migrated() {
        // Revision 77 is 0x4d, the magic's first byte: the second byte still tells them apart.
        let legacy = bincode::serde::encode_to_vec(v1_state(), config()).unwrap();
        assert_eq!(legacy[0], MAGIC[0]);
        let read = decode_config(&legacy).unwrap();
        assert_eq!(read.revision, 77);
        assert_eq!(read.domains.len(), 1);
        assert!(read.client_certificates.is_empty());
        assert_eq!(read, ConfigState::from(v1_state()));
    }

    #[test]
    fn the_current_format_round_trips_and_a_newer_one_is_refused() {
        let mut state = ConfigState::from(v1_state());
        let policy = ClientCertificatesRecord { ca_pem: "ca".into(), crl_pem: None, required: true };
        state.client_certificates.insert("api.example.com".into(), policy);
        let bytes = encode_config(&state).unwrap();
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(decode_config(&bytes).unwrap(), state);
        let mut newer = bytes.clone();
        newer[4..6].copy_from_slice(&(CURRENT + 1).to_le_bytes());
        assert!(matches!(decode_config(&newer), Err(FormatError::Newer(v)) if v == CURRENT + 1));
        assert!(decode_config(&bytes[..5]).is_err(), "a cut envelope is an error, not a panic");
    }

    #[test]
    fn snapshot_data_from_before_versions_is_read_and_migrated() {
        let legacy = AppliedMachineV1 {
            last_applied: None,
            membership: StoredMembership::default(),
            config: v1_state(),
            idempotency: IdempotencyLedger::default(),
        };
        let bytes = bincode::serde::encode_to_vec(&legacy, config()).unwrap();
        let machine = decode_machine(&bytes).unwrap();
        assert_eq!(machine.config, ConfigState::from(v1_state()));
        let again = decode_machine(&encode_machine(&machine).unwrap()).unwrap();
        assert_eq!(again.config, machine.config);
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_the_readers_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = decode_config(&bytes);
            let _ = decode_machine(&bytes);
            let mut enveloped = MAGIC.to_vec();
            enveloped.extend_from_slice(&bytes);
            let _ = decode_config(&enveloped);
            let _ = decode_machine(&enveloped);
        }
    }
}
