//! The replicated configuration and the commands that change it.
//!
//! [`ConfigState::apply`] is the whole state machine: a pure function of the state and a
//! [`Proposal`]. Every node applies the same proposals in the same order and so reaches the
//! same state, byte for byte. Every applied change bumps [`ConfigState::revision`]; a proposal
//! that is rejected (a failed revision check, an unknown stage) changes nothing.
//!
//! API definitions are stored as the YAML text the operator applied (already validated by
//! the node that accepted the write), inside immutable [`Deployment`]s. A stage points at a
//! deployment; rollback points it back; a canary sends a share of the stage's requests to a
//! second deployment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An immutable snapshot of one API's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: u64,
    /// The API definition (YAML), as validated when it was applied.
    pub definition: String,
    pub description: String,
    /// Milliseconds since the Unix epoch, from the proposing node's clock.
    pub created_at_ms: u64,
    /// Who applied it, as the client said (`user@host` for the CLI).
    pub created_by: String,
}

/// A canary release on a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub deployment: u64,
    /// Share of the stage's requests in hundredths of a percent (1..=9999).
    pub basis_points: u32,
    /// Stage-variable overrides for canary requests.
    pub variables: BTreeMap<String, String>,
}

/// A stage: the name an API is served under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub deployment: u64,
    pub variables: BTreeMap<String, String>,
    pub canary: Option<Canary>,
}

/// One API: its deployments (never edited) and stages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiRecord {
    pub deployments: BTreeMap<u64, Deployment>,
    pub stages: BTreeMap<String, StageRecord>,
    pub next_deployment: u64,
}

/// What members need to admit new members: the cluster CA and the join secret's hash.
///
/// Every leader must be able to sign a joining node's certificate, so the CA key is part of
/// the replicated state, but only sealed: encrypted with the cluster data key, which never
/// enters the log (the node's `cluster::sealed` says how members get it). The state
/// machine never looks inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSecrets {
    pub ca_cert_pem: String,
    /// The CA's private key (PEM), sealed with the cluster data key.
    pub ca_key_sealed: Vec<u8>,
    /// SHA-256 (hex) of the join secret; the secret itself is not stored.
    pub join_secret_sha256: String,
}

/// `base_path → (api, stage)` on a custom domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRecord {
    pub base_path: String,
    pub api: String,
    pub stage: String,
}

/// A custom domain: its certificate (PEM; absent when the domain is served over HTTP only)
/// and its base-path mappings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub certificate_pem: Option<String>,
    /// The certificate's private key (PEM), sealed with the cluster data key.
    pub key_sealed: Option<Vec<u8>>,
    pub mappings: Vec<MappingRecord>,
}

/// A custom domain's mutual TLS: the CA certificates (PEM) its clients' certificates must
/// chain to, the revocation lists (PEM) that withdraw some, and whether a client without a
/// valid one is refused (`required`) or served without an identity. Public material only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCertificatesRecord {
    pub ca_pem: String,
    pub crl_pem: Option<String>,
    pub required: bool,
}

/// A region: its DNS weight and the client networks known to sit near it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    pub weight: Option<u32>,
    pub client_cidrs: Vec<String>,
}

/// A DNS zone: its YAML document, checked by the proposing node (`meridian_dns::zone`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRecord {
    pub definition: String,
}

/// An API key. Only the SHA-256 of its value is stored; the value is shown once, when the
/// key is created or rotated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub name: String,
    pub value_sha256: String,
    pub enabled: bool,
    pub created_at_ms: u64,
}

/// Credentials for signed requests (SigV4): the record of one access key id. Verifying a
/// signature needs the secret itself, so it cannot be hashed; it enters the replicated
/// state only sealed with the cluster data key, and is never listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub name: String,
    pub secret_sealed: Vec<u8>,
    pub enabled: bool,
    pub created_at_ms: u64,
}

/// A rate limit in a usage plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRate {
    pub per_second: u64,
    pub burst: u64,
}

/// The period of a quota (UTC boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuotaPeriod {
    Day,
    Week,
    Month,
}

/// A usage plan: a throttle and a quota for its keys on the stages it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePlanRecord {
    pub rate: Option<PlanRate>,
    pub quota: Option<(u64, QuotaPeriod)>,
    /// (api, stage) → route key → a per-route throttle for the plan's keys.
    pub stages: BTreeMap<(String, String), BTreeMap<String, PlanRate>>,
    /// Key ids.
    pub keys: std::collections::BTreeSet<String>,
}

/// The whole replicated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigState {
    /// Bumped by every applied change.
    pub revision: u64,
    pub cluster: Option<ClusterSecrets>,
    /// The id the next joining node gets (the founding node is 1).
    pub next_node_id: u64,
    pub apis: BTreeMap<String, ApiRecord>,
    pub domains: BTreeMap<String, DomainRecord>,
    pub regions: BTreeMap<String, RegionRecord>,
    /// DNS zones by apex name.
    pub zones: BTreeMap<String, ZoneRecord>,
    /// API keys by id.
    pub keys: BTreeMap<String, ApiKeyRecord>,
    /// Usage plans by name.
    pub plans: BTreeMap<String, UsagePlanRecord>,
    /// Credentials for signed requests, by access key id.
    pub credentials: BTreeMap<String, CredentialRecord>,
    /// Custom domains' mutual TLS, by domain name. Kept beside `domains` rather than in
    /// [`DomainRecord`], so that the records and commands written before it existed decode
    /// unchanged (see [`crate::format`]).
    pub client_certificates: BTreeMap<String, ClientCertificatesRecord>,
}

/// A change to the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigCommand {
    /// The founding node's first write: the cluster CA and join secret. Only once.
    Bootstrap {
        secrets: ClusterSecrets,
    },
    /// Reserves the id of a node that is joining; the outcome's `created` is the id.
    RegisterNode,
    /// Stores a new deployment of `api` (creating the API on first use) and, when `stage`
    /// is set, points that stage at it (creating the stage with `variables`).
    Deploy {
        api: String,
        definition: String,
        description: String,
        created_at_ms: u64,
        created_by: String,
        stage: Option<String>,
        /// Variables set on `stage` along with the deployment.
        stage_variables: BTreeMap<String, String>,
    },
    /// Points a stage at an existing deployment (rollback, or a new stage).
    SetStageDeployment {
        api: String,
        stage: String,
        deployment: u64,
    },
    /// Sets and removes stage variables.
    SetStageVariables {
        api: String,
        stage: String,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    },
    DeleteStage {
        api: String,
        stage: String,
    },
    SetCanary {
        api: String,
        stage: String,
        canary: Canary,
    },
    /// Makes the canary's deployment (and variable overrides) the stage's own.
    PromoteCanary {
        api: String,
        stage: String,
    },
    ClearCanary {
        api: String,
        stage: String,
    },
    /// Creates or replaces a custom domain.
    PutDomain {
        name: String,
        domain: DomainRecord,
    },
    DeleteDomain {
        name: String,
    },
    /// Creates or replaces a region's settings.
    PutRegion {
        name: String,
        region: RegionRecord,
    },
    DeleteRegion {
        name: String,
    },
    /// Creates or replaces a DNS zone.
    PutZone {
        name: String,
        zone: ZoneRecord,
    },
    DeleteZone {
        name: String,
    },
    /// Creates a key (the id and the value's hash are chosen by the proposing node).
    CreateKey {
        id: String,
        key: ApiKeyRecord,
    },
    SetKeyEnabled {
        id: String,
        enabled: bool,
    },
    /// Replaces a key's value.
    RotateKey {
        id: String,
        value_sha256: String,
    },
    /// Deletes a key and removes it from every plan.
    DeleteKey {
        id: String,
    },
    /// Creates a plan or replaces its throttle and quota (its stages and keys stay).
    PutPlan {
        name: String,
        rate: Option<PlanRate>,
        quota: Option<(u64, QuotaPeriod)>,
    },
    DeletePlan {
        name: String,
    },
    /// Makes a plan cover (api, stage), optionally with a per-route throttle.
    AttachPlan {
        plan: String,
        api: String,
        stage: String,
        route: Option<(String, PlanRate)>,
    },
    AddPlanKey {
        plan: String,
        key: String,
    },
    RemovePlanKey {
        plan: String,
        key: String,
    },
    /// Creates credentials (the access key id and sealed secret are made by the proposing
    /// node).
    CreateCredential {
        id: String,
        credential: CredentialRecord,
    },
    SetCredentialEnabled {
        id: String,
        enabled: bool,
    },
    DeleteCredential {
        id: String,
    },
    /// Creates or replaces a custom domain with its mutual TLS policy (`None`: no client
    /// certificates asked for). `PutDomain`, from before mutual TLS, keeps a domain's policy.
    PutDomainWithClientCertificates {
        name: String,
        domain: DomainRecord,
        client_certificates: Option<ClientCertificatesRecord>,
    },
}

/// A command with an optional revision precondition (an HTTP `If-Match`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub expected_revision: Option<u64>,
    pub command: ConfigCommand,
}

/// Why a proposal changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("the configuration is at revision {current}, not {expected}")]
    RevisionMismatch { expected: u64, current: u64 },
    #[error("no API `{0}`")]
    NoApi(String),
    #[error("API `{api}` has no stage `{stage}`")]
    NoStage { api: String, stage: String },
    #[error("API `{api}` has no deployment {deployment}")]
    NoDeployment { api: String, deployment: u64 },
    #[error("stage `{stage}` of API `{api}` has no canary")]
    NoCanary { api: String, stage: String },
    #[error("no key `{0}`")]
    NoKey(String),
    #[error("no usage plan `{0}`")]
    NoPlan(String),
    #[error("a key with this value already exists")]
    DuplicateKeyValue,
    #[error("a key named `{name}` already exists (id `{id}`)")]
    DuplicateKeyName { name: String, id: String },
    #[error("no credentials `{0}`")]
    NoCredential(String),
    #[error("credentials named `{name}` already exist (access key id `{id}`)")]
    DuplicateCredentialName { name: String, id: String },
    #[error("no domain `{0}`")]
    NoDomain(String),
    #[error("no region `{0}`")]
    NoRegion(String),
    #[error("no DNS zone `{0}`")]
    NoZone(String),
    #[error("the cluster is already bootstrapped")]
    AlreadyBootstrapped,
    #[error("{0}")]
    Invalid(String),
}

/// The result of applying one proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    /// The revision after the proposal (unchanged if it was rejected or changed nothing).
    pub revision: u64,
    /// Whether the proposal changed the configuration: a write that would leave it as it is
    /// (a variable set to its value, a region put again unchanged) is accepted and does not
    /// bump the revision.
    pub changed: bool,
    /// The id of what the command created: a deployment (`Deploy`) or a node id
    /// (`RegisterNode`).
    pub created: Option<u64>,
    pub rejected: Option<Rejection>,
}

impl ConfigState {
    /// Applies `proposal`; deterministic and total (never panics).
    pub fn apply(&mut self, proposal: &Proposal) -> CommandOutcome {
        if let Some(expected) = proposal.expected_revision
            && expected != self.revision
        {
            return self.rejected(Rejection::RevisionMismatch { expected, current: self.revision });
        }
        if self.changes_nothing(&proposal.command) {
            return CommandOutcome { revision: self.revision, changed: false, created: None, rejected: None };
        }
        match self.change(&proposal.command) {
            Ok(created) => {
                self.revision += 1;
                CommandOutcome { revision: self.revision, changed: true, created, rejected: None }
            }
            Err(r) => self.rejected(r),
        }
    }

    fn rejected(&self, rejection: Rejection) -> CommandOutcome {
        CommandOutcome { revision: self.revision, changed: false, created: None, rejected: Some(rejection) }
    }

    /// Whether `command` would be accepted and leave the configuration exactly as it is.
    /// Commands that create something (deployments, keys, node ids) always change it.
    fn changes_nothing(&self, command: &ConfigCommand) -> bool {
        let stage = |api: &str, stage: &str| self.apis.get(api).and_then(|a| a.stages.get(stage));
        match command {
            ConfigCommand::SetStageVariables { api, stage: name, set, unset } => stage(api, name).is_some_and(|s| {
                unset.iter().all(|n| set.contains_key(n) || !s.variables.contains_key(n))
                    && set.iter().all(|(k, v)| s.variables.get(k) == Some(v))
            }),
            ConfigCommand::SetStageDeployment { api, stage: name, deployment } => {
                stage(api, name).is_some_and(|s| s.deployment == *deployment)
            }
            ConfigCommand::SetCanary { api, stage: name, canary } => {
                stage(api, name).is_some_and(|s| s.canary.as_ref() == Some(canary))
            }
            ConfigCommand::PutDomain { name, domain } => self.domains.get(name) == Some(domain),
            ConfigCommand::PutDomainWithClientCertificates { name, domain, client_certificates } => {
                self.domains.get(name) == Some(domain)
                    && self.client_certificates.get(name) == client_certificates.as_ref()
            }
            ConfigCommand::PutRegion { name, region } => self.regions.get(name) == Some(region),
            ConfigCommand::PutZone { name, zone } => self.zones.get(name) == Some(zone),
            ConfigCommand::PutPlan { name, rate, quota } => {
                self.plans.get(name).is_some_and(|p| p.rate == *rate && p.quota == *quota)
            }
            ConfigCommand::SetKeyEnabled { id, enabled } => self.keys.get(id).is_some_and(|k| k.enabled == *enabled),
            ConfigCommand::SetCredentialEnabled { id, enabled } => {
                self.credentials.get(id).is_some_and(|c| c.enabled == *enabled)
            }
            ConfigCommand::RotateKey { id, value_sha256 } => {
                self.keys.get(id).is_some_and(|k| k.value_sha256 == *value_sha256)
            }
            ConfigCommand::AddPlanKey { plan, key } => {
                self.keys.contains_key(key) && self.plans.get(plan).is_some_and(|p| p.keys.contains(key))
            }
            ConfigCommand::AttachPlan { plan, api, stage: name, route } => {
                stage(api, name).is_some()
                    && self.plans.get(plan).and_then(|p| p.stages.get(&(api.clone(), name.clone()))).is_some_and(
                        |routes| match route {
                            Some((key, rate)) => routes.get(key) == Some(rate),
                            None => true,
                        },
                    )
            }
            _ => false,
        }
    }

    fn api_mut(&mut self, api: &str) -> Result<&mut ApiRecord, Rejection> {
        self.apis.get_mut(api).ok_or_else(|| Rejection::NoApi(api.to_string()))
    }

    fn stage_mut<'s>(&'s mut self, api: &str, stage: &str) -> Result<&'s mut StageRecord, Rejection> {
        self.api_mut(api)?
            .stages
            .get_mut(stage)
            .ok_or_else(|| Rejection::NoStage { api: api.to_string(), stage: stage.to_string() })
    }

    /// Performs a command; `Err` leaves the state untouched.
    fn change(&mut self, command: &ConfigCommand) -> Result<Option<u64>, Rejection> {
        match command {
            ConfigCommand::Bootstrap { secrets } => {
                if self.cluster.is_some() {
                    return Err(Rejection::AlreadyBootstrapped);
                }
                self.cluster = Some(secrets.clone());
                self.next_node_id = self.next_node_id.max(2);
                Ok(None)
            }
            ConfigCommand::RegisterNode => {
                let id = self.next_node_id.max(2);
                self.next_node_id = id + 1;
                Ok(Some(id))
            }
            ConfigCommand::Deploy {
                api,
                definition,
                description,
                created_at_ms,
                created_by,
                stage,
                stage_variables,
            } => {
                if api.is_empty() || definition.is_empty() {
                    return Err(Rejection::Invalid("a deployment needs an API id and a definition".into()));
                }
                let record = self.apis.entry(api.clone()).or_default();
                record.next_deployment += 1;
                let id = record.next_deployment;
                record.deployments.insert(
                    id,
                    Deployment {
                        id,
                        definition: definition.clone(),
                        description: description.clone(),
                        created_at_ms: *created_at_ms,
                        created_by: created_by.clone(),
                    },
                );
                if let Some(stage) = stage {
                    let entry = record.stages.entry(stage.clone()).or_insert_with(|| StageRecord {
                        deployment: id,
                        variables: BTreeMap::new(),
                        canary: None,
                    });
                    entry.deployment = id;
                    entry.variables.extend(stage_variables.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                Ok(Some(id))
            }
            ConfigCommand::SetStageDeployment { api, stage, deployment } => {
                let record = self.api_mut(api)?;
                if !record.deployments.contains_key(deployment) {
                    return Err(Rejection::NoDeployment { api: api.clone(), deployment: *deployment });
                }
                record
                    .stages
                    .entry(stage.clone())
                    .or_insert_with(|| StageRecord {
                        deployment: *deployment,
                        variables: BTreeMap::new(),
                        canary: None,
                    })
                    .deployment = *deployment;
                Ok(None)
            }
            ConfigCommand::SetStageVariables { api, stage, set, unset } => {
                let record = self.stage_mut(api, stage)?;
                for name in unset {
                    record.variables.remove(name);
                }
                record.variables.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok(None)
            }
            ConfigCommand::DeleteStage { api, stage } => {
                let record = self.api_mut(api)?;
                record
                    .stages
                    .remove(stage)
                    .map(|_| None)
                    .ok_or_else(|| Rejection::NoStage { api: api.clone(), stage: stage.clone() })
            }
            ConfigCommand::SetCanary { api, stage, canary } => {
                if !(1..=9999).contains(&canary.basis_points) {
                    return Err(Rejection::Invalid("a canary takes between 0.01 % and 99.99 % of requests".into()));
                }
                let record = self.api_mut(api)?;
                if !record.deployments.contains_key(&canary.deployment) {
                    return Err(Rejection::NoDeployment { api: api.clone(), deployment: canary.deployment });
                }
                self.stage_mut(api, stage)?.canary = Some(canary.clone());
                Ok(None)
            }
            ConfigCommand::PromoteCanary { api, stage } => {
                let record = self.stage_mut(api, stage)?;
                let canary = record
                    .canary
                    .take()
                    .ok_or_else(|| Rejection::NoCanary { api: api.clone(), stage: stage.clone() })?;
                record.deployment = canary.deployment;
                record.variables.extend(canary.variables);
                Ok(None)
            }
            ConfigCommand::PutDomain { name, domain } => {
                if name.is_empty() {
                    return Err(Rejection::Invalid("a domain needs a name".into()));
                }
                self.domains.insert(name.clone(), domain.clone());
                Ok(None)
            }
            ConfigCommand::PutDomainWithClientCertificates { name, domain, client_certificates } => {
                if name.is_empty() {
                    return Err(Rejection::Invalid("a domain needs a name".into()));
                }
                self.domains.insert(name.clone(), domain.clone());
                match client_certificates {
                    Some(policy) => self.client_certificates.insert(name.clone(), policy.clone()),
                    None => self.client_certificates.remove(name),
                };
                Ok(None)
            }
            ConfigCommand::DeleteDomain { name } => {
                self.client_certificates.remove(name);
                self.domains.remove(name).map(|_| None).ok_or_else(|| Rejection::NoDomain(name.clone()))
            }
            ConfigCommand::PutRegion { name, region } => {
                if name.is_empty() {
                    return Err(Rejection::Invalid("a region needs a name".into()));
                }
                self.regions.insert(name.clone(), region.clone());
                Ok(None)
            }
            ConfigCommand::DeleteRegion { name } => {
                self.regions.remove(name).map(|_| None).ok_or_else(|| Rejection::NoRegion(name.clone()))
            }
            ConfigCommand::PutZone { name, zone } => {
                if name.is_empty() {
                    return Err(Rejection::Invalid("a zone needs a name".into()));
                }
                self.zones.insert(name.clone(), zone.clone());
                Ok(None)
            }
            ConfigCommand::DeleteZone { name } => {
                self.zones.remove(name).map(|_| None).ok_or_else(|| Rejection::NoZone(name.clone()))
            }
            ConfigCommand::CreateKey { id, key } => {
                if id.is_empty() || self.keys.contains_key(id) {
                    return Err(Rejection::Invalid(format!("key id `{id}` is empty or taken")));
                }
                if self.keys.values().any(|k| k.value_sha256 == key.value_sha256) {
                    return Err(Rejection::DuplicateKeyValue);
                }
                // Names are how operators address keys: two with one name would make every
                // name-based command ambiguous.
                if let Some((existing, _)) = self.keys.iter().find(|(_, k)| k.name == key.name) {
                    return Err(Rejection::DuplicateKeyName { name: key.name.clone(), id: existing.clone() });
                }
                self.keys.insert(id.clone(), key.clone());
                Ok(None)
            }
            ConfigCommand::SetKeyEnabled { id, enabled } => {
                self.keys.get_mut(id).ok_or_else(|| Rejection::NoKey(id.clone()))?.enabled = *enabled;
                Ok(None)
            }
            ConfigCommand::RotateKey { id, value_sha256 } => {
                if self.keys.iter().any(|(other, k)| other != id && k.value_sha256 == *value_sha256) {
                    return Err(Rejection::DuplicateKeyValue);
                }
                self.keys.get_mut(id).ok_or_else(|| Rejection::NoKey(id.clone()))?.value_sha256 = value_sha256.clone();
                Ok(None)
            }
            ConfigCommand::CreateCredential { id, credential } => {
                if id.is_empty() || self.credentials.contains_key(id) {
                    return Err(Rejection::Invalid(format!("access key id `{id}` is empty or taken")));
                }
                if let Some((existing, _)) = self.credentials.iter().find(|(_, c)| c.name == credential.name) {
                    return Err(Rejection::DuplicateCredentialName {
                        name: credential.name.clone(),
                        id: existing.clone(),
                    });
                }
                self.credentials.insert(id.clone(), credential.clone());
                Ok(None)
            }
            ConfigCommand::SetCredentialEnabled { id, enabled } => {
                self.credentials.get_mut(id).ok_or_else(|| Rejection::NoCredential(id.clone()))?.enabled = *enabled;
                Ok(None)
            }
            ConfigCommand::DeleteCredential { id } => {
                self.credentials.remove(id).map(|_| None).ok_or_else(|| Rejection::NoCredential(id.clone()))
            }
            ConfigCommand::DeleteKey { id } => {
                self.keys.remove(id).ok_or_else(|| Rejection::NoKey(id.clone()))?;
                for plan in self.plans.values_mut() {
                    plan.keys.remove(id);
                }
                Ok(None)
            }
            ConfigCommand::PutPlan { name, rate, quota } => {
                if name.is_empty() {
                    return Err(Rejection::Invalid("a plan needs a name".into()));
                }
                if rate.is_some_and(|r| r.per_second == 0 || r.burst == 0) || quota.is_some_and(|(l, _)| l == 0) {
                    return Err(Rejection::Invalid("rates, bursts and quotas must be at least 1".into()));
                }
                let plan = self.plans.entry(name.clone()).or_default();
                plan.rate = *rate;
                plan.quota = *quota;
                Ok(None)
            }
            ConfigCommand::DeletePlan { name } => {
                self.plans.remove(name).map(|_| None).ok_or_else(|| Rejection::NoPlan(name.clone()))
            }
            ConfigCommand::AttachPlan { plan, api, stage, route } => {
                if !self.apis.get(api).is_some_and(|a| a.stages.contains_key(stage)) {
                    return Err(Rejection::NoStage { api: api.clone(), stage: stage.clone() });
                }
                let record = self.plans.get_mut(plan).ok_or_else(|| Rejection::NoPlan(plan.clone()))?;
                let routes = record.stages.entry((api.clone(), stage.clone())).or_default();
                if let Some((key, rate)) = route {
                    routes.insert(key.clone(), *rate);
                }
                Ok(None)
            }
            ConfigCommand::AddPlanKey { plan, key } => {
                if !self.keys.contains_key(key) {
                    return Err(Rejection::NoKey(key.clone()));
                }
                self.plans.get_mut(plan).ok_or_else(|| Rejection::NoPlan(plan.clone()))?.keys.insert(key.clone());
                Ok(None)
            }
            ConfigCommand::RemovePlanKey { plan, key } => {
                let record = self.plans.get_mut(plan).ok_or_else(|| Rejection::NoPlan(plan.clone()))?;
                record.keys.remove(key).then_some(None).ok_or_else(|| Rejection::NoKey(key.clone()))
            }
            ConfigCommand::ClearCanary { api, stage } => {
                let record = self.stage_mut(api, stage)?;
                record
                    .canary
                    .take()
                    .map(|_| None)
                    .ok_or_else(|| Rejection::NoCanary { api: api.clone(), stage: stage.clone() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn deploy(api: &str, stage: Option<&str>) -> Proposal {
        Proposal {
            expected_revision: None,
            command: ConfigCommand::Deploy {
                api: api.into(),
                definition: format!("id: {api}\n"),
                description: "test".into(),
                created_at_ms: 1,
                created_by: "test".into(),
                stage: stage.map(Into::into),
                stage_variables: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn deploy_then_rollback() {
        let mut s = ConfigState::default();
        assert_eq!(s.apply(&deploy("pets", Some("prod"))).created, Some(1));
        assert_eq!(s.apply(&deploy("pets", Some("prod"))).created, Some(2));
        assert_eq!(s.apis["pets"].stages["prod"].deployment, 2);
        let back = Proposal {
            expected_revision: Some(2),
            command: ConfigCommand::SetStageDeployment { api: "pets".into(), stage: "prod".into(), deployment: 1 },
        };
        assert_eq!(s.apply(&back).revision, 3);
        assert_eq!(s.apis["pets"].stages["prod"].deployment, 1);
        assert_eq!(s.apis["pets"].deployments.len(), 2, "deployments are never removed");
    }

    #[test]
    fn key_names_are_unique() {
        let mut s = ConfigState::default();
        let create = |id: &str, hash: &str| Proposal {
            expected_revision: None,
            command: ConfigCommand::CreateKey {
                id: id.into(),
                key: ApiKeyRecord {
                    name: "partner".into(),
                    value_sha256: hash.into(),
                    enabled: true,
                    created_at_ms: 1,
                },
            },
        };
        assert_eq!(s.apply(&create("k-1", "aa")).rejected, None);
        let before = s.clone();
        let out = s.apply(&create("k-2", "bb"));
        assert_eq!(out.rejected, Some(Rejection::DuplicateKeyName { name: "partner".into(), id: "k-1".into() }));
        assert_eq!(s, before);
    }

    #[test]
    fn writes_that_change_nothing_keep_the_revision() {
        let mut s = ConfigState::default();
        s.apply(&deploy("pets", Some("prod")));
        let write = |command| Proposal { expected_revision: None, command };
        let region = RegionRecord { weight: Some(2), client_cidrs: vec![] };
        let put_region = write(ConfigCommand::PutRegion { name: "eu".into(), region: region.clone() });
        assert!(s.apply(&put_region).changed);
        let before = s.clone();
        for same in [
            put_region.clone(),
            write(ConfigCommand::SetStageVariables {
                api: "pets".into(),
                stage: "prod".into(),
                set: BTreeMap::new(),
                unset: vec![],
            }),
            write(ConfigCommand::SetStageVariables {
                api: "pets".into(),
                stage: "prod".into(),
                set: BTreeMap::new(),
                unset: vec!["never-set".into()],
            }),
        ] {
            let out = s.apply(&same);
            assert_eq!((out.changed, out.revision, &out.rejected), (false, before.revision, &None), "{same:?}");
            assert_eq!(s, before);
        }
        // A missing stage is still refused, not silently accepted.
        let missing = write(ConfigCommand::SetStageVariables {
            api: "pets".into(),
            stage: "nope".into(),
            set: BTreeMap::new(),
            unset: vec![],
        });
        assert!(s.apply(&missing).rejected.is_some());
    }

    #[test]
    fn a_stale_revision_changes_nothing() {
        let mut s = ConfigState::default();
        s.apply(&deploy("pets", Some("prod")));
        let before = s.clone();
        let stale = Proposal { expected_revision: Some(0), ..deploy("pets", Some("prod")) };
        let out = s.apply(&stale);
        assert_eq!(out.rejected, Some(Rejection::RevisionMismatch { expected: 0, current: 1 }));
        assert_eq!(s, before);
    }

    #[test]
    fn canary_promote_and_clear() {
        let mut s = ConfigState::default();
        s.apply(&deploy("pets", Some("prod")));
        s.apply(&deploy("pets", None));
        let canary = Canary { deployment: 2, basis_points: 500, variables: BTreeMap::from([("v".into(), "2".into())]) };
        let set = |c: Canary| Proposal {
            expected_revision: None,
            command: ConfigCommand::SetCanary { api: "pets".into(), stage: "prod".into(), canary: c },
        };
        assert!(s.apply(&set(Canary { basis_points: 0, ..canary.clone() })).rejected.is_some());
        assert!(s.apply(&set(Canary { deployment: 9, ..canary.clone() })).rejected.is_some());
        assert!(s.apply(&set(canary.clone())).rejected.is_none());
        let promote = Proposal {
            expected_revision: None,
            command: ConfigCommand::PromoteCanary { api: "pets".into(), stage: "prod".into() },
        };
        assert!(s.apply(&promote).rejected.is_none());
        let stage = &s.apis["pets"].stages["prod"];
        assert_eq!((stage.deployment, stage.canary.is_none(), stage.variables["v"].as_str()), (2, true, "2"));
        assert!(s.apply(&promote).rejected.is_some(), "no canary left to promote");
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string())]
    }

    fn command() -> impl Strategy<Value = ConfigCommand> {
        prop_oneof![
            (name(), proptest::option::of(name())).prop_map(|(api, stage)| ConfigCommand::Deploy {
                definition: format!("id: {api}"),
                api,
                description: String::new(),
                created_at_ms: 7,
                created_by: String::new(),
                stage,
                stage_variables: BTreeMap::new(),
            }),
            (name(), name(), 0u64..4).prop_map(|(api, stage, deployment)| ConfigCommand::SetStageDeployment {
                api,
                stage,
                deployment
            }),
            (name(), name(), name()).prop_map(|(api, stage, k)| ConfigCommand::SetStageVariables {
                api,
                stage,
                set: BTreeMap::from([(k, "v".into())]),
                unset: vec![]
            }),
            (name(), name()).prop_map(|(api, stage)| ConfigCommand::DeleteStage { api, stage }),
            (name(), name(), 0u64..4, 0u32..10001).prop_map(|(api, stage, deployment, basis_points)| {
                ConfigCommand::SetCanary {
                    api,
                    stage,
                    canary: Canary { deployment, basis_points, variables: BTreeMap::new() },
                }
            }),
            (name(), name()).prop_map(|(api, stage)| ConfigCommand::PromoteCanary { api, stage }),
            (name(), name()).prop_map(|(api, stage)| ConfigCommand::ClearCanary { api, stage }),
            Just(ConfigCommand::RegisterNode),
            (name(), name(), name()).prop_map(|(name, api, stage)| ConfigCommand::PutDomain {
                name,
                domain: DomainRecord {
                    certificate_pem: None,
                    key_sealed: None,
                    mappings: vec![MappingRecord { base_path: "/".into(), api, stage }]
                }
            }),
            name().prop_map(|name| ConfigCommand::DeleteDomain { name }),
            (name(), any::<bool>()).prop_map(|(name, required)| ConfigCommand::PutDomainWithClientCertificates {
                name,
                domain: DomainRecord { certificate_pem: None, key_sealed: None, mappings: vec![] },
                client_certificates: required.then(|| ClientCertificatesRecord {
                    ca_pem: "ca".into(),
                    crl_pem: None,
                    required
                }),
            }),
            (name(), proptest::option::of(0u32..10)).prop_map(|(name, weight)| ConfigCommand::PutRegion {
                name,
                region: RegionRecord { weight, client_cidrs: vec!["10.0.0.0/8".into()] }
            }),
            name().prop_map(|name| ConfigCommand::DeleteRegion { name }),
            name().prop_map(|name| ConfigCommand::PutZone {
                zone: ZoneRecord { definition: format!("zone: {name}.test") },
                name
            }),
            name().prop_map(|name| ConfigCommand::DeleteZone { name }),
            (name(), name()).prop_map(|(id, hash)| ConfigCommand::CreateKey {
                id,
                key: ApiKeyRecord { name: "k".into(), value_sha256: hash, enabled: true, created_at_ms: 0 }
            }),
            (name(), any::<bool>()).prop_map(|(id, enabled)| ConfigCommand::SetKeyEnabled { id, enabled }),
            name().prop_map(|id| ConfigCommand::DeleteKey { id }),
            (name(), name()).prop_map(|(id, name)| ConfigCommand::CreateCredential {
                id,
                credential: CredentialRecord { name, secret_sealed: vec![1, 2], enabled: true, created_at_ms: 0 }
            }),
            (name(), any::<bool>()).prop_map(|(id, enabled)| ConfigCommand::SetCredentialEnabled { id, enabled }),
            name().prop_map(|id| ConfigCommand::DeleteCredential { id }),
            (name(), proptest::option::of(1u64..5)).prop_map(|(name, q)| ConfigCommand::PutPlan {
                name,
                rate: Some(PlanRate { per_second: 5, burst: 5 }),
                quota: q.map(|l| (l, QuotaPeriod::Month)),
            }),
            (name(), name(), name()).prop_map(|(plan, api, stage)| ConfigCommand::AttachPlan {
                plan,
                api,
                stage,
                route: None
            }),
            (name(), name()).prop_map(|(plan, key)| ConfigCommand::AddPlanKey { plan, key }),
            name().prop_map(|n| ConfigCommand::Bootstrap {
                secrets: ClusterSecrets {
                    ca_cert_pem: n.clone(),
                    ca_key_sealed: n.into_bytes(),
                    join_secret_sha256: String::new()
                }
            }),
        ]
    }

    fn proposals() -> impl Strategy<Value = Vec<Proposal>> {
        proptest::collection::vec(
            (proptest::option::of(0u64..6), command())
                .prop_map(|(expected_revision, command)| Proposal { expected_revision, command }),
            0..40,
        )
    }

    proptest! {
        /// The same proposals give the same state, outcomes and bytes on every node.
        #[test]
        fn apply_is_deterministic(ps in proposals()) {
            let (mut a, mut b) = (ConfigState::default(), ConfigState::default());
            for p in &ps {
                prop_assert_eq!(a.apply(p), b.apply(p));
            }
            let bytes = |s: &ConfigState| bincode::serde::encode_to_vec(s, bincode::config::standard()).unwrap();
            prop_assert_eq!(bytes(&a), bytes(&b));
        }

        /// Revisions only grow, by one per change; a rejection or a write that changes
        /// nothing leaves the state (and its revision) as it was, and a change is real.
        #[test]
        fn rejections_and_no_op_writes_change_nothing(ps in proposals()) {
            let mut s = ConfigState::default();
            for p in &ps {
                let before = s.clone();
                let out = s.apply(p);
                if out.rejected.is_some() || !out.changed {
                    prop_assert_eq!(&s, &before);
                } else {
                    prop_assert_eq!(s.revision, before.revision + 1);
                    let content = ConfigState { revision: before.revision, ..s.clone() };
                    prop_assert_ne!(&content, &before, "{:?} was counted as a change", p.command);
                }
                for api in s.apis.values() {
                    for stage in api.stages.values() {
                        prop_assert!(api.deployments.contains_key(&stage.deployment));
                    }
                }
                for plan in s.plans.values() {
                    prop_assert!(plan.keys.iter().all(|k| s.keys.contains_key(k)), "a plan holds a deleted key");
                }
            }
        }

        /// A state survives encoding and decoding (snapshots) unchanged.
        #[test]
        fn snapshot_round_trips(ps in proposals()) {
            let mut s = ConfigState::default();
            for p in &ps {
                s.apply(p);
            }
            let bytes = bincode::serde::encode_to_vec(&s, bincode::config::standard()).unwrap();
            let (back, _): (ConfigState, usize) =
                bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
